"""The shipped schemas, the compiled fast path against the jsonschema reference, and
error messages that name the record, the JSON path and the rule."""

from __future__ import annotations

import re

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loophub.datasets.schemas import load_schema
from loophub.datasets.service import DatasetService
from loophub.datasets.validation import (
    RecordChecker,
    RecordValidator,
    validate_label_schema,
)
from loophub.errors import InvalidInput

LABEL_SCHEMA = {"task": "ner", "classes": [{"id": 0, "name": "PER", "color": "#ff0000",
                                            "hotkey": "p"}, {"id": 1, "name": "LOC"}]}


@pytest.mark.parametrize("name", ["record", "label_schema"])
def test_schemas_are_valid_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert DatasetService.schemas()[name] == schema


VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2),
                  st.sampled_from(["", "x", "bbox", "span", "polygon", "mask", "keypoints",
                                   "text", "image_class", "text_class", "user", "model"]),
                  st.lists(st.integers(0, 5), max_size=5),
                  st.lists(st.lists(st.floats(0, 9), max_size=6), max_size=2),
                  st.fixed_dictionaries({"size": st.just([2, 2]),
                                         "counts": st.sampled_from(["ab", [1, 3]])}),
                  st.fixed_dictionaries({"kind": st.sampled_from(["user", "robot"]),
                                         "name": st.just("a")}))
ANNOTATION = st.dictionaries(st.sampled_from(
    ["id", "type", "label", "score", "bbox", "polygons", "rle", "keypoints", "start", "end",
     "text", "source", "iscrowd", "area", "normalized", "review", "bogus"]), VALUE, max_size=6)
RECORD = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "", 3]), "annotations": st.lists(ANNOTATION, max_size=3)},
    optional={"text": st.sampled_from(["hello", 5]), "split": st.sampled_from(["train", None, 1]),
              "tokens": st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=2),
              "media": st.dictionaries(st.sampled_from(["path", "sha256", "width", "type"]),
                                       st.sampled_from(["a.jpg", "a" * 64, 4, "image/png", 0]),
                                       max_size=3)})


CHECKER = RecordChecker(load_schema("record"))


@settings(max_examples=300, deadline=None)
@given(record=RECORD)
def test_fast_path_agrees_with_the_reference(record):
    assert CHECKER.passes(record) == CHECKER.reference.is_valid(record)


def test_issue_names_record_path_and_rule():
    validator = RecordValidator(LABEL_SCHEMA)
    record = {"id": "r1", "text": "Ann in Rome", "annotations": [
        {"type": "span", "label": "PER", "start": 0, "end": 3},
        {"type": "span", "label": "ORG", "start": 7, "end": 11}]}
    with pytest.raises(InvalidInput) as caught:
        validator.validate(record, source="x.jsonl", location="line 4")
    assert caught.value.message.startswith("x.jsonl, line 4: record 'r1' at "
                                           "$.annotations[1].label: label 'ORG'")
    record["annotations"][1].update(label="LOC", end=12)
    assert validator.issues(record)[0].rule == "span"
    record["annotations"][1].update(end=11, text="Rom")
    assert "not 'Rom'" in validator.issues(record)[0].reason


def test_label_schema_rules():
    validate_label_schema(LABEL_SCHEMA)
    with pytest.raises(InvalidInput, match="same id"):
        validate_label_schema({"task": "ner", "classes": [{"id": 0, "name": "a"},
                                                          {"id": 0, "name": "b"}]})
    with pytest.raises(InvalidInput, match=r"\$.classes\[0\].color"):
        validate_label_schema({"task": "ner", "classes": [{"id": 0, "name": "a",
                                                           "color": "red"}]})


def text_record(record_id: str, *labels: str) -> dict:
    return {"id": record_id, "text": "t",
            "annotations": [{"type": "text_class", "label": label} for label in labels]}


def test_learning_validator_takes_every_label_as_a_class():
    validator = RecordValidator({"task": "mixed", "classes": [{"id": 0, "name": "PER"}]},
                                learn_classes=True)
    validator.validate(text_record("a", "cat", "PER"))
    validator.validate(text_record("b", "dog"))
    assert validator.classes == {"PER", "cat", "dog"}
    with pytest.raises(InvalidInput, match="label '' is not a class"):
        validator.validate(text_record("c", ""))  # a class exists: an empty label is wrong


def test_an_empty_label_fails_once_a_class_is_learnt_after_it():
    validator = RecordValidator(None, learn_classes=True)
    validator.validate(text_record("a", ""), source="x.jsonl", location="record 1")
    validator.validate(text_record("b"), source="x.jsonl", location="record 2")
    with pytest.raises(InvalidInput) as caught:
        validator.validate(text_record("c", "cat"), source="x.jsonl", location="record 3")
    # the earlier record is the one a schema with every class up front rejects
    assert caught.value.message.startswith("x.jsonl, record 1: record 'a' at "
                                           "$.annotations[0].label: label ''")
    alone = RecordValidator(None, learn_classes=True)
    alone.validate(text_record("a", ""))  # no class anywhere: nothing to be a class of
    assert alone.classes == set()


def test_compiling_a_schema_leaves_the_next_one_untouched():
    """fastjsonschema rewrites $refs in place; the API's bodies are inlined from the same
    schemas afterwards and must still hold no reference to resolve (over the network)."""
    import json

    import fastjsonschema

    from loophub.datasets.schemas import _inlined, inline_schema

    fastjsonschema.compile(load_schema("record"))
    _inlined.cache_clear()
    assert "$ref" not in json.dumps(inline_schema("record", "annotation"))
    refs = re.findall(r'"\$ref": "([^"]*)"', json.dumps(load_schema("record")))
    assert refs and all(ref.startswith("#/") for ref in refs)
