"""Stand-ins for CuPy's streams and events (cupy.cuda) and its NCCL module, recording calls.

NumPy arrays stand in for device arrays: the stand-in NCCL reads and writes
the memory at the pointers it is given (ctypes), so a wrong pointer, count or
dtype code gives wrong numbers, and `summing` does the sum over ranks (doubling
in one process, MPI's Allreduce on several).
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

# The values of ncclFloat32, ncclFloat64 and ncclSum in nccl.h.
NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
C_TYPES = {NCCL_FLOAT32: ctypes.c_float, NCCL_FLOAT64: ctypes.c_double}


class Event:
    """A recorded point of a stream."""

    def __init__(self, number: int, stream: Stream) -> None:
        self.number, self.stream = number, stream


class Stream:
    """A stream that records what is asked of it in the shared log."""

    def __init__(self, cuda: Cuda, ptr: int, non_blocking: bool) -> None:
        self.cuda, self.ptr, self.non_blocking = cuda, ptr, non_blocking

    def record(self, event: Event | None = None) -> Event:
        """A new event at the stream's end."""
        event = Event(next(self.cuda.numbers), self)
        self.cuda.log.append(("record", self.ptr, event.number))
        return event

    def wait_event(self, event: Event) -> None:
        """Later work on this stream waits for `event`."""
        self.cuda.log.append(("wait_event", self.ptr, event.number))

    def synchronize(self) -> None:
        """The host waits for the stream (what the NCCL path must never do)."""
        self.cuda.log.append(("synchronize", self.ptr))


class Cuda:
    """cupy.cuda: the current (compute) stream, new streams, and `nccl` (None: not importable)."""

    COMPUTE = 1  # the legacy default stream's handle in CuPy is 0; any number does here

    def __init__(self, nccl: Any = None) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.numbers = itertools.count()
        self.compute = Stream(self, self.COMPUTE, non_blocking=False)
        self.streams: list[Stream] = []
        self.nccl = nccl

    def Stream(self, non_blocking: bool = False) -> Stream:  # noqa: N802  (CuPy's name)
        """A new stream."""
        stream = Stream(self, 100 + len(self.streams), non_blocking)
        self.streams.append(stream)
        return stream

    def get_current_stream(self) -> Stream:
        """The stream kernels are launched on."""
        return self.compute


class Nccl:
    """cupy.cuda.nccl: a unique id, communicators, allReduce on the memory at a pointer."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM

    def __init__(self, log: list[tuple[Any, ...]], summing: Callable[[np.ndarray], None]):
        self.log, self.summing, self.available = log, summing, True

    def get_unique_id(self) -> tuple[int, ...]:
        """NCCL's 128-byte id (as CuPy gives it: a tuple of ints)."""
        self.log.append(("get_unique_id",))
        return tuple(range(-64, 64))

    def NcclCommunicator(self, ndev: int, commId: tuple[int, ...], rank: int) -> Nccl:  # noqa: N802, N803
        """A communicator of ndev ranks (this object answers its calls)."""
        self.log.append(("NcclCommunicator", ndev, commId, rank))
        return self

    def allReduce(  # noqa: N802  (CuPy's name)
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int
    ) -> None:
        """Sum `count` elements at sendbuf over ranks into recvbuf (in place here)."""
        self.log.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))
        assert sendbuf == recvbuf, "the buckets are summed in place"
        memory = (C_TYPES[datatype] * count).from_address(sendbuf)
        self.summing(np.ctypeslib.as_array(memory))


def doubling(values: np.ndarray) -> None:
    """The sum over two ranks that hold the same values."""
    values *= 2
