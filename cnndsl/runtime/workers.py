"""Workers: how a kernel spreads chunked work, and where it keeps scratch buffers.

Large kernels (im2col convolution, batchnorm, pooling) cut the batch into
chunks of whole samples and run one function per chunk. A `Workers` object
decides how: the base class runs the chunks one after another in the
calling thread (what CuPy wants: the GPU is already parallel), the NumPy
backend's `ThreadWorkers` spreads them over a few threads (NumPy and BLAS
release the GIL). Each lane owns scratch buffers that live between calls,
so a training step does not page-fault through fresh temporaries of
hundreds of MB on every layer.

Results must not depend on the number of lanes: a kernel that reduces over
chunks writes one partial per chunk and sums the partials in chunk order.

    >>> w = Workers()
    >>> out = []
    >>> w.each([(0, 2), (2, 4)], lambda lane, chunk: out.append(chunk))
    >>> out
    [(0, 2), (2, 4)]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

CHUNK_BYTES = 4 << 20  # about L2 + a share of L3: the im2col rows of one chunk
MIN_CHUNKS = 8  # enough chunks that lanes balance when another process steals a core
MIN_CHUNK_BYTES = 256 << 10  # a streaming chunk's least size: its lane's dispatch must pay off
SMALL_GEMM = 1 << 22  # multiply-adds below which a GEMM runs whole on one lane
SMALL_SUM = 1 << 20  # values below which partial sums are added on one lane


class Workers:
    """Runs chunked work serially in the calling thread; keeps one scratch set per lane.

    lanes: how many chunks may run at once (1 here). chunk_bytes: the scratch a
    kernel should aim for per chunk; min_chunks: split a batch at least this
    many ways where it has the samples (balance between lanes).
    """

    lanes = 1
    # "cache": kernels cut chunks for the CPU's caches (Winograd: ~128 tiles);
    # "whole": as few chunks as chunk_bytes allows (a GPU; `Capabilities.chunking`).
    chunking = "cache"

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, min_chunks: int = MIN_CHUNKS) -> None:
        self.chunk_bytes = chunk_bytes
        self.min_chunks = min_chunks
        self._scratch: dict[tuple[Any, ...], Any] = {}

    def each(self, chunks: Sequence[T], fn: Callable[[int, T], None]) -> None:
        """Call fn(lane, chunk) for every chunk; lane < self.lanes picks the scratch set."""
        for chunk in chunks:
            fn(0, chunk)

    def scratch(self, xp: Any, lane: int, name: str, shape: Sequence[int], dtype: Any) -> Any:
        """A reusable uninitialised buffer of `shape` for lane `lane` (grown, never shrunk).

        The buffer is only valid until the next call with the same (lane, name):
        a kernel must copy out anything it returns.
        """
        size = math.prod(shape)
        key = (xp.__name__, lane, name, np.dtype(dtype).str)
        buf = self._scratch.get(key)
        if buf is None or buf.size < size:
            buf = xp.empty(max(size, 1), dtype=dtype)
            self._scratch[key] = buf
        return buf[:size].reshape(tuple(shape))

    def ones(self, xp: Any, n: int, dtype: Any) -> Any:
        """A read-only vector of n ones: `ones @ a` sums the rows of a.

        BLAS's matrix-vector product sums columns several times faster than
        NumPy's `a.sum(axis=0)` (which walks rows one by one).
        """
        key = (xp.__name__, "ones", np.dtype(dtype).str)
        buf = self._scratch.get(key)
        if buf is None or buf.size < n:
            buf = xp.ones(max(n, 1), dtype=dtype)
            self._scratch[key] = buf
        return buf[:n]

    def matmul(self, xp: Any, a: Any, b: Any) -> Any:
        """a @ b for 2-D arrays, split into row (or column) blocks over the lanes.

        Each block is one BLAS call on its lane; whole-matrix BLAS threading is
        not used, so a small GEMM never waits at a thread barrier.
        """
        m, n = a.shape[0], b.shape[1]
        out = xp.empty((m, n), dtype=xp.result_type(a, b))
        if self.lanes == 1 or m * a.shape[1] * n < SMALL_GEMM:
            with self.one_blas_thread():
                return xp.matmul(a, b, out=out)
        parts = self.lanes * 2
        if m >= n:
            step = -(-m // parts)
            blocks = [(lo, min(m, lo + step)) for lo in range(0, m, step)]
            self.each(blocks, lambda lane, r: xp.matmul(a[r[0] : r[1]], b, out=out[r[0] : r[1]]))
        else:
            step = -(-n // parts)
            blocks = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
            self.each(
                blocks, lambda lane, r: xp.matmul(a, b[:, r[0] : r[1]], out=out[:, r[0] : r[1]])
            )
        return out

    def one_blas_thread(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which BLAS calls run on the calling thread only (here: as configured)."""
        return contextlib.nullcontext()

    def colsum(self, xp: Any, a: Any, out: Any = None) -> Any:
        """Column sums of a 2-D array (into `out` if given): Σ_rows a[row, :]."""
        return xp.matmul(self.ones(xp, a.shape[0], a.dtype), a, out=out)

    def sum_partials(self, xp: Any, parts: Any) -> Any:
        """parts.sum(axis=0) of (chunks, ...) partials: a fresh array, column blocks over lanes.

        Every column still adds its partials in chunk order, so the bits are
        those of the serial sum. NOTE: a conv's kernel gradient has one
        partial of fh·fw·c·f values per chunk (75 MB for a 512→512 3×3 conv),
        too much to add up on one core.
        """
        flat = parts.reshape(parts.shape[0], -1)
        out = xp.empty(flat.shape[1], dtype=parts.dtype)
        if self.lanes == 1 or flat.size < SMALL_SUM:
            xp.sum(flat, axis=0, out=out)
        else:
            step = -(-flat.shape[1] // (self.lanes * 4))
            blocks = [(lo, min(flat.shape[1], lo + step)) for lo in range(0, flat.shape[1], step)]
            self.each(
                blocks, lambda lane, b: xp.sum(flat[:, b[0] : b[1]], axis=0, out=out[b[0] : b[1]])
            )
        return out.reshape(parts.shape[1:])

    def batch_chunks(
        self, n: int, bytes_per_sample: int, stream: bool = False
    ) -> list[tuple[int, int]]:
        """Split samples [0, n) into runs of whole samples of about chunk_bytes each.

        stream=True: a quarter of that, for kernels that only stream through
        memory (elementwise passes, depthwise taps), which run best while a
        chunk stays in a core's L2; GEMM kernels want the larger chunks.
        The split depends only on n, bytes_per_sample and the budgets, never
        on the number of lanes, so reductions over chunks give the same bits
        whether they run on one thread or several. NOTE: a chunk carries
        MIN_CHUNK_BYTES or more even where that leaves fewer than min_chunks:
        handing a lane a chunk costs tens of µs, and the digits CNN (8 KiB
        a sample) cut into chunks of 4 samples trained 1.6× slower.
        """
        budget = self.chunk_bytes // 4 if stream else self.chunk_bytes
        per = max(1, budget // max(1, bytes_per_sample))
        per = min(per, max(1, -(-n // self.min_chunks)))
        per = max(per, -(-MIN_CHUNK_BYTES // max(1, bytes_per_sample)))
        return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


SERIAL = Workers()  # for kernel calls made without a backend (tests, direct calls)


def elementwise(xp: Any, ctx: Any, fn: Callable[[int, int], Any], x: Any) -> None:
    """Run fn(lo, hi) over the samples of batch x in streaming chunks on ctx's workers.

    For elementwise passes: fn writes rows lo:hi of its output with `out=`.
    """
    n = x.shape[0] if x.ndim else 0
    workers = workers_of(ctx)
    if n == 0 or workers.lanes == 1:
        fn(0, n)
        return
    workers.each(workers.batch_chunks(n, x[0].nbytes, stream=True), lambda lane, c: fn(*c))


def workers_of(ctx: Any) -> Workers:
    """The context's workers, or the shared serial ones."""
    w = getattr(ctx, "workers", None)
    return w if w is not None else SERIAL


__all__ = ["CHUNK_BYTES", "MIN_CHUNKS", "SERIAL", "Workers", "elementwise", "workers_of"]
