"""The API answers as its OpenAPI document says (issue #21.7), checked by schemathesis
against a live platform (`loophub up`: hub, proxy, API) as a user and as an admin.

A bounded run (examples, coverage and fuzzing phases, ``MAX_TIME`` seconds per identity)
fails on any 5xx and on any response the document does not describe: an undocumented
status code, content type or header, a body that breaks the response schema, an
undeclared method answered without 405 and Allow. Path parameters are drawn mostly from
real values (a dataset with records, an annotation, a version, a tag and a job of the
caller), so the generated requests reach the handlers instead of stopping at 404.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

pytestmark = pytest.mark.hub

MAX_TIME = 35  # seconds of schemathesis per identity
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,unsupported_method,"
          "allow_header_conformance")


def _call(hub, token: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.api}/{path}", timeout=60,
                            headers={"Authorization": f"token {token}"}, **kw)


def _world(hub, token: str, name: str) -> dict[str, list]:
    """A dataset of the caller's with records, annotation 'a1', a version, a tag and a
    commit job; the values schemathesis draws path parameters from."""
    schema = {"task": "image_classification",
              "classes": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}
    assert _call(hub, token, "POST", "datasets",
                 json={"name": name, "label_schema": schema}).status_code == 201
    for i in range(3):
        annotations = [{"id": "a1", "type": "image_class", "label": "cat"}] if i == 0 else []
        resp = _call(hub, token, "POST", f"datasets/{name}/records",
                     json={"record": {"id": f"r{i}", "annotations": annotations}})
        assert resp.status_code == 201, resp.text
    commit = _call(hub, token, "POST", f"datasets/{name}/commits", json={"message": "v1"})
    assert commit.status_code == 201, commit.text
    assert _call(hub, token, "POST", f"datasets/{name}/tags",
                 json={"tag": "base", "version": 1}).status_code == 201
    return {"datasets": [name], "records": ["r0", "r1"], "annotations": ["a1"],
            "tags": ["base"], "jobs": [commit.json()["job"]], "versions": ["1", "head"]}


def _config(world: dict[str, list], path) -> None:
    lines = []
    for key, values in world.items():
        lines += [f"[dictionaries.{key}]", f"values = {json.dumps(values)}"]
    lines += ["[parameters]",
              '"path.name" = { dictionary = "datasets", probability = 0.9 }',
              '"path.record_id" = { dictionary = "records", probability = 0.8 }',
              '"path.annotation_id" = { dictionary = "annotations", probability = 0.8 }',
              '"path.tag" = { dictionary = "tags", probability = 0.7 }',
              '"path.job_id" = { dictionary = "jobs", probability = 0.7 }',
              # scheduler requests of kind service only (no handler acts on them yet): a
              # server or kernel allocated with no spawner waiting would be started
              # through the hub, a job would start the training runner
              '"body.kind" = { dictionary = "kinds", probability = 1.0 }',
              "[dictionaries.kinds]", 'values = ["service"]']
    path.write_text("\n".join(lines) + "\n")


INTERPRETER_BUG = "AST constructor recursion depth mismatch"


def _schemathesis(hub, token: str, config, tmp_path) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
           f"{hub.api}/openapi.json", "-H", f"Authorization: token {token}", "--checks", CHECKS,
           "--phases", "examples,coverage,fuzzing", "--max-time", str(MAX_TIME),
           "--workers", "2", "--request-timeout", "70", "--seed", "21",
           "--suppress-health-check", "all", "--no-color",
           # an admin's reset gives the named account a new password: drawn at random it
           # can be the hub's first admin, whom later tests sign in as (test_accounts and
           # the authorization matrix call it on accounts of their own)
           "--exclude-path-regex", r"^/accounts/[^/]+/reset$"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_TIME + 120,
                         cwd=tmp_path)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("who", ["user", "admin"])
def test_live_api_conforms_to_its_document(hub, admin_token, tmp_path, who):
    token = admin_token if who == "admin" else hub.token("conformance-user")
    world = _world(hub, token, f"conformance-{who}")
    config = tmp_path / "schemathesis.toml"
    _config(world, config)
    code, output = _schemathesis(hub, token, config, tmp_path)
    if code != 0 and INTERPRETER_BUG in output:
        # CPython 3.11's ast.parse can fail spuriously when threads parse at once
        # (python/cpython#106905); hypothesis parses lambdas in schemathesis' 2 workers.
        # Not a finding about the API: run it again, once.
        code, output = _schemathesis(hub, token, config, tmp_path)
    counted = re.search(r"(\d+) generated", output)
    print(f"schemathesis as {who}: {counted.group(0) if counted else '?'}")
    assert counted and int(counted.group(1)) > 200, output[-3000:]
    assert code == 0, output[-12000:]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_bodies_through_the_proxy_are_the_documented_json_413(hub, chunked):
    """Through the hub's proxy a body over a route's limit gets the API's JSON 413 (the
    API reads and drops it first), not the proxy's HTML 503 of a reset connection; so do
    refusals found before the body (no identity: 401)."""
    token = hub.token("conformance-user")
    size, step = 24 * 1024 * 1024, 1024 * 1024
    body = b" " * size

    def sent():
        return (body[i:i + step] for i in range(0, size, step)) if chunked else body

    for path, headers in [("datasets", {"Authorization": f"token {token}"}),
                          ("scheduler/watch", {"Authorization": f"token {token}"}),
                          ("datasets", {})]:
        resp = requests.post(f"{hub.api}/{path}", data=sent(), timeout=120,
                             headers={**headers, "Content-Type": "application/json"})
        assert resp.headers["Content-Type"].startswith("application/json"), resp.text[:300]
        assert resp.status_code == (413 if headers else 401), resp.text[:300]
        assert resp.json()["error"]
