"""Dataset versioning in the notebook: VersionBrowser and DatasetOverview.

Plain ipywidgets (no front-end code of their own), so they work in JupyterLab and Voila.
Everything goes through the client SDK.
"""

from __future__ import annotations

import base64
from html import escape

import ipywidgets as w

from loophub import errors
from loophub.client import Client
from loophub.datasets.records import labels_of
from loophub.widgets.charts import bars, change_bars

DRAFT_COMPARE_LIMIT = 20_000  # a first draft above this shows counts, not record ids
STYLE = """<style>
.lh-versions table { border-collapse: collapse; font-size: 12px; }
.lh-versions th, .lh-versions td { border-bottom: 1px solid #ddd; padding: 2px 8px;
  text-align: left; }
.lh-tag { background: #fff3cd; border-radius: 8px; padding: 0 6px; margin-right: 3px; }
.lh-added { color: #2e7d32; } .lh-removed { color: #b00020; } .lh-changed { color: #a36b00; }
.lh-grid { display: flex; flex-wrap: wrap; gap: 6px; }
.lh-grid figure { margin: 0; width: 110px; font-size: 11px; text-align: center; }
.lh-grid img { width: 100px; height: 80px; object-fit: contain; border: 1px solid #ccc;
  image-rendering: pixelated; }
.lh-grid .lh-sample-text { width: 200px; height: auto; border: 1px solid #ddd; padding: 4px;
  text-align: left; }
</style>"""


def _ids(title: str, ids: list[str], css: str, limit: int = 12, total: int = 0) -> str:
    if not ids:
        return ""
    total = max(total, len(ids))
    more = f" … and {total - limit} more" if total > limit else ""
    return (f"<div class='{css}'><b>{escape(title)}</b> "
            f"{escape(', '.join(ids[:limit]))}{more}</div>")


