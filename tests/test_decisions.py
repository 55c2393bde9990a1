"""Scheduler decisions are acted on: a preempted server is stopped (and its user told why),
and what the scheduler counts as running agrees with what actually runs after
preemptions, killed servers and a restart of the API service (real hub, proxy, spawner).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.hubtest import pids, start_hub

pytestmark = pytest.mark.hub
POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 4}]'
HUB_CONFIG = """
c.Spawner.poll_interval = 2
c.FairSpawner.long_poll = 2
c.FairSpawner.profiles = [
    {"slug": "small", "display_name": "Small", "cpu": 0.25, "mem": "512M", "default": True},
    {"slug": "spot", "display_name": "Spot (preemptible)", "cpu": 0.25, "mem": "512M",
     "gpu": 2, "preemptible": True},
]
c.FairSpawner.custom_limits = {"cpu": 2, "mem": "4G", "gpu": 4}
"""
API_CONFIG = """
c.LoophubAPI.scheduler_policy = "drf"
c.LoophubAPI.scheduler_config = {"preemption": True, "preemption_grace": 0}
c.LoophubAPI.reconcile_interval = 2
c.LoophubAPI.reconcile_grace = 5
"""


@pytest.fixture(scope="module")
def dhub(tmp_path_factory):
    home = tmp_path_factory.mktemp("decisions") / "home"
    home.mkdir(parents=True)
    (home / "loophub_api_config.py").write_text(API_CONFIG)
    config = home.parent / "hub_config.py"
    config.write_text(HUB_CONFIG)
    hub = start_hub(home, env={"LOOPHUB_POOL": POOL, "LOOPHUB_HUB_CONFIG": str(config)})
    hub.admin = hub.token("root", admin=True)
    yield hub
    hub.stop()


def spawn(hub, user, options, name=""):
    hub.token(user)  # the user exists
    path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
    resp = hub.hub_api(hub.admin, "POST", path, json=options)
    assert resp.status_code in (201, 202), resp.text


def hub_servers(hub) -> dict[tuple[str, str], dict]:
    """(user, server) -> the hub's model of each server that runs or starts."""
    users = hub.hub_api(hub.admin, "GET", "users?state=active").json()
    users = users["items"] if isinstance(users, dict) else users
    return {(u["name"], name): model for u in users
            for name, model in (u.get("servers") or {}).items()}


def ready(hub, user, name="") -> bool:
    return bool(hub_servers(hub).get((user, name), {}).get("ready"))


def scheduled(hub) -> dict[tuple[str, str], dict]:
    """(owner, server) -> the active server request, as the scheduler sees it."""
    resp = requests.get(f"{hub.api}/scheduler/queue", timeout=30,
                        headers={"Authorization": f"token {hub.admin}"})
    return {(r["owner"], r["server"]): r for r in resp.json()["requests"]
            if r["kind"] == "server"}


def last_request(hub, user, name="") -> dict:
    resp = requests.get(f"{hub.api}/scheduler/requests", timeout=30,
                        params={"key": f"server:{user}/{name}", "limit": 1},
                        headers={"Authorization": f"token {hub.admin}"})
    return resp.json()["requests"][0]


