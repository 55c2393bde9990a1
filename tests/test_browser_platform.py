"""A person's first visit, in a real browser: log in, start a server, reach JupyterLab."""

import pytest
import requests

from tests.browser import chromium_page, hub_login, screenshot

pytestmark = [pytest.mark.hub, pytest.mark.browser]


def test_login_spawn_and_reach_jupyterlab(hub, admin_token):
    resp = requests.post(f"{hub.api}/accounts", json={"name": "gina"}, timeout=30,
                         headers={"Authorization": f"token {admin_token}"})
    password = resp.json()["password"]
    with chromium_page() as page:
        hub_login(page, hub.url, "gina", "not-her-password")
        assert "Invalid username or password" in page.content()
        hub_login(page, hub.url, "gina", password)
        # After login the hub offers the server sizes; the default profile is preselected.
        page.wait_for_selector("#spawn_form", timeout=60_000)
        assert page.is_checked("input[name=profile][value=small]")
        page.click("#spawn_form button[type=submit]")
        page.wait_for_url("**/user/gina/lab**", timeout=120_000)
        page.wait_for_selector(".jp-LabShell", timeout=120_000)
        page.wait_for_selector(".jp-Launcher", timeout=60_000)
        shot = screenshot(page, "platform/jupyterlab.png")
        assert shot.stat().st_size > 10_000
        # The same browser session reaches the loophub API through the hub's OAuth.
        page.goto(f"{hub.api}/me")
        assert '"name": "gina"' in page.inner_text("body")
    hub.hub_api(admin_token, "DELETE", "users/gina/server")
