"""Losses and metrics: direct formulas and finite differences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.losses import (
    LossError,
    SparseCategoricalCrossentropy,
    get_loss,
    get_metric,
)
from cnndsl.training.model import Model

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
Y = np.array([0, 2])


def test_sparse_crossentropy_on_probabilities() -> None:
    loss, grad = get_loss("sparse_categorical_crossentropy")(np, P, Y)
    assert loss == pytest.approx(-(math.log(0.7) + math.log(0.6)) / 2, rel=1e-12)
    expected = np.zeros_like(P)
    expected[0, 0], expected[1, 2] = -1 / (0.7 * 2), -1 / (0.6 * 2)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_categorical_and_binary_crossentropy() -> None:
    onehot = np.eye(3)[Y]
    loss, _ = get_loss("categorical_crossentropy")(np, P, onehot)
    assert loss == pytest.approx(-(math.log(0.7) + math.log(0.6)) / 2, rel=1e-12)
    p, y = np.array([[0.9], [0.2]]), np.array([[1.0], [0.0]])
    loss, grad = get_loss("binary_crossentropy")(np, p, y)
    assert loss == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, [[-1 / 0.9 / 2], [1 / 0.8 / 2]], rtol=1e-12)
    loss, grad = get_loss("mse")(np, p, y)
    assert loss == pytest.approx((0.01 + 0.04) / 2)


def _fd(f: Any, z: np.ndarray) -> np.ndarray:
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        old = z[i]
        z[i] = old + 1e-6
        up = f(z)
        z[i] = old - 1e-6
        down = f(z)
        z[i] = old
        g[i] = (up - down) / 2e-6
    return g


@pytest.mark.parametrize(
    "name", ["sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"]
)
def test_fused_gradient_matches_finite_differences(name: str) -> None:
    rng = np.random.default_rng(0)
    loss = get_loss(name)
    if name == "binary_crossentropy":
        z, y = rng.normal(size=(6, 1)) * 3, rng.integers(0, 2, (6, 1)).astype(float)
    else:
        z, labels = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, 6)
        y = labels if name.startswith("sparse") else np.eye(5)[labels]
    value, grad, p = loss.from_logits(np, z, y)
    np.testing.assert_allclose(
        grad, _fd(lambda t: loss.from_logits(np, t, y)[0], z), rtol=1e-6, atol=1e-10
    )
    # The fused loss is the plain loss applied to the activation's output.
    plain, _ = loss(np, p, y)
    assert value == pytest.approx(float(plain), rel=1e-9)


def test_fused_loss_is_stable_for_huge_logits() -> None:
    z = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    value, grad, p = get_loss("sparse_categorical_crossentropy").from_logits(np, z, np.array([1]))
    assert value == pytest.approx(1000.0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[1, -1, 0]], atol=1e-6)


def test_model_fused_and_unfused_gradients_agree() -> None:
    net = cnndsl.compile("""
network n() {
    input x: [5, 5, 2]
    return x -> conv(3, 3, activation=tanh) -> flatten -> dense(4, activation=softmax)
}""")
    x = np.random.default_rng(0).normal(size=(3, 5, 5, 2))
    y = np.array([0, 3, 1])
    fused = Model(net.graph, seed=0, dtype="float64")
    assert fused._train_plan(fused.loss)[1] is True
    plain_loss = SparseCategoricalCrossentropy("plain_sparse_ce", activation=None)
    lf, gf = fused.gradients(x, y)
    lp, gp = fused.gradients(x, y, loss=plain_loss)
    assert lf == pytest.approx(lp, rel=1e-10)
    for key in gf:
        np.testing.assert_allclose(gf[key], gp[key], rtol=1e-7, atol=1e-12)


def test_accuracy_and_top_k() -> None:
    p = np.array([[0.1, 0.5, 0.3, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.3, 0.2]])
    y = np.array([2, 0, 3])  # ranks of the label: 2nd, 1st, 4th
    assert get_metric("accuracy")(np, p, y) == (1, 3)
    assert tuple(map(int, get_metric("top2")(np, p, y))) == (2, 3)
    assert tuple(map(int, get_metric("top_3_accuracy")(np, p, y))) == (2, 3)
    assert tuple(map(int, get_metric("top_k_accuracy")(np, p, y))) == (3, 3)  # k = 5
    assert tuple(map(int, get_metric("accuracy")(np, p, np.eye(4)[y]))) == (1, 3)
    binary = get_metric("accuracy")(np, np.array([[0.7], [0.4], [0.6]]), np.array([1, 0, 0]))
    assert tuple(map(int, binary)) == (2, 3)
    with pytest.raises(LossError, match="unknown metric"):
        get_metric("f1")
    with pytest.raises(LossError, match="unknown loss"):
        get_loss("hinge")
