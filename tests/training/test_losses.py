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
    log_softmax,
    sigmoid,
    softmax,
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


# ---- every loss against its definition and finite differences (float64) ----


def plain_case(name: str, shape: tuple[int, ...], soft: bool) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs p away from the clip (and, for categorical, rows not summing to 1)."""
    rng = np.random.default_rng(len(name) + len(shape) + soft)
    c = shape[-1]
    rows = int(np.prod(shape[:-1]))
    if name == "sparse_categorical_crossentropy":
        p = rng.uniform(0.05, 1.0, shape)
        p /= p.sum(axis=-1, keepdims=True)
        return p, rng.integers(0, c, rows).reshape(shape[:-1])
    if name == "categorical_crossentropy":
        p = rng.uniform(0.05, 0.6, shape)  # deliberately unnormalised: Keras renormalises
        y = rng.dirichlet(np.ones(c), rows) if soft else np.eye(c)[rng.integers(0, c, rows)]
        return p, y.reshape(shape)
    if name == "binary_crossentropy":
        p = rng.uniform(0.05, 0.95, shape)
        y = rng.uniform(0, 1, shape) if soft else rng.integers(0, 2, shape).astype(float)
        return p, y
    return rng.normal(size=shape), rng.normal(size=shape)  # mean squared error


def loss_by_definition(name: str, p: np.ndarray, y: np.ndarray) -> float:
    """The Keras definition, one row (vector over the last axis) at a time."""
    c = p.shape[-1]
    rows_p = p.reshape(-1, c)
    total = 0.0
    for r in range(rows_p.shape[0]):
        row = rows_p[r]
        if name == "sparse_categorical_crossentropy":
            total += -math.log(row[int(y.reshape(-1)[r])])
        elif name == "categorical_crossentropy":
            target = y.reshape(-1, c)[r]
            q = row / row.sum()
            total += -sum(target[j] * math.log(q[j]) for j in range(c))
        elif name == "binary_crossentropy":
            target = y.reshape(-1, c)[r]
            total += sum(
                -(target[j] * math.log(row[j]) + (1 - target[j]) * math.log(1 - row[j])) / c
                for j in range(c)
            )
        else:
            target = y.reshape(-1, c)[r]
            total += sum((row[j] - target[j]) ** 2 for j in range(c)) / c
    return total / rows_p.shape[0]


PLAIN_CASES = [
    (name, shape, soft)
    for name in (
        "sparse_categorical_crossentropy",
        "categorical_crossentropy",
        "binary_crossentropy",
        "mean_squared_error",
    )
    for shape in ((5, 4), (2, 3, 3, 4))
    for soft in (False, True)
    if not (soft and name in ("sparse_categorical_crossentropy", "mean_squared_error"))
]


@pytest.mark.parametrize(("name", "shape", "soft"), PLAIN_CASES)
def test_plain_loss_and_gradient_match_definition_and_finite_differences(
    name: str, shape: tuple[int, ...], soft: bool
) -> None:
    loss = get_loss(name)
    p, y = plain_case(name, shape, soft)
    value, grad = loss(np, p, y)
    assert float(value) == pytest.approx(loss_by_definition(name, p, y), rel=1e-12)
    assert grad.shape == p.shape and grad.dtype == np.float64
    expected = _fd(lambda t: float(loss(np, t, y)[0]), p.copy())
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


FUSED_CASES = [
    ("sparse_categorical_crossentropy", (6, 5), "hard"),
    ("sparse_categorical_crossentropy", (2, 2, 3, 4), "hard"),
    ("categorical_crossentropy", (6, 5), "hard"),
    ("categorical_crossentropy", (6, 5), "soft"),
    ("categorical_crossentropy", (2, 2, 3, 4), "soft"),
    ("categorical_crossentropy", (6, 5), "unnormalised"),  # rows of y summing to 0.3..2
    ("binary_crossentropy", (6, 1), "hard"),
    ("binary_crossentropy", (4, 3), "soft"),
    ("binary_crossentropy", (2, 3, 3, 2), "soft"),
]


@pytest.mark.parametrize(("name", "shape", "labels"), FUSED_CASES)
def test_from_logits_gradient_matches_finite_differences(
    name: str, shape: tuple[int, ...], labels: str
) -> None:
    rng = np.random.default_rng(len(shape) * 7 + len(labels))
    loss = get_loss(name)
    z = rng.normal(size=shape) * 2
    c, rows = shape[-1], int(np.prod(shape[:-1]))
    if name == "sparse_categorical_crossentropy":
        y: np.ndarray = rng.integers(0, c, rows)
    elif name == "binary_crossentropy":
        y = rng.uniform(0, 1, shape) if labels == "soft" else rng.integers(0, 2, shape) * 1.0
    elif labels == "hard":
        y = np.eye(c)[rng.integers(0, c, rows)].reshape(shape)
    elif labels == "soft":
        y = rng.dirichlet(np.ones(c), rows).reshape(shape)
    else:
        y = (rng.dirichlet(np.ones(c), rows) * rng.uniform(0.3, 2.0, (rows, 1))).reshape(shape)
    value, grad, p = loss.from_logits(np, z, y)
    assert grad.shape == z.shape and p.shape == z.shape
    np.testing.assert_allclose(
        grad, _fd(lambda t: float(loss.from_logits(np, t, y)[0]), z.copy()), rtol=1e-6, atol=1e-9
    )
    # The activation it returns is the definition's, and the loss is the plain loss on it
    # (for unnormalised targets the plain loss renormalises nothing: p sums to 1 already).
    if name == "binary_crossentropy":
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-13)
    else:
        e = np.exp(z)
        np.testing.assert_allclose(p, e / e.sum(axis=-1, keepdims=True), rtol=1e-13)
    assert float(value) == pytest.approx(loss_by_definition(name, p, y), rel=1e-10)


def test_clipped_probabilities_get_no_gradient_as_in_keras() -> None:
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    _, grad = get_loss("sparse_categorical_crossentropy")(np, p, np.array([0, 0]))
    np.testing.assert_allclose(grad, [[0, 0, 0], [-1 / (0.5 * 2), 0, 0]], rtol=1e-12)
    _, grad = get_loss("binary_crossentropy")(np, np.array([[0.0], [0.5]]), np.array([[1.0], [1]]))
    np.testing.assert_allclose(grad, [[0.0], [-1 / (0.5 * 2)]], rtol=1e-12)


def test_sparse_labels_as_a_column_of_floats() -> None:
    loss = get_loss("sparse_categorical_crossentropy")
    p, y = plain_case("sparse_categorical_crossentropy", (5, 4), False)
    a, ga = loss(np, p, y)
    b, gb = loss(np, p, y.reshape(-1, 1).astype(float))
    assert a == b
    np.testing.assert_array_equal(ga, gb)
    za, gza, _ = loss.from_logits(np, np.log(p), y)
    zb, gzb, _ = loss.from_logits(np, np.log(p), y.astype(float))
    assert za == zb
    np.testing.assert_array_equal(gza, gzb)
    with pytest.raises(LossError, match="4 labels for 5 predictions"):
        get_loss("sparse_categorical_crossentropy")(np, p, y[:4])


@pytest.mark.parametrize(
    ("head", "expected", "fused"),
    [
        ("dense(1, activation=sigmoid)", "binary_crossentropy", True),
        ("dense(3) -> sigmoid", "binary_crossentropy", True),
        ("dense(3, activation=softmax)", "sparse_categorical_crossentropy", True),
        ("dense(2)", "mean_squared_error", False),
        ("dense(2, activation=tanh)", "mean_squared_error", False),
    ],
)
def test_default_loss_follows_the_output_activation(head: str, expected: str, fused: bool) -> None:
    net = cnndsl.compile(f"""
