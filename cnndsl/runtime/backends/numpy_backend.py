"""The NumPy backend: arrays in host memory, kernels run by NumPy's BLAS.

Kernels cut their work into chunks of samples (`cnndsl.runtime.workers`); this
backend runs the chunks on a few threads, one per core, each calling a
single-threaded BLAS: NumPy releases the GIL in copies, ufuncs and matmul,
so the im2col copies and the elementwise passes use every core, not only
the GEMMs, and no core waits at a BLAS barrier for one busy with someone
else's process.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from cnndsl.runtime.backends import numba_kernels
from cnndsl.runtime.backends.base import Backend, BackendError
from cnndsl.runtime.workers import Workers

T = TypeVar("T")

# Below this many multiply-adds per batch, one BLAS thread is faster: the GEMMs
# are too small to split, and OpenBLAS threads that spin-wait for work slow
# everything down (5x on digits) when other processes share the cores.
SMALL_WORK = 300_000_000


# glibc's mallopt parameters (malloc.h) and the values set by keep_heap_for_reuse.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
HEAP_MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit systems
HEAP_TRIM_THRESHOLD = 128 << 20
_heap_kept: bool | None = None


def _glibc() -> bool:
    """Whether this process runs on GNU libc (which has mallopt and these parameters)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # NOTE: musl, macOS, Windows
        return False


def keep_heap_for_reuse() -> bool:
    """Have glibc's malloc keep freed arrays of up to 32 MiB for reuse; True if it now does.

    NOTE: a training step frees its activations and gradients and allocates
    the same sizes again in the next step. With glibc's defaults the heap
    top is returned to the system and refaulted page by page: measured at
    batch 64, 5,400 page faults and 25 ms of system time a step on the
    Fashion-MNIST CNN, 23,000 and 200 ms on MobileNet-96; with these two
    settings none, 1.05-1.2× faster steps, the same peak RSS. Process-wide,
    set once, and not where the environment already configures malloc
    (MALLOC_*_ variables or GLIBC_TUNABLES) or the C library is not glibc.
    """
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = False
        configured = any(k.startswith("MALLOC_") for k in os.environ)
        configured = configured or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
        if _glibc() and not configured:
            try:
                libc = ctypes.CDLL(None)
                _heap_kept = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
                )
            except (OSError, AttributeError):  # NOTE: no mallopt here: malloc as it is
                _heap_kept = False
    return _heap_kept


def cores() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class _Blas:
    """Sets how many threads BLAS uses, for a `with` block (threadpoolctl, lazily imported)."""

    controller: Any = None
    tried = False
    # The thread count our own blocks set, None outside them. NOTE: a kernel
    # call enters a block, and threadpoolctl takes ~20 µs to set and restore:
    # a block asking for what is already set skips it.
    current: int | None = None

    @classmethod
    def single(cls) -> contextlib.AbstractContextManager[Any]:
        return cls.limit(1)

    @classmethod
    @contextlib.contextmanager
    def limit(cls, threads: int) -> Iterator[None]:
        if not cls.tried:
            cls.tried = True
            try:
                from threadpoolctl import ThreadpoolController

                cls.controller = ThreadpoolController()
            except ImportError:  # NOTE: scikit-learn brings it; without it, BLAS as configured
                cls.controller = None
        if cls.controller is None or cls.current == threads:
            yield
            return
        previous = cls.current
        with cls.controller.limit(limits=threads, user_api="blas"):
            cls.current = threads
            try:
                yield
            finally:
                cls.current = previous


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools() -> None:
    # NOTE: a forked child has none of the parent's threads: it starts its own pools.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of `threads` worker threads, shared by every model (made on first use)."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="cnndsl-lane")
        return _POOLS[threads]


