"""The labelers in a real JupyterLab on a real hub, driven by Debian chromium.

Label images by key presses and clicks, undo/redo/skip/back, restart the kernel and find
every label saved; two users label one dataset at once and get disjoint items; draw, move
and resize a box; tag an NER span with emoji and CJK by selecting it with the mouse.
Screenshots go to test-artifacts/labeling/, measurements to latency.json there.
"""

from __future__ import annotations

import json
import statistics
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from loophub.client import Client
from tests.browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    chromium_page,
    hub_login,
    require_chromium,
)
from tests.hubtest import spawn_server
from tests.labeling.conftest import image_dataset, make_dataset

pytestmark = [pytest.mark.hub, pytest.mark.browser]
OUT = ARTIFACTS / "labeling"
NER_TEXT = "Meet 😀 Ana María near 東京 Tower 🗼 at noon 🎉."
NER_SPAN = "東京 Tower 🗼"


class Measurements:
    def __init__(self) -> None:
        self.persist: list[float] = []
        self.next: list[float] = []
        self.labels_made = 0
        self.labels_lost = 0
        self.labels_duplicated = 0


def save_notebook(page) -> None:
    """Ctrl+S, and the File menu if a busy machine let the key press go astray."""
    page.keyboard.press("Control+s")
    try:
        page.wait_for_function("!document.querySelector('.jp-mod-dirty')", timeout=10_000)
        return
    except PlaywrightTimeout:
        pass
    page.click(".lm-MenuBar-itemLabel:text-is('File')")
    page.click(".lm-Menu-itemLabel:text-is('Save Notebook')")
    page.wait_for_function("!document.querySelector('.jp-mod-dirty')", timeout=60_000)


@pytest.fixture(scope="module")
def measured():
    result = Measurements()
    yield result
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latency.json").write_text(json.dumps({
        "label_persist_ms_median": round(statistics.median(result.persist), 1)
        if result.persist else None,
        "label_persist_ms_p90": round(statistics.quantiles(result.persist, n=10)[-1], 1)
        if len(result.persist) > 2 else None,
        "next_item_ms_median": round(statistics.median(result.next), 1) if result.next else None,
        "labels_made": result.labels_made, "labels_lost": result.labels_lost,
        "labels_duplicated": result.labels_duplicated,
        "persist_samples": len(result.persist), "next_samples": len(result.next),
    }, indent=2) + "\n")


@pytest.fixture(scope="module")
def people(hub, admin_token):
    """Two hub accounts in group 'labelers' with passwords and API tokens."""
    out = {}
    for name in ("lena", "omar"):
        resp = requests.post(f"{hub.api}/accounts", json={"name": name}, timeout=30,
                             headers={"Authorization": f"token {admin_token}"})
        assert resp.status_code == 201, resp.text
        out[name] = {"password": resp.json()["password"], "token": hub.token(name)}
    resp = hub.hub_api(admin_token, "POST", "groups/labelers", json={"users": list(out)})
    assert resp.status_code == 201, resp.text
    for name in out:  # servers started after joining the group, so their tokens see it
        spawn_server(hub, admin_token, name)
    yield out
    for name in out:
        hub.hub_api(admin_token, "DELETE", f"users/{name}/server")


@pytest.fixture(scope="module")
def datasets(hub, people, tmp_path_factory):
    lena = Client(hub.api, people["lena"]["token"])
    folder = tmp_path_factory.mktemp("labeling-data")
    image_dataset(lena, "pets", folder / "pets", count=8, classes=("cat", "dog", "bird"))
    image_dataset(lena, "shared", folder / "shared", count=12, classes=("cat", "dog"))
    lena.datasets.update("shared", visibility="group", group="labelers")
    _street(lena, folder / "street")
    make_dataset(lena, "ner", "ner", ["PER", "LOC"],
                 [{"id": "n1", "text": NER_TEXT, "annotations": []},
                  {"id": "n2", "text": "No entities here.", "annotations": []}], folder / "ner")
    texts = ["A wonderful, warm film.", "Dull and far too long.", "I laughed, I cried.",
             "The plot made no sense at all."]
    make_dataset(lena, "reviews", "text_classification", ["positive", "negative"],
                 [{"id": f"r{i}", "text": t, "annotations": []} for i, t in enumerate(texts)],
                 folder / "reviews")
    return lena


