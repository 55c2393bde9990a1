"""The API service's options: traitlets in a jupyterhub_config-style file, the platform's
environment variables overriding them, mistakes refused with the option's name."""

import pytest

from loophub.errors import InvalidInput
from loophub.extensions.api.app import LoophubAPI


@pytest.fixture
def make_app(tmp_path, monkeypatch):
    for var in ("LOOPHUB_DB_URL", "LOOPHUB_POOL", "LOOPHUB_SCHEDULER", "LOOPHUB_TRUSTED_SERVICES",
                "LOOPHUB_MAX_UPLOAD_BYTES", "LOOPHUB_API_CONFIG", "LOOPHUB_PUBLIC_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LOOPHUB_HOME", str(tmp_path))

    def make(config: str = "", **env: str) -> LoophubAPI:
        (tmp_path / "loophub_api_config.py").write_text(config)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        LoophubAPI.clear_instance()
        app = LoophubAPI()
        app.initialize([])
        return app
    yield make
    LoophubAPI.clear_instance()


def test_options_come_from_the_config_file(make_app, tmp_path):
    app = make_app('c.LoophubAPI.trusted_services = {"batch"}\n'
                   'c.LoophubAPI.scheduler_policy = "drf"\n'
                   'c.LoophubAPI.scheduler_config = {"aging_bound": 7200}\n'
                   'c.LoophubAPI.job_workers = 4\n')
    ctx = app.context("/services/loophub/")
    assert ctx.trusted_services == frozenset({"batch"}) and ctx.job_workers == 4
    assert (ctx.scheduler_policy, ctx.scheduler_config) == ("drf", {"aging_bound": 7200})
    assert ctx.settings.db_url == f"sqlite:///{tmp_path / 'loophub.sqlite'}"


def test_the_environment_overrides_the_file(make_app):
    app = make_app('c.LoophubAPI.trusted_services = {"batch"}\n'
                   'c.LoophubAPI.db_url = "sqlite:////tmp/from-file.sqlite"\n',
                   LOOPHUB_TRUSTED_SERVICES="loophub-spawner,ci",
                   LOOPHUB_DB_URL="sqlite:////tmp/from-env.sqlite",
                   LOOPHUB_SCHEDULER='{"policy": "fifo", "backfill": false}')
    ctx = app.context("/")
    assert ctx.trusted_services == frozenset({"loophub-spawner", "ci"})
    assert ctx.settings.db_url == "sqlite:////tmp/from-env.sqlite"
    assert (ctx.scheduler_policy, ctx.scheduler_config["backfill"]) == ("fifo", False)


def test_mistakes_are_refused_with_the_option_named(make_app):
    with pytest.raises(InvalidInput, match="unknown settings \\['aging_boundd'\\]"):
        make_app('c.LoophubAPI.scheduler_config = {"aging_boundd": 1}\n')
    with pytest.raises(InvalidInput, match="LOOPHUB_SCHEDULER: invalid JSON"):
        make_app("", LOOPHUB_SCHEDULER="{policy: drf}")
