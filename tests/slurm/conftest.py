"""A real single-node Slurm (munged, slurmctld, slurmd) for the session's Slurm tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .cluster import SlurmCluster, missing_binaries, prepare


@pytest.fixture(scope="session")
def slurm(shared, tmp_path_factory) -> Iterator[SlurmCluster]:
    """Starts the daemons, waits for an idle node, stops what it started at the end.

    SLURM_CONF points the test process (and so the backend's sbatch/squeue/scancel)
    at the cluster while it runs.
    """
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld is not installed (apt-get install slurmctld slurmd "
                    "slurm-client munge; .ci/run does)")
    missing = missing_binaries()
    assert not missing, f"slurmctld is installed but these are missing: {missing}"
    cluster = prepare(shared, tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    try:
        cluster.start_munge()
        cluster.start_controller()
        cluster.start_node()
        cluster.wait_idle()
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