def _street(client: Client, folder: Path) -> None:
    import io

    from PIL import Image, ImageDraw

    images = {}
    for i in range(2):
        picture = Image.new("RGB", (800, 600), (180, 200, 220))
        draw = ImageDraw.Draw(picture)
        draw.rectangle([100 + 40 * i, 300, 340 + 40 * i, 420], fill=(200, 30, 30))  # a "car"
        draw.ellipse([520, 120, 600, 200], fill=(250, 210, 160))  # a "head"
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        images[f"s{i}.png"] = buffer.getvalue()
    make_dataset(client, "street", "object_detection", ["car", "person"],
                 [{"id": f"s{i}", "media": {"path": f"s{i}.png"}, "annotations": []}
                  for i in range(2)], folder, images=images)


@contextmanager
def two_people_pages():
    """Two pages with separate cookies (two people) in one chromium."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        contexts = [browser.new_context(viewport={"width": 1280, "height": 800})
                    for _ in range(2)]
        try:
            yield tuple(context.new_page() for context in contexts)
        finally:
            for context in contexts:
                context.close()
            browser.close()


def put_notebook(hub, user: str, token: str, name: str, cells: list[str]) -> None:
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [],
                   "execution_count": None, "id": f"c{i}"} for i, src in enumerate(cells)]}
    resp = requests.put(f"{hub.url}/user/{user}/api/contents/{name}", timeout=30,
                        headers={"Authorization": f"token {token}"},
                        json={"type": "notebook", "format": "json", "content": notebook})
    assert resp.status_code in (200, 201), resp.text


def open_lab(page, hub, user: str, password: str) -> None:
    hub_login(page, hub.url, user, password)
    page.wait_for_url(f"**/user/{user}/lab**", timeout=120_000)
    page.wait_for_selector(".jp-LabShell", timeout=120_000)


NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in front


def run_all_cells(page, hub, user: str, name: str) -> None:
    """Open notebook NAME afresh and run all its cells, until every cell has run."""
    # ?reset: a fresh workspace, so notebooks from earlier tests are not reopened beside it
    page.goto(f"{hub.url}/user/{user}/lab/tree/{name}?reset")
    page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=60_000)
    # JupyterLab's "news" toast would cover the widgets in the screenshots.
    page.add_style_tag(content=".jp-toast-container, .Toastify { display: none !important; }")
    page.wait_for_function(
        "document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')"
        " || [...document.querySelectorAll('#jp-main-statusbar span')]"
        ".some(s => s.textContent.trim().endsWith('Idle'))", timeout=60_000)
    # code cells only: a markdown cell's prompt stays empty
    prompts = f"[...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')]"
    for attempt in range(3):
        page.locator(f"{NOTEBOOK} .jp-Cell").first.click()
        page.keyboard.press("Escape")  # command mode
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:  # a kernel still connecting can drop requests: ask again while none started
            page.wait_for_function(f"{prompts}.some(p => /[0-9*]/.test(p.textContent))",
                                   timeout=30_000)
            break
        except Exception:
            if attempt == 2:
                raise
    page.wait_for_function(f"{prompts}.every(p => /[0-9]/.test(p.textContent))",
                           timeout=120_000)


def run_notebook(page, hub, user: str, name: str, widgets: int) -> None:
    run_all_cells(page, hub, user, name)
    try:
        page.wait_for_function(
            f"document.querySelectorAll('{NOTEBOOK} .lh-labeler, {NOTEBOOK} .lh-versions')"
            f".length >= {widgets}", timeout=60_000)
    except Exception:
        page.screenshot(path=str(OUT / f"debug-{name}.png"))
        outputs = page.locator(f"{NOTEBOOK} .jp-OutputArea").all_inner_texts()
        raise AssertionError(f"labelers did not appear; outputs: {outputs}") from None


def widget(page, dataset: str):
    return page.locator(f"{NOTEBOOK} .lh-labeler[data-dataset='{dataset}']")


def settle(root) -> None:
    """Wait until every change this widget sent is confirmed by the API."""
    root.page.wait_for_function(
        "el => el.dataset.pending === '0'", arg=root.element_handle(), timeout=15_000)


TRAIL: list[str] = []


def press(root, key: str) -> None:
    root.page.keyboard.press(key)
    settle(root)
    TRAIL.append(f"{key}->{root.evaluate('el => el.dataset.recordId')}")


def timings(root) -> tuple[list[float], list[float]]:
    data = root.evaluate("el => [el.dataset.persistMs || '[]', el.dataset.nextMs || '[]']")
    return json.loads(data[0]), json.loads(data[1])


def user_labels(client: Client, dataset: str) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for entry in client.datasets.records(dataset):
        anns = [(a["source"]["name"], a.get("label")) for a in entry["record"]["annotations"]
                if (a.get("source") or {}).get("kind") == "user"]
        if anns:
            out[entry["record"]["id"]] = sorted(anns)
    return out


def shoot(root, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    root.scroll_into_view_if_needed()
    root.screenshot(path=str(OUT / name))


def test_label_by_keys_and_clicks_then_restart_the_kernel(hub, people, datasets, measured):
    lena = people["lena"]
    put_notebook(hub, "lena", lena["token"], "classify.ipynb", [
        "from loophub.widgets import ImageClassifier, TextClassifier\n"
        "images = ImageClassifier('pets')\nimages",
        "texts = TextClassifier('reviews')\ntexts"])
    with chromium_page(viewport=(1280, 1000)) as page:
        open_lab(page, hub, "lena", lena["password"])
        run_notebook(page, hub, "lena", "classify.ipynb", 2)
        images = widget(page, "pets")
        images.locator("img.lh-image").wait_for(timeout=30_000)
        images.click(position={"x": 5, "y": 5})
        for key in ("1", "2", "1", "3"):  # each press saves and moves on
            press(images, key)
        images.locator(".lh-label[data-label='dog']").click()  # a click labels too
        settle(images)
        press(images, "Control+z")  # undo the click (the labeler shows img04 again)...
        press(images, "Control+Shift+Z")  # ...and redo it
        press(images, "ArrowRight")  # img05
        press(images, "s")  # skip img05
        press(images, "ArrowLeft")  # back to it
        press(images, "ArrowRight")  # img06
        press(images, "2")
        shoot(images, "image_classifier.png")
        texts = widget(page, "reviews")
        texts.click(position={"x": 5, "y": 5})
        for key in ("1", "2", "1"):
            press(texts, key)
        shoot(texts, "text_classifier.png")
        for root in (images, texts):
            persist, nxt = timings(root)
            measured.persist += persist
            measured.next += nxt
        expected_images = {"img00": "cat", "img01": "dog", "img02": "cat", "img03": "bird",
                           "img04": "dog", "img06": "dog"}
        expected_texts = {"r0": "positive", "r1": "negative", "r2": "positive"}
        measured.labels_made += len(expected_images) + len(expected_texts)

        # A second browser (the same person at another desk) opens the saved notebook: the
        # live labeler shows up there at the same item with the same progress.
        page.locator(f"{NOTEBOOK} .jp-InputPrompt").first.click()  # the notebook, not
        page.keyboard.press("Escape")  # the labeler (which keeps JupyterLab's keys away)
        save_notebook(page)
        desk = page.context.browser.new_context(viewport={"width": 1280, "height": 1000})
        try:
            other = desk.new_page()
            hub_login(other, hub.url, "lena", lena["password"])
            other.wait_for_selector(".jp-LabShell", timeout=120_000)
            other.goto(f"{hub.url}/user/lena/lab/tree/classify.ipynb")
            other.wait_for_function(
                "(() => { const el = document.querySelector("
                "\".lh-labeler[data-dataset='pets']\"); "
                "return el && el.dataset.recordId === 'img07'; })()", timeout=60_000)
            assert "6 by you" in other.locator(".lh-labeler[data-dataset='pets']").inner_text()
        finally:
            desk.close()

        # Restart the kernel: the labels are in the platform, and the labeler resumes.
        sessions = requests.get(f"{hub.url}/user/lena/api/sessions", timeout=30,
                                headers={"Authorization": f"token {lena['token']}"}).json()
        kernel = next(s["kernel"]["id"] for s in sessions if s["path"] == "classify.ipynb")
        requests.post(f"{hub.url}/user/lena/api/kernels/{kernel}/restart", timeout=60,
                      headers={"Authorization": f"token {lena['token']}"})
        saved = {rid: labels for rid, labels in user_labels(datasets, "pets").items()}
        texts_saved = user_labels(datasets, "reviews")
        want = {rid: [("lena", label)] for rid, label in expected_images.items()}
        want_texts = {rid: [("lena", label)] for rid, label in expected_texts.items()}
        measured.labels_lost += sum(rid not in saved for rid in want)
        measured.labels_lost += sum(rid not in texts_saved for rid in want_texts)
        measured.labels_duplicated += sum(len(v) - 1 for v in saved.values())
        measured.labels_duplicated += sum(len(v) - 1 for v in texts_saved.values())
        assert saved == want and texts_saved == want_texts, TRAIL
        # Run the notebook again: the labeler resumes with the first item lena still
        # holds (img05 was skipped, img06 labeled: img07), and its progress counts all six.
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function(
            "document.querySelector(\".lh-labeler[data-dataset='pets']\") && "
            "document.querySelector(\".lh-labeler[data-dataset='pets']\").dataset.recordId "
            "=== 'img07'", timeout=60_000)
        assert "6 by you" in widget(page, "pets").inner_text()
        shoot(widget(page, "pets"), "image_classifier_after_restart.png")


def test_two_users_label_the_same_dataset_at_once(hub, people, datasets, measured):
    for name in people:
        put_notebook(hub, name, people[name]["token"], "shared.ipynb", [
            "from loophub.widgets import ImageClassifier\nw = ImageClassifier('shared')\nw"])
    with two_people_pages() as (page_l, page_o):
        open_lab(page_l, hub, "lena", people["lena"]["password"])
        open_lab(page_o, hub, "omar", people["omar"]["password"])
        run_notebook(page_l, hub, "lena", "shared.ipynb", 1)
        run_notebook(page_o, hub, "omar", "shared.ipynb", 1)
        roots = [widget(page_l, "shared"), widget(page_o, "shared")]
        for root in roots:
            root.locator("img.lh-image").wait_for(timeout=30_000)
            root.click(position={"x": 5, "y": 5})
        for turn in range(5):  # interleaved key presses, as two people at two desks
            for root in roots:
                root.page.keyboard.press("1" if turn % 2 else "2")
                root.page.wait_for_timeout(150)  # a quick human, not a burst
        sent = 0
        for root in roots:
            settle(root)
            sent += int(root.evaluate("el => el.dataset.sent"))
            persist, nxt = timings(root)
            measured.persist += persist
            measured.next += nxt
        shoot(roots[1], "image_classifier_second_user.png")
    saved = user_labels(datasets, "shared")
    assert sent == 10  # every key press became a label (none fell on a loading screen)
    measured.labels_made += 10
    by_user = {"lena": set(), "omar": set()}
    for rid, anns in saved.items():
        for user, _ in anns:
            by_user[user].add(rid)
    measured.labels_duplicated += sum(len(anns) - 1 for anns in saved.values())
    measured.labels_lost += 10 - sum(len(anns) for anns in saved.values())
    assert len(by_user["lena"]) == 5 and len(by_user["omar"]) == 5
    assert not by_user["lena"] & by_user["omar"]


def test_draw_move_resize_a_box_and_tag_an_emoji_span(hub, people, datasets, measured):
    lena = people["lena"]
    put_notebook(hub, "lena", lena["token"], "boxes.ipynb", [
        "from loophub.widgets import BoxLabeler, SpanLabeler\n"
        "boxes = BoxLabeler('street')\nboxes",
        "spans = SpanLabeler('ner')\nspans"])
    with chromium_page(viewport=(1280, 1100)) as page:
        open_lab(page, hub, "lena", lena["password"])
        run_notebook(page, hub, "lena", "boxes.ipynb", 2)
        boxes = widget(page, "street")
        overlay = boxes.locator("svg.lh-overlay")
        overlay.wait_for(timeout=30_000)
        boxes.locator("img.lh-box-image").evaluate("img => img.decode()")
        page.wait_for_timeout(300)

        def at(x: float, y: float) -> tuple[float, float]:  # image pixels -> page pixels
            box = overlay.bounding_box()  # measured each time: the layout may move
            scale = box["width"] / 800
            return box["x"] + x * scale, box["y"] + y * scale

        drag(page, at(100, 300), at(340, 420))  # draw around the "car" (label 1: car)
        settle(boxes)
        drag(page, at(220, 360), at(260, 360))  # move it 40 px right
        settle(boxes)
        handle = boxes.locator(".lh-handle").nth(3).bounding_box()  # the se corner
        drag(page, (handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2),
             at(420, 440))
        settle(boxes)
        drag(page, at(520, 120), at(600, 200))  # a second box...
        settle(boxes)
        press(boxes, "2")  # ...relabelled "person" (it is selected after drawing)
        page.keyboard.press("+")  # zoom in and take the picture
        shoot(boxes, "box_labeler.png")
        page.keyboard.press("0")
        saved = datasets.datasets.record("street", "s0")["record"]["annotations"]
        got = sorted((a["label"], [round(v) for v in a["bbox"]]) for a in saved)
        assert got[0][0] == "car" and _close(got[0][1], [140, 300, 280, 140])
        assert got[1][0] == "person" and _close(got[1][1], [520, 120, 80, 80])
        persist, nxt = timings(boxes)
        measured.persist += persist
        measured.next += nxt

        spans = widget(page, "ner")
        spans.scroll_into_view_if_needed()
        start, end = text_edges(spans, NER_SPAN)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=5)
        page.mouse.up()
        press(spans, "2")  # LOC
        shoot(spans, "ner_labeler.png")
        saved = datasets.datasets.record("ner", "n1")["record"]["annotations"]
        assert [(a["label"], a["text"]) for a in saved] == [("LOC", NER_SPAN)]
        chars = list(NER_TEXT)
        assert "".join(chars[saved[0]["start"]:saved[0]["end"]]) == NER_SPAN
        measured.labels_made += 3


def drag(page, start, end) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()


def _close(got: list[int], want: list[int], tolerance: int = 4) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=True))


def text_edges(root, needle: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Client coordinates just inside the first and last character of ``needle``."""
    rects = root.evaluate("""(el, needle) => {
        const walker = document.createTreeWalker(el.querySelector('.lh-ner'), NodeFilter.SHOW_TEXT);
        let node;
        while ((node = walker.nextNode())) {
            const at = node.data.indexOf(needle);
            if (at < 0) continue;
            const range = document.createRange();
            range.setStart(node, at); range.setEnd(node, at + 1);
            const first = range.getBoundingClientRect();
            range.setStart(node, at + needle.length - 2); range.setEnd(node, at + needle.length);
            const last = range.getBoundingClientRect();
            return [first.left + 1, first.top + first.height / 2, last.right - 1,
                    last.top + last.height / 2];
        }
        return null;
    }""", needle)
    assert rects, f"{needle!r} not found in the NER labeler"
    return (rects[0], rects[1]), (rects[2], rects[3])


