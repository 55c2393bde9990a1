"""The replica's OpenAPI 3.1 document, built from the model version's signature (JSON
Schema 2020-12, which OpenAPI 3.1 takes as it is): what a client generator or the
release's page needs to call this model."""

from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string", "description": "what was wrong and what to do"},
    "detail": {"description": "the field at fault, when there is one",
               "type": ["object", "null"]}}}


def _json(schema: dict, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "the body does not match the signature; the message names the field",
            413: "the body is larger than this replica takes",
            500: "the model failed on a valid input",
            503: "the model is still loading or warming up"}
    return {str(code): _json({"$ref": "#/components/schemas/Error"}, text[code])
            for code in codes}


def document(*, title: str, version: str, task: str, signature: dict, base_path: str,
             max_body: int) -> dict[str, Any]:
    """The OpenAPI document of a replica serving TASK with SIGNATURE under BASE_PATH."""
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": f"loophub model server: one {task} model version."},
        "servers": [{"url": base_path.rstrip("/") or "/"}],
        "paths": {
            "/predict": {"post": {
                "summary": "Predictions for instances",
                "description": f"Each instance is checked against the signature before the "
                               f"model runs; bodies over {max_body} bytes are refused.",
                "requestBody": {"required": True, **_json(signature["request"],
                                                          "the instances")},
                "responses": {"200": _json(signature["response"],
                                           "one prediction per instance, in order"),
                              **_errors(400, 413, 500, 503)}}},
            "/health": {"get": {"summary": "Live: the process answers",
                                "responses": {"200": _json(status, "alive")}}},
            "/ready": {"get": {"summary": "Ready: the model is loaded and warmed up",
                               "responses": {"200": _json(status, "ready"),
                                             **_errors(503)}}},
            "/metadata": {"get": {"summary": "The model version served",
                                  "responses": {"200": _json({"type": "object"},
                                                             "name, version, alias, task, "
                                                             "signature, labels")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        },
        "components": {"schemas": {"Error": ERROR}},
    }
