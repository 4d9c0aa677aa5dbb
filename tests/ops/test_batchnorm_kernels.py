"""batchnorm's kernels: fused activations, the statistics, and the compiled kernels.

The generic chunked kernels (cnndsl/ops/norm.py) against batchnorm then its
activation written out as plain NumPy; the compiled kernels the NumPy backend
runs (cnndsl/runtime/backends/numba_kernels/batchnorm.py) against the generic
ones pass by pass on the same inputs, and the whole op on one lane or several,
one chunk or many: the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnndsl.ops import OPS, norm
from cnndsl.ops.registry import Context
from cnndsl.runtime.backends.numpy_backend import ThreadWorkers
from cnndsl.runtime.workers import Workers


def small_chunks() -> Workers:
    """Serial workers whose chunks hold one sample each (many chunks, many partials)."""
    return Workers(chunk_bytes=1)


def bn_reference(
    x: np.ndarray, w: dict[str, np.ndarray], dy: np.ndarray, act: str, training: bool
) -> tuple[np.ndarray, ...]:
    """Unfused batchnorm then activation, and their gradients, written out plainly."""
    axes = tuple(range(x.ndim - 1))
    eps = 1e-3
    mean = x.mean(axis=axes) if training else w["moving_mean"]
    var = x.var(axis=axes) if training else w["moving_variance"]
    xhat = (x - mean) / np.sqrt(var + eps)
    z = w["gamma"] * xhat + w["beta"]
    y = {"none": z, "relu": np.maximum(z, 0), "relu6": np.clip(z, 0, 6)}[act]
    mask = {"none": 1.0, "relu": z > 0, "relu6": (z > 0) & (z < 6)}[act]
    dz = dy * mask
    dgamma, dbeta = (dz * xhat).sum(axis=axes), dz.sum(axis=axes)
    dxhat = dz * w["gamma"]
    inv = 1 / np.sqrt(var + eps)
    if training:
        dx = inv * (dxhat - dxhat.mean(axis=axes) - xhat * (dxhat * xhat).mean(axis=axes))
    else:
        dx = dxhat * inv
    return y, dx, dgamma, dbeta


def compiled_batchnorm() -> Any:
    """The compiled batchnorm kernels' module, or a skip without Numba (or with CNNDSL_JIT=0)."""
    from cnndsl.runtime.backends import numba_kernels

    if not numba_kernels.available():
        pytest.skip("Numba is not installed (or CNNDSL_JIT=0): no compiled kernels to check")
    from cnndsl.runtime.backends.numba_kernels import batchnorm

    return batchnorm


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(6, 4, 5, 3), (7, 3)])
@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_fused_activation_matches_unfused(
    act: str, training: bool, shape: Any, jit: bool
) -> None:
    overrides = compiled_batchnorm().OVERRIDES if jit else None
    rng = np.random.default_rng(3)
    x = rng.normal(loc=2.0, scale=3.0, size=shape)
    c = shape[-1]
    w = {
        "gamma": rng.uniform(0.5, 2, c),
        "beta": rng.normal(size=c),
        "moving_mean": rng.normal(size=c),
        "moving_variance": rng.uniform(0.5, 2, c),
    }
    dy = rng.normal(size=shape)
    want = bn_reference(x, w, dy, act, training)
    op = OPS["batchnorm"]
    a = op.bind().replace(activation=act)
    for workers in (Workers(), small_chunks(), ThreadWorkers(2)):
        ws = {k: v.copy() for k, v in w.items()}
        ctx = Context(training=training, workers=workers, overrides=overrides)
        y, saved = op.forward(np, a, [x], ws, ctx)
        (dx,), grads = op.backward(np, a, saved, dy, ws, ctx)
        np.testing.assert_allclose(y, want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, want[1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads["gamma"], want[2], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["beta"], want[3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_statistics_survive_a_large_offset(jit: bool) -> None:
    """The one-pass variance is shifted, so a mean far from zero costs no accuracy."""
    overrides = compiled_batchnorm().OVERRIDES if jit else None
    rng = np.random.default_rng(0)
    x = (1000 + rng.normal(size=(64, 8, 8, 4))).astype(np.float32)
    op = OPS["batchnorm"]
    w = {k: np.zeros(4, np.float32) for k in ("moving_mean", "moving_variance")}
    w["gamma"], w["beta"] = np.ones(4, np.float32), np.zeros(4, np.float32)
    ctx = Context(training=True, workers=ThreadWorkers(2), overrides=overrides)
    y, _ = op.forward(np, op.bind(), [x], w, ctx)
    assert np.abs(y.std(axis=(0, 1, 2)) - 1).max() < 1e-3


def bn_weights(rng: np.random.Generator, c: int, dtype: Any) -> dict[str, np.ndarray]:
    """gamma up to 4: some outputs pass relu6's 6 in training too."""
    w = {
        "gamma": rng.uniform(0.5, 4, c),
        "beta": rng.normal(size=c),
        "moving_mean": rng.normal(size=c),
        "moving_variance": rng.uniform(0.5, 2, c),
    }
    return {k: v.astype(dtype) for k, v in w.items()}


def run_batchnorm(
    x: np.ndarray, w: dict, dy: np.ndarray, act: str, training: bool, **ctx: Any
) -> tuple[np.ndarray, ...]:
    """(y, dx, dgamma, dbeta, moving_mean, moving_variance) of one forward and backward."""
    op, ws = OPS["batchnorm"], {k: v.copy() for k, v in w.items()}
    a = op.bind().replace(activation=act)
    context = Context(training=training, **ctx)
    y, saved = op.forward(np, a, [x], ws, context)
    (dx,), grads = op.backward(np, a, saved, dy, ws, context)
    return y, dx, grads["gamma"], grads["beta"], ws["moving_mean"], ws["moving_variance"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
def test_compiled_batchnorm_equals_numpy_kernels(dtype: Any, act: str, training: bool) -> None:
    """Each compiled pass against NumPy's on the same inputs; the whole op on any lanes."""
    kernels = compiled_batchnorm()
    rng = np.random.default_rng(11)
    x = (1 + 3 * rng.normal(size=(8, 16, 16, 16))).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    w = bn_weights(rng, 16, dtype)
    tol = {"rtol": 2e-6, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    workers = small_chunks()
    # Inputs of the later passes: the NumPy op's own statistics and output.
    _, saved = OPS["batchnorm"].forward(
        np, OPS["batchnorm"].bind().replace(activation=act), [x], dict(w),
        Context(training=training, workers=workers),
    )  # fmt: skip
    want_sums, want_x0 = norm.shifted_sums(np, x, workers)
    sums, x0 = kernels.batchnorm_shifted_sums(np, x, workers)
    np.testing.assert_array_equal(x0, want_x0)
    np.testing.assert_allclose(sums, want_sums, rtol=tol["rtol"], atol=tol["rtol"] * 64)
    scale, shift = (rng.normal(size=16).astype(dtype) * 3 for _ in range(2))
    # No fused multiply-add: the affine map and dx round as NumPy's passes do.
    np.testing.assert_array_equal(
        kernels.batchnorm_affine(np, x, scale, shift, act, workers),
        norm.affine(np, x, scale, shift, act, workers),
    )
    for got, want in zip(
        kernels.batchnorm_dz_sums(np, dy, saved, act, workers),
        norm.dz_sums(np, dy, saved, act, workers),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["rtol"] * 64)
    g, coef, const = (rng.normal(size=16) for _ in range(3))
    np.testing.assert_array_equal(
        kernels.batchnorm_dx(np, dy, saved, act, g, coef, const, workers),
        norm.dx_affine(np, dy, saved, act, g, coef, const, workers),
    )
    # The whole op: same bits on any lanes and chunks; NumPy's results within rounding.
    compiled = kernels.OVERRIDES
    runs = [
        run_batchnorm(x, w, dy, act, training, workers=lanes, overrides=compiled)
        for lanes in (Workers(), small_chunks(), ThreadWorkers(2), ThreadWorkers(3, chunk_bytes=1))
    ]  # fmt: skip
    for run in runs[2:]:
        for got, want in zip(run, runs[1], strict=True):
            np.testing.assert_array_equal(got, want)
    plain = run_batchnorm(x, w, dy, act, training, workers=small_chunks())
    for k, (got, want) in enumerate(zip(runs[1], plain, strict=True)):
        if k == 1 and act != "none" and training:
            continue  # dx: an output a rounding away from a kink may flip its mask
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * 100)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's, on the NaNs
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("training", [True, False])
def test_compiled_batchnorm_spreads_nan_as_numpy(act: str, training: bool) -> None:
    """A NaN input, a NaN and an infinite gradient: NaN wherever NumPy's kernels give NaN."""
    kernels = compiled_batchnorm()
    rng = np.random.default_rng(12)
    x = rng.normal(size=(4, 5, 5, 6)).astype(np.float32)
    x[1, 2, 3, 2] = np.nan
    dy = rng.normal(size=x.shape).astype(np.float32)
    dy[0, 0, 0, 4], dy[2, 1, 1, 5] = np.nan, np.inf
    w = bn_weights(rng, 6, np.float32)
    w["moving_variance"][3] = np.nan
    got = run_batchnorm(
        x, w, dy, act, training, workers=small_chunks(), overrides=kernels.OVERRIDES
    )
    want = run_batchnorm(x, w, dy, act, training, workers=small_chunks())
    for g, v in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(v))
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=1e-5)
    y = got[0]
    # relu of NaN is NaN: the NaN input's channel in training (its batch mean is NaN),
    # the NaN moving variance's channel in inference
    assert np.isnan(y[1, 2, 3, 2]) and np.isnan(y[..., 2 if training else 3]).all()
    assert np.isnan(y).sum() == y[..., 0].size + (0 if training else 1)
