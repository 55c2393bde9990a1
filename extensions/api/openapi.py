"""The OpenAPI document, built from the routes' ``Op`` objects, so it cannot drift from
what the handlers enforce (base.py checks every request against the same schemas).

Each operation carries ``x-access`` (who may call it: public, user, admin, own,
dataset:read|write|manage), which the authorization-matrix test reads to know the
status every kind of caller must get.
"""

from __future__ import annotations

import re

import loophub

from .base import Op

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
REASONS = {
    400: "bad input: the message names the field", 401: "no or invalid hub identity",
    403: "identified, but not allowed", 404: "no such thing (or not one you can see)",
    409: "conflicts with the current state", 413: "the body is over the limit",
    415: "the body is not declared as JSON", 422: "valid, but can never be done here",
    503: "a dependency is down",
}
PROXY_431 = ("the request line or headers are over the hub proxy's limit (16 KiB by "
             "default; it answers, without a JSON body): send long values in the body")
SUCCESS = {200: "OK", 201: "created", 202: "accepted: a job runs it", 204: "done, no content"}
PATH_PARAM = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def _parameters(path: str, op: Op) -> list[dict]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 1024}}
              for name in PATH_PARAM.findall(path)]
    params += [{"name": name, "in": "query", "required": name in op.required_query,
                "schema": schema} for name, schema in op.query.items()]
    return params


def _success(op: Op) -> dict:
    if op.status == 204:
        return {"description": SUCCESS[204]}
    if op.produces != "application/json":
        kinds = (op.produces,) if isinstance(op.produces, str) else op.produces
        return {"description": SUCCESS.get(op.status, "OK"), "content": {
            kind: {"schema": {"type": "string", "format": "binary"}} for kind in kinds}}
    return {"description": SUCCESS.get(op.status, "OK"), "content": {
        "application/json": {"schema": op.response or {}}}}


def _operation(handler: type, method: str, path: str) -> dict:
    op: Op = handler.openapi[method]
    responses: dict[str, dict] = {str(op.status): _success(op)}
    errors = {400, 404, 409} if method != "get" or PATH_PARAM.search(path) else {400, 404}
    if op.access != "public":
        errors |= {401, 403}
    if op.body is not None or op.raw_body is not None:
        errors |= {413}
    if op.body is not None:
        errors |= {415}
    for status, text in op.errors.items():
        if status < 300:
            responses[str(status)] = {"description": text, "content": {
                "application/json": {"schema": {"type": "object"}}}}
        else:
            errors.add(status)
    for status in sorted(errors):
        responses[str(status)] = {"description": op.errors.get(status, REASONS[status]),
                                  "content": ERROR}
    if PATH_PARAM.search(path) or op.query:
        responses["431"] = {"description": PROXY_431}
    out: dict = {"operationId": f"{method}_{handler.__name__}", "summary": op.summary,
                 "x-access": op.access, "responses": responses}
    if op.description:
        out["description"] = op.description
    if op.access == "public":
        out["security"] = []
    elif op.access == "admin":
        out["description"] = (op.description + " Hub admins only.").strip()
    parameters = _parameters(path, op)
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        body_required = op.body.get("type") != "object" or bool(op.body.get("required"))
        out["requestBody"] = {"required": body_required, "content": {
            "application/json": {"schema": op.body}}}
        if op.body_example is not None:
            out["requestBody"]["content"]["application/json"]["example"] = op.body_example
    elif op.raw_body is not None:
        out["requestBody"] = {"required": True, "content": {
            op.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    return out


def openapi_path(path: str) -> str:
    return "/" + PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def build_openapi(routes: list[tuple[str, type]], prefix: str) -> dict:
    paths: dict[str, dict] = {}
    for path, handler in routes:
        paths[openapi_path(path)] = {m: _operation(handler, m, path) for m in handler.openapi}
    return {
        "openapi": "3.1.0",
        "info": {"title": "loophub API", "version": loophub.__version__,
                 "description": "The loophub platform service behind JupyterHub. Authenticate "
                                "with a hub API token (`Authorization: token ...`) or the "
                                "hub login cookie (writes then need the hub's XSRF token)."},
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
