"""Data-parallel training over MPI: N ranks end where one process ends.

Each test starts `mpiexec -n 2` on a small script (tests skip without mpi4py
and mpiexec: pip install 'cnndsl[mpi]'), and compares with the same training
on one process, run here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnndsl
from cnndsl.training.distributed import ShardedGenerator, launched_ranks

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
):
    """Run SCRIPT on n ranks; (the process, the weights path)."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec (pip install 'cnndsl[mpi]')")
    spec, script, out = tmp_path / "tiny.cnn", tmp_path / "train.py", tmp_path / "mpi.npz"
    spec.write_text(SPEC)
    script.write_text(textwrap.dedent(SCRIPT))
    env = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [MPIEXEC, "--oversubscribe", "-n", str(n), sys.executable, str(script)]
    args = [str(spec), str(out), optimizer, str(batch), "yes" if fail else "no", dtype]
    done = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done, out


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
    import json

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


def test_a_rank_that_raises_ends_the_job_naming_it(tmp_path: Path):
    """Rank 1 raises mid-epoch: every rank ends, non-zero, with a message naming rank 1."""
    done, _ = _run_ranks(tmp_path, "sgd", 16, fail=True)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr
    assert "broken on purpose" in done.stderr


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
