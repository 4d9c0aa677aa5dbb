"""Winograd F(4×4, 3×3)'s tile transforms, each fused with its copies into or out of tiles.

Input: the NumPy transform (`cnndsl.ops.winograd.input_tiles`) pads a
chunk into a buffer, gathers its 6×6 tiles into a second one and multiplies
by kron(Bᵀ, Bᵀ), a (36, 36) matrix, three-quarters zeros, in a skinny GEMM.
Here each tile is read straight from the unpadded input and Bᵀ d B is done
as the adds and subtracts it is (down the tile's columns, then along its
rows, through a small per-lane buffer), written once in the (36, tiles, c)
layout the GEMMs read. Output: Aᵀ M A the same way, cropping the edge
tiles and adding bias and relu as each 4×4 tile is stored. The weight
gradient's dz tiles (A e Aᵀ) likewise.

Multiplying by 2, 4 and 8 is exact, so those constants are written as
doublings (x + x): float32 stays float32 (a literal 4 would promote it to
float64 in Numba). Every output is its own sum in a fixed order, so chunks
and lanes change no bit. A NaN or infinity reaches every output that
depends on it: where kron(Bᵀ, Bᵀ)'s zeros multiply one, BLAS spreads a NaN
over its whole tile; the adds here spread it only to the outputs whose sums
read it, still a superset of the pixels whose 3×3 windows hold it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnndsl.ops.registry import Array
from cnndsl.ops.window import Pads
from cnndsl.ops.winograd import SPAN, TILE, tiles
from cnndsl.runtime.backends.numba_kernels import jit
from cnndsl.runtime.workers import Workers


@jit
def _bt(d0: Any, d1: Any, d2: Any, d3: Any, d4: Any, d5: Any) -> tuple[Any, ...]:
    """Bᵀ d for six values d: the rows of F(4, 3)'s input transform."""
    a = d4 - d2
    b = d3 - d1
    four_d1 = (d1 + d1) + (d1 + d1)
    four_d2 = (d2 + d2) + (d2 + d2)
    return (
        (d0 + d0) + (d0 + d0) - four_d2 - d2 + d4,
        (d3 + d4) - four_d1 - four_d2,
        (d4 - d3) + four_d1 - four_d2,
        a + (b + b),
        a - (b + b),
        four_d1 - ((d3 + d3) + (d3 + d3)) - d3 + d5,
    )


@jit
def _at(m0: Any, m1: Any, m2: Any, m3: Any, m4: Any, m5: Any) -> tuple[Any, ...]:
    """Aᵀ m for six values m: the rows of F(4, 3)'s output transform."""
    s12 = m1 + m2
    d12 = m1 - m2
    s34 = m3 + m4
    d34 = m3 - m4
    two_d34 = d34 + d34
    four_d34 = two_d34 + two_d34
    four_s34 = (s34 + s34) + (s34 + s34)
    return m0 + s12 + s34, d12 + two_d34, s12 + four_s34, d12 + (four_d34 + four_d34) + m5


@jit
def _a(e0: Any, e1: Any, e2: Any, e3: Any) -> tuple[Any, ...]:
    """A e for four values e: a dz tile's transform for the weight gradient."""
    s02 = e0 + e2
    s13 = e1 + e3
    four_e2 = (e2 + e2) + (e2 + e2)
    four_e3 = (e3 + e3) + (e3 + e3)
    near = e0 + four_e2
    far = e1 + four_e3
    return e0, s02 + s13, s02 - s13, near + (far + far), near - (far + far), e3


@jit
def _column_in(src: Any, n: int, y: int, x: int, tmp: Any, s: int) -> None:
    """tmp[:, s] = Bᵀ d for the column d = src[n, y : y + 6, x] (6, c) of a tile.

    NOTE: indexed from the whole array, not a slice of it: a slice's strides
    are unknown to the compiler, and its loop over channels ran 2-5× slower.
    """
    for ch in range(src.shape[3]):
        t0, t1, t2, t3, t4, t5 = _bt(
            src[n, y, x, ch], src[n, y + 1, x, ch], src[n, y + 2, x, ch],
            src[n, y + 3, x, ch], src[n, y + 4, x, ch], src[n, y + 5, x, ch],
        )  # fmt: skip
        tmp[0, s, ch] = t0
        tmp[1, s, ch] = t1
        tmp[2, s, ch] = t2
        tmp[3, s, ch] = t3
        tmp[4, s, ch] = t4
        tmp[5, s, ch] = t5


