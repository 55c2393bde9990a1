"""The running platform, end to end: `loophub up` with a real JupyterHub,
configurable-http-proxy and the loophub API service."""

import re

import pytest
import requests

from loophub import errors
from loophub.client import Client

pytestmark = pytest.mark.hub


def get(hub, path, token=None, **kw):
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{hub.api}/{path}", headers=headers, timeout=30, **kw)


def test_health_needs_no_identity(hub):
    resp = get(hub, "health")
    assert resp.status_code == 200
    assert resp.json()["checks"] == {"database": True, "blobs": True}


def test_me_with_token(hub):
    token = hub.token("alice")
    assert get(hub, "me", token).json() == {
        "name": "alice", "kind": "user", "groups": [], "admin": False}


@pytest.mark.parametrize("token", [None, "not-a-token", "0" * 32])
def test_missing_or_invalid_token_is_refused(hub, token):
    resp = get(hub, "me", token)
    assert resp.status_code == 401
    assert "loophub token" in resp.json()["error"]


def test_admin_routes_refuse_non_admins(hub, admin_token):
    token = hub.token("bob")
    for path in ("audit", "accounts"):
        resp = get(hub, path, token)
        assert resp.status_code == 403, path
        assert "not a hub admin" in resp.json()["error"]
        assert get(hub, path, admin_token).status_code == 200


def test_groups_come_from_the_hub(hub, admin_token):
    hub.token("carol")
    resp = hub.hub_api(admin_token, "POST", "groups/vision", json={"users": ["carol"]})
    assert resp.status_code == 201, resp.text
    me = get(hub, "me", hub.token("carol")).json()
    assert me["groups"] == ["vision"]


def test_pool_reports_detected_capacity(hub):
    pool = get(hub, "pool", hub.token("alice")).json()
    node = pool["nodes"][0]
    assert node["cpu"] >= 1 and node["mem"] > 2**28 and node["gpu"] >= 0
    assert pool["total"]["cpu"] == sum(n["cpu"] for n in pool["nodes"])


def test_openapi_lists_every_route(hub):
    doc = get(hub, "openapi.json", hub.token("alice")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/health", "/me", "/pool", "/accounts", "/audit", "/openapi.json"} <= set(doc["paths"])
    assert doc["paths"]["/health"]["get"]["security"] == []


def test_bad_input_is_a_json_4xx_never_a_500(hub, admin_token):
    url = f"{hub.api}/accounts"
    headers = {"Authorization": f"token {admin_token}", "Content-Type": "application/json"}
    for body in (b"{not json", b"", b"[1,2]", b'{"name": "UPPER CASE"}',
                 b'{"name": "x", "admin": "yes"}', b"\xff\xfe", b'{"name": NaN}',
                 b'{"name": "a\\u0000b"}', b"[" * 100_000):
        resp = requests.post(url, data=body, headers=headers, timeout=30)
        assert resp.status_code == 400, (body[:40], resp.status_code, resp.text)
        assert resp.json()["error"]
    # a body that is not declared JSON: 415, saying what to send
    resp = requests.post(url, data=b'{"name": "x"}', timeout=30,
                         headers={"Authorization": f"token {admin_token}",
                                  "Content-Type": "text/plain"})
    assert resp.status_code == 415 and "application/json" in resp.json()["error"]
    resp = get(hub, "no/such/route", admin_token)
    assert resp.status_code == 404 and "openapi.json" in resp.json()["error"]


def test_admin_creates_account_and_it_can_log_in_with_cookie(hub, admin_token):
    resp = requests.post(f"{hub.api}/accounts", json={"name": "dora"},
                         headers={"Authorization": f"token {admin_token}"}, timeout=30)
    assert resp.status_code == 201, resp.text
    password = resp.json()["password"]
    dup = requests.post(f"{hub.api}/accounts", json={"name": "dora"},
                        headers={"Authorization": f"token {admin_token}"}, timeout=30)
    assert dup.status_code == 409

    browser = requests.Session()
    login = browser.get(f"{hub.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', login.text).group(1)
    bad = browser.post(f"{hub.url}/hub/login?next=", timeout=30, allow_redirects=False,
                       data={"username": "dora", "password": "wrong-password", "_xsrf": xsrf})
    assert bad.status_code == 403
    ok = browser.post(f"{hub.url}/hub/login?next=", timeout=30, allow_redirects=False,
                      data={"username": "dora", "password": password, "_xsrf": xsrf})
    assert ok.status_code == 302
    # A browser visiting the API is sent through the HubOAuth dance and ends with a cookie.
    page = browser.get(f"{hub.api}/me", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and page.json()["name"] == "dora"
    me = browser.get(f"{hub.api}/me", timeout=30)
    assert me.status_code == 200 and me.json()["name"] == "dora"


def test_first_admin_password_logs_in(hub):
    assert hub.admin_password
    browser = requests.Session()
    login = browser.get(f"{hub.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', login.text).group(1)
    ok = browser.post(f"{hub.url}/hub/login?next=", allow_redirects=False, timeout=30,
                      data={"username": "admin", "password": hub.admin_password, "_xsrf": xsrf})
    assert ok.status_code == 302
    assert browser.get(f"{hub.url}/services/loophub/", timeout=30).status_code == 200
    assert browser.get(f"{hub.api}/audit", timeout=30).status_code == 200


def test_client_sdk_from_outside(hub):
    client = Client(hub.api, hub.token("erin"))
    assert client.me()["name"] == "erin"
    assert client.pool()["nodes"]
    with pytest.raises(errors.PermissionDenied, match="not a hub admin"):
        client.request("GET", "audit")
    with pytest.raises(errors.Unauthenticated):
        Client(hub.api, "bogus").me()


async def test_client_sdk_inside_a_spawned_server(hub, admin_token):
    from tests.hubtest import run_in_kernel, spawn_server

    token = hub.token("frank")
    spawn_server(hub, admin_token, "frank")
    out = await run_in_kernel(hub, "frank", token, (
        "from loophub.client import Client\n"
        "import os\n"
        "print(Client().me()['name'], os.environ['LOOPHUB_HOME'])"
    ))
    name, home = out.split()
    assert name == "frank"
    assert home == str(hub.home.resolve())
    hub.hub_api(admin_token, "DELETE", "users/frank/server")