def test_a_labeling_app_in_voila(hub, people, datasets, measured, tmp_path):
    """The labeler as a Voila app (for people without notebooks): it renders and saves."""
    import os
    import subprocess
    import sys

    from loophub.ports import free_port

    lena = Client(hub.api, people["lena"]["token"])
    image_dataset(lena, "voila-pets", tmp_path / "data", count=3, classes=("cat", "dog"))
    app = tmp_path / "app.ipynb"
    app.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "outputs": [],
                   "execution_count": None,
                   "source": "from loophub.widgets import ImageClassifier\n"
                             "ImageClassifier('voila-pets')"}]}))
    port = free_port()
    env = {**os.environ, "LOOPHUB_API_URL": hub.api, "LOOPHUB_TOKEN": people["lena"]["token"]}
    log = open(tmp_path / "voila.log", "wb")  # noqa: SIM115 (closed below)
    voila = subprocess.Popen([sys.executable, "-m", "voila", str(app), "--no-browser",
                              f"--port={port}", "--Voila.ip=127.0.0.1"],
                             stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        with chromium_page() as page:
            for _ in range(60):
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                    break
                except Exception:
                    page.wait_for_timeout(500)
            root = page.locator(".lh-labeler[data-dataset='voila-pets']")
            root.locator("img.lh-image").wait_for(timeout=90_000)
            root.click(position={"x": 5, "y": 5})
            press(root, "1")
            press(root, "2")
            shoot(root, "voila_labeler.png")
            persist, nxt = timings(root)
            measured.persist += persist
            measured.next += nxt
    finally:
        voila.terminate()
        voila.wait(30)
        log.close()
    assert user_labels(lena, "voila-pets") == {"img00": [("lena", "cat")],
                                               "img01": [("lena", "dog")]}
    measured.labels_made += 2


def test_review_versions_and_overview(hub, people, datasets, measured, tmp_path):
    """A reviewer accepts and fixes disputed labels; the version browser diffs two versions;
    the overview shows counts and samples."""
    lena, omar = (Client(hub.api, people[n]["token"]) for n in ("lena", "omar"))
    image_dataset(lena, "dispute", tmp_path / "dispute", count=3, classes=("cat", "dog"))
    lena.datasets.update("dispute", visibility="group", group="labelers")
    for client, labels in ((lena, ("cat", "cat")), (omar, ("dog", "cat"))):
        for rid, label in zip(("img00", "img01"), labels, strict=True):
            rev = client.datasets.record("dispute", rid)["revision"]
            client.datasets.annotate("dispute", rid, {"type": "image_class", "label": label}, rev)
    lena.datasets.commit("dispute", "two labelers")
    put_notebook(hub, "lena", people["lena"]["token"], "review.ipynb", [
        "from loophub.widgets import ReviewLabeler, VersionBrowser, DatasetOverview\n"
        "review = ReviewLabeler('dispute')\nreview",
        "versions = VersionBrowser('dispute')\nversions",
        "DatasetOverview('dispute')"])
    with chromium_page(viewport=(1280, 1400)) as page:
        open_lab(page, hub, "lena", people["lena"]["password"])
        run_notebook(page, hub, "lena", "review.ipynb", 2)
        review = widget(page, "dispute")
        try:
            review.locator(".lh-review-row").first.wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(OUT / "debug-review.png"))
            raise
        assert "agreement 0%" in review.inner_text()  # the disputed item comes first
        shoot(review, "review_labeler.png")
        review.click(position={"x": 5, "y": 5})
        press(review, "1")  # fix img00 as cat: lena's accepted, omar's rejected
        review.locator(".lh-next").click()
        press(review, "a")  # accept both "cat" labels on img01
        versions = page.locator(".lh-versions")
        versions.scroll_into_view_if_needed()
        versions.locator("input[placeholder^='what changed']").fill("reviewed")
        versions.locator("button:text-is('Commit draft')").click()
        page.wait_for_function("document.querySelector('.lh-versions').innerText"
                               ".includes('committed v2')", timeout=30_000)
        versions.locator("button:text-is('Diff')").click()
        page.wait_for_function("document.querySelector('.lh-versions').innerText"
                               ".includes('v1 → v2')", timeout=30_000)
        shoot(versions, "version_browser.png")
        shoot(page.locator(".lh-overview"), "dataset_overview.png")
    anns = lena.datasets.record("dispute", "img00")["record"]["annotations"]
    states = sorted((a["source"]["name"], a["label"], a.get("review", {}).get("state"))
                    for a in anns)
    assert states == [("lena", "cat", "accepted"), ("lena", "cat", "accepted"),
                      ("omar", "dog", "rejected")] or states == [
        ("lena", "cat", "accepted"), ("omar", "dog", "rejected")]
    img01 = lena.datasets.record("dispute", "img01")["record"]["annotations"]
    assert {a.get("review", {}).get("state") for a in img01} == {"accepted"}
    assert lena.datasets.diff("dispute", 1, 2)["changed_ids"] == ["img00", "img01"]
