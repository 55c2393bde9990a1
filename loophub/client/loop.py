"""The feedback loop from a notebook: production inputs back to labeling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from loophub.client.core import Client


class Loop:
    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self, release: Any, *, into: str, rule: str = "low_confidence",
                limit: int = 100, threshold: float | None = None,
                window_s: float | None = None, seed: int | None = None) -> dict:
        """Copy up to LIMIT of RELEASE's production inputs into dataset INTO's draft as
        unlabeled records (provenance in ``metadata``, the model's answer as a
        pre-annotation), chosen by RULE:

        - ``"low_confidence"``: top score under THRESHOLD (default 0.6), least sure first;
        - ``"flagged"``: answers callers flagged (``release.flag(...)``), with their label;
        - ``"drifted"``: inputs unlike the training data (a summary feature outside its
          middle 99%);
        - ``"random"``: a uniform sample (SEED), for an unbiased production estimate.

        Inputs already in the dataset are skipped (by content). Over the last WINDOW_S
        seconds of the request logs (default 7 days). The answer says how many were
        collected, matched, already there, and not kept by the log (pixel arrays).
        Labelers show them with the "from production" filter."""
        body: dict[str, Any] = {"dataset": into, "rule": rule, "limit": limit}
        for key, value in (("threshold", threshold), ("window_s", window_s), ("seed", seed)):
            if value is not None:
                body[key] = value
        return self.client.request("POST", _path(release, "collect"), json=body)

    def schedule(self, release: Any, *, into: str, rule: str, every_s: int,
                 limit: int = 100, threshold: float | None = None,
                 seed: int | None = None) -> dict:
        """Have the platform ``collect`` every EVERY_S seconds (over the last
        2 x max(EVERY_S, 1 h) of logs each time), as you by name; each run's outcome is
        in ``schedules()``."""
        body: dict[str, Any] = {"dataset": into, "rule": rule, "limit": limit,
                                "every_s": every_s}
        for key, value in (("threshold", threshold), ("seed", seed)):
            if value is not None:
                body[key] = value
        return self.client.request("POST", _path(release, "collect", "schedules"), json=body)

    def schedules(self, release: Any) -> list[dict]:
        return self.client.request("GET", _path(release, "collect", "schedules"))["schedules"]

    def unschedule(self, release: Any, schedule_id: str) -> dict:
        return self.client.request("DELETE", _path(release, "collect", "schedules",
                                                   schedule_id))


def _path(release: Any, *parts: str) -> str:
    name = release if isinstance(release, str) else release.name
    return "/".join(["releases", *(quote(p, safe="") for p in (name, *parts))])
