"""Model-assisted labeling in a real JupyterLab on a real hub, driven by Debian chromium:
predictions that ``Client().models.predict_into`` wrote show up in the labeler as the
model's suggestion (version and score), least confident item first, and accepting one with
Enter saves a person's label that records the prediction it confirms. Screenshots go to
test-artifacts/models/."""

from __future__ import annotations

import pytest
import requests

from loophub.client import Client
from tests.browser import ARTIFACTS, chromium_page
from tests.hubtest import spawn_server
from tests.labeling.test_browser_labeling import (
    NOTEBOOK,
    open_lab,
    put_notebook,
    run_notebook,
    settle,
    widget,
)
from tests.models.test_assist import digits_net, model_annotations
from tests.training.conftest import digits_folder

pytestmark = [pytest.mark.hub, pytest.mark.browser]
OUT = ARTIFACTS / "models"


@pytest.fixture(scope="module")
def mia(hub, admin_token):
    """A hub account with a password, an API token and a running server."""
    resp = requests.post(f"{hub.api}/accounts", json={"name": "mia"}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    assert resp.status_code == 201, resp.text
    made = hub.hub_api(admin_token, "POST", "users/mia")  # the hub's user, to spawn for
    assert made.status_code in (201, 409), made.text
    spawn_server(hub, admin_token, "mia")
    yield {"password": resp.json()["password"], "token": hub.token("mia")}
    hub.hub_api(admin_token, "DELETE", "users/mia/server")


def digits_to_label(client: Client, folder) -> list[str]:
    """Dataset 'assist' (40 digits, v1 committed), its first 6 records' labels removed;
    digits-net@v1's predictions written on them. The record ids by confidence, lowest
    first."""
    import torch

    schema = digits_folder(folder, count=40)
    client.datasets.create("assist", label_schema=schema)
    client.datasets.import_("assist", folder, "loophub", progress=False)
    client.datasets.commit("assist", "40 digits")
    for entry in list(client.datasets.records("assist"))[:6]:
        client.datasets.put_record("assist", {**entry["record"], "annotations": []},
                                   entry["revision"])
    client.models.register("digits-net", digits_net(steps=25),
                           example_input=torch.zeros(1, 1, 16, 16),
                           task="image_classification", labels=[str(i) for i in range(10)],
                           dataset="assist@v1")
    result = client.models.predict_into("assist", "digits-net@v1",
                                        filter={"annotated": False}, progress=False)
    assert result["written"] == 6
    scores = {}
    for entry in client.datasets.records("assist", annotated=False):
        (ann,) = model_annotations(entry["record"])
        scores[entry["record"]["id"]] = ann["score"]
    return sorted(scores, key=lambda rid: (scores[rid], rid))


def test_predictions_show_as_pre_annotations_and_accepting_one_is_recorded(hub, mia,
                                                                           tmp_path):
    client = Client(hub.api, mia["token"])
    order = digits_to_label(client, tmp_path / "assist")
    first = client.datasets.record("assist", order[0])["record"]
    (suggestion,) = model_annotations(first)
    put_notebook(hub, "mia", mia["token"], "assist.ipynb", [
        "from loophub.widgets import ImageClassifier\n"
        "labeler = ImageClassifier('assist', order='uncertain')\nlabeler"])
    OUT.mkdir(parents=True, exist_ok=True)
    with chromium_page(viewport=(1280, 1000)) as page:
        open_lab(page, hub, "mia", mia["password"])
        run_notebook(page, hub, "mia", "assist.ipynb", 1)
        root = widget(page, "assist")
        root.locator("img.lh-image").wait_for(timeout=30_000)
        page.wait_for_function(
            "el => el.dataset.recordId", arg=root.element_handle(), timeout=30_000)
        # the least confident record comes first, with the model's suggestion on it
        assert root.evaluate("el => el.dataset.recordId") == order[0]
        chip = root.locator(".lh-suggest")
        chip.wait_for(timeout=15_000)
        text = chip.inner_text()
        percent = f"{suggestion['score'] * 100:.0f}%"
        assert "Model digits-net@v1 suggests" in text, text
        assert f"{suggestion['label']} {percent}" in text, text
        root.scroll_into_view_if_needed()
        root.screenshot(path=str(OUT / "pre_annotation.png"))
        root.click(position={"x": 5, "y": 5})
        page.keyboard.press("Enter")  # accept the suggestion
        settle(root)
        root.screenshot(path=str(OUT / "pre_annotation_accepted.png"))
        page.locator(f"{NOTEBOOK} .jp-InputPrompt").first.click()
    saved = client.datasets.record("assist", order[0])["record"]["annotations"]
    mine = [a for a in saved if a["source"]["kind"] == "user"]
    assert [(a["source"]["name"], a["label"]) for a in mine] == [("mia", suggestion["label"])]
    assert mine[0]["attributes"]["from_prediction"]["model"] == "digits-net"
    assert mine[0]["attributes"]["from_prediction"]["version"] == "v1"
    assert client.labeling.progress("assist")["mine"] == 1
