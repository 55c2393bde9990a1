"""The model board in a real JupyterLab and in Voila, in Chromium: a notebook trains and
registers one version, registers a second from a module, evaluates both with real jobs
and shows the board; its table, alias history and confusion heatmaps render, and an
uploaded image and a stroke drawn on the pad (mouse down, move, up) each get the version's
prediction with its latency. Screenshots go to test-artifacts/models/."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from loophub.client import Client
from loophub.models.predictor import Predictor
from loophub.widgets.models import describe
from tests.browser import chromium_page, screenshot
from tests.hubtest import spawn_server
from tests.labeling.test_browser_labeling import NOTEBOOK, open_lab, put_notebook, run_all_cells
from tests.training.conftest import digits_folder

pytestmark = [pytest.mark.hub, pytest.mark.browser, pytest.mark.training]

CNN = ("torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), "
       "torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 10), "
       "torch.nn.Softmax(dim=1))")
CELLS = [
    "import torch\nfrom loophub.client import Client\nc = Client()\n"
    "job = c.training.run('image-cnn', dataset='bdigits@v1', per_worker={'cpu': 1, "
    "'mem': '2G'}, params={'epochs': 3, 'image_size': 16, 'batch_size': 32})\n"
    "job.wait(progress=False, timeout=300)\n"
    "v1 = c.models.register('bcnn', job=job)\n"
    f"torch.manual_seed(1)\nnet = {CNN}\n"
    "v2 = c.models.register('bcnn', net, example_input=torch.zeros(1, 1, 16, 16), "
    "task='image_classification', labels=[str(d) for d in range(10)], "
    "dataset='bdigits@v1')",
    "for n in (1, 2):\n"
    "    c.models.evaluate(f'bcnn@v{n}', dataset='bdigits@v1', split='test', "
    "progress=False)\n"
    "c.models.alias('bcnn', 'challenger', 1, reason='trained on v1')\n"
    "c.models.alias('bcnn', 'challenger', 2, reason='try the new one')",
    "from loophub.widgets import ModelBoard\nboard = ModelBoard('bcnn')\nboard",
]
HEATMAPS = """root => {
    const plot = root.querySelector('.lh-confusion .js-plotly-plot');
    return plot && plot.data ? plot.data.map(t => ({type: t.type, z: t.z})) : [];
}"""


@pytest.fixture(scope="module")
def analyst(hub, admin_token, tmp_path_factory):
    """Account 'mona' with a running server and dataset bdigits (v1: 120 digits)."""
    resp = requests.post(f"{hub.api}/accounts", json={"name": "mona"}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    assert resp.status_code == 201, resp.text
    token = hub.token("mona")
    client = Client(hub.api, token)
    folder = tmp_path_factory.mktemp("board") / "digits"
    client.datasets.create("bdigits", label_schema=digits_folder(folder, count=120))
    client.datasets.import_("bdigits", folder, "loophub", progress=False)
    client.datasets.commit("bdigits", "120 digits")
    spawn_server(hub, admin_token, "mona")
    yield {"password": resp.json()["password"], "token": token, "client": client,
           "image": sorted(folder.glob("*.png"))[0]}
    hub.hub_api(admin_token, "DELETE", "users/mona/server")


PREDICTORS: dict[str, Predictor] = {}  # by ref: the upload and the drawing share one


def expected_prediction(client: Client, ref: str, image: Path | bytes) -> dict:
    """The Predictor's own answer on IMAGE (a file or its bytes), computed here."""
    if ref not in PREDICTORS:
        PREDICTORS[ref] = Predictor.load(client.models.artifact(ref),
                                         client.models.get(ref)["meta"])
    data = image if isinstance(image, bytes) else image.read_bytes()
    return PREDICTORS[ref].predict_images([data])[0]


# the drawing the board tried is the one the canvas holds: its thumbnail is the same PNG
# (looked up each time: every answer replaces the result's element)
SHOWS_DRAWING = """([canvas, root]) => {
    const img = root.querySelector('.lh-try-result img');
    return !!img && img.src.endsWith(canvas.toDataURL('image/png').split(',')[1]);
}"""
TOP_SCORE = """root => {
    const plot = root.querySelector('.lh-try-scores .js-plotly-plot');
    return plot && plot.data && plot.data.length ? plot.data[0].x[0] : null;
}"""


