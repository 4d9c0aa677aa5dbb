"""Winograd F(2×2, 3×3): 3×3 stride-1 convolutions in 2.25× fewer multiplies.

A 3×3 correlation over a 4×4 input tile gives a 2×2 output tile. Lavin &
Gray's minimal filtering algorithm (interpolation points 0, 1, −1) computes it
as Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A: 16 multiplies per tile and channel pair
instead of 36. Summed over input channels, the 16 elementwise products become
16 independent GEMMs of (tiles, c)·(c, f), which is where the time goes; the
transforms are cheap passes over memory.

Tiles start every 2 pixels, so a chunk's padded input is gathered once into
(16, tiles·c) (4 values per pixel against im2col's 9), multiplied by
kron(Bᵀ, Bᵀ) in one skinny GEMM, and the 16 products come back through
kron(Aᵀ, Aᵀ) the same way. NOTE: measured against NumPy passes over strided
slices doing the same adds and subtracts (20 calls per chunk), BLAS's skinny
GEMMs take half the time.

The same routine gives the input gradient of a stride-1 3×3 convolution: dx
is the correlation of dz, padded, with the flipped, transposed kernel. Which
layers use it is `conv_kernels.winograd_fits`: with few channels the 16
GEMMs are too thin for BLAS and im2col's one long GEMM wins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnndsl.ops.registry import Array
from cnndsl.ops.workers import Workers

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# Row-major vec of a 4×4 tile: vec(Bᵀ d B) = kron(Bᵀ, Bᵀ) vec(d), and so on.
INPUT_TRANSFORM = np.kron(_BT, _BT)  # (16, 16)
KERNEL_TRANSFORM = np.kron(_G, _G)  # (16, 9)
OUTPUT_TRANSFORM = np.kron(_AT, _AT)  # (4, 16)

_constants: dict[tuple[str, str, str], Any] = {}


def _constant(xp: Any, name: str, dtype: Any) -> Any:
    """A transform matrix on xp's device in dtype, made once (CuPy would copy it per call)."""
    key = (xp.__name__, name, np.dtype(dtype).str)
    if key not in _constants:
        table = {"B": INPUT_TRANSFORM, "G": KERNEL_TRANSFORM, "A": OUTPUT_TRANSFORM}
        _constants[key] = xp.asarray(table[name], dtype=dtype)
    return _constants[key]


def transform_kernel(xp: Any, kernel: Array) -> Array:
    """G g Gᵀ for every (c, f) pair of a Keras-shaped (3, 3, c, f) kernel: (16, c, f)."""
    fh, fw, c, f = kernel.shape
    assert (fh, fw) == (3, 3), "Winograd F(2×2, 3×3) needs a 3×3 kernel"
    g = _constant(xp, "G", kernel.dtype)
    return xp.matmul(g, xp.ascontiguousarray(kernel).reshape(9, c * f)).reshape(16, c, f)


def tiles(size: tuple[int, int]) -> tuple[int, int]:
    """How many 2×2 output tiles cover an output of `size` (odd sizes round up)."""
    return -(-size[0] // 2), -(-size[1] // 2)


def correlate_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    src: Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    u: Array,
    out: Array,
) -> None:
    """out (nb, oh, ow, f) = zero-padded src (nb, h, w, c) ⋆ the kernel whose transform is u.

    out's spatial size must be the padded size minus 2 (a 3×3 stride-1 window).
    """
    nb, h, w, c = src.shape
    f = u.shape[2]
    oh, ow = out.shape[1], out.shape[2]
    (t, b), (l, r) = pads
    assert (oh, ow) == (h + t + b - 2, w + l + r - 2), "output is not the 3×3 'valid' size"
    th, tw = tiles((oh, ow))
    hp, wp = 2 * th + 2, 2 * tw + 2  # one row/column more than padded where oh/ow is odd
    count = nb * th * tw

    buf = workers.scratch(xp, lane, "wino_pad", (nb, hp, wp, c), src.dtype)
    buf[:, :t] = 0
    buf[:, t + h :] = 0
    buf[:, t : t + h, :l] = 0
    buf[:, t : t + h, l + w :] = 0
    buf[:, t : t + h, l : l + w] = src

    sn, sh, sw, sc = buf.strides
    view = xp.lib.stride_tricks.as_strided(
        buf, shape=(4, 4, nb, th, tw, c), strides=(sh, sw, sn, 2 * sh, 2 * sw, sc)
    )
    gathered = workers.scratch(xp, lane, "wino_d", (16, count * c), src.dtype)
    xp.copyto(gathered.reshape(4, 4, nb, th, tw, c), view)
    v = workers.scratch(xp, lane, "wino_v", (16, count * c), src.dtype)
    xp.matmul(_constant(xp, "B", src.dtype), gathered, out=v)

    m = workers.scratch(xp, lane, "wino_m", (16, count, f), out.dtype)
    xp.matmul(v.reshape(16, count, c), u, out=m)

    y = workers.scratch(xp, lane, "wino_y", (4, count * f), out.dtype)
    xp.matmul(_constant(xp, "A", out.dtype), m.reshape(16, count * f), out=y)
    y6 = y.reshape(2, 2, nb, th, tw, f)
    for i in range(2):
        for j in range(2):
            part = out[:, i::2, j::2]
            part[...] = y6[i, j, :, : part.shape[1], : part.shape[2]]


__all__ = [
    "INPUT_TRANSFORM",
    "KERNEL_TRANSFORM",
    "OUTPUT_TRANSFORM",
    "correlate_chunk",
    "tiles",
    "transform_kernel",
]
