"""The compiled depthwise kernels (numba_kernels/depthwise.py) against NumPy's, at realistic sizes.

The op suites in tests/ops check them against the definition, finite differences and
PyTorch on small cases (op_cases.JIT_OPS); here: real layer sizes, several chunks and
lanes (the same bits on any), NaN and infinity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnndsl.ops.depthwise_kernels import depthwise2d_backward, depthwise2d_forward
from cnndsl.ops.window import geometry_of, same_padding
from cnndsl.runtime.backends.numpy_backend import ThreadWorkers
from cnndsl.runtime.workers import SERIAL, Workers

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def small_chunks() -> Workers:
    """Serial workers whose chunks hold one sample each (many chunks, many partials)."""
    return Workers(chunk_bytes=1)


def compiled_depthwise() -> Any:
    """The compiled depthwise kernels' module, or a skip without Numba (or with CNNDSL_JIT=0)."""
    from cnndsl.runtime.backends import numba_kernels

    if not numba_kernels.available():
        pytest.skip("Numba is not installed (or CNNDSL_JIT=0): no compiled kernels to check")
    from cnndsl.runtime.backends.numba_kernels import depthwise

    return depthwise


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_compiled_depthwise_matches_numpy_on_a_real_layer(
    dtype: Any, m: int, stride: int, padding: str
) -> None:
    """Batch 4, 24×24×16: NumPy's results (forward to the bit), the same bits on any lanes."""
    compiled = compiled_depthwise()
    rng = np.random.default_rng(10 * m + stride)
    x = rng.normal(size=(4, 24, 24, 16)).astype(dtype)
    kernel = rng.normal(size=(3, 3, 16, m)).astype(dtype)
    pad = same_padding(24, 3, stride) if padding == "same" else (0, 0)
    geo = geometry_of(x.shape[1:], (3, 3), (stride, stride), (1, 1), (pad, pad))
    dz = rng.normal(size=(4, *geo.out, 16 * m)).astype(dtype)
    want = depthwise2d_forward(np, x, kernel, geo, small_chunks())
    want_dx, want_dk = depthwise2d_backward(np, x, dz, kernel, geo, True, small_chunks())
    # The kernel gradient sums 4·oh·ow products per value, in another order than NumPy's.
    close = {"rtol": 1e-5, "atol": 1e-4} if dtype == np.float32 else TIGHT
    results = []
    # A 256 KiB budget: one sample a chunk, four partial sums of the kernel gradient.
    for workers in (Workers(1 << 18), ThreadWorkers(2, chunk_bytes=1 << 18), ThreadWorkers(3)):
        workers.chunk_bytes = 1 << 18
        z = compiled.depthwise2d_forward(np, x, kernel, geo, workers)
        dx, dk = compiled.depthwise2d_backward(np, x, dz, kernel, geo, True, workers)
        no_dx, dk_alone = compiled.depthwise2d_backward(np, x, dz, kernel, geo, False, workers)
        assert z.dtype == dx.dtype == dk.dtype == dtype and no_dx is None
        np.testing.assert_array_equal(z, want)
        np.testing.assert_allclose(dx, want_dx, **close)
        np.testing.assert_allclose(dk, want_dk, **close)
        np.testing.assert_array_equal(dk_alone, dk)
        results.append((z, dx, dk))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_compiled_depthwise_spreads_nan_and_infinity_as_numpy_does() -> None:
    """A NaN pixel and an infinite kernel value reach the outputs and gradients NumPy's reach."""
    compiled = compiled_depthwise()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 6, 3))
    x[0, 0, 0, 1] = np.nan
    kernel = rng.normal(size=(3, 3, 3, 1))
    kernel[0, 0, 2, 0] = np.inf  # times the zero padding: NaN along the top and left border
    geo = geometry_of(x.shape[1:], (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    dz = rng.normal(size=(2, *geo.out, 3))
    dz[1, 5, 5, 0] = np.nan
    z = compiled.depthwise2d_forward(np, x, kernel, geo, SERIAL)
    dx, dk = compiled.depthwise2d_backward(np, x, dz, kernel, geo, True, SERIAL)
    with np.errstate(invalid="ignore"):  # NumPy warns of the inf·0 it computes
        want = depthwise2d_forward(np, x, kernel, geo, SERIAL)
        want_dx, want_dk = depthwise2d_backward(np, x, dz, kernel, geo, True, SERIAL)
    assert np.isnan(want).any() and np.isnan(want_dk).any()
    for got, expected in ((z, want), (dx, want_dx), (dk, want_dk)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
