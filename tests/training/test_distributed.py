"""Data-parallel training over MPI: N ranks end where one process ends.

Each test starts `mpiexec -n 2` on a small script (tests skip without mpi4py
and mpiexec: pip install 'cnndsl[mpi]'), and compares with the same training
on one process, run here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.executor import ModelError
from cnndsl.training.distributed import (
    GradientBuckets,
    ShardedGenerator,
    bucket_bytes,
    launched_ranks,
)

MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))

SPEC = """
network tiny(classes=3) {
    input image: [6, 6, 2]
    return image
        -> conv(4, kernel=3, padding=same, bias=false) -> batchnorm -> relu
        -> maxpool(2) -> flatten
        -> dense(8, activation=relu) -> batchnorm -> dropout(0.4)
        -> dense(classes, activation=softmax)
}
"""

# The script every rank runs: trains, then rank 0 writes the weights and history.
SCRIPT = """
import sys, json
import numpy as np
import cnndsl
from cnndsl.training.history import Callback
spec, out, optimizer, batch, fail, dtype = sys.argv[1:7]
batch = int(batch)
rng = np.random.default_rng(1)
x = rng.normal(size=(45, 6, 6, 2)).astype("float32")
y = rng.integers(0, 3, size=45)
model = cnndsl.compile(open(spec).read()).build(seed=3, dtype=dtype)

class Fail(Callback):
    def on_batch_end(self, batch, logs):
        if fail == "yes" and model.ranks is not None and model.ranks.rank == 1 and batch == 1:
            raise RuntimeError("broken on purpose")

history = model.fit(x, y, epochs=2, batch_size=batch, optimizer=optimizer, lr=0.05,
                    validation_split=0.2, verbose=0, callbacks=[Fail()], distributed=None)
ranks = model.ranks
if ranks is None or ranks.first:
    np.savez(out, **model.weights)
    with open(out + ".json", "w") as f:
        json.dump({"history": history.history, "ranks": 1 if ranks is None else ranks.size}, f)
