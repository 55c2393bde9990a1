"""A release's app through the real platform: JupyterHub, its proxy and OAuth, the apps
service (Voila with preheated kernels), the gateway and a replica. An end user with no
notebook server signs in, opens the app on a phone-sized screen, uploads a digit, gets
its class and flags an answer; a user the release is not shared with is refused; the
owner sees the traffic and the drift on the dashboard; crafted kernel messages change
nothing; past the kernel caps (the service's, a visitor's) the next page says so at once;
a text classifier's app answers a typed text in the browser.

The platform here is its own (a cap of 3 kernels in use, a pool of 1), so the cap's
test does not depend on what other tests left open."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import requests
from PIL import Image

from loophub.client import Client
from tests.serving.test_releases import register, wait_for
from tests.serving.test_server import digits_images, train_digits_mlp
from tests.training.conftest import digits_folder

pytestmark = [pytest.mark.hub, pytest.mark.serving]
APPS_CONFIG = """
c.AppsServer.max_kernels = 3
c.AppsServer.max_kernels_per_user = 2
c.AppsServer.pool_sizes = {"image_classification.ipynb": 1}
c.AppsServer.retry_after = 7
"""
SMALL = {"cpu": 0.25, "mem": "768M"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    from tests.hubtest import start_hub

    home = tmp_path_factory.mktemp("apps") / "home"
    home.mkdir()
    (home / "loophub_apps_config.py").write_text(APPS_CONFIG)
    hub = start_hub(home)
    tag = uuid.uuid4().hex[:6]
    names = {who: f"ap-{who}-{tag}" for who in ("owner", "member", "other")}
    tokens = {who: hub.token(name) for who, name in names.items()}
    admin = tokens["admin"] = hub.token("root", admin=True)
    group = f"ap-team-{tag}"
    resp = hub.hub_api(admin, "POST", f"groups/{group}",
                       json={"users": [names["owner"], names["member"]]})
    assert resp.status_code == 201, resp.text
    images, targets = digits_images()
    owner = Client(hub.api, tokens["owner"])
    model, dataset = f"ap-digits-{tag}", f"ap-data-{tag}"
    # learnt from a dataset version, so the dashboard has a reference to see drift against
    folder = tmp_path_factory.mktemp("digits")
    owner.datasets.create(dataset, label_schema=digits_folder(folder, count=300))
    owner.datasets.import_(dataset, folder, "loophub", progress=False)
    owner.datasets.commit(dataset, "300 digits")
    register(owner, model, train_digits_mlp(images, targets), dataset=f"{dataset}@v1")
    release = f"ap-shop-{tag}"
    owner.request("POST", "releases", json={"name": release, "model": f"{model}@latest",
                                            "per_replica": SMALL, "access": f"group:{group}"})
    view = wait_for(owner, release, lambda v: v["status"] == "serving")
    try:
        yield {"hub": hub, "names": names, "tokens": tokens, "owner": owner,
               "release": release, "view": view, "images": images, "targets": targets}
    finally:
        hub.stop()


def password(hub, user: str) -> str:
    out = subprocess.run([sys.executable, "-m", "loophub.cli", "user", "reset", user,
                          "--home", str(hub.home)], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip().split()[-1]


def digit_png(pixels: np.ndarray, side: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((side, side), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def visit(platform, who: str, path: str = "") -> requests.Response:
    """The app's page as WHO (a token instead of the login cookie, as a script would)."""
    hub = platform["hub"]
    return requests.get(f"{hub.url}/services/apps/{path or platform['release']}",
                        headers={"Authorization": f"token {platform['tokens'][who]}"},
                        timeout=120)


def predict_in_the_app(page, upload) -> str:
    """Upload the file UPLOAD in the app open in PAGE (through its button's own file
    dialog), press Predict: the result's text (the top class first)."""
    with page.expect_file_chooser() as chooser:
        page.click(".lh-app-upload")
    chooser.value.set_files(str(upload))
    page.wait_for_function("document.querySelector('.lh-app-source').innerText"
                           f".includes({upload.name!r})", timeout=20_000)
    page.click(".lh-app-predict")
    page.wait_for_function("document.querySelector('.lh-app-result').innerText.trim()"
                           " !== ''", timeout=30_000)
    wait_for_latency(page)
    return page.inner_text(".lh-app-result")


def wait_for_latency(page) -> None:
    """The answer's latency line: a widget message of its own, which may be drawn just
    after the result's."""
    page.wait_for_function("document.querySelector('.lh-app-latency').innerText"
                           ".includes(' ms')", timeout=10_000)


