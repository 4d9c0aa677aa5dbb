"""Losses and metrics, written against `xp` like the kernels.

A loss returns the mean loss over the batch (Keras: sum over the class axis,
mean over every other axis) and its gradient with respect to the network
output. Cross-entropy losses also have a fused form, `from_logits`, used when
the network ends in the matching activation (softmax, or sigmoid for binary
cross-entropy): the executor then stops before that activation, the loss
works on the logits with a stable log-softmax and its gradient is simply
`p - onehot`, which avoids the softmax Jacobian and log(0).

A metric returns (sum, count) over a batch so epochs aggregate exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any

EPSILON = 1e-7  # Keras backend.epsilon(): clip for probabilities


class LossError(ValueError):
    """An unknown loss or metric name, or labels the loss cannot take."""


# ---- helpers ----


def _rows(z: Array) -> tuple[Array, int]:
    """View z as (rows, classes); Keras averages over every axis but the last."""
    c = z.shape[-1]
    flat = z.reshape(-1, c)
    return flat, flat.shape[0]


def log_softmax(xp: Any, z: Array) -> Array:
    """Stable log-softmax over the last axis."""
    m = z.max(axis=-1, keepdims=True)
    shifted = z - m
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(xp: Any, z: Array) -> Array:
    """Stable softmax over the last axis."""
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(xp: Any, z: Array) -> Array:
    """Logistic function without overflow for large |z|."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _labels(xp: Any, y: Array, n: int, classes: int) -> Array:
    labels = y.reshape(-1)
    if labels.shape[0] != n:
        raise LossError(f"{labels.shape[0]} labels for {n} predictions")
    if labels.dtype.kind == "f":
        labels = labels.astype(xp.int64)
    return labels


# ---- losses ----


@dataclass(frozen=True)
class Loss:
    """A loss: `name`, the activation it fuses with (or None), and its two forms."""

    name: str
    activation: str | None = None

    def __call__(self, xp: Any, p: Array, y: Array) -> tuple[Array, Array]:
        """(mean loss, d loss / d p) on the network's output p."""
        raise NotImplementedError

    def from_logits(self, xp: Any, z: Array, y: Array) -> tuple[Array, Array, Array]:
        """(mean loss, d loss / d z, activation(z)) for pre-activation logits z."""
        raise NotImplementedError

    def check_labels(self, y: np.ndarray, output: tuple[int, ...]) -> None:
        """LossError unless labels y ([N, ...]) fit an output of shape `output` (no batch axis).

        This form: labels shaped like the output (one-hot, targets), checked
        before training so a mismatch is a message naming the fix, not a
        reshape error in the first step.
        """
        have, want = tuple(y.shape[1:]), tuple(output)
        if math.prod(have) == math.prod(want):
            return
        fix = "give labels of that shape"
        if have in ((), (1,)) and y.dtype.kind in "iub" and len(want) == 1 and want[0] > 1:
            fix = (
                "these are class indices: use sparse_categorical_crossentropy, or one-hot"
                f" them (np.eye({want[0]})[y])"
            )
        raise LossError(
            f"{self.name} compares the output ({list(want)} per sample) with labels of the same"
            f" shape, but the labels are {list(have)} per sample; {fix}"
        )