"""


def _run_ranks(
    tmp_path: Path,
    optimizer: str,
    batch: int,
    dtype: str = "float64",
    fail: bool = False,
    n: int = 2,
    bucket_mb: str = "",
):
    """Run SCRIPT on n ranks; (the process, the weights path)."""
    spec, script, out = tmp_path / "tiny.cnn", tmp_path / "train.py", tmp_path / "mpi.npz"
    spec.write_text(SPEC)
    script.write_text(textwrap.dedent(SCRIPT))
    args = [str(spec), str(out), optimizer, str(batch), "yes" if fail else "no", dtype]
    extra = {"CNNDSL_BUCKET_MB": bucket_mb} if bucket_mb else {}
    return _mpiexec(n, [sys.executable, str(script), *args], extra), out


def _mpiexec(n: int, command: list[str], env: dict[str, str] | None = None, timeout: int = 120):
    """Run command on n ranks under mpiexec; the finished process (a hang fails the test)."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install 'cnndsl[mpi]')")
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    launch = [MPIEXEC, "--oversubscribe", "-n", str(n), *command]
    try:
        return subprocess.run(
            launch, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{n} ranks still running after {timeout} s (a hang): {e.stderr!r:.2000}")


def _one_process(optimizer: str, batch: int, dtype: str):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(45, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=45)
    model = cnndsl.compile(SPEC).build(seed=3, dtype=dtype)
    history = model.fit(
        x, y, epochs=2, batch_size=batch, optimizer=optimizer, lr=0.05,
        validation_split=0.2, verbose=0, distributed=False,
    )  # fmt: skip
    return model.weights, history.history


pytest.importorskip("mpi4py")


# float64: equal up to the summation order's rounding (a bias before batchnorm has a zero
# gradient, so Adam scales that rounding up to ~1e-11); float32 (SGD: Adam's division by
# the root of tiny second moments magnifies float32 rounding to ~3e-3 relative on
# a bias-free conv before batchnorm): the same within a few steps' float32 rounding.
CLOSE = {"float64": {"rtol": 1e-9, "atol": 1e-9}, "float32": {"rtol": 1e-4, "atol": 2e-5}}


@pytest.mark.parametrize(
    ("optimizer", "batch", "dtype"),
    [
        ("sgd", 16, "float64"),
        ("adam", 16, "float64"),
        ("adam", 15, "float64"),
        ("sgd", 11, "float64"),
        ("sgd", 16, "float32"),
    ],
)
def test_two_ranks_end_with_one_process_weights(
    tmp_path: Path, optimizer: str, batch: int, dtype: str
):
    """2 ranks × a global batch = 1 process × it (even: 16; uneven: 15, and 11 with a last 3)."""
    done, out = _run_ranks(tmp_path, optimizer, batch, dtype)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = dict(np.load(out, allow_pickle=False))
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["ranks"] == 2
    ours, history = _one_process(optimizer, batch, dtype)
    assert set(theirs) == set(ours)
    for key, value in ours.items():
        np.testing.assert_allclose(theirs[key], value, **CLOSE[dtype], err_msg=key)
    for key, values in history.items():
        np.testing.assert_allclose(record["history"][key], values, **CLOSE[dtype], err_msg=key)
    moved = cnndsl.compile(SPEC).build(seed=3).weights
    assert any(not np.allclose(moved[k], ours[k]) for k in ours), "training moved nothing"


@pytest.mark.parametrize(("optimizer", "batch"), [("sgd", 16), ("adam", 15)])
def test_small_buckets_change_nothing(tmp_path: Path, optimizer: str, batch: int):
    """Gradients summed in many small buckets (~100 bytes each) end as one process's."""
    done, out = _run_ranks(tmp_path, optimizer, batch, bucket_mb="0.0001")
    assert done.returncode == 0, done.stderr[-3000:]
    ours, _ = _one_process(optimizer, batch, "float64")
    theirs = dict(np.load(out, allow_pickle=False))
    for key, value in ours.items():
        np.testing.assert_allclose(theirs[key], value, **CLOSE["float64"], err_msg=key)


def test_a_rank_that_raises_ends_the_job_naming_it(tmp_path: Path):
    """Rank 1 raises mid-epoch: every rank ends, non-zero, with a message naming rank 1."""
    done, _ = _run_ranks(tmp_path, "sgd", 16, fail=True)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr
    assert "broken on purpose" in done.stderr


# Each rank logs its work's start and end; rank 0's work is slow (a download), and
# with fail=yes it raises.
FIRST = """
import sys, time
from cnndsl.formats.data import DataError
from cnndsl.training.distributed import first_rank_first, launched_rank
log, fail = sys.argv[1:3]
rank = launched_rank()

def work():
    with open(log, "a") as f:
        f.write(f"start {rank}\\n")
    if rank == 0:
        time.sleep(0.5)
        if fail == "yes":
            raise DataError("mnist: could not get train-images on purpose")
    with open(log, "a") as f:
        f.write(f"end {rank}\\n")
    return rank

print("worked", first_rank_first(work), file=sys.__stderr__)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_rank_zero_loads_first_and_its_failure_stops_every_rank(tmp_path: Path, fail: bool):
    """Rank 0's work (a download) ends before rank 1's starts; if it raises, every rank ends."""
    script, log = tmp_path / "first.py", tmp_path / "log.txt"
    script.write_text(textwrap.dedent(FIRST))
    done = _mpiexec(2, [sys.executable, str(script), str(log), "yes" if fail else "no"])
    lines = log.read_text().split("\n")[:-1]
    if fail:
        assert done.returncode != 0
        assert lines == ["start 0"]
        assert "rank 0 failed: DataError: mnist: could not get" in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-3000:]
        assert lines == ["start 0", "end 0", "start 1", "end 1"]
        assert done.stderr.count("worked") == 2


class _DoublingComm:
    """Stands in for 2 ranks with equal gradients: each allreduce doubles its buffer.

    Records, at each start, how many weight gradients backward has still to give.
    """

    def __init__(self) -> None:
        self.buckets: GradientBuckets | None = None
        self.still_to_come: list[int] = []

    def Iallreduce(self, _in_place: object, buffer: np.ndarray, op: object) -> object:
        assert self.buckets is not None
        self.still_to_come.append(sum(self.buckets.missing))
        buffer *= 2
        return object()


def test_buckets_start_during_backward_and_sum_every_gradient():
    """Buckets of ~200 bytes: several start while backward runs, and `finish` gives every
    gradient (and the losses riding along) summed, as one process's gradients × 2."""
    mpi = SimpleNamespace(
        IN_PLACE=None, SUM=None, Request=SimpleNamespace(Testall=len, Waitall=len)
    )
    comm = _DoublingComm()
    ranks = SimpleNamespace(gradient_comm=comm, bucket_bytes=200, mpi=mpi, mpi_seconds=0.0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 6, 6, 2)), rng.integers(0, 3, size=5)
    observed, reference = (cnndsl.compile(SPEC).build(seed=3, dtype="float64") for _ in "ab")
    for model in (observed, reference):
        model.compile(optimizer="sgd")
    _, expected = reference.gradients(x, y)  # the same dropout masks: the same seed
    plan, _ = observed._train_plan(observed.loss)
    buckets = GradientBuckets(ranks, observed, plan, [0.25, 1.5])  # type: ignore[arg-type]
    comm.buckets = buckets
    observed.observe_gradients(
        observed._device_batch(x), observed._labels(y), observed.loss, buckets
    )
    assert set(buckets.where) == set(expected)
    started = len(comm.still_to_come)
    assert started >= 3 and comm.still_to_come[0] > 0, comm.still_to_come
    grads = {key: np.zeros_like(value) for key, value in expected.items()}
    assert buckets.finish(grads) == [0.5, 3.0]
    assert len(comm.still_to_come) == started, "a bucket waited for the end of backward"
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], 2 * value, rtol=1e-12, err_msg=key)


