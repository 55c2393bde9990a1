"""ModelBoard: a registered model's versions side by side, and a place to try them.

    from loophub.widgets import ModelBoard
    ModelBoard("digits")                 # or client.models.board("digits")

One board shows, for every version of the model: its registration metrics and the
headline metrics of its latest evaluation on each dataset version and split, the dataset
version it was trained on, its job, its test status and the aliases that point at it; the
history of every alias move; a chosen metric against the version number; the confusion
matrices and per-class precision/recall of a chosen evaluation; the training curves of the
versions' jobs. "Try it" runs any version in this kernel on an uploaded image, an image
drawn on a DrawPad (image classification) or a typed text and shows the prediction, its
scores and the latency.

Plain ipywidgets and plotly FigureWidgets, plus the anywidget DrawPad (widgets/drawpad.py),
so it renders the same in JupyterLab and in Voila. Every read goes through the client SDK;
the data is shaped by the pure functions at the top of this module (tested without a
browser), the widget only draws what they return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from loophub import errors
from loophub.client import Client
from loophub.widgets.drawpad import DrawPad

if TYPE_CHECKING:
    from loophub.models.predictor import Predictor

# The numbers a table can hold per evaluation; the rest (per class, confusion) is drawn.
HEADLINE = {
    "image_classification": ("accuracy", "macro_f1", "micro_f1", "ece"),
    "text_classification": ("accuracy", "macro_f1", "micro_f1", "ece"),
    "ner": ("precision", "recall", "f1", "macro_f1"),
    "object_detection": ("map", "map_50", "map_75"),
}
REGISTERED = "registered"  # the source of a version's own metrics (from its job or register)
IMAGE_TASKS = ("image_classification", "object_detection")
TEXT_INPUT_TASKS = ("text_classification", "ner")
DRAW_TASKS = ("image_classification",)  # a sketch means nothing to a detector
MAX_ANNOTATED_CELLS = 20  # label count above which heatmap cells are not written in
STYLE = """<style>
.lh-models table { border-collapse: collapse; font-size: 12px; }
.lh-models th, .lh-models td { border-bottom: 1px solid #ddd; padding: 2px 8px;
  text-align: left; vertical-align: top; }
