"""LineageView: where a release comes from, stage by stage, in a notebook or a Voila app.

    from loophub.widgets import LineageView
    LineageView("digits")       # release -> model version -> training job -> datasets

One section per stage (the release; the version it serves and its canary's; the training
job; each dataset version with where its records and labels came from), and per dataset
version a "used by" button listing the model versions and releases that used it. The
sections are built by ``lineage_sections`` (pure, tested without a browser); the widget
only lays them out.
"""

from __future__ import annotations

from html import escape
from typing import Any

import ipywidgets as w

from loophub.client import Client


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_text(v))}</td></tr>"
                    for k, v in rows if v not in (None, "", {}, []))
    return f"<table class='lh-lineage'>{cells}</table>"


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def lineage_sections(chain: dict) -> list[tuple[str, str]]:
    """(title, HTML) per stage of a release's lineage (``GET releases/NAME/lineage``)."""
    release = chain["release"]
    out = [(f"Release {release['name']}", _table([
        ("serves", release["version"]), ("follows", release["model"]),
        ("status", release["status"]), ("owner", release["owner"]),
        ("access", release["access"])]))]
    for role in ("version", "canary"):
        version = chain.get(role)
        if version:
            out += _version_sections(version, "canary " if role == "canary" else "")
    return out


def _version_sections(version: dict, role: str) -> list[tuple[str, str]]:
    if not version["readable"]:
        return [(f"{role}Model version {version['ref']}",
                 f"<p>Not readable for you: {escape(version['why'])}</p>")]
    out = [(f"{role}Model version {version['ref']}", _table([
        ("aliases", version["aliases"]), ("tests", version["test_status"]),
        ("metrics", version["metrics"]), ("registered by", version["created_by"]),
        ("registered", version["created"])]))]
    job = version.get("job")
    if job:
        out.append((f"{role}Training job {job['id']}", _table(
            [("readable", "no: another user's job")] if not job["readable"] else [
                ("recipe", job["recipe"]), ("dataset", job["dataset"]),
                ("started from", job.get("started_from") or "random weights"),
                ("workers", job["workers"]), ("parameters", job["params"]),
                ("state", job["state"]), ("owner", job["owner"])])))
    for used in version["datasets"]:
        found = used["sources"]
        out.append((f"{role}Dataset {used['dataset']}@v{used['number']} ({used['relation']})",
                    _table([("records", found["records"]),
                            ("unlabeled", found["unlabeled"]),
                            ("labels by people", found["labels"]["user"] or "none"),
                            ("labels imported", found["labels"]["import"]),
                            ("model suggestions", found["labels"]["model"] or "none"),
                            ("from production", found["from_production"]["records"]),
                            ("by release", found["from_production"]["releases"])])))
    return out


class LineageView(w.VBox):
    """The stages behind a release, each in its own section; "used by" per dataset."""

    def __init__(self, release: str, *, client: Client | None = None, **kwargs: Any) -> None:
        self.client = client or Client()
        self.chain = self.client.loop.lineage(release)
        sections = lineage_sections(self.chain)
        accordion = w.Accordion(children=[w.HTML(body) for _, body in sections])
        for n, (title, _) in enumerate(sections):
            accordion.set_title(n, title)
        accordion.selected_index = 0
        self.used = w.HTML()
        buttons = [self._used_button(d) for role in ("version", "canary")
                   for d in (self.chain.get(role) or {}).get("datasets", [])]
        super().__init__([accordion, w.HBox(buttons), self.used], **kwargs)

    def _used_button(self, used: dict) -> w.Button:
        button = w.Button(description=f"used by: {used['dataset']}@v{used['number']}",
                          layout=w.Layout(width="auto"))
        button.on_click(lambda _: self.show_used_by(used["dataset"], used["number"]))
        return button

    def show_used_by(self, dataset: str, number: int) -> dict:
        found = self.client.loop.used_by(dataset, number)
        models = [f"{m['model']}@{m['model_version']} ({m['relation']})"
                  for m in found["models"]]
        releases = [r["name"] + (f" (canary {r['canary']})" if r["canary"] else "")
                    for r in found["releases"]]
        self.used.value = f"<b>{escape(dataset)}@v{number}</b> " + _table(
            [("models", models or "none"), ("releases", releases or "none")])
        return found
