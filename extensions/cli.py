"""The hub side of the `loophub` command: `up` runs the platform (JupyterHub, the proxy,
the loophub API as a hub service) and `token` issues hub API tokens. They live with the
adapters because they start and read JupyterHub; loophub.cli finds them through the
``loophub.commands`` entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import loophub
from loophub.cli import _get, proxy_command
from loophub.ports import free_port, port_is_free
from loophub.settings import Settings


def hub_config_file() -> Path:
    import loophub.hub_config

    return Path(loophub.hub_config.__file__).parent / "jupyterhub_config.py"


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
    try:
        ports = pick_ports(args.port, os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        # a second Ctrl-C (or a supervisor's SIGTERM) must not cut the stop short: `up`
        # would exit and leave the hub running without its parent
        before = {sig: signal.signal(sig, signal.SIG_IGN)
                  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            _stop(hub, settings.home)
        finally:
            for sig, handler in before.items():  # as they were (`up` run in a process)
                signal.signal(sig, handler)
        (settings.home / "run.json").unlink(missing_ok=True)


INTERNAL_PORTS = ("LOOPHUB_HUB_PORT", "LOOPHUB_API_PORT", "LOOPHUB_GATEWAY_PORT",
                  "LOOPHUB_APPS_PORT", "LOOPHUB_PROXY_API_PORT")


def pick_ports(public: int, environ: Mapping[str, str]) -> dict[str, int]:
    """The public port and the internal ones: each picked free at every start (several
    hubs can share a machine) unless pinned in ENVIRON (LOOPHUB_HUB_PORT etc.), and all
    distinct. The public port is free but not yet bound when these are picked, so a pick
    could land on it: the hub then cannot bind, and the proxy, whose error target is the
    hub's port, sends its 404s to itself in a loop (a CI run once failed so)."""
    pinned = {name: int(environ[name]) for name in INTERNAL_PORTS if environ.get(name)}
    seen: dict[int, str] = {}
    for name, port in {"LOOPHUB_PORT": public, **pinned}.items():
        if port in seen:
            raise ValueError(f"{name} and {seen[port]} are both port {port}; give each "
                             "its own (unset the LOOPHUB_*_PORT variables to pick them free)")
        seen[port] = name
    ports = {"LOOPHUB_PORT": public}
    for name in INTERNAL_PORTS:
        ports[name] = pinned.get(name) or free_port(avoid={*ports.values(), *seen})
    return ports


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


# CHP's line for each readiness poll that arrives before the hub's route exists (or after
# the hub died): dozens of them would push the hub's own error out of a short tail.
_POLL_NOISE = re.compile(r"\[ConfigProxy\].*\b404 GET /hub/error/404")


def log_tail(path: Path, lines: int = 40) -> str:
    """The last LINES lines of a log, less the proxy's lines about our readiness polling
    ("" when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines(keepends=True) if not _POLL_NOISE.search(line)]
    return "".join(kept[-lines:])


def _stop(proc: subprocess.Popen, home: Path, grace: float = 15) -> None:
    """SIGTERM lets JupyterHub stop its proxy, services and servers; SIGKILL if it hangs.
    Whatever the hub did not stop is stopped here: the proxy runs in a session of its own
    (killing the hub's process group does not reach it) and would keep the public port."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for name, marker in (("proxy.pid", "configurable-http-proxy"),):
        stop_leftover(home / name, marker)


def stop_leftover(pid_file: Path, marker: str, grace: float = 5) -> bool:
    """Stop the process PID_FILE names if it still runs and its command line has MARKER
    (a pid file can outlive its process and the pid be reused). True if one was stopped."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return False
    if marker not in cmdline:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return True
            time.sleep(0.1)
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``loophub up`` and ``loophub token``."""
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
