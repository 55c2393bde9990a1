"""Direct operations on a hub's database, for the CLI (`loophub token`).

JupyterHub reads tokens and users from its database on each request, so a token
created here is valid at once on a running hub, and also on one started later.
"""

from __future__ import annotations

from jupyterhub import orm, roles

from loophub.errors import InvalidInput, NotFound


def issue_token(hub_db_url: str, username: str, *, admin: bool = False,
                note: str = "loophub token", expires_in: int | None = None) -> str:
    """A new API token for ``username`` (created if missing), made admin if asked."""
    session = orm.new_session_factory(hub_db_url, reset=False)()
    try:
        if orm.Role.find(session, "user") is None:
            raise NotFound("this hub has not been initialised yet: run `loophub up` once first")
        user = orm.User.find(session, username)
        if user is None:
            user = orm.User(name=username)
            session.add(user)
            session.commit()
        if admin and not user.admin:
            user.admin = True
            session.commit()
        roles.assign_default_roles(session, entity=user)
        token = user.new_api_token(note=note, expires_in=expires_in)
        session.commit()
        return token
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    finally:
        session.close()
