"""Gradient buckets on the device (NCCL, CUDA-aware MPI) and the choice of path, on the CPU.

No GPU here: NumPy arrays stand in for device arrays and tests/training/
device_standins.py for cupy.cuda's streams and events and cupy.cuda.nccl.
The stand-in NCCL sums the memory at the pointers it is given, so the
numbers are real: doubled in one process, summed by MPI on two ranks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import device_standins as standin
import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.executor import ModelError
from cnndsl.training.device_allreduce import (
    DeviceMpiAllreduce,
    HostAllreduce,
    NcclAllreduce,
    address,
    choose_allreduce,
    device_for_rank,
)
from cnndsl.training.distributed import GradientBuckets

SPEC = """
network tiny(classes=3) {
    input image: [6, 6, 2]
    return image
        -> conv(4, kernel=3, padding=same, bias=false) -> batchnorm -> relu
        -> maxpool(2) -> flatten
        -> dense(8, activation=relu) -> dropout(0.4)
        -> dense(classes, activation=softmax)
}
"""


class _Comm:
    """The MPI communicator of rank `rank` of `size`: bcast from root, Iallreduce doubling."""

    def __init__(self, rank: int = 0, root_value: Any = None) -> None:
        self.rank, self.root_value = rank, root_value
        self.calls: list[tuple[Any, ...]] = []

    def bcast(self, value: Any, root: int) -> Any:
        self.calls.append(("bcast", value, root))
        return value if self.rank == root else self.root_value

    def Iallreduce(self, _in_place: object, buffer: np.ndarray, op: object) -> object:  # noqa: N802
        self.calls.append(("Iallreduce", address(buffer), buffer.size))
        buffer *= 2
        return object()

    def Allreduce(self, _in_place: object, buffer: np.ndarray, op: object) -> None:  # noqa: N802
        self.calls.append(("Allreduce", buffer.size))
        buffer *= 2


def _ranks(rank: int = 0, root_value: Any = None) -> SimpleNamespace:
    mpi = SimpleNamespace(
        IN_PLACE=None, SUM=None, Request=SimpleNamespace(Testall=len, Waitall=len)
    )
    comm = _Comm(rank, root_value)
    return SimpleNamespace(
        rank=rank, size=2, first=rank == 0, comm=comm, gradient_comm=comm, mpi=mpi,
        bucket_bytes=100, mpi_seconds=0.0,
    )  # fmt: skip


def _step(dtype: str, allreduce_for: Any) -> tuple[GradientBuckets, dict[str, Any], list[float]]:
    """One backward observed by buckets summing through `allreduce_for(ranks, model)`;
    (the buckets, the summed gradients, the summed losses), with one process's gradients."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 6, 6, 2)), rng.integers(0, 3, size=5)
    observed, reference = (cnndsl.compile(SPEC).build(seed=3, dtype=dtype) for _ in "ab")
    for model in (observed, reference):
        model.compile(optimizer="sgd")
    _, expected = reference.gradients(x, y)  # the same dropout masks: the same seed
    plan, _ = observed._train_plan(observed.loss)
    ranks = _ranks()
    buckets = GradientBuckets(ranks, observed, plan, [0.25, 1.5], allreduce_for(ranks, observed))  # type: ignore[arg-type]
    observed.observe_gradients(
        observed._device_batch(x), observed._labels(y), observed.loss, buckets
    )
    grads = {key: np.zeros_like(value) for key, value in expected.items()}
    losses = buckets.finish(grads)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], 2 * value, rtol=1e-5, err_msg=key)
    return buckets, grads, losses


@pytest.mark.parametrize(("dtype", "code"), [("float32", 7), ("float64", 8)])
def test_nccl_sums_each_bucket_once_in_place_on_its_stream_after_the_compute_stream(
    dtype: str, code: int
):
    """One allReduce per bucket: the bucket's address twice, its size, the dtype's code,
    NCCL_SUM, the communication stream; after an event of the compute stream; at the end
    the compute stream waits for each sum's event, and the host never waits."""
    cuda = standin.Cuda()
    nccl = standin.Nccl(cuda.log, standin.doubling)
    buckets, grads, losses = _step(dtype, lambda r, m: NcclAllreduce(r, m.xp, cuda, nccl))
    assert losses == [0.5, 3.0]  # summed on the host: the buckets hold gradients only
    assert buckets.ranks.comm.calls[-1] == ("Allreduce", 2)
    (comm_stream,) = cuda.streams
    assert comm_stream.non_blocking
    sums = [c for c in cuda.log if c[0] == "allReduce"]
    assert len(sums) == len(buckets.buffers) >= 3
    for call, buffer in zip(sums, buckets.buffers, strict=True):
        pointer = address(buffer)
        assert call == ("allReduce", pointer, pointer, buffer.size, code, 0, comm_stream.ptr)
    assert not [c for c in cuda.log if c[0] == "synchronize"]
    log = [c for c in cuda.log if c[0] not in ("get_unique_id", "NcclCommunicator")]
    for i in range(len(sums)):  # record (compute), wait (comm), allReduce, record (comm)
        filled, waited, summed, done = log[4 * i : 4 * i + 4]
        assert filled[:2] == ("record", cuda.COMPUTE)
        assert waited == ("wait_event", comm_stream.ptr, filled[2])
        assert summed[0] == "allReduce"
        assert done[:2] == ("record", comm_stream.ptr)
    ends = [c[2] for c in log if c[:2] == ("record", comm_stream.ptr)]
    assert log[4 * len(sums) :] == [("wait_event", cuda.COMPUTE, e) for e in ends]
    some = next(iter(grads))
    bucket, at = buckets.where[some]
    assert address(grads[some]) == address(buckets.buffers[bucket]) + at * grads[some].itemsize


