"""Every predict request checked against the model version's signature before the model
sees it: one JSON decode, one compiled fastjsonschema validator, errors that name the
field ("instances[3].text: must be string").

The signature (loophub.models.signature) is the contract and its full validator decides
every refusal. Pixel arrays are the one exception to running it first: checking 256
numbers one by one in generated Python costs more than the rest of a request, so the
validator that runs on every request checks everything but the pixel values, and numpy
checks those (shape, number types, range) in one pass. Whenever that fast check says no,
the full validator runs and its message is the answer; when the full validator then
accepts (a form the fast check does not know), the slow conversion is used. So a request
is refused exactly when the signature refuses it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import numpy as np

from loophub.errors import InvalidInput

_NUMBER_KINDS = ("i", "u", "f")  # numpy dtype kinds JSON numbers parse into


def _no_constants(name: str) -> Any:
    raise InvalidInput(f"body: {name} is not JSON; send finite numbers",
                       detail={"field": "body"})


def parse_body(raw: bytes) -> Any:
    """RAW as strict JSON (UTF-8, no NaN/Infinity); a clear 400 otherwise."""
    try:
        text = raw.decode("utf-8")  # json.loads would guess UTF-16/32 from the bytes
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"body: not UTF-8 (byte {exc.start}); send JSON in UTF-8",
                           detail={"field": "body"}) from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidInput("body: nested too deeply", detail={"field": "body"}) from None
    except ValueError as exc:  # JSONDecodeError
        raise InvalidInput(f"body: not valid JSON: {exc}; send "
                           '{"instances": [...]}', detail={"field": "body"}) from None


def schema_error(exc: fastjsonschema.JsonSchemaValueException) -> InvalidInput:
    """fastjsonschema's error as a 400 whose message starts with the field's path,
    without the leading "data." ("instances[3].text must be string")."""
    field = (exc.name or "data").removeprefix("data").lstrip(".") or "body"
    message = exc.message.removeprefix(exc.name or "data").strip()
    if exc.rule == "required":
        present = exc.value if isinstance(exc.value, dict) else {}
        missing = [k for k in (exc.definition or {}).get("required", []) if k not in present]
        field = ".".join(part for part in (field if field != "body" else "",
                                           missing[0] if missing else "") if part) or "body"
        message = "required" + ("; send {\"instances\": [...]}" if field == "instances"
                                else "")
    elif exc.rule == "additionalProperties":
        allowed = " or ".join(sorted((exc.definition or {}).get("properties", {})))
        message = f"unknown field(s) {message.split('{', 1)[-1].split('}', 1)[0]}; " \
                  f"expected {allowed}"
    elif exc.rule == "minProperties" and field.startswith("instances["):
        names = " or ".join(sorted((exc.definition or {}).get("properties", {})))
        message = f"must have one of {names}"
    elif exc.rule == "maxProperties" and field.startswith("instances["):
        message = "must have only one of " + " or ".join(
            sorted((exc.definition or {}).get("properties", {})))
    return InvalidInput(f"{field}: {message}", detail={"field": field})


def _without_encoding(request_schema: dict) -> dict:
    """REQUEST_SCHEMA without contentEncoding: fastjsonschema would decode every image
    to check it, and decode_base64 does that once anyway, with a clearer message."""
    schema = copy.deepcopy(request_schema)
    image = schema["properties"]["instances"]["items"].get("properties", {}).get("image")
    if image is not None:
        image.pop("contentEncoding", None)
    return schema


def _loosen_pixels(request_schema: dict) -> dict:
    """REQUEST_SCHEMA with the pixels' items unchecked (numpy checks them)."""
    loose = copy.deepcopy(request_schema)
    item = loose["properties"]["instances"]["items"]
    if "pixels" in item.get("properties", {}):
        item["properties"]["pixels"] = {"type": "array"}
    return loose


