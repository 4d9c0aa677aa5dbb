"""Activation ops, and the fused-activation helpers that conv and dense use.

Every activation is elementwise (softmax: along one axis), keeps the input
shape at any rank, and has no weights. Each class is also the fused
activation of `conv(..., activation=NAME)`: `activate` and
`activate_backward` look the name up in ACTIVATIONS and call the class's
own kernels with its default arguments, so an activation is written once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.ops.attrs import Float, Int
from cnndsl.ops.errors import ShapeError
from cnndsl.ops.registry import (
    ACTIVATIONS,
    Array,
    Attrs,
    Backward,
    Context,
    Forward,
    Op,
    Shape,
    Weights,
    register,
)
from cnndsl.runtime.workers import elementwise

_PLAIN = Context()  # fused activations need no training flag, rng or overrides
_DEFAULTS: dict[str, Attrs] = {}


def activate(xp: Any, name: str, z: Array) -> tuple[Array, Any]:
    """Apply the activation `name` ("none" = identity) with default args: (y, saved)."""
    op = _lookup(name)
    return op.forward(xp, _default_attrs(op), [z], {}, _PLAIN)


def activate_backward(xp: Any, name: str, saved: Any, dy: Array) -> Array:
    """Gradient through the activation `name`, given what `activate` saved."""
    op = _lookup(name)
    return op.grad(xp, _default_attrs(op), saved, dy)


def _lookup(name: str) -> ActivationOp:
    op = ACTIVATIONS["identity" if name == "none" else name]
    assert isinstance(op, ActivationOp), f"{name} is not an ActivationOp"
    return op


def _default_attrs(op: Op) -> Attrs:
    if op.name not in _DEFAULTS:
        _DEFAULTS[op.name] = op.bind()
    return _DEFAULTS[op.name]


class ActivationOp(Op):
    """Base of the activations: any rank, output shape = input shape, no weights.

    Subclasses write `forward` and `grad` (dx from dy and what forward saved).
    """

    is_activation = True
    family = "act"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        return tuple(x)

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        """dx given dy and forward's saved value."""
        raise NotImplementedError

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        return [self.grad(xp, a, saved, dy) if ctx.wants_grad(0) else None], {}


@register
class Identity(ActivationOp):
    """identity: y = x (also what activation=none means)."""

    name = "identity"

    def final_activation(self, a: Attrs) -> str | None:
        return None

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Nothing: the input itself."""
        return inputs[0]

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        return xs[0], None

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return dy


@register
class Relu(ActivationOp):
    """relu: y = max(x, 0); the gradient at 0 is 0 (as PyTorch).

    With inplace=True (set by lowering when this step is its input's only
    reader and the producer keeps no reference to it) y overwrites x.
    """

    name = "relu"
    in_place = True

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Relu."""
        return b.node("Relu", inputs)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        y = x if a.get("inplace") else xp.empty_like(x)
        elementwise(xp, ctx, lambda lo, hi: xp.maximum(x[lo:hi], 0, out=y[lo:hi]), x)
        return y, y

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return dy * (saved > 0)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        dx = xp.empty_like(dy)
        elementwise(
            xp, ctx, lambda lo, hi: xp.multiply(dy[lo:hi], saved[lo:hi] > 0, out=dx[lo:hi]), dy
        )
        return [dx], {}


