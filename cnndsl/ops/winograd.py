"""Winograd F(4×4, 3×3): 3×3 stride-1 convolutions in 4× fewer multiplies.

A 3×3 correlation over a 6×6 input tile gives a 4×4 output tile. Lavin &
Gray's minimal filtering algorithm computes it as Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A:
36 multiplies per tile and channel pair instead of 144. Summed over input
channels, the 36 elementwise products become 36 independent GEMMs of
(tiles, c)·(c, f), which is where the time goes; the transforms are cheap
passes over memory.

Tiles start every 4 pixels, so a chunk's padded input is gathered once into
(36, tiles·c) (2.25 values per pixel against im2col's 9), multiplied by
kron(Bᵀ, Bᵀ) in one skinny GEMM, and the 36 products come back through
kron(Aᵀ, Aᵀ) the same way. NOTE: measured against NumPy passes over strided
slices doing the same adds and subtracts, BLAS's skinny GEMMs take half the
time; and against F(2×2, 3×3) (16 GEMMs, 2.25× fewer multiplies), this is as
fast or faster on every benchmark layer, and faster than im2col down to 32
channels, where F(2×2, 3×3) only paid from 128. The price is precision: in
float32 the result is about 1e-5 off the direct sum, relative (1e-6 for
F(2×2, 3×3), 1e-7 for im2col), as in cuDNN's and oneDNN's Winograd kernels.

The same routine gives the input gradient of a stride-1 3×3 convolution: dx
is the correlation of dz, padded, with the flipped, transposed kernel. Which
layers use it is `conv_kernels.winograd_fits`.

A backend may replace the three transforms with the copies around them
(`input_tiles`, `output_tiles`, `grad_tiles`) through its overrides; the
NumPy backend's, compiled by Numba, make one pass each over memory
(`cnndsl.runtime.backends.numba_kernels.winograd`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cnndsl.ops.registry import Array
from cnndsl.ops.window import padded
from cnndsl.runtime.workers import Workers

# Lavin & Gray's F(4, 3), interpolation points 0, ±1, ±2 and ∞ (as cuDNN and
# oneDNN use it): y = Aᵀ[(G g) ⊙ (Bᵀ d)] for a 6-value input d and a 3-tap g.
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=np.float64,
)
TILE = 4  # output pixels per tile side
SPAN = TILE + 2  # input pixels per tile side (a 3×3 window)
# Row-major vec of a tile: vec(Bᵀ d B) = kron(Bᵀ, Bᵀ) vec(d), and so on.
INPUT_TRANSFORM = np.kron(_BT, _BT)  # (36, 36)
KERNEL_TRANSFORM = np.kron(_G, _G)  # (36, 9)
OUTPUT_TRANSFORM = np.kron(_AT, _AT)  # (16, 36)
# The weight gradient dW[u, v] = Σ x[i+u, j+v]·dz[i, j] runs the same algorithm
# with the roles turned (Lavin & Gray, section 5): since Σ_i y_i e_i = Σ_k g_k w_k,
# w = Gᵀ[(A e) ⊙ (Bᵀ d)] for a 4-value dz tile e, a 6-value input d and 3 taps w.
GRAD_TILE_TRANSFORM = np.kron(_AT.T, _AT.T)  # (36, 16): a 4×4 dz tile, transformed
GRAD_OUTPUT_TRANSFORM = np.kron(_G.T, _G.T)  # (9, 36): back to the 3×3 taps

TRANSFORM_BLOCKS = 8  # row blocks of a kernel transform, spread over the lanes
TRANSFORM_BLOCK_BYTES = 256 << 10  # ... each of at least this much output (dispatch pays off)

_constants: dict[tuple[str, str, str], Any] = {}


def _constant(xp: Any, name: str, dtype: Any) -> Any:
    """A transform matrix on xp's device in dtype, made once (CuPy would copy it per call)."""
    key = (xp.__name__, name, np.dtype(dtype).str)
    if key not in _constants:
        table = {
            "B": INPUT_TRANSFORM,
            "G": KERNEL_TRANSFORM,
            "A": OUTPUT_TRANSFORM,
            "dA": GRAD_TILE_TRANSFORM,
            "dG": GRAD_OUTPUT_TRANSFORM,
        }
        _constants[key] = xp.asarray(table[name], dtype=dtype)
    return _constants[key]


