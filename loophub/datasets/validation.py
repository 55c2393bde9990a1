"""Record and label-schema validation.

jsonschema (2020-12) is the reference. Bulk imports go through a compiled
fastjsonschema validator first (the schemas avoid keywords it lacks), and only a
record that fails it is re-checked by jsonschema for a precise message. Rules JSON
Schema cannot express (labels in the label schema, span offsets inside the text)
are checked in Python after the schema.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import jsonschema

from loophub.datasets.records import all_labels_of
from loophub.datasets.schemas import load_schema
from loophub.errors import InvalidInput

try:  # optional accelerator; jsonschema alone gives the same verdicts, slower
    import fastjsonschema
except ImportError:  # pragma: no cover
    fastjsonschema = None


@dataclass(frozen=True)
class Issue:
    """One problem: which record, where in it (JSON path), which rule, and why."""

    record_id: str | None
    path: str
    rule: str
    reason: str

    def describe(self, source: str = "", location: str = "") -> str:
        where = ", ".join(part for part in (source, location) if part)
        record = f"record {self.record_id!r}" if self.record_id is not None else "record"
        prefix = f"{where}: " if where else ""
        return f"{prefix}{record} at {self.path}: {self.reason} (rule: {self.rule})"


def _json_path(parts) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _schema_issue(error: jsonschema.ValidationError, record_id) -> Issue:
    return Issue(record_id, _json_path(error.absolute_path), error.validator, error.message)


class SchemaChecker:
    """A compiled fast check with the jsonschema reference for messages."""

    def __init__(self, schema: dict) -> None:
        jsonschema.Draft202012Validator.check_schema(schema)
        self.reference = jsonschema.Draft202012Validator(schema)
        self.fast = fastjsonschema.compile(schema) if fastjsonschema else None

    def passes(self, document) -> bool:
        if self.fast is None:
            return self.reference.is_valid(document)
        try:
            self.fast(document)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    def issues(self, document, record_id=None) -> list[Issue]:
        if self.fast is not None and self.passes(document):
            return []
        errors = sorted(self.reference.iter_errors(document), key=lambda e: list(e.path))
        return [_schema_issue(error, record_id) for error in errors]


class RecordChecker(SchemaChecker):
    """The record schema, compiled with the annotation's if/then rules split out.

    fastjsonschema evaluates ``allOf: [{if: type == X, then: ...}]`` by raising and
    catching an exception for every rule that does not apply (7 per annotation); here
    the schema without those rules is compiled once and each ``then`` is compiled on
    its own and picked by the annotation's type. Same verdicts, about 4x faster.
    """

    def __init__(self, schema: dict) -> None:
        super().__init__(schema)
        if fastjsonschema is None:
            return
        relaxed = json.loads(json.dumps(schema))
        rules = relaxed["$defs"]["annotation"].pop("allOf")
        self.fast = fastjsonschema.compile(relaxed)
        self.by_type = {rule["if"]["properties"]["type"]["const"]:
                        fastjsonschema.compile(rule["then"]) for rule in rules}

    def passes(self, document) -> bool:
        if self.fast is None:
            return self.reference.is_valid(document)
        try:
            self.fast(document)
            for ann in document["annotations"]:
                self.by_type[ann["type"]](ann)
        except fastjsonschema.JsonSchemaException:
            return False
        return True


class RecordValidator:
    """Validates records against the record schema and a dataset's label schema.

    With ``learn_classes`` the labels of every record that passes the record schema
    become classes as the records stream (a label schema inferred from them; ``classes``
    is complete at the end): a label is then only wrong when it is empty while a class
    exists, which may be learnt after the record that has it.
    """

    def __init__(self, label_schema: dict | None = None, *, learn_classes: bool = False) -> None:
        self.checker = _record_checker()
        self.classes = {c["name"] for c in (label_schema or {}).get("classes", ())}
        self.learn_classes = learn_classes
        self._undecided: tuple[dict, str, str] | None = None  # an empty label, no class yet

    def issues(self, record) -> list[Issue]:
        record_id = record.get("id") if isinstance(record, dict) else None
        found = self.checker.issues(record, record_id)
        if found:
            return found
        if self.learn_classes:
            self.classes.update(all_labels_of(record))
        return list(self._semantic_issues(record))

    def validate(self, record, *, source: str = "", location: str = "") -> None:
        """Raise InvalidInput naming the source, location, JSON path and rule of the first issue."""
        found = self.issues(record)
        self._decide_empty_label()
        if found:
            raise InvalidInput(
                found[0].describe(source, location) + "; fix the record and import again",
                detail={"source": source, "location": location, "path": found[0].path,
                        "rule": found[0].rule, "count": len(found)},
            )
        if self.learn_classes and not self.classes and self._undecided is None \
                and any(ann.get("label") == "" for ann in record["annotations"]):
            self._undecided = (copy.deepcopy(record), source, location)

    def _decide_empty_label(self) -> None:
        # The first class learnt makes an earlier record's empty label wrong: that record
        # is the first invalid one, as against a schema holding every class up front.
        if self._undecided is not None and self.classes:
            record, source, location = self._undecided
            self._undecided = None
            self.validate(record, source=source, location=location)

    def _semantic_issues(self, record: dict):
        rid = record["id"]
        text = record.get("text")
        seen_ids = set()
        for index, ann in enumerate(record["annotations"]):
            path = f"$.annotations[{index}]"
            if "id" in ann:
                if ann["id"] in seen_ids:
                    yield Issue(rid, f"{path}.id", "unique", f"annotation id {ann['id']!r} repeats")
                seen_ids.add(ann["id"])
            label = ann.get("label")
            if self.classes and label is not None and label not in self.classes:
                yield Issue(rid, f"{path}.label", "label_schema",
                            f"label {label!r} is not a class of the dataset's label schema")
            yield from _geometry_issues(rid, path, ann, text)
        for index, (start, end) in enumerate(record.get("tokens", ())):
            if text is None or not start <= end <= len(text):
                yield Issue(rid, f"$.tokens[{index}]", "offsets",
                            f"token [{start}, {end}) is outside the text")


def _geometry_issues(rid, path: str, ann: dict, text: str | None):
    kind = ann["type"]
    bbox = ann.get("bbox")
    if bbox is not None and (bbox[2] < 0 or bbox[3] < 0):
        yield Issue(rid, f"{path}.bbox", "bbox", f"box {bbox} has a negative width or height")
    if "keypoints" in ann and len(ann["keypoints"]) % 3:
        yield Issue(rid, f"{path}.keypoints", "keypoints",
                    "keypoints must be [x, y, visibility] triplets")
    for number, polygon in enumerate(ann.get("polygons", ())):
        if len(polygon) % 2 or len(polygon) < 4:
            yield Issue(rid, f"{path}.polygons[{number}]", "polygon",
                        "a polygon is a flat [x1, y1, x2, y2, ...] list of at least 2 points")
    if kind == "span":
        yield from _span_issues(rid, path, ann, text)


def _span_issues(rid, path: str, ann: dict, text: str | None):
    start, end = ann["start"], ann["end"]
    if text is None:
        yield Issue(rid, path, "span", "a span annotation needs the record's text")
    elif not start <= end <= len(text):
        yield Issue(rid, path, "span",
                    f"span [{start}, {end}) is outside the text of {len(text)} characters")
    elif "text" in ann and text[start:end] != ann["text"]:
        yield Issue(rid, f"{path}.text", "span",
                    f"span [{start}, {end}) covers {text[start:end]!r}, not {ann['text']!r} "
                    "(offsets count Unicode code points, not UTF-16 units)")


_CHECKERS: dict[str, SchemaChecker] = {}


def _record_checker() -> SchemaChecker:
    if "record" not in _CHECKERS:
        _CHECKERS["record"] = RecordChecker(load_schema("record"))
    return _CHECKERS["record"]


def validate_label_schema(label_schema, *, source: str = "") -> None:
    if "label_schema" not in _CHECKERS:
        _CHECKERS["label_schema"] = SchemaChecker(load_schema("label_schema"))
    found = _CHECKERS["label_schema"].issues(label_schema)
    if found:
        issue = found[0]
        raise InvalidInput(
            f"{source + ': ' if source else ''}label schema at {issue.path}: {issue.reason} "
            f"(rule: {issue.rule})", detail={"path": issue.path, "rule": issue.rule})
    names = [c["name"] for c in label_schema["classes"]]
    ids = [c["id"] for c in label_schema["classes"]]
    for what, values in (("name", names), ("id", ids)):
        if len(set(values)) != len(values):
            raise InvalidInput(f"{source + ': ' if source else ''}label schema has two classes "
                               f"with the same {what}; give each class its own {what}")