def check_answer(page, root, ref: str, expected: dict) -> None:
    """The board shows REF's EXPECTED prediction with its latency, and its scores chart
    (a new plot per answer, drawn after the text: waited for, so screenshots hold it)."""
    text = root.locator(".lh-try-result").inner_text()
    assert f"{ref} says" in text and " ms" in text, text
    assert describe("image_classification", expected) in text, text
    best = max(expected["scores"])
    page.wait_for_function(f"r => Math.abs(({TOP_SCORE})(r) - {best!r}) < 1e-6",
                           arg=root.element_handle(), timeout=30_000)


BLANK = """canvas => {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                                                        canvas.height).data;
    return pixels.every((v, n) => n % 4 === 3 ? v === 255 : v === 0);
}"""


def draw_and_check(page, root, client: Client, ref: str, shots: str) -> None:
    """A stroke with the mouse on the pad (down, move, up) is tried at its end: the board
    shows the Predictor's answer on the canvas's own PNG, with the latency; Clear blanks
    the pad and takes the drawing back from Predict."""
    canvas = root.locator(".lh-try-pad canvas")
    canvas.scroll_into_view_if_needed()
    assert canvas.evaluate(BLANK)  # the upload before cleared it
    box = canvas.bounding_box()
    x, top, bottom = box["x"] + box["width"] * 0.5, box["y"] + 20, box["y"] + box["height"] - 20
    page.mouse.move(x - 15, top + 15)  # a "1": a short lead-in, then straight down
    page.mouse.down()
    page.mouse.move(x, top, steps=3)
    page.mouse.move(x, bottom, steps=8)
    page.mouse.up()
    try:
        page.wait_for_function(SHOWS_DRAWING, arg=[canvas.element_handle(),
                                                   root.element_handle()], timeout=30_000)
    except Exception:
        screenshot(root.locator(".lh-try"), f"models/{shots}-no-drawing.png")
        raise AssertionError("the drawing was not tried; the board says: "
                             + root.locator(".lh-try").inner_text()) from None
    drawn = base64.b64decode(canvas.evaluate("c => c.toDataURL('image/png')").split(",")[1])
    check_answer(page, root, ref, expected_prediction(client, ref, drawn))
    screenshot(root.locator(".lh-try"), f"models/{shots}-draw.png")
    root.locator(".lh-try-pad .lh-drawpad-clear").click()
    assert canvas.evaluate(BLANK)
    root.locator(".lh-try button", has_text="Predict").click()
    page.wait_for_function("r => r.innerText.includes('draw or upload an image')",
                           arg=root.element_handle(), timeout=30_000)


