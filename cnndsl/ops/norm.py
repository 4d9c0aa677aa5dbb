"""Normalisation and regularisation: batchnorm, lrn, dropout.

All keep the input shape and work along the last (channel) axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnndsl.ops.attrs import REQUIRED, Bool, Float, Int
from cnndsl.ops.errors import ShapeError
from cnndsl.ops.registry import (
    Array,
    Attrs,
    Backward,
    Context,
    Forward,
    Op,
    Shape,
    Weights,
    WeightSpec,
    register,
)
from cnndsl.runtime.workers import Workers, workers_of


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
    Lowering may add activation=relu|relu6 when that activation is the only
    reader (`cnndsl.runtime.lower`): the kernel then applies it while the data is hot.
    The chunked passes (batch sums, affine, gradient sums, dx) are the generic
    kernels below unless ctx.overrides holds a backend's version under
    "batchnorm_shifted_sums", "batchnorm_affine", "batchnorm_dz_sums" or
    "batchnorm_dx" (same signature).
    Weights: gamma [C] (if scale), beta [C] (if center), moving_mean [C],
    moving_variance [C] (the last two not trainable).
    """

    name = "batchnorm"
    family = "norm"
    frozen_as_inference = True
    folds_into_producer = True
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

    def hosts_activation(self, a: Attrs, activation: str) -> bool:
        """relu and relu6, applied by the affine kernel while the data is hot."""
        return activation in ("relu", "relu6") and a.get("activation", "none") == "none"

    def inference_affine(self, a: Attrs, w: Mapping[str, Any]) -> tuple[Any, Any]:
        """scale = gamma/sqrt(moving_variance + epsilon), shift = beta − scale·moving_mean."""
        mean = np.asarray(w["moving_mean"], np.float64)
        var = np.asarray(w["moving_variance"], np.float64)
        gamma = np.asarray(w["gamma"], np.float64) if "gamma" in w else np.ones_like(mean)
        beta = np.asarray(w["beta"], np.float64) if "beta" in w else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + a.epsilon)
        return scale, beta - scale * mean

    def fresh_output(self, a: Attrs) -> bool:
        return a.get("activation", "none") == "none"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """BatchNormalization in inference form (moving statistics), channels on ONNX axis 1."""
        c = y[-1]
        if len(y) not in (1, 3):  # the channels are not ONNX's axis 1: the affine map
            scale, shift = self.inference_affine(a, b.arrays)
            out = b.node("Mul", [inputs[0], b.weight("scale", scale)])
            return b.node("Add", [out, b.weight("shift", shift)])
        gamma = b.w("gamma") if a.scale else np.ones(c, np.float32)
        beta = b.w("beta") if a.center else np.zeros(c, np.float32)
        names = [
            b.weight("gamma", gamma),
            b.weight("beta", beta),
            b.weight("moving_mean", b.w("moving_mean")),
            b.weight("moving_variance", b.w("moving_variance")),
        ]
        out = b.node("BatchNormalization", [inputs[0], *names], epsilon=a.epsilon)
        return b.activate(a.get("activation", "none"), out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        act = a.get("activation", "none")
        workers = workers_of(ctx)
        fast = ctx.overrides or {}
        if ctx.training:
            sums = fast.get("batchnorm_shifted_sums", shifted_sums)
            mean, var = batch_moments(xp, x, workers, ctx.allreduce, sums)
            for name, batch in (("moving_mean", mean), ("moving_variance", var)):
                w[name][...] = a.momentum * w[name] + (1 - a.momentum) * batch
        else:
            mean, var = w["moving_mean"], w["moving_variance"]
        inv = 1 / xp.sqrt(var + a.epsilon)
        scale = w["gamma"] * inv if "gamma" in w else inv
        shift = -mean * scale
        if "beta" in w:
            shift = shift + w["beta"]
        kernel = fast.get("batchnorm_affine", affine)
        y = kernel(xp, x, scale.astype(x.dtype), shift.astype(x.dtype), act, workers)
        saved = BatchNormSaved(x, mean.astype(x.dtype), inv.astype(x.dtype),
                               y if act != "none" else None, ctx.training)  # fmt: skip
        return y, saved

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        s: BatchNormSaved = saved
        act = a.get("activation", "none")
        workers = workers_of(ctx)
        fast = ctx.overrides or {}
        # dz: the gradient at the normalised-and-scaled value, before the activation.
        # The generic kernels keep the masked dz for the dx pass, in dx's own buffer.
        keep = None
        generic = not {"batchnorm_dz_sums", "batchnorm_dx"} & set(fast)
        if generic and act != "none" and ctx.wants_grad(0):
            keep = xp.empty(dy.shape, dtype=dy.dtype)
            sdz, sdzx = dz_sums(xp, dy, s, act, workers, dz_out=keep)
        else:
            sdz, sdzx = fast.get("batchnorm_dz_sums", dz_sums)(xp, dy, s, act, workers)
        grads = {}
        if "gamma" in w:
            grads["gamma"] = sdzx.astype(dy.dtype)
        if "beta" in w:
            grads["beta"] = sdz.astype(dy.dtype)
        if not ctx.wants_grad(0):
            return [None], grads
        gamma = w.get("gamma", 1)
        g = gamma * s.inv
        if not s.training:  # moving statistics are constants: an affine map
            coef, const = xp.zeros_like(g), xp.zeros_like(g)
        else:
            # dx = g·(dz − mean(dz) − xhat·mean(dz·xhat)), xhat = (x − mean)·inv,
            # i.e. dx = g·dz + coef·x + const per channel.
            m = dy.size // dy.shape[-1]
            if ctx.allreduce is not None:  # sync batchnorm: the global batch's sums
                c = sdz.shape[0]
                local = xp.concatenate([sdz, sdzx, xp.asarray([m], xp.float64)])
                total = ctx.allreduce(local.astype(xp.float64))
                sdz, sdzx, m = total[:c], total[c : 2 * c], float(total[2 * c])
            coef = -g * s.inv * (sdzx / m)
            const = -g * (sdz / m) - coef * s.mean
        if keep is not None:
            dx = dx_affine(xp, dy, s, act, g, coef, const, workers, dz=keep)
        else:
            dx = fast.get("batchnorm_dx", dx_affine)(xp, dy, s, act, g, coef, const, workers)
        return [dx], grads


@dataclass
class BatchNormSaved:
    """batchnorm's input and statistics, its output where an activation ran in the kernel."""

    x: Array
    mean: Array
    inv: Array
    y: Array | None
    training: bool


def channel_rows(x: Array) -> tuple[Array, int]:
    """x as (rows, channels) and the rows per sample."""
    c = x.shape[-1]
    return x.reshape(-1, c), max(1, x[0].size // c) if x.shape[0] else 1


def row_chunks(workers: Workers, x: Array, per_sample: int) -> list[tuple[int, int]]:
    """Row ranges of whole samples, about chunk_bytes each."""
    row_bytes = x.shape[-1] * x.dtype.itemsize
    return [
        (lo * per_sample, hi * per_sample)
        for lo, hi in workers.batch_chunks(x.shape[0], per_sample * row_bytes, stream=True)
    ]


def batch_moments(
    xp: Any,
    x: Array,
    workers: Workers,
    allreduce: Any = None,
    sums: Callable[..., tuple[Array, Array]] | None = None,
) -> tuple[Array, Array]:
    """Per-channel mean and biased variance over every axis but the last.

    From the shifted sums of `sums` (`shifted_sums` unless a backend's):
    E[(x − x0)²] − E[x − x0]² loses little to cancellation. With `allreduce`
    (a sum over ranks), the moments of the global batch (`_global_moments`).
    """
    total, x0 = (sums or shifted_sums)(xp, x, workers)
    rows = x.size // x.shape[-1] if x.shape[-1] else 0
    if allreduce is not None:
        return _global_moments(xp, total, x0, rows, allreduce, x.dtype)
    total = total / max(rows, 1)
    shifted_mean, square = total[0], total[1]
    var = xp.maximum(square - shifted_mean * shifted_mean, 0)
    return (shifted_mean + x0).astype(x.dtype), var.astype(x.dtype)


def shifted_sums(xp: Any, x: Array, workers: Workers) -> tuple[Array, Array]:
    """(Σ (x − x0), Σ (x − x0)²) per channel as (2, C) in float64, and the shift x0.

    One pass, shifted by the first sample's values; chunk sums are added in
    float64 in chunk order.
    """
    x2, per = channel_rows(x)
    chunks = row_chunks(workers, x, per)
    parts = xp.empty((len(chunks), 2, x2.shape[1]), dtype=xp.float64)
    x0 = x2[0].copy() if x2.shape[0] else xp.zeros(x2.shape[1], x.dtype)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        lo, hi = chunk
        d = workers.scratch(xp, lane, "bn", (hi - lo, x2.shape[1]), x.dtype)
        xp.subtract(x2[lo:hi], x0, out=d)
        i = chunks.index(chunk)
        parts[i, 0] = workers.colsum(xp, d)
        xp.multiply(d, d, out=d)
        parts[i, 1] = workers.colsum(xp, d)

    workers.each(chunks, run)
    return parts.sum(axis=0), x0


def _global_moments(
    xp: Any, sums: Array, x0: Array, n: int, allreduce: Any, dtype: Any
) -> tuple[Array, Array]:
    """Mean and biased variance of every rank's rows from this rank's shifted sums.

    Each rank's shift x0 is its own, so ranks combine (mean, centred square
    sum) pairs as Chan et al.'s parallel variance does: two sums over ranks.
    """
    rows = max(n, 1)
    mean = sums[0] / rows + x0.astype(xp.float64)  # this rank's mean
    centred = sums[1] - sums[0] * sums[0] / rows  # Σ (x − mean)² here
    first = allreduce(xp.concatenate([xp.asarray([float(n)], xp.float64), n * mean]))
    total = max(float(first[0]), 1.0)
    global_mean = first[1:] / total
    square = allreduce(centred + n * (mean - global_mean) ** 2)
    var = xp.maximum(square / total, 0)
    return global_mean.astype(dtype), var.astype(dtype)


def affine(xp: Any, x: Array, scale: Array, shift: Array, act: str, workers: Workers) -> Array:
    """y = act(x·scale + shift) per channel (act: none, relu or relu6), chunk by chunk."""
    y = xp.empty(x.shape, dtype=x.dtype)
    x2, per = channel_rows(x)
    y2 = y.reshape(x2.shape)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        lo, hi = chunk
        out = y2[lo:hi]
        xp.multiply(x2[lo:hi], scale, out=out)
        out += shift
        _activate_inplace(xp, act, out)

    workers.each(row_chunks(workers, x, per), run)
    return y


def _activate_inplace(xp: Any, act: str, out: Array) -> None:
    if act == "relu":
        xp.maximum(out, 0, out=out)
    elif act == "relu6":
        xp.clip(out, 0, 6, out=out)
    else:
        assert act == "none", f"batchnorm cannot fuse activation {act}"


def _dz_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    dy2: Array,
    y2: Array | None,
    act: str,
    lo: int,
    hi: int,
    out: Array | None = None,
) -> Array:
    """dz rows lo:hi: dy masked by the activation's derivative (a view of dy if none).

    Written into `out` (rows lo:hi of a whole-batch buffer) if given, else scratch.
    """
    if y2 is None or act == "none":
        return dy2[lo:hi]
    shape = (hi - lo, dy2.shape[1])
    dz = out[lo:hi] if out is not None else workers.scratch(xp, lane, "dz", shape, dy2.dtype)
    y = y2[lo:hi]
    mask = workers.scratch(xp, lane, "mask", shape, bool)
    xp.greater(y, 0, out=mask)
    if act == "relu6":  # the derivative is 1 on the open interval (0, 6)
        below = workers.scratch(xp, lane, "below", shape, bool)
        xp.less(y, 6, out=below)
        mask &= below
    xp.multiply(dy2[lo:hi], mask, out=dz)
    return dz


def dz_sums(
    xp: Any,
    dy: Array,
    s: BatchNormSaved,
    act: str,
    workers: Workers,
    dz_out: Array | None = None,
) -> tuple[Array, Array]:
    """(Σ dz, Σ dz·xhat) per channel, in float64; dz also into dz_out if given."""
    dy2, per = channel_rows(dy)
    x2 = s.x.reshape(dy2.shape)
    y2 = s.y.reshape(dy2.shape) if s.y is not None else None
    keep = dz_out.reshape(dy2.shape) if dz_out is not None else None
    chunks = row_chunks(workers, dy, per)
    parts = xp.empty((len(chunks), 2, dy2.shape[1]), dtype=xp.float64)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        lo, hi = chunk
        i = chunks.index(chunk)
        dz = _dz_chunk(xp, workers, lane, dy2, y2, act, lo, hi, keep)
        parts[i, 0] = workers.colsum(xp, dz)
        centred = workers.scratch(xp, lane, "bn", (hi - lo, dy2.shape[1]), dy.dtype)
        xp.subtract(x2[lo:hi], s.mean, out=centred)
        centred *= dz
        parts[i, 1] = workers.colsum(xp, centred)

    workers.each(chunks, run)
    total = parts.sum(axis=0)
    # Σ dz·xhat = inv·Σ dz·(x − mean): the per-channel factor once, not per value.
    return total[0], total[1] * s.inv


def dx_affine(
    xp: Any,
    dy: Array,
    s: BatchNormSaved,
    act: str,
    g: Array,
    coef: Array,
    const: Array,
    workers: Workers,
    dz: Array | None = None,
) -> Array:
    """dx = g·dz + coef·x + const per channel, chunk by chunk.

    dz: the masked gradient `dz_sums` kept (then dx overwrites it), else formed again.
    """
    dy2, per = channel_rows(dy)
    dx = dz if dz is not None and act != "none" else xp.empty(dy.shape, dtype=dy.dtype)
    x2 = s.x.reshape(dy2.shape)
    y2 = s.y.reshape(dy2.shape) if s.y is not None else None
    dx2 = dx.reshape(dy2.shape)
    g, coef, const = (v.astype(dy.dtype) for v in (g, coef, const))

    def run(lane: int, chunk: tuple[int, int]) -> None:
        lo, hi = chunk
        out = dx2[lo:hi]
        if dx is dz:  # out holds dz already
            out *= g
        else:
            xp.multiply(_dz_chunk(xp, workers, lane, dy2, y2, act, lo, hi), g, out=out)
        tmp = workers.scratch(xp, lane, "bn", (hi - lo, dy2.shape[1]), dy.dtype)
        xp.multiply(x2[lo:hi], coef, out=tmp)
        out += tmp
        out += const

    workers.each(row_chunks(workers, dy, per), run)
    return dx


def window_sum(xp: Any, t: Array, r: int) -> Array:
    """s[..., c] = Σ_{j = c−r}^{c+r} t[..., j], clipped to the valid channels."""
    c = t.shape[-1]
    r = min(r, c - 1)  # NOTE: a wider window already covers every channel: same sums
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
    family = "norm"
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

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """LRN(size=2r+1, alpha·size, beta, bias): ONNX divides alpha by the size."""
        if len(y) != 3:
            raise b.unsupported(self.name, "ONNX's LRN needs a feature map [h, w, c]")
        size = 2 * a.radius + 1
        return b.node("LRN", inputs, size=size, alpha=a.alpha * size, beta=a.beta, bias=a.bias)

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
    family = "norm"
    dropped_at_inference = True
    args = ("rate",)
    attrs = {"rate": (Float(0, 1, max_open=True), REQUIRED)}
    key_attrs = ("rate",)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return tuple(xs[0])

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Nothing: dropout is the identity at inference."""
        return inputs[0]

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        if not ctx.training:
            return x, None
        # NOTE: without an rng from the executor, a fresh unseeded one (not reproducible).
        rng = ctx.rng if ctx.rng is not None else xp.random.default_rng()
        # NOTE: drawn in the compute dtype: a float32 model makes and moves half the bits.
        u = rng.random(x.shape, dtype=xp.float32 if x.dtype == xp.float32 else xp.float64)
        mask = (u >= a.rate).astype(x.dtype) * (1 / (1 - a.rate))
        return x * mask, mask

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        return [dy if saved is None else dy * saved], {}
