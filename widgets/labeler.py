"""The labeler widgets: one anywidget front-end (labeler.js) over a LabelingSession.

The front-end sends a message per key press or click; this side writes it through the
API synchronously and answers with the saved record, so the front-end can measure the
time from the key press to the API's confirmation. Items are prefetched (record and
image bytes) so moving to the next one never waits for the network.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets

from loophub import errors
from loophub.client import Client
from loophub.datasets.records import ORIGINS, annotators_of, labels_of
from loophub.labeling.agreement import is_done
from loophub.widgets.session import (
    DEFAULT_KEYS,
    Filters,
    Item,
    LabelingSession,
    default_hotkeys,
)

log = logging.getLogger("loophub.widgets")
HERE = Path(__file__).parent
PROGRESS_EVERY_S = 10.0  # progress is a scan of the dataset: not on every key press


class Labeler(anywidget.AnyWidget):
    """Label a dataset in the notebook; the task comes from the dataset's label schema.

    ``split``, ``label``, ``annotator``, ``unlabeled=False`` and ``origin="production"``
    (inputs the feedback loop collected from a release) filter the items (label,
    annotator and unlabeled=False browse the draft without leases); ``order`` is the order of leased
    items ("id", or "uncertain": lowest model confidence first; None: the dataset's
    labeling setting); ``hotkeys`` maps labels to keys and ``keys`` overrides the other
    shortcuts (see DEFAULT_KEYS)."""

    _esm = HERE / "labeler.js"
    _css = HERE / "labeler.css"
    tasks: tuple[str, ...] = ()
    review_mode = False

    dataset = traitlets.Unicode().tag(sync=True)
    task = traitlets.Unicode().tag(sync=True)
    user = traitlets.Unicode().tag(sync=True)
    mode = traitlets.Unicode("label").tag(sync=True)
    classes = traitlets.List().tag(sync=True)
    hotkeys = traitlets.Dict().tag(sync=True)
    shortcuts = traitlets.Dict().tag(sync=True)
    multi_label = traitlets.Bool(False).tag(sync=True)
    auto_advance = traitlets.Bool(True).tag(sync=True)
    progress = traitlets.Dict().tag(sync=True)
    filters = traitlets.Dict().tag(sync=True)

    def __init__(self, dataset: str, *, client: Client | None = None,
                 split: str | None = None, label: str | None = None,
                 annotator: str | None = None, unlabeled: bool = True, prefetch: int = 5,
                 hotkeys: dict[str, str] | None = None, keys: dict[str, str] | None = None,
                 auto_advance: bool = True, order: str | None = None,
                 origin: str | None = None, **kwargs: Any) -> None:
        api = (client or Client()).labeling
        filters = Filters(split=split, label=label, annotator=annotator, unlabeled=unlabeled,
                          review=self.review_mode, order=order, origin=origin)
        session = LabelingSession(api, dataset, filters, prefetch=prefetch)
        if self.tasks and session.task not in self.tasks:
            raise errors.InvalidInput(
                f"dataset {dataset!r} is labeled for {session.task!r}; {type(self).__name__} "
                f"labels {', '.join(self.tasks)} (use loophub.widgets.labeler_for)")
        super().__init__(
            dataset=dataset, task=session.task, user=session.user,
            mode="review" if self.review_mode else "label",
            classes=[{k: c[k] for k in ("name", "color") if k in c}
                     for c in session.schema.get("classes", ())],
            hotkeys=default_hotkeys(session.schema, hotkeys),
            shortcuts={**DEFAULT_KEYS, **(keys or {})},
            multi_label=bool(session.schema.get("multi_label")),
            auto_advance=auto_advance, **kwargs)
        self.api, self.session = api, session
        self.filters = _filters_dict(filters)
        self.timings: dict[str, list[float]] = {"persist": [], "next": []}
        self.errors: list[str] = []
        self.on_msg(self._on_message)
        self.refresh()
        session.fill()

    # -- messages from the front-end --------------------------------------------------

    def _on_message(self, _widget, msg: dict, _buffers) -> None:
        handler = getattr(self, f"_on_{msg.get('type')}", None)
        if handler is None:
            return
        try:
            handler(msg)
        except errors.LoophubError as exc:
            self._report(msg, exc.message)
        except Exception as exc:  # a bug must not leave the front-end waiting forever
            log.exception("labeler message %s failed", msg.get("type"))
            self._report(msg, f"internal error: {exc!r}")

    def _report(self, msg: dict, message: str) -> None:
        self.errors.append(message)
        self.send({"type": "fail" if "req" in msg else "error", "req": msg.get("req"),
                   "error": message, "record_id": msg.get("record_id"),
                   **self._record_of(msg.get("record_id"))})

    def _on_ready(self, _msg: dict) -> None:
        items = self.session.items
        self.send({"type": "sync", "items": [self._describe(i) for i in items],
                   "position": self.session.position, "exhausted": self.session.exhausted},
                  [i.media for i in items])

    def _on_nav(self, msg: dict) -> None:
        self._send_more(self.session.go(int(msg["pos"])))
        if time.monotonic() - self._progress_at > PROGRESS_EVERY_S:
            self.refresh()  # other labelers' work shows up, at most every few seconds

    def _on_skip(self, msg: dict) -> None:
        self.session.position = int(msg["pos"])
        self._send_more(self.session.skip())

    def _on_filter(self, msg: dict) -> None:
        """New filters from the filter bar: a fresh session (leases given back first)."""
        def text(key: str) -> str | None:
            value = msg.get(key)
            return value if isinstance(value, str) and value else None
        self.set_filters(split=text("split"), label=text("label"),
                         annotator=text("annotator"), unlabeled=bool(msg.get("unlabeled", True)),
                         origin=text("origin"))

    def set_filters(self, *, split: str | None = None, label: str | None = None,
                    annotator: str | None = None, unlabeled: bool = True,
                    origin: str | None = None) -> None:
        """Show other items: by split, label, annotator, origin ("production"), or
        labeled ones too."""
        if origin is not None and origin not in ORIGINS:
            raise errors.InvalidInput(f"origin: {origin!r}; choose one of {', '.join(ORIGINS)}")
        filters = Filters(split=split, label=label, annotator=annotator, unlabeled=unlabeled,
                          review=self.review_mode, order=self.session.filters.order,
                          origin=origin)
        self.session.close()
        self.session = LabelingSession(self.api, self.dataset, filters,
                                       prefetch=self.session.prefetch)
        self.session.fill()
        self.filters = _filters_dict(filters)
        self._on_ready({})

    def _on_timing(self, msg: dict) -> None:
        self.timings.setdefault(msg["kind"], []).append(float(msg["ms"]))

    def _on_op(self, msg: dict) -> None:
        record_id = msg["record_id"]
        item = self.session.find(record_id)
        before = _summary(item.record, self.session.user)
        self._apply(msg, record_id)
        self._adjust_progress(before, _summary(item.record, self.session.user))
        self.send({"type": "ack", "req": msg["req"], "record_id": record_id,
                   **self._record_of(record_id)})

    def _apply(self, msg: dict, record_id: str) -> None:
        s, action = self.session, msg["action"]
        if action == "set_labels":
            s.set_labels(record_id, list(msg["labels"]))
        elif action == "add":
            s.add(record_id, msg["annotation"])
        elif action == "update":
            s.update(record_id, msg["annotation_id"], msg["fields"])
        elif action == "delete":
            s.delete(record_id, msg["annotation_id"])
        elif action == "accept":
            s.accept_suggestions(record_id)
        elif action == "review":
            s.review(record_id, msg["annotation_id"], msg["state"])
        elif action == "review_all":
            s.review_all(record_id, msg["state"])
        elif action == "fix":
            s.fix(record_id, list(msg["labels"]))
        else:
            raise errors.InvalidInput(f"unknown labeling action {action!r}")

    def _on_undo(self, msg: dict) -> None:
        self._history(msg, self.session.undo, "undo")

    def _on_redo(self, msg: dict) -> None:
        self._history(msg, self.session.redo, "redo")

    def _history(self, msg: dict, step, what: str) -> None:
        ops = (self.session.undo_stack if what == "undo" else self.session.redo_stack)
        if not ops:
            self.send({"type": "error", "req": msg.get("req"), "error": f"nothing to {what}"})
            return
        item = self.session.find(ops[-1][0].record_id)
        before = _summary(item.record, self.session.user)
        record_id = step()
        self._adjust_progress(before, _summary(item.record, self.session.user))
        self.send({"type": "show", "record_id": record_id, "what": what,
                   "req": msg.get("req"), **self._record_of(record_id)})

    # -- messages to the front-end ----------------------------------------------------

    def _describe(self, item: Item) -> dict:
        return {"record": item.record, "revision": item.revision,
                "media_type": item.media_type, "agreement": item.agreement}

    def _send_more(self, items: list[Item]) -> None:
        if not items and not self.session.exhausted:
            return
        offset = len(self.session.items) - len(items)
        self.send({"type": "more", "offset": offset, "items": [self._describe(i) for i in items],
                   "exhausted": self.session.exhausted}, [i.media for i in items])

    def _record_of(self, record_id: str | None) -> dict:
        try:
            item = self.session.find(record_id) if record_id else None
        except errors.NotFound:
            item = None
        return {"record": item.record, "revision": item.revision} if item else {}

    def _adjust_progress(self, before: tuple, after: tuple) -> None:
        """Progress follows each saved change locally (no extra request per label)."""
        labels_before, users_before, mine_before = before
        labels_after, users_after, mine_after = after
        progress = dict(self.progress)
        counts = dict(progress.get("labels", {}))
        for label in labels_before - labels_after:
            counts[label] = counts.get(label, 1) - 1
        for label in labels_after - labels_before:
            counts[label] = counts.get(label, 0) + 1
        overlap = progress.get("overlap", 1)
        progress["labels"] = {k: v for k, v in sorted(counts.items()) if v > 0}
        progress["done"] = progress.get("done", 0) + (
            is_done(users_after, bool(labels_after), overlap)
            - is_done(users_before, bool(labels_before), overlap))
        progress["labeled"] = progress.get("labeled", 0) + (
            (users_after > 0) - (users_before > 0))
        if "imported" in progress:
            progress["imported"] += ((bool(labels_after) and not users_after)
                                     - (bool(labels_before) and not users_before))
        progress["mine"] = progress.get("mine", 0) + (mine_after - mine_before)
        self.progress = progress

    # -- Python API: the same actions as the keys, for scripts and notebooks ---------

    @property
    def current(self) -> dict | None:
        """The record on screen (None when nothing is left)."""
        item = self.session.current
        return item.record if item else None

    def label(self, *labels: str, advance: bool = True) -> None:
        """Set the current item's class labels (saved at once) and move on."""
        item = self._require_current()
        self._change(item.id, lambda: self.session.set_labels(item.id, list(labels)))
        if advance:
            self.next()

    def annotate(self, annotation: dict) -> str:
        """Add a box or span to the current item; its annotation id."""
        item = self._require_current()
        ops = self._change(item.id, lambda: self.session.add(item.id, annotation))
        return ops[0].annotation["id"]

    def accept(self) -> None:
        """Take the model's suggestions on the current item as your labels."""
        item = self._require_current()
        self._change(item.id, lambda: self.session.accept_suggestions(item.id))

    def next(self) -> None:
        self.session.go(self.session.position + 1)
        self._on_ready({})

    def back(self) -> None:
        self.session.go(self.session.position - 1)
        self._on_ready({})

    def skip(self) -> None:
        self.session.skip()
        self._on_ready({})

    def undo(self) -> None:
        self._history({}, self.session.undo, "undo")

    def redo(self) -> None:
        self._history({}, self.session.redo, "redo")

    def _require_current(self) -> Item:
        if self.session.current is None:
            raise errors.NotFound("no item on screen: everything here is labeled or leased")
        return self.session.current

    def _change(self, record_id: str, action):
        item = self.session.find(record_id)
        before = _summary(item.record, self.session.user)
        ops = action()
        self._adjust_progress(before, _summary(item.record, self.session.user))
        self.send({"type": "show", "record_id": record_id, **self._record_of(record_id)})
        return ops

    def refresh(self) -> None:
        """Reread progress from the API (other labelers' work shows up)."""
        self.progress = self.api.progress(self.dataset)
        self._progress_at = time.monotonic()

    def close(self) -> None:
        try:
            if hasattr(self, "session"):
                self.session.close()
        except errors.LoophubError:
            log.warning("could not release the leases of %s", self.dataset, exc_info=True)
        super().close()