@jit
def _tiles_in(
    src: Any, top: int, left: int, th: int, tw: int, out: Any, tmp: Any, col: Any
) -> None:
    """out[:, tile] = Bᵀ d B for each 6×6 tile d of src zero-padded by (top, left).

    src (nb, h, w, c); out (36, nb·th·tw, c); tmp (6, 6, c) holds one tile's
    Bᵀ d, col (1, 6, 1, c) one column of a tile that overhangs the top or bottom.
    """
    nb, h, w, c = src.shape
    zero = out.dtype.type(0)
    for n in range(nb):
        for ti in range(th):
            y0 = ti * TILE - top
            rows_inside = y0 >= 0 and y0 + SPAN <= h
            for tj in range(tw):
                x0 = tj * TILE - left
                tile = (n * th + ti) * tw + tj
                for s in range(SPAN):  # Bᵀ d: down each of the tile's columns
                    x = x0 + s
                    if x < 0 or x >= w:
                        tmp[:, s, :] = zero
                    elif rows_inside:
                        _column_in(src, n, y0, x, tmp, s)
                    else:  # rows past the input's edge read zeros
                        for r in range(SPAN):
                            if 0 <= y0 + r < h:
                                col[0, r, 0, :] = src[n, y0 + r, x, :]
                            else:
                                col[0, r, 0, :] = zero
                        _column_in(col, 0, 0, 0, tmp, s)
                for p in range(SPAN):  # (Bᵀ d) B: along each row
                    k = p * SPAN
                    for ch in range(c):
                        t0, t1, t2, t3, t4, t5 = _bt(
                            tmp[p, 0, ch], tmp[p, 1, ch], tmp[p, 2, ch],
                            tmp[p, 3, ch], tmp[p, 4, ch], tmp[p, 5, ch],
                        )  # fmt: skip
                        out[k, tile, ch] = t0
                        out[k + 1, tile, ch] = t1
                        out[k + 2, tile, ch] = t2
                        out[k + 3, tile, ch] = t3
                        out[k + 4, tile, ch] = t4
                        out[k + 5, tile, ch] = t5


@jit
def _tiles_out(m: Any, out: Any, bias: Any, relu: bool, th: int, tw: int, tmp: Any) -> None:
    """out = Aᵀ M A (+ bias, relu) for each tile M of m (36, nb·th·tw, f), cropped to out's size.

    out (nb, oh, ow, f); bias (f,) or empty for none; tmp (6, 4, f) holds one
    tile's M A.
    """
    nb, oh, ow, f = out.shape
    zero = out.dtype.type(0)
    has_bias = bias.shape[0] > 0
    for n in range(nb):
        for ti in range(th):
            rows = min(TILE, oh - ti * TILE)
            for tj in range(tw):
                cols = min(TILE, ow - tj * TILE)
                tile = (n * th + ti) * tw + tj
                for p in range(SPAN):  # M A: along each row of the tile
                    k = p * SPAN
                    for ch in range(f):
                        t0, t1, t2, t3 = _at(
                            m[k, tile, ch], m[k + 1, tile, ch], m[k + 2, tile, ch],
                            m[k + 3, tile, ch], m[k + 4, tile, ch], m[k + 5, tile, ch],
                        )  # fmt: skip
                        tmp[p, 0, ch] = t0
                        tmp[p, 1, ch] = t1
                        tmp[p, 2, ch] = t2
                        tmp[p, 3, ch] = t3
                for j in range(cols):  # Aᵀ (M A): down each column, then stored
                    x = tj * TILE + j
                    for ch in range(f):
                        y = _at(
                            tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch],
                            tmp[3, j, ch], tmp[4, j, ch], tmp[5, j, ch],
                        )  # fmt: skip
                        for i in range(rows):
                            v = y[i] + bias[ch] if has_bias else y[i]
                            if relu and v < zero:
                                v = zero
                            out[n, ti * TILE + i, x, ch] = v


