"""Winograd's transforms compiled by Numba (numba_kernels/winograd.py) against NumPy's.

Realistic maps, `same` and `valid`, edge tiles that overhang; whole convs with bias,
relu and kept tiles; NaN and infinity. The op suites check the conv op itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnndsl.ops.conv_kernels import conv2d_backward, conv2d_forward, kept_tiles_size
from cnndsl.ops.window import geometry_of
from cnndsl.runtime.backends.numpy_backend import ThreadWorkers
from cnndsl.runtime.workers import Workers

TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def small_chunks() -> Workers:
    """Serial workers whose chunks hold one sample each (many chunks, many partials)."""
    return Workers(chunk_bytes=1)


# ---- Winograd's transforms compiled by Numba (the NumPy backend's overrides) ----

# (batch, input h, w; pads ((top, bottom), (left, right))): realistic maps, `same` and
# `valid`, and maps that are no multiple of 4, whose edge tiles overhang (in part or whole).
WINOGRAD_MAPS = [
    ((4, 24, 24), ((1, 1), (1, 1))),  # same, 6×6 tiles
    ((4, 14, 14), ((1, 1), (1, 1))),  # same, the last tiles half outside
    ((3, 26, 24), ((0, 0), (0, 0))),  # valid, 24×22
    ((2, 9, 13), ((1, 1), (1, 1))),  # same, odd: 9×13 in 3×4 tiles
    ((2, 7, 10), ((2, 0), (0, 1))),  # uneven pads
]


def compiled_winograd() -> Any:
    """The compiled transforms module, or a skip where Numba is missing or switched off."""
    from cnndsl.runtime.backends import numba_kernels

    if not numba_kernels.available():
        pytest.skip("Numba is not installed (or CNNDSL_JIT=0): no compiled kernels to check")
    from cnndsl.runtime.backends.numba_kernels import winograd as compiled

    return compiled


def transform_tolerance(dtype: Any, reference: np.ndarray) -> dict[str, float]:
    """Float rounding of a few adds per value: 1e-12 in float64, 1e-6 of the largest in float32."""
    scale = float(np.abs(reference).max())
    if dtype == np.float64:
        return {"rtol": 1e-12, "atol": 1e-12 * scale}
    return {"rtol": 1e-6, "atol": 1e-6 * scale}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("dims", "pads"), WINOGRAD_MAPS)
def test_compiled_winograd_transforms_equal_numpys(dims: Any, pads: Any, dtype: Any) -> None:
    """Input tiles, output tiles (bias, relu, crop) and dz tiles: compiled = NumPy's."""
    from cnndsl.ops import winograd

    compiled = compiled_winograd()
    rng = np.random.default_rng(3)
    (nb, h, w), c, f = dims, 16, 24
    src = rng.normal(size=(nb, h, w, c)).astype(dtype)
    out_size = (h + sum(pads[0]) - 2, w + sum(pads[1]) - 2)
    grid = winograd.tiles(out_size)
    count = nb * grid[0] * grid[1]

    want = winograd.input_tiles(np, Workers(), 0, src, pads, grid).copy()
    got = compiled.input_tiles(np, Workers(), 0, src, pads, grid).copy()
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **transform_tolerance(dtype, want))
    kept = np.full_like(want, np.nan)  # the kept-tiles buffer: written in full
    compiled.input_tiles(np, Workers(), 0, src, pads, grid, kept)
    np.testing.assert_array_equal(kept, got)

    m = rng.normal(size=(36, count, f)).astype(dtype)
    bias = rng.normal(size=f).astype(dtype)
    for b, relu in [(None, False), (bias, True), (bias, False)]:
        want_out = np.full((nb, *out_size, f), np.nan, dtype)
        got_out = np.full((nb, *out_size, f), np.nan, dtype)
        winograd.output_tiles(np, Workers(), 0, m, want_out, b, relu)
        compiled.output_tiles(np, Workers(), 0, m, got_out, b, relu)
        np.testing.assert_allclose(got_out, want_out, **transform_tolerance(dtype, want_out))

    dz = rng.normal(size=(nb, *out_size, f)).astype(dtype)
    want_e = winograd.grad_tiles(np, Workers(), 0, dz, grid).copy()
    got_e = compiled.grad_tiles(np, Workers(), 0, dz, grid)
    np.testing.assert_allclose(got_e, want_e, **transform_tolerance(dtype, want_e))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("dims", "pads"), WINOGRAD_MAPS[:2] + WINOGRAD_MAPS[3:4])
def test_compiled_winograd_conv_equals_numpys(dims: Any, pads: Any, dtype: Any) -> None:
    """A whole conv (forward with bias and relu, kept tiles, dx, dW): compiled = NumPy's.

    In several chunks and on two lanes, which give the same bits as one lane.
    """
    compiled = compiled_winograd()
    rng = np.random.default_rng(4)
    (nb, h, w), c, f = dims, 16, 16
    x = rng.normal(size=(nb, h, w, c)).astype(dtype)
    kernel = (rng.normal(size=(3, 3, c, f)) / 12).astype(dtype)
    bias = rng.normal(size=f).astype(dtype)
    geo = geometry_of((h, w, c), (3, 3), (1, 1), (1, 1), pads)
    dy = rng.normal(size=(nb, *geo.out, f)).astype(dtype)
    results = []
    for overrides, workers in [
        (None, small_chunks()),
        (compiled.OVERRIDES, small_chunks()),
        (compiled.OVERRIDES, ThreadWorkers(2)),
    ]:
        keep = np.empty(kept_tiles_size(geo, nb), dtype)
        y = conv2d_forward(np, x, kernel, bias, geo, True, workers, "winograd", keep, overrides)
        kw: dict[str, Any] = dict(
            want_dx=True, want_db=True, method="winograd", kernel_method="winograd",
            relu_out=y, workers=workers, overrides=overrides,
        )  # fmt: skip
        from_kept = conv2d_backward(np, x, dy, kernel, geo, kept=keep, **kw)
        remade = conv2d_backward(np, x, dy, kernel, geo, **kw)
        for a, b in zip(from_kept, remade, strict=True):
            np.testing.assert_array_equal(a, b)
        results.append((y, *from_kept))
    numpy_, compiled_serial, compiled_threads = results
    for a, b in zip(compiled_serial, compiled_threads, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(compiled_serial, numpy_, strict=True):
        # float32: Winograd's own error (~1e-5 of the largest value) is the NumPy path's too
        tol = TIGHT if dtype == np.float64 else {"rtol": 1e-4, "atol": 1e-5 * np.abs(b).max()}
        np.testing.assert_allclose(a, b, **tol)


def test_compiled_winograd_keeps_nan_and_infinity() -> None:
    """A NaN or infinity in x reaches at least the outputs whose 3×3 windows hold it."""
    compiled = compiled_winograd()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 9, 10, 8))
    x[0, 4, 5, 3] = np.nan
    x[1, 0, 9, 2] = np.inf
    kernel = rng.normal(size=(3, 3, 8, 4))
    geo = geometry_of(x.shape[1:], (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    overrides = compiled.OVERRIDES
    for relu in (False, True):
        with np.errstate(invalid="ignore"):  # NumPy's GEMMs meet the NaN too
            y = conv2d_forward(
                np, x, kernel, None, geo, relu, Workers(), "winograd", None, overrides
            )
        assert np.isnan(y[0, 3:6, 4:7]).all()
        assert not np.isfinite(y[1, 0:2, 8:10]).any()
        assert np.isfinite(y[0, :, :2]).all() and np.isfinite(y[1, 4:]).all()  # far from both
