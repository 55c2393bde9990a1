"""Label Studio JSON export/import: tasks with annotations (per annotator) and
predictions (per model version).

Regions in percent of the image become pixels when original_width/height are known
(else fractions with ``normalized: true``). Text spans are checked against the text.
Where the text has characters beyond U+FFFF (emoji), span offsets may count UTF-16
units (what Label Studio's UI writes: browsers count them, LS #4988) or code points
(what Python tools that make tasks and predictions write): a span's ``value.text``
tells which, see ``_Span``. Spans are exported in UTF-16 units, as the UI expects.
Everything loophub has no field for (task and annotation fields, relations, unknown
result types) is kept in metadata.ls / attributes.ls, so a round trip gives the same
records.
"""

from __future__ import annotations

import json
from pathlib import Path

from loophub.datasets.formats.base import (
    EXPORT_LABEL_SCHEMA,
    IMAGE_SUFFIXES,
    Bundle,
    FolderMedia,
    bad,
    build_label_schema,
    output_file,
)

DIGITS = 9
GEOMETRY = {"rectanglelabels": "bbox", "polygonlabels": "polygon", "keypointlabels": "keypoints",
            "labels": "span", "choices": "class", "textarea": "text"}
RESULT_KEYS = {"id", "type", "value", "from_name", "to_name", "original_width", "original_height",
               "score"}


def read(src: Path) -> Bundle:
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*.json") if p != src / EXPORT_LABEL_SCHEMA)
    if not files:
        raise bad(src, "folder", "no Label Studio .json export in it")
    records, names, seen = [], [], set()
    for path in files:
        units = _SpanUnits()
        for index, task in enumerate(_load(path)):
            record = _Task(path, f"$[{index}]", task, units).record()
            if record["id"] in seen:
                raise bad(path, f"$[{index}].id", f"task id {record['id']} repeats")
            seen.add(record["id"])
            records.append(record)
            names.extend(a["label"] for a in record["annotations"] if "label" in a)
        units.settle()
    root = src if src.is_dir() else src.parent
    return Bundle(build_label_schema("mixed", names), records, FolderMedia([root]))


def _load(path: Path) -> list:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise bad(path, f"line {exc.lineno}, column {exc.colno}",
                  f"invalid JSON: {exc.msg}") from None
    tasks = doc if isinstance(doc, list) else [doc]
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise bad(path, f"$[{index}]", "a task is an object with a 'data' object")
    return tasks


def _has_astral(text: str) -> bool:
    """Whether ``text`` has a character beyond U+FFFF (two UTF-16 units)."""
    return not text.isascii() and len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


def _utf16_to_cp(text: str, offset: int) -> int | None:
    """The code-point offset at UTF-16 unit ``offset``; None where no character starts
    there (inside a surrogate pair, before 0 or past the end)."""
    if offset < 0:
        return None
    units = 0
    for index, char in enumerate(text):
        if units >= offset:
            return index if units == offset else None
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text) if units == offset else None


def _cp_to_utf16(text: str, offset: int) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in text[:offset])


CODE_POINTS, UTF16 = "code points", "UTF-16 units"


class _SpanUnits:
    """What one file's span offsets count, where a span alone cannot tell.

    A span whose ``value.text`` is found both at its offsets read as code points and at
    its offsets read as UTF-16 units (``"😀xx"``, span ``"x"`` at 2-3: the second x in
    code points, the first in UTF-16) follows the spans of its annotation or prediction
    that could tell; where those cannot either or disagree, the file's; else UTF-16, the
    unit Label Studio's UI writes. Settled once the file is read.
    """

    def __init__(self) -> None:
        self.votes: dict[object, set[str]] = {}
        self.pending: list[tuple[dict, dict[str, tuple[int, int]], str]] = []

    def vote(self, block: str, unit: str) -> None:
        self.votes.setdefault(block, set()).add(unit)
        self.votes.setdefault(None, set()).add(unit)

    def defer(self, ann: dict, readings: dict[str, tuple[int, int]], block: str) -> None:
        self.pending.append((ann, readings, block))

    def settle(self) -> None:
        for ann, readings, block in self.pending:
            unit = UTF16
            for told in (self.votes.get(block, set()), self.votes.get(None, set())):
                if len(told) == 1:
                    (unit,) = told
                    break
            ann["start"], ann["end"] = readings[unit]
        self.pending.clear()


