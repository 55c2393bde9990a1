"""The labeling session behind every labeler widget, with no widget code in it.

It holds the sequence of items the labeler has seen (so "back" works), fetches ahead
(``prefetch``) so "next" never waits for the network, writes every label through the
API as it is made (one request per change, retried on a stale revision, never
duplicated: annotation ids are chosen here), and keeps undo/redo stacks of inverse
operations. In queue mode items come from leases, so a restarted kernel resumes with the
items it held and two labelers never get the same item; in browse mode (a label, an
annotator, or labeled items asked for) it pages through the draft without leases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loophub import errors

CLASS_TYPE = {"image_classification": "image_class", "text_classification": "text_class"}
IMAGE_TASKS = ("image_classification", "object_detection")
DEFAULT_KEYS = {"next": "ArrowRight", "back": "ArrowLeft", "skip": "s", "accept": "Enter",
                "undo": "ctrl+z", "redo": "ctrl+shift+z", "delete": "Delete",
                "zoom_in": "+", "zoom_out": "-", "zoom_reset": "0"}
HOTKEY_POOL = [*"123456789", *"qwertyuiopasdfghjklzxcvbnm"]


@dataclass
class Item:
    record: dict
    revision: int
    leased: bool = False
    media: bytes = b""
    media_type: str = ""
    agreement: float | None = None

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class Op:
    """One annotation change: add, update or delete (``before`` is what update/delete
    replaced, so the inverse can restore it)."""

    kind: str
    record_id: str
    annotation: dict
    before: dict | None = None

    def inverse(self) -> Op:
        if self.kind == "review":
            return Op("review", self.record_id, self.before or {}, self.annotation)
        if self.kind == "add":
            return Op("delete", self.record_id, self.annotation, self.annotation)
        if self.kind == "delete":
            return Op("add", self.record_id, self.before or self.annotation)
        return Op("update", self.record_id, self.before or {}, self.annotation)


@dataclass
class Filters:
    split: str | None = None
    label: str | None = None
    annotator: str | None = None
    unlabeled: bool = True
    review: bool = False
    order: str | None = None  # queue mode's lease order; None: the dataset's setting
    origin: str | None = None  # "production": inputs the feedback loop collected

    @property
    def browsing(self) -> bool:
        return (self.review or self.label is not None or self.annotator is not None
                or not self.unlabeled)


@dataclass
class LabelingSession:
    """The labeling state of one widget; ``api`` is a Client's ``labeling``."""

    api: Any
    dataset: str
    filters: Filters = field(default_factory=Filters)
    prefetch: int = 3
    items: list[Item] = field(default_factory=list)
    position: int = 0
    undo_stack: list[list[Op]] = field(default_factory=list)
    redo_stack: list[list[Op]] = field(default_factory=list)
    exhausted: bool = False

    def __post_init__(self) -> None:
        info = self.api.datasets.get(self.dataset)
        self.schema: dict = info["label_schema"]
        self.task: str = self.schema.get("task", "mixed")
        self.user: str = self.api.me()
        self._browse: Iterator[dict] | None = None
        self._seen: set[str] = set()

    # -- items ------------------------------------------------------------------------

    @property
    def current(self) -> Item | None:
        return self.items[self.position] if self.position < len(self.items) else None

    def find(self, record_id: str) -> Item:
        for item in self.items:
            if item.id == record_id:
                return item
        raise errors.NotFound(f"record {record_id!r} is not in this labeling session")

    def fill(self) -> list[Item]:
        """Fetch items until ``prefetch`` are waiting after the current one; the new ones."""
        wanted = self.position + 1 + self.prefetch - len(self.items)
        if wanted <= 0 or self.exhausted:
            return []
        fetched = self._browse_more(wanted) if self.filters.browsing else self._lease_more(wanted)
        if len(fetched) < wanted:
            self.exhausted = True
        for item in fetched:
            self._seen.add(item.id)
            if self.task in IMAGE_TASKS:
                self._load_media(item)
        self.items.extend(fetched)
        return fetched

    def _lease_more(self, wanted: int) -> list[Item]:
        # Ask for what we hold plus the wanted new ones: held items come back first.
        held = sum(1 for item in self.items if item.leased and not self.labeled_by_me(item))
        leased = self.api.lease(self.dataset, held + wanted, split=self.filters.split,
                                order=self.filters.order, origin=self.filters.origin)
        fresh = [Item(i["record"], i["revision"], leased=True) for i in leased
                 if i["record"]["id"] not in self._seen]
        return fresh[:wanted]

    def _browse_more(self, wanted: int) -> list[Item]:
        if self._browse is None and self.filters.review:
            queue = self.api.review_queue(self.dataset, limit=1000,
                                          annotator=self.filters.annotator)
            self._browse = iter(queue)
        if self._browse is None:
            self._browse = iter(self.api.datasets.records(
                self.dataset, label=self.filters.label, split=self.filters.split,
                annotator=self.filters.annotator, origin=self.filters.origin,
                annotated=False if self.filters.unlabeled and not (
                    self.filters.label or self.filters.annotator) else None,
                page_size=max(10, wanted)))
        out = []
        for entry in self._browse:
            out.append(Item(entry["record"], entry["revision"], agreement=entry.get("agreement")))
            if len(out) >= wanted:
                break
        return out

    def _load_media(self, item: Item) -> None:
        if item.media or not (item.record.get("media") or {}).get("sha256"):
            return
        try:
            item.media, item.media_type = self.api.media(self.dataset, item.id)
        except errors.NotFound:
            item.media, item.media_type = b"", ""

    def go(self, position: int) -> list[Item]:
        """Move to ``position`` (clamped) and fetch ahead; the newly fetched items."""
        self.position = max(0, min(position, len(self.items)))
        return self.fill()

    def skip(self) -> list[Item]:
        item = self.current
        if item is not None and not self.filters.browsing:
            self.api.skip(self.dataset, item.id)
            item.leased = False
        return self.go(self.position + 1)

    # -- annotations ------------------------------------------------------------------

    def mine(self, item: Item) -> list[dict]:
        return [a for a in item.record["annotations"]
                if (a.get("source") or {}).get("kind") == "user"
                and a["source"]["name"] == self.user]

    def labeled_by_me(self, item: Item) -> bool:
        return bool(self.mine(item))

    def suggestions(self, item: Item) -> list[dict]:
        """Model predictions on the item (pre-annotations to accept or correct)."""
        return [a for a in item.record["annotations"]
                if (a.get("source") or {}).get("kind") == "model"]

    def new_annotation(self, fields: dict) -> dict:
        return {**fields, "id": fields.get("id") or uuid.uuid4().hex[:12],
                "source": {"kind": "user", "name": self.user}}

    def set_labels(self, record_id: str, labels: list[str],
                   new_id: str | None = None) -> list[Op]:
        """Make the user's class labels on a record exactly ``labels`` (single-label: one)."""
        return self.apply(self._label_ops(record_id, labels, new_id))

    def _label_ops(self, record_id: str, labels: list[str],
                   new_id: str | None = None) -> list[Op]:
        item = self.find(record_id)
        kind = CLASS_TYPE.get(self.task, "image_class")
        current = [a for a in self.mine(item) if a.get("type") == kind]
        ops: list[Op] = []
        if not self.schema.get("multi_label") and len(labels) == 1 and len(current) == 1:
            if current[0]["label"] != labels[0]:
                ops.append(Op("update", record_id, {**current[0], "label": labels[0]},
                              current[0]))
        else:
            keep = {a["label"] for a in current if a["label"] in labels}
            ops += [Op("delete", record_id, a, a) for a in current if a["label"] not in labels]
            ops += [Op("add", record_id, self.new_annotation({"type": kind, "label": label}))
                    for label in labels if label not in keep]
            if new_id and len(ops) == 1 and ops[0].kind == "add":
                ops[0].annotation["id"] = new_id
        return ops

    def accept_suggestions(self, record_id: str) -> list[Op]:
        """Copy the model's predictions as the user's own annotations, each recording the
        prediction it confirms (``attributes.from_prediction``: model, version, label,
        score), so a person's confirmation is told apart from a label typed from scratch
        and from the unconfirmed prediction itself."""
        item = self.find(record_id)
        suggested = self.suggestions(item)
        if self.task in CLASS_TYPE:
            chosen = [a for a in suggested if a.get("label")]
            chosen = chosen if self.schema.get("multi_label") else chosen[:1]
            return self.apply(self._confirm_labels(record_id, chosen))
        keys = ("type", "label", "bbox", "start", "end", "text", "normalized")
        ops = [Op("add", record_id, confirming(self.new_annotation(
            {k: a[k] for k in keys if k in a}), a)) for a in suggested]
        return self.apply(ops)

    def _confirm_labels(self, record_id: str, chosen: list[dict]) -> list[Op]:
        """The class-label changes that make CHOSEN predictions the user's labels, each
        marked as confirming its prediction; a label the user already had is marked too."""
        by_label = {a["label"]: a for a in chosen}
        ops = self._label_ops(record_id, list(by_label))
        for op in ops:
            if op.kind in ("add", "update") and op.annotation.get("label") in by_label:
                op.annotation = confirming(op.annotation, by_label[op.annotation["label"]])
        touched = {op.annotation.get("id") for op in ops}
        kind = CLASS_TYPE[self.task]
        for ann in self.mine(self.find(record_id)):
            if (ann.get("type") == kind and ann.get("label") in by_label
                    and ann.get("id") not in touched
                    and "from_prediction" not in (ann.get("attributes") or {})):
                ops.append(Op("update", record_id,
                              confirming(ann, by_label[ann["label"]]), ann))
        return ops

    def add(self, record_id: str, annotation: dict) -> list[Op]:
        return self.apply([Op("add", record_id, self.new_annotation(annotation))])

    def update(self, record_id: str, annotation_id: str, fields: dict) -> list[Op]:
        before = self._annotation(record_id, annotation_id)
        return self.apply([Op("update", record_id, {**before, **fields}, before)])

    def delete(self, record_id: str, annotation_id: str) -> list[Op]:
        before = self._annotation(record_id, annotation_id)
        return self.apply([Op("delete", record_id, before, before)])

    def _annotation(self, record_id: str, annotation_id: str) -> dict:
        for ann in self.find(record_id).record["annotations"]:
            if ann.get("id") == annotation_id:
                return ann
        raise errors.NotFound(f"record {record_id!r} has no annotation {annotation_id!r}")

    # -- review -----------------------------------------------------------------------

    def review(self, record_id: str, annotation_id: str, state: str) -> list[Op]:
        """Accept or reject one annotation (undoable: the previous state is kept)."""
        if state not in ("accepted", "rejected", "pending"):
            raise errors.InvalidInput("review state must be accepted, rejected or pending")
        before = (self._annotation(record_id, annotation_id).get("review") or {}).get(
            "state", "pending")
        return self.apply([Op("review", record_id, {"id": annotation_id, "state": state},
                              {"id": annotation_id, "state": before})])

    def review_all(self, record_id: str, state: str) -> list[Op]:
        """Accept or reject every labeler's unreviewed annotations on a record."""
        ops = [Op("review", record_id, {"id": a["id"], "state": state},
                  {"id": a["id"], "state": "pending"})
               for a in self.find(record_id).record["annotations"]
               if (a.get("source") or {}).get("kind") == "user"
               and (a.get("review") or {}).get("state") in (None, "pending")]
        return self.apply(ops)

    def fix(self, record_id: str, labels: list[str]) -> list[Op]:
        """The reviewer's own class labels: theirs accepted, labelers' differing ones
        rejected and matching ones accepted."""
        fix_ops = self.set_labels(record_id, labels)
        if fix_ops:  # kept on the stack below together with the reviews, as one step
            self.undo_stack.pop()
        reviews = []
        for ann in self.find(record_id).record["annotations"]:
            if (ann.get("source") or {}).get("kind") != "user" or not ann.get("label"):
                continue
            state = "accepted" if ann["label"] in labels else "rejected"
            prior = (ann.get("review") or {}).get("state", "pending")
            if prior != state:
                reviews.append(Op("review", record_id, {"id": ann["id"], "state": state},
                                  {"id": ann["id"], "state": prior}))
        for op in reviews:
            self._write(op)
        if fix_ops or reviews:
            self.undo_stack.append(fix_ops + reviews)
            self.redo_stack.clear()
        return fix_ops + reviews

    def apply(self, ops: list[Op], *, history: bool = True) -> list[Op]:
        """Write ``ops`` through the API, one request each; remember them for undo."""
        for op in ops:
            self._write(op)
        if ops and history:
            self.undo_stack.append(ops)
            self.redo_stack.clear()
        return ops

    def undo(self) -> str | None:
        """Revert the last change; the record it touched (so the widget can show it)."""
        if not self.undo_stack:
            return None
        ops = self.undo_stack.pop()
        for op in reversed(ops):
            self._write(op.inverse())
        self.redo_stack.append(ops)
        return ops[0].record_id

    def redo(self) -> str | None:
        if not self.redo_stack:
            return None
        ops = self.redo_stack.pop()
        for op in ops:
            self._write(op)
        self.undo_stack.append(ops)
        return ops[0].record_id

    def _write(self, op: Op, attempts: int = 3) -> None:
        item = self.find(op.record_id)
        for attempt in range(attempts):
            try:
                item.revision = self._send(op, item.revision)
                break
            except errors.Conflict:
                # Someone else wrote the record (another labeler, a reviewer): reread it;
                # if our write already landed (a lost response) it must not be repeated.
                fresh = self.api.datasets.record(self.dataset, op.record_id)
                item.record, item.revision = fresh["record"], fresh["revision"]
                if self._already_applied(item, op):
                    return
                if attempt == attempts - 1:
                    raise
        self._apply_locally(item, op)

    def _send(self, op: Op, revision: int) -> int:
        ds, rid, ann = self.api.datasets, op.record_id, op.annotation
        if op.kind == "review":
            return ds.review(self.dataset, rid, ann["id"], ann["state"], revision)["revision"]
        if op.kind == "add":
            return ds.annotate(self.dataset, rid, ann, revision)["revision"]
        if op.kind == "update":
            return ds.update_annotation(self.dataset, rid, ann["id"], ann, revision)["revision"]
        return ds.delete_annotation(self.dataset, rid, ann["id"], revision)["revision"]

    @staticmethod
    def _already_applied(item: Item, op: Op) -> bool:
        present = {a.get("id"): a for a in item.record["annotations"]}
        if op.kind == "review":
            review = present.get(op.annotation["id"], {}).get("review") or {}
            return review.get("state", "pending") == op.annotation["state"]
        if op.kind == "add":
            return op.annotation["id"] in present
        if op.kind == "delete":
            return op.annotation["id"] not in present
        current = present.get(op.annotation["id"], {})
        return all(current.get(k) == v for k, v in op.annotation.items())

    @staticmethod
    def _apply_locally(item: Item, op: Op) -> None:
        annotations = item.record["annotations"]
        index = next((i for i, a in enumerate(annotations)
                      if a.get("id") == op.annotation["id"]), None)
        if op.kind == "review" and index is not None:
            annotations[index] = {**annotations[index],
                                  "review": {"state": op.annotation["state"]}}
        elif op.kind == "add" and index is None:
            annotations.append(dict(op.annotation))
        elif op.kind == "update" and index is not None:
            annotations[index] = dict(op.annotation)
        elif op.kind == "delete" and index is not None:
            del annotations[index]

    def close(self) -> None:
        """Give back this session's leases (others may take the unlabeled items at once)."""
        ids = [i.id for i in self.items if i.leased]
        if ids:
            self.api.release(self.dataset, ids)