def kernel_of(page_html: str) -> str:
    match = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page_html)
    assert match, "the app's page names no kernel"
    return match.group(1)


def test_the_release_view_and_the_sdk_link_the_app(platform):
    view = platform["view"]
    assert view["app"] == f"{platform['hub'].url}/services/apps/{platform['release']}"
    release = platform["owner"].serving.get(platform["release"])
    assert release.app_url == view["app"] and "app" in release._repr_html_()


def test_who_may_open_the_app(platform):
    member = visit(platform, "member")
    assert member.status_code == 200, member.text[-2000:]
    assert "application/vnd.jupyter.widget-view+json" in member.text
    assert "Traceback" not in member.text
    admin = visit(platform, "admin")  # admins open every release's app
    assert admin.status_code == 200 and "kernelId" in admin.text
    shutdown_kernels(platform, "admin", kernel_of(admin.text))
    other = visit(platform, "other")  # the release is not shared with them
    assert other.status_code == 404 and "No such app" in other.text
    assert "kernelId" not in other.text
    assert visit(platform, "member", "no-such-release").status_code == 404
    anonymous = requests.get(f"{platform['hub'].url}/services/apps/{platform['release']}",
                             allow_redirects=False, timeout=30)
    assert anonymous.status_code == 302 and "/hub/api/oauth2/authorize" in \
        anonymous.headers["Location"]
    index = requests.get(f"{platform['hub'].url}/services/apps/", allow_redirects=False,
                         timeout=30)  # the hub's Services menu: the releases page lists apps
    assert index.status_code == 302
    assert index.headers["Location"].endswith("/services/loophub/releases")
    # none of a Jupyter server's other routes is mounted
    for path in ("voila/render/image_classification.ipynb", "voila/tree",
                 "voila/api/contents", "api/kernels", "voila/files/image_classification.ipynb"):
        assert visit(platform, "member", path).status_code == 404, path
    # the channel that hands a kernel its visitor's token is not reachable from outside
    query = visit(platform, "member", f"voila/query/{kernel_of(member.text)}")
    assert query.status_code == 403
    shutdown_kernels(platform, "member", kernel_of(member.text))


def shutdown_kernels(platform, who: str, *kernel_ids: str) -> None:
    """What a page does when it is left: its kernel goes (as its own visitor)."""
    hub = platform["hub"]
    headers = {"Authorization": f"token {platform['tokens'][who]}"}
    for kernel_id in kernel_ids:
        resp = requests.delete(f"{hub.url}/services/apps/api/kernels/{kernel_id}",
                               headers=headers, timeout=30)
        assert resp.status_code == 204, resp.text


def test_a_kernel_is_its_visitors_own(platform):
    page = visit(platform, "member")
    kernel = kernel_of(page.text)
    hub = platform["hub"]
    owner = {"Authorization": f"token {platform['tokens']['owner']}"}
    # the owner may open the app too, but not the member's kernel
    resp = requests.get(f"{hub.url}/services/apps/api/kernels/{kernel}", headers=owner,
                        timeout=30)
    assert resp.status_code == 403
    resp = requests.delete(f"{hub.url}/services/apps/api/kernels/{kernel}", headers=owner,
                           timeout=30)
    assert resp.status_code == 403
    shutdown_kernels(platform, "member", kernel)


def test_crafted_messages_change_nothing(platform, tmp_path):
    """Straight to the kernel's channels: an execute request is dropped (Voila's rule),
    and widget updates with out-of-range values are refused by the widgets' own checks;
    the app still answers afterwards."""
    page = visit(platform, "member")
    kernel = kernel_of(page.text)
    marker = tmp_path / "executed"
    replies = asyncio.run(_craft(platform, kernel, marker))
    assert not marker.exists(), "an execute request ran"
    assert replies["kernel_info_reply"] >= 1, replies  # the kernel still answers
    assert replies.get("execute_reply", 0) == 0, replies
    shutdown_kernels(platform, "member", kernel)


