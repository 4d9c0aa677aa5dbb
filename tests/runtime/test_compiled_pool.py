"""The compiled pooling kernels (numba_kernels/pool.py) against NumPy's, bit for bit.

Realistic sizes, ties, overlapping and padded windows, several chunks and lanes, NaN
and infinity. The op suites check the pool ops against the definition and PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnndsl.ops import OPS
from cnndsl.ops.registry import Context
from cnndsl.runtime.backends.numpy_backend import ThreadWorkers
from cnndsl.runtime.workers import Workers

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def small_chunks() -> Workers:
    """Serial workers whose chunks hold one sample each (many chunks, many partials)."""
    return Workers(chunk_bytes=1)


# ---- compiled pooling ----


def compiled_pool() -> Any:
    """The compiled pooling kernels' module, or a skip where Numba is missing or switched off."""
    from cnndsl.runtime.backends import numba_kernels

    if not numba_kernels.available():
        pytest.skip("Numba is not installed (or CNNDSL_JIT=0): no compiled kernels to check")
    from cnndsl.runtime.backends.numba_kernels import pool as compiled

    return compiled


def pool_both_ways(
    op: str, a: Any, x: np.ndarray, dy: np.ndarray, workers: Workers, overrides: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(y, dx) of pool `op`, with the compiled kernels where `overrides` holds them."""
    ctx = Context(workers=workers, overrides=overrides)
    y, saved = OPS[op].forward(np, a, [x], {}, ctx)
    (dx,), _ = OPS[op].backward(np, a, saved, dy, {}, ctx)
    return y, dx


POOLS = [
    (2, 2, "valid"),  # windows tile the map (Fashion-MNIST's)
    (3, 2, "same"),  # overlapping, padded after (ResNet stems)
    (3, 1, "valid"),  # a pixel in up to 9 windows
    (3, 2, 1),  # explicit padding: the first window starts in it
    (2, 3, "valid"),  # rows and columns no window reads
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("size", "stride", "padding"), POOLS)
@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_compiled_pools_equal_numpys_bit_for_bit(
    op: str, size: int, stride: int, padding: Any, dtype: Any
) -> None:
    """Batch 8, 28×28×16 full of ties (relu zeros, values rounded): NumPy's bits, any lanes."""
    compiled = compiled_pool()
    rng = np.random.default_rng(10 * size + stride)
    x = np.maximum(rng.normal(size=(8, 28, 28, 16)), 0).round(1).astype(dtype)
    a = OPS[op].bind(size, stride, padding=padding)
    out = OPS[op].shape(a, x.shape[1:])
    dy = rng.normal(size=(8, *out)).astype(dtype)
    want_y, want_dx = pool_both_ways(op, a, x, dy, Workers(), None)
    if op == "maxpool":
        assert (x == 0).mean() > 0.4  # many windows tie at zero
    for workers in (Workers(), small_chunks(), ThreadWorkers(2), ThreadWorkers(3, chunk_bytes=1)):
        y, dx = pool_both_ways(op, a, x, dy, workers, compiled.OVERRIDES)
        assert y.dtype == dx.dtype == dtype
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(dx, want_dx)


@pytest.mark.parametrize(("size", "stride", "padding"), [(2, 2, "valid"), (3, 2, 1)])
@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_compiled_pools_spread_nan_and_inf_as_numpys(
    op: str, size: int, stride: int, padding: Any
) -> None:
    """NaN and ±inf in x and dy reach the same outputs and gradients as with NumPy's kernels.

    A window of −inf alone, padding first, loses its gradient to the padding in both.
    """
    compiled = compiled_pool()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 8, 8, 3))
    x[0, 1, 1, 0] = np.nan
    x[1, 4, 5, 1] = np.inf
    x[1, :2, :2, 2] = -np.inf
    a = OPS[op].bind(size, stride, padding=padding)
    dy = rng.normal(size=(2, *OPS[op].shape(a, x.shape[1:])))
    dy[0, 3, 3, 1] = np.nan
    dy[1, 2, 2, 2] = np.inf
    with np.errstate(invalid="ignore"):  # inf·0 in NumPy's kernel
        want_y, want_dx = pool_both_ways(op, a, x, dy, Workers(), None)
    assert np.isnan(want_y).any() and np.isnan(want_dx).any()
    for workers in (small_chunks(), ThreadWorkers(2)):
        y, dx = pool_both_ways(op, a, x, dy, workers, compiled.OVERRIDES)
        np.testing.assert_array_equal(y, want_y)  # NaN where NaN
        np.testing.assert_array_equal(dx, want_dx)
