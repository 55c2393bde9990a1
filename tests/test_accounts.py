import pytest

from loophub.accounts import Accounts, hash_password, verify_password
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.store import Database


def test_hash_is_salted_and_verifies():
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("correct horse", a) and not verify_password("wrong", a)
    assert not verify_password("x", "garbage")


def test_accounts_lifecycle(db_url):
    accounts = Accounts(Database(db_url))
    password = accounts.create("ann", admin=True)
    assert len(password) >= 16
    assert accounts.authenticate("ann", password).admin is True
    assert accounts.authenticate("ann", "nope") is None
    assert accounts.authenticate("nobody", password) is None
    assert accounts.admins() == ["ann"]
    with pytest.raises(Conflict, match="already exists"):
        accounts.create("ann")
    with pytest.raises(InvalidInput, match="too short"):
        accounts.create("bob", "short")
    with pytest.raises(NotFound):
        accounts.set_password("nobody")
    new = accounts.set_password("ann")
    assert accounts.authenticate("ann", password) is None
    assert accounts.authenticate("ann", new) is not None


def test_pending_account_has_no_password_until_reset(db_url):
    accounts = Accounts(Database(db_url))
    assert accounts.ensure_pending("hubuser", actor="hub") is True
    assert accounts.ensure_pending("hubuser", actor="hub") is False  # idempotent
    assert accounts.has_password("hubuser") is False
    assert accounts.authenticate("hubuser", "") is None
    assert accounts.authenticate("hubuser", "!") is None
    password = accounts.reset("hubuser", actor="cli")
    assert accounts.has_password("hubuser") is True
    assert accounts.authenticate("hubuser", password) is not None
    # reset also creates the account of a hub user that has none yet
    other = accounts.reset("olduser", actor="cli")
    assert accounts.authenticate("olduser", other) is not None


def _login(hub, name, password):
    import re

    import requests

    browser = requests.Session()
    login = browser.get(f"{hub.url}/hub/login", timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', login.text).group(1)
    return browser.post(f"{hub.url}/hub/login?next=", timeout=30, allow_redirects=False,
                        data={"username": name, "password": password, "_xsrf": xsrf})


@pytest.mark.hub
def test_user_added_on_hub_admin_page_can_sign_in(hub, admin_token):
    import subprocess
    import sys

    # The hub admin page's "Add Users" posts to the hub's REST API.
    resp = hub.hub_api(admin_token, "POST", "users", json={"usernames": ["newcomer"]})
    assert resp.status_code == 201, resp.text
    refused = _login(hub, "newcomer", "anything-at-all")
    assert refused.status_code == 403
    assert "loophub user reset newcomer" in refused.text  # the login page says what to do
    assert "loophub user reset newcomer" in hub.home.joinpath("jupyterhub.log").read_text()
    out = subprocess.run([sys.executable, "-m", "loophub.cli", "user", "reset", "newcomer",
                          "--home", str(hub.home)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    password = out.stdout.strip().split()[-1]
    assert _login(hub, "newcomer", password).status_code == 302
