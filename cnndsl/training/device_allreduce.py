"""How the gradient buckets are summed over ranks: on the host, by NCCL, or by CUDA-aware MPI.

Input: a `Ranks` and the model's backend. Output: a `BucketAllreduce`, which
`GradientBuckets` uses to allocate its buckets, fill them, start each bucket's
in-place sum over ranks and wait for them all:

- `HostAllreduce` (NumPy backends, and the fallback): host buffers, MPI
  Iallreduce; a device gradient is copied through the host.
- `NcclAllreduce` (CuPy, where `cupy.cuda.nccl` is available): device buffers,
  summed by NCCL on a stream of their own. A full bucket's sum waits for an
  event recorded on the compute stream, and `wait` makes the compute stream
  wait for the sums' events: the host never waits for the device.
- `DeviceMpiAllreduce` (CuPy, where the MPI library is CUDA-aware): device
  buffers handed to MPI Iallreduce; MPI knows no streams, so the host waits
  for each full bucket's gradients before starting its sum.

`choose_allreduce` picks one ($CNNDSL_ALLREDUCE: auto, nccl, mpi or host;
auto: NCCL, else CUDA-aware MPI, else the host with a warning saying why).
`device_for_rank` gives the GPU of this rank (one rank per GPU), which the
CuPy backend selects before it allocates. Errors: ModelError for a bad
$CNNDSL_ALLREDUCE or a transport asked for and missing.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cnndsl.runtime.executor import ModelError
from cnndsl.training.launcher import launched_ranks, local_rank

ALLREDUCE_VARIABLE = "CNNDSL_ALLREDUCE"
ALLREDUCE_CHOICES = ("auto", "nccl", "mpi", "host")
NCCL_INSTALL = "pip install nvidia-nccl-cu12"


def device_for_rank(count: int, environ: Mapping[str, str] | None = None) -> int | None:
    """The GPU this rank uses (local rank modulo `count`); None as one process.

    Without a local rank from the launcher, MPI tells it (the rank in a
    communicator of the processes sharing this machine's memory).
    """
    if count < 1 or launched_ranks() <= 1:
        return None
    local = local_rank(environ)
    if local is None:
        try:
            from mpi4py import MPI
        except ImportError:  # NOTE: fit then says mpi4py is missing; the GPU is the current one
            return None
        local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    return local % count


def mpi_is_cuda_aware() -> bool:
    """Whether the loaded MPI library takes device pointers (Open MPI's MPIX_Query_cuda_support).

    mpi4py does not expose it, so it is looked up in the libmpi this process
    loaded; False wherever it cannot be asked (other MPI libraries: set
    CNNDSL_ALLREDUCE=mpi to use one that is CUDA-aware).
    """
    try:
        from mpi4py import MPI  # noqa: F401  (loads libmpi)

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi.so" in line}
        for path in paths:
            query = getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", None)
            if query is not None:
                query.restype, query.argtypes = ctypes.c_int, []
                return bool(query())
    except (ImportError, OSError):
        pass
    return False


def address(a: Any) -> int:
    """The address of a contiguous array's first element: CuPy's a.data.ptr, else NumPy's."""
    pointer = getattr(getattr(a, "data", None), "ptr", None)
    return int(pointer if pointer is not None else a.__array_interface__["data"][0])


class HostAllreduce:
    """Host buffers summed by MPI Iallreduce; device gradients are copied through the host."""

    name = "host"

    def __init__(self, ranks: Any, backend: Any) -> None:
        self.ranks, self.xp, self.to_host = ranks, backend.xp, backend.to_host

    def buffer(self, size: int, dtype: np.dtype) -> Any:
        """A bucket of `size` elements."""
        return np.empty(size, dtype)

    def put(self, buffer: Any, at: int, grad: Any) -> None:
        """Copy one gradient into its place in a bucket."""
        buffer[at : at + grad.size] = np.asarray(self.to_host(grad)).reshape(-1)

    def take(self, buffer: Any, at: int, shape: tuple[int, ...]) -> Any:
        """One summed gradient, as an array of the backend."""
        return self.xp.asarray(buffer[at : at + int(np.prod(shape))].reshape(shape))

    def start(self, buffer: Any, started: list[Any]) -> Any:
        """Start the bucket's in-place sum over ranks; its request."""
        ranks = self.ranks
        began = time.perf_counter()
        request = ranks.gradient_comm.Iallreduce(ranks.mpi.IN_PLACE, buffer, op=ranks.mpi.SUM)
        # NOTE: Open MPI moves non-blocking collectives on only inside MPI calls: a test
        # of the ones in flight at each start lets the earlier buckets progress.
        ranks.mpi.Request.Testall([r for r in [*started, request] if r is not None])
        ranks.mpi_seconds += time.perf_counter() - began
        return request

    def wait(self, handles: list[Any]) -> None:
        """Wait until every bucket is summed."""
        began = time.perf_counter()
        self.ranks.mpi.Request.Waitall(handles)
        self.ranks.mpi_seconds += time.perf_counter() - began


class DeviceBuffers:
    """Buckets on the device: gradients copied in and summed gradients viewed out, on the GPU."""

    def __init__(self, xp: Any, cuda: Any) -> None:
        self.xp, self.cuda = xp, cuda

    def buffer(self, size: int, dtype: np.dtype) -> Any:
        """A bucket of `size` elements on the current device."""
        return self.xp.empty(size, dtype)

    def put(self, buffer: Any, at: int, grad: Any) -> None:
        """Copy one gradient into its place in a bucket (on the compute stream)."""
        buffer[at : at + grad.size] = grad.reshape(-1)

    def take(self, buffer: Any, at: int, shape: tuple[int, ...]) -> Any:
        """One summed gradient: a view of the bucket."""
        return buffer[at : at + int(np.prod(shape))].reshape(shape)


class NcclAllreduce(DeviceBuffers):
    """Device buckets summed in place by NCCL on a stream of their own; no host waits.

    `cuda` is CuPy's cupy.cuda (streams and events) and `nccl` its cupy.cuda.nccl;
    tests pass stand-ins. Rank 0 makes NCCL's unique id and MPI broadcasts it;
    every rank then joins the communicator on its current device.
    """

    name = "nccl"

    def __init__(self, ranks: Any, xp: Any, cuda: Any, nccl: Any) -> None:
        super().__init__(xp, cuda)
        self.ranks, self.nccl = ranks, nccl
        unique_id = nccl.get_unique_id() if ranks.first else None
        unique_id = ranks.comm.bcast(unique_id, root=0)
        self.comm = nccl.NcclCommunicator(ranks.size, unique_id, ranks.rank)
        # NOTE: non-blocking, so that work on the legacy default stream (the compute
        # stream, host copies) never waits for a sum that waits for another rank:
        # that rank may itself be waiting in MPI for this one (sync batchnorm).
        self.stream = cuda.Stream(non_blocking=True)
        self.codes = {
            np.dtype(np.float32): nccl.NCCL_FLOAT32,
            np.dtype(np.float64): nccl.NCCL_FLOAT64,
        }

    def start(self, buffer: Any, started: list[Any]) -> Any:
        """Queue the bucket's sum after the compute stream's work so far; the event of its end."""
        code = self.codes.get(np.dtype(buffer.dtype))
        if code is None:
            raise ModelError(f"NCCL sums float32 and float64 gradients, not {buffer.dtype}")
        filled = self.cuda.get_current_stream().record()
        self.stream.wait_event(filled)
        pointer = address(buffer)
        self.comm.allReduce(
            pointer, pointer, int(buffer.size), code, self.nccl.NCCL_SUM, self.stream.ptr
        )
        return self.stream.record()

    def wait(self, handles: list[Any]) -> None:
        """Make the compute stream wait for every bucket's sum (the host goes on)."""
        compute = self.cuda.get_current_stream()
        for summed in handles:
            compute.wait_event(summed)


class DeviceMpiAllreduce(DeviceBuffers):
    """Device buckets handed to a CUDA-aware MPI's Iallreduce.

    MPI knows no CUDA streams: before a bucket's sum starts, the host waits
    until the compute stream has filled it.
    """

    name = "mpi"

    def __init__(self, ranks: Any, xp: Any, cuda: Any) -> None:
        super().__init__(xp, cuda)
        self.host = HostAllreduce(ranks, SimpleBackend(xp))

    def start(self, buffer: Any, started: list[Any]) -> Any:
        """Wait for the bucket's gradients, then start its in-place MPI sum; its request."""
        self.cuda.get_current_stream().synchronize()
        return self.host.start(buffer, started)

    def wait(self, handles: list[Any]) -> None:
        """Wait until every bucket is summed."""
        self.host.wait(handles)


class SimpleBackend:
    """The two things HostAllreduce asks of a backend, for an array module alone."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.to_host = getattr(xp, "asnumpy", np.asarray)


BucketAllreduce = HostAllreduce | NcclAllreduce | DeviceMpiAllreduce


def choose_allreduce(
    ranks: Any,
    backend: Any,
    environ: Mapping[str, str] | None = None,
    cuda: Any = None,
    cuda_aware: Callable[[], bool] = mpi_is_cuda_aware,
) -> BucketAllreduce:
    """The way this backend's gradient buckets are summed ($CNNDSL_ALLREDUCE, module docstring).

    cuda: the backend's cupy.cuda (found from backend.xp when None; a backend
    without one, NumPy's, always sums on the host).
    """
    env = os.environ if environ is None else environ
    wanted = env.get(ALLREDUCE_VARIABLE, "").strip().lower() or "auto"
    if wanted not in ALLREDUCE_CHOICES:
        raise ModelError(
            f"{ALLREDUCE_VARIABLE}={wanted!r}: expected one of {', '.join(ALLREDUCE_CHOICES)}"
        )
    cuda = getattr(backend.xp, "cuda", None) if cuda is None else cuda
    if cuda is None or wanted == "host":
        return HostAllreduce(ranks, backend)
    nccl, why_not = _nccl(cuda)
    if nccl is not None and wanted in ("auto", "nccl"):
        return NcclAllreduce(ranks, backend.xp, cuda, nccl)
    if wanted == "nccl":
        raise ModelError(f"{ALLREDUCE_VARIABLE}=nccl, but {why_not} ({NCCL_INSTALL})")
    if wanted == "mpi" or cuda_aware():
        return DeviceMpiAllreduce(ranks, backend.xp, cuda)
    warnings.warn(
        f"gradients are summed through the host: {why_not} ({NCCL_INSTALL}) and the MPI"
        " library is not CUDA-aware",
        RuntimeWarning,
        stacklevel=3,
    )
    return HostAllreduce(ranks, backend)


def _nccl(cuda: Any) -> tuple[Any, str]:
    """(cupy.cuda.nccl, "") where NCCL is usable, else (None, why not)."""
    nccl = getattr(cuda, "nccl", None)
    if nccl is None:
        try:
            nccl = importlib.import_module(f"{cuda.__name__}.nccl")
        except (ImportError, AttributeError) as e:
            return None, f"CuPy's NCCL module does not import ({e})"
    if not getattr(nccl, "available", True):
        return None, "CuPy finds no NCCL library"
    return nccl, ""