def _filters_dict(filters: Filters) -> dict:
    return {"split": filters.split, "label": filters.label, "annotator": filters.annotator,
            "unlabeled": filters.unlabeled, "origin": filters.origin}


def _summary(record: dict, user: str) -> tuple[set[str], int, bool]:
    users = annotators_of(record)
    return set(labels_of(record)), len(users), user in users


class ImageClassifier(Labeler):
    """Image classification, single- or multi-label (the schema's ``multi_label``)."""

    tasks = ("image_classification",)


class TextClassifier(Labeler):
    tasks = ("text_classification",)


class BoxLabeler(Labeler):
    """Bounding boxes: drag to draw, click to select, drag to move, corners to resize,
    Delete to remove, a label key to relabel the selected box, +/- or ctrl-wheel to zoom."""

    tasks = ("object_detection",)


class SpanLabeler(Labeler):
    """NER: select text and press a label key; offsets are Unicode code points."""

    tasks = ("ner",)


class ReviewLabeler(Labeler):
    """Review: each item with every labeler's annotations, most disputed first; accept
    (a), reject (r) or fix with a label key."""

    review_mode = True


LABELERS = {"image_classification": ImageClassifier, "text_classification": TextClassifier,
            "object_detection": BoxLabeler, "ner": SpanLabeler}


def labeler_for(dataset: str, *, client: Client | None = None,
                **options: Any) -> Labeler:
    """The labeler that fits the dataset's task."""
    api = (client or Client()).labeling
    task = api.datasets.get(dataset)["label_schema"].get("task")
    if task not in LABELERS:
        raise errors.InvalidInput(f"no labeler for task {task!r} yet; one of {sorted(LABELERS)}")
    return LABELERS[task](dataset, client=api.client, **options)
