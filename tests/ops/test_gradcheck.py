"""Backward kernels against central finite differences, for every registered op.

float64, eps = 1e-6, tiny shapes; every input and every trainable weight.
The loss is L = Σ y·r with a fixed random r, so backward gets dy = r.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from op_cases import (
    get_case,
    make_ctx,
    make_inputs,
    make_weights,
    op_kernel_params,
    op_params,
    trainable,
)

from cnndsl.ops import OPS

EPS = 1e-6


def numeric_grad(loss: Callable[[], float], a: np.ndarray) -> np.ndarray:
    """∂loss/∂a by central differences, perturbing a in place one element at a time."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + EPS
        up = loss()
        a[idx] = old - EPS
        down = loss()
        a[idx] = old
        g[idx] = (up - down) / (2 * EPS)
    return g


@pytest.mark.parametrize(("op", "i", "jit"), op_kernel_params())
def test_gradients_match_finite_differences(op: str, i: int, jit: bool) -> None:
    case = get_case(op, i)
    a = case.attrs
    rng = np.random.default_rng(11)
    xs, ws = make_inputs(case, rng), make_weights(case, rng)
    r = rng.normal(size=(case.batch, *OPS[op].shape(a, *case.inputs)))

    def loss() -> float:
        # A fresh context per call: dropout draws the same mask every time.
        y, _ = OPS[op].forward(np, a, xs, ws, make_ctx(case, np, jit))
        return float(np.sum(y * r))

    _, saved = OPS[op].forward(np, a, xs, ws, make_ctx(case, np, jit))
    dxs, dws = OPS[op].backward(np, a, saved, r.copy(), ws, make_ctx(case, np, jit))
    assert len(dxs) == len(xs)
    assert set(dws) == set(trainable(case))
    for k, (x, dx) in enumerate(zip(xs, dxs, strict=True)):
        assert dx.shape == x.shape, f"input {k}"
        np.testing.assert_allclose(
            dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7, err_msg=f"input {k}"
        )
    for name in trainable(case):
        assert dws[name].shape == ws[name].shape, name
        np.testing.assert_allclose(
            dws[name], numeric_grad(loss, ws[name]), rtol=1e-5, atol=1e-7, err_msg=name
        )


@pytest.mark.parametrize(("op", "i"), op_params())
def test_unwanted_input_gradients_are_skipped(op: str, i: int) -> None:
    """needs_input_grad=False gives None for the input, weight gradients unchanged."""
    case = get_case(op, i)
    a = case.attrs
    rng = np.random.default_rng(5)
    xs, ws = make_inputs(case, rng), make_weights(case, rng)
    r = rng.normal(size=(case.batch, *OPS[op].shape(a, *case.inputs)))
    _, saved = OPS[op].forward(np, a, xs, ws, make_ctx(case))
    full_x, full_w = OPS[op].backward(np, a, saved, r, ws, make_ctx(case))
    wanted = tuple(k % 2 == 1 for k in range(len(xs)))  # skip input 0, keep input 1
    ctx = make_ctx(case, needs_input_grad=wanted)
    part_x, part_w = OPS[op].backward(np, a, saved, r, ws, ctx)
    for k, (full, part) in enumerate(zip(full_x, part_x, strict=True)):
        if wanted[k]:
            np.testing.assert_array_equal(part, full)
        else:
            assert part is None, f"input {k}"
    assert set(part_w) == set(full_w)
    for name in full_w:
        np.testing.assert_allclose(part_w[name], full_w[name], rtol=1e-12)
