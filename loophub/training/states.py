"""A training job's states and the transitions allowed between them (pure).

    queued -> starting -> running -> succeeded | failed | cancelled
    running -> preempted -> queued          (checkpointed, waits for resources again)
    running -> retrying -> running          (a worker was lost: resume from the checkpoint)

Every transition is stored with its time and reason (loophub.jobs.JobEvent); the runner
moves a job with ``loophub.jobs.move(..., table=ALLOWED)``, which refuses anything else
(a cancelled job never starts again, a finished one never runs).
"""

from __future__ import annotations

from loophub.jobs import STATES

__all__ = ["ALLOWED", "STATES"]

ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"starting", "cancelled", "failed"}),
    "starting": frozenset({"running", "preempted", "retrying", "queued", "failed",
                           "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "preempted", "retrying",
                          "queued"}),
    "preempted": frozenset({"queued", "cancelled", "failed"}),
    "retrying": frozenset({"starting", "running", "failed", "cancelled", "queued"}),
}
