"""The `nccl` check of scripts/gpu_check.py: data-parallel gradient sums on device buffers.

    python3 scripts/gpu_check_nccl.py train OUT.npz BACKEND single|ranks   # one training run

- 2 GPUs or more, and mpiexec: `mpiexec -n 2` trains a small net (conv,
  batchnorm, dense; SGD, float32, 4 steps) with the CuPy backend, one GPU per
  rank, and the weights must be one process's within float32 rounding; the
  gradients must have been summed by NCCL (not the host fallback).
- 1 GPU: NCCL refuses two ranks on one device, so the 2-rank run is reported
  as needing 2 GPUs; where NCCL imports, `NcclAllreduce` runs on one rank (a
  1-rank sum is the identity), float32 and float64.
- --dry-run (NumPy standing in): the 2-rank run with the NumPy backend (host
  MPI sums) against one process, where mpiexec exists: a check of this script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cnndsl  # noqa: E402
from cnndsl.training.device_allreduce import NcclAllreduce  # noqa: E402
from cnndsl.training.fit import ShortStatisticsWarning  # noqa: E402

SPEC = """
network small(classes=4) {
    input image: [12, 12, 3]
    return image
        -> conv(8, kernel=3, padding=same, bias=false) -> batchnorm -> relu
        -> maxpool(2) -> flatten -> dense(classes, activation=softmax)
}
"""
TOL = 1e-4  # float32, 4 SGD steps, sums in another order


def train(out: str, backend: str, how: str) -> None:
    """Train SPEC for 4 steps (distributed when how == "ranks"); rank 0 writes the weights."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    model = cnndsl.compile(SPEC).build(backend=backend, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        model.fit(
            x, y, epochs=1, batch_size=16, optimizer="sgd", lr=0.05, verbose=0,
            distributed=how == "ranks",
        )  # fmt: skip
    ranks = model.ranks
    path = "one process" if ranks is None else getattr(ranks.gradient_allreduce, "name", "?")
    if ranks is None or ranks.first:
        weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        np.savez(out, **weights, allreduce_path=np.array(path))


def run(checks: Any) -> None:
    """The check (module docstring), recorded on `checks` (gpu_check.Checks)."""
    gpus = 0 if checks.dry else int(checks.xp.cuda.runtime.getDeviceCount())
    mpiexec = shutil.which("mpiexec") or shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent)
    )
    if mpiexec is not None and (gpus >= 2 or checks.dry):
        two_ranks(checks, mpiexec, "numpy" if checks.dry else "cupy")
        return
    print(
        f"nccl: the 2-rank check needs 2 GPUs and mpiexec (NCCL refuses two ranks on one"
        f" device); found {gpus} GPU(s), mpiexec {'found' if mpiexec else 'missing'}",
        flush=True,
    )
    if not checks.dry:
        one_rank(checks)


def two_ranks(checks: Any, mpiexec: str, backend: str) -> None:
    """2 ranks against one process: the same weights; on CuPy, summed by NCCL."""
    folder = Path(tempfile.mkdtemp(prefix="nccl_check"))
    env = {
        **os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }  # fmt: skip
    two, one = folder / "two.npz", folder / "one.npz"
    command = [mpiexec, "--oversubscribe", "-n", "2", sys.executable, __file__, "train"]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [*command, str(two), backend, "ranks"],
            env=env, capture_output=True, text=True, timeout=100, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        checks.fail("nccl", "2 ranks", "still running after 100 s (a hang)")
        return
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", flush=True)
        lines = done.stderr.strip().splitlines() or ["no message"]
        checks.fail("nccl", "2 ranks", f"exit {done.returncode}: {lines[-1]}")
        return
    train(str(one), backend, "single")
    got, want = np.load(two), np.load(one)
    path = str(got["allreduce_path"])
    names = [k for k in want.files if k != "allreduce_path"]
    error = max(relative(got[k], want[k]) for k in names)
    checks.record("nccl", f"2 ranks = 1 process, {backend}, sums: {path}", error, TOL, seconds)
    if backend == "cupy" and path != "nccl":
        checks.fail("nccl", "2 ranks summed by NCCL", f"summed by '{path}' (see its warning)")


class _OneRank:
    """The MPI communicator of a job of one rank (NCCL's id needs no broadcast)."""

    def bcast(self, value: Any, root: int) -> Any:
        return value


def one_rank(checks: Any) -> None:
    """NcclAllreduce on one rank: the sum of one rank is its values, float32 and float64."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        print(f"skip nccl 1 rank: cupy.cuda.nccl does not import: {e}", flush=True)
        return
    if not getattr(nccl, "available", False):
        print("skip nccl 1 rank: CuPy finds no NCCL (pip install nvidia-nccl-cu12)", flush=True)
        return
    xp = checks.xp
    ranks = SimpleNamespace(rank=0, size=1, first=True, comm=_OneRank())
    try:
        allreduce = NcclAllreduce(ranks, xp, xp.cuda, nccl)
    except Exception as e:  # NCCL's own error, reported as the check's result
        checks.fail("nccl", "1-rank communicator", f"{type(e).__name__}: {e}")
        return
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        values = rng.normal(size=(1000, 3)).astype(dtype)
        start = time.perf_counter()
        buffer = allreduce.buffer(values.size + 5, np.dtype(dtype))
        allreduce.put(buffer, 5, xp.asarray(values))
        summed = allreduce.start(buffer, [])
        allreduce.wait([summed])
        got = checks.host(allreduce.take(buffer, 5, values.shape))
        seconds = time.perf_counter() - start
        error = relative(got, values)
        name = f"1 rank, {np.dtype(dtype).name}: the identity"
        checks.record("nccl", name, error, 0.0, seconds)


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖ (absolute where want is all zeros)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / (scale if scale > 0 else 1.0)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "train":
        sys.exit(__doc__.splitlines()[2].strip())
    train(*sys.argv[2:5])
