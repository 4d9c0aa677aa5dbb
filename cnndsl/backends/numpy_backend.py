"""The NumPy backend: arrays in host memory, kernels run by NumPy's BLAS."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from cnndsl.backends.base import Backend

# Below this many multiply-adds per batch, one BLAS thread is faster: the GEMMs
# are too small to split, and OpenBLAS threads that spin-wait for work slow
# everything down (5x on digits) when other processes share the cores.
SMALL_WORK = 300_000_000


class NumpyBackend(Backend):
    """Host arrays; `to_device` and `to_host` are (almost) free.

    threads: BLAS threads for large batches (None: as configured, e.g. by
    OPENBLAS_NUM_THREADS); small batches always run on one thread.
    """

    name = "numpy"

    def __init__(self, seed: int = 0, threads: int | None = None) -> None:
        super().__init__(np, seed)
        self.threads = threads

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    @contextlib.contextmanager
    def compute_scope(self, work: int) -> Iterator[None]:
        limit = 1 if work < SMALL_WORK else self.threads
        if limit is None:
            yield
            return
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # NOTE: scikit-learn brings it; without it, run as configured
            yield
            return
        with threadpool_limits(limits=limit, user_api="blas"):
            yield


def create(seed: int = 0, **options: Any) -> NumpyBackend:
    """Entry point used by `get_backend("numpy")`; option: threads."""
    unknown = set(options) - {"threads"}
    if unknown:
        raise TypeError(f"numpy backend options: threads; got {sorted(unknown)}")
    return NumpyBackend(seed=seed, **options)