class SparseCategoricalCrossentropy(Loss):
    """-log p[label], labels are class indices (shape [N] or [N, 1])."""

    def check_labels(self, y: np.ndarray, output: tuple[int, ...]) -> None:
        """LossError unless y holds one class index per row of the output."""
        rows = math.prod(output[:-1]) if output else 1
        if math.prod(y.shape[1:]) != rows:
            hint = ""
            if tuple(y.shape[1:]) == tuple(output):
                hint = " (one-hot? use categorical_crossentropy, or y.argmax(axis=-1))"
            raise LossError(
                f"{self.name} takes one class index per sample ({rows} per sample for an output"
                f" of shape {list(output)}), but the labels are {list(y.shape[1:])} per"
                f" sample{hint}"
            )
        classes = output[-1] if output else 1
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y.max() if y.max() >= classes else y.min()
            raise LossError(
                f"{self.name}: label {bad:g} is out of range for an output of {classes}"
                f" classes (labels must be 0..{classes - 1})"
            )

    def __call__(self, xp: Any, p: Array, y: Array) -> tuple[Array, Array]:
        flat, n = _rows(p)
        labels = _labels(xp, y, n, flat.shape[1])
        rows = xp.arange(n)
        picked = xp.clip(flat[rows, labels], EPSILON, 1 - EPSILON)
        loss = -xp.log(picked).mean()
        grad = xp.zeros_like(flat)
        # NOTE: clipped probabilities get no gradient, as with Keras' clip.
        inside = (flat[rows, labels] > EPSILON) & (flat[rows, labels] < 1 - EPSILON)
        grad[rows, labels] = xp.where(inside, -1.0 / (picked * n), 0.0)
        return loss, grad.reshape(p.shape)

    def from_logits(self, xp: Any, z: Array, y: Array) -> tuple[Array, Array, Array]:
        flat, n = _rows(z)
        labels = _labels(xp, y, n, flat.shape[1])
        rows = xp.arange(n)
        logp = log_softmax(xp, flat)
        loss = -logp[rows, labels].mean()
        p = xp.exp(logp)
        grad = p.copy()
        grad[rows, labels] -= 1
        grad /= n
        return loss, grad.reshape(z.shape), p.reshape(z.shape)


