"""Where loophub keeps its state, read from the environment once.

Every process of the platform (the CLI, the hub config, the API service, the
spawner) resolves its settings here, so one LOOPHUB_HOME means one platform.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".loophub"


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    blob_url: str
    hub_db_url: str
    pool: str | None

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> Settings:
        """Settings for ``home`` (else LOOPHUB_HOME, else ./.loophub), env overriding defaults.

        LOOPHUB_DB_URL      the loophub database (default: SQLite in the home)
        LOOPHUB_BLOB_URL    the content-addressed blob store, any fsspec URL (default: home/blobs)
        LOOPHUB_HUB_DB_URL  JupyterHub's own database (default: SQLite in the home)
        LOOPHUB_POOL        a declared resource pool (JSON or a JSON file), see loophub.pool
        """
        root = Path(home or os.environ.get("LOOPHUB_HOME") or DEFAULT_HOME).expanduser()
        root = root.resolve()
        env = os.environ
        return cls(
            home=root,
            db_url=env.get("LOOPHUB_DB_URL") or f"sqlite:///{root / 'loophub.sqlite'}",
            blob_url=env.get("LOOPHUB_BLOB_URL") or str(root / "blobs"),
            hub_db_url=env.get("LOOPHUB_HUB_DB_URL") or f"sqlite:///{root / 'jupyterhub.sqlite'}",
            pool=env.get("LOOPHUB_POOL"),
        )

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def users_dir(self) -> Path:
        """Home folders of single-user servers (SimpleLocalProcessSpawner-style)."""
        return self.home / "users"

    def env(self) -> dict[str, str]:
        """The variables that make a child process resolve these same settings."""
        out = {
            "LOOPHUB_HOME": str(self.home),
            "LOOPHUB_DB_URL": self.db_url,
            "LOOPHUB_BLOB_URL": self.blob_url,
            "LOOPHUB_HUB_DB_URL": self.hub_db_url,
        }
        if self.pool:
            out["LOOPHUB_POOL"] = self.pool
        return out

    def ensure_dirs(self) -> None:
        for path in (self.home, self.users_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
