"""Compiled pooling kernels: maxpool and avgpool, forward and backward.

Replace cnndsl.ops.pool's maxpool2d_forward, maxpool2d_backward,
avgpool2d_forward and avgpool2d_backward (same signatures, same bits but
the sign of a zero). Those build a padded copy of each chunk and run one
NumPy pass per window offset (the max-pool gradient: a compare, a tie mask
and a multiply per offset); these read each window straight from x, rows
and columns outside it being padding (−inf for the max, zeros for the mean).

The max-pool gradient finds each window's first maximum again, one pass over
x, then writes dx in one more: straight where the windows tile the map,
else added up offset by offset, in the NumPy kernel's order, so that a pixel
several windows send their gradient to sums it in the same order.
NOTE: recording the first maximum's offset in the forward pass (int8) would
make the backward pass a single scatter: on a 2×2/2 pool of 64×28×28×32
(float32, one core) forward 0.44 -> 0.58 ms, backward 0.92 -> 0.24 ms, about
0.3% of the Fashion-MNIST step, for a saved array and a forward pass that
differs from NumPy's; not done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnndsl.ops.pool import window_counts
from cnndsl.ops.window import Geometry
from cnndsl.runtime.backends.numba_kernels import jit


@jit
def _max_forward(x: Any, y: Any, n0: int, n1: int, geo: Any) -> None:
    """y[n0:n1] = the max over each window; NaN wherever the window holds one."""
    kh, kw, sh, sw, top, left = geo
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for k in range(c):
                    y[n, i, j, k] = -np.inf  # the padding's value
                for u in range(kh):
                    r = i * sh + u - top
                    if r < 0 or r >= h:
                        continue
                    for v in range(kw):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        for k in range(c):
                            xv, m = x[n, r, col, k], y[n, i, j, k]
                            # NOTE: "greater, or NaN" keeps a NaN once found, as np.maximum.
                            y[n, i, j, k] = xv if (xv > m) | (xv != xv) else m


@jit
def _first_maxima(x: Any, n0: int, n1: int, geo: Any, first: Any) -> None:
    """first[n - n0, i, j, k]: the offset u·kw + v of window (i, j)'s first maximum, or −1.

    −1 where the window holds a NaN: its max is NaN, which no pixel equals.
    A window whose maximum is −inf finds it first at offset 0, padding or not,
    as NumPy's kernel (which pads with −inf) does.
    """
    kh, kw, sh, sw, top, left = geo
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    m = np.empty(c, dtype=x.dtype)
    nan = np.empty(c, dtype=np.bool_)
    for n in range(n0, n1):
        at = first[n - n0]
        for i in range(at.shape[0]):
            for j in range(at.shape[1]):
                for k in range(c):
                    m[k] = -np.inf
                    at[i, j, k] = 0
                    nan[k] = False
                for u in range(kh):
                    r = i * sh + u - top
                    if r < 0 or r >= h:
                        continue
                    for v in range(kw):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        o = np.int32(u * kw + v)
                        for k in range(c):
                            xv = x[n, r, col, k]
                            up = xv > m[k]  # strictly: ties stay with the first
                            m[k] = xv if up else m[k]
                            at[i, j, k] = o if up else at[i, j, k]
                            nan[k] = nan[k] | (xv != xv)
                for k in range(c):
                    at[i, j, k] = -1 if nan[k] else at[i, j, k]


@jit
def _max_grad_tiled(first: Any, dy: Any, dx: Any, n0: int, n1: int, geo: Any, zero: Any) -> None:
    """dx[n0:n1] where every pixel lies in one window: dy at the first maximum, dy·0 elsewhere.

    NOTE: dy·0, not 0: a NaN or infinite dy reaches the whole window, as
    NumPy's multiply by the hit mask.
    """
    kh, kw, sh, sw, top, left = geo
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    for n in range(n0, n1):
        at = first[n - n0]
        for i in range(dy.shape[1]):
            for u in range(kh):
                r = i * sh + u - top
                if r < 0 or r >= h:
                    continue
                for j in range(dy.shape[2]):
                    for v in range(kw):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        o = np.int32(u * kw + v)
                        for k in range(c):
                            d = dy[n, i, j, k]
                            dx[n, r, col, k] = d if at[i, j, k] == o else d * zero


@jit
def _max_grad(first: Any, dy: Any, dx: Any, n0: int, n1: int, geo: Any, zero: Any) -> None:
    """dx[n0:n1] for any windows: offset by offset, each adds dy·hit, as NumPy's kernel."""
    kh, kw, sh, sw, top, left = geo
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    dx[n0:n1] = 0
    for u in range(kh):
        for v in range(kw):
            o = np.int32(u * kw + v)
            for n in range(n0, n1):
                at = first[n - n0]
                for i in range(dy.shape[1]):
                    r = i * sh + u - top
                    if r < 0 or r >= h:
                        continue
                    for j in range(dy.shape[2]):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        for k in range(c):
                            d = dy[n, i, j, k]
                            dx[n, r, col, k] += d if at[i, j, k] == o else d * zero


