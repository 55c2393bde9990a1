"""Model-assisted labeling: a registered model version's predictions written into a
dataset's draft as pre-annotations (``Client().models.predict_into``).

    client.models.predict_into("digits", "digits-cnn@champion", filter={"annotated": False})
    client.labeling.configure("digits", order="uncertain")   # least confident first

Predictions run here, in the caller's kernel, with the version's own servable artifact
(``loophub.models.predictor.Predictor``: the recipe's preprocessing, no user code). They
are stored through the labeling route ``POST labeling/NAME/predictions`` as annotations
with ``source {"kind": "model", "name": MODEL, "version": "vN"}`` and a ``score`` (the top
probability of a class, each span's or box's own score). They are never labels: progress,
training and evaluation ignore them until a person accepts one, and the labelers show them
as suggestions. The service replaces a model's earlier predictions on a record when the
same model writes again, so a re-run (of this or a newer version of that model) replaces
them instead of piling them up.

Everything that can be refused (an unknown model or alias, an unknown dataset, a model of
another task or with labels the dataset does not have, a bad filter) is checked before
the first prediction is written. Writes go in chunks, each all-or-none; a run stopped
half-way keeps the chunks written, and running it again replaces them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.core import Client
    from loophub.models.predictor import Predictor

FILTER_KEYS = ("label", "split", "annotated", "annotator")  # the records listing's
MAX_PAGE = 1000  # records one listing page may hold (the records route's limit)
WRITE_CHUNK = 500  # predictions per request: under LoophubAPI.max_prediction_items (1000)
CLASS_TYPE = {"image_classification": "image_class", "text_classification": "text_class"}
IMAGE_TASKS = ("image_classification", "object_detection")


@dataclass
class Counts:
    predicted: int = 0  # records the model answered
    written: int = 0  # records whose predictions were stored
    annotations: int = 0  # predicted annotations stored
    skipped: int = 0  # records without an input the model takes (no image, no text)
    skipped_ids: list[str] = field(default_factory=list)


def predict_into(client: Client, dataset: str, model_ref: str, *,
                 filter: dict | None = None, batch_size: int = 256,
                 progress: bool = True) -> dict:
    """Predict DATASET's draft records matching FILTER with MODEL_REF (NAME, NAME@3,
    NAME@ALIAS) and store the predictions as pre-annotations; returns {"predicted",
    "written", "annotations", "skipped", "skipped_ids", "model", "dataset"}."""
    version = client.models.get(model_ref)  # NotFound names the missing model or alias
    schema = client.datasets.get(dataset)["label_schema"]
    check_compatible(version, schema, dataset)
    query = record_query(filter)
    check_batch_size(batch_size)
    predictor = _load(client, version)
    ref = version["ref"]  # name@vN: an alias moving meanwhile changes nothing here
    writer = _Writer(client, dataset, version["model"], f"v{version['version']}")
    counts = Counts()
    with _bar(progress, f"predict {ref} → {dataset}") as bar:
        for page in _pages(client, dataset, query, batch_size, bar):
            for record, prediction in _predict(client, dataset, predictor, page, counts):
                writer.add(record["id"], to_annotations(predictor.task, prediction))
            bar.update(len(page))
        writer.flush()
    return {"predicted": counts.predicted, "written": writer.records,
            "annotations": writer.annotations, "skipped": counts.skipped,
            "skipped_ids": counts.skipped_ids[:100], "model": ref, "dataset": dataset}


# -- checks before anything is written ---------------------------------------------------

def check_compatible(version: dict, schema: dict, dataset: str) -> None:
    """The model must answer the dataset's task with labels the dataset has, or every
    prediction would be refused by the dataset's record validation later."""
    task, ref = version.get("task"), version.get("ref")
    wanted = schema.get("task")
    if wanted not in (task, "mixed"):
        raise errors.InvalidInput(
            f"predict_into: model {ref} is a {task} model and dataset {dataset!r} is labeled "
            f"for {wanted}; use a {wanted} model (client.models.list(task={wanted!r}))",
            detail={"field": "model"})
    classes = {c["name"] for c in schema.get("classes") or ()}
    unknown = [label for label in version.get("labels") or () if label not in classes]
    if classes and unknown:
        raise errors.InvalidInput(
            f"predict_into: model {ref} predicts labels dataset {dataset!r} does not have: "
            f"{', '.join(map(repr, unknown[:10]))}; add them to the dataset's label schema "
            "(client.datasets.update(name, label_schema=...)) or use a model trained on it",
            detail={"field": "model", "labels": unknown})


def record_query(filter: dict | None) -> dict[str, Any]:
    """The records listing's query for FILTER ({"split": "train", "annotated": False,
    "label": ..., "annotator": ...}: the keys client.datasets.records takes)."""
    if filter is None:
        return {}
    if not isinstance(filter, dict):
        raise errors.InvalidInput(f"predict_into: filter must be a dict of {FILTER_KEYS}, "
                                  f"got {type(filter).__name__}", detail={"field": "filter"})
    unknown = sorted(set(filter) - set(FILTER_KEYS))
    if unknown:
        raise errors.InvalidInput(
            f"predict_into: filter keys {unknown} are not record filters; use "
            f"{', '.join(FILTER_KEYS)} (e.g. {{'annotated': False}} for unlabeled records)",
            detail={"field": "filter"})
    query: dict[str, Any] = {}
    for key, value in filter.items():
        if value is None:
            continue
        if key == "annotated":
            if not isinstance(value, bool):
                raise errors.InvalidInput("predict_into: filter 'annotated' is True or False",
                                          detail={"field": "filter.annotated"})
            value = "true" if value else "false"
        elif not isinstance(value, str):
            raise errors.InvalidInput(f"predict_into: filter {key!r} is a string",
                                      detail={"field": f"filter.{key}"})
        query[key] = value
    return query


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) \
            or not 1 <= batch_size <= MAX_PAGE:
        raise errors.InvalidInput(f"predict_into: batch_size must be a whole number from 1 "
                                  f"to {MAX_PAGE}, got {batch_size!r}",
                                  detail={"field": "batch_size"})


