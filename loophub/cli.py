"""The `loophub` command: run the platform, issue tokens, check the set-up.

Each room adds its own subcommands through a ``register(subparsers)`` function
(see COMMAND_MODULES); handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import loophub
from loophub.errors import LoophubError
from loophub.ports import free_port, port_is_free
from loophub.settings import Settings

COMMAND_MODULES: list[str] = [
    "loophub.scheduler.cli", "loophub.datasets.cli", "loophub.spawner.kernels"]
REPO = Path(__file__).resolve().parent.parent


def hub_config_file() -> Path:
    import loophub.hub_config

    return Path(loophub.hub_config.__file__).parent / "jupyterhub_config.py"


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


# --- up ---------------------------------------------------------------------------


def ensure_first_admin(settings: Settings) -> tuple[str, str] | None:
    """Create the first admin on a new home; returns (name, password) to print once."""
    from loophub.accounts import Accounts
    from loophub.store import Database

    db = Database(settings.db_url)
    try:
        accounts = Accounts(db)
        if accounts.admins():
            return None
        return "admin", accounts.create("admin", admin=True, actor="loophub up")
    finally:
        db.dispose()


def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env(args.home)
    settings.ensure_dirs()
    if not port_is_free(args.port, args.ip):
        print(f"error: port {args.port} on {args.ip} is in use; stop what uses it or pass "
              "--port", file=sys.stderr)
        return 2
    proxy = proxy_command()
    if not proxy:
        print("error: configurable-http-proxy not found; run `make install` (it installs it "
              "into node_modules/) or set LOOPHUB_PROXY", file=sys.stderr)
        return 2
    created = ensure_first_admin(settings)
    # Internal ports are picked free each start (several hubs can share a machine);
    # set LOOPHUB_HUB_PORT etc. to pin them.
    ports = {"LOOPHUB_PORT": args.port, **{
        name: int(os.environ.get(name) or free_port())
        for name in ("LOOPHUB_HUB_PORT", "LOOPHUB_API_PORT", "LOOPHUB_PROXY_API_PORT")}}
    env = {**os.environ, **settings.env(), "LOOPHUB_IP": args.ip, "LOOPHUB_PROXY": proxy,
           "LOOPHUB_KEEP_SERVERS": "1" if args.keep_servers else "",
           **{k: str(v) for k, v in ports.items()}}
    (settings.home / "run.json").write_text(json.dumps(
        {"url": f"http://{args.ip}:{args.port}", **ports, "pid": os.getpid()}))
    log_path = settings.home / "jupyterhub.log"
    log = open(log_path, "ab")  # noqa: SIM115 (lives as long as the hub)
    watch = None if args.verbose else (log_path, log.tell())  # this start's part of it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    hub = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(hub_config_file())],
        cwd=settings.home, env=env, stdout=None if args.verbose else log,
        stderr=subprocess.STDOUT if not args.verbose else None, start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    url = f"http://{args.ip}:{args.port}"
    print(f"loophub {loophub.__version__}: starting JupyterHub (log: {log_path}) ...",
          flush=True)
    try:
        if problem := _wait_ready(hub, url, args.ready_timeout, watch):
            if args.verbose:
                print(f"error: {problem}; the hub's log is above", file=sys.stderr)
            else:
                print(f"error: {problem}; the hub's log is in {log_path}\n{log_tail(log_path)}",
                      file=sys.stderr)
            return 1
        elapsed = time.monotonic() - started
        print(f"\nloophub is running at {url}/  (ready in {elapsed:.1f} s)")
        print(f"  API: {url}/services/loophub/api/  (OpenAPI: .../api/openapi.json)")
        if created:
            print(f"  First admin account created. Log in as '{created[0]}' with password:\n"
                  f"      {created[1]}\n  (shown once; reset with `loophub passwd admin`)")
        else:
            print("  Log in with your loophub account (add users: `loophub user add NAME`).")
        print(f"  Token for scripts: loophub token NAME --home {settings.home}")
        print("Press Ctrl-C to stop.", flush=True)
        return hub.wait()
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        _stop(hub)
        (settings.home / "run.json").unlink(missing_ok=True)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _die_with_parent() -> None:
    """Linux: the hub gets SIGTERM if `loophub up` is killed outright, so it never lingers."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_ready(hub: subprocess.Popen, url: str, timeout: float,
                log: tuple[Path, int] | None = None) -> str | None:
    """None once the hub and the API answer; otherwise what did not.

    LOG (path, offset of this start) is watched for the proxy failing to bind: CHP logs
    that and keeps running, so the hub would start and the wait would only time out.
    """
    deadline = time.monotonic() + timeout
    hub_ok = False
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            return f"JupyterHub exited with status {hub.returncode}"
        if log:
            address, offset = _address_in_use(*log)
            if address:
                return (f"the proxy cannot listen on {address}: another process took the "
                        "port after `loophub up` checked it; run again, or pick another --port")
            log = (log[0], offset)
        hub_ok = _get(f"{url}/hub/health") == 200
        if hub_ok and _get(f"{url}/services/loophub/api/health") == 200:
            return None
        time.sleep(0.2)
    what = "the loophub API service (a JupyterHub service)" if hub_ok else "JupyterHub"
    return f"{what} did not answer within {timeout:.0f} s"