def test_cuda_aware_mpi_waits_for_each_bucket_then_sums_the_device_buffer():
    """CUDA-aware MPI knows no streams: the compute stream is synchronised before each
    bucket's Iallreduce, which gets the device buffer itself."""
    cuda = standin.Cuda()
    buckets, _, losses = _step("float64", lambda r, m: DeviceMpiAllreduce(r, m.xp, cuda))
    assert losses == [0.5, 3.0]
    sums = [c for c in buckets.ranks.comm.calls if c[0] == "Iallreduce"]
    assert [c[1:] for c in sums] == [(address(b), b.size) for b in buckets.buffers]
    assert cuda.log == [("synchronize", cuda.COMPUTE)] * len(sums)


def test_the_unique_id_comes_from_rank_zero():
    """Rank 0 makes NCCL's id and broadcasts it; rank 1 joins with rank 0's id."""
    made: list[Any] = []
    for rank in (0, 1):
        cuda = standin.Cuda()
        nccl = standin.Nccl(cuda.log, standin.doubling)
        ranks = _ranks(rank, root_value=made[0] if made else None)
        NcclAllreduce(ranks, np, cuda, nccl)
        ((_, sent, root),) = ranks.comm.calls
        assert root == 0
        if rank == 0:
            assert cuda.log[0] == ("get_unique_id",) and sent is not None
            made.append(sent)
        else:
            assert ("get_unique_id",) not in cuda.log and sent is None
        assert cuda.log[-1] == ("NcclCommunicator", 2, made[0], rank)


def _backend(xp: Any = np) -> SimpleNamespace:
    return SimpleNamespace(xp=xp, to_host=np.asarray)


def test_the_choice_of_path():
    """NumPy: the host; CuPy: NCCL, else CUDA-aware MPI, else the host with a warning;
    $CNNDSL_ALLREDUCE chooses, and a bad value or a missing NCCL asked for is an error."""
    cuda = standin.Cuda()
    cuda.nccl = standin.Nccl(cuda.log, standin.doubling)
    no_nccl = standin.Cuda(SimpleNamespace(available=False))
    ranks = _ranks()

    def choose(env: dict[str, str], found: Any = cuda, aware: bool = False) -> Any:
        return choose_allreduce(ranks, _backend(), env, found, lambda: aware)

    assert isinstance(choose_allreduce(ranks, _backend(), {}), HostAllreduce)
    assert isinstance(choose({}), NcclAllreduce)
    assert isinstance(choose({"CNNDSL_ALLREDUCE": "host"}), HostAllreduce)
    assert isinstance(choose({"CNNDSL_ALLREDUCE": "mpi"}), DeviceMpiAllreduce)
    assert isinstance(choose({}, no_nccl, aware=True), DeviceMpiAllreduce)
    with pytest.warns(RuntimeWarning) as caught:
        assert isinstance(choose({}, no_nccl), HostAllreduce)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message
    assert "through the host" in message and "pip install nvidia-nccl-cu12" in message
    with pytest.raises(ModelError, match="CNNDSL_ALLREDUCE=nccl, but CuPy finds no NCCL"):
        choose({"CNNDSL_ALLREDUCE": "nccl"}, no_nccl)
    with pytest.raises(ModelError, match="expected one of auto, nccl, mpi, host"):
        choose({"CNNDSL_ALLREDUCE": "gloo"})


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch):
    """local rank modulo the GPU count, from Open MPI's or Slurm's variables; one process:
    None (the current device)."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert device_for_rank(4, {"OMPI_COMM_WORLD_LOCAL_RANK": "5"}) is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "16")
    assert device_for_rank(4, {"OMPI_COMM_WORLD_LOCAL_RANK": "5"}) == 1
    assert device_for_rank(8, {"OMPI_COMM_WORLD_LOCAL_RANK": "5"}) == 5
    assert device_for_rank(2, {"SLURM_LOCALID": "3"}) == 1
    assert device_for_rank(0, {"SLURM_LOCALID": "3"}) is None


# Every rank computes its own data's gradients (float64, buckets of ~200 bytes) and sums
# them over 2 ranks three ways: host MPI, the stand-in NCCL (summing through MPI at the
# pointers it gets) and the device-MPI path; rank 0 writes all three and its inputs.
TWO_RANKS = """
import sys
import numpy as np
from mpi4py import MPI
import cnndsl
import device_standins as standin
from cnndsl.training.distributed import Ranks, GradientBuckets
from cnndsl.training.device_allreduce import HostAllreduce, NcclAllreduce, DeviceMpiAllreduce

