"""A job's work in a child process, for tests/test_jobs.py: ``spec["do"]`` says what."""

from __future__ import annotations

import os
import time

from loophub import errors
from loophub.jobs import ChildContext, child_main


def work(spec: dict, ctx: ChildContext) -> dict:
    if spec["do"] == "count":
        for i in range(1, 4):
            ctx.progress(i, 3, f"step {i}")
            time.sleep(0.06)  # past the progress throttle, so each step is sent
        ctx.log("counted to 3")
        print("a stray print goes to stderr, not into the protocol")
        return {"pid": os.getpid(), "nice": os.nice(0)}
    if spec["do"] == "missing":
        raise errors.NotFound("version v9 of pets does not exist", detail={"version": "v9"})
    if spec["do"] == "crash":
        raise SystemExit("the child fell over")
    with open(spec["pidfile"], "w") as out:  # "sleep": until killed
        out.write(str(os.getpid()))
    time.sleep(600)
    return {}


if __name__ == "__main__":
    child_main(work)