def transform_kernel(xp: Any, kernel: Array, workers: Workers, flipped: bool = False) -> Array:
    """G g Gᵀ for every (c, f) pair of a Keras-shaped (3, 3, c, f) kernel: (SPAN², c, f).

    flipped: the same for the kernel turned 180° with c and f swapped,
    W'[u, v, f, c] = W[2 − u, 2 − v, c, f], which the input gradient
    correlates with: (SPAN², f, c). The result is the workers' scratch, valid
    until the next call. NOTE: made in one thread into a fresh array, after
    copying the whole flipped kernel, the transforms took about 6% of a
    Fashion-MNIST training step with the lanes idle; in reused scratch, in
    row blocks over the lanes, flipping block by block, the step's time
    outside the lanes went from 31 to 14 ms.
    """
    fh, fw, c, f = kernel.shape
    assert (fh, fw) == (3, 3), "Winograd F(4×4, 3×3) needs a 3×3 kernel"
    rows, cols = (f, c) if flipped else (c, f)
    taps = kernel.reshape(9, c, f)
    g = _constant(xp, "G", kernel.dtype)
    u = workers.scratch(xp, -1, "wino_u", (SPAN * SPAN, rows, cols), kernel.dtype)

    def run(lane: int, block: tuple[int, int]) -> None:
        lo, hi = block
        if flipped:  # the 9 taps in reverse order, c and f swapped
            src = workers.scratch(xp, lane, "wino_flip", (9, hi - lo, c), kernel.dtype)
            xp.copyto(src, taps[::-1, :, lo:hi].transpose(0, 2, 1))
        else:
            src = taps[:, lo:hi]
        # Both reshapes are views: a block's rows are contiguous within each plane.
        xp.matmul(g, src.reshape(9, -1), out=u[:, lo:hi].reshape(SPAN * SPAN, -1))

    size = SPAN * SPAN * rows * cols * u.dtype.itemsize
    blocks = max(1, min(TRANSFORM_BLOCKS, size // TRANSFORM_BLOCK_BYTES))
    step = -(-rows // blocks)
    workers.each([(lo, min(rows, lo + step)) for lo in range(0, rows, step)], run)
    return u


def tiles(size: tuple[int, int]) -> tuple[int, int]:
    """How many TILE×TILE output tiles cover an output of `size` (rounding up)."""
    return -(-size[0] // TILE), -(-size[1] // TILE)


def correlate_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    src: Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    u: Array,
    out: Array,
    keep: Array | None = None,
    bias: Array | None = None,
    relu: bool = False,
    overrides: Mapping[str, Callable[..., Any]] | None = None,
) -> None:
    """out (nb, oh, ow, f) = zero-padded src (nb, h, w, c) ⋆ the kernel whose transform is u.

    out's spatial size must be the padded size minus 2 (a 3×3 stride-1 window).
    keep: where to leave src's transformed tiles (36, tiles·c) for the kernel
    gradient (`kernel_grad_chunk`'s tiles) instead of in scratch. bias and
    relu are applied as the tiles are written out. overrides: a backend's
    versions of the transforms ("winograd_input_tiles", "winograd_output_tiles").
    """
    nb, h, w, c = src.shape
    f = u.shape[2]
    oh, ow = out.shape[1], out.shape[2]
    hp, wp = padded((h, w), pads)
    assert (oh, ow) == (hp - 2, wp - 2), "output is not the 3×3 'valid' size"
    th, tw = tiles((oh, ow))
    count = nb * th * tw
    taps = SPAN * SPAN
    fast = overrides or {}
    gather = fast.get("winograd_input_tiles", input_tiles)
    v = gather(xp, workers, lane, src, pads, (th, tw), keep)

    m = workers.scratch(xp, lane, "wino_m", (taps, count, f), out.dtype)
    xp.matmul(v.reshape(taps, count, c), u, out=m)
    scatter = fast.get("winograd_output_tiles", output_tiles)
    scatter(xp, workers, lane, m, out, bias, relu)


def output_tiles(
    xp: Any,
    workers: Workers,
    lane: int,
    m: Array,
    out: Array,
    bias: Array | None = None,
    relu: bool = False,
) -> None:
    """Aᵀ M A for every tile of the products m (36, tiles, f), cropped into out (nb, oh, ow, f).

    Then out += bias and relu, where given.
    """
    nb, oh, ow, f = out.shape
    th, tw = tiles((oh, ow))
    count = nb * th * tw
    y = workers.scratch(xp, lane, "wino_y", (TILE * TILE, count * f), out.dtype)
    xp.matmul(_constant(xp, "A", out.dtype), m.reshape(SPAN * SPAN, count * f), out=y)
    y6 = y.reshape(TILE, TILE, nb, th, tw, f)
    for i in range(TILE):
        for j in range(TILE):
            part = out[:, i::TILE, j::TILE]
            part[...] = y6[i, j, :, : part.shape[1], : part.shape[2]]
    if bias is not None:
        out += bias
    if relu:
        xp.maximum(out, 0, out=out)


def input_tiles(
    xp: Any,
    workers: Workers,
    lane: int,
    src: Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    grid: tuple[int, int],
    out: Array | None = None,
) -> Array:
    """Bᵀ d B for every SPAN×SPAN tile of zero-padded src on a grid of tiles: (36, tiles·c).

    out: where to write them (the lane's scratch if None).
    """
    nb, h, w, c = src.shape
    (t, _), (l, _) = pads
    th, tw = grid
    # the tiles' windows reach TILE·th + 2 rows: past the padding where oh is no multiple
    buf = workers.scratch(xp, lane, "wino_pad", (nb, TILE * th + 2, TILE * tw + 2, c), src.dtype)
    buf[:, :t] = 0
    buf[:, t + h :] = 0
    buf[:, t : t + h, :l] = 0
    buf[:, t : t + h, l + w :] = 0
    buf[:, t : t + h, l : l + w] = src
    sn, sh, sw, sc = buf.strides
    view = xp.lib.stride_tricks.as_strided(
        buf,
        shape=(SPAN, SPAN, nb, th, tw, c),
        strides=(sh, sw, sn, TILE * sh, TILE * sw, sc),
    )
    count = nb * th * tw
    gathered = workers.scratch(xp, lane, "wino_d", (SPAN * SPAN, count * c), src.dtype)
    xp.copyto(gathered.reshape(SPAN, SPAN, nb, th, tw, c), view)
    if out is None:
        out = workers.scratch(xp, lane, "wino_v", (SPAN * SPAN, count * c), src.dtype)
    xp.matmul(_constant(xp, "B", src.dtype), gathered, out=out)
    return out


def kernel_grad_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    src: Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    dz: Array,
    out: Array,
    kept: Array | None = None,
    overrides: Mapping[str, Callable[..., Any]] | None = None,
) -> None:
    """out (9, c·f) = Σ over the chunk of zero-padded src (nb, h, w, c) ⋆ dz (nb, oh, ow, f).

    The 3×3 stride-1 weight gradient, tap-major ((3, 3, c, f) flattened): one
    GEMM of (c, tiles)·(tiles, f) per transform point, summed over the tiles.
    kept: src's transformed tiles as the forward pass left them
    (`correlate_chunk`'s keep); they are made again if None. overrides: a
    backend's transforms ("winograd_input_tiles", "winograd_grad_tiles").
    """
    nb, oh, ow, f = dz.shape
    c = src.shape[3]
    th, tw = tiles((oh, ow))
    count = nb * th * tw
    taps = SPAN * SPAN
    fast = overrides or {}
    if kept is not None:
        v = kept
    else:
        v = fast.get("winograd_input_tiles", input_tiles)(xp, workers, lane, src, pads, (th, tw))
    et = fast.get("winograd_grad_tiles", grad_tiles)(xp, workers, lane, dz, (th, tw))

    m = workers.scratch(xp, lane, "wino_dm", (taps, c, f), out.dtype)
    xp.matmul(v.reshape(taps, count, c).transpose(0, 2, 1), et.reshape(taps, count, f), out=m)
    xp.matmul(_constant(xp, "dG", out.dtype), m.reshape(taps, c * f), out=out)


def grad_tiles(xp: Any, workers: Workers, lane: int, dz: Array, grid: tuple[int, int]) -> Array:
    """A e Aᵀ for every TILE×TILE tile e of dz (nb, oh, ow, f), zeros past it: (36, tiles·f)."""
    nb, oh, ow, f = dz.shape
    th, tw = grid
    count = nb * th * tw
    if (TILE * th, TILE * tw) == (oh, ow):
        padded_dz = dz
    else:  # overhanging tiles read zeros: they add nothing to the sums
        shape = (nb, TILE * th, TILE * tw, f)
        padded_dz = workers.scratch(xp, lane, "wino_dzpad", shape, dz.dtype)
        padded_dz[...] = 0
        padded_dz[:, :oh, :ow] = dz
    e = workers.scratch(xp, lane, "wino_e", (TILE * TILE, count * f), dz.dtype)
    tiles6 = padded_dz.reshape(nb, th, TILE, tw, TILE, f).transpose(2, 4, 0, 1, 3, 5)
    xp.copyto(e.reshape(TILE, TILE, nb, th, tw, f), tiles6)
    et = workers.scratch(xp, lane, "wino_et", (SPAN * SPAN, count * f), dz.dtype)
    xp.matmul(_constant(xp, "dA", dz.dtype), e, out=et)
    return et


__all__ = [
    "GRAD_OUTPUT_TRANSFORM",
    "GRAD_TILE_TRANSFORM",
    "INPUT_TRANSFORM",
    "KERNEL_TRANSFORM",
    "OUTPUT_TRANSFORM",
    "SPAN",
    "TILE",
    "correlate_chunk",
    "grad_tiles",
    "input_tiles",
    "kernel_grad_chunk",
    "output_tiles",
    "tiles",
    "transform_kernel",
]