class _Task:
    """Converts one task; ``where`` is its JSON path for error messages."""

    def __init__(self, path: Path, where: str, task: dict, units: _SpanUnits) -> None:
        self.path, self.where, self.task = path, where, task
        self.units = units
        self.block = where
        data = dict(task["data"])
        self.media_key = next((k for k, v in data.items() if isinstance(v, str) and (
            k in ("image", "img") or Path(v).suffix.lower() in IMAGE_SUFFIXES)), None)
        self.text_key = "text" if isinstance(data.get("text"), str) else None
        if self.text_key is None and self.media_key is None:
            strings = [k for k, v in data.items() if isinstance(v, str)]
            self.text_key = strings[0] if len(strings) == 1 else None
        self.text = data.get(self.text_key) if self.text_key else None
        self.astral = isinstance(self.text, str) and _has_astral(self.text)
        self.size: tuple[int, int] | None = None

    def record(self) -> dict:
        task, data = self.task, dict(self.task["data"])
        record_id = str(task["id"]) if "id" in task else f"task-{self.where[2:-1]}"
        record: dict = {"id": record_id, "annotations": []}
        ls: dict = {"sets": {}}
        for kind in ("annotations", "predictions"):
            for index, block in enumerate(task.get(kind) or []):
                self._set(record, ls, kind, index, block)
        if self.media_key:
            record["media"] = {"path": data.pop(self.media_key)}
            if self.size:
                record["media"].update(width=self.size[0], height=self.size[1])
            ls["media_key"] = self.media_key
        if self.text_key:
            record["text"] = data.pop(self.text_key)
            ls["text_key"] = self.text_key
        ls["data"] = data
        ls["task"] = {k: v for k, v in task.items() if k not in ("data", "annotations",
                                                                "predictions")}
        record["metadata"] = {"ls": ls}
        return record

    def _set(self, record: dict, ls: dict, kind: str, index: int, block: dict) -> None:
        where = f"{self.where}.{kind}[{index}]"
        if not isinstance(block, dict) or not isinstance(block.get("result", []), list):
            raise bad(self.path, where, "expected an object with a 'result' list")
        key = f"{kind[0]}{index}"
        extras = {k: v for k, v in block.items() if k != "result"}
        extras["kind"] = kind
        source, created = _source(kind, block), block.get("created_at")
        unmapped = []
        self.block = where
        for number, result in enumerate(block.get("result") or []):
            anns = self._result(f"{where}.result[{number}]", result)
            if anns is None:
                unmapped.append([number, result])
                continue
            for ann in anns:
                ann["source"] = source
                if isinstance(created, str):
                    ann["created"] = created
                if isinstance(block.get("score"), int | float) and "score" not in ann:
                    ann["score"] = block["score"]
                ann["attributes"]["ls"]["set"] = key
                record["annotations"].append(ann)
        if unmapped:
            extras["unmapped"] = unmapped
        ls["sets"][key] = extras

    def _result(self, where: str, result: dict) -> list[dict] | None:
        if not isinstance(result, dict):
            raise bad(self.path, where, "a result must be an object")
        geometry = GEOMETRY.get(result.get("type"))
        value = result.get("value")
        if geometry is None or not isinstance(value, dict):
            return None
        if result.get("original_width") and result.get("original_height"):
            self.size = (int(result["original_width"]), int(result["original_height"]))
        labels = value.get(result["type"]) or ([] if geometry in ("text",) else None)
        if labels is None or not isinstance(labels, list):
            raise bad(self.path, f"{where}.value", f"no '{result['type']}' list in the value")
        ls = {"id": result.get("id"), "from_name": result.get("from_name"),
              "to_name": result.get("to_name"), "type": result["type"]}
        extra = {k: v for k, v in result.items() if k not in RESULT_KEYS}
        if extra:
            ls["extra"] = extra
        ls = {k: v for k, v in ls.items() if v is not None}
        if geometry in ("class", "text"):
            return self._per_value(where, geometry, value, labels, ls, result)
        ann = self._region(where, geometry, value, result)
        if labels:
            ann["label"] = str(labels[0])
        if len(labels) > 1:
            ls["more_labels"] = labels[1:]
        used = {"x", "y", "width", "height", "rotation", "points", "start", "end", "text",
                result["type"]}
        if geometry == "keypoints":
            used.discard("width")
        value_extra = {k: v for k, v in value.items() if k not in used}
        if value_extra:
            ls["value"] = value_extra
        ann["attributes"] = {"ls": ls}
        if isinstance(result.get("score"), int | float):
            ann["score"] = result["score"]
        return [ann]

    def _per_value(self, where, geometry, value, labels, ls, result) -> list[dict]:
        out = []
        if geometry == "text":
            texts = value.get("text") or []
            for text in texts if isinstance(texts, list) else [texts]:
                out.append({"type": "text", "text": str(text), "attributes": {"ls": dict(ls)}})
            return out
        kind = "text_class" if self.text is not None and self.media_key is None else "image_class"
        for label in labels:
            ann = {"type": kind, "label": str(label), "attributes": {"ls": dict(ls)}}
            if isinstance(result.get("score"), int | float):
                ann["score"] = result["score"]
            out.append(ann)
        return out

    def _scale(self) -> tuple[float, float, bool]:
        if self.size:
            return self.size[0] / 100, self.size[1] / 100, False
        return 0.01, 0.01, True

    def _region(self, where: str, geometry: str, value: dict, result: dict) -> dict:
        sx, sy, normalized = self._scale()
        try:
            if geometry == "bbox":
                box = [value["x"] * sx, value["y"] * sy, value["width"] * sx, value["height"] * sy]
                ann = {"type": "bbox", "bbox": [round(v, DIGITS) for v in box]}
                if "rotation" in value:
                    ann["rotation"] = value["rotation"]
            elif geometry == "polygon":
                flat = [round(v * (sx if i % 2 == 0 else sy), DIGITS)
                        for point in value["points"] for i, v in enumerate(point)]
                ann = {"type": "polygon", "polygons": [flat]}
            elif geometry == "keypoints":
                ann = {"type": "keypoints", "keypoints": [
                    round(value["x"] * sx, DIGITS), round(value["y"] * sy, DIGITS), 2]}
            else:
                return self._span(where, value)
        except (KeyError, TypeError) as exc:
            raise bad(self.path, f"{where}.value", f"missing or bad coordinate {exc}") from None
        if normalized:
            ann["normalized"] = True
        return ann

    def _span(self, where: str, value: dict) -> dict:
        """A ``labels`` result as a span in code points.

        Without characters beyond U+FFFF the offsets count code points. With them, a
        result that has ``value.text`` is read in whichever unit puts that text at its
        offsets: code points (Python tools) or UTF-16 units (Label Studio's UI); it is
        refused when neither does. Without ``value.text`` nothing can tell, and the
        offsets are read as UTF-16 units, what the UI writes.
        """
        text = self.text
        start, end = value.get("start"), value.get("end")
        if text is None or not isinstance(start, int) or not isinstance(end, int):
            raise bad(self.path, f"{where}.value", "a text span needs integer start/end offsets "
                      "and a task with a text")
        wanted = value.get("text")
        readings: dict[str, tuple[int, int]] = {}
        if 0 <= start <= end <= len(text):
            readings[CODE_POINTS] = (start, end)
        if self.astral:
            start16, end16 = _utf16_to_cp(text, start), _utf16_to_cp(text, end)
            if start16 is not None and end16 is not None and start16 <= end16:
                readings[UTF16] = (start16, end16)
        if wanted is None:
            unit = UTF16 if self.astral else CODE_POINTS
            if unit not in readings:
                raise bad(self.path, f"{where}.value", f"span [{start}, {end}) is not a span "
                          f"of the task's text ({len(text)} characters) counted in {unit}; fix "
                          "value.start/value.end, or add value.text (the span's text) so the "
                          "unit the offsets count can be told")
            readings = {unit: readings[unit]}
        else:
            covered = {unit: text[s:e] for unit, (s, e) in readings.items()}
            readings = {unit: span for unit, span in readings.items() if covered[unit] == wanted}
            if not readings:
                raise bad(self.path, f"{where}.value", _mismatch(start, end, wanted, covered,
                                                                  self.astral))
        ann = {"type": "span"}
        spans = set(readings.values())
        if len(spans) > 1:  # value.text is at both readings: the file's other spans tell
            ann["start"], ann["end"] = readings[UTF16]
            self.units.defer(ann, readings, self.block)
        else:
            ann["start"], ann["end"] = spans.pop()
            if self.astral and wanted is not None and len(readings) == 1:
                self.units.vote(self.block, next(iter(readings)))
        if wanted is not None:
            ann["text"] = wanted
        return ann