@register
class Relu6(ActivationOp):
    """relu6: y = min(max(x, 0), 6); gradient 1 on the open interval (0, 6).

    The gradient mask comes from y (0 < y < 6 exactly where 0 < x < 6), so y
    may overwrite x (inplace=True, set by lowering as for relu).
    """

    name = "relu6"
    in_place = True

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Clip to [0, 6]."""
        low, high = b.const("min", np.float32(0)), b.const("max", np.float32(6))
        return b.node("Clip", [inputs[0], low, high])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        y = x if a.get("inplace") else xp.empty_like(x)
        elementwise(xp, ctx, lambda lo, hi: xp.clip(x[lo:hi], 0, 6, out=y[lo:hi]), x)
        return y, y

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return dy * ((saved > 0) & (saved < 6))


@register
class LeakyRelu(ActivationOp):
    """leaky_relu(alpha): y = x if x > 0 else alpha·x.

    NOTE: alpha defaults to 0.3, the default of the Keras *layer* LeakyReLU
    (keras.activations.leaky_relu defaults to 0.2); write leaky_relu(0.2) for that.
    """

    name = "leaky_relu"
    args = ("alpha",)
    attrs = {"alpha": (Float(0), 0.3)}
    key_attrs = ("alpha",)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """LeakyRelu(alpha)."""
        return b.node("LeakyRelu", inputs, alpha=a.alpha)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        return xp.where(x > 0, x, x * a.alpha), x

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return xp.where(saved > 0, dy, dy * a.alpha)


@register
class Elu(ActivationOp):
    """elu(alpha): y = x if x > 0 else alpha·(exp(x) − 1)."""

    name = "elu"
    args = ("alpha",)
    attrs = {"alpha": (Float(0), 1.0)}

    def describe(self, a: Attrs) -> str:
        """'elu', or 'elu 0.5' for a non-default alpha."""
        return "elu" if a.alpha == 1.0 else f"elu {a.alpha:g}"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Elu(alpha)."""
        return b.node("Elu", inputs, alpha=a.alpha)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        y = xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0)) * a.alpha)
        return y, (x, y)

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        x, y = saved
        # d/dx alpha·(exp(x) − 1) = alpha·exp(x) = y + alpha
        return xp.where(x > 0, dy, dy * (y + a.alpha))


def sigmoid(xp: Any, x: Array) -> Array:
    """Logistic function without overflow: exp only ever sees −|x|."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


@register
class Sigmoid(ActivationOp):
    """sigmoid: y = 1 / (1 + exp(−x))."""

    name = "sigmoid"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Sigmoid."""
        return b.node("Sigmoid", inputs)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        y = sigmoid(xp, xs[0])
        return y, y

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return dy * saved * (1 - saved)


@register
class Tanh(ActivationOp):
    """tanh: y = tanh(x)."""

    name = "tanh"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Tanh."""
        return b.node("Tanh", inputs)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        y = xp.tanh(xs[0])
        return y, y

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        return dy * (1 - saved * saved)


@register
class Softmax(ActivationOp):
    """softmax(axis=-1): y = exp(x) / Σ_axis exp(x); axis counts without the batch axis."""

    name = "softmax"
    args = ("axis",)
    attrs = {"axis": (Int(), -1)}

    def describe(self, a: Attrs) -> str:
        """'softmax', or 'softmax axis 0' off the last axis."""
        return "softmax" if a.axis == -1 else f"softmax axis {a.axis}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        if not -len(x) <= a.axis < len(x):
            raise ShapeError(f"softmax axis {a.axis} is out of range for shape {list(x)}")
        return tuple(x)

    def acts_along_last_axis(self, a: Attrs, y: Shape) -> bool:
        return a.axis in (-1, len(y) - 1)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Softmax over one axis (opset 13 and later)."""
        return b.node("Softmax", inputs, axis=b.axis(a.axis, len(y)))

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        axis = a.axis if a.axis < 0 else a.axis + 1  # skip the batch axis
        e = xp.exp(x - x.max(axis=axis, keepdims=True))  # shift: exp never overflows
        y = e / e.sum(axis=axis, keepdims=True)
        return y, y

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        y = saved
        axis = a.axis if a.axis < 0 else a.axis + 1
        return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


@register
class Swish(ActivationOp):
    """swish (SiLU): y = x·sigmoid(x)."""

    name = "swish"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """x·Sigmoid(x) (ONNX's own Swish is too recent for most runtimes)."""
        return b.node("Mul", [inputs[0], b.node("Sigmoid", inputs)])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        s = sigmoid(xp, x)
        return x * s, (x, s)

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        x, s = saved
        return dy * (s * (1 + x * (1 - s)))


