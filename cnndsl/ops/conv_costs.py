"""The conv cost model: predicted seconds per sample of im2col and Winograd F(4×4, 3×3).

Lowering chooses each 3×3 stride-1 conv's kernels by comparing these
predictions (`conv_kernels.forward_method`, `input_grad_method`,
`kernel_grad_method`). They are arithmetic on the layer's shape and the
constants in COSTS, so a plan never depends on timing at compile time.
Each kernel's time per sample is linear in what it does:

    im2col:   a·(GEMM FLOPs) + b·(column values copied, oh·ow·fh·fw·c)
              + d·(output pixels)
    Winograd: a·(GEMM FLOPs) + b·(tile values transformed, 36·tiles·(c + f))
              + g·(per-chunk values, 36·c·f, over the samples in a chunk)
              + d·(tiles)

The per-chunk values are the forward's kernel transform, which each chunk's
36 GEMMs stream through once, and dW's 36·c·f per-point sums, written and
read back once per chunk: they are what makes Winograd lose where a sample
has few tiles and c·f is large. The last term is what a pixel or a tile costs
whatever its channels (loop and call overheads, thin GEMMs): it makes
im2col win where c and f are a few channels. The coefficients are fitted by
least squares to the kernels' own times on one thread
(`benchmarks/measure_conv_costs.py`).
"""

from __future__ import annotations

from cnndsl.ops import winograd
from cnndsl.ops.window import Geometry

# Nanoseconds per unit of each term: (per GEMM FLOP, per value copied or
# transformed, per per-chunk value, per pixel or tile). Fitted by
# benchmarks/measure_conv_costs.py on 2026-12-06: x86_64 (AVX-512, OpenBLAS
# 0.3.31), 2 cores, load average 1.7, one thread, float32, Numba-compiled
# transforms, 19 shapes from 32×32×4→4 to 2×2×512→512 (3 kernels each): 48
# of the 57 times predicted within 20%, 54 within 30%, the worst 44% (8×8 and
# 7×7 at 256 channels, which ran slower under other load); the faster kernel
# predicted on every shape but ties (3×3×512 forward: within 4%).
COSTS: dict[str, tuple[float, float, float, float]] = {
    "im2col": (0.01164, 0.1535, 0.0, 23.05),
    "winograd": (0.01312, 0.3174, 0.7514, 669.8),
    "winograd_grad": (0.01524, 0.2814, 0.9787, 886.2),
}

PLAN_BATCH = 64  # the batch Winograd's chunks are costed at (a plan has no batch size)
CHUNK_TILES = 128  # fewest tiles a Winograd chunk takes (conv_kernels.WINOGRAD_CHUNK_TILES)


def chunk_samples(geo: Geometry, batch: int = PLAN_BATCH) -> float:
    """Samples in each of Winograd's chunks of a batch (as `conv_kernels._winograd_chunks`)."""
    th, tw = winograd.tiles(geo.out)
    count = 2
    while count * 2 <= batch and batch // (count * 2) * th * tw >= CHUNK_TILES:
        count *= 2
    return batch / min(count, batch)


Terms = tuple[float, float, float, float]


def im2col_terms(geo: Geometry, filters: int) -> Terms:
    """One sample's (GEMM FLOPs, column values copied, 0, pixels) by im2col (forward or dW)."""
    pixels = geo.out[0] * geo.out[1]
    return 2.0 * pixels * geo.columns * filters, float(pixels * geo.columns), 0.0, float(pixels)


def winograd_terms(geo: Geometry, filters: int, grad: bool = False, kept: bool = False) -> Terms:
    """One sample's (GEMM FLOPs, tile values, per-chunk values, tiles) by Winograd F(4×4, 3×3).

    grad: for dW (x's tiles are not made again where the forward kept them).
    """
    th, tw = winograd.tiles(geo.out)
    tiles, c = th * tw, geo.channels
    span2 = winograd.SPAN**2
    flops = 2.0 * span2 * tiles * c * filters
    values = span2 * tiles * (filters + (0 if grad and kept else c))
    return flops, float(values), span2 * c * filters / chunk_samples(geo), float(tiles)


def predict(kind: str, terms: Terms) -> float:
    """Seconds: the terms weighted by COSTS[kind]."""
    return sum(t * k for t, k in zip(terms, COSTS[kind], strict=True)) * 1e-9


def im2col_seconds(geo: Geometry, filters: int) -> float:
    """Predicted seconds of one sample's im2col forward (or dW: the same columns and GEMM)."""
    return predict("im2col", im2col_terms(geo, filters))


def winograd_seconds(geo: Geometry, filters: int) -> float:
    """Predicted seconds of one sample's Winograd forward (dx: on the transposed geometry)."""
    return predict("winograd", winograd_terms(geo, filters))


def winograd_grad_seconds(geo: Geometry, filters: int, kept: bool) -> float:
    """Predicted seconds of one sample's Winograd dW (kept: the forward's tiles are read)."""
    return predict("winograd_grad", winograd_terms(geo, filters, grad=True, kept=kept))


__all__ = [
    "COSTS",
    "chunk_samples",
    "im2col_seconds",
    "im2col_terms",
    "predict",
    "Terms",
    "winograd_grad_seconds",
    "winograd_seconds",
    "winograd_terms",
]
