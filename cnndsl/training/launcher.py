"""Where a launcher (mpiexec, srun) started this process: its rank and the rank count.

Read from the launcher's environment variables, without importing MPI, so
that one process never loads mpi4py; `cnndsl.training.distributed` and
`cnndsl.training.device_allreduce` both ask here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Environment variables through which launchers give the process count: Open MPI,
# MPICH/Intel MPI (PMI), and Slurm's srun.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
# This process's rank among those on its machine: Open MPI, Slurm's srun, MPICH (Hydra).
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID")


def launched_ranks() -> int:
    """The process count a launcher gave this process (1 when none), read without MPI."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_rank() -> int:
    """This process's rank as its launcher gave it (0 when none), read without MPI."""
    if launched_ranks() <= 1:
        return 0
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank on its machine as its launcher gave it; None when not given."""
    env = os.environ if environ is None else environ
    for name in LOCAL_RANK_VARIABLES:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return None