async def _craft(platform, kernel: str, marker) -> dict:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    hub = platform["hub"]
    url = hub.url.replace("http", "ws") + f"/services/apps/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={
        "Authorization": f"token {platform['tokens']['member']}"}))

    def message(msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        return json.dumps({"header": {"msg_id": msg_id, "msg_type": msg_type,
                                      "username": "x", "session": "s", "version": "5.3",
                                      "date": ""},
                           "parent_header": {}, "metadata": {}, "content": content,
                           "channel": "shell", "buffers": []})

    await ws.write_message(message("execute_request", {
        "code": f"open({str(marker)!r}, 'w').write('ran')", "silent": False,
        "store_history": False, "user_expressions": {}, "allow_stdin": False}))
    await ws.write_message(message("comm_info_request", {}))
    seen: dict[str, int] = {}
    comms: dict = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not comms:
        raw = await asyncio.wait_for(ws.read_message(), 20)
        msg = json.loads(raw) if isinstance(raw, str) else {}
        seen[msg.get("msg_type", "")] = seen.get(msg.get("msg_type", ""), 0) + 1
        if msg.get("msg_type") == "comm_info_reply":
            comms = msg["content"]["comms"]
    assert comms, "no comm_info_reply"
    for comm_id in comms:
        await ws.write_message(message("comm_msg", {"comm_id": comm_id, "data": {
            "method": "update", "buffer_paths": [],
            "state": {"index": 999, "value": {"not": "a value"}, "disabled": "yes",
                      "options": 5, "layout": "IPY_MODEL_nonexistent"}}}))
    await ws.write_message(message("kernel_info_request", {}))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seen.get("kernel_info_reply"):
        raw = await asyncio.wait_for(ws.read_message(), 20)
        msg = json.loads(raw) if isinstance(raw, str) else {}
        seen[msg.get("msg_type", "")] = seen.get(msg.get("msg_type", ""), 0) + 1
    ws.close()
    return seen


def test_past_the_caps_the_busy_pages_answer_at_once(platform):
    """3 kernels in use at most here, 2 per visitor: a visitor's third page says to close
    one, and the service's fourth visitor waits for nothing."""
    pages = [visit(platform, "member") for _ in range(2)]
    assert all(p.status_code == 200 for p in pages)
    mine = visit(platform, "member")
    assert mine.status_code == 429 and "You have 2 app pages open" in mine.text, mine.text
    assert int(mine.headers["Retry-After"]) == 7
    owners = visit(platform, "owner")  # another visitor still gets in
    assert owners.status_code == 200
    started = time.monotonic()
    busy = visit(platform, "admin")
    took = time.monotonic() - started
    assert busy.status_code == 503 and "Busy" in busy.text, busy.text[-500:]
    assert int(busy.headers["Retry-After"]) >= 7 and 'http-equiv="refresh"' in busy.text
    assert took < 30, took  # answered, not queued behind the kernels starting
    hub = platform["hub"]
    status = requests.get(f"{hub.url}/services/apps/status", timeout=30, headers={
        "Authorization": f"token {platform['tokens']['admin']}"}).json()
    assert status["kernels_in_use"] == 3 and status["max_kernels"] == 3, status
    assert status["held"] == {platform["names"]["member"]: 2,
                              platform["names"]["owner"]: 1}, status
    assert set(status["pools"]) == {"image_classification.ipynb"}, status  # (refilling)
    assert visit(platform, "member", "status").status_code == 403  # for admins
    shutdown_kernels(platform, "member", *(kernel_of(p.text) for p in pages))
    shutdown_kernels(platform, "owner", kernel_of(owners.text))
    again = visit(platform, "member")  # room again
    assert again.status_code == 200
    shutdown_kernels(platform, "member", kernel_of(again.text))


@pytest.mark.browser
def test_an_end_user_predicts_and_flags_and_the_owner_sees_it(platform):
    from tests.browser import ARTIFACTS, chromium_page, hub_login, require_chromium, screenshot

    require_chromium()
    hub, names, release = platform["hub"], platform["names"], platform["release"]
    images, targets = platform["images"], platform["targets"]
    index = int(np.flatnonzero(targets == 7)[0])
    upload = ARTIFACTS / "apps" / "seven.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(digit_png(images[index]))
    owner = platform["owner"]
    flags_before = len(owner.serving.feedback(release))

    with chromium_page(viewport=(390, 844)) as page:  # a phone's screen
        hub_login(page, hub.url, names["member"], password(hub, names["member"]))
        page.goto(platform["view"]["app"])
        try:
            page.wait_for_selector(".lh-app .lh-app-predict", timeout=60_000)
        finally:
            screenshot(page, "apps/app-opened-phone.png")
        assert "lh-admin-note" not in page.inner_text("body")  # the template's own note
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"the app is {overflow}px wider than a phone's screen"
        result = predict_in_the_app(page, upload)
        assert result.split()[0] == "7", result  # the top class first
        assert re.search(r"\d+(\.\d+)? ms", page.inner_text(".lh-app-latency"))
        screenshot(page, "apps/app-answered-phone.png")
        page.select_option(".lh-app-flag-label select", "1")
        page.click(".lh-app-flag")
        page.wait_for_function("document.querySelector('.lh-app-message').innerText"
                               ".toLowerCase().includes('sent')", timeout=20_000)
        screenshot(page, "apps/app-flagged-phone.png")
    flags = owner.serving.feedback(release)
    assert len(flags) == flags_before + 1 and flags[-1]["label"] == "1", flags[-3:]

    with chromium_page() as page:  # the user the release is not shared with
        hub_login(page, hub.url, names["other"], password(hub, names["other"]))
        page.goto(platform["view"]["app"])
        page.wait_for_selector("h1.lh-app-page", timeout=30_000)
        assert "No such app" in page.inner_text("h1")
        screenshot(page, "apps/app-refused.png")

    # production drifts: inverted digits through the gateway, as a client would send them
    headers = {"Authorization": f"token {platform['tokens']['member']}"}
    for start in range(0, 60, 10):
        batch = [{"pixels": (255 - images[i]).tolist()} for i in range(start, start + 10)]
        requests.post(f"{hub.url}/services/models/{release}/predict", json={
            "instances": batch}, headers=headers, timeout=60).raise_for_status()

    with chromium_page(viewport=(1400, 1000)) as page:  # the owner's dashboard
        hub_login(page, hub.url, names["owner"], password(hub, names["owner"]))
        page.goto(platform["view"]["dashboard"])
        try:
            page.wait_for_selector("#traffic-chart .main-svg", timeout=30_000)
            page.wait_for_function("parseInt(document.querySelector('#totals').innerText)"
                                   " >= 7", timeout=30_000)  # the app's answer, 6 batches
            page.wait_for_function("document.querySelector('#drift-flag').innerText"
                                   ".includes('drifted')", timeout=30_000)
        finally:
            screenshot(page, "apps/dashboard-owner.png")
        assert page.locator("#app-link").get_attribute("href").endswith(
            f"/services/apps/{release}")
        assert "1" in page.inner_text("#flags tbody")  # the end user's flag, its label


@pytest.mark.browser
@pytest.mark.training
def test_the_text_app_answers_in_a_browser(platform, tmp_path):
    """The text-classification template, for a release of the text-classifier recipe: the
    owner types a text and gets its topic, with the other topics' scores."""
    import torch

    from tests.browser import chromium_page, hub_login, require_chromium, screenshot
    from tests.models.test_predictor import class_schema, train
    from tests.training.test_recipes import TOPICS, topic_records

    require_chromium()
    trained = train(tmp_path, "text-classifier", topic_records(400),
                    class_schema("text_classification", sorted(TOPICS)),
                    {"epochs": 15, "batch_size": 16, "max_len": 48})  # as test_recipes
    module = torch.jit.load(io.BytesIO(trained.artifact))
    owner, hub, names = platform["owner"], platform["hub"], platform["names"]
    name = platform["release"] + "-text"
    owner.models.register(name, module, example_input=torch.zeros(1, 48, dtype=torch.long),
                          task="text_classification", labels=trained.meta["labels"],
                          preprocess=trained.meta["preprocess"])
    owner.request("POST", "releases", json={"name": name, "model": f"{name}@latest",
                                            "per_replica": SMALL})
    view = wait_for(owner, name, lambda v: v["status"] == "serving")
    try:
        with chromium_page(viewport=(390, 844)) as page:
            hub_login(page, hub.url, names["owner"], password(hub, names["owner"]))
            page.goto(view["app"])
            try:
                page.wait_for_selector(".lh-app-text-classification .lh-app-predict",
                                       timeout=60_000)
            finally:
                screenshot(page, "apps/text-app-opened-phone.png")
            page.fill(".lh-app-text textarea",
                      "The striker scored a late goal and the team won the final.")
            page.click(".lh-app-predict")
            page.wait_for_function("document.querySelector('.lh-app-result').innerText"
                                   ".trim() !== ''", timeout=30_000)
            screenshot(page, "apps/text-app-answered-phone.png")
            result = page.inner_text(".lh-app-result")
            assert result.split()[0] == "sports", result
            assert all(topic in result for topic in sorted(TOPICS)[:2]), result
            wait_for_latency(page)
            assert re.search(r"\d+ ms", page.inner_text(".lh-app-latency"))
    finally:
        owner.serving.stop(name)
