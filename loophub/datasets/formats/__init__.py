"""Format converters. Each module has ``read(path) -> Bundle`` and ``write(bundle, path)``.

``read_dataset``/``write_dataset`` add what every format needs: zip sources, record
validation with file/line/JSON-path errors, and the format registry.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from loophub.datasets.formats.base import Bundle, source_folder
from loophub.datasets.formats.sniff import sniff_format
from loophub.datasets.records import all_labels_of
from loophub.errors import InvalidInput

if TYPE_CHECKING:
    from loophub.datasets.validation import RecordValidator

FORMATS = {
    "loophub": "native",
    "coco": "coco",
    "voc": "voc",
    "yolo": "yolo",
    "imagefolder": "imagefolder",
    "csv": "csvfmt",
    "jsonl": "jsonl",
    "conll": "conll",
    "labelstudio": "labelstudio",
}


def format_module(name: str):
    if name not in FORMATS:
        raise InvalidInput(f"unknown format {name!r}; use one of {', '.join(FORMATS)}")
    return import_module(f"loophub.datasets.formats.{FORMATS[name]}")


@contextmanager
def read_dataset(fmt: str, src: str | os.PathLike, *, validate: bool = True) -> Iterator[Bundle]:
    """The dataset at ``src`` (file, folder or zip) as a Bundle whose records are checked
    against the schemas as they stream; usable while the context is open (zips are
    extracted to a temporary folder that lives that long).

    ``validate=False`` gives the format's bundle as it is: the caller validates the
    records, learning their classes if the bundle infers them (imports do)."""
    module = format_module(fmt)
    with _looks_like_hint(src, fmt), source_folder(src) as path:
        with _as_invalid_input(src, fmt):
            bundle = module.read(Path(path))
            if validate and bundle.infer_classes:
                _infer_classes(bundle)
        if validate:
            # here, not at the top: importing jsonschema takes about 2 s (it compiles
            # rfc3987_syntax's grammars), which every `loophub` command would pay
            from loophub.datasets.validation import RecordValidator, validate_label_schema

            validate_label_schema(bundle.label_schema, source=str(src))
            bundle.records = validated_records(bundle.records, RecordValidator(bundle.label_schema),
                                               str(src), fmt)
        yield bundle


def _infer_classes(bundle: Bundle) -> None:
    # Writers need every class before the first record: a pass over the labels alone,
    # then the records stream again (format modules that infer classes can stream twice).
    names: set[str] = set()
    for record in bundle.records:
        try:
            names.update(all_labels_of(record))
        except (AttributeError, KeyError, TypeError):
            continue  # malformed: validation names the record, its path and the rule
    bundle.label_schema, bundle.infer_classes = bundle.with_classes(names), False


@contextmanager
def _looks_like_hint(src, fmt: str) -> Iterator[None]:
    """A file that fails as FMT but looks like another format says so."""
    try:
        yield
    except InvalidInput as exc:
        guess = sniff_format(src)
        if guess and guess != fmt and guess in FORMATS:
            exc.message = (f"{exc.message}. The file looks like {guess}, not {fmt}: import "
                           f"it as format {guess!r}")
            exc.args = (exc.message,)
        raise


# What a malformed file can still raise inside a parser after the checks that give
# precise messages; reported as bad input (with the file), never as a crash.
PARSE_ERRORS = (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, RecursionError, zipfile.BadZipFile)


@contextmanager
def _as_invalid_input(src, fmt: str) -> Iterator[None]:
    try:
        yield
    except InvalidInput:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{src}: byte {exc.start}: not UTF-8 text; save the file as "
                           "UTF-8") from None
    except PARSE_ERRORS as exc:
        raise InvalidInput(f"{src}: not readable as {fmt} ({type(exc).__name__}: {exc}); "
                           f"check that the file is {fmt}") from None


def _checked(validator: RecordValidator, records, source: str, seen: set[str]):
    for index, record in enumerate(records):
        validator.validate(record, source=source, location=f"record {index + 1}")
        if record["id"] in seen:
            raise InvalidInput(f"{source}: record {index + 1}: id {record['id']!r} repeats; "
                               "record ids must be unique in a dataset")
        seen.add(record["id"])
        yield record


def write_dataset(fmt: str, bundle: Bundle, dst: str | os.PathLike, *,
                  dense_ids: bool = False) -> None:
    """Write BUNDLE to DST in format FMT. ``dense_ids`` (YOLO only): class indices
    0..n-1 instead of the class ids, the ids kept in data.yaml."""
    if dense_ids:
        if fmt != "yolo":
            raise InvalidInput(f"dense ids apply to the yolo format, not {fmt}")
        format_module(fmt).write(bundle, Path(dst), dense_ids=True)
        return
    format_module(fmt).write(bundle, Path(dst))


def convert(src_fmt: str, src: str | os.PathLike, dst_fmt: str, dst: str | os.PathLike,
            progress: Callable[[int], None] | None = None) -> int:
    """Convert ``src`` to ``dst``; returns the number of records written."""
    count = 0
    with read_dataset(src_fmt, src) as bundle:
        def counted(records):
            nonlocal count
            for record in records:
                count += 1
                if progress:
                    progress(count)
                yield record
        bundle.records = counted(bundle.records)
        write_dataset(dst_fmt, bundle, dst)
    return count


def validate_source(fmt: str, src: str | os.PathLike) -> int:
    """Read and validate every record of ``src``; returns the count or raises InvalidInput.
    Classes the format infers are learnt as the records are validated, so the file is
    parsed once (as an import does; only writers need every class up front)."""
    from loophub.datasets.validation import RecordValidator, validate_label_schema

    with read_dataset(fmt, src, validate=False) as bundle:
        learn = bundle.infer_classes
        if not learn:
            validate_label_schema(bundle.label_schema, source=str(src))
        validator = RecordValidator(bundle.label_schema, learn_classes=learn)
        count = sum(1 for _ in validated_records(bundle.records, validator, str(src), fmt))
        if learn:
            validate_label_schema(bundle.with_classes(validator.classes), source=str(src))
    return count


def validated_records(records, validator: RecordValidator, source: str, fmt: str):
    """``records`` checked one by one as they stream (InvalidInput on the first bad one)."""
    seen: set[str] = set()
    with _as_invalid_input(source, fmt):
        yield from _checked(validator, records, source, seen)


__all__ = ["FORMATS", "Bundle", "convert", "read_dataset", "validate_source", "write_dataset"]
