"""The closed-loop tutorial as a person meets it, in Chromium on a real hub: log in on the
hub's page, start a server (the spawner copies the tutorials into the new home), open
notebooks/closed_loop.ipynb in JupyterLab, Run All Cells, save; the saved notebook has
every cell run, no error, and the loop did its job (tests/loop/test_closed_loop_notebook.py
checks it). Then, as the release's owner, its dashboard draws the tutorial's requests;
and an end user with no notebook server opens the release's app on a phone-sized screen,
uploads a digit and gets what the promoted challenger answers over REST.

Screenshots of each stage go to test-artifacts/loop/, the figures to summary.json there.
The suite runs the tutorial once: here, or through nbclient where Chromium is absent."""

from __future__ import annotations

import shutil
import time

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser import ARTIFACTS, chromium_page, hub_login, require_chromium, screenshot
from tests.labeling.test_browser_labeling import NOTEBOOK, save_notebook
from tests.loop.test_closed_loop_notebook import check_the_loop, value
from tests.serving.test_apps_hub import predict_in_the_app

pytestmark = [pytest.mark.hub, pytest.mark.browser, pytest.mark.training, pytest.mark.serving]
USER = "looper"
END_USER = "loop-visitor"  # opens the release's app: no notebook server of their own
TUTORIAL = "closed_loop.ipynb"
OUT = ARTIFACTS / "loop"
RUN_TIMEOUT = 15 * 60  # seconds for Run All Cells (the tutorial takes about 2-5 minutes)

# Each code cell's prompt ("[ ]:" not run, "[*]:" queued or running, "[7]:" done) and
# whether its kernel is idle (the status bar's "Python 3 (ipykernel) | Idle", not the
# "No Kernel | Initializing" of a notebook just opened), read from the notebook in front.
CELL_STATE = f"""() => ({{
    prompts: [...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')]
        .map(p => p.textContent.trim()),
    idle: [...document.querySelectorAll('#jp-main-statusbar span')]
        .some(s => /^(?!No Kernel).*\\|\\s*Idle$/.test(s.textContent.trim())),
}})"""


def log_in_and_spawn(page, hub, password: str) -> None:
    """The hub's login page, its server sizes (the default preselected), JupyterLab."""
    hub_login(page, hub.url, USER, password)
    page.wait_for_selector("#spawn_form", timeout=60_000)
    screenshot(page, "loop/01-logged-in.png")
    page.click("#spawn_form button[type=submit]")
    page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)
    page.wait_for_selector(".jp-LabShell", timeout=120_000)
    # ?reset: a fresh workspace (servers that share a HOME share JupyterLab's workspaces)
    page.goto(f"{hub.url}/user/{USER}/lab?reset")
    page.wait_for_selector(".jp-Launcher", timeout=120_000)
    # JupyterLab's "news" toast would cover the notebook in the screenshots.
    page.add_style_tag(content=".jp-toast-container, .Toastify { display: none !important; }")


def open_the_tutorial(page) -> None:
    """Double-click the tutorial in the file browser, as a person would; its kernel idle."""
    item = page.locator(".jp-DirListing-item", has_text=TUTORIAL)
    item.wait_for(timeout=60_000)
    item.dblclick()
    page.locator(f"{NOTEBOOK} .jp-RenderedMarkdown h1", has_text="The closed loop").wait_for(
        timeout=60_000)
    page.wait_for_function(f"({CELL_STATE})().idle", timeout=120_000)
    screenshot(page, "loop/02-notebook-opened.png")


def run_all_cells(page) -> float:
    """Run > Run All Cells, until every code cell has run (or a cell failed and the run
    stopped there); returns the seconds it took."""
    started = time.monotonic()
    for _ in range(3):
        page.locator(f"{NOTEBOOK} .jp-Cell").first.click()
        page.keyboard.press("Escape")  # command mode
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:
            page.wait_for_function(f"({CELL_STATE})().prompts.some(p => /[0-9*]/.test(p))",
                                   timeout=30_000)
        except PlaywrightTimeout:
            continue
        prompts = wait_until_the_run_ends(page, started)
        if any(any(c.isdigit() for c in p) for p in prompts):
            return time.monotonic() - started
        # a kernel still connecting can drop the requests (none ran): ask again
    raise AssertionError("Run All Cells ran nothing, three times")


def wait_until_the_run_ends(page, started: float) -> list[str]:
    """The code cells' prompts once each has run, or once the run stopped (an error stops
    Run All: the cells after it go back to "[ ]:" and the kernel idles)."""
    stopped = 0
    while time.monotonic() - started < RUN_TIMEOUT:
        state = page.evaluate(CELL_STATE)
        prompts = state["prompts"]
        if state["idle"] and all(any(c.isdigit() for c in p) for p in prompts):
            return prompts
        stopped = stopped + 1 if state["idle"] and not any("*" in p for p in prompts) else 0
        if stopped >= 3:
            return prompts
        page.wait_for_timeout(2_000)
    screenshot(page, "loop/run-timed-out.png")
    raise AssertionError(f"Run All Cells did not end in {RUN_TIMEOUT} s: {prompts}")


