"""SlurmBackend without Slurm: the sbatch script, the shared squeue poller, the port callback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from jupyterhub import apihandlers

from loophub.spawner.backends import Placement
from loophub.spawner.backends.slurm import (
    PortReportError,
    SlurmBackend,
    SlurmConfigError,
    check_directive,
    find_spawner,
    parse_job_id,
    parse_port,
    report_port,
    resource_vars,
    slurm_time,
)
from loophub.spawner.backends.squeue import CommandResult, SqueuePoller, parse_squeue

from .fakes import FakeRunner, FakeSpawner, down, ok

GIB = 2**30


@pytest.fixture
def poller():
    """A fresh shared poller per test (the singleton is per hub process)."""
    SqueuePoller.clear_instance()
    instance = SqueuePoller.instance(fast_interval=0.01, interval=0.05)
    yield instance
    instance.jobs.clear()
    instance.cancels.clear()
    SqueuePoller.clear_instance()


def backend_for(spawner: FakeSpawner, **traits) -> SlurmBackend:
    return SlurmBackend(parent=None, log=spawner.log, **traits)


# -- (1) the sbatch script -------------------------------------------------------------------


def test_resources_come_from_the_placement():
    placement = Placement(node="n1", cpu=1.5, mem=3 * GIB, gpus=(0, 3), runtime=90)
    assert resource_vars(placement, "gpu", 3600) == {
        "nprocs": 2, "memory": "3072M", "gres": "gpu:2", "runtime": "0-00:02:00"}
    cpu_only = Placement(node="n1", cpu=4, mem=GIB + 1)
    assert resource_vars(cpu_only, "vgpu", 0) == {
        "nprocs": 4, "memory": "1025M", "gres": "", "runtime": ""}
    assert resource_vars(cpu_only, "gpu", 8 * 3600)["runtime"] == "0-08:00:00"


@pytest.mark.parametrize(("seconds", "expected"), [
    (1, "0-00:01:00"), (60, "0-00:01:00"), (61, "0-00:02:00"), (86400 + 60, "1-00:01:00")])
def test_slurm_time_rounds_up_to_minutes(seconds, expected):
    assert slurm_time(seconds) == expected


@pytest.mark.parametrize("placement", [
    Placement(node="n", cpu=0, mem=GIB), Placement(node="n", cpu=1, mem=0),
    Placement(node="n", cpu=1, mem=GIB, runtime=-5),
    Placement(node="n", cpu=1, mem=GIB, runtime=float("inf"))])
def test_impossible_resources_are_refused(placement):
    with pytest.raises(SlurmConfigError):
        resource_vars(placement, "gpu", 3600)


def test_the_script_requests_exactly_the_allocation(tmp_path):
    spawner = FakeSpawner(home=str(tmp_path / "alice"), args=["--debug"])
    spawner.user_options = {"partition": "vip", "options": "--uid=0"}  # must not leak in
    backend = backend_for(spawner, partition="debug", account="lab-1", qos="normal",
                          extra_directives=["--constraint=a100", "--exclusive"])
    placement = Placement(node="n1", cpu=2, mem=4 * GIB, gpus=(1,), runtime=3600)
    env = backend.job_env(spawner, placement)
    script = backend.build_script(spawner, placement, env)
    lines = script.splitlines()
    for directive in ("--cpus-per-task=2", "--mem=4096M", "--gres=gpu:1", "--time=0-01:00:00",
                      "--partition=debug", "--account=lab-1", "--qos=normal",
                      "--constraint=a100", "--exclusive", f"--chdir={tmp_path / 'alice'}",
                      "--job-name=loophub-alice", "--output=loophub-slurm-%j.log"):
        assert f"#SBATCH {directive}" in lines, directive
    venv = Path(sys.executable).parent  # the defaults: the hub's own environment
    assert f"{venv}/batchspawner-singleuser {venv}/jupyterhub-singleuser --debug" in lines
    assert "vip" not in script and "--uid" not in script
    assert spawner.api_token not in script  # secrets travel in the environment only
    export = next(line for line in lines if line.startswith("#SBATCH --export="))
    assert set(export.split("=", 1)[1].split(",")) == set(env)
    # Slurm picks the devices: the scheduler's indices must not override CUDA_VISIBLE_DEVICES
    assert "CUDA_VISIBLE_DEVICES" not in env and env["LOOPHUB_ALLOC_GPU_COUNT"] == "1"
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://0.0.0.0:0/user/alice/"


def test_gres_name_and_node_directives():
    spawner = FakeSpawner()
    placement = Placement(node="gpu-07", cpu=1, mem=GIB, gpus=(0, 1))
    backend = backend_for(spawner, gres_name="vgpu", node_directive="nodelist")
    script = backend.build_script(spawner, placement, backend.job_env(spawner, placement))
    assert "#SBATCH --gres=vgpu:2" in script and "#SBATCH --nodelist=gpu-07" in script
    backend = backend_for(spawner, node_directive="partition", partition="ignored")
    script = backend.build_script(spawner, placement, backend.job_env(spawner, placement))
    assert "#SBATCH --partition=gpu-07" in script and "ignored" not in script


def test_the_server_command_is_shell_quoted():
    spawner = FakeSpawner(cmd=["my-server"], args=["--name=a b; rm -rf ~"])
    backend = backend_for(spawner, singleuser_cmd=["batchspawner-singleuser"],
                          server_cmd=["/opt/venv/bin/jupyterhub-singleuser"])
    placement = Placement(node="n", cpu=1, mem=GIB)
    script = backend.build_script(spawner, placement, backend.job_env(spawner, placement))
    assert ("\nbatchspawner-singleuser /opt/venv/bin/jupyterhub-singleuser "
            "'--name=a b; rm -rf ~'\n") in script
    backend.server_cmd = []  # Spawner.cmd
    script = backend.build_script(spawner, placement, backend.job_env(spawner, placement))
    assert "\nbatchspawner-singleuser my-server '--name=a b; rm -rf ~'\n" in script


@pytest.mark.parametrize("trait", ["partition", "account", "qos"])
@pytest.mark.parametrize("value", ["a b", "x\n#SBATCH --uid=0", "-p", "a" * 65, "ä"])
def test_bad_names_are_refused(trait, value):
    with pytest.raises(SlurmConfigError, match=trait):
        SlurmBackend(**{trait: value})


@pytest.mark.parametrize("directive", [
    "--uid=0", "--export=ALL", "--output=/etc/passwd", "-w node", "--comment=a b",
    "--comment=x\n#SBATCH --uid=0", "--constraint=$(id)", "constraint=a100"])
def test_extra_directives_need_the_allow_list(directive):
    with pytest.raises(SlurmConfigError):
        check_directive(directive, SlurmBackend().allowed_directives)


def test_a_bad_directive_fails_the_launch_with_a_message():
    spawner = FakeSpawner()
    backend = backend_for(spawner, extra_directives=["--uid=0"])
    placement = Placement(node="n", cpu=1, mem=GIB)
    with pytest.raises(SlurmConfigError, match="allowed_directives"):
        backend.build_script(spawner, placement, backend.job_env(spawner, placement))


def test_bad_gres_name_is_refused():
    with pytest.raises(SlurmConfigError, match="gres_name"):
        resource_vars(Placement(node="n", cpu=1, mem=GIB, gpus=(0,)), "gpu:1,mem", 0)


@pytest.mark.parametrize(("output", "job_id"), [
    ("42\n", "42"), ("42;cluster2\n", "42"),
    ("sbatch: warning: something\n43\n", "43")])
def test_parse_job_id(output, job_id):
    assert parse_job_id(output) == job_id


@pytest.mark.parametrize("output", ["", "Submitted batch job\n", "error\n"])
def test_parse_job_id_refuses_garbage(output):
    with pytest.raises(RuntimeError, match="no job id"):
        parse_job_id(output)


# -- (2) the shared poller ---------------------------------------------------------------------


def test_parse_squeue():
    out = ("12 RUNNING node1 None\n13 PENDING n/a Resources\n14 COMPLETED node2 None\n"
           "15 PENDING n/a ReqNodeNotAvail, UnavailableNodes:n3\n16 RUNNING node3\ngarbage\n")
    assert parse_squeue(out) == {
        "12": ("RUNNING", "node1", ""), "13": ("PENDING", "", "Resources"),
        "14": ("COMPLETED", "node2", ""),
        "15": ("PENDING", "", "ReqNodeNotAvail, UnavailableNodes:n3"),
        "16": ("RUNNING", "node3", "")}


async def test_one_squeue_for_many_jobs(poller):
    ids = [str(i) for i in range(100, 150)]
    poller.runner = FakeRunner(squeue=[ok("".join(f"{i} RUNNING node{i}\n" for i in ids))])
    records = await asyncio.gather(*(poller.status(i) for i in ids))
    assert poller.runner.count("squeue") == 1
    argv = poller.runner.calls[0]
    assert argv[-2] == "-j" and argv[-1].split(",") == ids
    assert argv[:-2] == ["squeue", "-h", "-t", "all", "-o", "%i %T %B %r"]
    assert all(r.running and r.exit_status() is None for r in records)
    assert records[0].host == "node100"


async def test_states_map_to_exit_status(poller):
    poller.runner = FakeRunner(squeue=[ok("1 PENDING n/a\n2 COMPLETED n\n3 FAILED n\n"
                                          "4 CANCELLED n\n5 COMPLETING n\n")])
    statuses = [(await poller.status(j)).exit_status() for j in "123456"]
    assert statuses == [None, 0, 1, 1, 1, 1]  # 6: not listed at all, so gone


async def test_a_purged_job_is_gone(poller):
    poller.runner = FakeRunner(
        squeue=[CommandResult(1, "", "slurm_load_jobs error: Invalid job id specified\n")])
    record = await poller.status("77")
    assert record.state == "GONE" and record.exit_status() == 1


async def test_failures_keep_the_last_state_within_the_grace(poller):
    poller.grace = 300
    poller.runner = FakeRunner(squeue=[ok("9 RUNNING node1\n"), down()])
    assert (await poller.status("9")).exit_status() is None
    for _ in range(5):
        assert not await poller.query_once()
        record = poller.jobs["9"]
        assert record.state == "RUNNING" and record.exit_status() is None
    record.confirmed -= 301  # squeue has now failed for longer than the grace
    assert not await poller.query_once()
    assert record.state == "LOST" and record.exit_status() == 1


async def test_a_job_never_confirmed_is_alive_until_the_grace_ends(poller):
    """After a hub restart with slurmctld down: the job is assumed to run, for a while."""
    poller.runner = FakeRunner(squeue=[down()])
    record = await poller.status("5")
    assert record.state == "UNKNOWN" and record.exit_status() is None
    record.confirmed -= poller.grace + 1
    await poller.query_once()
    assert record.exit_status() == 1


async def test_the_background_loop_polls_and_stops_when_idle(poller):
    poller.runner = FakeRunner(squeue=[ok("3 PENDING n/a\n"), ok("3 RUNNING n\n")])
    assert (await poller.status("3")).state == "PENDING"
    for _ in range(100):
        if poller.jobs["3"].state == "RUNNING":
            break
        await asyncio.sleep(0.02)
    assert poller.jobs["3"].state == "RUNNING"  # without anyone asking
    poller.unwatch("3")
    await asyncio.sleep(0.2)
    assert poller._task is None or poller._task.done()


async def test_a_refused_cancellation_is_not_retried(poller):
    poller.runner = FakeRunner(scancel=[CommandResult(
        1, "", "scancel: error: Kill job error on job id 8: Access/permission denied\n")])
    assert await poller.cancel("8", ["scancel", "8"])
    assert not poller.cancels


async def test_failed_cancellations_are_retried(poller):
    poller.runner = FakeRunner(
        squeue=[ok("8 RUNNING n\n")],
        scancel=[CommandResult(1, "", "Unable to contact slurm controller"), ok()])
    poller.watch("8")
    assert not await poller.cancel("8", ["scancel", "8"])
    assert "8" in poller.cancels
    for _ in range(100):
        if not poller.cancels:
            break
        await asyncio.sleep(0.02)
    assert not poller.cancels and poller.runner.count("scancel") == 2


# -- the backend's flow with fake commands -------------------------------------------------------


async def test_launch_waits_for_running_and_the_port(poller, tmp_path):
    spawner = FakeSpawner(home=str(tmp_path / "h"))
    runner = FakeRunner(sbatch=[ok("42\n")],
                        squeue=[ok("42 PENDING n/a Priority\n"), ok("42 PENDING n/a Priority\n"),
                                ok("42 RUNNING node7 None\n")])
    poller.runner = runner
    backend = backend_for(spawner, runner=runner, node_addresses={"node7": "10.0.0.7"})
    placement = Placement(node="n", cpu=1, mem=GIB)

    async def report_later():
        await asyncio.sleep(0.05)
        report_port(spawner, {"port": 4321})

    reporter = asyncio.ensure_future(report_later())
    assert await backend.launch(spawner, placement) == ("10.0.0.7", 4321)
    await reporter
    assert backend.get_state() == {"job_id": "42", "host": "node7", "port": 4321}
    assert runner.calls[0] == ["sbatch", "--parsable"]
    assert "#SBATCH --cpus-per-task=1" in runner.inputs[0]
    assert "Slurm job 42 is pending (Priority) ..." in spawner.events  # on the pending page
    with pytest.raises(PortReportError) as err:  # started: no more port changes
        report_port(spawner, {"port": 1})
    assert err.value.status == 409


async def test_a_cancelled_launch_cancels_the_job(poller):
    spawner = FakeSpawner()
    runner = FakeRunner(sbatch=[ok("43\n")], squeue=[ok("43 RUNNING node1\n")])
    poller.runner = runner
    backend = backend_for(spawner, runner=runner)
    with pytest.raises(TimeoutError):  # the wrapper never reports a port
        await asyncio.wait_for(backend.launch(spawner, Placement(node="n", cpu=1, mem=GIB)),
                               0.3)
    assert ["scancel", "43"] in runner.calls


async def test_a_launch_cancelled_during_sbatch_still_cancels_the_job(poller):
    spawner = FakeSpawner()
    runner = FakeRunner(delays={"sbatch": 0.3}, sbatch=[ok("45\n")])
    poller.runner = runner
    backend = backend_for(spawner, runner=runner)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.launch(spawner, Placement(node="n", cpu=1, mem=GIB)),
                               0.05)
    assert runner.calls[-1] == ["scancel", "45"]


async def test_a_job_ending_before_it_starts_fails_the_launch(poller):
    spawner = FakeSpawner()
    runner = FakeRunner(sbatch=[ok("44\n")], squeue=[ok("44 FAILED node1\n")])
    poller.runner = runner
    backend = backend_for(spawner, runner=runner)
    with pytest.raises(RuntimeError, match="ended \\(FAILED\\)"):
        await backend.launch(spawner, Placement(node="n", cpu=1, mem=GIB))


async def test_sbatch_errors_reach_the_user(poller):
    spawner = FakeSpawner()
    runner = FakeRunner(sbatch=[CommandResult(1, "", "sbatch: error: invalid partition")])
    backend = backend_for(spawner, runner=runner)
    with pytest.raises(RuntimeError, match="invalid partition"):
        await backend.launch(spawner, Placement(node="n", cpu=1, mem=GIB))


async def test_load_state_finds_the_job_through_the_shared_poller(poller):
    poller.runner = FakeRunner(squeue=[ok("50 RUNNING node1\n51 RUNNING node2\n")])
    backends = [SlurmBackend(), SlurmBackend()]
    backends[0].load_state({"job_id": "50", "host": "node1", "port": 1})
    backends[1].load_state({"job_id": "51", "host": "node2", "port": 2})
    spawner = FakeSpawner()
    assert await asyncio.gather(*(b.poll(spawner) for b in backends)) == [None, None]
    assert poller.runner.count("squeue") == 1


# -- the port callback -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"port": "8888"}, {"port": True}, {"port": 0}, {"port": 65536}, {"port": 8888.0},
    {"port": 8888, "ip": "evil.example"}, {"cmd": ["rm"]}, [8888], None])
def test_the_callback_accepts_only_a_port(body):
    with pytest.raises(PortReportError) as err:
        parse_port(body)
    assert err.value.status == 400


def test_the_callback_finds_only_the_callers_server():
    a, b = FakeSpawner(), FakeSpawner()
    assert find_spawner([a, b], b.api_token) is b
    assert find_spawner([a, b], "nope") is None
    assert find_spawner([a, b], "") is None


def test_a_server_not_starting_cannot_set_a_port():
    with pytest.raises(PortReportError) as err:
        report_port(FakeSpawner(), {"port": 8888})
    assert err.value.status == 409


def test_batchspawners_own_handler_is_not_registered():
    from batchspawner.api import BatchSpawnerAPIHandler

    assert all(h[1] is not BatchSpawnerAPIHandler for h in apihandlers.default_handlers)


# -- model replicas as batch jobs ---------------------------------------------------------

def test_a_replica_job_script_exports_only_what_it_names_and_execs_the_server(poller):
    from loophub.spawner.backends.replicas import SlurmReplicaLauncher

    launcher = SlurmReplicaLauncher(pool_nodes="nodelist", gres_name="gpu",
                                    extra_directives=["--qos=serve"])
    unit = Placement(node="gpu01", cpu=2, mem=3 * GIB, gpus=(1,), runtime=3600)
    env = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1", "LOOPHUB_ALLOC_GPUS": "1",
           "LOOPHUB_ALLOC_CPU": "2", "ODD": "a b;$(rm -rf /)"}
    cmd = ["/venv/bin/python", "-m", "loophub.serving.server", "--port", "0",
           "--artifact", "/shared/it's/model.pt"]
    script = launcher.script("loophub-replica-digits/x", cmd, unit, env, Path("/l/r.log"))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--export=NONE", "--mem=3072M", "--time=0-01:00:00",
                      "--cpus-per-task=2", "--gres=gpu:1", "--nodelist=gpu01",
                      "--qos=serve", "--output=/l/r.log", "--open-mode=append",
                      "--job-name=loophub-replica-digits-x"):
        assert f"#SBATCH {directive}" in lines, (directive, script)
    # Slurm picks the devices on its node: the scheduler's indices are not passed on
    assert "CUDA_VISIBLE_DEVICES" not in script and "LOOPHUB_ALLOC_GPUS" not in script
    assert "export ODD='a b;$(rm -rf /)'" in lines  # quoted, never run
    assert lines[-1] == ("exec /venv/bin/python -m loophub.serving.server --port 0 "
                         "--artifact '/shared/it'\"'\"'s/model.pt'")
    assert launcher.server_args(Path("/s/x.state.json")) == [
        "--host", "0.0.0.0", "--port", "0", "--state-file", "/s/x.state.json"]


def test_a_replica_whose_job_ends_before_it_listens_says_so(poller, tmp_path):
    from loophub.spawner.backends.replicas import ReplicaJobError, SlurmReplicaLauncher

    runner = FakeRunner(squeue=[ok("7 FAILED rtest None\n")])
    poller.runner = runner
    launcher = SlurmReplicaLauncher(runner=runner)
    launcher.poller = poller
    with pytest.raises(ReplicaJobError, match="job 7 ended \\(FAILED\\) before its model"):
        asyncio.run(launcher.wait_listening("7", tmp_path / "none.json", _ignore))
    (tmp_path / "s.json").write_text('{"host": "n1", "port": 5, "exit_code": 2}')
    with pytest.raises(ReplicaJobError, match="exited with code 2"):
        asyncio.run(launcher.wait_listening("7", tmp_path / "s.json", _ignore))


async def _ignore(message: str) -> None:
    return None
