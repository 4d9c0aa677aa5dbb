"""Convolutions: conv, depthwise_conv, separable_conv.

All are 2-D cross-correlations over NHWC feature maps with Keras weight
layouts and Keras/TensorFlow `same` padding (the extra pixel goes
bottom/right). Per spatial axis, with input n, kernel f, dilation d,
stride s and padding p_before/p_after:

    f_eff = d·(f − 1) + 1
    out   = floor((n − f_eff + p_before + p_after) / s) + 1

The kernels live in `cnndsl.ops.conv_kernels`: conv2d (chunked im2col +
GEMM; a plain matmul for 1×1; the input gradient by the variant lowering
chose, see `Conv.plan`), and `cnndsl.ops.depthwise_kernels`: depthwise2d
(multiply-adds over the fh·fw kernel offsets); separable_conv is depthwise2d
followed by a 1×1 conv2d.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from cnndsl.ops.act import activate, activate_backward
from cnndsl.ops.attrs import REQUIRED, Bool, Int, Padding, Pair
from cnndsl.ops.conv_kernels import (
    conv2d_backward,
    conv2d_forward,
    forward_method,
    grad_sums_bytes,
    input_grad_method,
    kept_tiles_size,
    kernel_grad_method,
    kernel_grad_partials,
)
from cnndsl.ops.depthwise_kernels import depthwise2d_backward, depthwise2d_forward
from cnndsl.ops.errors import AttrError, ShapeError
from cnndsl.ops.grouped_kernels import grouped_conv2d, grouped_conv2d_backward
from cnndsl.ops.registry import (
    Activation,
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
from cnndsl.ops.window import NOPAD, Geometry, geometry_of, window_geometry
from cnndsl.ops.winograd import SPAN
from cnndsl.runtime.workers import workers_of


def fmt_pair(p: tuple[int, int]) -> str:
    """'3×3' for (3, 3), '1×7' for (1, 7)."""
    return f"{p[0]}×{p[1]}"


def fmt_stride(s: tuple[int, int]) -> str:
    """'' for stride 1, '/2' for (2, 2), '/1×2' otherwise."""
    if s == (1, 1):
        return ""
    return f"/{s[0]}" if s[0] == s[1] else f"/{fmt_pair(s)}"


@dataclass
class ConvSaved:
    """What a convolution's backward needs: its input (padded, for groups > 1), the
    geometry, what the activation saved, and whether a relu ran inside the kernel."""

    x: Array
    geo: Geometry
    act: Any
    fused_relu: bool
    tiles: tuple[Array, object] | None = None  # x's Winograd tiles and their owner token


def conv_geometry(a: Attrs, x: Shape, op: str = "conv") -> Geometry:
    """Kernel geometry of a conv-like op (kernel, stride, padding, dilation) on x (h, w, c).

    attrs pad_input=((t, b), (l, r)) (set by lowering, `fuse_zeropad`): x is the
    input of a zeropad folded into this op; its zeros add to the op's own padding.
    """
    pad_input = a.get("pad_input") or NOPAD
    return window_geometry(op, x[-3:], a.kernel, a.stride, a.padding, a.dilation, pad_input)


def _tiles_to_keep(
    xp: Any, a: Attrs, geo: Geometry, x: Array, ctx: Context, method: str
) -> tuple[Array, object] | None:
    """A buffer for x's Winograd tiles, which the kernel gradient then reads, and its token.

    Only in training, where both the forward and the kernel gradient run as
    Winograd: the buffer lives in the layer's cache, reused from step to step
    (fresh tens of MB per step would page-fault), and a new token marks which
    forward pass wrote it last. NOTE: recomputing the tiles (pad, gather,
    transform) was 14-27% of a kernel-gradient chunk on the Fashion-MNIST
    CNN's convs, about 5% of its training step.
    """
    if not ctx.training or ctx.cache is None or method != "winograd":
        return None
    if (a.get("kernel_grad") or kernel_grad_method(geo, a.filters)) != "winograd":
        return None
    size = kept_tiles_size(geo, x.shape[0])
    buf = ctx.cache.get("tiles")
    if buf is None or buf.size < size or buf.dtype != x.dtype or not isinstance(buf, xp.ndarray):
        buf = ctx.cache["tiles"] = xp.empty(size, dtype=x.dtype)
    owner = ctx.cache["owner"] = object()
    return buf[:size], owner


# ---- The ops ----

_WINDOW_ATTRS = {
    "stride": (Pair(), (1, 1)),
    "padding": (Padding(), "valid"),
}


class ConvLike(Op):
    """What the three convolutions share: geometry, padding, the fused activation's output."""

    family = "conv"
    pads_itself = True
    drawn_kernel = "kernel"

    def geometry(self, a: Attrs, *xs: Shape) -> Geometry:
        return conv_geometry(a, xs[0], self.name)

    def fresh_output(self, a: Attrs) -> bool:
        return a.activation == "none"