def _mismatch(start: int, end: int, wanted, covered: dict[str, str], astral: bool) -> str:
    if not covered:
        return (f"span [{start}, {end}) is not inside the task's text; fix value.start/"
                "value.end")
    if astral:
        found = " and ".join(f"{text!r} counted in {unit}" for unit, text in covered.items())
        return (f"span [{start}, {end}) covers {found}, not value.text {wanted!r}: the offsets "
                "do not match the task's text in code points nor in UTF-16 units; fix "
                "value.start/value.end or value.text")
    return (f"span [{start}, {end}) covers {covered[CODE_POINTS]!r}, not {wanted!r}: the "
            "offsets do not match the task's text; fix value.start/value.end or value.text")


def _source(kind: str, block: dict) -> dict:
    if kind == "predictions":
        version = block.get("model_version")
        return {"kind": "model", "name": str(version or "unknown"),
                "version": str(version) if version is not None else None}
    who = block.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return {"kind": "user", "name": str(who) if who is not None else "unknown"}


# -- export ------------------------------------------------------------------------

def write(bundle: Bundle, dst: Path) -> None:
    target = output_file(dst, "tasks.json")
    with open(target, "w", encoding="utf-8") as out:
        out.write("[")
        for index, record in enumerate(bundle.records):
            out.write(("," if index else "") + "\n" + json.dumps(_task(record), ensure_ascii=False))
        out.write("\n]\n")