@register
class Gelu(ActivationOp):
    """gelu: y = x·Φ(x) = x/2·(1 + erf(x/√2)), the exact form.

    The default of Keras (approximate=False) and of PyTorch (approximate='none').
    """

    name = "gelu"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """x/2·(1 + Erf(x/√2)), the exact form (ONNX's Gelu needs opset 20)."""
        x = inputs[0]
        erf = b.node("Erf", [b.node("Mul", [x, b.const("inv_sqrt2", np.float32(math.sqrt(0.5)))])])
        one_plus = b.node("Add", [erf, b.const("one", np.float32(1))])
        half_x = b.node("Mul", [x, b.const("half", np.float32(0.5))])
        return b.node("Mul", [half_x, one_plus])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        # Φ(x) = erfc(−x/√2)/2 keeps relative accuracy in the far negative tail.
        cdf = erfc(xp, x * -_SQRT1_2) * 0.5
        return x * cdf, (x, cdf)

    def grad(self, xp: Any, a: Attrs, saved: Any, dy: Array) -> Array:
        x, cdf = saved
        pdf = xp.exp(x * x * -0.5) * (1 / math.sqrt(2 * math.pi))
        return dy * (cdf + x * pdf)


# ---- erfc in xp: W. J. Cody's rational approximations (Math. Comp. 1969) ----
# NumPy has no erf and cupyx.scipy is not always there. Cody's three ranges
# are accurate to about 1e-16 relative in float64 (tests compare with
# math.erf); evaluated in float32 they are as accurate as float32 allows.

_SQRT1_2 = 1 / math.sqrt(2)
# fmt: off
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
# fmt: on
_SMALL, _LARGE = 0.46875, 4.0
_ZERO = 30.0  # erfc(t) = 0 in float64 from t ≈ 27.3 (exp(−t²) underflows): erfc(30) is 0


def erfc(xp: Any, x: Array) -> Array:
    """Complementary error function 1 − erf(x), elementwise, in x's dtype; NaN stays NaN."""
    y = xp.abs(x)
    # NOTE: every range's formula runs on every element, at y clamped into its range,
    # then a select. Boolean-mask indexing ran each formula on its elements only, but on
    # a GPU each mask's size is a wait for the device (six a call). The clamps keep the
    # unused formulas finite and make erfc(±inf) 0 and 2; a NaN passes every clamp.
    small = 1 - _erf_small(xp.minimum(y, _SMALL))
    mid = _erfc_mid(xp, xp.clip(y, _SMALL, _LARGE))
    large = _erfc_large(xp, xp.clip(y, _LARGE, _ZERO))
    e = xp.where(y <= _SMALL, small, xp.where(y > _LARGE, large, mid))
    return xp.where(x < 0, 2 - e, e)


def _erf_small(t: Array) -> Array:  # erf(t), |t| <= 0.46875
    t2 = t * t
    num, den = t2 * _A[4], t2
    for i in range(3):
        num, den = (num + _A[i]) * t2, (den + _B[i]) * t2
    return t * (num + _A[3]) / (den + _B[3])


def _erfc_mid(xp: Any, t: Array) -> Array:  # erfc(t), 0.46875 < t <= 4
    num, den = t * _C[8], t
    for i in range(7):
        num, den = (num + _C[i]) * t, (den + _D[i]) * t
    return _exp_minus_square(xp, t) * (num + _C[7]) / (den + _D[7])


def _erfc_large(xp: Any, t: Array) -> Array:  # erfc(t), t > 4
    r = 1 / (t * t)
    num, den = r * _P[5], r
    for i in range(4):
        num, den = (num + _P[i]) * r, (den + _Q[i]) * r
    return (
        _exp_minus_square(xp, t) * (1 / math.sqrt(math.pi) - r * (num + _P[4]) / (den + _Q[4])) / t
    )


def _exp_minus_square(xp: Any, t: Array) -> Array:
    # Cody's split: t = u + (t − u) with u on a 1/16 grid, so u·u is exact and
    # exp(−t²) = exp(−u²)·exp(−(t − u)(t + u)) loses no bits to rounding t².
    u = xp.trunc(t * 16) / 16
    return xp.exp(-u * u) * xp.exp(-(t - u) * (t + u))