def _suffix(a: Attrs) -> str:
    parts = [f"dilation {fmt_pair(a.dilation)}"] if a.dilation != (1, 1) else []
    if a.activation != "none":
        parts.append(a.activation)
    return "".join(f", {p}" for p in parts)


@register
class Conv(ConvLike):
    """conv(filters, kernel, stride): 2-D cross-correlation, grouped and dilated.

    z[i, j, k] = b[k] + Σ_u Σ_v Σ_k' x[i·sh + u·dh, j·sw + v·dw, k'] · w[u, v, k', k]
    over the zero-padded input, k' running over the input channels of k's group;
    y = activation(z). Attrs: filters, kernel (int or (h, w)), stride=1,
    padding=valid|same|n|(h, w), dilation=1, groups=1, bias=true, activation=none.
    Weights: kernel [fh, fw, in/groups, filters] and bias [filters] (Keras Conv2D).
    """

    name = "conv"
    args = ("filters", "kernel", "stride")
    attrs = {
        "filters": (Int(1), REQUIRED),
        "kernel": (Pair(), REQUIRED),
        **_WINDOW_ATTRS,
        "dilation": (Pair(), (1, 1)),
        "groups": (Int(1), 1),
        "bias": (Bool(), True),
        "activation": (Activation(), "none"),
    }
    key_attrs = ("kernel", "stride", "filters")

    def check(self, a: dict[str, Any]) -> None:
        if a["filters"] % a["groups"]:
            raise AttrError(
                f"conv filters ({a['filters']}) must be divisible by groups ({a['groups']})",
                "groups",
            )

    def describe(self, a: Attrs) -> str:
        """'conv 3×3/2, 128, relu'."""
        groups = f", groups {a.groups}" if a.groups != 1 else ""
        return (f"conv {fmt_pair(a.kernel)}{fmt_stride(a.stride)}, {a.filters}"
                f"{groups}{_suffix(a)}")  # fmt: skip

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        out = self.geometry(a, x).out
        if x[2] % a.groups:
            raise ShapeError(
                f"conv with groups={a.groups} needs input channels divisible by"
                f" {a.groups}; got {x[2]} channels ({list(x)})"
            )
        return (*out, a.filters)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        c = xs[0][2]
        ws = {"kernel": WeightSpec((*a.kernel, c // a.groups, a.filters))}
        if a.bias:
            ws["bias"] = WeightSpec((a.filters,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Any, y: Shape) -> int:
        return y[0] * y[1] * a.filters * a.kernel[0] * a.kernel[1] * (xs[0][2] // a.groups)

    def hosts_activation(self, a: Attrs, activation: str) -> bool:
        """relu, which the GEMM kernel applies chunk by chunk while the data is hot."""
        return activation == "relu" and a.activation == "none"

    def channel_weight(self, a: Attrs) -> tuple[str, int] | None:
        """The kernel [fh, fw, in/groups, filters]: filters on the last axis."""
        return ("kernel", 1) if a.activation == "none" else None

    def workspace(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> tuple[int, bool]:
        """im2col columns (oh·ow·fh·fw·c) and the padded input; none for a 1×1 matmul.

        NOTE: a grouped conv's backward holds every group's column gradients at
        once, for the whole batch: its scratch is every sample's, not a chunk's.
        """
        geo = conv_geometry(a, xs[0])
        if geo.kernel == (1, 1):
            return 0, False
        padded = math.prod(geo.padded) * geo.channels if geo.pads != NOPAD else 0
        return geo.out[0] * geo.out[1] * geo.columns + padded, a.groups != 1

    def plan(
        self,
        a: Attrs,
        xs: Sequence[Shape],
        y: Shape,
        algorithms: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The kernels for this shape: forward_method's and input_grad_method's choices.

        algorithms: those the backend has (`Capabilities.conv_algorithms`; None:
        all). Without Winograd, forward and kernel gradient run as im2col and
        the input gradient as "full" (the stride-1 case Winograd was chosen for).
        With "cudnn" (the CuPy backend with nvidia-cudnn-frontend) all three are cuDNN's.
        """
        if a.groups != 1:
            return {}
        geo = conv_geometry(a, xs[0])
        chosen = {
            "forward": forward_method(geo, a.filters),
            "input_grad": input_grad_method(geo, a.filters),
            "kernel_grad": kernel_grad_method(geo, a.filters),
        }
        if algorithms is not None and "cudnn" in algorithms:
            return {"forward": "cudnn", "input_grad": "cudnn", "kernel_grad": "cudnn"}
        if algorithms is not None and "winograd" not in algorithms:
            fallback = {"forward": "im2col", "input_grad": "full", "kernel_grad": "im2col"}
            chosen = {k: fallback[k] if v == "winograd" else v for k, v in chosen.items()}
        return chosen

    def kept_for_training(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """x's transformed tiles where forward and kernel gradient both run as Winograd."""
        plan = self.plan(a, xs, y)
        if (plan.get("forward"), plan.get("kernel_grad")) != ("winograd", "winograd"):
            return 0
        return kept_tiles_size(conv_geometry(a, xs[0]), 1)

    def shared_scratch(
        self, a: Attrs, xs: Sequence[Shape], y: Shape, batch: int, itemsize: int
    ) -> tuple[int, int]:
        """The Winograd kernel transform, 36·c·f values (counted for every 3×3 conv); the
        kernel gradient's partials of fh·fw·c·f values (`kernel_grad_partials`) and, for a
        Winograd dW, each lane's 36·c·f per-point sums (two lanes, as the plan counts the
        lanes' chunk scratch)."""
        if a.groups != 1:
            return 0, 0
        geo = conv_geometry(a, xs[0])
        c, f = geo.channels, a.filters
        transform = SPAN * SPAN * c * f * itemsize if geo.kernel == (3, 3) else 0
        partial = geo.kernel[0] * geo.kernel[1] * c * f * itemsize
        sums = 2 * grad_sums_bytes(geo, f, itemsize)
        sums = sums if kernel_grad_method(geo, f) == "winograd" else 0
        return transform, kernel_grad_partials(batch, geo, f, itemsize) * partial + sums

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Conv with the kernel as OIHW and Keras `same` as explicit asymmetric pads."""
        kernel = b.weight("kernel", b.w("kernel").transpose(3, 2, 0, 1))
        bias = [b.weight("bias", b.w("bias"))] if a.bias else []
        geo = self.geometry(a, xs[0])
        out = b.node("Conv", [inputs[0], kernel, *bias], **b.window_attrs(geo), group=a.groups)
        return b.activate(a.activation, out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        geo = conv_geometry(a, x.shape[1:])
        if a.groups != 1:
            z, xpad = grouped_conv2d(xp, x, w["kernel"], geo, a.groups, workers_of(ctx))
            if "bias" in w:
                z += w["bias"]
            y, act_saved = activate(xp, a.activation, z)
            return y, ConvSaved(xpad, geo, act_saved, False)
        relu = a.activation == "relu"
        method = a.get("forward") or forward_method(geo, a.filters)
        tiles = _tiles_to_keep(xp, a, geo, x, ctx, method)
        keep = tiles[0] if tiles else None
        workers = workers_of(ctx)
        # NOTE: a backend may run conv itself (the CuPy backend's cuDNN, method "cudnn"); the
        # generic kernel looks its Winograd transforms up in the overrides (compiled by Numba).
        fast = ctx.overrides or {}
        run = fast.get("conv2d_forward") or partial(conv2d_forward, overrides=fast)
        z = run(xp, x, w["kernel"], w.get("bias"), geo, relu, workers, method, keep)
        if relu:  # applied chunk by chunk; it saves its output, as Relu.forward does
            return z, ConvSaved(x, geo, z, True, tiles)
        y, act_saved = activate(xp, a.activation, z)
        return y, ConvSaved(x, geo, act_saved, False, tiles)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        s: ConvSaved = saved
        if a.groups != 1:
            dz = activate_backward(xp, a.activation, s.act, dy)
            dx, dk = grouped_conv2d_backward(
                xp, s.x, dz, w["kernel"], s.geo, a.groups, ctx.wants_grad(0), workers_of(ctx)
            )
            grads = {"kernel": dk}
            if "bias" in w:
                grads["bias"] = dz.sum(axis=(0, 1, 2))
            return [dx], grads
        dz = dy if s.fused_relu else activate_backward(xp, a.activation, s.act, dy)
        # NOTE: lowering records the variant (Conv.plan); a direct call derives the same one.
        method = a.get("input_grad") or input_grad_method(s.geo, a.filters)
        kept = None
        if s.tiles is not None and ctx.cache is not None and ctx.cache.get("owner") is s.tiles[1]:
            kept = s.tiles[0]  # no later forward of this layer has overwritten them
        fast = ctx.overrides or {}
        run = fast.get("conv2d_backward") or partial(conv2d_backward, overrides=fast)
        dx, dk, db = run(
            xp,
            s.x,
            dz,
            w["kernel"],
            s.geo,
            want_dx=ctx.wants_grad(0),
            want_db="bias" in w,
            method=method,
            relu_out=s.act if s.fused_relu else None,
            workers=workers_of(ctx),
            kernel_method=a.get("kernel_grad") or kernel_grad_method(s.geo, a.filters),
            kept=kept,
        )
        grads = {"kernel": dk}
        if db is not None:
            grads["bias"] = db
        return [dx], grads


@register
class DepthwiseConv(ConvLike):
    """depthwise_conv(kernel, stride): one [fh, fw] filter per (input channel, multiplier).

    z[i, j, c·m + q] = b[c·m + q] + Σ_u Σ_v x[i·sh + u·dh, j·sw + v·dw, c] · w[u, v, c, q]
    (Keras DepthwiseConv2D channel order); y = activation(z). Attrs: kernel,
    stride=1, padding=valid, depth_multiplier=1, dilation=1, bias=true, activation.
    Weights: kernel [fh, fw, in, m], bias [in·m].
    """

    name = "depthwise_conv"
    args = ("kernel", "stride")
    attrs = {
        "kernel": (Pair(), REQUIRED),
        **_WINDOW_ATTRS,
        "depth_multiplier": (Int(1), 1),
        "dilation": (Pair(), (1, 1)),
        "bias": (Bool(), True),
        "activation": (Activation(), "none"),
    }
    key_attrs = ("kernel", "stride")

    def describe(self, a: Attrs) -> str:
        """'depthwise_conv 3×3/2, ×2, relu'."""
        m = f", ×{a.depth_multiplier}" if a.depth_multiplier != 1 else ""
        return f"depthwise_conv {fmt_pair(a.kernel)}{fmt_stride(a.stride)}{m}{_suffix(a)}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        return (*self.geometry(a, x).out, x[2] * a.depth_multiplier)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        c = xs[0][2]
        ws = {"kernel": WeightSpec((*a.kernel, c, a.depth_multiplier))}
        if a.bias:
            ws["bias"] = WeightSpec((c * a.depth_multiplier,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Any, y: Shape) -> int:
        return y[0] * y[1] * y[2] * a.kernel[0] * a.kernel[1]

    def channel_weight(self, a: Attrs) -> tuple[str, int] | None:
        """The kernel [fh, fw, in, m]: output channel c·m + j on the last two axes."""
        return ("kernel", 2) if a.activation == "none" else None

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """A Conv with one group per input channel; Keras' (c, m) channel order is ONNX's."""
        fh, fw, c, m = b.w("kernel").shape
        kernel = b.w("kernel").reshape(fh, fw, c * m).transpose(2, 0, 1)[:, None]
        bias = [b.weight("bias", b.w("bias"))] if a.bias else []
        geo = self.geometry(a, xs[0])
        attrs = b.window_attrs(geo)
        out = b.node("Conv", [inputs[0], b.weight("kernel", kernel), *bias], **attrs, group=c)
        return b.activate(a.activation, out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        geo = conv_geometry(a, x.shape[1:])
        run = (ctx.overrides or {}).get("depthwise2d_forward", depthwise2d_forward)
        z = run(xp, x, w["kernel"], geo, workers_of(ctx))
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, ConvSaved(x, geo, act_saved, False)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        s: ConvSaved = saved
        dz = activate_backward(xp, a.activation, s.act, dy)
        run = (ctx.overrides or {}).get("depthwise2d_backward", depthwise2d_backward)
        dx, dk = run(xp, s.x, dz, w["kernel"], s.geo, ctx.wants_grad(0), workers_of(ctx))
        grads = {"kernel": dk}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=(0, 1, 2))
        return [dx], grads


@register
class SeparableConv(ConvLike):
    """separable_conv(filters, kernel, stride): depthwise_conv then a 1×1 conv (Keras).

    t = depthwise(x; depthwise_kernel [fh, fw, in, m]) without bias,
    z = t · pointwise_kernel [1, 1, in·m, filters] + b, y = activation(z).
    Attrs: filters, kernel, stride=1, padding=valid, depth_multiplier=1,
    dilation=1, bias=true, activation. Params: depthwise + pointwise + bias.
    """

    name = "separable_conv"
    drawn_kernel = "depthwise_kernel"
    args = ("filters", "kernel", "stride")
    attrs = {
        "filters": (Int(1), REQUIRED),
        "kernel": (Pair(), REQUIRED),
        **_WINDOW_ATTRS,
        "depth_multiplier": (Int(1), 1),
        "dilation": (Pair(), (1, 1)),
        "bias": (Bool(), True),
        "activation": (Activation(), "none"),
    }
    key_attrs = ("kernel", "stride", "filters")

    def describe(self, a: Attrs) -> str:
        """'separable_conv 3×3, 128, relu'."""
        m = f", ×{a.depth_multiplier}" if a.depth_multiplier != 1 else ""
        return (f"separable_conv {fmt_pair(a.kernel)}{fmt_stride(a.stride)}, {a.filters}"
                f"{m}{_suffix(a)}")  # fmt: skip

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        return (*self.geometry(a, x).out, a.filters)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        cm = xs[0][2] * a.depth_multiplier
        ws = {
            "depthwise_kernel": WeightSpec((*a.kernel, xs[0][2], a.depth_multiplier)),
            "pointwise_kernel": WeightSpec((1, 1, cm, a.filters)),
        }
        if a.bias:
            ws["bias"] = WeightSpec((a.filters,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Any, y: Shape) -> int:
        cm = xs[0][2] * a.depth_multiplier
        return y[0] * y[1] * cm * (a.kernel[0] * a.kernel[1] + a.filters)

    def channel_weight(self, a: Attrs) -> tuple[str, int] | None:
        """The pointwise kernel [1, 1, in·m, filters]: filters on the last axis."""
        return ("pointwise_kernel", 1) if a.activation == "none" else None

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """A grouped (depthwise) Conv, then a 1×1 Conv with the bias."""
        fh, fw, c, m = b.w("depthwise_kernel").shape
        depthwise = b.w("depthwise_kernel").reshape(fh, fw, c * m).transpose(2, 0, 1)[:, None]
        geo = self.geometry(a, xs[0])
        mid = b.node(
            "Conv",
            [inputs[0], b.weight("depthwise_kernel", depthwise)],
            **b.window_attrs(geo),
            group=c,
        )
        pointwise = b.weight("pointwise_kernel", b.w("pointwise_kernel").transpose(3, 2, 0, 1))
        bias = [b.weight("bias", b.w("bias"))] if a.bias else []
        out = b.node("Conv", [mid, pointwise, *bias], kernel_shape=[1, 1])
        return b.activate(a.activation, out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        workers = workers_of(ctx)
        geo = conv_geometry(a, x.shape[1:])
        depthwise = (ctx.overrides or {}).get("depthwise2d_forward", depthwise2d_forward)
        t = depthwise(xp, x, w["depthwise_kernel"], geo, workers)
        pw = geometry_of(t.shape[1:], (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)))
        z = conv2d_forward(xp, t, w["pointwise_kernel"], w.get("bias"), pw, False, workers)
        y, act_saved = activate(xp, a.activation, z)
        return y, (ConvSaved(x, geo, None, False), ConvSaved(t, pw, act_saved, False))

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        dw_saved, pw_saved = saved
        workers = workers_of(ctx)
        dz = activate_backward(xp, a.activation, pw_saved.act, dy)
        dt, dpk, db = conv2d_backward(
            xp,
            pw_saved.x,
            dz,
            w["pointwise_kernel"],
            pw_saved.geo,
            want_dx=True,
            want_db="bias" in w,
            method="gemm",
            relu_out=None,
            workers=workers,
        )
        assert dt is not None
        depthwise = (ctx.overrides or {}).get("depthwise2d_backward", depthwise2d_backward)
        dx, ddk = depthwise(
            xp, dw_saved.x, dt, w["depthwise_kernel"], dw_saved.geo, ctx.wants_grad(0), workers
        )
        grads = {"depthwise_kernel": ddk, "pointwise_kernel": dpk}
        if db is not None:
            grads["bias"] = db
        return [dx], grads
