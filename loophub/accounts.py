"""loophub's own logins: scrypt-hashed passwords in the loophub database.

The embedded default needs no system users and no outside identity provider, yet
never lets anyone in without a password. Production hubs switch to PAM or
OAuthenticator in hub_config (README, "Authentication").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime

from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from loophub import audit
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.store import Database
from loophub.store.models import Base, iso, utcnow

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 10
NO_PASSWORD = "!"  # the hash of an account created without a password: matches nothing


class Account(Base):
    """A login for loophub's own authenticator (passwords hashed with scrypt)."""

    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    admin: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    password_changed: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def check_username(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"invalid user name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(digest.hex(), expected)


class Accounts:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, password: str | None = None, *, admin: bool = False,
               actor: str = "system") -> str:
        """Create an account; returns its password (generated unless given)."""
        check_username(name)
        password = password or generate_password()
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password too short: use at least {MIN_PASSWORD} characters")
        with self.db.transaction() as s:
            if s.get(Account, name) is not None:
                raise Conflict(f"user {name!r} already exists; use `loophub passwd {name}` "
                               "to set a new password")
            s.add(Account(name=name, password_hash=hash_password(password), admin=admin))
            audit.record(s, actor, "account.create", f"account:{name}", admin=admin)
        return password

    def set_password(self, name: str, password: str | None = None, *,
                     actor: str = "system") -> str:
        password = password or generate_password()
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"password too short: use at least {MIN_PASSWORD} characters")
        with self.db.transaction() as s:
            account = s.get(Account, name)
            if account is None:
                raise NotFound(f"no user {name!r}; create it with `loophub user add {name}`")
            account.password_hash = hash_password(password)
            account.password_changed = utcnow()
            audit.record(s, actor, "account.password", f"account:{name}")
        return password

    def ensure_pending(self, name: str, *, admin: bool = False, actor: str = "system") -> bool:
        """Create NAME without a password (nobody can sign in as it until an admin runs
        `loophub user reset NAME`); False if the account exists. For users added on the
        hub's admin page."""
        check_username(name)
        with self.db.transaction() as s:
            if s.get(Account, name) is not None:
                return False
            s.add(Account(name=name, password_hash=NO_PASSWORD, admin=admin))
            audit.record(s, actor, "account.create", f"account:{name}", admin=admin,
                         password=False)
        return True

    def has_password(self, name: str) -> bool:
        with self.db.transaction() as s:
            account = s.get(Account, name)
            return account is not None and account.password_hash != NO_PASSWORD

    def reset(self, name: str, *, actor: str = "system") -> str:
        """A new generated password for NAME, creating the account if the hub has the
        user but loophub has no account for it; returns the password (shown once)."""
        check_username(name)
        if not self.exists(name):
            try:
                return self.create(name, actor=actor)
            except Conflict:  # created meanwhile
                pass
        return self.set_password(name, actor=actor)

    def authenticate(self, name: str, password: str) -> Account | None:
        with self.db.transaction() as s:
            account = s.get(Account, name)
        if account is None or not verify_password(password, account.password_hash):
            return None
        return account

    def exists(self, name: str) -> bool:
        with self.db.transaction() as s:
            return s.get(Account, name) is not None

    def admins(self) -> list[str]:
        with self.db.transaction() as s:
            return sorted(s.scalars(select(Account.name).where(Account.admin.is_(True))))

    def list(self) -> list[dict]:
        with self.db.transaction() as s:
            return [{"name": a.name, "admin": a.admin, "created": iso(a.created)}
                    for a in s.scalars(select(Account).order_by(Account.name))]