network n() {{
    input x: [4, 4, 1]
    return x -> flatten -> {head}
}}""")
    model = Model(net.graph, seed=0, dtype="float64")
    assert model.loss.name == expected
    assert model._train_plan(model.loss)[1] is fused
    assert model.metric_names == (["accuracy"] if "crossentropy" in expected else [])


# ---- edges the mutation run found unchecked (docs/testing.md) ----

CROSSENTROPIES = [
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
]


@pytest.mark.parametrize("name", [*CROSSENTROPIES, "mean_squared_error"])
def test_float32_outputs_keep_their_dtype(name: str) -> None:
    loss = get_loss(name)
    p, y = plain_case(name, (4, 3), soft=name == "categorical_crossentropy")
    if name == "binary_crossentropy":
        y = y.astype(np.int64)  # hard labels as integers: the gradient still follows p
    value, grad = loss(np, p.astype(np.float32), y)
    assert grad.dtype == np.asarray(value).dtype == np.float32 and math.isfinite(float(value))
    if name != "mean_squared_error":
        value, grad, out = loss.from_logits(np, (p * 4 - 2).astype(np.float32), y)
        assert grad.dtype == out.dtype == np.asarray(value).dtype == np.float32


def test_probabilities_of_exactly_zero_and_one_are_clipped_as_keras_does() -> None:
    eps = 1e-7
    # sparse: p[label] = 0 costs -log(eps); p[label] = 1 costs -log(1 - eps), not 0
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    value, grad = get_loss("sparse_categorical_crossentropy")(np, p, np.array([0, 0]))
    assert float(value) == pytest.approx((-math.log(eps) - math.log(1 - eps)) / 2, rel=1e-9)
    np.testing.assert_array_equal(grad, 0.0)  # both clipped: no gradient
    # categorical: the same after renormalising; a zero probability of a class with
    # target 0.5 adds -0.5·log(eps) and no gradient of its own
    value, grad = get_loss("categorical_crossentropy")(
        np, np.array([[0.0, 2.0]]), np.array([[0.5, 0.5]])
    )
    assert float(value) == pytest.approx(-0.5 * math.log(eps) - 0.5 * math.log(1 - eps), rel=1e-9)
    np.testing.assert_array_equal(grad, 0.0)
    # one class clipped, the others not: its gradient is the one-sided derivative through
    # the renormalisation alone. q = [0, 1/2, 1/2], sum(p) = 2: dL/dp0 = 2·(1/4)·(1/2)/2
    _, grad = get_loss("categorical_crossentropy")(
        np, np.array([[0.0, 1.0, 1.0]]), np.array([[0.5, 0.25, 0.25]])
    )
    np.testing.assert_allclose(grad, [[0.25, 0.0, 0.0]], atol=1e-15)
    # binary: p = 1 with label 0 and p = 0 with label 1 cost -log(eps) each, finitely
    value, grad = get_loss("binary_crossentropy")(
        np, np.array([[1.0], [0.0], [1.0]]), np.array([0, 1, 1])
    )
    assert float(value) == pytest.approx((-2 * math.log(eps) - math.log(1 - eps)) / 3, rel=1e-9)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("name", CROSSENTROPIES)
def test_a_probability_exactly_at_the_clip_gets_no_gradient(name: str) -> None:
    # NOTE: a choice at a single point: TF's clip passes the gradient there, ours does not.
    eps = 1e-7
    loss = get_loss(name)
    if name == "binary_crossentropy":
        _, grad = loss(np, np.array([[eps], [1 - eps], [0.5]]), np.array([[1.0], [0.0], [1.0]]))
        assert grad[0, 0] == grad[1, 0] == 0 and grad[2, 0] != 0
        return
    p = np.array([[eps, 1 - eps], [1 - eps, eps], [0.5, 0.5]])
    labels = np.array([0, 0, 0])
    y = labels if name.startswith("sparse") else np.eye(2)[labels]
    _, grad = loss(np, p, y)
    np.testing.assert_array_equal(grad[:2], 0.0)
    assert grad[2, 0] != 0


@pytest.mark.parametrize("name", ["binary_crossentropy", "mean_squared_error"])
def test_labels_as_a_vector_for_one_output_unit(name: str) -> None:
    # fit passes labels of shape [N]; the output is [N, 1]: no broadcasting to [N, N]
    p = np.array([[0.2], [0.7], [0.9]])
    column, vector = np.array([[0.0], [1.0], [1.0]]), np.array([0.0, 1.0, 1.0])
    a, ga = get_loss(name)(np, p, column)
    b, gb = get_loss(name)(np, p, vector)
    assert float(a) == pytest.approx(loss_by_definition(name, p, column), rel=1e-12)
    assert a == b and ga.shape == gb.shape == (3, 1)
    np.testing.assert_array_equal(ga, gb)
    # d/dp of the mean over 3 values, by hand: 2(p - y)/3 and (p - y)/(p(1 - p))/3
    by_hand = (
        2 * (p - column) / 3 if name == "mean_squared_error" else (p - column) / (p * (1 - p)) / 3
    )
    np.testing.assert_allclose(ga, by_hand, rtol=1e-12)
    if name == "binary_crossentropy":
        za, gza, _ = get_loss(name).from_logits(np, p * 4 - 2, column)
        zb, gzb, _ = get_loss(name).from_logits(np, p * 4 - 2, vector)
        assert za == zb
        np.testing.assert_array_equal(gza, gzb)


def test_activation_functions_match_their_definitions() -> None:
    z = np.random.default_rng(2).normal(size=(2, 3, 4)) * 3
    z[0, 0] += 800  # large logits must not overflow
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    np.testing.assert_allclose(softmax(np, z), e / e.sum(axis=-1, keepdims=True), rtol=1e-13)
    expected = shifted - np.log(e.sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(log_softmax(np, z), expected, rtol=1e-13, atol=1e-13)
    small = np.array([-800.0, -30.0, -1.0, 0.0, 2.0, 800.0])
    sig = np.array([1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in small])
    np.testing.assert_allclose(sigmoid(np, small), sig, rtol=1e-13, atol=1e-300)
    assert sigmoid(np, small.astype(np.float32)).dtype == np.float32


# ---- metrics ----


@pytest.mark.parametrize(
    "name",
    ["accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy"],
)
def test_accuracy_names(name: str) -> None:
    p = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    assert tuple(map(int, get_metric(name)(np, p, np.array([1, 0, 1, 1])))) == (3, 4)


def test_accuracy_label_forms_and_shapes() -> None:
    acc = get_metric("accuracy")
    p = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    for y in (np.array([1, 0, 0]), np.array([[1], [0], [0]]), np.array([1.0, 0.0, 0.0])):
        assert tuple(map(int, acc(np, p, y))) == (2, 3)
    soft = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.6, 0.0, 0.4]])  # argmax 1, 0, 0
    assert tuple(map(int, acc(np, p, soft))) == (2, 3)
    # one sample; two classes (softmax over 2 is no sigmoid); a 1×1 feature map of scores
    assert tuple(map(int, acc(np, p[:1], np.array([1])))) == (1, 1)
    two = np.array([[0.3, 0.7], [0.6, 0.4], [0.45, 0.55]])
    assert tuple(map(int, acc(np, two, np.array([1, 1, 0])))) == (1, 3)
    assert tuple(map(int, acc(np, p.reshape(3, 1, 1, 3), np.array([1, 0, 0])))) == (2, 3)
    # per-pixel labels of a [N, H, W, C] output
    pixels = np.random.default_rng(0).random((2, 3, 2, 4))
    labels = pixels.argmax(axis=-1)
    labels[0, 0, 0] = (labels[0, 0, 0] + 1) % 4
    assert tuple(map(int, acc(np, pixels, labels))) == (11, 12)


def test_binary_accuracy_threshold_is_strictly_above_one_half() -> None:
    p = np.array([[0.5], [0.5000001], [0.2], [0.9], [0.7]])
    y = np.array([0, 1, 0, 1, 0])
    for labels in (y, y.reshape(-1, 1), y.astype(float)):
        assert tuple(map(int, get_metric("accuracy")(np, p, labels))) == (4, 5)


def test_one_hot_labels_of_any_dtype_and_shape() -> None:
    rng = np.random.default_rng(4)
    p = rng.random((2, 3, 2, 5))  # a [N, H, W, C] output, per-pixel classes
    labels = p.argmax(axis=-1)
    labels[1, 2, 1] = (labels[1, 2, 1] + 2) % 5
    for name, right in (("accuracy", 11), ("top1", 11), ("top5", 12)):
        for one_hot in (np.eye(5)[labels], np.eye(5, dtype=np.int64)[labels]):
            assert tuple(map(int, get_metric(name)(np, p, one_hot))) == (right, 12), name
        assert tuple(map(int, get_metric(name)(np, p, labels.astype(float)))) == (right, 12)


def test_top_k_default_and_names() -> None:
    # seven classes; the label's score has 5, 4 and 0 classes above it
    p = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0],
            [0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.0],
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        ]
    )
    y = np.array([5, 5, 6])
    for name in (
        "top_k_accuracy",
        "sparse_top_k_categorical_accuracy",
        "top_k_categorical_accuracy",
    ):
        assert tuple(map(int, get_metric(name)(np, p, y))) == (2, 3), name
    assert tuple(map(int, get_metric("top1")(np, p, y))) == (1, 3)
    assert tuple(map(int, get_metric("sparse_top6")(np, p, y))) == (3, 3)
    assert tuple(map(int, get_metric("top_5_accuracy")(np, p, np.eye(7)[y]))) == (2, 3)
    assert tuple(map(int, get_metric("top_5_accuracy")(np, p, y.astype(float)))) == (2, 3)
    # one-hot labels of three different classes, each the top score of its row
    assert tuple(map(int, get_metric("top1")(np, p, np.eye(7)[[0, 0, 6]]))) == (3, 3)
    ties = np.array([[0.5, 0.5, 0.5, 0.1]])  # ties favour the label, as in Keras
    assert tuple(map(int, get_metric("top1")(np, ties, np.array([2])))) == (1, 1)


def test_unknown_names_list_what_is_known() -> None:
    with pytest.raises(LossError) as err:
        get_metric("topology")  # starts like top-k but is no metric
    assert str(err.value) == (
        "unknown metric 'topology'; known metrics: accuracy, top_k_accuracy (k=5),"
        " top1..topN, and any loss name"
    )
    with pytest.raises(LossError) as err:
        get_loss("hinge")
    assert str(err.value) == (
        "unknown loss 'hinge'; known losses: sparse_categorical_crossentropy,"
        " categorical_crossentropy, binary_crossentropy, mean_squared_error"
    )
    assert get_loss("crossentropy") is get_loss("sparse_categorical_crossentropy")
    assert get_loss("mse") is get_loss("mean_squared_error")


@pytest.mark.parametrize("name", [*CROSSENTROPIES, "mse"])
def test_every_loss_is_a_metric_summed_over_samples(name: str) -> None:
    full = "mean_squared_error" if name == "mse" else name
    p, y = plain_case(full, (5, 4), soft=False)
    total, count = get_metric(name)(np, p, y)
    assert count == 5
    assert float(total) == pytest.approx(5 * loss_by_definition(full, p, y), rel=1e-12)