def _task(record: dict) -> dict:
    ls = (record.get("metadata") or {}).get("ls") or {}
    data = dict(ls.get("data") or {})
    if "media" in record:
        data[ls.get("media_key", "image")] = record["media"].get("path", record["id"])
    if "text" in record:
        data[ls.get("text_key", "text")] = record["text"]
    task = {**(ls.get("task") or {}), "data": data}
    if not ls:  # a record that did not come from Label Studio gets the record id
        task["id"] = int(record["id"]) if record["id"].isdigit() else record["id"]
    sets = {key: {**extras, "result": []} for key, extras in (ls.get("sets") or {}).items()}
    for ann in record["annotations"]:
        key = _set_key(ann, sets)
        _add_result(sets[key]["result"], record, ann)
    for block in sets.values():
        for number, raw in block.pop("unmapped", []):
            block["result"].insert(number, raw)
    task.setdefault("annotations", [])
    task.setdefault("predictions", [])
    for block in sets.values():
        task[block.pop("kind")].append(block)
    return task


def _set_key(ann: dict, sets: dict) -> str:
    key = ((ann.get("attributes") or {}).get("ls") or {}).get("set")
    if key in sets:
        return key
    source = ann.get("source") or {"kind": "user", "name": "unknown"}
    key = f"{source['kind']}:{source['name']}"
    if key not in sets:
        if source["kind"] == "model":
            sets[key] = {"kind": "predictions", "model_version": source.get("version")
                         or source["name"], "result": []}
        else:
            sets[key] = {"kind": "annotations", "completed_by": source["name"], "result": []}
    return key


def _add_result(results: list, record: dict, ann: dict) -> None:
    ls = dict((ann.get("attributes") or {}).get("ls") or {})
    kind = ann["type"]
    rtype = ls.get("type") or {"bbox": "rectanglelabels", "polygon": "polygonlabels",
                               "keypoints": "keypointlabels", "span": "labels",
                               "image_class": "choices", "text_class": "choices",
                               "text": "textarea", "mask": "brushlabels"}[kind]
    if kind in ("image_class", "text_class", "text") and results:
        last = results[-1]
        if last.get("id") == ls.get("id") and last["type"] == rtype and ls.get("id"):
            field = "text" if kind == "text" else rtype
            last["value"][field].append(ann["text"] if kind == "text" else ann["label"])
            return
    result = {"type": rtype, "value": dict(ls.get("value") or {}), **(ls.get("extra") or {})}
    for key in ("id", "from_name", "to_name"):
        if key in ls:
            result[key] = ls[key]
    result.setdefault("from_name", "label")
    result.setdefault("to_name", "text" if kind in ("span", "text_class") else "image")
    _fill_value(result, record, ann, rtype, ls)
    if "score" in ann:
        result["score"] = ann["score"]
    results.append(result)


def _fill_value(result: dict, record: dict, ann: dict, rtype: str, ls: dict) -> None:
    value, kind, media = result["value"], ann["type"], record.get("media") or {}
    if kind == "text":
        value["text"] = [ann["text"]]
        return
    if kind in ("image_class", "text_class"):
        value[rtype] = [ann["label"]]
        return
    value[rtype] = [ann["label"], *ls.get("more_labels", [])] if "label" in ann else []
    if kind == "span":
        text = record.get("text", "")
        value.update(start=_cp_to_utf16(text, ann["start"]), end=_cp_to_utf16(text, ann["end"]))
        if "text" in ann:
            value["text"] = ann["text"]
        return
    if ann.get("normalized"):
        sx = sy = 100.0
    elif media.get("width"):
        sx, sy = 100 / media["width"], 100 / media["height"]
        result.update(original_width=media["width"], original_height=media["height"])
    else:
        raise bad(record["id"], "media", "Label Studio regions are in percent of the image "
                  "size; this record's image has no width/height")
    if kind == "bbox":
        x, y, w, h = ann["bbox"]
        value.update(x=x * sx, y=y * sy, width=w * sx, height=h * sy)
        if "rotation" in ann:
            value["rotation"] = ann["rotation"]
    elif kind == "polygon":
        flat = ann["polygons"][0]
        value["points"] = [[flat[i] * sx, flat[i + 1] * sy] for i in range(0, len(flat), 2)]
    elif kind == "keypoints":
        value.update(x=ann["keypoints"][0] * sx, y=ann["keypoints"][1] * sy)
