"""The JSON Schemas shipped with the package (served by the API as they are)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

SCHEMA_NAMES = ("record", "label_schema")


@cache
def load_schema(name: str) -> dict:
    """The schema ``name`` (``record`` or ``label_schema``) as a dict."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__package__).joinpath(f"schemas/{name}.schema.json").read_text()
    return json.loads(text)