class VersionBrowser(w.VBox):
    """Versions and tags, the draft's changes, commit, tag, and the diff of two versions."""

    def __init__(self, dataset: str, *, client: Client | None = None) -> None:
        self.api = (client or Client()).labeling
        self.dataset = dataset
        self.header, self.log_view = w.HTML(), w.HTML()
        self.draft_view, self.diff_view, self.status = w.HTML(), w.HTML(), w.HTML()
        self.message = w.Text(placeholder="what changed (commit message)",
                              layout=w.Layout(width="360px"))
        self.commit_button = w.Button(description="Commit draft", button_style="primary")
        self.tag_name = w.Text(placeholder="tag name", layout=w.Layout(width="160px"))
        self.tag_version = w.Dropdown(description="version", layout=w.Layout(width="200px"))
        self.tag_button = w.Button(description="Tag")
        self.base = w.Dropdown(description="base", layout=w.Layout(width="200px"))
        self.target = w.Dropdown(description="target", layout=w.Layout(width="200px"))
        self.diff_button = w.Button(description="Diff")
        self.commit_button.on_click(lambda _: self._guard(self.commit, self.message.value))
        self.tag_button.on_click(lambda _: self._guard(self.tag, self.tag_name.value,
                                                       self.tag_version.value))
        self.diff_button.on_click(lambda _: self._guard(self.diff, self.base.value,
                                                        self.target.value))
        super().__init__([
            w.HTML(STYLE), self.header, self.log_view,
            w.HTML("<h4>Draft</h4>"), self.draft_view,
            w.HBox([self.message, self.commit_button]),
            w.HBox([self.tag_name, self.tag_version, self.tag_button]),
            w.HTML("<h4>Compare versions</h4>"),
            w.HBox([self.base, self.target, self.diff_button]), self.diff_view, self.status])
        self.add_class("lh-versions")
        self.refresh()

    def _guard(self, action, *args) -> None:
        try:
            action(*args)
        except errors.LoophubError as exc:
            self.status.value = f"<span style='color:#b00020'>{escape(exc.message)}</span>"

    # -- reading ----------------------------------------------------------------------

    def refresh(self) -> None:
        ds = self.api.datasets
        self.info = ds.get(self.dataset)
        self.versions = ds.log(self.dataset)
        head = self.versions[0]["number"] if self.versions else None
        self.header.value = (
            f"<h3>{escape(self.dataset)}</h3><div>{self.info['draft_records']} records in the "
            f"draft · head version {head if head is not None else '(none yet)'} · "
            f"{'uncommitted changes' if self.info['uncommitted'] else 'draft equals head'}"
            "</div>")
        rows = "".join(
            f"<tr><td>v{v['number']}</td><td>{''.join(f'<span class=lh-tag>{escape(t)}</span>' for t in v['tags'])}</td>"  # noqa: E501
            f"<td>{escape(v['author'])}</td><td>{escape(v['message'])}</td>"
            f"<td>{v['records']}</td><td>{escape(v['created'][:19])}</td></tr>"
            for v in self.versions)
        self.log_view.value = ("<table><tr><th>version</th><th>tags</th><th>author</th>"
                               "<th>message</th><th>records</th><th>created</th></tr>"
                               f"{rows}</table>" if rows else "<em>no versions yet</em>")
        options = [(f"v{v['number']}" + (f" ({', '.join(v['tags'])})" if v["tags"] else ""),
                    str(v["number"])) for v in self.versions]
        self.tag_version.options = options
        self.base.options = options
        self.target.options = options
        if options:
            self.tag_version.value = options[0][1]
            self.base.value = self.target.value = options[0][1]
        if len(options) >= 2:
            self.base.value = options[1][1]
        self.draft_changes = self._draft_changes()
        self.draft_view.value = self._draft_html(self.draft_changes)

    def _draft_changes(self) -> dict:
        """What committing now would change, as the server's diff to ``draft`` says (the
        first 1,000 ids of each kind, the counts in full)."""
        if self.versions:
            result = self.api.datasets.diff(self.dataset, "head", "draft")
            head = self.versions[0]["label_counts"]
            after = {k: head.get(k, 0) + result["label_change"].get(k, 0)
                     for k in head.keys() | result["label_change"].keys()}
            return {**result, "base_labels": head,
                    "draft_labels": {k: v for k, v in sorted(after.items()) if v}}
        # nothing committed yet: every draft record is new
        total = self.info["draft_records"]
        records = ([e["record"] for e in self.api.datasets.records(self.dataset)]
                   if total <= DRAFT_COMPARE_LIMIT else [])
        return {"added": total, "removed": 0, "changed": 0,
                "added_ids": sorted(r["id"] for r in records), "removed_ids": [],
                "changed_ids": [], "base_labels": {}, "draft_labels": _label_counts(records)}

    @staticmethod
    def _draft_html(changes: dict) -> str:
        return _diff_html("head → draft", changes, changes["base_labels"],
                          changes["draft_labels"], "head", "draft")

    # -- actions ----------------------------------------------------------------------

    def commit(self, message: str) -> dict:
        if not message.strip():
            raise errors.InvalidInput("write a commit message first")
        version = self.api.datasets.commit(self.dataset, message)
        self.message.value = ""
        self.refresh()
        self.status.value = f"committed v{version['number']}"
        return version

    def tag(self, name: str, version: str | int = "head") -> dict:
        result = self.api.datasets.tag(self.dataset, name, version)
        self.tag_name.value = ""
        self.refresh()
        self.status.value = f"tagged v{result['number']} as {escape(name)}"
        return result

    def diff(self, base: str | int, target: str | int = "head") -> dict:
        """Records added/removed/changed between two versions and the label distribution
        change (also shown in the widget)."""
        result = self.api.datasets.diff(self.dataset, base, target)
        counts = {v["number"]: v["label_counts"] for v in self.versions}
        before = counts.get(result["base_number"], {})
        after = counts.get(result["target_number"], {})
        self.diff_view.value = _diff_html(
            f"v{result['base_number']} → v{result['target_number']}", result, before, after,
            f"v{result['base_number']}", f"v{result['target_number']}")
        return result