def check_board(page, root, client: Client, model: str, image: Path, shots: str) -> None:
    """The table has a row per version, the heatmaps hold the evaluations' confusion
    matrices, and an uploaded IMAGE gets the latest version's prediction and latency."""
    versions = client.models.versions(model)
    assert root.locator(".lh-model-table tr[data-version]").count() == len(versions)
    table = root.locator(".lh-model-table").inner_text()
    assert "challenger" in table and "bdigits@v1/test" in table and "accuracy" in table
    assert "try the new one" in root.locator(".lh-alias-history").inner_text()
    page.wait_for_function(f"r => ({HEATMAPS})(r).length > 0", arg=root.element_handle(),
                           timeout=60_000)
    drawn = page.evaluate(HEATMAPS, root.element_handle())
    evaluated = [e for e in client.models.evaluations(model) if e["state"] == "succeeded"]
    assert [t["type"] for t in drawn] == ["heatmap"] * len(evaluated)
    assert [t["z"] for t in drawn] == [e["result"]["metrics"]["confusion"]
                                       for e in evaluated]
    # a table wider than the notebook scrolls inside the board instead of spilling out
    wrapper = root.locator(".lh-versions-table .lh-scroll")
    assert wrapper.evaluate("(el, root) => el.getBoundingClientRect().right <= "
                            "root.getBoundingClientRect().right + 1", root.element_handle())
    for css, name in ((".lh-versions-table", "table"), (".lh-alias-history", "aliases"),
                      (".lh-metric-plot", "metric"), (".lh-confusion", "confusion"),
                      (".lh-per-class", "per-class")):
        root.locator(css).scroll_into_view_if_needed()
        screenshot(root.locator(css), f"models/{shots}-{name}.png")
    wrapper.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    screenshot(root.locator(".lh-versions-table"), f"models/{shots}-table-scrolled.png")
    # ipywidgets' upload button clicks an <input type=file> it keeps out of the page
    with page.expect_file_chooser() as chooser:
        root.locator(".lh-try .widget-upload").click()
    chooser.value.set_files(str(image))
    root.locator(".lh-try-result").wait_for(timeout=60_000)
    latest = f"{model}@v{max(v['version'] for v in versions)}"
    check_answer(page, root, latest, expected_prediction(client, latest, image))
    root.locator(".lh-try").scroll_into_view_if_needed()
    screenshot(root.locator(".lh-try"), f"models/{shots}-try.png")
    draw_and_check(page, root, client, latest, shots)


def test_the_model_board_in_jupyterlab(hub, analyst):
    put_notebook(hub, "mona", analyst["token"], "board.ipynb", CELLS)
    with chromium_page(viewport=(1400, 1100)) as page:
        open_lab(page, hub, "mona", analyst["password"])
        run_all_cells(page, hub, "mona", "board.ipynb")
        root = page.locator(f"{NOTEBOOK} .lh-models")
        try:
            root.locator(".lh-model-table").wait_for(timeout=120_000)
        except Exception:
            screenshot(page, "models/lab-no-board.png")
            raise AssertionError("no board; the notebook shows: " + page.inner_text(
                f"{NOTEBOOK} .jp-Notebook")) from None
        assert root.locator(".lh-curves .js-plotly-plot").count() == 1  # v1's job
        check_board(page, root, analyst["client"], "bcnn", analyst["image"], "lab")
        root.locator(".lh-curves").scroll_into_view_if_needed()
        screenshot(root.locator(".lh-curves"), "models/lab-curves.png")


def test_the_model_board_in_voila(hub, analyst, tmp_path):
    """The same board as a Voila app (no JupyterLab front end)."""
    import torch

    from loophub.ports import free_port
    from tests.models.conftest import DIGITS, small_cnn

    client = analyst["client"]
    for _ in range(2):
        client.models.register("vcnn", small_cnn(), example_input=torch.zeros(1, 1, 16, 16),
                               task="image_classification", labels=DIGITS,
                               dataset="bdigits@v1")
    client.models.evaluate("vcnn@v2", dataset="bdigits@v1", split="test", progress=False)
    client.models.alias("vcnn", "challenger", 2, reason="try the new one")
    app = tmp_path / "board.ipynb"
    app.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "outputs": [],
                   "execution_count": None,
                   "source": "from loophub.widgets import ModelBoard\nModelBoard('vcnn')"}]}))
    port = free_port()
    env = {**os.environ, "LOOPHUB_API_URL": hub.api, "LOOPHUB_TOKEN": analyst["token"]}
    with open(tmp_path / "voila.log", "wb") as log:
        voila = subprocess.Popen([sys.executable, "-m", "voila", str(app), "--no-browser",
                                  f"--port={port}", "--Voila.ip=127.0.0.1"],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            with chromium_page(viewport=(1400, 1100)) as page:
                for _ in range(60):
                    try:
                        page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                        break
                    except Exception:
                        page.wait_for_timeout(500)
                root = page.locator(".lh-models")
                try:
                    root.locator(".lh-model-table").wait_for(timeout=120_000)
                except Exception:
                    screenshot(page, "models/voila-no-board.png")
                    raise
                check_board(page, root, client, "vcnn", analyst["image"], "voila")
        finally:
            voila.terminate()
            voila.wait(30)