def test_a_bad_bucket_size_is_a_clear_error():
    """CNNDSL_BUCKET_MB must be a number above 0."""
    assert bucket_bytes({}) == 25_000_000
    assert bucket_bytes({"CNNDSL_BUCKET_MB": "0.5"}) == 500_000
    for bad in ("0", "-3", "lots", "nan"):
        with pytest.raises(ModelError, match="CNNDSL_BUCKET_MB"):
            bucket_bytes({"CNNDSL_BUCKET_MB": bad})


def test_sharded_generator_slices_the_global_draw():
    """Each shard's draw is its rows of one process's draw, and the generator moves alike."""
    whole = np.random.default_rng(5).random((7, 3))
    parts = []
    for shard in (slice(0, 4), slice(4, 7)):
        rng = np.random.default_rng(5)
        parts.append(ShardedGenerator(rng, shard, 7).random((shard.stop - shard.start, 3)))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_one_process_never_joins(monkeypatch: pytest.MonkeyPatch):
    """Without a launcher's variables, the process count is 1."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert launched_ranks() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launched_ranks() == 4


# Trains with a checkpoint every step (adam, float64, global batch 16 of 36 samples:
# 3 steps an epoch); with kill=yes rank 1 kills itself (SIGKILL, no Python clean-up)
# at the second epoch's second step. Rank 0 writes the weights when the run ends.
CHECKPOINTED = """
import json, os, signal, sys, warnings
import numpy as np
import cnndsl
from cnndsl.training.history import Callback
spec, out, folder, epochs, resume, kill = sys.argv[1:7]
rng = np.random.default_rng(1)
x = rng.normal(size=(45, 6, 6, 2)).astype("float32")
y = rng.integers(0, 3, size=45)
model = cnndsl.compile(open(spec).read()).build(seed=3, dtype="float64")

class Kill(Callback):
    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch
    def on_batch_end(self, batch, logs):
        rank = 0 if model.ranks is None else model.ranks.rank
        if kill == "yes" and rank == 1 and (self.epoch, batch) == (1, 1):
            os.kill(os.getpid(), signal.SIGKILL)

warnings.simplefilter("ignore")
history = model.fit(x, y, epochs=int(epochs), batch_size=16, optimizer="adam", lr=0.05,
          validation_split=0.2, verbose=0, callbacks=[Kill()], checkpoint_dir=folder,
          checkpoint_every=1, resume=resume == "yes")
if model.ranks is None or model.ranks.first:
    np.savez(out, **model.weights)
    with open(out + ".json", "w") as f:
        json.dump({"resumed_from": history.params.get("resumed_from")}, f)
