"""Fuzzing the API for 500s (issue #21.6), against the real tornado app in this process.

Every operation of the published OpenAPI document gets the hand-written classes of bad
input (garbage path segments, query values and bodies, wrong types in every field,
wrong Content-Type, oversize and streamed bodies) and must answer a JSON 4xx, never a
5xx; races (identical uploads, concurrent commits and reverts of one dataset) must give
409 (or a 4xx saying why), never 500, and a failed commit must leave no blob that
garbage collection cannot see. Identity comes from the token "user:NAME" (group
"team"; "root" is an admin), so no hub is needed.

Each bug these found has a regression test below; tests/test_openapi_conformance.py
runs schemathesis against a live platform.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from jupyterhub.services.auth import HubOAuth

from tests.inprocess import TokenIsUser

HEADERS = {"Authorization": "token user:alice"}
JSON = {**HEADERS, "Content-Type": "application/json"}


class Served:
    def __init__(self, url: str, ctx) -> None:
        self.url, self.ctx = url, ctx

    def request(self, method: str, path: str, *, user: str = "alice", **kw) -> requests.Response:
        headers = {"Authorization": f"token user:{user}", **kw.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kw)


_SERVING: list[int] = []  # ports of the servers up: they share the HubOAuth singleton


def _token_is_user() -> HubOAuth:
    """The HubOAuth singleton the handlers take, made TokenIsUser once for every server
    of this module (clearing it while another server runs sends that one to a hub)."""
    if not (HubOAuth.initialized() and isinstance(HubOAuth.instance(), TokenIsUser)):
        TokenIsUser.clear_instance()
        HubOAuth.clear_instance()
        TokenIsUser.instance(api_token="unused", api_url="http://127.0.0.1:1/hub/api",
                             oauth_client_id="service-loophub", access_scopes=set())
    return HubOAuth.instance()


def serve(home: Path) -> Iterator[Served]:
    from loophub.extensions.api.app import ServiceContext, make_app
    from loophub.ports import free_port
    from loophub.settings import Settings

    settings = Settings.from_env(home)
    settings.ensure_dirs()
    ctx = ServiceContext(settings=settings)
    port, ready, state = free_port(), threading.Event(), {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = make_app(ctx, hub_auth=auth).listen(port, "127.0.0.1",
                                                     max_body_size=512 * 1024**2)
        state["loop"] = loop
        ready.set()
        loop.run_forever()
        server.stop()
        loop.close()

    auth = _token_is_user()
    _SERVING.append(port)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    yield Served(f"http://127.0.0.1:{port}/services/loophub/api", ctx)
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)
    ctx.jobs.shutdown()
    ctx.db.dispose()
    _SERVING.remove(port)
    if not _SERVING:
        TokenIsUser.clear_instance()
        HubOAuth.clear_instance()


def seed(api: Served, name: str = "pets") -> None:
    """A dataset of alice's: 4 records, one annotation "a1", version 1, tag "base"."""
    assert api.request("POST", "/datasets", headers=JSON, json={
        "name": name, "label_schema": {"task": "image_classification", "classes": [
            {"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}}).status_code == 201
    for i in range(4):
        record = {"id": f"img0{i}", "annotations": [], "split": "train"}
        if i == 0:
            record["annotations"] = [{"id": "a1", "type": "image_class", "label": "cat",
                                      "source": {"kind": "user", "name": "alice"}}]
        resp = api.request("POST", f"/datasets/{name}/records", json={"record": record})
        assert resp.status_code == 201, resp.text
    assert api.request("POST", f"/datasets/{name}/commits",
                       json={"message": "first"}).status_code == 201
    assert api.request("POST", f"/datasets/{name}/tags",
                       json={"tag": "base", "version": 1}).status_code == 201


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Served]:
    yield from serve(tmp_path_factory.mktemp("fuzz") / "home")


@pytest.fixture(scope="module")
def pets(api) -> Served:
    seed(api)
    return api


# -- the hand-written classes --------------------------------------------------------

REAL = {"name": "pets", "record_id": "img00", "annotation_id": "a1", "tag": "base",
        "job_id": "0" * 32, "request_id": "0" * 32}
PATH_GARBAGE = ["%ff", "%00", "%2f", "a%2fb", "%2e%2e", "%C0%AF", "%ed%a0%80", "x" * 1500,
                "\u00b3", "v99999999999999999999", "99999999999999999999", "%20", "%0a",
                "-1", "%e2%80%ae", "%ef%bf%bf", "NaN"]
QUERY_GARBAGE = ["%00", "x" * 20_000, "NaN", "Infinity", "-Infinity", "-1", "1e309", "2147483648",
                 "99999999999999999999999", "\u00b3", "%ED%A0%80", "%ff", "", "-0", "0x10",
                 "1_000", "true", "[]", "%2f..%2f", "v99999999999999999999"]
BAD_BODIES = [b"", b"{", b"null", b"[]", b"1", b'"x"', b"NaN", b'{"a": NaN}',
              b'{"a": Infinity}', b"[" * 5000 + b"]" * 5000, b'{"x": 1e400}',
              b'{"x": 123456789012345678901234567890}', b'"\\ud800"', b'{"\\u0000": 1}',
              b'{"a": "\\udc00"}', b"\xff\xfe", b'{"a": "\\u0000"}', b"\xef\xbb\xbf{}",
              b'{"a": 1, "a": 2}']
WRONG_VALUES = [None, 0, -1, 2**31, 2**53, 2**53 + 1, -(2**60), 1.5, "", "x" * 20_000, [], {}, True,
                "\u00b3", "v99999999999999999999", "\U0001f600", [[[[[]]]]], {"a": {"b": {}}}]


def _operations(api: Served) -> list[tuple[str, str, dict]]:
    doc = api.request("GET", "/openapi.json").json()
    return [(path, method, op) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def _fill(path: str, **over: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: over.get(m.group(1), REAL.get(m.group(1), "x")),
                  path)


def _requests(path: str, method: str, op: dict) -> Iterator[tuple[str, str, dict]]:
    """(method, path, requests' keyword arguments) of every hand-written case of OP."""
    method = method.upper()
    media = (op.get("requestBody") or {}).get("content", {}).get("application/json", {})
    example = media.get("example")
    body = {"data": json.dumps(example), "headers": {"Content-Type": "application/json"}} \
        if example is not None else {}
    for name in re.findall(r"\{(\w+)\}", path):
        for garbage in PATH_GARBAGE:
            yield method, _fill(path, **{name: garbage}), body
    for param in op.get("parameters", ()):
        if param["in"] == "query":
            for garbage in QUERY_GARBAGE:
                yield method, f"{_fill(path)}?{param['name']}={garbage}", body
    if "requestBody" not in op or "application/json" not in op["requestBody"]["content"]:
        return
    for raw in BAD_BODIES:
        yield method, _fill(path), {"data": raw, "headers": {"Content-Type": "application/json"}}
    yield method, _fill(path), {"data": json.dumps(example or {}),
                                "headers": {"Content-Type": "text/plain"}}
    yield method, _fill(path), {"data": b"{}", "headers": {}}
    if isinstance(example, dict):
        for key in [*example, "unknown"]:
            for value in WRONG_VALUES:
                yield method, _fill(path), {"json": {**example, key: value}}


def _check(resp: requests.Response, what: str, failures: list[str]) -> None:
    kind = resp.headers.get("Content-Type", "")
    if resp.status_code >= 500 or (resp.status_code >= 400 and "json" not in kind):
        failures.append(f"{what} -> {resp.status_code} {kind} {resp.text[:200]}")


@pytest.fixture(scope="module")
def pg_pets(tmp_path_factory) -> Iterator[Served]:
    """The same, on PostgreSQL (which casts parameters to their columns' types)."""
    import os
    import uuid

    import psycopg

    from tests.conftest import PG_URL, _postgres_reachable

    problem = _postgres_reachable()
    if problem:
        pytest.skip(f"PostgreSQL at {PG_URL} does not answer ({problem})")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    before = os.environ.get("LOOPHUB_DB_URL")
    os.environ["LOOPHUB_DB_URL"] = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        for api in serve(tmp_path_factory.mktemp("fuzz-pg") / "home"):
            seed(api)
            yield api
    finally:
        if before is None:
            os.environ.pop("LOOPHUB_DB_URL", None)
        else:
            os.environ["LOOPHUB_DB_URL"] = before
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.parametrize("user", ["alice", "bob", "root"])
def test_hand_written_garbage_is_a_json_4xx_never_a_500(pets, user):
    """Every operation x the classes above, as the owner, a stranger and an admin."""
    _garbage(pets, user)


@pytest.mark.postgres
@pytest.mark.parametrize("user", ["alice", "root"])
def test_hand_written_garbage_on_postgresql(pg_pets, user):
    _garbage(pg_pets, user)


def _garbage(pets: Served, user: str) -> None:
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for path, method, op in _operations(pets):
        for verb, url, kw in _requests(path, method, op):
            if verb == "POST" and url.endswith("/scheduler/watch") and "json" in kw:
                kw["json"]["wait"] = 0  # a wait is a long-poll, not a bug
            resp = pets.request(verb, url, user=user, **kw)
            statuses[resp.status_code] += 1
            _check(resp, f"{verb} {url[:120]} {str(kw)[:120]}", failures)
    print(f"{user}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) > 2000
    assert not failures, "\n".join(failures[:30])


# -- regressions: each a 500 the fuzzing found ----------------------------------------


@pytest.mark.parametrize("ref", ["\u00b3", "v\u00b2", "99999999999999999999",
                                 "v99999999999999999999", "9" * 12, "2147483648"])
def test_version_refs_that_are_not_ascii_numbers_or_past_the_column_are_404(pets, ref):
    """_resolve took str.isdigit() for a number: '³' made int() raise and a 20-digit
    number overflowed SQLite's integer (500 on diff, export, tag, checkout, lineage)."""
    for verb, path, kw in [
            ("GET", "/datasets/pets/diff", {"params": {"base": ref}}),
            ("GET", "/datasets/pets/export", {"params": {"version": ref}}),
            ("GET", "/datasets/pets/lineage", {"params": {"version": ref}}),
            ("POST", "/datasets/pets/tags", {"json": {"tag": "t", "version": ref}}),
            ("POST", "/datasets/pets/checkout", {"json": {"version": ref}}),
            ("POST", "/datasets/pets/lineage", {"json": {"version": ref, "model_name": "m",
                                                         "model_version": "1"}})]:
        resp = pets.request(verb, path, **kw)
        assert resp.status_code == 404, (verb, path, resp.status_code, resp.text)
        assert "no version, number or tag" in resp.json()["error"]
    assert pets.request("GET", "/datasets/pets/export",
                        params={"version": "v1"}).status_code == 200


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo", "imagefolder", "csv", "conll",
                                 "labelstudio"])
def test_exporting_a_version_without_records_to_a_zip_format(api, fmt):
    """A zip export of an empty version wrote label_schema.json into a folder the format
    never created (FileNotFoundError, 500)."""
    from loophub.datasets.formats import FORMATS

    if fmt not in FORMATS:
        pytest.skip(f"no format {fmt}")
    name = f"empty-{fmt}"
    assert api.request("POST", "/datasets", json={"name": name}).status_code == 201
    assert api.request("POST", f"/datasets/{name}/commits",
                       json={"message": "nothing yet"}).status_code == 201
    resp = api.request("GET", f"/datasets/{name}/export", params={"format": fmt})
    assert resp.status_code == 200, resp.text
    assert resp.content[:2] == b"PK" and resp.headers["Content-Type"] == "application/zip"


def _burst(count: int, call: Callable[[int], requests.Response]) -> list[requests.Response]:
    """COUNT calls released at once."""
    barrier, out = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        barrier.wait()
        out[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_identical_uploads_at_once(api):
    """Two uploads of the same bytes both registered the digest (check, then insert):
    the second insert broke the key (IntegrityError, 500)."""
    for round_ in range(3):
        data = f"the same file {round_}\n".encode() * 1000
        answers = _burst(6, lambda i, data=data: api.request(
            "POST", "/datasets/uploads", user=f"up{i}", data=data,
            headers={"Content-Type": "application/octet-stream"}))
        assert [r.status_code for r in answers] == [201] * 6, [r.text for r in answers]
        assert len({r.json()["digest"] for r in answers}) == 1


def test_an_empty_upload_is_refused(api):
    resp = api.request("POST", "/datasets/uploads", data=b"",
                       headers={"Content-Type": "application/octet-stream"})
    assert resp.status_code == 400 and "empty" in resp.json()["error"]


def _blob_accounting(ctx) -> tuple[set[str], set[str]]:
    """(every blob in the store, the blobs something knows: a dataset_blobs row, which
    garbage collection may remove once unused, or a job's log)."""
    from sqlalchemy import select

    from loophub.datasets.models import DatasetBlob
    from loophub.jobs import Job

    stored = {p.name for p in Path(ctx.blobs.root).rglob("*")
              if p.is_file() and re.fullmatch(r"[0-9a-f]{64}", p.name)}
    with ctx.db.session() as s:
        known = set(s.scalars(select(DatasetBlob.digest)))
        known |= {d for d in s.scalars(select(Job.log_blob)) if d}
    return stored, known


def _edit_two_records(api: Served, name: str, mark: str) -> None:
    page = api.request("GET", f"/datasets/{name}/records").json()["records"]
    for item in page[:2]:
        record = {**item["record"], "split": mark}
        resp = api.request("PUT", f"/datasets/{name}/records/{record['id']}",
                           json={"record": record, "revision": item["revision"]})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                              marks=pytest.mark.postgres)])
def test_concurrent_commits_one_wins_the_others_409_and_no_orphan_blob(request, backend):
    """Concurrent commits of one dataset: exactly one version per round, every other
    commit a 409 (someone committed first) or a 400 (the winner already committed its
    changes), never a 500; the loser's packs and manifests stay known to garbage
    collection. On SQLite the head check read the dataset row before waiting for the
    write lock, so two commits both passed it (IntegrityError on the version number,
    500), and a losing commit's blobs were registered nowhere."""
    api = request.getfixturevalue("api" if backend == "sqlite" else "pg_pets")
    seed(api, "race")
    before, _ = _blob_accounting(api.ctx)
    for round_ in range(4):
        _edit_two_records(api, "race", f"r{round_}")
        answers = _burst(5, lambda i: api.request("POST", "/datasets/race/commits",
                                                  json={"message": f"c{i}"}))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(201) == 1 and set(codes) <= {201, 400, 409}, \
            [r.text for r in answers]
        losers = [r.json()["error"] for r in answers if r.status_code == 409]
        assert all("committed this dataset while you did" in e for e in losers)
        # revert races: checkout + commit at once
        answers = _burst(4, lambda i: api.request(
            "POST", "/datasets/race/checkout",
            json={"version": 1, "revert": True, "message": f"back {i}"}))
        assert all(r.status_code in (200, 400, 409) for r in answers), \
            [(r.status_code, r.text) for r in answers]
    log = api.request("GET", "/datasets/race/commits").json()["versions"]
    assert [v["number"] for v in log] == list(range(len(log), 0, -1))
    stored, known = _blob_accounting(api.ctx)
    assert stored - before <= known, stored - before - known


def test_a_failed_commit_registers_what_it_stored(api):
    """A commit that loses after writing its packs and delta leaves them registered, so
    garbage collection removes them after the grace period (domain-level, no timing)."""
    from loophub.datasets import versions
    from loophub.datasets.service import DatasetService
    from loophub.errors import Conflict
    from loophub.identity import Actor

    seed(api, "lost")
    _edit_two_records(api, "lost", "late")
    ctx, alice = api.ctx, Actor(name="alice")
    service: DatasetService = ctx.datasets
    real_finish = versions._finish

    def someone_else_first(*args, **kwargs):
        raise Conflict("someone else committed this dataset while you did")

    before, _ = _blob_accounting(ctx)
    versions._finish = someone_else_first
    try:
        with pytest.raises(Conflict):
            service.commit(alice, "lost", "loses")
    finally:
        versions._finish = real_finish
    stored, known = _blob_accounting(ctx)
    assert stored - before, "the commit stored nothing: the test does not test"
    assert stored - before <= known
    from loophub.datasets.gc import collect
    swept = collect(ctx.db, ctx.blobs, grace_seconds=0)
    assert swept["deleted"] >= len(stored - before)
    assert api.request("GET", "/datasets/lost/export").status_code == 200  # v1 intact


# -- bodies over the limit: a JSON 413 after the body, not a reset connection ----------


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_bodies_get_a_json_413(api, chunked):
    """A refusal is answered once the body has arrived (read and dropped): answering and
    closing while the client still sends resets the connection, which the hub's proxy
    turns into its own HTML 503."""
    size, step = 24 * 1024 * 1024, 1024 * 1024
    body = b" " * size

    def sent():  # chunked: requests streams an iterator with Transfer-Encoding: chunked
        return (body[i:i + step] for i in range(0, size, step)) if chunked else body

    for path in ("/datasets", "/scheduler/watch", "/labeling/pets/predictions"):
        resp = api.request("POST", path, data=sent(),
                           headers={"Content-Type": "application/json"})
        assert resp.status_code == 413, (path, resp.status_code, resp.text[:200])
        assert resp.json()["detail"]["limit"] < size
    # refusals found before the body (no identity, a JSON route sent text) wait for it too
    resp = requests.post(api.url + "/datasets", data=body, timeout=60,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 401 and resp.json()["error"]
    resp = api.request("POST", "/labeling/pets/predictions", data=body[:12 * step],
                       headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415 and resp.json()["error"]


def test_an_undeclared_method_is_405_with_allow(api):
    for verb in ("TRACE", "OPTIONS", "HEAD", "PUT", "QUERY", "PROPFIND"):
        resp = api.request(verb, "/datasets")
        assert resp.status_code == 405, verb
        assert resp.headers["Allow"] == "GET, POST"
        if verb != "HEAD":
            assert resp.json()["error"].startswith(f"{verb} is not allowed here")


def test_a_refused_request_keeps_the_connection_open(api):
    """Refusals are answered after the request was read, so the connection stays open for
    the next request (tornado closed it when prepare raised: the hub's proxy, reusing
    it, answered 503 'socket hang up' to the next request)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(api.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = [("GET", "/pool", {}, None), ("TRACE", "/pool", {}, None), ("QUERY", "/me", {}, None),
            ("POST", "/no/such/route", HEADERS, b"{}"),
            ("GET", "/datasets/x%00", HEADERS, None), ("PUT", "/me", HEADERS, b"{}"),
            ("GET", "/datasets/%ff%fe", HEADERS, None), ("GET", "/jobs?kind=%ff", HEADERS, None),
            ("POST", "/datasets", {"Content-Type": "text/plain", **HEADERS}, b"x" * 100_000),
            ("GET", "/me", HEADERS, None)]
    statuses = []
    for verb, path, headers, body in sent:
        conn.request(verb, url.path + path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
        assert resp.getheader("Connection") != "close"
    assert statuses == [401, 405, 405, 404, 400, 405, 400, 400, 415, 200]
    conn.close()


@pytest.mark.parametrize("if_match", ["99999999999999999999", "-1", "9007199254740993"])
def test_if_match_past_the_revision_range_is_a_400(pets, if_match):
    """If-Match is the one revision no schema bounds: a 20-digit one reached SQLite,
    which cannot bind it (OverflowError, 500)."""
    resp = pets.request("DELETE", "/datasets/pets/records/img03",
                        headers={"If-Match": if_match})
    assert resp.status_code == 400 and resp.json()["detail"] == {"field": "revision"}


@pytest.mark.parametrize("verb, path, kw", [
    ("DELETE", "/datasets/pets/records/img01", {}),
    ("DELETE", "/datasets/pets/records/img00/annotations/a1", {}),
    ("PUT", "/datasets/pets/records/img01", {"json": {"record": {"id": "other",
                                                                   "annotations": []}}}),
    ("GET", "/datasets/pets/diff", {})])
def test_who_may_not_see_a_dataset_learns_nothing_from_an_incomplete_request(pets, verb,
                                                                             path, kw):
    """The access check comes before 'send the revision' / 'ids differ' / 'base is
    required': a stranger gets the 404 of a dataset they cannot see (the authorization
    matrix found these 400s), the owner the 400."""
    stranger = pets.request(verb, path, user="mallory", **kw)
    assert stranger.status_code == 404 and "that you can see" in stranger.json()["error"]
    assert pets.request(verb, path, **kw).status_code == 400


def test_the_dataset_service_checks_refs_and_revisions_itself(tmp_path):
    """The domain, not only the API's schemas, refuses what its database cannot take."""
    from loophub.datasets.service import DatasetService
    from loophub.errors import InvalidInput, NotFound
    from loophub.identity import Actor
    from loophub.store import BlobStore, Database

    service = DatasetService(Database(f"sqlite:///{tmp_path / 'x.sqlite'}"),
                             BlobStore(str(tmp_path / "blobs")))
    ann = Actor(name="ann")
    service.create_dataset(ann, "d")
    service.put_record(ann, "d", {"id": "r", "annotations": []})
    service.commit(ann, "d", "v1")
    for ref in ("\u00b3", "v\u00b9", "9" * 20, "v" + "9" * 20, str(2**31)):
        with pytest.raises(NotFound):
            service.diff(ann, "d", ref)
    assert service.diff(ann, "d", "v1")["base_number"] == 1
    for revision in (10**20, -1, True):
        with pytest.raises(InvalidInput):
            service.delete_record(ann, "d", "r", revision)
        with pytest.raises(InvalidInput):
            service.put_record(ann, "d", {"id": "r", "annotations": []}, revision)


def test_an_import_of_a_digest_not_stored_is_refused_before_the_job(pets):
    """An admin may name any digest, and one that was never stored was accepted (202) and
    failed its job with an internal error (FileNotFoundError): now a 404 up front."""
    resp = pets.request("POST", "/datasets/pets/imports", user="root",
                        json={"format": "loophub", "upload": "0" * 64})
    assert resp.status_code == 404 and "no blob" in resp.json()["error"]


@pytest.mark.postgres
def test_integers_past_the_32_bit_columns_on_postgresql(pg_schema_url, tmp_path, monkeypatch):
    """PostgreSQL casts a bound parameter to its column's type: a revision, an audit id or a
    training log id past 2^31 was 'integer out of range' (DataError, 500) where the
    schemas allowed up to 2^53. The schemas now match the columns."""
    monkeypatch.setenv("LOOPHUB_DB_URL", pg_schema_url)
    for api in serve(tmp_path / "home"):
        seed(api)
        big = str(2**31)
        for verb, path, kw in [
                ("DELETE", "/datasets/pets/records/img01", {"params": {"revision": big}}),
                ("DELETE", "/datasets/pets/records/img01", {"headers": {"If-Match": big}}),
                ("PUT", "/datasets/pets/records/img01", {"json": {
                    "record": {"id": "img01", "annotations": []}, "revision": 2**31}}),
                ("GET", "/audit", {"params": {"before": big}, "user": "root"}),
                ("GET", f"/training/jobs/{'0' * 32}/logs", {"params": {"after": big}}),
                ("GET", f"/training/jobs/{'0' * 32}/metrics", {"params": {"after": big}})]:
            resp = api.request(verb, path, **kw)
            assert resp.status_code == 400, (verb, path, kw, resp.status_code, resp.text)
        stale = api.request("DELETE", "/datasets/pets/records/img01",
                            params={"revision": 2**31 - 1})
        assert stale.status_code == 409, stale.text


def test_manifest_text_round_trips_any_string():
    """unescape(escape(s)) == s for every string a record id or packed labels may be:
    a strict JSON parse refused control characters in non-ASCII text with a backslash
    (packed labels always hold \\x1f), so such a committed version could not be read."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from loophub.datasets.manifest import escape, unescape

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
    def round_trip(text):
        assert unescape(escape(text)) == text

    round_trip()
    for text in ("\u00e9\\\x01", "\x1f\u00e9\\\x1f", '\\"\u00e9', "\\u00e9\u00e9", "a\\\tb"):
        assert unescape(escape(text)) == text


def test_a_version_with_backslashes_and_control_characters_in_ids_and_labels(api):
    """Found by schemathesis on PostgreSQL: an export job failed reading its own manifest."""
    name = "odd-names"
    assert api.request("POST", "/datasets", json={"name": name, "label_schema": {
        "task": "mixed", "classes": [{"id": 0, "name": "\u00e9\\"}]}}).status_code == 201
    for record in ({"id": "\u00e9\\\x01", "annotations": []},
                   {"id": "r2", "annotations": [{"type": "image_class", "label": "\u00e9\\"}]}):
        assert api.request("POST", f"/datasets/{name}/records",
                           json={"record": record}).status_code == 201
    assert api.request("POST", f"/datasets/{name}/commits",
                       json={"message": "v1"}).status_code == 201
    resp = api.request("GET", f"/datasets/{name}/export")
    assert resp.status_code == 200
    assert {json.loads(line)["id"] for line in resp.text.splitlines()} == {"\u00e9\\\x01", "r2"}
    assert api.request("POST", f"/datasets/{name}/checkout",
                       json={"version": 1}).status_code == 200
