"""What a user sees when the pool is busy: the options form, the pending page with
the queue position and reason, then JupyterLab once resources free up."""

import time

import pytest
import requests

from tests.browser import chromium_page, hub_login, screenshot
from tests.hubtest import start_hub

pytestmark = [pytest.mark.hub, pytest.mark.browser]
POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 4}]'


@pytest.fixture(scope="module")
def busy_hub(tmp_path_factory):
    home = tmp_path_factory.mktemp("busy") / "home"
    config = home.parent / "extra.py"
    config.write_text("c.FairSpawner.long_poll = 2\n")
    hub = start_hub(home, env={"LOOPHUB_POOL": POOL, "LOOPHUB_HUB_CONFIG": str(config)})
    yield hub
    hub.stop()


def test_options_form_pending_queue_then_lab(busy_hub):
    hub = busy_hub
    admin = hub.token("root", admin=True)
    hub.token("hog")
    resp = hub.hub_api(admin, "POST", "users/hog/server",
                       json={"profile": "custom", "cpu": 0.5, "mem": "1G", "gpu": 4})
    assert resp.status_code in (201, 202)
    password = requests.post(f"{hub.api}/accounts", json={"name": "hana"}, timeout=30,
                             headers={"Authorization": f"token {admin}"}).json()["password"]
    with chromium_page() as page:
        hub_login(page, hub.url, "hana", password)
        page.wait_for_selector("#spawn_form", timeout=60_000)
        labels = page.inner_text("#spawn_form")
        assert "Small" in labels and "Medium" in labels and "Custom size" in labels
        assert "4 GPU" in labels  # the custom limit offered to her
        assert not page.is_visible("input[name=cpu]")  # custom fields: only for custom
        page.check("input[name=profile][value=custom]")
        assert page.is_visible("input[name=cpu]")
        page.fill("input[name=cpu]", "0.5")
        page.fill("input[name=mem]", "1")
        page.fill("input[name=gpu]", "2")
        screenshot(page, "spawner/options_form.png")
        page.click("#spawn_form button[type=submit]")

        page.wait_for_function(
            "document.querySelector('#progress-message') && "
            "document.querySelector('#progress-message').textContent.includes('position 1')",
            timeout=60_000)
        message = page.inner_text("#progress-message")
        assert "waiting for gpu" in message, message
        screenshot(page, "spawner/pending_queue.png")

        assert hub.hub_api(admin, "DELETE", "users/hog/server").status_code in (202, 204)
        started = time.monotonic()
        page.wait_for_url("**/user/hana/lab**", timeout=120_000)
        page.wait_for_selector(".jp-LabShell", timeout=120_000)
        assert time.monotonic() - started < 120
        screenshot(page, "spawner/lab_after_queue.png")
    model = hub.hub_api(admin, "GET", "users/hana").json()["servers"][""]
    assert model["user_options"]["profile"] == "custom"
    hub.hub_api(admin, "DELETE", "users/hana/server")
