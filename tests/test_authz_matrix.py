"""The authorization matrix (issue #21.8), generated from the live OpenAPI document.

Every operation the document lists is called by every kind of caller (no identity, a
bad token, another user, a member of the dataset's group, its owner, an admin), and
dataset operations once per visibility (private, group-shared, public), with the
operation's own body example and real path values: datasets with records, an
annotation, a version and a tag, and the owner's jobs, scheduler request and training
job. What each caller must get is written once per access rule (EXPECTED: ``x-access``
x caller x visibility -> allowed, or the refusal 401/403/404), so an operation whose
``x-access`` has no row, or whose path names a parameter with no real value here,
fails the test: a new route cannot ship without its row.

"Allowed" means the caller got past authorization: any answer but 401, 403 and the 404
of a thing the caller may not see (told from a 404 for a missing record by its message:
"... that you can see", "... of yours"). An allowed caller's request may still be
refused as invalid or conflicting (400, 409, 422); a 5xx always fails.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
import requests

from loophub.extensions.api.base import ACCESS

pytestmark = pytest.mark.hub

OK = "allowed"
CALLERS = ("anonymous", "bad_token", "other", "member", "owner", "admin")
VISIBILITIES = ("private", "group", "public")
NOBODY = {"anonymous": 401, "bad_token": 401}

# x-access -> caller -> outcome, or -> caller -> {visibility: outcome} (loophub.access:
# what you cannot read does not exist for you, 404; what you read but may not change, 403)
EXPECTED: dict[str, dict[str, object]] = {
    "public": {caller: OK for caller in CALLERS},
    "user": {**NOBODY, "other": OK, "member": OK, "owner": OK, "admin": OK},
    "admin": {**NOBODY, "other": 403, "member": 403, "owner": 403, "admin": OK},
    "own": {**NOBODY, "other": 404, "member": 404, "owner": OK, "admin": OK},
    "dataset:read": {**NOBODY, "owner": OK, "admin": OK,
                     "other": {"private": 404, "group": 404, "public": OK},
                     "member": {"private": 404, "group": OK, "public": OK}},
    "dataset:write": {**NOBODY, "owner": OK, "admin": OK,
                      "other": {"private": 404, "group": 404, "public": 403},
                      "member": {"private": 404, "group": OK, "public": 403}},
    "dataset:manage": {**NOBODY, "owner": OK, "admin": OK,
                       "other": {"private": 404, "group": 404, "public": 403},
                       "member": {"private": 404, "group": 403, "public": 403}},
}
for _need in ("read", "write", "manage"):  # models and releases: shared like datasets
    EXPECTED[f"model:{_need}"] = EXPECTED[f"dataset:{_need}"]
    EXPECTED[f"release:{_need}"] = EXPECTED[f"dataset:{_need}"]
# the 404 of a thing that exists but is not the caller's to see
UNSEEN = re.compile(r"^no (dataset|model|release) named .* that you can see|"
                    r"^no (job|training job|scheduler request) .* of yours")


def expected(access: str, caller: str, visibility: str | None) -> object:
    outcome = EXPECTED[access][caller]
    return outcome[visibility] if isinstance(outcome, dict) else outcome


def outcome(access: str, resp: requests.Response) -> object:
    if resp.status_code in (401, 403):
        return resp.status_code
    if resp.status_code == 404 and (access == "own" or ":" in access):
        try:
            message = resp.json().get("error", "")
        except ValueError:
            message = ""
        return 404 if UNSEEN.search(message) else OK
    return OK


def test_every_access_kind_has_its_row():
    """The table covers exactly the access kinds an Op may declare (base.ACCESS), and
    every row names every caller (and, for dataset rows, every visibility)."""
    assert set(EXPECTED) == set(ACCESS)
    for access, row in EXPECTED.items():
        assert set(row) == set(CALLERS), access
        for caller, value in row.items():
            assert value == OK or value in (401, 403, 404) or (
                isinstance(value, dict) and set(value) == set(VISIBILITIES)), (access, caller)


class World:
    """The platform as the matrix sees it: tokens, datasets and the owner's things."""

    def __init__(self, hub, admin_token: str) -> None:
        tag = self.tag = uuid.uuid4().hex[:6]
        self.hub = hub
        names = {c: f"mx-{c}-{tag}" for c in ("owner", "member", "other")}
        self.tokens = {"anonymous": None, "bad_token": "0" * 32, "admin": admin_token}
        for caller, name in names.items():
            self.tokens[caller] = hub.token(name)
        self.group = f"mx-team-{tag}"
        resp = hub.hub_api(admin_token, "POST", f"groups/{self.group}",
                           json={"users": [names["owner"], names["member"]]})
        assert resp.status_code == 201, resp.text
        self.datasets = {v: f"mx-{v}-{tag}" for v in VISIBILITIES}
        self.models = {v: f"mx-model-{v}-{tag}" for v in VISIBILITIES}
        self.evaluations: dict[str, str] = {}
        self.cleanup: list[tuple[str, str]] = []

    def call(self, caller: str, method: str, path: str, **kw) -> requests.Response:
        token = self.tokens[caller]
        headers = {"Authorization": f"token {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        return requests.request(method, self.hub.api + path, headers=headers, timeout=120,
                                **kw)

    def owner(self, method: str, path: str, status: int | tuple = (200, 201), **kw) -> dict:
        resp = self.call("owner", method, path, **kw)
        assert resp.status_code in ((status,) if isinstance(status, int) else status), \
            (method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else {}

    def build(self) -> None:
        image = b"\x89PNG\r\n\x1a\n" + b"matrix" * 20
        upload = self.owner("POST", "/datasets/uploads", data=image,
                            headers={"Content-Type": "application/octet-stream"})["digest"]
        schema = {"task": "image_classification",
                  "classes": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}
        for visibility, name in self.datasets.items():
            shared = {"group": self.group} if visibility == "group" else {}
            self.owner("POST", "/datasets", json={"name": name, "label_schema": schema,
                                                  "visibility": visibility, **shared})
            for i in range(3):
                record = {"id": f"r{i}", "annotations": [], "split": "train",
                          "media": {"sha256": upload, "type": "image/png"}}
                if i == 0:
                    record["annotations"] = [{"id": "a1", "type": "image_class",
                                              "label": "cat",
                                              "source": {"kind": "user", "name": "x"}}]
                self.owner("POST", f"/datasets/{name}/records", json={"record": record})
            self.commit_job = self.owner("POST", f"/datasets/{name}/commits",
                                         json={"message": "v1"})["job"]
            self.owner("POST", f"/datasets/{name}/tags", json={"tag": "base", "version": 1})
        self.build_models()
        # the owner's scheduler request holds the node, so their training job (as large)
        # waits in the queue instead of starting workers while the matrix runs
        node_cpu = max(n["cpu"] for n in self.owner("GET", "/pool")["nodes"])
        blocker = self.owner("POST", "/scheduler/requests", status=201, json={
            "kind": "service", "release": "mx-matrix", "replica": "0",
            "demand": {"cpu": node_cpu}, "preemptible": False})
        self.cleanup.append(("DELETE", f"/scheduler/requests/{blocker['id']}"))
        self.build_releases()  # behind the blocker: their replicas wait, no process starts
        # the request the scheduler operations act on (releasing it frees nothing)
        self.request_id = self.owner("POST", "/scheduler/requests", status=201, json={
            "kind": "service", "release": "mx-matrix", "replica": "1",
            "demand": {"cpu": 0.01}})["id"]
        self.cleanup.append(("DELETE", f"/scheduler/requests/{self.request_id}"))
        function = self.owner("POST", "/datasets/uploads", data=b"not a pickle",
                              headers={"Content-Type": "application/octet-stream"})["digest"]
        training = self.owner("POST", "/training/jobs", status=201, json={
            "function": {"blob": function, "name": "f", "sha256": function},
            "dataset": f"{self.datasets['private']}@v1", "workers": 1,
            "per_worker": {"cpu": node_cpu}})
        self.training_job = training["id"]
        self.cleanup.insert(0, ("DELETE", f"/training/jobs/{self.training_job}"))

    def build_models(self) -> None:
        """A model per visibility, v1 from a TorchScript archive, with the alias champion
        on it (so the operations' DELETEs are refused, 409, and the model stays)."""
        import torch

        from loophub.client.models import to_torchscript

        archive = to_torchscript(torch.nn.Linear(4, 2), torch.zeros(1, 4))
        digest = self.owner("POST", "/datasets/uploads", data=archive, headers={
            "Content-Type": "application/octet-stream"})["digest"]
        meta = {"format": "torchscript", "task": "image_classification",
                "labels": ["cat", "dog"], "preprocess": {"kind": "image"}}
        for visibility, name in self.models.items():
            shared = {"group": self.group} if visibility == "group" else {}
            self.owner("POST", f"/models/{name}/versions", json={
                "artifact": digest, "meta": meta, "visibility": visibility, **shared})
            self.owner("PUT", f"/models/{name}/aliases/champion",
                       json={"version": 1, "force": True})
            evaluation = self.owner("POST", f"/models/{name}/versions/1/evaluations", json={
                "dataset": f"{self.datasets[visibility]}@v1"})  # queued behind the blocker
            self.evaluations[visibility] = evaluation["id"]

    def build_releases(self) -> None:
        """A release per visibility (hub, group, public-token) of that visibility's model,
        with an API key; its replica waits behind the blocker, so no process starts."""
        access = {"private": "public-token", "group": f"group:{self.group}", "public": "hub"}
        self.releases = {v: f"mx-rel-{v}-{self.tag}" for v in VISIBILITIES}
        self.release_keys, self.replicas = {}, {}
        for visibility, name in self.releases.items():
            view = self.owner("POST", "/releases", json={
                "name": name, "model": f"{self.models[visibility]}@champion",
                "access": access[visibility], "per_replica": {"cpu": 0.01, "mem": "64M"}})
            self.replicas[visibility] = view["replica_list"][0]["id"]
            self.release_keys[visibility] = self.owner(
                "POST", f"/releases/{name}/keys", json={"note": "matrix"})["id"]
            self.cleanup.insert(0, ("DELETE", f"/releases/{name}"))  # before the blocker

    def path_value(self, path: str, name: str, visibility: str | None) -> str:
        v = visibility or "private"
        releases = {"release": self.releases[v], "key_id": self.release_keys[v],
                    "replica": self.replicas[v]} if hasattr(self, "releases") else {}
        values = {**releases, "name": self.datasets.get(visibility or "private"), "record_id": "r0",
                  "model": self.models[visibility or "private"], "version": "1",
                  "evaluation_id": self.evaluations.get(visibility or "private"),
                  "alias": "staging",
                  "annotation_id": "a1", "tag": "base", "request_id": self.request_id,
                  "schedule_id": "0",
                  "job_id": self.training_job if path.startswith("/training/")
                  else self.commit_job, "digest": "0" * 64}
        if name not in values:
            pytest.fail(f"{path}: no real value for path parameter {{{name}}}; give the "
                        "matrix one (World.path_value)")
        return values[name]

    def close(self) -> None:
        for method, path in self.cleanup:
            self.call("owner", method, path)
        # the training and evaluation jobs the operations queued, everyone's
        jobs = self.call("admin", "GET", "/training/jobs", params={"limit": 500})
        for view in jobs.json().get("jobs", []):
            if view["owner"].startswith("mx-") and view["state"] not in (
                    "succeeded", "failed", "cancelled"):
                self.call("admin", "DELETE", f"/training/jobs/{view['id']}")
        # the requests the operations' body examples queued (a job "example"), everyone's
        listed = self.call("admin", "GET", "/scheduler/requests", params={"limit": 500})
        for view in listed.json().get("requests", []):
            if view["state"] in ("queued", "running") and "example" in (view.get("key") or ""):
                self.call("admin", "DELETE", f"/scheduler/requests/{view['id']}")


@pytest.fixture(scope="module")
def world(hub, admin_token):
    built = World(hub, admin_token)
    built.build()
    yield built
    built.close()


def _body(op: dict, world: World, visibility: str | None) -> dict:
    content = (op.get("requestBody") or {}).get("content", {})
    if "application/json" in content:
        example = content["application/json"].get("example")
        if example is None and op["requestBody"].get("required"):
            pytest.fail(f"{op['operationId']}: a JSON body and no body_example to send")
        if isinstance(example, dict) and example.get("dataset") == "matrix@v1" and \
                op["x-access"].startswith("model:"):  # a real dataset of that visibility
            example = {**example, "dataset": f"{world.datasets[visibility]}@v1"}
        if isinstance(example, dict) and example.get("dataset") == "matrix" and \
                op["x-access"].startswith("release:"):  # collect into the owner's dataset
            example = {**example, "dataset": world.datasets[visibility]}
        if isinstance(example, dict) and "model" in example and \
                op["x-access"].startswith("release:"):  # a real model of that visibility
            example = {**example, "model": f"{world.models[visibility]}@v1"}
        return {"json": example} if example is not None else {}
    if content:  # a raw body (uploads)
        kind = next(iter(content))
        return {"data": b"matrix", "headers": {"Content-Type": kind}}
    return {}


def test_authorization_matrix(world):
    doc = world.call("admin", "GET", "/openapi.json").json()
    unknown = sorted(f"{m.upper()} {p}: {op.get('x-access')!r}"
                     for p, ops in doc["paths"].items() for m, op in ops.items()
                     if op.get("x-access") not in EXPECTED)
    assert not unknown, f"operations whose x-access has no row in EXPECTED: {unknown}"
    wrong, counts = [], Counter()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            access = op["x-access"]
            visibilities = VISIBILITIES if ":" in access else (None,)
            for visibility in visibilities:
                url = re.sub(r"\{(\w+)\}", lambda m, v=visibility, p=path: world.path_value(
                    p, m.group(1), v), path)
                for caller in CALLERS:
                    resp = world.call(caller, method.upper(), url,
                                      **_body(op, world, visibility))
                    counts[resp.status_code] += 1
                    if resp.status_code >= 500:
                        wrong.append(f"{method.upper()} {url} as {caller}: "
                                     f"{resp.status_code} {resp.text[:200]}")
                        continue
                    want, got = expected(access, caller, visibility), outcome(access, resp)
                    if want != got:
                        wrong.append(f"{method.upper()} {path} ({access}, {visibility}) as "
                                     f"{caller}: expected {want}, got {resp.status_code} "
                                     f"{resp.text[:160]}")
    print(f"authorization matrix: {sum(counts.values())} requests, "
          f"{dict(sorted(counts.items()))}")
    assert not wrong, "\n".join(wrong)
