"""The feedback loop through the API (in process, a real model-server replica): answers
carry a request id, callers flag them, the owner collects production inputs into a
dataset's draft, labelers lease them with the "from production" filter."""

from __future__ import annotations

import base64
import hashlib
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from loophub import errors
from loophub.serving import monitoring
from loophub.serving.collect import PREFIX
from tests.serving.test_releases import digit_nets, register, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.serving
SCHEMA = {"task": "image_classification", "classes": [{"id": i, "name": str(i)}
                                                       for i in range(10)]}


def b64_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def logged(api, release: str, count: int, timeout: float = 30) -> None:
    """Until COUNT requests are in the release's request logs (flushed once a second)."""
    deadline = time.monotonic() + timeout
    while len(monitoring.read_log(api.ctx.monitor.log_files(release), 0, time.time() + 1)
              ) < count:
        assert time.monotonic() < deadline, "the request log did not fill"
        time.sleep(0.3)


def test_production_inputs_go_back_to_labeling(api, digit_nets):  # noqa: F811
    images, net = digit_nets
    ann, ben = api.client("ann"), api.client("ben")
    register(ann, "digits", net)
    ann.datasets.create("prod", label_schema=SCHEMA)
    ann.request("POST", "releases", json={
        "name": "digits", "model": "digits@latest", "per_replica": {"cpu": 0.5, "mem": "1G"}})
    [replica] = wait_for(ann, "digits", lambda v: v["status"] == "serving")["replica_list"]
    # 12 digits as they are, 12 inverted (the model is unsure of those), 4 repeats
    shown = [images[n] for n in range(12)] + [255 - images[n] for n in range(12)]
    shown += shown[:4]
    answers = []
    for pixels in shown:
        resp = requests.post(f"{replica['url']}/predict", json={"instances": [
            {"image": b64_png(pixels)}]}, timeout=30)
        assert resp.status_code == 200, resp.text
        answers.append(resp.json())
    ids = [a["request_id"] for a in answers]
    assert len(set(ids)) == len(ids)
    logged(api, "digits", len(shown))

    # anyone who may call the release may flag an answer, with one of its labels
    flag = ben.request("POST", "releases/digits/feedback", json={
        "request_id": ids[13], "label": "8", "note": "inverted eight"})
    assert flag["by"] == "ben" and flag["label"] == "8"
    with pytest.raises(errors.InvalidInput, match="label: 'eleven' is not one of"):
        ben.request("POST", "releases/digits/feedback", json={
            "request_id": ids[0], "label": "eleven"})
    with pytest.raises(errors.PermissionDenied):  # who flagged what: the owner's to see
        ben.request("GET", "releases/digits/feedback")
    with pytest.raises(errors.PermissionDenied):  # the logs hold every caller's inputs
        ben.loop.collect("digits", into="prod", rule="random")

    flagged = ann.loop.collect("digits", into="prod", rule="flagged")
    assert flagged["collected"] == 1, flagged
    [record] = [r["record"] for r in ann.datasets.records("prod")]
    meta = record["metadata"]
    assert meta["source"] == "production" and meta["request_id"] == ids[13]
    assert meta["feedback"]["label"] == "8" and meta["release"] == "digits"
    assert meta["version"] == "digits@v1" and meta["request_time"].endswith("+00:00")
    [suggestion] = record["annotations"]
    assert suggestion["source"] == {"kind": "model", "name": "digits", "version": "v1"}
    assert suggestion["label"] == answers[13]["predictions"][0]["label"]
    assert record["media"]["width"] == 16 and record["media"]["type"] == "image/png"

    unsure = ann.loop.collect("digits", into="prod", rule="low_confidence", threshold=0.9)
    scores = sorted(max(a["predictions"][0]["scores"]) for a in answers[:24])
    expected = sum(s < 0.9 for s in scores)  # distinct inputs answered under 0.9
    assert unsure["collected"] + unsure["already_in_dataset"] == expected > 0, unsure
    again = ann.loop.collect("digits", into="prod", rule="low_confidence", threshold=0.9)
    assert again["collected"] == 0 and again["already_in_dataset"] == expected  # by content

    sample = ann.loop.collect("digits", into="prod", rule="random", limit=3, seed=7)
    assert sample["collected"] <= 3 and sample["matched"] == 24  # 24 distinct inputs
    # an image the log names but the blob store lost is counted and skipped, not a 500
    held = {r["record"]["id"] for r in ann.datasets.records("prod")}
    digests = {hashlib.sha256(base64.b64decode(b64_png(p))).hexdigest() for p in shown}
    lost = sorted(d for d in digests if PREFIX + d[:24] not in held)[0]
    assert api.ctx.blobs.delete(lost)
    remaining = 24 - len(held) - 1  # stored and not yet collected
    assert remaining > 3
    rest = ann.loop.collect("digits", into="prod", rule="random", limit=remaining - 2)
    assert rest["not_kept_by_the_log"] == 1 and rest["matched"] == 24, rest
    assert rest["collected"] == remaining - 2 and PREFIX + lost[:24] not in rest["records"]
    ann.request("POST", "datasets/prod/records", json={"record": {
        "id": "imported-1", "annotations": []}})  # not from production

    total = flagged["collected"] + unsure["collected"] + sample["collected"]
    total += rest["collected"]
    production = list(ann.datasets.records("prod", origin="production"))
    assert len(production) == total and all(
        r["record"]["id"].startswith("production-") for r in production)
    leased = ann.labeling.lease("prod", 50, origin="production")
    assert {i["record"]["id"] for i in leased} == {r["record"]["id"] for r in production}
    ann.labeling.release("prod")
    everything = {i["record"]["id"] for i in ann.labeling.lease("prod", 50)}
    assert "imported-1" in everything
    with pytest.raises(errors.InvalidInput):
        ann.labeling.lease("prod", 5, origin="somewhere")

    # the platform collects on a schedule, as its creator; each outcome is kept on it
    with pytest.raises(errors.InvalidInput, match="every_s"):
        ann.loop.schedule("digits", into="prod", rule="random", every_s=5)
    with pytest.raises(errors.PermissionDenied):
        ben.loop.schedule("digits", into="prod", rule="random", every_s=3600)
    schedule = ann.loop.schedule("digits", into="prod", rule="random", every_s=3600,
                                 limit=2, seed=3)
    assert api.ctx.loop.run_due() == []  # not due for an hour
    later = time.time() + 3601
    [ran] = api.ctx.loop.run_due(now=later)
    assert ran["schedule"] == schedule["id"] and ran["collected"] == 2, ran
    [view] = ann.loop.schedules("digits")
    assert view["last_result"]["records"] == ran["records"] and view["last_run"]
    assert api.ctx.loop.run_due(now=later + 60) == []  # the next run is an hour on
    ann.datasets.set_state("prod", "archived")  # the next run cannot write: it says so
    [failed] = api.ctx.loop.run_due(now=later + 3601)
    assert "archived" in failed["error"], failed
    assert ann.loop.schedules("digits")[0]["last_result"] == {"error": failed["error"]}
    ann.loop.unschedule("digits", schedule["id"])
    assert ann.loop.schedules("digits") == []
    with pytest.raises(errors.NotFound):
        ann.loop.unschedule("digits", schedule["id"])
