"""Compiled depthwise convolution: one pass over the output pixels forward and backward.

Replaces `cnndsl.ops.depthwise_kernels` (same signatures, same results within
float rounding) for depthwise_conv and separable_conv's first half. The NumPy
kernels make two passes over a chunk per kernel offset forward (multiply,
add) and four backward; here each output pixel reads its fh·fw input pixels
once and sums the taps while its row of channels sits in L1. Padding is
never copied: a tap that falls outside the input reads zeros, so 0·kernel
is still added there and a NaN or infinite kernel value spreads to
the border as it does through NumPy's padded copy.

Forward adds the taps in the NumPy kernel's order (offset (0, 0) first, then
row by row), so its results are NumPy's bit for bit. Backward sums the
kernel gradient of each chunk pixel by pixel into that chunk's partial, and
the partials are added through `workers.sum_partials`, as NumPy's are: the
bits do not depend on the number of lanes. The input gradient is scattered
from each output pixel to the input pixels its taps read, in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnndsl.ops.registry import Array
from cnndsl.ops.window import Geometry
from cnndsl.runtime.backends.numba_kernels import jit
from cnndsl.runtime.workers import Workers


def depthwise2d_forward(xp: Any, x: Array, kernel: Array, geo: Geometry, workers: Workers) -> Array:
    """Depthwise conv of x (N, h, w, c) with kernel [fh, fw, c, m]; channel c·m + j out."""
    fh, fw, c, m = kernel.shape
    n = x.shape[0]
    oh, ow = geo.out
    dtype = np.result_type(x, kernel)
    x = np.ascontiguousarray(x, dtype=dtype)
    taps = np.ascontiguousarray(kernel, dtype=dtype).reshape(fh, fw, c * m)
    z = np.empty((n, oh, ow, c * m), dtype=dtype)
    zeros = np.zeros(1, dtype=dtype)
    (top, _), (left, _) = geo.pads

    def run(lane: int, chunk: tuple[int, int]) -> None:
        _forward_chunk(x, taps, z, zeros, chunk[0], chunk[1], top, left, geo.stride, geo.dilation)

    workers.each(_chunks(workers, n, geo, m, dtype.itemsize), run)
    return z


def depthwise2d_backward(
    xp: Any, x: Array, dz: Array, kernel: Array, geo: Geometry, want_dx: bool, workers: Workers
) -> tuple[Array | None, Array]:
    """(dx or None, dkernel) of depthwise2d_forward: each chunk's dz read once for both."""
    fh, fw, c, m = kernel.shape
    n = x.shape[0]
    dtype = np.result_type(x, dz, kernel)
    x = np.ascontiguousarray(x, dtype=dtype)
    dz = np.ascontiguousarray(dz, dtype=dtype).reshape(n, *geo.out, c * m)
    taps = np.ascontiguousarray(kernel, dtype=dtype).reshape(fh, fw, c * m)
    chunks = _chunks(workers, n, geo, m, dtype.itemsize)
    index = {chunk: i for i, chunk in enumerate(chunks)}
    dk_parts = workers.scratch(xp, -1, "jit_dk_parts", (len(chunks), fh, fw, c * m), dtype)
    # NOTE: without dx the kernel still needs an array of the right rank and type.
    dx = np.empty(x.shape, dtype=dtype) if want_dx else np.empty((0, 0, 0, 0), dtype=dtype)
    zeros = np.zeros(1, dtype=dtype)
    (top, _), (left, _) = geo.pads

    def run(lane: int, chunk: tuple[int, int]) -> None:
        part = dk_parts[index[chunk]]
        _backward_chunk(
            x, dz, taps, part, dx, want_dx, zeros, chunk[0], chunk[1], top, left,
            geo.stride, geo.dilation,
        )  # fmt: skip

    workers.each(chunks, run)
    dk = workers.sum_partials(xp, dk_parts).reshape(fh, fw, c, m)
    return (dx if want_dx else None), dk


def _chunks(
    workers: Workers, n: int, geo: Geometry, m: int, itemsize: int
) -> list[tuple[int, int]]:
    """Streaming-sized runs of samples: a chunk's input and output stay in a core's L2."""
    h, w = geo.size
    oh, ow = geo.out
    per_sample = (h * w + 2 * oh * ow * m) * geo.channels * itemsize
    return workers.batch_chunks(n, per_sample, stream=True)


# NOTE: the kernels index flat arrays with unsigned offsets. A signed index may
# be negative, so Numba wraps it around the array's length element by element,
# and that check keeps LLVM from vectorising the loops over channels; a view
# per tap (x[n, iy, ix]) instead pays reference counting worth more than the
# tap's few vector instructions (1.5-2× slower at 64 channels).
_U = np.uintp


