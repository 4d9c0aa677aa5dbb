"""Compiled batchnorm: two passes over a chunk forward and two backward.

Replaces the chunked kernels of `cnndsl.ops.norm` (same signatures, same
results within float rounding). NumPy's kernels make a pass per operation:
shift, column sum, square, column sum for the statistics; multiply, add,
activate for the affine map; mask, sum, centre, multiply, sum for the
gradient sums; mask, three multiply-adds for dx. Here each is one pass that
reads every value once:

- `batchnorm_shifted_sums`: Σ (x − x0) and Σ (x − x0)² per channel in
  float64 (x0: the batch's first row, as NumPy's kernel shifts), one partial
  per chunk. `batch_moments` turns the sums into moments, over MPI ranks too.
- `batchnorm_affine`: y = act(x·scale + shift) with the activation in the
  same pass. The products and sums are rounded as NumPy's are (no fused
  multiply-add), so y is NumPy's bit for bit.
- `batchnorm_dz_sums`: dz = dy masked by the activation's derivative, read
  on the fly, and (Σ dz, Σ dz·(x − mean)) per channel in float64.
- `batchnorm_dx`: dx = g·dz + coef·x + const, dz masked again on the fly.

Partials are added in chunk order and the chunks do not depend on the
number of lanes, so the bits do not either. NaN and infinity propagate as
NumPy's: relu and relu6 of NaN are NaN (explicit comparisons, not max), and
where the mask is off dz is dy − dy (NaN for a NaN or infinite dy, as NumPy's
dy·0; zero otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnndsl.ops.norm import BatchNormSaved, channel_rows, row_chunks
from cnndsl.ops.registry import Array
from cnndsl.runtime.backends.numba_kernels import jit
from cnndsl.runtime.workers import Workers

# The fused activations by code: the kernels branch outside their loops.
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}


def _act_code(act: str) -> int:
    assert act in ACTIVATIONS, f"batchnorm cannot fuse activation {act}"
    return ACTIVATIONS[act]


def _flat(a: Array, dtype: Any, c: int) -> Array:
    """a as contiguous (rows, c) of dtype: one compiled layout per dtype."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1, c)


def batchnorm_shifted_sums(xp: Any, x: Array, workers: Workers) -> tuple[Array, Array]:
    """(Σ (x − x0), Σ (x − x0)²) per channel in float64 as (2, C), and the shift x0."""
    c = x.shape[-1]
    x2 = _flat(x, x.dtype, c)
    x0 = x2[0].copy() if x2.shape[0] else np.zeros(c, x.dtype)
    chunks = row_chunks(workers, x, channel_rows(x)[1])
    index = {chunk: i for i, chunk in enumerate(chunks)}
    parts = np.empty((len(chunks), 2, c), np.float64)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        _shifted_sums_rows(x2, x0, chunk[0], chunk[1], parts[index[chunk]])

    workers.each(chunks, run)
    return parts.sum(axis=0), x0


def batchnorm_affine(
    xp: Any, x: Array, scale: Array, shift: Array, act: str, workers: Workers
) -> Array:
    """y = act(x·scale + shift) per channel (act: none, relu or relu6), one pass a chunk."""
    c = x.shape[-1]
    code = _act_code(act)
    x2 = _flat(x, x.dtype, c)
    scale, shift = (np.ascontiguousarray(v, dtype=x.dtype) for v in (scale, shift))
    y = np.empty(x.shape, dtype=x.dtype)
    y2 = y.reshape(x2.shape)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        _affine_rows(x2, scale, shift, code, chunk[0], chunk[1], y2)

    workers.each(row_chunks(workers, x, channel_rows(x)[1]), run)
    return y


def batchnorm_dz_sums(
    xp: Any, dy: Array, s: BatchNormSaved, act: str, workers: Workers
) -> tuple[Array, Array]:
    """(Σ dz, Σ dz·xhat) per channel in float64: dz masked on the fly, one pass a chunk."""
    c = dy.shape[-1]
    code = _act_code(act) if s.y is not None else 0
    dy2 = _flat(dy, dy.dtype, c)
    x2 = _flat(s.x, dy.dtype, c)
    # NOTE: without an activation there is no saved output; dy stands in, unread.
    y2 = _flat(s.y, dy.dtype, c) if code else dy2
    mean = np.ascontiguousarray(s.mean, dtype=dy.dtype)
    chunks = row_chunks(workers, dy, channel_rows(dy)[1])
    index = {chunk: i for i, chunk in enumerate(chunks)}
    parts = np.empty((len(chunks), 2, c), np.float64)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        _dz_sums_rows(dy2, y2, x2, mean, code, chunk[0], chunk[1], parts[index[chunk]])

    workers.each(chunks, run)
    total = parts.sum(axis=0)
    return total[0], total[1] * s.inv


