"""Persisted jobs: long operations recorded from acceptance to their end, visible over REST
and in the SDK, cancelled, and never silently lost when the API service stops."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from loophub import errors
from loophub.identity import Actor
from loophub.jobs import JobStore, run_in_child
from loophub.store import BlobStore, Database
from tests.labeling.conftest import image_dataset

ANN, BEN, ROOT = Actor("ann"), Actor("ben"), Actor("root", admin=True)


@pytest.fixture
def store(db_url, tmp_path) -> JobStore:
    return JobStore(Database(db_url), BlobStore(str(tmp_path / "blobs")))


def test_a_job_records_its_progress_result_and_log(store):
    job = store.create(ANN, "import", target="dataset:pets", params={"format": "coco"})
    assert job["state"] == "queued" and job["owner"] == "ann"

    def work(ctx):
        for i in range(1, 4):
            ctx.progress(i, 3, f"step {i}")
            ctx.log(f"did step {i}")
        return {"records": 3}

    done = store.run(job["id"], work)
    assert (done["state"], done["done"], done["total"], done["result"]) == (
        "succeeded", 3, 3, {"records": 3})
    assert done["created_at"].endswith("+00:00") and done["ended_at"]
    assert store.log_text(ANN, job["id"]) == "did step 1\ndid step 2\ndid step 3\n"


def test_failures_keep_the_message_and_status(store):
    failed = store.run(store.create(ANN, "import")["id"],
                       lambda ctx: (_ for _ in ()).throw(errors.InvalidInput("line 3: bad")))
    assert failed["state"] == "failed" and failed["error"]["error"] == "line 3: bad"
    assert failed["error"]["status"] == 400
    crashed = store.run(store.create(ANN, "import")["id"], lambda ctx: 1 / 0)
    assert crashed["state"] == "failed" and crashed["error"]["status"] == 500
    assert "ZeroDivisionError" in store.log_text(ANN, crashed["id"])


def test_only_the_owner_and_admins_see_a_job(store):
    job = store.create(ANN, "export")
    assert store.get(ROOT, job["id"])["id"] == job["id"]
    with pytest.raises(errors.NotFound):
        store.get(BEN, job["id"])
    assert [j["id"] for j in store.list(BEN)] == []
    assert [j["id"] for j in store.list(ROOT, owner="ann")] == [job["id"]]


def test_cancel_a_queued_job_and_a_running_one(store):
    queued = store.create(ANN, "import")
    assert store.cancel(ANN, queued["id"])["state"] == "cancelled"
    assert store.run(queued["id"], lambda ctx: {"ran": True})["state"] == "cancelled"
    with pytest.raises(errors.Conflict, match="already ended"):
        store.cancel(ANN, queued["id"])

    running = store.create(ANN, "import")
    started = threading.Event()

    def work(ctx):
        started.set()
        for i in range(10_000):
            ctx.progress(i, 10_000)
            time.sleep(0.001)
        return {"finished": True}

    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(store.run(running["id"], work)))
    thread.start()
    started.wait(10)
    live = store.get(ANN, running["id"])
    assert live["state"] == "running"
    store.cancel(ANN, running["id"])
    thread.join(10)
    assert outcome["state"] == "cancelled" and outcome["result"] is None


def test_a_stopping_service_interrupts_its_jobs_and_a_restart_reports_them(store, db_url,
                                                                            tmp_path):
    running = store.create(ANN, "import")
    started = threading.Event()

    def slow(ctx):
        started.set()
        while True:
            ctx.progress(1, 2)
            time.sleep(0.01)

    thread = threading.Thread(target=store.run, args=(running["id"], slow))
    thread.start()
    started.wait(10)
    store.stop_all("the service stopped")
    thread.join(10)
    assert store.get(ANN, running["id"])["state"] == "interrupted"
    # a job whose process died outright is found by the next process
    orphan = store.create(ANN, "commit")
    restarted = JobStore(Database(db_url), BlobStore(str(tmp_path / "blobs")))
    assert restarted.interrupt_active("the service stopped") == [orphan["id"]]
    view = restarted.get(ANN, orphan["id"])
    assert view["state"] == "interrupted" and view["message"] == "the service stopped"


def test_imports_exports_and_commits_run_as_jobs_over_rest(api, tmp_path):
    """An import, an export and a commit each leave a job the SDK follows and lists."""
    client = api.client("ann")
    image_dataset(client, "pets", tmp_path / "pets", count=4)
    jobs = client.jobs.list()
    assert [(j["kind"], j["state"], j["target"]) for j in jobs] == [
        ("import", "succeeded", "dataset:pets")]
    assert jobs[0]["result"]["records"] == 4 and jobs[0]["done"] == 4
    version = client.datasets.commit("pets", "first", progress=True)
    assert version["number"] == 1
    dest = client.datasets.export("pets", tmp_path / "pets.jsonl", version="v1", progress=True)
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["img00", "img01", "img02", "img03"]
    kinds = [j["kind"] for j in client.jobs.list()]
    assert kinds == ["export", "commit", "import"]
    export = client.jobs.list(kind="export")[0]
    assert export["result"]["filename"] == "pets-v1-loophub.jsonl"
    # another user sees none of them, and cannot fetch the export's file
    other = api.client("ben")
    assert other.jobs.list() == []
    with pytest.raises(errors.NotFound):
        other.jobs.download(export["id"], tmp_path / "stolen.jsonl")


def test_a_failed_import_job_says_why_and_names_the_users_file(api, tmp_path):
    client = api.client("ann")
    client.datasets.create("broken")
    bad = tmp_path / "my-records.jsonl"
    bad.write_text('{"id": "a", "annotations": []}\n{not json\n')
    with pytest.raises(errors.InvalidInput) as caught:
        client.datasets.import_("broken", bad, "loophub", progress=False)
    assert "my-records.jsonl" in caught.value.message and "/tmp/loophub-import" not in \
        caught.value.message
    [job] = client.jobs.list()
    assert job["state"] == "failed" and job["error"]["status"] == 400
    assert client.datasets.get("broken")["draft_records"] == 0


def test_work_in_a_child_process_reports_progress_result_and_errors(store):
    """CPU-heavy work (exports) runs in a child process, at a lower priority than the API;
    the job sees its progress, log, result and errors as if it ran in the thread."""
    job = store.create(ANN, "export")
    done = store.run(job["id"], lambda ctx: run_in_child(ctx, "tests.jobchild", {"do": "count"}))
    assert (done["state"], done["done"], done["total"]) == ("succeeded", 3, 3)
    assert done["result"]["pid"] != os.getpid() and done["result"]["nice"] >= 5
    assert store.log_text(ANN, job["id"]) == "counted to 3\n"
    missing = store.run(store.create(ANN, "export")["id"],
                        lambda ctx: run_in_child(ctx, "tests.jobchild", {"do": "missing"}))
    assert missing["state"] == "failed" and missing["error"]["status"] == 404
    assert missing["error"]["error"] == "version v9 of pets does not exist"
    crashed = store.run(store.create(ANN, "export")["id"],
                        lambda ctx: run_in_child(ctx, "tests.jobchild", {"do": "crash"}))
    assert crashed["state"] == "failed" and "exit code 1" in crashed["message"]
    assert "the child fell over" in store.log_text(ANN, crashed["id"])


def test_cancelling_a_job_kills_its_child_process(store, tmp_path):
    job = store.create(ANN, "export")
    pidfile = tmp_path / "child.pid"
    spec = {"do": "sleep", "pidfile": str(pidfile)}
    thread = threading.Thread(target=store.run, args=(
        job["id"], lambda ctx: run_in_child(ctx, "tests.jobchild", spec)))
    thread.start()
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    store.cancel(ANN, job["id"])
    thread.join(10)
    assert store.get(ANN, job["id"])["state"] == "cancelled"
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)