@jit
def _avg_forward(x: Any, y: Any, n0: int, n1: int, geo: Any, counts: Any) -> None:
    """y[n0:n1] = each window's sum over its offsets in order, / counts[i, j]."""
    kh, kw, sh, sw, top, left = geo
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                for k in range(c):
                    y[n, i, j, k] = 0
                for u in range(kh):
                    r = i * sh + u - top
                    if r < 0 or r >= h:
                        continue
                    for v in range(kw):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        for k in range(c):
                            y[n, i, j, k] += x[n, r, col, k]
                count = counts[i, j]
                for k in range(c):
                    y[n, i, j, k] = y[n, i, j, k] / count


@jit
def _avg_grad(dy: Any, dx: Any, n0: int, n1: int, geo: Any, counts: Any, share: Any) -> None:
    """dx[n0:n1]: offset by offset, each window adds dy / count to the pixel it meets there."""
    kh, kw, sh, sw, top, left = geo
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    for n in range(n0, n1):
        for i in range(dy.shape[1]):
            for j in range(dy.shape[2]):
                count = counts[i, j]
                for k in range(c):
                    share[n - n0, i, j, k] = dy[n, i, j, k] / count
    dx[n0:n1] = 0
    for u in range(kh):
        for v in range(kw):
            for n in range(n0, n1):
                g = share[n - n0]
                for i in range(dy.shape[1]):
                    r = i * sh + u - top
                    if r < 0 or r >= h:
                        continue
                    for j in range(dy.shape[2]):
                        col = j * sw + v - left
                        if col < 0 or col >= w:
                            continue
                        for k in range(c):
                            dx[n, r, col, k] += g[i, j, k]


def _window(geo: Geometry) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, sh, sw, top, left): what the kernels need of the geometry."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = geo.kernel, geo.stride, geo.pads
    return kh, kw, sh, sw, top, left


def _chunks(workers: Any, n: int, geo: Geometry, itemsize: int) -> list[tuple[int, int]]:
    """Runs of samples for the lanes: each reads a map and writes the pooled one."""
    (h, w), (oh, ow) = geo.size, geo.out
    per_sample = (h * w + oh * ow) * geo.channels * itemsize
    return workers.batch_chunks(n, per_sample, stream=True)


def _counts(geo: Geometry, divisor: int | None, dtype: Any) -> Any:
    """Every window's divisor as an (oh, ow) array: NumPy's window_counts, broadcast."""
    counts = window_counts(np, geo, divisor, dtype)
    return np.ascontiguousarray(
        np.broadcast_to(np.asarray(counts, dtype=dtype), (1, *geo.out, 1))[0, :, :, 0]
    )


def maxpool2d_forward(xp: Any, x: Any, geo: Geometry, workers: Any) -> Any:
    """cnndsl.ops.pool.maxpool2d_forward, compiled."""
    x = np.ascontiguousarray(x)
    y = np.empty((x.shape[0], *geo.out, x.shape[3]), dtype=x.dtype)
    window = _window(geo)
    workers.each(
        _chunks(workers, x.shape[0], geo, x.itemsize),
        lambda lane, chunk: _max_forward(x, y, chunk[0], chunk[1], window),
    )
    return y


def maxpool2d_backward(xp: Any, x: Any, y: Any, dy: Any, geo: Geometry, workers: Any) -> Any:
    """cnndsl.ops.pool.maxpool2d_backward, compiled: finds each window's first maximum again."""
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    dx = np.empty(x.shape, dtype=dy.dtype)
    window = _window(geo)
    tiled = geo.kernel == geo.stride and geo.unread == (0, 0)
    grad = _max_grad_tiled if tiled else _max_grad
    zero = dy.dtype.type(0)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        first = workers.scratch(np, lane, "pool_first", (n1 - n0, *dy.shape[1:]), np.int32)
        _first_maxima(x, n0, n1, window, first)
        grad(first, dy, dx, n0, n1, window, zero)

    workers.each(_chunks(workers, x.shape[0], geo, x.itemsize), run)
    return dx


def avgpool2d_forward(xp: Any, x: Any, geo: Geometry, divisor: int | None, workers: Any) -> Any:
    """cnndsl.ops.pool.avgpool2d_forward, compiled."""
    x = np.ascontiguousarray(x)
    y = np.empty((x.shape[0], *geo.out, x.shape[3]), dtype=x.dtype)
    window, counts = _window(geo), _counts(geo, divisor, x.dtype)
    workers.each(
        _chunks(workers, x.shape[0], geo, x.itemsize),
        lambda lane, chunk: _avg_forward(x, y, chunk[0], chunk[1], window, counts),
    )
    return y


def avgpool2d_backward(xp: Any, dy: Any, geo: Geometry, divisor: int | None, workers: Any) -> Any:
    """cnndsl.ops.pool.avgpool2d_backward, compiled."""
    dy = np.ascontiguousarray(dy)
    dx = np.empty((dy.shape[0], *geo.size, geo.channels), dtype=dy.dtype)
    window, counts = _window(geo), _counts(geo, divisor, dy.dtype)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        share = workers.scratch(np, lane, "pool_share", (n1 - n0, *dy.shape[1:]), dy.dtype)
        _avg_grad(dy, dx, n0, n1, window, counts, share)

    workers.each(_chunks(workers, dy.shape[0], geo, dy.itemsize), run)
    return dx


OVERRIDES: dict[str, Callable[..., Any]] = {
    "maxpool2d_forward": maxpool2d_forward,
    "maxpool2d_backward": maxpool2d_backward,
    "avgpool2d_forward": avgpool2d_forward,
    "avgpool2d_backward": avgpool2d_backward,
}
