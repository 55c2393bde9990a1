"""The `loophub` command: run the platform, issue tokens, check the set-up.

Each room adds its own subcommands through a ``register(subparsers)`` function, found
through the ``loophub.commands`` entry points; handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import loophub
from loophub.errors import LoophubError
from loophub.settings import Settings

# Subcommands come from the ``loophub.commands`` entry points (setup.cfg): each names a
# ``register(subparsers)`` function. The rooms in loophub/ and the adapters (``up`` and
# ``token`` live with the hub adapters) register the same way, so this module imports no
# adapter.
COMMAND_GROUP = "loophub.commands"
REPO = Path(__file__).resolve().parent.parent


def proxy_command() -> str | None:
    return os.environ.get("LOOPHUB_PROXY") or shutil.which(
        "configurable-http-proxy", path=str(REPO / "node_modules" / ".bin")
    ) or shutil.which("configurable-http-proxy")


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


# --- tokens and accounts -------------------------------------------------------------


def _accounts(args: argparse.Namespace):
    from loophub.accounts import Accounts
    from loophub.store import Database

    settings = Settings.from_env(args.home)
    settings.ensure_dirs()
    return Accounts(Database(settings.db_url))


def cmd_user_add(args: argparse.Namespace) -> int:
    password = _accounts(args).create(args.name, admin=args.admin, actor="cli")
    print(f"created {'admin ' if args.admin else ''}user {args.name}; password: {password}")
    return 0


def cmd_user_reset(args: argparse.Namespace) -> int:
    password = _accounts(args).reset(args.name, actor="cli")
    print(f"new password for {args.name} (shown once; give it to them): {password}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    password = _accounts(args).set_password(args.name, actor="cli")
    print(f"new password for {args.name}: {password}")
    return 0


# --- doctor ------------------------------------------------------------------------


def _check(name: str, func) -> bool:
    try:
        detail = func()
    except Exception as exc:  # doctor reports every failure, whatever it is
        print(f"  FAIL  {name}: {exc}")
        return False
    print(f"  ok    {name}: {detail}")
    return True


def _sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def _schema_state(url: str) -> str:
    """Tables and migration revision of the database at URL, read without writing (a
    SQLite file is opened read-only; no migration runs)."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect, text

    from loophub.store.db import alembic_config, make_engine

    path = _sqlite_path(url)
    engine = (create_engine(f"sqlite:///file:{path}?mode=ro&uri=true") if path is not None
              else make_engine(url))
    try:
        tables = inspect(engine).get_table_names()
        current = None
        if "alembic_version" in tables:
            with engine.connect() as conn:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current != head:
        raise RuntimeError(f"{len(tables)} tables at migration {current or 'none'}, the code "
                           f"expects {head}: `loophub up` migrates it")
    return f"{len(tables)} tables, migrations applied"


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the set-up and say what to fix; reads only (no home, database or blob is
    created: `loophub up` does that)."""
    from loophub.pool import load_pool

    settings = Settings.from_env(args.home)
    print(f"loophub {loophub.__version__}, home {settings.home}"
          + ("" if settings.home.exists() else " (not created yet: `loophub up` creates it)"))

    def proxy() -> str:
        cmd = proxy_command()
        if not cmd:
            raise RuntimeError("configurable-http-proxy not found: run `make install`")
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=30)
        return f"{cmd} {out.stdout.strip()}"

    def database() -> str:
        where = settings.db_url.split("@")[-1]
        path = _sqlite_path(settings.db_url)
        if path is not None and not path.exists():
            return f"{where} (none yet: `loophub up` creates it)"
        return f"{where} ({_schema_state(settings.db_url)})"

    def blobs() -> str:
        from loophub.store import BlobStore

        if "://" not in settings.blob_url or settings.blob_url.startswith("file://"):
            root = Path(settings.blob_url.removeprefix("file://"))
            if not root.exists():
                return f"{settings.blob_url} (none yet: `loophub up` creates it)"
            if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
                raise RuntimeError(f"{root} is not readable and writable by this user")
            return f"{settings.blob_url} (readable and writable)"
        store = BlobStore(settings.blob_url)
        if not store.fs.exists(store.root):
            return f"{settings.blob_url} (none yet: `loophub up` creates it)"
        store.fs.ls(store.root)
        return f"{settings.blob_url} (readable)"

    def pool() -> str:
        nodes = load_pool(settings.pool)
        return "; ".join(f"{n.name}: {n.cpu:g} cpu, {n.mem / 2**30:.1f} GiB, {n.gpu} gpu"
                         + (f" ({n.gpu_type})" if n.gpu_type else "") for n in nodes)

    def hub() -> str:
        run = settings.home / "run.json"
        if not run.exists():
            return "not running (start it with `loophub up`)"
        url = json.loads(run.read_text())["url"]
        status = _get(f"{url}/hub/health")
        if status == 0:
            return (f"stopped (the last `loophub up` ran at {url}; nothing answers there "
                    "now: start it with `loophub up`)")
        if status != 200:
            raise RuntimeError(f"run.json says {url} but /hub/health answers {status}")
        return f"running at {url}"

    results = [_check(n, f) for n, f in [("proxy", proxy), ("database", database),
                                         ("blob store", blobs), ("pool", pool), ("hub", hub)]]
    if not all(results):
        print("some checks failed: fix the lines marked FAIL")
        return 1
    return 0


# --- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loophub", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loophub {loophub.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="LOOPHUB_HOME (default: $LOOPHUB_HOME or ./.loophub)")

    user = sub.add_parser("user", help="manage login accounts")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", parents=[home], help="create an account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=cmd_user_add)
    reset = user_sub.add_parser(
        "reset", parents=[home],
        help="print a new password for an account (also for users added on the hub's "
             "admin page, who have none)")
    reset.add_argument("name")
    reset.set_defaults(func=cmd_user_reset)

    passwd = sub.add_parser("passwd", parents=[home], help="set a new generated password")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_passwd)

    doctor = sub.add_parser("doctor", parents=[home], help="check the set-up and say what to fix")
    doctor.set_defaults(func=cmd_doctor)

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except LoophubError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