def _load(client: Client, version: dict) -> Predictor:
    from loophub.models.predictor import Predictor

    return Predictor.load(client.models.artifact(version["ref"]), version["meta"])


# -- reading and predicting ----------------------------------------------------------------

def _pages(client: Client, dataset: str, query: dict, size: int, bar) -> Iterator[list[dict]]:
    """The matching draft records, a page at a time (keyset paging: records written
    meanwhile are behind the cursor); the first page sets the progress bar's total."""
    path = f"datasets/{quote(dataset, safe='')}/records"
    params: dict[str, Any] = {**query, "limit": size, "total": "true"}
    while True:
        page = client.request("GET", path, params=params)
        if page.get("total") is not None:
            bar.total = page["total"]
            bar.refresh()
        records = [entry["record"] for entry in page["records"]]
        if records:
            yield records
        if not page["next_cursor"]:
            return
        params = {**query, "limit": size, "after": page["next_cursor"]}


def _predict(client: Client, dataset: str, predictor: Predictor, records: list[dict],
             counts: Counts) -> Iterator[tuple[dict, dict]]:
    """(record, prediction) for the records the model can take; the others are counted
    as skipped."""
    if predictor.task in IMAGE_TASKS:
        inputs = [(r, _media(client, dataset, r)) for r in records]
    else:
        inputs = [(r, r if isinstance(r.get("text"), str) and r["text"] else None)
                  for r in records]
    usable = []
    for record, x in inputs:
        if x is None:
            _skip(counts, record)
        else:
            usable.append((record, x))
    if not usable:
        return
    try:
        answers = _run(predictor, [x for _, x in usable])
    except errors.InvalidInput:
        answers = _one_by_one(predictor, usable, counts)  # an unreadable image: find it
    for (record, _), answer in zip(usable, answers, strict=True):
        if answer is not None:
            counts.predicted += 1
            yield record, answer


def _media(client: Client, dataset: str, record: dict) -> bytes | None:
    if not (record.get("media") or {}).get("sha256"):
        return None
    try:
        return client.labeling.media(dataset, record["id"])[0]
    except errors.NotFound:
        return None


def _run(predictor: Predictor, inputs: list) -> list[dict]:
    if predictor.task in IMAGE_TASKS:
        return predictor.predict_images(inputs)
    return predictor.predict_records(inputs, lambda _record: None)


def _one_by_one(predictor: Predictor, usable: list[tuple[dict, Any]],
                counts: Counts) -> list[dict | None]:
    answers: list[dict | None] = []
    for record, x in usable:
        try:
            answers.append(_run(predictor, [x])[0])
        except errors.InvalidInput:
            _skip(counts, record)
            answers.append(None)
    return answers


def _skip(counts: Counts, record: dict) -> None:
    counts.skipped += 1
    counts.skipped_ids.append(record["id"])


# -- predictions as annotations -------------------------------------------------------------

def to_annotations(task: str, prediction: dict) -> list[dict]:
    """A Predictor answer as record annotations, each with its score (classification: the
    top probability; NER: the span's; detection: the box's). No source: the predictions
    route stamps the model's."""
    if task in CLASS_TYPE:
        return [{"type": CLASS_TYPE[task], "label": prediction["label"],
                 "score": _score(max(prediction["scores"]))}]
    if task == "ner":
        return [{"type": "span", "start": s["start"], "end": s["end"], "label": s["label"],
                 "text": s["text"], "score": _score(s["score"])}
                for s in prediction["spans"]]
    if task == "object_detection":
        return [{"type": "bbox", "bbox": [round(v, 2) for v in b["box"]], "label": b["label"],
                 "score": _score(b["score"])} for b in prediction["boxes"]]
    raise errors.InvalidInput(f"predict_into: no pre-annotations for task {task!r}")


def _score(value: float) -> float:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else 0.0


# -- writing -----------------------------------------------------------------------------

class _Writer:
    """Predictions sent in chunks through the predictions route. A record the model
    found nothing on (no span, no box) is sent with no annotations, so that model's stale
    predictions on it are removed too."""

    def __init__(self, client: Client, dataset: str, model: str, version: str) -> None:
        self.labeling, self.dataset = client.labeling, dataset
        self.model, self.version = model, version
        self.chunk = WRITE_CHUNK
        self.pending: list[dict] = []
        self.records = self.annotations = 0

    def add(self, record_id: str, annotations: list[dict]) -> None:
        self.pending.append({"record_id": record_id, "model": self.model,
                             "version": self.version, "annotations": annotations})
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            part = self.pending[:self.chunk]
            try:
                stored = self.labeling.put_predictions(self.dataset, part)
            except errors.TooLarge as exc:  # an API configured with a smaller limit
                limit = int((exc.detail or {}).get("limit") or 0)
                if not 0 < limit < len(part):
                    raise
                self.chunk = limit
                continue
            self.records += stored["records"]
            self.annotations += stored["annotations"]
            del self.pending[:len(part)]


class _NoBar:
    total: int | None = None

    def update(self, _n: int) -> None:
        pass

    def refresh(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


def _bar(enabled: bool, desc: str):
    """tqdm (a widget in notebooks, text in a terminal), as the other SDK methods."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=None, desc=desc, unit="rec")
