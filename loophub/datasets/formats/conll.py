"""CoNLL-2003 style token-per-line NER (IOB1, IOB2, BIOES/BILOU or plain IO tags).

One record per sentence: text = tokens joined by single spaces, ``tokens`` holds
their offsets, spans come from the tag column (the last column whose values all
look like tags, else the last column). Other columns, -DOCSTART- lines and #
comments are kept in metadata.conll, so an export writes them back. Exports use IOB2.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

from loophub.datasets.formats.base import Bundle, bad, build_label_schema, output_file, split_of

TAG = re.compile(r"^(O|[BIESLU]-.+)$")
DOCSTART = "-DOCSTART-"


def read(src: Path) -> Bundle:
    files = [src] if src.is_file() else sorted(
        p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in
        (".conll", ".txt", ".iob", ".tsv", ".train", ".testa", ".testb", ".dev", ".test"))
    if not files:
        raise bad(src, "folder", "no CoNLL file in it")
    records = []
    for path in files:
        prefix = f"{path.stem}/" if len(files) > 1 else ""
        records.extend(_read_file(path, prefix, split_of([path.stem])))
    names = sorted({a["label"] for r in records for a in r["annotations"]})
    return Bundle(build_label_schema("ner", names), records)


def _sentences(path: Path):
    """(first line number, rows, preamble lines) per sentence."""
    rows, preamble, start = [], [], None
    with open(path, encoding="utf-8-sig") as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                if rows:
                    yield start, rows, preamble
                    rows, preamble = [], []
                continue
            if not rows and (line.startswith(DOCSTART) or line.startswith("#")):
                preamble.append(line)
                continue
            if start is None or not rows:
                start = number
            rows.append((number, line))
    if rows:
        yield start, rows, preamble
    elif preamble:
        yield None, [], preamble


def _split_line(line: str, sep: str) -> list[str]:
    return line.split("\t") if sep == "\t" else line.split()


def _read_file(path: Path, prefix: str, split: str | None) -> list[dict]:
    sentences = list(_sentences(path))
    sep = "\t" if any("\t" in line for _, rows, _ in sentences for _, line in rows) else " "
    table = [[_split_line(line, sep) for _, line in rows] for _, rows, _ in sentences]
    widths = Counter(len(fields) for sentence in table for fields in sentence)
    if len(widths) > 1:
        usual = widths.most_common(1)[0][0]
        number = next(n for (_, rows, _), sentence in zip(sentences, table, strict=True)
                      for (n, _), fields in zip(rows, sentence, strict=True)
                      if len(fields) != usual)
        raise bad(path, f"line {number}", f"this row's column count differs from the other "
                  f"rows ({usual}); every token line needs the same columns")
    width = next(iter(widths)) if widths else 2
    if width < 2:
        raise bad(path, f"line {sentences[0][0]}", "a token line needs a token and a tag column")
    tag_col = _tag_column(table, width)
    token_col = 1 if width > 2 and tag_col != 1 and all(
        f[0].isdigit() for s in table for f in s) else 0
    records = []
    for index, ((_, rows, preamble), fields) in enumerate(zip(sentences, table, strict=True)):
        record = _record(path, f"{prefix}{index + 1}", rows, fields, token_col, tag_col)
        conll = {"sep": sep, "token_column": token_col, "tag_column": tag_col, "width": width}
        other = [[v for i, v in enumerate(f) if i not in (token_col, tag_col)] for f in fields]
        if any(other):
            conll["columns"] = other
        if preamble:
            conll["preamble"] = preamble
        record["metadata"] = {"conll": conll}
        if split:
            record["split"] = split
        records.append(record)
    return records


def _tag_column(table, width: int) -> int:
    """The last all-tags column with an entity in it, else the last all-tags column."""
    matching = [col for col in range(width - 1, 0, -1)
                if all(TAG.match(f[col]) for sentence in table for f in sentence)]
    for col in matching:
        if any(f[col] != "O" for sentence in table for f in sentence):
            return col
    return matching[0] if matching else width - 1


def _record(path: Path, record_id: str, rows, fields, token_col: int, tag_col: int) -> dict:
    tokens, offsets, position = [], [], 0
    for f in fields:
        tokens.append(f[token_col])
        offsets.append([position, position + len(f[token_col])])
        position += len(f[token_col]) + 1
    spans = _spans([f[tag_col] for f in fields], offsets)
    return {"id": record_id, "text": " ".join(tokens), "tokens": offsets, "annotations": spans}


def _spans(tags: list[str], offsets: list[list[int]]) -> list[dict]:
    spans, current = [], None
    for tag, (start, end) in zip(tags, offsets, strict=True):
        prefix, _, kind = tag.partition("-") if TAG.match(tag) and tag != "O" else ("", "", tag)
        if tag == "O":
            current = None
            continue
        begins = (current is None or prefix in ("B", "S", "U") or current["label"] != kind
                  or current.get("_closed"))
        if begins:
            current = {"type": "span", "label": kind, "start": start, "end": end}
            spans.append(current)
        else:
            current["end"] = end
        if prefix in ("E", "L", "S", "U"):
            current["_closed"] = True
    for span in spans:
        span.pop("_closed", None)
    return spans


# -- export ------------------------------------------------------------------------

def write(bundle: Bundle, dst: Path) -> None:
    target = output_file(dst, "data.conll")
    with open(target, "w", encoding="utf-8") as out:
        for record in bundle.records:
            out.write(_sentence(record))


def _tokens(record: dict) -> list[list[int]]:
    if record.get("tokens"):
        return record["tokens"]
    text = record.get("text", "")
    cuts = {0, len(text)}
    for ann in record["annotations"]:
        if ann["type"] == "span":
            cuts.update((ann["start"], ann["end"]))
    tokens = []
    for match in re.finditer(r"\S+", text):
        edges = sorted({match.start(), match.end()} | {c for c in cuts
                                                        if match.start() < c < match.end()})
        tokens.extend([a, b] for a, b in pairwise(edges))
    return tokens


def _iob2(record: dict, tokens) -> list[str]:
    tags = ["O"] * len(tokens)
    for ann in sorted((a for a in record["annotations"] if a["type"] == "span"),
                      key=lambda a: a["start"]):
        inside = [i for i, (s, e) in enumerate(tokens) if s >= ann["start"] and e <= ann["end"]]
        for position, i in enumerate(inside):
            tags[i] = ("B-" if position == 0 else "I-") + ann["label"]
    return tags


def _sentence(record: dict) -> str:
    conll = (record.get("metadata") or {}).get("conll") or {}
    sep = conll.get("sep", "\t")
    token_col, tag_col = conll.get("token_column", 0), conll.get("tag_column", 1)
    width = conll.get("width", 2)
    text, tokens = record.get("text", ""), _tokens(record)
    tags = _iob2(record, tokens)
    other = conll.get("columns") or [[] for _ in tokens]
    lines = [line + "\n\n" if line.startswith(DOCSTART) else line + "\n"
             for line in conll.get("preamble", [])]
    for (start, end), tag, rest in zip(tokens, tags, other, strict=False):
        fields, rest = [], list(rest)
        for col in range(width):
            if col == token_col:
                fields.append(text[start:end])
            elif col == tag_col:
                fields.append(tag)
            else:
                fields.append(rest.pop(0) if rest else "_")
        lines.append(sep.join(fields) + "\n")
    return "".join(lines) + "\n" if tokens else "".join(lines)
