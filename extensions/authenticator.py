"""LoophubAuthenticator: hub logins checked against loophub's own accounts.

The embedded default. Accounts are created by `loophub up` (the first admin),
`loophub user add`, or an admin through the API; nobody logs in without a password.

A user added on the hub's admin page ("Add Users", i.e. POST /hub/api/users) gets a
loophub account without a password (the `add_user` hook); the hub log says so, and
the admin gives the user a password with `loophub user reset NAME`. Until then the
login page tells that user to ask for one.
"""

from __future__ import annotations

from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Unicode, default

from loophub.accounts import Accounts
from loophub.settings import Settings
from loophub.store import Database


class LoophubAuthenticator(Authenticator):
    db_url = Unicode(
        help="The loophub database holding the accounts. Default: LOOPHUB_DB_URL or the "
             "SQLite file in LOOPHUB_HOME.",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self) -> str:
        return Settings.from_env().db_url

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # Every account may log in: having an account is the allow-list.
        return True

    _accounts: Accounts | None = None

    @property
    def accounts(self) -> Accounts:
        if self._accounts is None:
            self._accounts = Accounts(Database(self.db_url))
        return self._accounts

    async def authenticate(self, handler, data: dict) -> dict | None:
        name = self.normalize_username(data.get("username", ""))
        account = self.accounts.authenticate(name, data.get("password", ""))
        if account is None:
            self.log.warning("failed login for %r", name)
            if self.accounts.exists(name) and not self.accounts.has_password(name):
                raise web.HTTPError(403, reset_hint(name, for_admin=False))
            return None
        return {"name": account.name, "admin": account.admin}

    def add_user(self, user) -> None:
        """The hub added USER (admin page, REST API, config, or a restart): make sure a
        loophub account exists; a new one has no password until an admin resets it."""
        super().add_user(user)
        if self.accounts.ensure_pending(user.name, admin=bool(user.admin), actor="hub"):
            self.log.warning("%s", reset_hint(user.name, for_admin=True))


def reset_hint(name: str, *, for_admin: bool) -> str:
    if for_admin:
        return (f"user {name!r} was added in the hub without a loophub password; give them "
                f"one with `loophub user reset {name}` (or POST "
                f"/services/loophub/api/accounts/{name}/reset as an admin)")
    return (f"No password is set for {name} yet. Ask a hub admin to run "
            f"`loophub user reset {name}` and send you the password it prints.")
