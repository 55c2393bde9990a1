"""JobMonitor: a training job, live, in a notebook cell.

Curves (loss, learning rate, throughput, each validation metric) drawn with plotly's
FigureWidget and extended in place as the job reports; the state with the queue position,
the blocking resource and the ETA while it waits; the attempt, step and checkpoint; the
log's tail; and a Stop button. A background thread polls the API (incrementally: only new
points and lines) until the job ends.
"""

from __future__ import annotations

import threading
from html import escape
from typing import Any

import ipywidgets as w

ACTIVE = ("queued", "starting", "running", "preempted", "retrying")
PANELS = (("loss", "loss"), ("lr", "learning rate"), ("samples_per_s", "samples/s"))
LOG_LINES = 12
STYLE = """<style>
.lh-job .lh-state{font-weight:600} .lh-job .lh-muted{color:#777}
.lh-job pre{max-height:14em;overflow:auto;background:#f7f7f7;padding:6px;font-size:12px;margin:0}
</style>"""


class JobMonitor(w.VBox):
    """``JobMonitor(job)`` (what ``job`` shows in a cell): live curves, state, log, Stop."""

    def __init__(self, job, *, poll: float = 1.5, start: bool = True) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        self.job, self.poll = job, poll
        self.header = w.HTML()
        self.logs = w.HTML()
        self.stop_button = w.Button(description="Stop", button_style="danger",
                                    icon="stop", layout=w.Layout(width="90px"))
        self.stop_button.on_click(self._stop)
        figure = make_subplots(rows=1, cols=4, subplot_titles=[
            *(title for _, title in PANELS), "validation"])
        self.figure = go.FigureWidget(figure)
        self.figure.update_layout(height=260, margin={"l": 40, "r": 10, "t": 30, "b": 30},
                                  showlegend=True, legend={"orientation": "h", "y": -0.2})
        self._traces: dict[str, Any] = {}
        self._after_metrics = self._after_logs = 0
        self._lines: list[str] = []
        self._closed = threading.Event()
        super().__init__([w.HTML(STYLE), w.HBox([self.header, self.stop_button]),
                          self.figure, self.logs])
        self.add_class("lh-job")
        self.refresh()
        if start and self.job.state in ACTIVE:
            threading.Thread(target=self._follow, daemon=True).start()

    # -- drawing -------------------------------------------------------------------------

    def _trace(self, name: str):
        if name not in self._traces:
            panel = next((i for i, (key, _) in enumerate(PANELS) if key == name), 3)
            self.figure.add_scatter(x=[], y=[], mode="lines", name=name, row=1, col=panel + 1)
            self._traces[name] = self.figure.data[-1]
        return self._traces[name]

    def add_points(self, points: list[dict]) -> None:
        by_name: dict[str, tuple[list, list]] = {}
        for point in points:
            xs, ys = by_name.setdefault(point["name"], ([], []))
            xs.append(point["step"])
            ys.append(point["value"])
        with self.figure.batch_update():
            for name, (xs, ys) in by_name.items():
                trace = self._trace(name)
                trace.x = tuple(trace.x or ()) + tuple(xs)
                trace.y = tuple(trace.y or ()) + tuple(ys)

    def show_state(self, view: dict) -> None:
        state = view["state"]
        parts = [f"<span class='lh-state'>{escape(state)}</span>"]
        queue = view.get("queue") or {}
        if state in ("queued", "preempted") and queue.get("message"):
            parts.append(escape(queue["message"]))
        elif view.get("message"):
            parts.append(escape(view["message"]))
        details = f"step {view.get('step', 0)}, attempt {view.get('attempt', 0)}"
        if view.get("checkpoint_step") is not None:
            details += f", checkpoint at step {view['checkpoint_step']}"
        if view.get("preemptions"):
            details += f", preempted {view['preemptions']}x"
        result = view.get("result") or {}
        metrics = result.get("metrics") or {}
        if metrics:
            details += "; " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        # The button first: the header saying "succeeded" must never show beside a live Stop.
        self.stop_button.disabled = state not in ACTIVE
        spec = view.get("spec") or {}
        what = spec.get("recipe") or (spec.get("function") or {}).get("name", "function")
        self.header.value = (f"<b>{escape(what)}</b> on {escape(view.get('dataset', ''))} "
                             f"&middot; {' &middot; '.join(parts)}<br>"
                             f"<span class='lh-muted'>{escape(details)}</span>")

    def add_lines(self, lines: list[dict]) -> None:
        self._lines += [f"[{x['rank']}] {x['line']}" for x in lines]
        self._lines = self._lines[-LOG_LINES:]
        self.logs.value = f"<pre>{escape(chr(10).join(self._lines))}</pre>"

    # -- following the job ------------------------------------------------------------------

    def refresh(self) -> None:
        training = self.job.training
        metrics = training.metrics(self.job.id, self._after_metrics)
        if metrics["metrics"]:
            self.add_points(metrics["metrics"])
            self._after_metrics = metrics["next"]
        logs = training.logs(self.job.id, self._after_logs)
        if logs["lines"]:
            self.add_lines(logs["lines"])
            self._after_logs = logs["next"]
        self.show_state(self.job.refresh().view)

    def _follow(self) -> None:
        while not self._closed.wait(self.poll):
            try:
                self.refresh()
            except Exception as exc:  # the API restarting: say so, keep following
                self.header.value += f"<br><span class='lh-muted'>{escape(str(exc))}</span>"
            if self.job.state not in ACTIVE:
                self.refresh()
                return

    def _stop(self, _button=None) -> None:
        self.stop_button.disabled = True
        self.job.cancel()
        self.show_state(self.job.refresh().view)

    def close(self) -> None:
        self._closed.set()
        super().close()