"""


def _checkpointed(tmp_path: Path, folder: Path, epochs: int, resume: bool, kill: bool = False):
    """Run CHECKPOINTED on 2 ranks; (the process, the weights path)."""
    spec, script, out = tmp_path / "tiny.cnn", tmp_path / "ckpt.py", tmp_path / "ckpt.npz"
    spec.write_text(SPEC)
    script.write_text(textwrap.dedent(CHECKPOINTED))
    flags = [str(epochs), "yes" if resume else "no", "yes" if kill else "no"]
    command = [sys.executable, str(script), str(spec), str(out), str(folder), *flags]
    return _mpiexec(2, command, timeout=60), out


def _one_process_checkpointed(folder: Path | None, epochs: int, resume: bool = False):
    """CHECKPOINTED's training on this process (no checkpoints without a folder)."""
    import warnings

    rng = np.random.default_rng(1)
    x = rng.normal(size=(45, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=45)
    model = cnndsl.compile(SPEC).build(seed=3, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the killed run's lock taken over; short statistics
        history = model.fit(
            x, y, epochs=epochs, batch_size=16, optimizer="adam", lr=0.05,
            validation_split=0.2, verbose=0, distributed=False, checkpoint_dir=folder,
            checkpoint_every=1 if folder else None, resume=resume,
        )  # fmt: skip
    return model.weights, history.params.get("resumed_from")


def test_a_killed_rank_ends_the_job_and_its_checkpoint_resumes_on_one_process(tmp_path: Path):
    """SIGKILL on rank 1 mid-run: the job ends non-zero (no hang; the subprocess timeout
    fails the test), rank 0's newest checkpoint loads, and resumed on 1 process (2 -> 1
    ranks) the run ends with the weights of an uninterrupted one."""
    folder = tmp_path / "ckpt"
    done, out = _checkpointed(tmp_path, folder, epochs=3, resume=False, kill=True)
    assert done.returncode != 0
    assert "rank 1" in done.stderr and "signal 9" in done.stderr, done.stderr[-2000:]
    assert not out.exists(), "the killed run went on to the end"
    written = sorted(folder.glob("*.npz"))
    assert written, "no checkpoint written before the kill"
    resumed, resumed_from = _one_process_checkpointed(folder, epochs=3, resume=True)
    assert resumed_from == str(written[-1]), "the newest checkpoint did not load"
    whole, _ = _one_process_checkpointed(None, epochs=3)
    for key, value in whole.items():
        np.testing.assert_allclose(resumed[key], value, **CLOSE["float64"], err_msg=key)


def test_a_one_process_checkpoint_resumes_on_two_ranks(tmp_path: Path):
    """1 -> 2 ranks: one epoch on this process, the other two resumed on 2 ranks, end with
    the weights of 3 uninterrupted epochs on one process."""
    folder = tmp_path / "ckpt"
    once, _ = _one_process_checkpointed(folder, epochs=1)
    newest = str(sorted(folder.glob("*.npz"))[-1])
    done, out = _checkpointed(tmp_path, folder, epochs=3, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = dict(np.load(out, allow_pickle=False))
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["resumed_from"] == newest
    whole, _ = _one_process_checkpointed(None, epochs=3)
    assert any(not np.allclose(once[k], whole[k]) for k in whole), "epochs 2-3 moved nothing"
    for key, value in whole.items():
        np.testing.assert_allclose(theirs[key], value, **CLOSE["float64"], err_msg=key)


# Test samples a float32 run may classify otherwise: float32 sums in another order (2 ranks'
# shards, then the allreduce) move borderline samples across the decision boundary; 8
# epochs (batchnorm's moving statistics settled) differed by one sample of 360 here.
FLIPPED = 2


@pytest.mark.slow
def test_cnndsl_run_on_two_ranks_prints_once_the_single_process_accuracy(tmp_path: Path):
    """`mpiexec -n 2 cnndsl run specs/digits.cnn` prints its results once, and its test
    accuracy is one process's (within FLIPPED samples: float32)."""
    import re

    spec = str(Path(__file__).parents[2] / "specs" / "digits.cnn")
    args = [spec, "--epochs", "8", "-q"]
    cli = [sys.executable, "-m", "cnndsl", "run"]
    done = _mpiexec(2, [*cli, *args], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = subprocess.run(
        [*cli, *args], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    pattern = r"test loss [0-9.]+, accuracy ([0-9.]+)"
    both = done.stdout + done.stderr
    assert len(re.findall(pattern, both)) == 1, both[-3000:]
    assert both.count("epoch 8/8") == 1
    ranks = float(re.findall(pattern, both)[0])
    one = float(re.findall(pattern, alone.stdout + alone.stderr)[0])
    assert abs(ranks - one) * 360 <= FLIPPED + 1e-6, (ranks, one)
