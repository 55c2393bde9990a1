"""The job widget in a real JupyterLab, in Chromium: a notebook submits a training job, the
cell shows its monitor, the curves grow while the job runs, and the end is shown."""

from __future__ import annotations

import re
import time

import pytest
import requests

from loophub.client import Client
from tests.browser import chromium_page, screenshot
from tests.hubtest import spawn_server
from tests.labeling.test_browser_labeling import NOTEBOOK, open_lab, put_notebook, run_all_cells
from tests.training.conftest import digits_folder

pytestmark = [pytest.mark.hub, pytest.mark.browser, pytest.mark.training]

CELLS = [
    "from loophub.client import Client\n"
    "job = Client().training.run('image-cnn', dataset='tdigits@v1', per_worker={'cpu': 1,"
    " 'mem': '2G'}, params={'epochs': 40, 'image_size': 16, 'batch_size': 16})\n"
    "job",
]


def points(page) -> int:
    """Points drawn in the monitor's plotly curves so far."""
    return page.evaluate(
        f"""() => {{
            const plot = document.querySelector('{NOTEBOOK} .lh-job .js-plotly-plot');
            if (!plot || !plot.data) return 0;
            return plot.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
        }}""")


@pytest.mark.timeout(900)  # a spawn, JupyterLab and a 40-epoch job
def test_the_job_widget_draws_live_curves_in_jupyterlab(hub, admin_token, tmp_path):
    resp = requests.post(f"{hub.api}/accounts", json={"name": "tina"}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    assert resp.status_code == 201, resp.text
    password, token = resp.json()["password"], hub.token("tina")
    client = Client(hub.api, token)
    schema = digits_folder(tmp_path / "digits", count=400)
    client.datasets.create("tdigits", label_schema=schema)
    client.datasets.import_("tdigits", tmp_path / "digits", "loophub", progress=False)
    client.datasets.commit("tdigits", "400 digits")
    spawn_server(hub, admin_token, "tina")
    put_notebook(hub, "tina", token, "train.ipynb", CELLS)
    try:
        with chromium_page(viewport=(1400, 900)) as page:
            open_lab(page, hub, "tina", password)
            run_all_cells(page, hub, "tina", "train.ipynb")
            try:
                page.wait_for_selector(f"{NOTEBOOK} .lh-job", timeout=60_000)
            except Exception:
                screenshot(page, "training/job-no-widget.png")
                raise AssertionError("no job widget; the cell shows: " + page.inner_text(
                    f"{NOTEBOOK} .jp-Cell .jp-OutputArea")) from None
            page.wait_for_function(
                f"document.querySelector('{NOTEBOOK} .lh-job').innerText.includes('running')",
                timeout=120_000)
            deadline = time.monotonic() + 120
            while points(page) < 4:  # the curves fill as the job reports
                assert time.monotonic() < deadline, "no curve drawn"
                page.wait_for_timeout(500)
            early = points(page)
            screenshot(page, "training/job-running.png")
            page.wait_for_function(
                f"document.querySelector('{NOTEBOOK} .lh-job').innerText.includes('succeeded')",
                timeout=600_000)
            later = points(page)
            assert later > early > 0, (early, later)
            text = page.inner_text(f"{NOTEBOOK} .lh-job")
            assert "succeeded" in text and re.search(r"test_accuracy [01]\.\d{4}", text), text
            # Stop: nothing to stop (each widget update is its own message: wait for it)
            page.wait_for_selector(f"{NOTEBOOK} .lh-job button:disabled", timeout=10_000)
            screenshot(page, "training/job-done.png")
    finally:
        hub.hub_api(admin_token, "DELETE", "users/tina/server")