.lh-models th { background: #f4f4f4; }
.lh-models .lh-scroll { overflow-x: auto; max-width: 100%; }
.lh-models .widget-html-content { min-width: 0; }  /* so a wide table scrolls, not spills */
.lh-models .lh-model-table td, .lh-models .lh-alias-history td { white-space: nowrap; }
.lh-models .lh-num { text-align: right; font-variant-numeric: tabular-nums; }
.lh-models .lh-alias { background: #e3ecff; border-radius: 8px; padding: 0 6px;
  margin-right: 3px; }
.lh-models .lh-muted { color: #777; }
.lh-models .lh-passed { color: #2e7d32; } .lh-models .lh-failed { color: #b00020; }
.lh-models .lh-error { color: #b00020; }
.lh-models .lh-prediction { font-size: 16px; font-weight: 600; }
</style>"""


# -- data shaping (pure) --------------------------------------------------------------------

def evaluation_key(evaluation: dict) -> str:
    """What an evaluation measured on: "digits@v1/test" ("/all" for every record)."""
    return f"{evaluation['dataset']}/{evaluation.get('split') or 'all'}"


def headline(result: dict | None) -> dict[str, float]:
    """The table's numbers of an evaluation RESULT: its task's headline metrics and, for
    classification, top-k accuracy beyond top-1 (which is the accuracy)."""
    if not result:
        return {}
    found = result.get("metrics") or {}
    out = {key: found[key] for key in HEADLINE.get(result.get("task", ""), ())
           if isinstance(found.get(key), int | float)}
    for key, value in sorted((found.get("top_k") or {}).items()):
        if key != "top_1" and isinstance(value, int | float):
            out[key] = value
    return out


def latest_evaluations(evaluations: Iterable[dict]) -> dict[int, dict[str, dict]]:
    """{version: {evaluation key: evaluation}}, the last succeeded one of each key (the
    SDK lists them oldest first; a re-run with the same inputs gives the same numbers,
    so the latest stands for them all)."""
    out: dict[int, dict[str, dict]] = {}
    for evaluation in evaluations:
        if evaluation.get("state") == "succeeded" and evaluation.get("result"):
            out.setdefault(evaluation["version"], {})[evaluation_key(evaluation)] = evaluation
    return out


def comparison_rows(versions: Sequence[dict], evaluations: Iterable[dict]) -> list[dict]:
    """One row per live version, oldest first: what it is (ref, dataset version, job, test
    status, aliases, author, date), its registration metrics (``registered``) and the
    headline metrics of its latest evaluation per dataset@version/split (``evaluated``)."""
    latest = latest_evaluations(evaluations)
    rows = []
    for version in sorted(versions, key=lambda v: v["version"]):
        if version.get("state") == "deleted":
            continue  # its artifact is gone: nothing to compare or try
        number = version["version"]
        rows.append({
            "version": number, "ref": version["ref"], "state": version.get("state"),
            "dataset": version.get("dataset"), "job": version.get("job"),
            "test_status": version.get("test_status"),
            "aliases": sorted(version.get("aliases") or []),
            "created": version.get("created"), "created_by": version.get("created_by"),
            "registered": {k: v for k, v in sorted((version.get("metrics") or {}).items())
                           if isinstance(v, int | float)},
            "evaluated": {key: headline(ev["result"])
                          for key, ev in sorted(latest.get(number, {}).items())},
        })
    return rows


def metric_columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """Every (source, metric) some row has: the registration metrics first, then each
    evaluation key's headline metrics in their task's order."""
    registered = sorted({name for row in rows for name in row["registered"]})
    columns = [(REGISTERED, name) for name in registered]
    keys = sorted({key for row in rows for key in row["evaluated"]})
    for key in keys:
        names: list[str] = []
        for row in rows:
            names += [n for n in row["evaluated"].get(key, {}) if n not in names]
        columns += [(key, name) for name in names]
    return columns


def metric_value(row: dict, source: str, metric: str) -> float | None:
    if source == REGISTERED:
        return row["registered"].get(metric)
    return row["evaluated"].get(source, {}).get(metric)


def metric_series(rows: Sequence[dict], source: str, metric: str
                  ) -> tuple[list[int], list[float | None]]:
    """METRIC of SOURCE ("registered" or an evaluation key) against the version number;
    None where a version lacks it (the plot leaves a gap rather than inventing a value)."""
    return [row["version"] for row in rows], [metric_value(row, source, metric)
                                              for row in rows]


def alias_moves(history: Iterable[dict]) -> list[dict]:
    """The alias events of a model's history, oldest first: which alias, from and to which
    version, forced past the promotion gate or not, who, when and why."""
    moves = []
    for event in history:
        subject = event.get("subject") or ""
        if not subject.startswith("alias:"):
            continue
        before, after = event.get("from") or {}, event.get("to") or {}
        moves.append({"alias": subject.removeprefix("alias:"), "action": event["action"],
                      "from": before.get("version"), "to": after.get("version"),
                      "forced": bool(after.get("forced")), "who": event.get("actor"),
                      "when": event.get("at"), "why": event.get("reason") or ""})
    return moves


def confusion(evaluation: dict) -> dict | None:
    """A classification evaluation's confusion matrix as a heatmap wants it: z[true][pred]
    counts, x the predicted and y the true labels (label order); None for other tasks."""
    found = ((evaluation.get("result") or {}).get("metrics") or {})
    if "confusion" not in found:
        return None
    labels = list(found.get("labels") or [])
    return {"z": found["confusion"], "x": labels, "y": labels}


def per_class(evaluation: dict) -> dict[str, Any] | None:
    """Per-class bars of an evaluation: {"labels", "series": {name: values}}: precision
    and recall per class (classification), per entity type (NER), AP and AP@.5 per class
    (detection); None when the result has none."""
    found = ((evaluation.get("result") or {}).get("metrics") or {})
    table = found.get("per_class") or found.get("per_type")
    if not table:
        return None
    labels = list(table)
    first = next(iter(table.values()))
    names = ("precision", "recall") if "precision" in first else ("ap", "ap_50")
    return {"labels": labels,
            "series": {name: [table[label].get(name) for label in labels] for name in names}}


def curve_series(points: Iterable[dict]) -> dict[str, tuple[list, list]]:
    """A job's metric points (step, name, value) as {name: (steps, values)} by step."""
    grouped: dict[str, list[tuple[int, float]]] = {}
    for point in points:
        grouped.setdefault(point["name"], []).append((point["step"], point["value"]))
    return {name: ([s for s, _ in sorted(pairs)], [v for _, v in sorted(pairs)])
            for name, pairs in sorted(grouped.items())}


def score_bars(task: str, prediction: dict, labels: Sequence[str], *, limit: int = 10
               ) -> tuple[list[str], list[float]]:
    """What the scores chart shows: the LIMIT best classes (classification), the entities
    or the boxes found (NER, detection), best first."""
    if task in ("image_classification", "text_classification"):
        pairs = sorted(zip(labels, prediction["scores"], strict=True),
                       key=lambda pair: -pair[1])[:limit]
    elif task == "ner":
        pairs = [(f"{s['text']} ({s['label']})", s["score"]) for s in prediction["spans"]]
    else:
        pairs = [(b["label"], b["score"]) for b in prediction["boxes"]][:limit]
    return [name for name, _ in pairs], [float(score) for _, score in pairs]


def describe(task: str, prediction: dict) -> str:
    """One line of plain text saying what a version predicted."""
    if task in ("image_classification", "text_classification"):
        return f"{prediction['label']} ({max(prediction['scores']):.1%})"
    if task == "ner":
        spans = prediction["spans"]
        found = ", ".join(f"{s['text']} → {s['label']}" for s in spans)
        return f"{len(spans)} entities" + (f": {found}" if found else "")
    boxes = prediction["boxes"]
    return f"{len(boxes)} boxes" + (": " + ", ".join(
        f"{b['label']} {b['score']:.0%}" for b in boxes[:5]) if boxes else "")


# -- trying a version in the kernel ------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """A version's answer to one input: the prediction, the time the prediction took
    (latency_ms) and the time its first use took to fetch and load the artifact
    (load_ms, 0 once cached)."""

    ref: str
    task: str
    prediction: dict
    latency_ms: float
    load_ms: float


class Predictors:
    """Versions loaded in this kernel, one Predictor per version ref: an artifact is
    fetched and loaded once, then each try costs only the prediction."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._loaded: dict[str, Predictor] = {}

    def get(self, version: dict) -> tuple[Predictor, float]:
        """The version's predictor and how many ms loading it took now (0: cached)."""
        from loophub.models.predictor import Predictor

        ref = version["ref"]
        if ref in self._loaded:
            return self._loaded[ref], 0.0
        started = time.perf_counter()
        predictor = Predictor.load(self.client.models.artifact(ref), version["meta"])
        self._loaded[ref] = predictor
        return predictor, (time.perf_counter() - started) * 1000

    def run(self, version: dict, value: bytes | str) -> Trial:
        """VERSION's prediction of VALUE (an image file's bytes, or a text)."""
        predictor, load_ms = self.get(version)
        if predictor.task in IMAGE_TASKS and not isinstance(value, bytes | bytearray):
            raise errors.InvalidInput(f"{version['ref']} is an image model: upload an image")
        started = time.perf_counter()
        if predictor.task in IMAGE_TASKS:
            prediction = predictor.predict_images([bytes(value)])[0]
        else:
            prediction = predictor.predict_texts([str(value)])[0]
        latency = (time.perf_counter() - started) * 1000
        return Trial(version["ref"], predictor.task, prediction, latency, load_ms)


# -- drawing ------------------------------------------------------------------------------------

NONE = "&ndash;"  # what an empty cell shows


def _number(value: float | None) -> str:
    return NONE if value is None else f"{value:.4g}"


def rows_html(rows: Sequence[dict]) -> str:
    """The versions table: identity columns, then one column per (source, metric)."""
    if not rows:
        return "<em>no versions yet</em>"
    columns = metric_columns(rows)
    head = "".join(f"<th>{escape(h)}</th>" for h in (
        "version", "aliases", "trained on", "job", "tests", "by", "created"))
    head += "".join(f"<th title='{escape(source)}'>{escape(metric)}<br>"
                    f"<span class='lh-muted'>{escape(source)}</span></th>"
                    for source, metric in columns)
    body = "".join(_row_html(row, columns) for row in rows)
    return (f"<div class='lh-scroll'><table class='lh-model-table'><tr>{head}</tr>{body}"
            "</table></div>")


def _row_html(row: dict, columns: list[tuple[str, str]]) -> str:
    aliases = "".join(f"<span class='lh-alias'>{escape(a)}</span>" for a in row["aliases"])
    status = row["test_status"] or ""
    cells = [f"v{row['version']}", aliases, escape(row["dataset"]) if row["dataset"] else NONE,
             escape(row["job"][:8]) if row["job"] else NONE,
             f"<span class='lh-{escape(status)}'>{escape(status)}</span>",
             escape(row["created_by"] or ""),
             escape((row["created"] or "")[:16].replace("T", " "))]
    cells_html = "".join(f"<td>{cell}</td>" for cell in cells)
    cells_html += "".join(f"<td class='lh-num'>{_number(metric_value(row, *column))}</td>"
                          for column in columns)
    return f"<tr data-version='{row['version']}'>{cells_html}</tr>"


def _version_cell(number: int | None) -> str:
    return NONE if number is None else f"v{number}"


def moves_html(moves: Sequence[dict]) -> str:
    if not moves:
        return "<em>no alias has been set yet</em>"
    body = "".join(
        f"<tr><td><span class='lh-alias'>{escape(m['alias'])}</span></td>"
        f"<td>{escape(m['action'])}</td><td>{_version_cell(m['from'])}</td>"
        f"<td>{_version_cell(m['to'])}{' (forced)' if m['forced'] else ''}</td>"
        f"<td>{escape(m['who'] or '')}</td>"
        f"<td>{escape((m['when'] or '')[:19].replace('T', ' '))}</td>"
        f"<td>{escape(m['why'])}</td></tr>" for m in moves)
    return ("<div class='lh-scroll'><table class='lh-alias-history'><tr><th>alias</th>"
            "<th>change</th><th>from</th><th>to</th><th>who</th><th>when</th><th>why</th>"
            f"</tr>{body}</table></div>")


def _palette(index: int) -> str:
    from plotly.colors import qualitative

    return qualitative.Plotly[index % len(qualitative.Plotly)]


def metric_figure(rows: Sequence[dict], source: str, metric: str):
    """METRIC (of SOURCE) against the version number: a line with a point per version."""
    import plotly.graph_objects as go

    versions, values = metric_series(rows, source, metric)
    figure = go.Figure(go.Scatter(x=versions, y=values, mode="lines+markers",
                                  name=metric, connectgaps=False,
                                  hovertemplate="v%{x}: %{y:.4g}<extra></extra>"))
    figure.update_layout(height=260, margin={"l": 50, "r": 10, "t": 30, "b": 40},
                         title={"text": f"{metric} ({source})", "font": {"size": 13}},
                         xaxis={"title": "version", "tickprefix": "v", "dtick": 1})
    return figure


def confusion_figure(items: Sequence[tuple[str, dict]]):
    """The confusion matrices of ITEMS ((title, evaluation) pairs), side by side, three
    to a row, on one colour scale; None when none of them has one."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    found = [(title, data) for title, ev in items if (data := confusion(ev)) is not None]
    if not found:
        return None
    cols = min(len(found), 3)
    rows = -(-len(found) // cols)
    figure = make_subplots(rows=rows, cols=cols, subplot_titles=[t for t, _ in found],
                           horizontal_spacing=0.08, vertical_spacing=0.12)
    for n, (title, data) in enumerate(found):
        written = len(data["x"]) <= MAX_ANNOTATED_CELLS
        figure.add_trace(go.Heatmap(
            z=data["z"], x=data["x"], y=data["y"], coloraxis="coloraxis", name=title,
            texttemplate="%{z}" if written else None,
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra>" + escape(title)
            + "</extra>"), row=n // cols + 1, col=n % cols + 1)
    figure.update_yaxes(autorange="reversed", title_text="true", type="category")
    figure.update_xaxes(title_text="predicted", type="category")
    # square-ish panels of a fixed size: stretched to the page, ten classes look like bars
    figure.update_layout(height=300 * rows + 40, width=280 * cols + 140, autosize=False,
                         coloraxis={"colorscale": "Blues"},
                         margin={"l": 50, "r": 10, "t": 40, "b": 40})
    return figure


def per_class_figure(items: Sequence[tuple[str, dict]]):
    """Grouped bars per class, a trace per version, one panel per series (precision and
    recall, or AP and AP@.5); None when no evaluation has per-class numbers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    found = [(title, data) for title, ev in items if (data := per_class(ev)) is not None]
    if not found:
        return None
    names = list(found[0][1]["series"])
    figure = make_subplots(rows=len(names), cols=1, shared_xaxes=True,
                           subplot_titles=names, vertical_spacing=0.12)
    for n, (title, data) in enumerate(found):
        for r, name in enumerate(names):
            figure.add_trace(go.Bar(x=data["labels"], y=data["series"].get(name), name=title,
                                    legendgroup=title, showlegend=r == 0,
                                    marker_color=_palette(n)), row=r + 1, col=1)
    figure.update_xaxes(type="category")
    figure.update_yaxes(range=[0, 1.02])
    figure.update_layout(height=200 * len(names) + 60, barmode="group",
                         margin={"l": 50, "r": 10, "t": 30, "b": 30},
                         legend={"orientation": "h", "y": -0.15})
    return figure


def curves_figure(curves: dict[str, dict[str, tuple[list, list]]], name: str):
    """Curve NAME of each version's job ({version title: curve_series(...)}), overlaid."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for n, (title, series) in enumerate(curves.items()):
        if name in series:
            steps, values = series[name]
            figure.add_scatter(x=steps, y=values, mode="lines", name=title,
                               line={"color": _palette(n)})
    figure.update_layout(height=260, margin={"l": 50, "r": 10, "t": 30, "b": 40},
                         title={"text": name, "font": {"size": 13}},
                         xaxis={"title": "step"}, legend={"orientation": "h", "y": -0.25})
    return figure


def scores_figure(task: str, trial: Trial, labels: Sequence[str]):
    import plotly.graph_objects as go

    names, scores = score_bars(task, trial.prediction, labels)
    figure = go.Figure(go.Bar(x=scores, y=names, orientation="h",
                              hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    figure.update_layout(height=max(120, 24 * len(names) + 60), width=560, autosize=False,
                         margin={"l": 90, "r": 10, "t": 30, "b": 30},
                         title={"text": f"scores of {trial.ref}", "font": {"size": 13}},
                         xaxis={"range": [0, 1]}, yaxis={"autorange": "reversed",
                                                         "type": "category"})
    return figure


# -- the widget -----------------------------------------------------------------------------------

def _section(title: str) -> w.HTML:
    return w.HTML(f"<h4 style='margin:12px 0 4px'>{escape(title)}</h4>")


def _holder(css: str) -> w.VBox:
    box = w.VBox()
    box.add_class(css)
    return box


def _show(box: w.VBox, figure: Any, empty: str) -> None:
    """Put FIGURE (a plotly Figure, or None: the EMPTY note) in BOX, closing what was
    there, so a redraw does not leave widget models behind in the kernel."""
    import plotly.graph_objects as go

    for child in box.children:
        child.close()
    box.children = (go.FigureWidget(figure),) if figure is not None else (
        w.HTML(f"<em class='lh-muted'>{escape(empty)}</em>"),)


def _fill(choice: w.Dropdown, options: Sequence, preferred: Any = None) -> None:
    """Give CHOICE new OPTIONS (values, or (label, value) pairs), keeping its value when
    it is still there, else PREFERRED when there, else the first."""
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    kept = choice.value
    choice.options = options
    if kept in values:
        choice.value = kept
    elif preferred in values:
        choice.value = preferred
    else:  # a Dropdown that had no options selects nothing by itself
        choice.index = 0 if values else None


def releases_html(releases: Sequence[dict]) -> str:
    """Where the model is released: each release's version, status and its app and
    dashboard links (the dashboard only where the API gave one to this user)."""
    if not releases:
        return ""
    items = []
    for view in releases:
        links = " · ".join(f"<a href='{escape(view[key])}' target='_blank' "
                           f"class='lh-release-{key}'>{label}</a>"
                           for key, label in (("app", "app"), ("dashboard", "dashboard"))
                           if view.get(key))
        items.append(f"<b>{escape(view['name'])}</b> ({escape(view.get('version', ''))}, "
                     f"{escape(view.get('status', ''))}){' · ' + links if links else ''}")
    return "<div class='lh-releases'>Released as " + "; ".join(items) + "</div>"


class ModelBoard(w.VBox):
    """``ModelBoard(name)``: the versions of model NAME side by side, and "try it"
    (also ``client.models.board(name)``). ``refresh()`` re-reads everything."""

    def __init__(self, name: str, *, client: Client | None = None) -> None:
        self.client = client or Client()
        self.name = name
        self.predictors = Predictors(self.client)
        self.rows: list[dict] = []
        self.versions: dict[str, dict] = {}
        self.latest: dict[int, dict[str, dict]] = {}
        self.curves: dict[str, dict[str, tuple[list, list]]] = {}
        self._input: bytes | str | None = None
        self._drawn: bytes | None = None  # the pad's last drawing, as PNG bytes
        self.trial: Trial | None = None  # the last answer shown
        self._quiet = False
        self._build()
        self.refresh()

    def _build(self) -> None:
        self.header, self.table, self.moves, self.status = (w.HTML() for _ in range(4))
        self.table.add_class("lh-versions-table")
        self.refresh_button = w.Button(description="Refresh", icon="refresh",
                                       layout=w.Layout(width="100px"))
        self.refresh_button.on_click(lambda _: self._guard(self.refresh))
        wide = w.Layout(width="420px")
        self.metric_choice = w.Dropdown(description="metric", layout=wide)
        self.evaluation_choice = w.Dropdown(description="evaluation", layout=wide)
        self.curve_choice = w.Dropdown(description="curve", layout=wide)
        self.metric_plot, self.confusions = _holder("lh-metric-plot"), _holder("lh-confusion")
        self.bars, self.curve_plot = _holder("lh-per-class"), _holder("lh-curves")
        for choice, draw in ((self.metric_choice, self.draw_metric),
                             (self.evaluation_choice, self.draw_evaluation),
                             (self.curve_choice, self.draw_curves)):
            choice.observe(lambda _, draw=draw: self._quiet or self._guard(draw), "value")
        super().__init__([
            w.HTML(STYLE), w.HBox([self.header, self.refresh_button]), self.status,
            _section("Versions"), self.table, _section("Alias history"), self.moves,
            _section("Metric vs version"), self.metric_choice, self.metric_plot,
            _section("Evaluations"), self.evaluation_choice, self.confusions, self.bars,
            _section("Training curves"), self.curve_choice, self.curve_plot,
            _section("Try it"), self._build_try()])
        self.add_class("lh-models")

    def _build_try(self) -> w.VBox:
        self.try_version = w.Dropdown(description="version", layout=w.Layout(width="260px"))
        self.upload = w.FileUpload(accept="image/*", multiple=False,
                                   description="Upload image")
        self.text = w.Textarea(placeholder="type a text to classify",
                               layout=w.Layout(width="420px", height="70px"))
        self.try_button = w.Button(description="Predict", button_style="primary")
        self.try_all_button = w.Button(description="Every version")
        self.try_result, self.try_table = w.HTML(), w.HTML()
        self.try_plot = _holder("lh-try-scores")
        self.upload.observe(lambda change: self._guard(self._uploaded, change["new"]), "value")
        self.try_button.on_click(lambda _: self._guard(self.try_it))
        self.try_all_button.on_click(lambda _: self._guard(self.try_every_version))
        self.try_version.observe(lambda _: self._rerun(), "value")
        # a pen an eighth of the pad wide: after the Predictor's preprocessing shrinks the
        # drawing to 16x16, strokes are about 2 px, as in the digits scans
        self.pad = DrawPad(width=160, height=160, stroke=20)
        self.pad.add_class("lh-try-pad")
        self.pad.observe(lambda _: self._guard(self._drew), "value")
        self.inputs = w.HBox()
        self.drawing = w.HBox()  # the pad, for the tasks that take a drawing
        # the pad beside the answer, so one sees both while drawing; wrapped when narrow
        answer = w.VBox([self.try_result, self.try_plot])
        box = w.VBox([w.HBox([self.try_version, self.inputs, self.try_button,
                              self.try_all_button]),
                      w.HBox([self.drawing, answer],
                             layout=w.Layout(flex_flow="row wrap", align_items="flex-start")),
                      self.try_table])
        box.add_class("lh-try")
        return box

    def _guard(self, action, *args) -> None:
        """Run a callback, showing a platform or input error in the board (a callback's
        exception would otherwise go to a log that Voila does not show)."""
        try:
            action(*args)
            self.status.value = ""
        except errors.LoophubError as exc:
            self.status.value = f"<div class='lh-error'>{escape(exc.message)}</div>"

    # -- reading ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the model, its versions, evaluations, history and curves; redraw."""
        models = self.client.models
        self.model = models.show(self.name)
        listed = models.versions(self.name)
        evaluations = models.evaluations(self.name)
        self.rows = comparison_rows(listed, evaluations)
        self.versions = {v["ref"]: v for v in listed if v.get("state") != "deleted"}
        self.latest = latest_evaluations(evaluations)
        self.curves = self._read_curves(self.rows)
        self.releases = [r.view for r in self.client.serving.list()
                         if r.view.get("model", "").partition("@")[0] == self.name]
        self.header.value = self._header_html()
        self.table.value = rows_html(self.rows)
        self.moves.value = moves_html(alias_moves(models.history(self.name)))
        self._set_choices()
        self.draw_metric()
        self.draw_evaluation()
        self.draw_curves()
        self._show_inputs()

    def _read_curves(self, rows: Sequence[dict]) -> dict[str, dict[str, tuple[list, list]]]:
        """{"v1": curve_series(points)} for each version registered from a job."""
        curves = {}
        for row in rows:
            if row["job"]:
                try:
                    points = self.client.training.get(row["job"]).metrics()
                except errors.NotFound:
                    continue  # a job you cannot read (another owner's) has no curves here
                curves[f"v{row['version']}"] = curve_series(points)
        return curves

    def _header_html(self) -> str:
        model = self.model
        aliases = " ".join(f"<span class='lh-alias'>{escape(a)} → v{n}</span>"
                           for a, n in sorted(model["aliases"].items()))
        return (f"<h3 style='margin:0'>{escape(model['name'])}</h3>"
                f"<div>{escape(model['task'] or '')} · {len(self.rows)} versions · owner "
                f"{escape(model['owner'])} ({escape(model['visibility'])}) {aliases}</div>"
                + (f"<div class='lh-muted'>{escape(model['description'])}</div>"
                   if model.get("description") else "") + releases_html(self.releases))

    def _set_choices(self) -> None:
        """Fill the dropdowns, keeping each one's choice when it still exists."""
        versions = [(f"v{r['version']}" + (f" ({', '.join(r['aliases'])})" if r["aliases"]
                                           else ""), r["ref"]) for r in reversed(self.rows)]
        columns = metric_columns(self.rows)
        # an evaluation's metric by default: every version measured on the same data
        evaluated = [c for c in columns if c[0] != REGISTERED]
        names = sorted({name for series in self.curves.values() for name in series})
        self._quiet = True
        try:
            _fill(self.try_version, versions)
            _fill(self.metric_choice, [(f"{metric} · {source}", (source, metric))
                                       for source, metric in columns],
                  evaluated[0] if evaluated else None)
            _fill(self.evaluation_choice,
                  sorted({key for row in self.rows for key in row["evaluated"]}))
            _fill(self.curve_choice, names, "loss")
        finally:
            self._quiet = False

    # -- drawing ------------------------------------------------------------------------

    def draw_metric(self) -> None:
        chosen = self.metric_choice.value
        figure = metric_figure(self.rows, *chosen) if chosen else None
        _show(self.metric_plot, figure, "no metrics yet: register with metrics= or "
              "evaluate a version (client.models.evaluate)")

    def evaluation_items(self, key: str | None) -> list[tuple[str, dict]]:
        """(version title, its latest evaluation of KEY) for each version evaluated so."""
        return [(f"v{row['version']}", self.latest[row["version"]][key])
                for row in self.rows if key in self.latest.get(row["version"], {})]

    def draw_evaluation(self) -> None:
        items = self.evaluation_items(self.evaluation_choice.value)
        _show(self.confusions, confusion_figure(items),
              "no confusion matrix: evaluate a classification version to see one")
        _show(self.bars, per_class_figure(items), "no per-class numbers yet")

    def draw_curves(self) -> None:
        chosen = self.curve_choice.value
        _show(self.curve_plot, curves_figure(self.curves, chosen) if chosen else None,
              "no training curves: versions registered from a module have no job")

    # -- trying ---------------------------------------------------------------------------

    def _show_inputs(self) -> None:
        """An upload for image models (and a pad to draw on for image classifiers), a
        text box for text models."""
        task = self.model.get("task")
        self.text.placeholder = ("type a text to tag" if task == "ner" else
                                 "type a text to classify")
        self.inputs.children = ((self.upload,) if task in IMAGE_TASKS else
                                (self.text,) if task in TEXT_INPUT_TASKS else ())
        self.drawing.children = (self.pad,) if task in DRAW_TASKS else ()

    def _uploaded(self, files: Sequence[dict]) -> None:
        if not files:
            return  # the upload was cleared (below)
        self._input = bytes(files[0]["content"])
        self.upload.value = ()  # so the same file can be uploaded again
        self.pad.clear()  # the pad would otherwise show what is no longer being tried
        self.try_it()

    def _drew(self) -> None:
        """A stroke ended (the pad sent the whole drawing): try it at once, as an upload
        is. A cleared pad takes its drawing back from "Predict" and "Every version"."""
        drawn = self.pad.png
        if drawn is None:
            if self._input is not None and self._input == self._drawn:
                self._input = None
            self._drawn = None
            return
        self._drawn = self._input = drawn
        self.try_it()

    def _rerun(self) -> None:
        """Another version chosen: give it the input the last one had, if any."""
        if self._quiet:
            return
        texts = self.model.get("task") in TEXT_INPUT_TASKS
        if (self.text.value.strip() if texts else self._input is not None):
            self._guard(self.try_it)

    def current_input(self) -> bytes | str:
        if self.model.get("task") in TEXT_INPUT_TASKS:
            if not self.text.value.strip():
                raise errors.InvalidInput("type a text to try the model on")
            return self.text.value
        if self._input is None:
            raise errors.InvalidInput(
                "draw or upload an image to try the model on"
                if self.model.get("task") in DRAW_TASKS else "upload an image to try the model on")
        return self._input

    def try_it(self, value: bytes | str | None = None) -> Trial:
        """The chosen version's prediction of VALUE (default: the last image uploaded or
        drawn, or the typed text), shown with its scores and latency; also returned."""
        if isinstance(value, bytes | bytearray):
            self._input = bytes(value)  # "Every version" and a version change reuse it
        elif isinstance(value, str):
            self.text.value = value
        value = self.current_input()
        if self.try_version.value not in self.versions:
            raise errors.InvalidInput(f"model {self.name!r} has no version to try")
        version = self.versions[self.try_version.value]
        trial = self.predictors.run(version, value)
        self.trial = trial
        self.try_result.value = self._trial_html(trial, value)
        _show(self.try_plot, scores_figure(trial.task, trial, version["labels"]), "")
        return trial

    def try_every_version(self) -> list[Trial]:
        """The same input through every version, as a table (latest version first)."""
        value = self.current_input()
        trials = [self.predictors.run(self.versions[r["ref"]], value)
                  for r in reversed(self.rows)]
        body = "".join(f"<tr><td>{escape(t.ref)}</td><td>{escape(describe(t.task, t.prediction))}"
                       f"</td><td class='lh-num'>{t.latency_ms:.1f} ms</td></tr>"
                       for t in trials)
        self.try_table.value = ("<table class='lh-try-all'><tr><th>version</th>"
                                f"<th>prediction</th><th>latency</th></tr>{body}</table>")
        return trials

    def _trial_html(self, trial: Trial, value: bytes | str) -> str:
        loaded = f" (loading the version took {trial.load_ms:.0f} ms)" if trial.load_ms else ""
        shown = ""
        if isinstance(value, bytes | bytearray):
            import base64

            data = base64.b64encode(bytes(value)).decode()
            shown = (f"<img src='data:image;base64,{data}' style='height:64px;"
                     "image-rendering:pixelated;border:1px solid #ccc;margin-right:8px'>")
        return (f"<div class='lh-try-result' style='display:flex;align-items:center'>{shown}"
                f"<div>{escape(trial.ref)} says <span class='lh-prediction'>"
                f"{escape(describe(trial.task, trial.prediction))}</span><br>"
                f"<span class='lh-latency'>{trial.latency_ms:.1f} ms</span>"
                f"<span class='lh-muted'>{escape(loaded)}</span></div></div>")