@jit
def _forward_chunk(
    x: Array,
    taps: Array,
    z: Array,
    zeros: Array,
    n0: int,
    n1: int,
    top: int,
    left: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    """z[n0:n1] = the depthwise conv of x[n0:n1]; taps (fh, fw, c·m), zeros (1,).

    A 3×3 kernel with m = 1 sums the nine taps of a pixel inside the input in
    one loop over its channels, in a register, and stores each output once:
    nine loops of 32 or 64 channels are mostly set-up (1.4-1.9× slower on
    MobileNet's layers). Other pixels and kernels add one tap at a time.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    fh, fw, cm = taps.shape
    oh, ow = z.shape[1], z.shape[2]
    uc, um = _U(c), _U(cm // c)
    xf, kf, zf = x.reshape(-1), taps.reshape(-1), z.reshape(-1)
    zero = zeros[0]
    whole = fh == 3 and fw == 3 and um == 1  # nine taps in one loop where they all fit
    # Offsets, all unsigned (2 * an unsigned is signed in Numba): the taps' x
    # right of and below tap (0, 0), and the taps' kernel rows.
    right, down = _U(dilation[1] * c), _U(dilation[0] * w * c)
    right2 = right + right
    k1, k2, k3, k4, k5 = _U(c), _U(2 * c), _U(3 * c), _U(4 * c), _U(5 * c)
    k6, k7, k8 = _U(6 * c), _U(7 * c), _U(8 * c)
    for n in range(n0, n1):
        for oy in range(oh):
            iy0 = oy * stride[0] - top
            rows_inside = iy0 >= 0 and iy0 + (fh - 1) * dilation[0] < h
            for ox in range(ow):
                ix0 = ox * stride[1] - left
                o = _U(((n * oh + oy) * ow + ox) * cm)
                if whole and rows_inside and ix0 >= 0 and ix0 + 2 * dilation[1] < w:
                    a = _U(((n * h + iy0) * w + ix0) * c)
                    b = a + down
                    d = b + down
                    for ch in range(uc):
                        t = xf[a + ch] * kf[ch]
                        t += xf[a + right + ch] * kf[k1 + ch]
                        t += xf[a + right2 + ch] * kf[k2 + ch]
                        t += xf[b + ch] * kf[k3 + ch]
                        t += xf[b + right + ch] * kf[k4 + ch]
                        t += xf[b + right2 + ch] * kf[k5 + ch]
                        t += xf[d + ch] * kf[k6 + ch]
                        t += xf[d + right + ch] * kf[k7 + ch]
                        t += xf[d + right2 + ch] * kf[k8 + ch]
                        zf[o + ch] = t
                    continue
                for u in range(fh):
                    iy = iy0 + u * dilation[0]
                    for v in range(fw):
                        ix = ix0 + v * dilation[1]
                        kb = _U((u * fw + v) * cm)
                        first = u == 0 and v == 0
                        inside = 0 <= iy < h and 0 <= ix < w
                        xb = _U(((n * h + iy) * w + ix) * c) if inside else _U(0)
                        if um == 1:
                            # Outside the input the tap reads a zero (padding).
                            if inside and first:
                                for ch in range(uc):
                                    zf[o + ch] = xf[xb + ch] * kf[kb + ch]
                            elif inside:
                                for ch in range(uc):
                                    zf[o + ch] += xf[xb + ch] * kf[kb + ch]
                            elif first:
                                for ch in range(uc):
                                    zf[o + ch] = zero * kf[kb + ch]
                            else:
                                for ch in range(uc):
                                    zf[o + ch] += zero * kf[kb + ch]
                            continue
                        for ch in range(uc):
                            xv = xf[xb + ch] if inside else zero
                            for j in range(ch * um, ch * um + um):
                                if first:
                                    zf[o + j] = xv * kf[kb + j]
                                else:
                                    zf[o + j] += xv * kf[kb + j]


@jit
def _backward_chunk(
    x: Array,
    dz: Array,
    taps: Array,
    dk_part: Array,
    dx: Array,
    want_dx: bool,
    zeros: Array,
    n0: int,
    n1: int,
    top: int,
    left: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    """dk_part = Σ over chunk n0:n1 of x·dz per tap; dx[n0:n1] = dz scattered back through taps."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    fh, fw, cm = taps.shape
    oh, ow = dz.shape[1], dz.shape[2]
    uc, um = _U(c), _U(cm // c)
    xf, dzf, kf, dkf = x.reshape(-1), dz.reshape(-1), taps.reshape(-1), dk_part.reshape(-1)
    dxf = dx.reshape(-1)
    zero = zeros[0]
    dk_part[...] = 0
    if want_dx:
        dx[n0:n1] = 0
    for n in range(n0, n1):
        for oy in range(oh):
            for ox in range(ow):
                o = _U(((n * oh + oy) * ow + ox) * cm)
                for u in range(fh):
                    iy = oy * stride[0] - top + u * dilation[0]
                    for v in range(fw):
                        ix = ox * stride[1] - left + v * dilation[1]
                        kb = _U((u * fw + v) * cm)
                        inside = 0 <= iy < h and 0 <= ix < w
                        xb = _U(((n * h + iy) * w + ix) * c) if inside else _U(0)
                        if um == 1 and inside and want_dx:
                            for ch in range(uc):
                                d = dzf[o + ch]
                                dkf[kb + ch] += xf[xb + ch] * d
                                dxf[xb + ch] += d * kf[kb + ch]
                        elif um == 1 and inside:
                            for ch in range(uc):
                                dkf[kb + ch] += xf[xb + ch] * dzf[o + ch]
                        elif um == 1:
                            # A tap in the padding still adds 0·dz, as NumPy's padded copy does.
                            for ch in range(uc):
                                dkf[kb + ch] += zero * dzf[o + ch]
                        else:
                            for ch in range(uc):
                                xv = xf[xb + ch] if inside else zero
                                first = ch * um
                                back = dzf[o + first] * kf[kb + first]
                                dkf[kb + first] += xv * dzf[o + first]
                                for j in range(first + _U(1), first + um):
                                    dkf[kb + j] += xv * dzf[o + j]
                                    back += dzf[o + j] * kf[kb + j]
                                if want_dx and inside:
                                    dxf[xb + ch] += back


OVERRIDES: dict[str, Callable[..., Any]] = {
    "depthwise2d_forward": depthwise2d_forward,
    "depthwise2d_backward": depthwise2d_backward,
}