def batchnorm_dx(
    xp: Any,
    dy: Array,
    s: BatchNormSaved,
    act: str,
    g: Array,
    coef: Array,
    const: Array,
    workers: Workers,
) -> Array:
    """dx = g·dz + coef·x + const per channel, dz masked on the fly: one pass a chunk."""
    c = dy.shape[-1]
    code = _act_code(act) if s.y is not None else 0
    dy2 = _flat(dy, dy.dtype, c)
    x2 = _flat(s.x, dy.dtype, c)
    y2 = _flat(s.y, dy.dtype, c) if code else dy2
    g, coef, const = (np.ascontiguousarray(v, dtype=dy.dtype) for v in (g, coef, const))
    dx = np.empty(dy.shape, dtype=dy.dtype)
    dx2 = dx.reshape(dy2.shape)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        _dx_rows(dy2, y2, x2, g, coef, const, code, chunk[0], chunk[1], dx2)

    workers.each(row_chunks(workers, dy, channel_rows(dy)[1]), run)
    return dx


# ---- the compiled loops: rows lo:hi of (rows, channels) arrays ----


@jit
def _shifted_sums_rows(x2: Array, x0: Array, lo: int, hi: int, out: Array) -> None:
    c = x2.shape[1]
    shift = x0.astype(np.float64)
    total = np.zeros(c, np.float64)
    square = np.zeros(c, np.float64)
    for r in range(lo, hi):
        for j in range(c):
            d = np.float64(x2[r, j]) - shift[j]
            total[j] += d
            square[j] += d * d
    out[0, :] = total
    out[1, :] = square


@jit
def _affine_rows(
    x2: Array, scale: Array, shift: Array, code: int, lo: int, hi: int, y2: Array
) -> None:
    c = x2.shape[1]
    for r in range(lo, hi):
        for j in range(c):
            # NOTE: two roundings (product, then sum), as NumPy's multiply and add.
            p = x2[r, j] * scale[j]
            z = p + shift[j]
            if code == 1:  # relu; NaN passes (z != z)
                y2[r, j] = z if (z > 0 or z != z) else 0
            elif code == 2:  # relu6; NaN passes
                y2[r, j] = 6 if z > 6 else (z if (z > 0 or z != z) else 0)
            else:
                y2[r, j] = z


@jit
def _dz_sums_rows(
    dy2: Array, y2: Array, x2: Array, mean: Array, code: int, lo: int, hi: int, out: Array
) -> None:
    c = dy2.shape[1]
    centre = mean.astype(np.float64)
    total = np.zeros(c, np.float64)
    moment = np.zeros(c, np.float64)
    for r in range(lo, hi):
        for j in range(c):
            d = dy2[r, j]
            if code == 1:
                d = d if y2[r, j] > 0 else d - d
            elif code == 2:
                y = y2[r, j]
                d = d if (y > 0 and y < 6) else d - d
            dz = np.float64(d)
            total[j] += dz
            moment[j] += dz * (np.float64(x2[r, j]) - centre[j])
    out[0, :] = total
    out[1, :] = moment


@jit
def _dx_rows(
    dy2: Array,
    y2: Array,
    x2: Array,
    g: Array,
    coef: Array,
    const: Array,
    code: int,
    lo: int,
    hi: int,
    dx2: Array,
) -> None:
    c = dy2.shape[1]
    for r in range(lo, hi):
        for j in range(c):
            d = dy2[r, j]
            if code == 1:
                d = d if y2[r, j] > 0 else d - d
            elif code == 2:
                y = y2[r, j]
                d = d if (y > 0 and y < 6) else d - d
            # NOTE: rounded step by step, as NumPy's dz·g, += x·coef, += const.
            a = d * g[j]
            b = x2[r, j] * coef[j]
            dx2[r, j] = (a + b) + const[j]


OVERRIDES: dict[str, Callable[..., Any]] = {
    "batchnorm_shifted_sums": batchnorm_shifted_sums,
    "batchnorm_affine": batchnorm_affine,
    "batchnorm_dz_sums": batchnorm_dz_sums,
    "batchnorm_dx": batchnorm_dx,
}
