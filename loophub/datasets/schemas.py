"""The JSON Schemas shipped with the package (served by the API as they are)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

SCHEMA_NAMES = ("record", "label_schema")


@cache
def _schema_text(name: str) -> str:
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return resources.files(__package__).joinpath(f"schemas/{name}.schema.json").read_text()


def load_schema(name: str) -> dict:
    """The schema ``name`` (``record`` or ``label_schema``) as a dict of the caller's own:
    fastjsonschema rewrites every ``$ref`` in place to an absolute URL when it compiles a
    schema, and a shared dict would then send the next compiler to fetch it from the web."""
    return json.loads(_schema_text(name))


@cache
def _inlined(name: str, part: str | None) -> str:
    schema = load_schema(name)
    defs = schema.get("$defs", {})

    def expand(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**expand(defs[ref.removeprefix("#/$defs/")]), **expand(rest)}
            return {k: expand(v) for k, v in node.items()
                    if k not in ("$schema", "$id", "$defs")}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    return json.dumps(expand(defs[part] if part else schema))


def inline_schema(name: str, part: str | None = None) -> dict:
    """The schema ``name`` (or its ``$defs`` entry ``part``) self-contained: every local
    ``$ref`` replaced by what it names, no ``$schema``, ``$id`` or ``$defs``. The API
    embeds these in its OpenAPI document and checks request bodies with them, so a body
    the document calls valid passes the same rules the dataset room applies."""
    return json.loads(_inlined(name, part))