def confirming(annotation: dict, prediction: dict) -> dict:
    """ANNOTATION (a person's) recording that it confirms PREDICTION: which model version
    suggested what with which score. Kept in ``attributes`` (the record schema's free
    field; ``source`` names only who made an annotation)."""
    source = prediction.get("source") or {}
    confirmed = {"model": source.get("name"), "version": source.get("version"),
                 "annotation": prediction.get("id"), "label": prediction.get("label"),
                 "score": prediction.get("score")}
    attributes = {**(annotation.get("attributes") or {}),
                  "from_prediction": {k: v for k, v in confirmed.items() if v is not None}}
    return {**annotation, "attributes": attributes}


def default_hotkeys(schema: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """label -> key: the schema's hotkeys, then a one-character name's own key (class "0"
    on key 0, "b" on b), then number keys and letters, then overrides."""
    keys: dict[str, str] = {}
    reserved = {"s", "z"}
    for cls in schema.get("classes", ()):
        if cls.get("hotkey"):
            keys[cls["name"]] = cls["hotkey"]
    for cls in schema.get("classes", ()):
        own = cls["name"].lower()  # the labeler reads letter keys in lower case
        if (cls["name"] not in keys and len(own) == 1 and own.isalnum() and own.isascii()
                and own not in reserved and own not in keys.values()):
            keys[cls["name"]] = own
    free = [k for k in HOTKEY_POOL if k not in set(keys.values()) | reserved]
    for cls in schema.get("classes", ()):
        if cls["name"] not in keys and free:
            keys[cls["name"]] = free.pop(0)
    keys.update(overrides or {})
    return keys