def wait_for(check, what, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise TimeoutError(what)


def agree(hub) -> bool:
    """Every running server request has a server the hub runs, and every ready server a
    running request: the scheduler's view and the processes agree."""
    up = {k for k, s in hub_servers(hub).items() if s.get("ready")}
    running = {k for k, r in scheduled(hub).items() if r["state"] == "running"}
    return up == running


def test_a_preempted_server_is_stopped_and_its_user_told_why(dhub):
    # alice holds every GPU with two preemptible servers of 2 GPUs each
    spawn(dhub, "alice", {"profile": "spot"})
    spawn(dhub, "alice", {"profile": "spot"}, name="two")
    wait_for(lambda: ready(dhub, "alice") and ready(dhub, "alice", "two"), "alice ready")
    # bob (share 0, below his fair share) asks for 2 GPUs: one of alice's servers goes
    spawn(dhub, "bob", {"profile": "custom", "cpu": 0.25, "mem": "512M", "gpu": 2})
    wait_for(lambda: len([k for k in hub_servers(dhub) if k[0] == "alice"]) == 1,
             "one of alice's servers stopped")
    wait_for(lambda: ready(dhub, "bob"), "bob ready")
    [(_, gone)] = [k for k in (("alice", ""), ("alice", "two")) if k not in hub_servers(dhub)]
    ended = last_request(dhub, "alice", gone)
    assert ended["state"] == "done" and ended["reason"].startswith("preempted")
    assert ended["ended_by"] == "scheduler"
    history = requests.get(f"{dhub.api}/scheduler/requests/{ended['id']}/history", timeout=30,
                           headers={"Authorization": f"token {dhub.admin}"}).json()
    actions = [(t["action"], t["state"]) for t in history["transitions"]]
    assert actions == [("submit", "queued"), ("start", "running"), ("preempt", "queued"),
                       ("end", "done")]
    preempt, end = history["transitions"][2:]
    assert preempt["stimulus"] == end["stimulus"]  # one event caused both
    # alice's own history answers "why did my server stop?" (her token, not an admin's)
    mine = requests.get(f"{dhub.api}/scheduler/requests/{ended['id']}/history", timeout=30,
                        headers={"Authorization": f"token {dhub.token('alice')}"})
    assert mine.status_code == 200 and mine.json() == history
    dhub.gone = gone
    wait_for(agree_with(dhub), "views agree after the preemption")


@pytest.mark.browser
def test_the_fairness_page_shows_the_queue_and_why_servers_stopped(dhub):
    """The admins' page, signed in with the hub cookie: its requests carry the hub's XSRF
    token (they all failed with 401 before), and it says who stopped what and why."""
    from tests.browser import chromium_page, hub_login, screenshot

    with chromium_page() as page:
        hub_login(page, dhub.url, "admin", dhub.admin_password)
        page.goto(f"{dhub.url}/services/loophub/fairness")
        page.wait_for_function(
            "document.querySelector('#ended tbody').innerText.includes('preempted')",
            timeout=30_000)
        assert not page.is_visible("#error")
        queue = page.inner_text("#queue tbody")
        assert "bob" in queue and "server" in queue
        ended = page.inner_text("#ended tbody")
        assert "alice" in ended and "scheduler" in ended and "preempted" in ended
        assert "gave its resources to bob's server" in ended
        screenshot(page, "platform/fairness.png")


def agree_with(hub):
    return lambda: agree(hub)


def progress_of_a_start(hub, user: str, options: dict, name: str) -> list[str]:
    """The progress events of a start, read while it is pending: the POST runs beside the
    reader, which opens the stream as soon as the hub says the start is pending (a stream
    opened after the server is ready holds only the "ready" event, and a quick start may
    be ready before a POST returns)."""
    import threading

    poster = threading.Thread(target=spawn, args=(hub, user, options, name))
    poster.start()
    path = f"users/{user}/servers/{name}/progress" if name else f"users/{user}/server/progress"
    events: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with requests.get(f"{hub.url}/hub/api/{path}", stream=True, timeout=60,
                              headers={"Authorization": f"token {hub.admin}"}) as resp:
                if resp.status_code in (400, 404):  # not pending yet: the POST has not arrived
                    time.sleep(0.02)
                    continue
                assert resp.status_code == 200, resp.text
                for line in resp.iter_lines(decode_unicode=True):
                    if line.startswith("data:"):
                        events.append(line)
                        if '"ready": true' in line or len(events) > 20:
                            break
                return events
        raise AssertionError(f"no progress stream for {user}'s start in 60 s")
    finally:
        poster.join(timeout=60)


def test_the_next_start_shows_why_the_last_server_stopped(dhub):
    gone = dhub.gone
    assert last_request(dhub, "alice", gone)["reason"].startswith("preempted")
    events = progress_of_a_start(dhub, "alice", {"profile": "small"}, gone)
    assert any("Your last server was stopped at" in e and "preempted" in e for e in events), \
        events
    wait_for(lambda: ready(dhub, "alice", gone), "alice ready")
    wait_for(agree_with(dhub), "views agree after alice's restart")


def _api_pid(hub) -> int:
    [pid] = pids("loophub.extensions.api", str(hub.home))
    return pid


def test_kills_and_an_api_restart_leave_views_and_processes_in_agreement(dhub):
    before = scheduled(dhub)
    assert before[("bob", "")]["state"] == "running"
    assert before[("alice", "two")]["state"] == "running"
    # the API service dies; while it is down, bob's server is killed outright
    api = _api_pid(dhub)
    os.kill(api, signal.SIGKILL)
    os.killpg(_server_pid(dhub, "bob"), signal.SIGKILL)
    # the hub restarts its service; nothing queued or running is lost, and bob's request
    # ends once the restarted service sees his server is gone
    wait_for(lambda: _api_up(dhub) and _api_pid(dhub) != api, "the API service back")
    assert scheduled(dhub)[("alice", "two")]["id"] == before[("alice", "two")]["id"]
    wait_for(lambda: ("bob", "") not in scheduled(dhub), "bob's request ended")
    assert last_request(dhub, "bob")["state"] == "done"
    wait_for(agree_with(dhub), "views agree after the kill and the restart")


def _server_pid(hub, user) -> int:
    [pid] = pids("jupyterhub.singleuser", str(hub.home), f"JUPYTERHUB_USER={user}\0",
                 "JUPYTERHUB_SERVER_NAME=\0")
    return pid


def _api_up(hub) -> bool:
    try:
        return requests.get(f"{hub.api}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_an_admin_release_stops_the_server_it_held(dhub):
    request = scheduled(dhub)[("alice", "two")]
    resp = requests.delete(f"{dhub.api}/scheduler/requests/{request['id']}", timeout=30,
                           params={"reason": "maintenance"},
                           headers={"Authorization": f"token {dhub.admin}"})
    assert resp.status_code == 200 and resp.json()["state"] == "done"
    wait_for(lambda: ("alice", "two") not in hub_servers(dhub), "alice's server stopped")
    assert last_request(dhub, "alice", "two")["reason"] == "maintenance"
    wait_for(agree_with(dhub), "views agree after the admin's release")