@jit
def _grad_tiles(dz: Any, th: int, tw: int, out: Any, tmp: Any) -> None:
    """out[:, tile] = A e Aᵀ for each 4×4 tile e of dz (nb, oh, ow, f), zeros past its edge.

    out (36, nb·th·tw, f); tmp (6, 4, f) holds one tile's A e.
    """
    nb, oh, ow, f = dz.shape
    zero = out.dtype.type(0)
    for n in range(nb):
        for ti in range(th):
            rows = min(TILE, oh - ti * TILE)
            for tj in range(tw):
                tile = (n * th + ti) * tw + tj
                for j in range(TILE):  # A e: down each column
                    x = tj * TILE + j
                    if x >= ow:
                        tmp[:, j, :] = zero
                        continue
                    for ch in range(f):
                        e0 = dz[n, ti * TILE, x, ch]
                        e1 = dz[n, ti * TILE + 1, x, ch] if rows > 1 else zero
                        e2 = dz[n, ti * TILE + 2, x, ch] if rows > 2 else zero
                        e3 = dz[n, ti * TILE + 3, x, ch] if rows > 3 else zero
                        t0, t1, t2, t3, t4, t5 = _a(e0, e1, e2, e3)
                        tmp[0, j, ch] = t0
                        tmp[1, j, ch] = t1
                        tmp[2, j, ch] = t2
                        tmp[3, j, ch] = t3
                        tmp[4, j, ch] = t4
                        tmp[5, j, ch] = t5
                for p in range(SPAN):  # (A e) Aᵀ: along each row
                    k = p * SPAN
                    for ch in range(f):
                        t0, t1, t2, t3, t4, t5 = _a(
                            tmp[p, 0, ch], tmp[p, 1, ch], tmp[p, 2, ch], tmp[p, 3, ch]
                        )
                        out[k, tile, ch] = t0
                        out[k + 1, tile, ch] = t1
                        out[k + 2, tile, ch] = t2
                        out[k + 3, tile, ch] = t3
                        out[k + 4, tile, ch] = t4
                        out[k + 5, tile, ch] = t5


# ---- the overrides: cnndsl.ops.winograd's signatures ----


def input_tiles(
    xp: Any,
    workers: Workers,
    lane: int,
    src: Array,
    pads: Pads,
    grid: tuple[int, int],
    out: Array | None = None,
) -> Array:
    """cnndsl.ops.winograd.input_tiles in one pass over src: (36, tiles·c)."""
    nb, _, _, c = src.shape
    th, tw = grid
    count = nb * th * tw
    if out is None:
        out = workers.scratch(xp, lane, "wino_v", (SPAN * SPAN, count * c), src.dtype)
    assert out.flags.c_contiguous, "the tiles are written through a reshaped view of out"
    tmp = workers.scratch(xp, lane, "wino_tmp", (SPAN, SPAN, c), src.dtype)
    col = workers.scratch(xp, lane, "wino_col", (1, SPAN, 1, c), src.dtype)
    _tiles_in(src, pads[0][0], pads[1][0], th, tw, out.reshape(SPAN * SPAN, count, c), tmp, col)
    return out


def output_tiles(
    xp: Any,
    workers: Workers,
    lane: int,
    m: Array,
    out: Array,
    bias: Array | None = None,
    relu: bool = False,
) -> None:
    """cnndsl.ops.winograd.output_tiles in one pass over m, bias and relu included."""
    nb, oh, ow, f = out.shape
    th, tw = tiles((oh, ow))
    tmp = workers.scratch(xp, lane, "wino_tmp_out", (SPAN, TILE, f), m.dtype)
    no_bias = workers.scratch(xp, -1, "wino_no_bias", (0,), out.dtype)
    products = m.reshape(SPAN * SPAN, nb * th * tw, f)
    _tiles_out(products, out, no_bias if bias is None else bias, relu, th, tw, tmp)


def grad_tiles(xp: Any, workers: Workers, lane: int, dz: Array, grid: tuple[int, int]) -> Array:
    """cnndsl.ops.winograd.grad_tiles in one pass over dz: (36, tiles·f)."""
    nb, _, _, f = dz.shape
    th, tw = grid
    count = nb * th * tw
    out = workers.scratch(xp, lane, "wino_et", (SPAN * SPAN, count * f), dz.dtype)
    tmp = workers.scratch(xp, lane, "wino_tmp_grad", (SPAN, TILE, f), dz.dtype)
    _grad_tiles(dz, th, tw, out.reshape(SPAN * SPAN, count, f), tmp)
    return out


OVERRIDES: dict[str, Callable[..., Any]] = {
    "winograd_input_tiles": input_tiles,
    "winograd_output_tiles": output_tiles,
    "winograd_grad_tiles": grad_tiles,
}
