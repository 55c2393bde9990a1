"""An in-process loophub API (the real tornado app with every route) for fast tests:
identity comes from the token "user:NAME" (groups ["team"]; "root" is admin) instead of a
running hub. The ``api`` fixture in tests/conftest.py serves one per test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

from jupyterhub.services.auth import HubOAuth

from loophub.client import Client


class TokenIsUser(HubOAuth):
    """Maps 'Authorization: token user:NAME' to the hub user NAME (no hub in these tests)."""

    async def _check_hub_authorization(self, url, api_token, cache_key=None, use_cache=True):
        if not api_token.startswith("user:"):
            return None
        name = api_token.removeprefix("user:")
        return {"name": name, "kind": "user", "groups": ["team"], "admin": name == "root"}

    async def _get_user_cookie(self, handler):
        return None


class InProcessApi:
    def __init__(self, url: str, ctx, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.url, self.ctx, self.loop = url, ctx, loop

    def run(self, coro, timeout: float = 120.0):
        """Run CORO on the API's event loop (what its background tasks would do)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def service(self):
        """The API's LabelingService (tests swap its clock to expire leases)."""
        from loophub.extensions.api.labeling import labeling_service

        return labeling_service(self.ctx)

    def client(self, user: str) -> Client:
        return Client(self.url, f"user:{user}")

    def labeling(self, user: str):
        return self.client(user).labeling


def serve_api(request, tmp_path, monkeypatch) -> Iterator[InProcessApi]:
    """SQLite by default; parametrize indirectly with "postgres" for PostgreSQL."""
    from loophub.extensions.api.app import ServiceContext, make_app
    from loophub.ports import free_port
    from loophub.settings import Settings

    monkeypatch.setenv("LOOPHUB_HOME", str(tmp_path / "home"))
    if getattr(request, "param", "sqlite") == "postgres":
        monkeypatch.setenv("LOOPHUB_DB_URL", request.getfixturevalue("pg_schema_url"))
    settings = Settings.from_env()
    settings.ensure_dirs()
    port = free_port()
    url = f"http://127.0.0.1:{port}/services/loophub/api"
    # training jobs' workers act with "user:OWNER" tokens, which TokenIsUser maps back
    ctx = ServiceContext(settings=settings, api_url=url,
                         token_for=lambda owner, job: f"user:{owner}")
    ready = threading.Event()
    state: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # Handlers take HubOAuth.instance(): make the singleton ours for this test.
        TokenIsUser.clear_instance()
        HubOAuth.clear_instance()
        auth = TokenIsUser.instance(api_token="unused", api_url="http://127.0.0.1:1/hub/api",
                                    oauth_client_id="service-loophub", access_scopes=set())
        server = make_app(ctx, hub_auth=auth).listen(port, "127.0.0.1")
        state["loop"], state["server"] = loop, server
        ready.set()
        loop.run_forever()
        server.stop()
        if "runner" in ctx.__dict__:  # training workers and the Dask scheduler
            loop.run_until_complete(ctx.runner.close())
        if "release_manager" in ctx.__dict__:  # replicas a failed test left serving
            loop.run_until_complete(ctx.release_manager.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(30)
    yield InProcessApi(url, ctx, state["loop"])
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(60)
    ctx.db.dispose()
    TokenIsUser.clear_instance()
