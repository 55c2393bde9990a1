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
