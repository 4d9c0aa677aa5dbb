"""Normalisation and regularisation: batchnorm, lrn, dropout.

All keep the input shape and work along the last (channel) axis.
"""

from __future__ import annotations

from typing import Any

from cnndsl.ops.registry import (
    REQUIRED,
    Array,
    Attrs,
    Bool,
    Context,
    Float,
    Int,
    Op,
    Shape,
    ShapeError,
    WeightSpec,
    register,
)

Weights = dict[str, Array]
Forward = tuple[Array, Any]
Backward = tuple[list[Array | None], dict[str, Array]]


def _not_scalar(op: str, x: Shape) -> Shape:
    if len(x) == 0:
        raise ShapeError(f"{op} needs a tensor with a channel axis, got a scalar")
    return tuple(x)


@register
class BatchNorm(Op):
    """batchnorm: y = gamma·(x − mean)/sqrt(var + epsilon) + beta, per channel (last axis).

    Training: mean and biased variance of the batch over every axis but the
    last ([h, w, c]: over N, h, w; [n]: over N), and the moving statistics
    move in place: moving = momentum·moving + (1 − momentum)·batch (Keras,
    biased variance included). Inference: the moving statistics.
    Attrs: momentum=0.99, epsilon=0.001, center=true (beta), scale=true (gamma).
    Weights: gamma [C] (if scale), beta [C] (if center), moving_mean [C],
    moving_variance [C] (the last two not trainable).
    """

    name = "batchnorm"
    attrs = {
        "momentum": (Float(0, 1), 0.99),
        "epsilon": (Float(0), 0.001),
        "center": (Bool(), True),
        "scale": (Bool(), True),
    }

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return _not_scalar(self.name, xs[0])

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        c = (xs[0][-1],)
        ws = {}
        if a.scale:
            ws["gamma"] = WeightSpec(c, init="ones")
        if a.center:
            ws["beta"] = WeightSpec(c, init="zeros")
        ws["moving_mean"] = WeightSpec(c, trainable=False, init="zeros")
        ws["moving_variance"] = WeightSpec(c, trainable=False, init="ones")
        return ws

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        axes = tuple(range(x.ndim - 1))
        if ctx.training:
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)
            for name, batch in (("moving_mean", mean), ("moving_variance", var)):
                w[name][...] = a.momentum * w[name] + (1 - a.momentum) * batch
        else:
            mean, var = w["moving_mean"], w["moving_variance"]
        inv = 1 / xp.sqrt(var + a.epsilon)
        xhat = (x - mean) * inv
        y = xhat * w["gamma"] if "gamma" in w else xhat
        if "beta" in w:
            y = y + w["beta"]
        return y, (xhat, inv, ctx.training)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        xhat, inv, training = saved
        axes = tuple(range(dy.ndim - 1))
        grads = {}
        if "gamma" in w:
            grads["gamma"] = (dy * xhat).sum(axis=axes)
        if "beta" in w:
            grads["beta"] = dy.sum(axis=axes)
        if not ctx.wants_grad(0):
            return [None], grads
        dxhat = dy * w["gamma"] if "gamma" in w else dy
        if not training:  # moving statistics are constants: an affine map
            return [dxhat * inv], grads
        # Batch statistics depend on x: dx = inv·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)).
        m1 = dxhat.mean(axis=axes)
        m2 = (dxhat * xhat).mean(axis=axes)
        return [(dxhat - m1 - xhat * m2) * inv], grads


def window_sum(xp: Any, t: Array, r: int) -> Array:
    """s[..., c] = Σ_{j = c−r}^{c+r} t[..., j], clipped to the valid channels."""
    c = t.shape[-1]
    tp = xp.pad(t, [(0, 0)] * (t.ndim - 1) + [(r, r)])
    s = tp[..., 0:c].copy()
    for k in range(1, 2 * r + 1):
        s += tp[..., k : k + c]
    return s


@register
class Lrn(Op):
    """lrn(radius=2): local response normalisation across channels (AlexNet; TF's formula).

    sqr_sum[c] = Σ_{j=c−r}^{c+r} x[j]² (clipped to valid channels),
    y[c] = x[c] / (bias + alpha·sqr_sum[c])^beta.
    Attrs: radius=2, bias=1, alpha=1e-4, beta=0.75. PyTorch's
    LocalResponseNorm(size=2r+1, alpha=alpha·(2r+1), beta, k=bias) is the same map.
    """

    name = "lrn"
    args = ("radius",)
    attrs = {
        "radius": (Int(0), 2),
        "bias": (Float(0), 1.0),
        "alpha": (Float(0), 1e-4),
        "beta": (Float(0), 0.75),
    }
    key_attrs = ("radius",)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return _not_scalar(self.name, xs[0])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        base = a.bias + a.alpha * window_sum(xp, x * x, a.radius)
        scale = base**-a.beta
        return x * scale, (x, base, scale)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        x, base, scale = saved
        # x[i] enters sqr_sum[c] for every c within r of i (a symmetric window), so
        # dx[i] = dy[i]·scale[i] − 2·alpha·beta·x[i]·Σ_{c near i} dy[c]·x[c]·scale[c]/base[c].
        g = window_sum(xp, dy * x * scale / base, a.radius)
        return [dy * scale - (2 * a.alpha * a.beta) * x * g], {}


@register
class Dropout(Op):
    """dropout(rate): in training y = x·mask/(1 − rate), mask[i] = (u[i] >= rate), u ~ U[0, 1).

    Inverted dropout: inference is the identity. The mask comes from ctx.rng.
    """

    name = "dropout"
    args = ("rate",)
    attrs = {"rate": (Float(0, 1, max_open=True), REQUIRED)}
    key_attrs = ("rate",)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return tuple(xs[0])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        if not ctx.training:
            return x, None
        # NOTE: without an rng from the executor, a fresh unseeded one (not reproducible).
        rng = ctx.rng if ctx.rng is not None else xp.random.default_rng()
        mask = (rng.random(x.shape) >= a.rate).astype(x.dtype) * (1 / (1 - a.rate))
        return x * mask, mask

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        return [dy if saved is None else dy * saved], {}
