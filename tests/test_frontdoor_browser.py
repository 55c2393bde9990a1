"""A newcomer's path through the front door, in Chromium on the real hub (#19.1, #19.2,
#19.8): sign in, the hub home page's loophub panel, the landing page (their datasets, not
another user's private one), the tour opened from their home folder and run, then the
admin's landing page and fairness page (the running server, the queue, the charts).

Each page's screenshot is saved under test-artifacts/frontdoor/. With
LOOPHUB_DOCS_SCREENSHOTS=1 the landing page after the tour also replaces
docs/frontdoor.png (the README's picture)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from loophub.client import Client
from tests.browser import chromium_page, hub_login, screenshot
from tests.labeling.test_browser_labeling import NOTEBOOK, run_all_cells
from tests.test_frontdoor import text_dataset

pytestmark = [pytest.mark.hub, pytest.mark.browser]
REPO = Path(__file__).resolve().parent.parent
TOUR = "labeling_tour.ipynb"
VIEWPORT = (1280, 1300)  # tall enough that a screenshot shows the whole page


@pytest.fixture(scope="module")
def newcomer(hub, admin_token, tmp_path_factory) -> dict:
    """nina (new, one dataset of her own) and oskar (a private dataset nina must not see)."""
    people = {}
    for name in ("nina", "oskar"):
        resp = requests.post(f"{hub.api}/accounts", json={"name": name}, timeout=30,
                             headers={"Authorization": f"token {admin_token}"})
        assert resp.status_code == 201, resp.text
        people[name] = {"password": resp.json()["password"],
                        "client": Client(hub.api, hub.token(name))}
    folder = tmp_path_factory.mktemp("frontdoor")
    text_dataset(people["nina"]["client"], "nina-reviews", folder)
    text_dataset(people["oskar"]["client"], "oskar-private", folder)
    yield people
    hub.hub_api(admin_token, "DELETE", "users/nina/server")


def shows_content(page, selector: str) -> str:
    """The page's text, after asserting it is a real page (no empty page passes)."""
    page.wait_for_selector(selector, timeout=60_000)
    text = page.inner_text("body")
    assert len(text) > 200 and "Could not load" not in text, text[:500]
    return text


@pytest.mark.timeout(900)  # a spawn and the whole tour on two shared cores
def test_newcomer_signs_in_and_reaches_the_tour_from_the_front_door(hub, newcomer):
    with chromium_page(viewport=VIEWPORT) as page:
        page.goto(f"{hub.url}/hub/login")
        page.wait_for_selector("#login_submit")
        screenshot(page, "frontdoor/sign-in.png")
        hub_login(page, hub.url, "nina", newcomer["nina"]["password"])
        page.goto(f"{hub.url}/hub/home")
        shows_content(page, "#loophub-panel")
        assert not page.is_visible("#loophub-fairness")               # not an admin
        screenshot(page, "frontdoor/hub-home.png")

        page.click("#loophub-open")                                    # through HubOAuth
        text = shows_content(page, "tr[data-dataset='nina-reviews']")
        assert "oskar-private" not in text and "0 / 3 done" in text
        screenshot(page, "frontdoor/landing.png")

        page.click("#open-tutorial")                                   # starts her server
        start_server_if_asked(page)
        page.wait_for_url(f"**/user/nina/lab/tree/{TOUR}**", timeout=180_000)
        page.wait_for_selector(f".jp-DirListing-item[title*='{TOUR}']", timeout=60_000)
        run_tour(page, hub)
        errors = page.locator(f"{NOTEBOOK} [data-mime-type='application/vnd.jupyter.stderr']")
        assert "Traceback" not in " ".join(errors.all_inner_texts())
        screenshot(page, "frontdoor/tour.png")

        page.goto(f"{hub.url}/services/loophub/")                      # what the tour made
        text = shows_content(page, "tr[data-dataset^='digits-']")
        digits = page.inner_text("tr[data-dataset^='digits-']")
        assert "(latest v2)" in digits and "6 / 40 done · 6 by you" in digits  # the tour's
        landing = screenshot(page, "frontdoor/landing-after-tour.png")
        if os.environ.get("LOOPHUB_DOCS_SCREENSHOTS") == "1":  # 256 colours: a small PNG
            Image.open(landing).convert("RGB").quantize(256).save(REPO / "docs" / "frontdoor.png")


def run_tour(page, hub) -> None:
    """Run the tour's every cell; on a failure, save what the page showed and say what the
    cells printed."""
    try:
        run_all_cells(page, hub, "nina", TOUR)
        page.wait_for_selector(f"{NOTEBOOK} .lh-labeler", timeout=60_000)
    except Exception:
        screenshot(page, "frontdoor/tour-failed.png")
        outputs = page.locator(f"{NOTEBOOK} .jp-OutputArea").all_inner_texts()
        raise AssertionError(f"the tour did not run; outputs: {outputs}") from None


def start_server_if_asked(page) -> None:
    """The hub's 'not running' page and options form stand between a link and a server."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "/user/nina/lab" not in page.url:
        if page.is_visible("#spawn_form"):
            page.click("#spawn_form button[type=submit]")
            return
        if page.is_visible("a#start"):
            page.click("a#start")
        time.sleep(0.5)


def test_the_admin_sees_the_running_server_and_the_queue(hub, newcomer, admin_token):
    oskar = newcomer["oskar"]["client"]
    cpu = oskar.pool()["total"]["cpu"]  # all of it: waits while nina's server runs
    waiting = oskar.request("POST", "scheduler/requests", json={
        "kind": "job", "job": "frontdoor-wait", "demand": {"cpu": cpu, "mem": 2**20}})
    try:
        with chromium_page(viewport=VIEWPORT) as page:
            hub_login(page, hub.url, "admin", hub.admin_password)
            page.goto(f"{hub.url}/hub/home")
            shows_content(page, "#loophub-fairness")
            page.goto(f"{hub.url}/services/loophub/")
            text = shows_content(page, "#pool")
            assert "oskar-private" in text and "nina-reviews" in text   # admins read all
            assert "oskar" in page.inner_text("#waiting")
            screenshot(page, "frontdoor/landing-admin.png")

            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            with page.expect_navigation():
                page.click("#nav-fairness")
            try:
                page.wait_for_function(
                    "document.querySelector('#queue tbody').innerText.includes('oskar')",
                    timeout=60_000)
            except Exception:
                screenshot(page, "frontdoor/fairness-failed.png")
                raise AssertionError(f"no queue: {page.inner_text('#error')!r}, script "
                                     f"errors {problems}, {oskar.request('GET', 'scheduler/queue')}"
                                     ) from None
            assert not page.is_visible("#error")
            queue = page.inner_text("#queue tbody")
            assert "nina" in queue and "server" in queue and "running" in queue
            assert "queued" in queue
            for chart in ("utilisation-chart", "shares-chart", "queue-chart"):
                page.wait_for_selector(f"#{chart} .main-svg", timeout=30_000)
            assert page.locator("#shares-chart .bars .point").count() >= 2
            assert page.locator("#utilisation-chart .scatterlayer .trace").count() >= 2
            assert "oskar" in page.inner_text("#queue-chart")
            shows_content(page, "#shares tbody tr")
            screenshot(page, "frontdoor/fairness.png")
    finally:
        oskar.request("DELETE", f"scheduler/requests/{waiting['id']}")