def _address_in_use(log: Path, offset: int) -> tuple[str | None, int]:
    """CHP's EADDRINUSE address in the whole lines written since OFFSET, and the offset
    to read from next time (each poll reads only what is new)."""
    with open(log, "rb") as f:
        f.seek(offset)
        new = f.read()
    complete = new[: new.rfind(b"\n") + 1]  # a line still being written is read next time
    match = re.search(rb"EADDRINUSE: address already in use (\S+)", complete)
    return (match.group(1).decode() if match else None), offset + len(complete)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last LINES lines of a log ("" when it does not exist)."""
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM lets JupyterHub stop its proxy, services and servers; SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- tokens and accounts -------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from loophub.extensions.hubtools import issue_token

    settings = Settings.from_env(args.home)
    if settings.hub_db_url.startswith("sqlite:///") and not Path(
            settings.hub_db_url.removeprefix("sqlite:///")).exists():
        print(f"error: no hub database in {settings.home}; run `loophub up --home "
              f"{settings.home}` first", file=sys.stderr)
        return 2
    print(issue_token(settings.hub_db_url, args.user, admin=args.admin))
    return 0


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


def cmd_doctor(args: argparse.Namespace) -> int:
    from loophub.pool import load_pool
    from loophub.store import BlobStore, Database

    settings = Settings.from_env(args.home)
    settings.ensure_dirs()
    print(f"loophub {loophub.__version__}, home {settings.home}")

    def proxy() -> str:
        cmd = proxy_command()
        if not cmd:
            raise RuntimeError("configurable-http-proxy not found: run `make install`")
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=30)
        return f"{cmd} {out.stdout.strip()}"

    def database() -> str:
        db = Database(settings.db_url)
        tables = len(db.table_names())
        db.dispose()
        return f"{settings.db_url.split('@')[-1]} ({tables} tables, migrations applied)"

    def blobs() -> str:
        BlobStore(settings.blob_url).check()
        return f"{settings.blob_url} (write, read, verify ok)"

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
        if status != 200:
            raise RuntimeError(f"run.json says {url} but /hub/health answers {status or 'nothing'}")
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

    up = sub.add_parser("up", parents=[home], help="run the platform (JupyterHub + loophub API)")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--ip", default="127.0.0.1")
    up.add_argument("--ready-timeout", type=float, default=120)
    up.add_argument("-v", "--verbose", action="store_true", help="hub log to the terminal")
    up.add_argument("--keep-servers", action="store_true",
                    help="leave single-user servers running when the hub stops (a restart "
                         "finds them again); default: Ctrl-C stops everything")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", parents=[home], help="print a hub API token for USER")
    token.add_argument("user")
    token.add_argument("--admin", action="store_true", help="make USER a hub admin")
    token.set_defaults(func=cmd_token)

    user = sub.add_parser("user", help="manage login accounts")
    user_sub = user.add_subparsers(dest="action", required=True)
    add = user_sub.add_parser("add", parents=[home], help="create an account")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=cmd_user_add)

    passwd = sub.add_parser("passwd", parents=[home], help="set a new generated password")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_passwd)

    doctor = sub.add_parser("doctor", parents=[home], help="check the set-up and say what to fix")
    doctor.set_defaults(func=cmd_doctor)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
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
