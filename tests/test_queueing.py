"""The queue-waiting loop FairSpawner, GPU kernels (and next jobs) share (the SDK)."""

import pytest

from loophub.client.scheduler import wait_until_running


class Gave(Exception):
    pass


def views(*states):
    return [{"id": "r1", "state": s, "message": f"m{i}"} for i, s in enumerate(states)]


async def run(sequence, timeout=60.0):
    seen, polls = [], iter(sequence[1:])

    async def poll(view, wait):
        assert 0 < wait <= 5
        return next(polls)

    result = await wait_until_running(
        sequence[0], poll=poll, on_wait=seen.append, queue_timeout=timeout, long_poll=5,
        give_up=lambda why, view: Gave(why, view["state"]))
    return result, seen


async def test_waits_reporting_each_queued_view_until_running():
    result, seen = await run(views("queued", "queued", "running"))
    assert result["state"] == "running"
    assert [v["message"] for v in seen] == ["m0", "m1"]


async def test_gives_up_when_the_request_ends_or_time_runs_out():
    with pytest.raises(Gave) as ended:
        await run(views("queued", "cancelled"))
    assert ended.value.args == ("ended", "cancelled")
    with pytest.raises(Gave) as timeout:
        await run(views("queued"), timeout=0)
    assert timeout.value.args == ("timeout", "queued")
