"""LoophubAuthenticator: hub logins checked against loophub's own accounts.

The embedded default. Accounts are created by `loophub up` (the first admin),
`loophub user add`, or an admin through the API; nobody logs in without a password.
"""

from __future__ import annotations

from jupyterhub.auth import Authenticator
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
            return None
        return {"name": account.name, "admin": account.admin}