class CategoricalCrossentropy(Loss):
    """-sum(y · log p), labels one-hot (or soft) with the output's shape."""

    def __call__(self, xp: Any, p: Array, y: Array) -> tuple[Array, Array]:
        flat, n = _rows(p)
        target = y.reshape(flat.shape).astype(flat.dtype, copy=False)
        # Keras renormalises the output to sum 1 before clipping.
        total = flat.sum(axis=-1, keepdims=True)
        q = flat / total
        clipped = xp.clip(q, EPSILON, 1 - EPSILON)
        loss = -(target * xp.log(clipped)).sum(axis=-1).mean()
        inside = (q > EPSILON) & (q < 1 - EPSILON)
        dq = xp.where(inside, -target / (clipped * n), 0.0).astype(flat.dtype, copy=False)
        # Through q = p / sum(p): dp_j = (dq_j - sum_i dq_i q_i) / sum(p).
        grad = (dq - (dq * q).sum(axis=-1, keepdims=True)) / total
        return loss, grad.reshape(p.shape)

    def from_logits(self, xp: Any, z: Array, y: Array) -> tuple[Array, Array, Array]:
        flat, n = _rows(z)
        target = y.reshape(flat.shape).astype(flat.dtype, copy=False)
        logp = log_softmax(xp, flat)
        loss = -(target * logp).sum(axis=-1).mean()
        p = xp.exp(logp)
        # d/dz sum_c y_c (lse - z_c) = sum(y)·p - y (sum(y) = 1 for one-hot labels).
        grad = (p * target.sum(axis=-1, keepdims=True) - target) / n
        return loss, grad.reshape(z.shape), p.reshape(z.shape)


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), averaged over every element."""

    def __call__(self, xp: Any, p: Array, y: Array) -> tuple[Array, Array]:
        target = y.reshape(p.shape).astype(p.dtype, copy=False)
        q = xp.clip(p, EPSILON, 1 - EPSILON)
        loss = -(target * xp.log(q) + (1 - target) * xp.log(1 - q)).mean()
        inside = (p > EPSILON) & (p < 1 - EPSILON)
        grad = xp.where(inside, (q - target) / (q * (1 - q) * p.size), 0.0)
        return loss, grad.astype(p.dtype, copy=False)

    def from_logits(self, xp: Any, z: Array, y: Array) -> tuple[Array, Array, Array]:
        target = y.reshape(z.shape).astype(z.dtype, copy=False)
        # log(1 + exp(z)) - z·y, written so that neither exp overflows.
        loss = (xp.maximum(z, 0) - z * target + xp.log1p(xp.exp(-xp.abs(z)))).mean()
        p = sigmoid(xp, z)
        return loss, (p - target) / z.size, p


class MeanSquaredError(Loss):
    """mean((p - y)^2) over the last axis, then over the batch."""

    def __call__(self, xp: Any, p: Array, y: Array) -> tuple[Array, Array]:
        diff = p - y.reshape(p.shape).astype(p.dtype, copy=False)
        return (diff * diff).mean(), 2 * diff / diff.size


LOSSES: dict[str, Loss] = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy(
        "sparse_categorical_crossentropy", "softmax"
    ),
    "categorical_crossentropy": CategoricalCrossentropy("categorical_crossentropy", "softmax"),
    "binary_crossentropy": BinaryCrossentropy("binary_crossentropy", "sigmoid"),
    "mean_squared_error": MeanSquaredError("mean_squared_error"),
}
_LOSS_ALIASES = {"mse": "mean_squared_error", "crossentropy": "sparse_categorical_crossentropy"}


def get_loss(name: str | Loss) -> Loss:
    """The loss called `name` (Keras names; 'mse' is an alias)."""
    if isinstance(name, Loss):
        return name
    key = _LOSS_ALIASES.get(name, name)
    if key not in LOSSES:
        raise LossError(f"unknown loss '{name}'; known losses: {', '.join(LOSSES)}")
    return LOSSES[key]


# ---- metrics ----

Metric = Callable[[Any, Array, Array], tuple[Array, int]]


def accuracy(xp: Any, p: Array, y: Array) -> tuple[Array, int]:
    """(number correct, count): argmax vs label index or one-hot; 0.5 threshold if binary."""
    if p.shape[-1] == 1:
        pred = (p.reshape(-1) > 0.5).astype(xp.int64)
        return (pred == y.reshape(-1).astype(xp.int64)).sum(), pred.shape[0]
    flat, n = _rows(p)
    # NOTE: labels shaped like the output are one-hot (or soft), whatever their dtype.
    if y.shape == p.shape and y.ndim >= 2:
        labels = y.reshape(flat.shape).argmax(axis=-1)
    else:
        labels = _labels(xp, y, n, flat.shape[1])
    return (flat.argmax(axis=-1) == labels).sum(), n


def top_k_accuracy(k: int) -> Metric:
    """Metric: the label is among the k highest scores (ties favour the label, as Keras)."""

    def metric(xp: Any, p: Array, y: Array) -> tuple[Array, int]:
        flat, n = _rows(p)
        if y.shape == p.shape and y.ndim >= 2:
            labels = y.reshape(flat.shape).argmax(axis=-1)
        else:
            labels = _labels(xp, y, n, flat.shape[1])
        score = flat[xp.arange(n), labels]
        rank = (flat > score[:, None]).sum(axis=-1)  # classes scoring strictly higher
        return (rank < k).sum(), n

    return metric


def loss_metric(loss: Loss) -> Metric:
    """A metric reporting a loss (summed over samples, so epochs average correctly)."""

    def metric(xp: Any, p: Array, y: Array) -> tuple[Array, int]:
        value, _ = loss(xp, p, y)
        n = p.shape[0]
        return value * n, n

    return metric


_TOP_K = re.compile(r"^(?:sparse_)?top_?(\d+)?(?:_k)?(?:_categorical)?(?:_accuracy)?$")


def get_metric(name: str) -> Metric:
    """The metric called `name`: accuracy/acc, top_k_accuracy (k=5), top3, top_5_accuracy..."""
    if name in (
        "accuracy",
        "acc",
        "sparse_categorical_accuracy",
        "categorical_accuracy",
        "binary_accuracy",
    ):
        return accuracy
    match = _TOP_K.match(name)
    if match and name.startswith(("top", "sparse_top")):
        return top_k_accuracy(int(match.group(1) or 5))
    if name in LOSSES or name in _LOSS_ALIASES:
        return loss_metric(get_loss(name))
    raise LossError(
        f"unknown metric '{name}'; known metrics: accuracy, top_k_accuracy (k=5), "
        "top1..topN, and any loss name"
    )


__all__ = [
    "LOSSES",
    "Loss",
    "LossError",
    "Metric",
    "accuracy",
    "get_loss",
    "get_metric",
    "log_softmax",
    "sigmoid",
    "softmax",
    "top_k_accuracy",
]
