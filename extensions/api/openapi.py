"""The OpenAPI document, built from the route table so it cannot drift from the code."""

from __future__ import annotations

import loophub

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}

_AUTH_ERRORS = {
    "401": {"description": "no or invalid hub identity", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}},
    "403": {"description": "identified, but not allowed", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}},
}


def _operation(handler: type, method: str) -> dict:
    spec = dict(handler.openapi[method])
    responses = dict(spec.pop("responses", {}))
    schema = spec.pop("response", None)
    if schema is not None:
        responses.setdefault("200", {"description": "OK", "content": {
            "application/json": {"schema": schema}}})
    responses.setdefault("400", {"description": "bad input", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}})
    op = {"operationId": f"{method}_{handler.__name__}", **spec, "responses": responses}
    if handler.auth == "none":
        op["security"] = []
    else:
        op["responses"].update(_AUTH_ERRORS)
        if handler.auth == "admin":
            op["description"] = (op.get("description", "") + " Hub admins only.").strip()
    return op


def build_openapi(routes: list[tuple[str, type]], prefix: str) -> dict:
    paths: dict[str, dict] = {}
    for path, handler in routes:
        openapi_path = "/" + path.replace("(?P<", "{").replace(">[^/]+)", "}")
        paths[openapi_path] = {m: _operation(handler, m) for m in handler.openapi}
    return {
        "openapi": "3.1.0",
        "info": {"title": "loophub API", "version": loophub.__version__,
                 "description": "The loophub platform service behind JupyterHub. Authenticate "
                                "with a hub API token (`Authorization: token ...`) or the "
                                "hub login cookie."},
        "servers": [{"url": prefix.rstrip("/") + "/api"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "hubToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                             "description": "'token <hub API token>'"},
            },
        },
        "security": [{"hubToken": []}],
    }
