"""From a scheduler placement to a confined process: the environment a unit's process sees
(GPU ids, thread counts, the allocation) and its enforcement (core affinity, a cgroup
capping memory and CPU time, RLIMIT_AS where no cgroup can be made, dropped privileges).

One toolkit for everything that runs on an allocation: notebook servers (LocalBackend),
sized kernels (FairKernelProvisioner), and next Dask workers and model servers.
"""

from loophub.runtime.confine import (
    Cgroup,
    Confinement,
    ConfinementError,
    confine_preexec,
    pinnable_cores,
)
from loophub.runtime.placement import Placement, placements

__all__ = ["Cgroup", "Confinement", "ConfinementError", "Placement", "confine_preexec",
           "pinnable_cores",
           "placements"]
