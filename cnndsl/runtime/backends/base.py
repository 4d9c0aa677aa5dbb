"""The backend interface: an array module, transfers, a random generator, overrides.

Kernels are written once against `xp` (numpy or cupy, which mirror each other);
a backend supplies that module, moves arrays between host and device, owns the
random generator that dropout draws from, may offer faster kernels in
`overrides` (passed to every op as `ctx.overrides`), and says how kernels
spread chunked work in `workers` (passed as `ctx.workers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnndsl.runtime.workers import Workers


class BackendError(Exception):
    """A backend that cannot be used here (unknown name, CuPy or GPU missing)."""


# Every conv algorithm the kernels have (cnndsl/ops/conv_kernels.py): "gemm" (1×1),
# "im2col", "winograd" (F(4×4, 3×3)), and the input gradient's "full" and "col2im".
ALL_CONV_ALGORITHMS = frozenset({"gemm", "im2col", "winograd", "full", "col2im"})


@dataclass(frozen=True)
class Capabilities:
    """What lowering and the memory plan need to know of a backend.

    conv_algorithms: the conv kernels lowering may choose (`Conv.plan`); one
    missing is replaced by the next best one the backend has.
    chunking: "cache" cuts kernels into cache-sized chunks of samples (the CPU:
    many chunks, spread over lanes, Winograd in chunks of ~128 tiles);
    "whole" runs the whole batch as one chunk up to `Workers.chunk_bytes`
    (a GPU: few large launches).
    scratch_bytes: the largest scratch buffer a lane keeps per kernel buffer
    (None: the memory plan's measured CPU figure, `cnndsl.passes.memory.SCRATCH`).
    """

    conv_algorithms: frozenset[str] = ALL_CONV_ALGORITHMS
    chunking: str = "cache"
    scratch_bytes: int | None = None


class Backend:
    """Base class: subclasses set `name` and pass their array module as `xp`."""

    name = "base"

    def __init__(self, xp: Any, seed: int = 0) -> None:
        self.xp = xp
        self.capabilities = Capabilities()
        self.overrides: Mapping[str, Callable[..., Any]] = {}
        self.workers: Workers = Workers()
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Reset the device random generator (dropout masks) to a known state."""
        self.rng = self.xp.random.default_rng(seed)

    def to_device(self, a: Any, dtype: Any = None) -> Any:
        """Copy a host array to the device (contiguous, optionally cast)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a: Any) -> np.ndarray:
        """Copy a device array to a NumPy array."""
        return np.asarray(a)

    @contextlib.contextmanager
    def compute_scope(self, work: int) -> Iterator[None]:
        """Context for a run of about `work` multiply-adds per batch (thread tuning)."""
        yield

    def synchronize(self) -> None:
        """Wait for queued device work (timing); a no-op on the CPU."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