class ThreadWorkers(Workers):
    """Runs the chunks of a kernel on `lanes` threads (the caller is one of them).

    Lanes take the next chunk as they finish one, so a core slowed by another
    process does less of the work. BLAS runs single-threaded meanwhile.
    """

    def __init__(self, lanes: int, **options: Any) -> None:
        super().__init__(**options)
        self.lanes = max(1, lanes)
        # BLAS threads for a kernel that has one chunk only (batch 1, say): its
        # GEMM is the only work there is. NumpyBackend.compute_scope sets it.
        self.solo_blas_threads = self.lanes
        self._inside = threading.local()

    def each(self, chunks: Sequence[T], fn: Callable[[int, T], None]) -> None:
        lanes = min(self.lanes, len(chunks))
        if getattr(self._inside, "busy", False):
            for chunk in chunks:
                fn(0, chunk)
            return
        if lanes <= 1:
            with _Blas.limit(self.solo_blas_threads):
                for chunk in chunks:
                    fn(0, chunk)
            return
        pool = _pool(self.lanes - 1)
        counter = itertools.count()
        failed: list[BaseException] = []

        def lane(k: int) -> None:
            self._inside.busy = True
            try:
                while not failed:
                    i = next(counter)  # atomic under the GIL
                    if i >= len(chunks):
                        return
                    fn(k, chunks[i])
            except BaseException as e:
                failed.append(e)
            finally:
                self._inside.busy = False

        with self.one_blas_thread():
            futures = [pool.submit(lane, k) for k in range(1, lanes)]
            lane(0)
            for f in futures:
                f.result()
        if failed:
            raise failed[0]

    def one_blas_thread(self) -> contextlib.AbstractContextManager[Any]:
        return _Blas.single()


class NumpyBackend(Backend):
    """Host arrays; `to_device` and `to_host` are (almost) free.

    threads: worker threads for chunked kernels and BLAS threads for the rest
    (None: one per core the process may use); small batches run BLAS on one thread.
    keep_freed_memory: let malloc keep freed arrays for the next step
    (`keep_heap_for_reuse`, process-wide; False leaves malloc as configured).
    jit: run the single-pass kernels Numba compiles
    (`cnndsl.runtime.backends.numba_kernels`) where it has them; None: when
    Numba imports and CNNDSL_JIT is not 0. False: NumPy's kernels only.
    """

    name = "numpy"

    def __init__(
        self,
        seed: int = 0,
        threads: int | None = None,
        keep_freed_memory: bool = True,
        jit: bool | None = None,
    ) -> None:
        super().__init__(np, seed)
        if jit is None or jit:
            if jit and not numba_kernels.available():
                raise BackendError(
                    "jit=True needs Numba (pip install numba) and CNNDSL_JIT not set to 0"
                )
            self.overrides = numba_kernels.overrides()
        self.jit = bool(self.overrides)
        self.threads = threads
        self.workers: ThreadWorkers = ThreadWorkers(threads if threads is not None else cores())
        if keep_freed_memory:
            keep_heap_for_reuse()

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    @contextlib.contextmanager
    def compute_scope(self, work: int) -> Iterator[None]:
        """BLAS on one thread for the whole run: the lanes are the parallelism.

        NOTE: OpenBLAS threads spin for a while after each multithreaded call;
        one that spins while the lanes run takes a core from them (measured: a
        lane phase right after a 2-thread GEMM ran up to 1.8× slower). So BLAS
        gets its threads only where a kernel has one chunk (ThreadWorkers.each)
        and the batch is large enough to pay for them.
        """
        workers = self.workers
        solo = workers.solo_blas_threads
        workers.solo_blas_threads = workers.lanes if work >= SMALL_WORK else 1
        try:
            with _Blas.single():
                yield
        finally:
            workers.solo_blas_threads = solo


def create(seed: int = 0, **options: Any) -> NumpyBackend:
    """Entry point used by `get_backend("numpy")`; options: threads, keep_freed_memory, jit."""
    unknown = set(options) - {"threads", "keep_freed_memory", "jit"}
    if unknown:
        raise TypeError(
            f"numpy backend options: threads, keep_freed_memory, jit; got {sorted(unknown)}"
        )
    return NumpyBackend(seed=seed, **options)
