import os
import subprocess
import sys
import time

import pytest

import loophub
from loophub.cli import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "loophub.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"loophub {loophub.__version__}"


def test_doctor_on_a_new_home(tmp_path):
    out = run("doctor", "--home", str(tmp_path / "h"))
    assert "ok    database" in out.stdout and "ok    blob store" in out.stdout
    assert "ok    proxy" in out.stdout, out.stdout
    assert "not running" in out.stdout
    assert out.returncode == 0, out.stdout


def test_doctor_reports_a_bad_pool(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOPHUB_POOL", '[{"name": "n", "cpu": -1, "mem": "4G"}]')
    assert main(["doctor", "--home", str(tmp_path)]) == 1
    assert "FAIL  pool: LOOPHUB_POOL[0].cpu: must be a positive number" in capsys.readouterr().out


def test_token_before_the_hub_ever_ran(tmp_path, capsys):
    assert main(["token", "alice", "--home", str(tmp_path)]) == 2
    assert "run `loophub up" in capsys.readouterr().err


def test_user_add_and_passwd(tmp_path, capsys):
    home = str(tmp_path)
    assert main(["user", "add", "ann", "--home", home]) == 0
    assert "password:" in capsys.readouterr().out
    assert main(["user", "add", "ann", "--home", home]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["user", "add", "Bad Name", "--home", home]) == 2
    assert "invalid user name" in capsys.readouterr().err
    assert main(["passwd", "nobody", "--home", home]) == 2
    assert main(["passwd", "ann", "--home", home]) == 0


def test_up_refuses_a_busy_port(tmp_path, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["up", "--home", str(tmp_path), "--port", str(port)]) == 2
    assert "in use" in capsys.readouterr().err


def test_free_ports_are_below_the_ephemeral_range_and_distinct():
    """Port-0 binds (kernels, Dask) and source ports cannot take a port picked below it."""
    from loophub.ports import ephemeral_range, free_port, port_is_free

    start, _ = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(10_000 <= port < start and port_is_free(port) for port in ports)


@pytest.mark.hub
def test_up_says_why_when_the_api_port_is_taken(tmp_path):
    """The API cannot bind, so JupyterHub stops; `up` says so and shows the API's words."""
    import socket

    from loophub.ports import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "LOOPHUB_API_PORT": str(taken.getsockname()[1])}
        out = run("up", "--home", str(tmp_path), "--port", str(free_port()),
                  "--ready-timeout", "60", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "error: JupyterHub exited with status 1; the hub's log is in" in out.stderr
    assert "cannot listen on 127.0.0.1" in out.stderr and "LOOPHUB_API_PORT" in out.stderr


def test_the_log_tail_keeps_the_hubs_error_above_the_proxys_poll_noise(tmp_path):
    """`up` polls /hub/health while the hub starts; CHP logs a 404 for each poll until the
    hub's route exists. A CI failure once showed 40 of those and not why the hub died."""
    from loophub.extensions.cli import log_tail

    log = tmp_path / "jupyterhub.log"
    noise = "2026-12-07T11:22:08.693Z [ConfigProxy] error: 404 GET /hub/error/404 \n"
    log.write_text("[C 2026-12-07 11:22:08.690 JupyterHub app:3810] Service apps exited with "
                   "status 1\n" + noise * 60 + "[I JupyterHub] 404 GET /hub/nowhere\n")
    tail = log_tail(log, 5)
    assert tail.startswith("[C 2026-12-07") and "Service apps exited" in tail
    assert "[ConfigProxy]" not in tail and tail.endswith("404 GET /hub/nowhere\n")
    assert log_tail(tmp_path / "absent.log") == ""


def test_internal_ports_never_take_the_public_one(monkeypatch):
    """The public port is checked free but bound later (by the proxy): a pick for the hub
    that landed on it once made the hub exit and the proxy loop 404s to itself."""
    import loophub.ports
    from loophub.extensions.cli import INTERNAL_PORTS, pick_ports

    public = 12_345
    picks = iter([public, public, 12_346, public, 12_346, 12_347, 12_348, 12_349, 12_350])
    monkeypatch.setattr(loophub.ports.random, "randrange", lambda lo, hi: next(picks))
    monkeypatch.setattr(loophub.ports, "_recent", loophub.ports.deque(maxlen=256))
    monkeypatch.setattr(loophub.ports, "port_is_free", lambda port, host="": True)
    ports = pick_ports(public, {})
    assert list(ports) == ["LOOPHUB_PORT", *INTERNAL_PORTS]
    assert ports["LOOPHUB_PORT"] == public
    assert sorted(ports.values()) == [public, 12_346, 12_347, 12_348, 12_349, 12_350]
    # a pinned port is kept, and no pick takes it
    picks = iter([12_400, 12_401, 12_402, 12_403, 12_404])
    assert pick_ports(public, {"LOOPHUB_API_PORT": "12400"})["LOOPHUB_API_PORT"] == 12_400
    with pytest.raises(ValueError, match=r"LOOPHUB_HUB_PORT and LOOPHUB_PORT are both port"):
        pick_ports(public, {"LOOPHUB_HUB_PORT": str(public)})


def test_up_stops_waiting_when_the_proxy_cannot_listen(tmp_path):
    """CHP logs EADDRINUSE for the public port and keeps running: no 120 s wait for that."""
    from loophub.extensions.cli import _wait_ready
    from loophub.ports import free_port

    log = tmp_path / "jupyterhub.log"
    log.write_text("an earlier start's EADDRINUSE: address already in use 127.0.0.1:1\n")
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("[ConfigProxy] error: Uncaught Exception: listen EADDRINUSE: address already "
                "in use 127.0.0.1:43210\n")
    hub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        url = f"http://127.0.0.1:{free_port()}"
        started = time.monotonic()
        problem = _wait_ready(hub, url, 30, (log, offset))
        assert time.monotonic() - started < 5
        assert problem.startswith("the proxy cannot listen on 127.0.0.1:43210: another process")
        assert _wait_ready(hub, url, 1, (log, log.stat().st_size)) == (
            "JupyterHub did not answer within 1 s")
    finally:
        hub.kill()
        hub.wait()


@pytest.mark.hub
def test_up_reuses_its_home_and_stops_everything(tmp_path):
    """A second `up` on the same home keeps accounts and tokens; Ctrl-C leaves no process."""
    import requests

    from tests.hubtest import start_hub

    home = tmp_path / "home"
    first = start_hub(home)
    token = first.token("zoe")
    assert first.admin_password
    assert first.stop() == 0
    pids = [(home / f).read_text() for f in ("jupyterhub.pid", "proxy.pid")
            if (home / f).exists()]
    assert pids == []
    second = start_hub(home)
    try:
        assert second.admin_password == ""  # the admin exists: no new password printed
        resp = requests.get(f"{second.api}/me", headers={"Authorization": f"token {token}"},
                            timeout=30)
        assert resp.json()["name"] == "zoe"
    finally:
        second.stop()


def test_a_second_ctrl_c_does_not_leave_the_hub_running(tmp_path):
    """Two interrupts in a row (an impatient Ctrl-C, a supervisor's SIGTERM after it):
    `up` still stops the hub, its proxy and its services before it exits."""
    import signal
    import time

    from tests.hubtest import start_hub

    home = tmp_path / "home"
    hub = start_hub(home)
    pid = int((home / "jupyterhub.pid").read_text())
    hub.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    hub.proc.send_signal(signal.SIGTERM)
    assert hub.proc.wait(60) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (home / "proxy.pid").exists() and not (home / "jupyterhub.pid").exists()


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_doctor_writes_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOOPHUB_HOME"}
    out = subprocess.run([sys.executable, "-m", "loophub.cli", "doctor"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / ".loophub").exists() and _tree(tmp_path) == []
    assert "loophub up" in out.stdout  # what creates the home


def test_doctor_leaves_an_existing_home_as_it_was(tmp_path, capsys):
    home = tmp_path / "h"
    assert main(["user", "add", "ann", "--home", str(home)]) == 0  # a home with a database
    before = {p: p.stat().st_mtime_ns for p in home.rglob("*")}
    assert main(["doctor", "--home", str(home)]) == 0
    assert {p: p.stat().st_mtime_ns for p in home.rglob("*")} == before
    assert "ok    database" in capsys.readouterr().out


def test_doctor_reports_a_stopped_hub(tmp_path, capsys):
    from loophub.ports import free_port

    (tmp_path / "run.json").write_text(f'{{"url": "http://127.0.0.1:{free_port()}"}}')
    assert main(["doctor", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok    hub: stopped" in out and "loophub up" in out, out
