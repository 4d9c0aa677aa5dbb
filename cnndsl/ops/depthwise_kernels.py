"""Depthwise convolution kernels: multiply-adds over the kernel taps, chunk by chunk.

depthwise_conv and separable_conv (its first half) run these; the op classes
are in `cnndsl.ops.conv`, the padding and chunk helpers in
`cnndsl.ops.conv_kernels`. Memory-bound, so chunks are the streaming size
(`Workers.batch_chunks(stream=True)`): a chunk's taps stay in a core's L2.
Kernels are Keras-shaped [fh, fw, c, m]; output channel c·m + j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnndsl.ops.conv_kernels import padded_chunk
from cnndsl.ops.registry import Array
from cnndsl.ops.window import NOPAD, Geometry, tap, unpad2d
from cnndsl.runtime.workers import Workers


def depthwise2d_forward(xp: Any, x: Array, kernel: Array, geo: Geometry, workers: Workers) -> Array:
    """Depthwise conv of x (N, h, w, c) with kernel [fh, fw, c, m]; channel c·m + j out.

    Per chunk, one multiply and one add per kernel offset on cache-sized pieces.
    With stride 1 across and m = 1 (MobileNet's case) each output row is one
    contiguous run of ow·c values, multiplied by the kernel tap tiled ow times,
    so NumPy's inner loops run over ow·c values rather than over c.
    """
    fh, fw, c, m = kernel.shape
    n = x.shape[0]
    oh, ow = geo.out
    dtype = xp.result_type(x, kernel)
    z = xp.empty((n, oh, ow, c, m), dtype=dtype)
    taps = _depthwise_taps(xp, kernel, geo)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        src = padded_chunk(xp, workers, lane, "xpad", x, n0, n1, geo.pads)
        out = _depthwise_view(z[n0:n1], m, taps.wide)
        tmp = workers.scratch(xp, lane, "tmp", out.shape, dtype)
        for u in range(fh):
            for v in range(fw):
                t = _depthwise_view(tap(src, u, v, geo.stride, geo.dilation, geo.out), m, taps.wide)
                if u == 0 and v == 0:
                    xp.multiply(t, taps.k[u][v], out=out)
                else:
                    xp.multiply(t, taps.k[u][v], out=tmp)
                    out += tmp

    workers.each(_depthwise_chunks(workers, n, geo, m, x.dtype.itemsize), run)
    return z.reshape(n, oh, ow, c * m)


def depthwise2d_backward(
    xp: Any, x: Array, dz: Array, kernel: Array, geo: Geometry, want_dx: bool, workers: Workers
) -> tuple[Array | None, Array]:
    """(dx or None, dkernel) of depthwise2d_forward, one kernel offset at a time per chunk."""
    fh, fw, c, m = kernel.shape
    n = x.shape[0]
    oh, ow = geo.out
    dtype = xp.result_type(x, dz, kernel)
    dz5 = dz.reshape(n, oh, ow, c, m)
    chunks = _depthwise_chunks(workers, n, geo, m, x.dtype.itemsize)
    dk_parts = workers.scratch(xp, -1, "dk_parts", (len(chunks), fh, fw, c, m), dtype)
    dx = xp.empty(x.shape, dtype=dtype) if want_dx else None
    index = {chunk: i for i, chunk in enumerate(chunks)}
    taps = _depthwise_taps(xp, kernel, geo)
    kern = kernel if m > 1 else kernel[..., 0]

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        i = index[chunk]
        nb = n1 - n0
        src = padded_chunk(xp, workers, lane, "xpad", x, n0, n1, geo.pads)
        d = _depthwise_view(dz5[n0:n1], m, taps.wide)
        tmp = workers.scratch(xp, lane, "tmp", d.shape, dtype)
        if taps.wide:
            sums = workers.scratch(xp, lane, "sums", (ow, c), dtype)
        if dx is not None:
            hp, wp = geo.padded
            target = (
                dx[n0:n1]
                if geo.pads == NOPAD
                else workers.scratch(xp, lane, "dxpad", (nb, hp, wp, c), dtype)
            )
            target[...] = 0
            back = workers.scratch(xp, lane, "back", (nb, oh, ow, c), dtype)
        for u in range(fh):
            for v in range(fw):
                t = _depthwise_view(tap(src, u, v, geo.stride, geo.dilation, geo.out), m, taps.wide)
                xp.multiply(t, d, out=tmp)
                if taps.wide:
                    workers.colsum(xp, tmp.reshape(-1, ow * c), out=sums.reshape(-1))
                    sums.sum(axis=0, out=dk_parts[i, u, v, :, 0])
                else:
                    workers.colsum(xp, tmp.reshape(-1, c * m), out=dk_parts[i, u, v].reshape(-1))
                if dx is None:
                    continue
                spot = tap(target, u, v, geo.stride, geo.dilation, geo.out)
                if taps.wide:
                    b3 = back.reshape(nb, oh, ow * c)
                    xp.multiply(d, taps.k[u][v], out=b3)
                    _depthwise_view(spot, 1, True)[...] += b3
                    continue
                if m > 1:
                    xp.multiply(d, kern[u, v], out=tmp)
                    tmp.sum(axis=-1, out=back)
                else:
                    xp.multiply(d, kern[u, v], out=back)
                spot[...] += back
        if dx is not None and geo.pads != NOPAD:
            dx[n0:n1] = unpad2d(target, geo.pads)

    workers.each(chunks, run)
    return dx, workers.sum_partials(xp, dk_parts)


@dataclass(frozen=True)
class _Taps:
    """Per kernel offset, the factor a tap is multiplied by; `wide`: rows as ow·c runs."""

    k: list[list[Array]]
    wide: bool


def _depthwise_taps(xp: Any, kernel: Array, geo: Geometry) -> _Taps:
    fh, fw, _, m = kernel.shape
    wide = m == 1 and geo.stride[1] == 1
    if wide:
        ow = geo.out[1]
        tiled = [[xp.tile(kernel[u, v, :, 0], ow) for v in range(fw)] for u in range(fh)]
        return _Taps(tiled, True)
    kern = kernel if m > 1 else kernel[..., 0]
    return _Taps([[kern[u, v] for v in range(fw)] for u in range(fh)], False)


def _depthwise_view(a: Array, m: int, wide: bool) -> Array:
    """a (nb, oh, ow, c[, m]) as the kernels see it: (nb, oh, ow·c) rows when wide,
    (nb, oh, ow, c) for m = 1, else (nb, oh, ow, c, 1) to broadcast against m."""
    if wide:
        a = a[..., 0] if a.ndim == 5 else a
        nb, oh, ow, c = a.shape
        # NOTE: a reshape that merges (ow, c) is a view here (pixels are c apart),
        # so writes through it land in a; assert it rather than copy silently.
        assert a.strides[2] == c * a.strides[3] or ow == 1, "row not contiguous"
        return a.reshape(nb, oh, ow * c)
    if a.ndim == 5:
        return a if m > 1 else a[..., 0]
    return a[..., None] if m > 1 else a


def _depthwise_chunks(
    workers: Workers, n: int, geo: Geometry, m: int, itemsize: int
) -> list[tuple[int, int]]:
    hp, wp = geo.padded
    per_sample = (
        hp * wp * geo.channels + 2 * geo.out[0] * geo.out[1] * geo.channels * m
    ) * itemsize
    return workers.batch_chunks(n, per_sample, stream=True)
