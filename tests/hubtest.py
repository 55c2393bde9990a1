"""Helpers for tests that run the real platform: start `loophub up`, get tokens,
run code in a user's kernel."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from loophub.extensions.cli import log_tail
from loophub.ports import free_port


@dataclass
class RunningHub:
    url: str
    home: Path
    admin_password: str
    proc: subprocess.Popen
    output: Path

    @property
    def api(self) -> str:
        return f"{self.url}/services/loophub/api"

    def token(self, user: str, *, admin: bool = False) -> str:
        cmd = [sys.executable, "-m", "loophub.cli", "token", user, "--home", str(self.home)]
        out = subprocess.run(cmd + (["--admin"] if admin else []), capture_output=True,
                             text=True, check=True, timeout=60)
        return out.stdout.strip()

    def hub_api(self, token: str, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.url}/hub/api/{path.lstrip('/')}",
                                headers={"Authorization": f"token {token}"}, timeout=60, **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_hub(home: Path, *, env: dict | None = None, timeout: float = 120,
              args: tuple[str, ...] = (), port: int | None = None) -> RunningHub:
    """`loophub up` on a free port; returns once the hub and the API answer."""
    port = port or free_port()
    output = home.parent / f"{home.name}-up-{uuid.uuid4().hex[:6]}.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loophub.cli", "up", "--port", str(port), "--home", str(home),
             *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text()
        if "Press Ctrl-C to stop." in text:
            match = re.search(r"with password:\s*\n\s*(\S+)", text)
            return RunningHub(f"http://127.0.0.1:{port}", home,
                              match.group(1) if match else "", proc, output)
        if proc.poll() is not None:
            raise RuntimeError(f"loophub up exited {proc.returncode}:\n{text}")
        time.sleep(0.3)
    proc.kill()
    log = home / "jupyterhub.log"
    raise RuntimeError(f"loophub up not ready in {timeout} s:\n{output.read_text()}\n"
                       f"last lines of {log}:\n{log_tail(log, 60)}")


def pids(command: str, *environ: str) -> list[int]:
    """Processes whose command line has COMMAND and whose environment has every ENVIRON
    string (e.g. a home folder, 'JUPYTERHUB_USER=bob')."""
    found = []
    out = subprocess.run(["pgrep", "-f", command], capture_output=True, text=True).stdout
    for pid in out.split():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if all(marker.encode() in env for marker in environ):
            found.append(int(pid))
    return found


def spawn_server(hub: RunningHub, admin_token: str, user: str, timeout: float = 120) -> None:
    resp = hub.hub_api(admin_token, "POST", f"users/{user}/server")
    assert resp.status_code in (201, 202), resp.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = hub.hub_api(admin_token, "GET", f"users/{user}").json()
        server = model.get("servers", {}).get("", {})
        if server.get("ready"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"server of {user} not ready in {timeout} s")


async def run_in_kernel(hub: RunningHub, user: str, token: str, code: str,
                        timeout: float = 120, kernel_name: str = "python3") -> str:
    """Start a kernel on USER's server, run CODE, return its stdout (raises on error)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    base = f"{hub.url}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{base}/kernels", headers=headers, json={"name": kernel_name},
                           timeout=60).json()
    ws_url = base.replace("http", "ws", 1) + f"/kernels/{kernel['id']}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            raw = await conn.read_message()
            if raw is None:
                raise RuntimeError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise RuntimeError("kernel error: " + "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
        raise TimeoutError("kernel did not finish in time")
    finally:
        conn.close()
        requests.delete(f"{base}/kernels/{kernel['id']}", headers=headers, timeout=30)
