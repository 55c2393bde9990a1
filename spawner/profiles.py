"""Profiles and user options: pure functions, no hub needed.

An admin lists profiles (what a server may ask for); users pick one or a custom
size within their limits. ``resolve_choice`` turns ``user_options`` into the
resource request on every start, checking each value against an allow-list, so a
profile can never leak from an earlier spawn and no raw option reaches a template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from loophub.errors import InvalidInput
from loophub.pool import GIB, check_cpu_gpu, check_gpu_type, parse_mem, readable_bytes

OPTION_KEYS = {"profile", "cpu", "mem", "gpu", "gpu_type", "runtime"}
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CUSTOM = "custom"


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    cpu: float
    mem: int
    gpu: int = 0
    gpu_type: str | None = None
    max_runtime: float | None = None  # seconds; None: no limit
    backend: str | None = None  # None: the spawner's default backend
    groups: tuple[str, ...] = ()  # who sees it; empty: everyone
    description: str = ""
    default: bool = False
    preemptible: bool = False

    def summary(self) -> str:
        gpu = f", {self.gpu} GPU" + (f" ({self.gpu_type})" if self.gpu_type else "") \
            if self.gpu else ""
        return f"{self.cpu:g} CPU, {readable_bytes(self.mem)}{gpu}"


@dataclass(frozen=True)
class Limits:
    """The largest custom size a user may ask for."""

    cpu: float = 4
    mem: int = 16 * GIB
    gpu: int = 0
    max_runtime: float | None = None


@dataclass(frozen=True)
class Choice:
    """What one start asks the scheduler for."""

    profile: str
    cpu: float
    mem: int
    gpu: int
    gpu_type: str | None = None
    runtime: float | None = None
    backend: str | None = None
    preemptible: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def demand(self) -> dict[str, float]:
        return {"cpu": self.cpu, "mem": self.mem, "gpu": self.gpu}


def parse_profiles(raw: list[dict]) -> list[Profile]:
    """Validate FairSpawner.profiles; errors name the profile and field."""
    profiles, seen = [], set()
    for i, item in enumerate(raw):
        where = f"FairSpawner.profiles[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}: expected a dict")
        unknown = set(item) - {f for f in Profile.__dataclass_fields__}
        if unknown:
            raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}")
        slug = item.get("slug") or ""
        if not _SLUG.match(slug) or slug == CUSTOM:
            raise InvalidInput(f"{where}.slug: {slug!r} must be a lower-case identifier "
                               f"(and not {CUSTOM!r})")
        if slug in seen:
            raise InvalidInput(f"{where}.slug: duplicate {slug!r}")
        seen.add(slug)
        try:
            cpu, _ = check_cpu_gpu(item.get("cpu"), item.get("gpu", 0), where)
            mem = parse_mem(item.get("mem"), where)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        profiles.append(Profile(**{**item, "cpu": cpu, "mem": mem,
                                   "display_name": item.get("display_name") or slug,
                                   "groups": tuple(item.get("groups", ()))}))
    return profiles


def visible_profiles(profiles: list[Profile], groups: set[str], admin: bool = False
                     ) -> list[Profile]:
    return [p for p in profiles if admin or not p.groups or groups & set(p.groups)]


def _positive(options: dict, key: str, limit: float, integer: bool = False) -> float:
    value = options[key]
    if isinstance(value, str):
        try:
            value = parse_mem(value, key) if key == "mem" else float(value)
        except ValueError as exc:
            raise InvalidInput(f"{key}: {options[key]!r} is not a number") from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key}: {value!r} is not a number")
    if integer and value != int(value):
        raise InvalidInput(f"{key}: must be a whole number, got {value!r}")
    if value < 0 or (key != "gpu" and value == 0):
        raise InvalidInput(f"{key}: must be positive, got {value!r}")
    if value > limit:
        shown = readable_bytes(limit) if key == "mem" else f"{limit:g}"
        raise InvalidInput(f"{key}: {value:g} is more than your limit of {shown}; pick a "
                           "profile or ask an admin to raise the limit")
    return value


def resolve_choice(options: dict, profiles: list[Profile], limits: Limits,
                   allow_custom: bool) -> Choice:
    """user_options -> Choice, from scratch: only allow-listed keys, within limits."""
    if not isinstance(options, dict):
        raise InvalidInput("user options must be an object")
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise InvalidInput(f"unknown options {sorted(unknown)}; allowed: {sorted(OPTION_KEYS)}")
    slug = options.get("profile")
    if slug is None:
        default = next((p for p in profiles if p.default), profiles[0] if profiles else None)
        slug = default.slug if default else CUSTOM
    if slug != CUSTOM:
        profile = next((p for p in profiles if p.slug == slug), None)
        if profile is None:
            names = ", ".join(p.slug for p in profiles) or "none"
            raise InvalidInput(f"profile {slug!r} does not exist or is not available to you "
                               f"(yours: {names})")
        if set(options) - {"profile", "runtime"}:
            raise InvalidInput("a profile fixes cpu, mem and gpu; choose 'custom' to set them")
        runtime = _runtime(options, profile.max_runtime)
        return Choice(profile.slug, profile.cpu, profile.mem, profile.gpu, profile.gpu_type,
                      runtime, profile.backend, profile.preemptible)
    if not allow_custom:
        raise InvalidInput("custom sizes are turned off on this hub; choose a profile")
    missing = {"cpu", "mem"} - set(options)
    if missing:
        raise InvalidInput(f"a custom size needs {sorted(missing)}")
    try:
        gpu_type = check_gpu_type(options.get("gpu_type") or None, "options")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    return Choice(
        CUSTOM,
        cpu=float(_positive(options, "cpu", limits.cpu)),
        mem=int(_positive(options, "mem", limits.mem)),
        gpu=int(_positive({"gpu": options.get("gpu", 0)}, "gpu", limits.gpu, integer=True)),
        gpu_type=gpu_type,
        runtime=_runtime(options, limits.max_runtime),
    )


def _runtime(options: dict, maximum: float | None) -> float | None:
    if "runtime" not in options or options["runtime"] in (None, ""):
        return maximum
    hours = options["runtime"]
    try:
        seconds = float(hours) * 3600
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"runtime: {hours!r} is not a number of hours") from exc
    if seconds <= 0:
        raise InvalidInput("runtime: must be positive")
    if maximum is not None and seconds > maximum:
        raise InvalidInput(f"runtime: at most {maximum / 3600:g} hours")
    return seconds


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """The spawn form's fields -> user_options (strings parsed later, in resolve_choice)."""
    def first(key: str) -> str:
        return (formdata.get(key) or [""])[0].strip()

    options: dict[str, Any] = {"profile": first("profile") or None}
    if options["profile"] == CUSTOM:
        for key in ("cpu", "mem", "gpu", "gpu_type"):
            if first(key):
                options[key] = first(key)
        if "mem" in options and options["mem"].replace(".", "", 1).isdigit():
            options["mem"] = f"{options['mem']}G"  # the form asks for GiB
    if first("runtime"):
        options["runtime"] = first("runtime")
    return {k: v for k, v in options.items() if v is not None}
