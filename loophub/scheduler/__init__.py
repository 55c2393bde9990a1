"""Fair multi-resource scheduling: a pure core (events in, decisions out), pluggable policies,
and a discrete-event simulator to compare them on real traces.

The hub, the API service and the simulator all drive :class:`SchedulerState` the same way::

    state = SchedulerState("balanced-drf", SchedulerConfig(weights={"alice": 2}),
                           [Node.from_spec(spec) for spec in load_pool()])
    for decision in state.submit(request, now):
        ...  # "start": launch on decision.allocation; "preempt": stop it (it is requeued)
"""

from loophub.scheduler.model import (
    GIB,
    KINDS,
    Allocation,
    Decision,
    Node,
    Request,
    Resources,
    SchedulerConfig,
    UnitPlacement,
)
from loophub.scheduler.policies import POLICIES, make_policy
from loophub.scheduler.state import InvariantError, Reservation, SchedulerError, SchedulerState

__all__ = [
    "GIB",
    "KINDS",
    "POLICIES",
    "Allocation",
    "Decision",
    "InvariantError",
    "Node",
    "Request",
    "Reservation",
    "Resources",
    "SchedulerConfig",
    "SchedulerError",
    "SchedulerState",
    "UnitPlacement",
    "make_policy",
]