def use_the_app_as_an_end_user(hub, admin_token: str, owner_token: str, release: str
                               ) -> None:
    """A new account (no server) opens the app the release view links, on a phone's
    screen: a digit it uploads gets the class the promoted challenger gives over REST."""
    import base64

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    resp = requests.post(f"{hub.api}/accounts", json={"name": END_USER}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    assert resp.status_code == 201, resp.text
    view = requests.get(f"{hub.api}/releases/{release}", timeout=30,
                        headers={"Authorization": f"token {owner_token}"}).json()
    digit = np.kron(load_digits().images[1790], np.ones((2, 2))) * 255 / 16  # never sent
    upload = OUT / "app-digit.png"
    Image.fromarray(digit.astype(np.uint8)).save(upload)
    rest = requests.post(f"{view['url']}predict", timeout=60, json={"instances": [
        {"image": base64.b64encode(upload.read_bytes()).decode()}]},
        headers={"Authorization": f"token {owner_token}"}).json()
    expected = rest["predictions"][0]["label"]
    with chromium_page(viewport=(390, 844)) as page:
        hub_login(page, hub.url, END_USER, resp.json()["password"])
        page.goto(view["app"])
        page.wait_for_selector(".lh-app .lh-app-predict", timeout=60_000)
        assert predict_in_the_app(page, upload).split()[0] == expected
        assert view["version"] in page.inner_text(".lh-app-latency")  # the challenger
        screenshot(page, "loop/06-app-end-user.png")


def see_the_dashboard(page, hub, token: str, release: str, notebook) -> None:
    """The release's dashboard (its URL from the release view), as its owner: the charts
    draw the tutorial's requests, both versions served, the flagged answer listed."""
    view = requests.get(f"{hub.api}/releases/{release}", timeout=30,
                        headers={"Authorization": f"token {token}"}).json()
    page.goto(view["dashboard"])
    page.wait_for_function("/^[0-9]+ requests/.test(document.querySelector('#totals')"
                           ".textContent)", timeout=60_000)
    for chart in ("traffic", "latency", "errors", "classes", "confidence"):
        page.wait_for_selector(f"#{chart}-chart .main-svg", timeout=30_000)
    # 200 production requests (loop-05), the canary's 20 at least (loop-11), 100 after
    totals = page.inner_text("#totals")
    assert int(totals.split(" requests")[0]) >= 320, totals
    # the champion, then the challenger it promoted: a line each
    traces = page.locator("#traffic-chart .scatterlayer .trace").count()
    assert traces >= 2, (traces, totals)
    assert page.locator("#classes-chart .barlayer .trace").count() >= 1
    assert page.locator("#confidence-chart .barlayer .trace").count() == 1
    flagged = page.inner_text("#flags tbody")
    assert "new scanner" in flagged and USER in flagged, flagged  # loop-07's flag
    if value(notebook, "loop-06")["drifted"]:
        assert "drifted" in page.inner_text("#drift-flag")
    assert page.inner_text("#status") == view["status"]
    assert not page.is_visible("#error")
    page.locator("#traffic-chart").scroll_into_view_if_needed()
    screenshot(page, "loop/04-dashboard.png")
    page.locator("#flags").scroll_into_view_if_needed()
    screenshot(page, "loop/05-dashboard-flags.png")


@pytest.mark.timeout(RUN_TIMEOUT + 600)  # the run, and the hub, login, spawn, dashboard
def test_the_closed_loop_tutorial_in_jupyterlab_then_its_dashboard(hub, admin_token):
    import nbformat

    require_chromium()
    resp = requests.post(f"{hub.api}/accounts", json={"name": USER}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    assert resp.status_code == 201, resp.text
    password, token = resp.json()["password"], hub.token(USER)
    saved = hub.home / "users" / USER / TUTORIAL  # where FairSpawner seeds the home
    release = ""
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with chromium_page(viewport=(1400, 900)) as page:
            log_in_and_spawn(page, hub, password)
            assert saved.exists(), f"the spawner did not copy {TUTORIAL} into {saved.parent}"
            open_the_tutorial(page)
            try:
                run_s = run_all_cells(page)
            finally:
                save_notebook(page)
                shutil.copyfile(saved, OUT / "closed_loop.executed.ipynb")  # to look at
            cells = page.locator(f"{NOTEBOOK} .jp-Cell")
            ids = [c["id"] for c in nbformat.read(saved, as_version=4).cells]
            cells.nth(ids.index("loop-10")).scroll_into_view_if_needed()
            screenshot(page, "loop/03-after-run.png")
            cells.last.scroll_into_view_if_needed()
            screenshot(page, "loop/03-after-run-end.png")

            notebook = nbformat.read(saved, as_version=4)
            check_the_loop(notebook, run_s)
            release = value(notebook, "loop-01")  # NAME: the dataset, model and release
            see_the_dashboard(page, hub, token, release, notebook)
        use_the_app_as_an_end_user(hub, admin_token, token, release)
    finally:
        hub.hub_api(admin_token, "DELETE", f"users/{USER}/server")
        if release:  # the tutorial leaves it serving, for its app
            requests.delete(f"{hub.api}/releases/{release}", timeout=60,
                            headers={"Authorization": f"token {token}"})
