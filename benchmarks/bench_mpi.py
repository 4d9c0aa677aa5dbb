"""Data-parallel training over MPI here: step time and the allreduce's share at 1 and 2 ranks.

    python benchmarks/bench_mpi.py                 # the table, markdown, on stdout
    python benchmarks/bench_mpi.py --steps 6 --net specs/digits.cnn

Trains specs/fashion_mnist.cnn (1.4 M parameters, float32 gradients of 5.7 MB)
on random 28×28×1 images with a fixed global batch of 64, SGD: one process
(the NumPy backend's lanes on every core it may use), then `mpiexec -n 2`
(each rank on its shard of 32, one lane each: Open MPI binds each rank to a
core) with the default 25 MB gradient bucket and with 1 MB buckets. Each run
times `--steps` steps after two warm-up steps; the table gives the median step
and the share of the step spent inside MPI calls (the gradient buckets' starts
and waits, sync batchnorm's and the metrics' allreduces), from rank 0. The load
average (other processes on the machine) is printed with it: on a shared
machine, compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 64
WARM_UP = 2


def worker(net: str, steps: int, out: str) -> None:
    """Train steps + WARM_UP steps on this rank; rank 0 (or the one process) writes timings."""
    import numpy as np

    import cnndsl
    from cnndsl.training.history import Callback

    network = cnndsl.compile(Path(net).read_text())
    model, shape = network.build(seed=1), tuple(network.input_shape)
    rng = np.random.default_rng(0)
    samples = BATCH * (steps + WARM_UP)
    x = rng.normal(size=(samples, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=samples)
    marks: list[tuple[float, float]] = []

    class Clock(Callback):
        def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
            ranks = model.ranks
            marks.append((time.perf_counter(), 0.0 if ranks is None else ranks.mpi_seconds))

    model.fit(x, y, epochs=1, batch_size=BATCH, optimizer="sgd", lr=0.01,
              validation_split=0.0, shuffle=False, verbose=0, callbacks=[Clock()])  # fmt: skip
    ranks = model.ranks
    if ranks is not None and not ranks.first:
        return
    timed = marks[WARM_UP - 1 :]
    step_times = [b[0] - a[0] for a, b in zip(timed, timed[1:], strict=False)]
    mpi_times = [b[1] - a[1] for a, b in zip(timed, timed[1:], strict=False)]
    record = {
        "ranks": 1 if ranks is None else ranks.size,
        "lanes": model.backend.workers.lanes,
        "step": statistics.median(step_times),
        "mpi_share": sum(mpi_times) / sum(step_times),
        "bucket_mb": os.environ.get("CNNDSL_BUCKET_MB", "25"),
    }
    Path(out).write_text(json.dumps(record))


def _run(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "out.json")
        subprocess.run([*command, out], env=env, check=True, cwd=ROOT)
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    """Run the three configurations and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default=str(ROOT / "specs" / "fashion_mnist.cnn"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument(
        "--worker", nargs=3, metavar=("NET", "STEPS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        net, steps, out = args.worker
        worker(net, int(steps), out)
        return 0
    mpiexec = shutil.which("mpiexec") or shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent)
    )
    if mpiexec is None:
        print("no mpiexec: pip install 'cnndsl[mpi]'", file=sys.stderr)
        return 1
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", args.net, str(args.steps)]
    two = [mpiexec, "--bind-to", "core", "-n", "2", *me]
    load_before = os.getloadavg()
    rows = [
        _run(me, env),
        _run(two, {**env, "OMP_NUM_THREADS": "1"}),
        _run(two, {**env, "OMP_NUM_THREADS": "1", "CNNDSL_BUCKET_MB": "1"}),
    ]
    load_after = os.getloadavg()
    print(f"{Path(args.net).name}, global batch {BATCH}, {args.steps} timed steps;"
          f" {os.cpu_count()} CPUs; load average (1 min) {load_before[0]:.2f} before,"
          f" {load_after[0]:.2f} after\n")  # fmt: skip
    print("| ranks | lanes per rank | bucket | step (ms) | in MPI calls | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        bucket = f"{row['bucket_mb']} MB" if row["ranks"] > 1 else "-"
        print(f"| {row['ranks']} | {row['lanes']} | {bucket}"
              f" | {row['step'] * 1e3:.0f} | {row['mpi_share']:.0%}"
              f" | {rows[0]['step'] / row['step']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