spec, out = sys.argv[1:3]
ranks = Ranks(MPI.COMM_WORLD)
ranks.bucket_bytes = 200
rng = np.random.default_rng(10 + ranks.rank)
x, y = rng.normal(size=(5, 6, 6, 2)), rng.integers(0, 3, size=5)
summing = lambda values: ranks.gradient_comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
results = {}
for name in ("host", "nccl", "mpi"):
    model = cnndsl.compile(open(spec).read()).build(seed=3, dtype="float64")
    model.compile(optimizer="sgd")
    cuda = standin.Cuda()
    allreduce = {
        "host": lambda: HostAllreduce(ranks, model.backend),
        "nccl": lambda: NcclAllreduce(ranks, np, cuda, standin.Nccl(cuda.log, summing)),
        "mpi": lambda: DeviceMpiAllreduce(ranks, np, cuda),
    }[name]()
    plan, _ = model._train_plan(model.loss)
    buckets = GradientBuckets(ranks, model, plan, [0.5 + ranks.rank], allreduce)
    model.observe_gradients(model._device_batch(x), model._labels(y), model.loss, buckets)
    grads = {k: np.zeros_like(v) for k, v in model.params.items() if k in buckets.where}
    (loss,) = buckets.finish(grads)
    results.update({f"{name}/{k}": v for k, v in grads.items()})
    results[f"{name}/loss"] = np.array(loss)
    results[f"{name}/buckets"] = np.array(len(buckets.buffers))
if ranks.first:
    np.savez(out, **results)
"""


def test_two_ranks_sum_the_same_through_nccl_as_through_mpi(tmp_path: Path):
    """On 2 ranks the NCCL path (stand-in, summing through MPI at its pointers) and the
    device-MPI path give the host MPI path's sums, bit for bit: each rank's own gradients
    added."""
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec") or shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent)
    )
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install 'cnndsl[mpi]')")
    spec, script, out = tmp_path / "tiny.cnn", tmp_path / "sum.py", tmp_path / "sums.npz"
    spec.write_text(SPEC)
    script.write_text(textwrap.dedent(TWO_RANKS))
    paths = [str(Path(__file__).parent), str(Path(cnndsl.__file__).parents[1])]
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    launch = [mpiexec, "--oversubscribe", "-n", "2", sys.executable, str(script)]
    done = subprocess.run(
        [*launch, str(spec), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sums = dict(np.load(out))
    assert sums["nccl/buckets"] >= 3
    expected: dict[str, np.ndarray] = {}
    for rank in (0, 1):
        rng = np.random.default_rng(10 + rank)
        x, y = rng.normal(size=(5, 6, 6, 2)), rng.integers(0, 3, size=5)
        model = cnndsl.compile(SPEC).build(seed=3, dtype="float64")
        model.compile(optimizer="sgd")
        for key, value in model.gradients(x, y)[1].items():
            expected[key] = expected.get(key, 0) + value
    for key, value in expected.items():
        np.testing.assert_allclose(sums[f"host/{key}"], value, rtol=1e-10, atol=1e-14, err_msg=key)
        for path in ("nccl", "mpi"):
            np.testing.assert_array_equal(sums[f"{path}/{key}"], sums[f"host/{key}"])
    assert sums["host/loss"] == sums["nccl/loss"] == sums["mpi/loss"] == 2.0


def test_the_address_of_device_and_host_arrays():
    """A CuPy array's address is its data.ptr (a view's includes its offset); NumPy's is
    its array interface's."""
    host = np.arange(10.0)
    assert address(host[3:]) == address(host) + 3 * host.itemsize
    device = SimpleNamespace(data=SimpleNamespace(ptr=123456))
    assert address(device) == 123456