def _diff_html(title: str, result: dict, before: dict, after: dict, base_name: str,
               target_name: str) -> str:
    """Counts, the first ids of each kind and the label-count change of a diff."""
    return (f"<div><b>{escape(title)}</b>: "
            f"<span class='lh-added'>+{result['added']} added</span> · "
            f"<span class='lh-removed'>-{result['removed']} removed</span> · "
            f"<span class='lh-changed'>~{result['changed']} changed</span></div>"
            + _ids("added:", result["added_ids"], "lh-added", total=result["added"])
            + _ids("removed:", result["removed_ids"], "lh-removed", total=result["removed"])
            + _ids("changed:", result["changed_ids"], "lh-changed", total=result["changed"])
            + change_bars(before, after, base_name=base_name, target_name=target_name))


def _label_counts(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        for label in labels_of(record):
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


class DatasetOverview(w.VBox):
    """Counts, splits, the label histogram and a grid of sample items."""

    def __init__(self, dataset: str, *, client: Client | None = None,
                 samples: int = 12) -> None:
        self.api = (client or Client()).labeling
        self.dataset, self.samples = dataset, samples
        self.body = w.HTML()
        super().__init__([w.HTML(STYLE), self.body])
        self.add_class("lh-overview")
        self.refresh()

    def refresh(self) -> None:
        info = self.api.datasets.get(self.dataset)
        progress = self.api.progress(self.dataset)
        schema = info["label_schema"]
        self.summary = {"records": progress["total"], "labeled": progress["labeled"],
                        "splits": progress["splits"], "labels": progress["labels"],
                        "task": schema.get("task"), "versions": info["versions"]}
        self.body.value = (
            f"<h3>{escape(self.dataset)}</h3><div>{escape(str(schema.get('task')))} · "
            f"{progress['total']} records · {progress['labeled']} labeled by people · "
            f"{info['versions']} versions · state {escape(info['state'])}</div>"
            f"<div style='display:flex;gap:24px;flex-wrap:wrap'>"
            f"{bars(progress['labels'], title='labels')}"
            f"{bars(progress['splits'], title='splits', color='#9a6324')}</div>"
            f"{self._agreement()}"
            f"<h4>Samples</h4><div class='lh-grid'>{self._grid()}</div>")

    def _agreement(self) -> str:
        """Agreement of items labeled by two or more people (overlap), if there are any."""
        result = self.api.agreement(self.dataset)
        self.summary["agreement"] = result
        if not result["items"]:
            return ""
        parts = [f"{result['items']} items labeled by several people; mean agreement "
                 f"{result['mean_agreement']:.2f}"]
        fleiss = result.get("fleiss_kappa")
        if fleiss and fleiss["kappa"] is not None:
            parts.append(f"Fleiss' κ {fleiss['kappa']:.2f} ({fleiss['raters']} raters, "
                         f"{fleiss['items']} items)")
        for pair, kappa in (result.get("cohen_kappa") or {}).items():
            if kappa is not None:
                parts.append(f"Cohen's κ {escape(pair.replace('|', ' / '))} {kappa:.2f}")
        return "<h4>Agreement</h4><div>" + " · ".join(parts) + "</div>"

    def _grid(self) -> str:
        cells = []
        for entry in self.api.datasets.records(self.dataset, page_size=self.samples):
            record = entry["record"]
            caption = escape(", ".join(labels_of(record)) or "unlabeled")
            if (record.get("media") or {}).get("sha256"):
                try:
                    data, kind = self.api.media(self.dataset, record["id"])
                    src = f"data:{kind};base64,{base64.b64encode(data).decode()}"
                    body = f"<img src='{src}' alt='{escape(record['id'])}'>"
                except errors.NotFound:
                    body = "<div>(no media)</div>"
            else:
                body = f"<div class='lh-sample-text'>{escape((record.get('text') or '')[:160])}</div>"  # noqa: E501
            cells.append(f"<figure>{body}<figcaption>{escape(record['id'])}<br>{caption}"
                         "</figcaption></figure>")
            if len(cells) >= self.samples:
                break
        return "".join(cells) or "<em>no records</em>"