@dataclass(frozen=True)
class PixelShape:
    """What the fast check accepts: [height][width] (grey) or [height][width][3] (RGB)."""

    height: int
    width: int
    channels: int  # 1: grey (no channel axis in the JSON), 3: RGB

    @classmethod
    def from_preprocess(cls, preprocess: dict | None) -> PixelShape | None:
        size = (preprocess or {}).get("size")
        mode = (preprocess or {}).get("mode")
        if size is None or mode not in ("L", "RGB"):
            return None
        height, width = (size, size) if isinstance(size, int) else (int(v) for v in size)
        return cls(int(height), int(width), 1 if mode == "L" else 3)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (
            self.height, self.width, 3)


def fast_pixels(value: Any, shape: PixelShape, *, maybe_bools: bool = True
                ) -> np.ndarray | None:
    """VALUE as float32 [height, width(, 3)] when it surely satisfies the signature: a
    rectangular array of JSON numbers (no booleans) in 0-255 of the model's size; else
    None (then the full validator decides). MAYBE_BOOLS False: the caller knows the body
    has no true/false anywhere (numpy would read them as numbers)."""
    if maybe_bools:
        return None
    try:
        array = np.array(value)
    except (ValueError, OverflowError):  # ragged, or ints past int64
        return None
    if array.shape != shape.shape or array.dtype.kind not in _NUMBER_KINDS:
        return None
    if array.size and (array.min() < 0 or array.max() > 255):
        return None
    return array.astype(np.float32, copy=False)


@dataclass
class Instance:
    """One checked instance: its text, its image file's bytes, or its pixels."""

    text: str | None = None
    image: bytes | None = None
    pixels: np.ndarray | None = None


class RequestChecker:
    """The compiled validators of one signature's request and the conversion of a valid
    body into Instances (base64 decoded, pixels as float32 arrays)."""

    def __init__(self, request_schema: dict, preprocess: dict | None = None) -> None:
        self.schema = request_schema
        request_schema = _without_encoding(request_schema)
        self._full = fastjsonschema.compile(request_schema)
        self.pixel_shape = PixelShape.from_preprocess(preprocess)
        has_pixels = "pixels" in request_schema["properties"]["instances"]["items"].get(
            "properties", {})
        self._fast = fastjsonschema.compile(_loosen_pixels(request_schema)) \
            if has_pixels and self.pixel_shape else self._full

    def check(self, raw: bytes) -> list[Instance]:
        """The Instances of the body RAW; InvalidInput (400) naming the field otherwise."""
        body = parse_body(raw)
        self._validate(self._fast, body)
        instances = body["instances"]
        # numpy reads true/false as numbers, JSON Schema does not: a body without either
        # word in its bytes has no booleans, so the fast pixel check is sound for it
        maybe_bools = b"true" in raw or b"false" in raw
        out: list[Instance] = []
        unchecked: list[int] = []  # pixels the fast check left to the full validator
        for n, item in enumerate(instances):
            if "text" in item:
                out.append(Instance(text=item["text"]))
            elif "image" in item:
                out.append(Instance(image=decode_base64(item["image"],
                                                        f"instances[{n}].image")))
            else:
                array = fast_pixels(item["pixels"], self.pixel_shape,
                                    maybe_bools=maybe_bools) if self.pixel_shape else None
                if array is None:
                    unchecked.append(n)
                out.append(Instance(pixels=array))
        if unchecked:
            self._validate(self._full, body)  # raises with the signature's own message
            for n in unchecked:  # valid, in a form the fast check does not take
                out[n].pixels = np.asarray(instances[n]["pixels"], dtype=np.float32)
        return out

    @staticmethod
    def _validate(validator: Any, body: Any) -> None:
        try:
            validator(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise schema_error(exc) from None


def decode_base64(text: str, field: str) -> bytes:
    """TEXT's bytes (standard or URL-safe alphabet, padding optional), or a 400 naming
    FIELD: the check that the schema's contentEncoding only declares."""
    clean = text.strip()
    if "-" in clean or "_" in clean:
        clean = clean.replace("-", "+").replace("_", "/")
    clean += "=" * (-len(clean) % 4)
    try:
        return base64.b64decode(clean, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field}: not base64; send the image file's bytes "
                           "base64-encoded", detail={"field": field}) from None
