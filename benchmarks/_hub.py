"""Shared by the benchmarks that run a real platform (not a test module).

Besides the test harness's ``start_hub``/``RunningHub``: ``start_platform`` runs the
platform of another commit (``checkout``: an old commit to measure before/after in
one run, or a fixed commit while others edit the working tree), ``code_version`` says
which code a run measured,
``api_pid`` finds the loophub API service's process and ``cpu_seconds`` reads its CPU
time (user + system, all threads) with nanosecond resolution from /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hubtest import RunningHub, start_hub

__all__ = ["Platform", "RunningHub", "api_pid", "checkout", "code_version", "cpu_seconds",
           "old_checkout", "start_hub", "start_platform"]

REPO = Path(__file__).resolve().parent.parent
# setup.cfg's package_dir: these folders are imported as loophub.<name>
MAPPED = ("spawner", "extensions", "widgets", "serving", "hub_config")


@dataclass
class Platform(RunningHub):
    """A RunningHub whose CLI calls (``token``) run the same code as its processes."""

    env: dict = field(default_factory=dict)

    def token(self, user: str, *, admin: bool = False) -> str:
        cmd = [sys.executable, "-m", "loophub.cli", "token", user, "--home", str(self.home)]
        out = subprocess.run(cmd + (["--admin"] if admin else []), capture_output=True,
                             text=True, check=True, timeout=60,
                             env={**os.environ, **self.env})
        return out.stdout.strip()


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def code_version(ref: str | None = None) -> str:
    """The commit a run measures: REF's, or this working tree's HEAD, marked "+dirty"
    when tracked files differ from it (others' edits in progress are measured too)."""
    if ref:
        return git("rev-parse", "--short=10", ref)
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short=10", "HEAD") + ("+dirty" if dirty else "")


def checkout(ref: str, where: Path | None = None) -> dict:
    """The environment that runs REF's loophub (a worktree at WHERE, by default
    <tmp>/loophub-<commit>); see ``old_checkout``."""
    sha = git("rev-parse", ref)
    where = where or Path(tempfile.gettempdir()) / f"loophub-{sha[:10]}"
    return old_checkout(sha, where)


def old_checkout(commit: str, where: Path) -> dict:
    """The environment that runs COMMIT's loophub with this interpreter and its packages.

    COMMIT is checked out as a git worktree at WHERE (kept for the next run); a tree of
    links beside it lays the folders out as the ``loophub`` package (setup.cfg's
    package_dir) and goes first on PYTHONPATH, ahead of the editable install of this
    checkout; the proxy is this checkout's. Returns the variables to add to the
    environment."""
    where = Path(where)
    if not (where / ".git").exists():
        git("worktree", "add", "--detach", str(where), commit)
    head, want = git("rev-parse", "HEAD", cwd=where), git("rev-parse", commit)
    if head != want:
        raise RuntimeError(f"{where} holds {head[:10]}, not {commit}: remove it "
                           f"(git worktree remove {where}) or pass another path")
    pkg = where.parent / f"{where.name}-path" / "loophub"
    pkg.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (where / "loophub").iterdir()}
    links.update({name: where / name for name in MAPPED})
    for name, target in links.items():
        link = pkg / name
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target)
    path = os.pathsep.join(filter(None, [str(pkg.parent), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path}
    proxy = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
    if "LOOPHUB_PROXY" not in os.environ and proxy.exists():
        env["LOOPHUB_PROXY"] = str(proxy)  # the old tree has no node_modules of its own
    return env


def start_platform(home: Path, *, env: dict | None = None, code_env: dict | None = None,
                   **kw) -> Platform:
    """``start_hub``, and the same CODE_ENV (e.g. ``old_checkout``'s) for its CLI calls."""
    code_env = dict(code_env or {})
    hub = start_hub(home, env={**(env or {}), **code_env}, **kw)
    return Platform(hub.url, hub.home, hub.admin_password, hub.proc, hub.output, code_env)


def api_pid(hub: RunningHub) -> int:
    """The pid of HUB's loophub API service (the process that runs the routes)."""
    import psutil

    home = str(hub.home.resolve())
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "loophub.extensions.api" in cmd and \
                (proc.info["environ"] or {}).get("LOOPHUB_HOME") == home:
            return proc.pid
    raise RuntimeError(f"no loophub API process for {home}")


def cpu_seconds(pid: int) -> float:
    """CPU seconds PID has run, all its threads, from /proc/PID/task/*/schedstat (ns);
    /proc/PID/stat's utime+stime (clock ticks) where schedstat is missing. Threads that
    ended are counted only by stat: read both around short windows, not across a
    thread pool's life."""
    total, found = 0, False
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (FileNotFoundError, ProcessLookupError):
                continue
    except FileNotFoundError:
        pass
    if found:
        return total / 1e9
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
