"""Convolutions: conv, depthwise_conv, separable_conv.

All are 2-D cross-correlations over NHWC feature maps with Keras weight
layouts and Keras/TensorFlow `same` padding (the extra pixel goes
bottom/right). Per spatial axis, with input n, kernel f, dilation d,
stride s and padding p_before/p_after:

    f_eff = d·(f − 1) + 1
    out   = floor((n − f_eff + p_before + p_after) / s) + 1

The kernels below are shared: `conv2d` (im2col + GEMM, grouped; a plain
matmul for 1×1) and `depthwise2d` (multiply-adds over the fh·fw kernel
offsets); separable_conv is depthwise2d followed by a 1×1 conv2d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnndsl.ops.act import activate, activate_backward
from cnndsl.ops.registry import (
    REQUIRED,
    Activation,
    Array,
    AttrError,
    Attrs,
    Bool,
    Context,
    Int,
    Op,
    Padding,
    Pair,
    Shape,
    ShapeError,
    WeightSpec,
    Window,
    effective,
    pads,
    register,
    spatial,
    window_out,
)

Weights = dict[str, Array]
Forward = tuple[Array, Any]
Backward = tuple[list[Array | None], dict[str, Array]]
Pads = tuple[tuple[int, int], tuple[int, int]]


def fmt_pair(p: tuple[int, int]) -> str:
    """'3×3' for (3, 3), '1×7' for (1, 7)."""
    return f"{p[0]}×{p[1]}"


def fmt_stride(s: tuple[int, int]) -> str:
    """'' for stride 1, '/2' for (2, 2), '/1×2' otherwise."""
    if s == (1, 1):
        return ""
    return f"/{s[0]}" if s[0] == s[1] else f"/{fmt_pair(s)}"


def geometry(
    op: str, a: Attrs, x: Shape, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Pads, tuple[int, int]]:
    """Padding ((top, bottom), (left, right)) and output (h, w) of a window op on x."""
    h, w, _ = spatial(op, x)
    eff = effective(kernel, dilation)
    p = pads(a.padding, (h, w), eff, a.stride)
    return p, (
        window_out(h, eff[0], a.stride[0], p[0], "height"),
        window_out(w, eff[1], a.stride[1], p[1], "width"),
    )


def batch_geometry(
    x: Array, a: Attrs, kernel: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Pads, tuple[int, int]]:
    """`geometry` for a batch array (N, h, w, c)."""
    return geometry("", a, tuple(x.shape[1:]), kernel, dilation)


def pad2d(xp: Any, x: Array, p: Pads, value: float = 0.0) -> Array:
    """Pad the two spatial axes of an (N, h, w, c) batch; a contiguous array either way."""
    if p == ((0, 0), (0, 0)):
        return xp.ascontiguousarray(x)
    return xp.pad(x, ((0, 0), p[0], p[1], (0, 0)), mode="constant", constant_values=value)


def tap(
    x: Array,
    u: int,
    v: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out: tuple[int, int],
) -> Array:
    """The (N, oh, ow, c) view of padded x that kernel offset (u, v) meets at every output."""
    i, j = u * dilation[0], v * dilation[1]
    return x[:, i : i + stride[0] * (out[0] - 1) + 1 : stride[0],
             j : j + stride[1] * (out[1] - 1) + 1 : stride[1]]  # fmt: skip


def unpad2d(x: Array, p: Pads) -> Array:
    """Crop the padding that pad2d added."""
    (t, b), (l, r) = p
    return x[:, t : x.shape[1] - b, l : x.shape[2] - r]


# ---- conv2d: im2col + GEMM ----


@dataclass
class ConvSaved:
    """What conv2d_backward needs: the padded input (or strided input of a 1×1) and geometry."""

    x: Array
    in_shape: tuple[int, ...]
    pads: Pads
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out: tuple[int, int]
    pointwise: bool


def im2col(
    xp: Any,
    xpad: Array,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out: tuple[int, int],
) -> Array:
    """Strided view (N, oh, ow, fh, fw, c) of padded x: patch (i, j) of every output."""
    n, _, _, c = xpad.shape
    sn, sh, sw, sc = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad,
        shape=(n, out[0], out[1], kernel[0], kernel[1], c),
        strides=(sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc),
    )


def conv2d(
    xp: Any,
    x: Array,
    kernel: Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    p: Pads,
    groups: int,
) -> tuple[Array, ConvSaved]:
    """Grouped 2-D cross-correlation of x (N, h, w, c) with kernel [fh, fw, c/groups, f]."""
    fh, fw, cin_g, f = kernel.shape
    n = x.shape[0]
    if (fh, fw) == (1, 1) and p == ((0, 0), (0, 0)) and groups == 1:
        # A 1×1 conv is a matmul over the pixels it visits; no im2col copy.
        xs = x[:, :: stride[0], :: stride[1]]
        out = (xs.shape[1], xs.shape[2])
        z = (xs.reshape(-1, cin_g) @ kernel.reshape(cin_g, f)).reshape(n, *out, f)
        saved = ConvSaved(xs, tuple(x.shape), p, stride, dilation, 1, out, True)
        return z, saved
    xpad = pad2d(xp, x, p)
    eff = effective((fh, fw), dilation)
    out = ((xpad.shape[1] - eff[0]) // stride[0] + 1, (xpad.shape[2] - eff[1]) // stride[1] + 1)
    view = im2col(xp, xpad, (fh, fw), stride, dilation, out)
    f_g = f // groups
    zs = []
    for g in range(groups):
        cols = view[..., g * cin_g : (g + 1) * cin_g].reshape(-1, fh * fw * cin_g)
        zs.append(cols @ kernel[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g))
    z = zs[0] if groups == 1 else xp.concatenate(zs, axis=1)
    saved = ConvSaved(xpad, tuple(x.shape), p, stride, dilation, groups, out, False)
    return z.reshape(n, *out, f), saved


def conv2d_backward(
    xp: Any, s: ConvSaved, dz: Array, kernel: Array, want_dx: bool
) -> tuple[Array | None, Array]:
    """(dx or None, dkernel) of conv2d: dW = colsᵀ·dz, dcols = dz·Wᵀ, then col2im."""
    fh, fw, cin_g, f = kernel.shape
    if s.pointwise:
        dz2 = dz.reshape(-1, f)
        dk = (s.x.reshape(-1, cin_g).T @ dz2).reshape(kernel.shape)
        if not want_dx:
            return None, dk
        dxs = (dz2 @ kernel.reshape(cin_g, f).T).reshape(s.x.shape)
        if s.stride == (1, 1):
            return dxs, dk
        dx = xp.zeros(s.in_shape, dtype=dxs.dtype)
        dx[:, :: s.stride[0], :: s.stride[1]] = dxs
        return dx, dk
    view = im2col(xp, s.x, (fh, fw), s.stride, s.dilation, s.out)
    f_g = f // s.groups
    dks, dcols = [], []
    for g in range(s.groups):
        cols = view[..., g * cin_g : (g + 1) * cin_g].reshape(-1, fh * fw * cin_g)
        dz_g = dz[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g)
        dks.append((cols.T @ dz_g).reshape(fh, fw, cin_g, f_g))
        if want_dx:
            w_g = kernel[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g)
            dcols.append((dz_g @ w_g.T).reshape(*view.shape[:5], cin_g))
    dk = dks[0] if s.groups == 1 else xp.concatenate(dks, axis=3)
    if not want_dx:
        return None, dk
    dcol = dcols[0] if s.groups == 1 else xp.concatenate(dcols, axis=5)
    # col2im: each kernel offset scatters its slice of dcols back onto the input.
    dxpad = xp.zeros(s.x.shape, dtype=dcol.dtype)
    for u in range(fh):
        for v in range(fw):
            tap(dxpad, u, v, s.stride, s.dilation, s.out)[...] += dcol[:, :, :, u, v]
    return unpad2d(dxpad, s.pads), dk


# ---- depthwise2d: one filter bank per input channel ----


@dataclass
class DepthwiseSaved:
    """What depthwise2d_backward needs."""

    xpad: Array
    pads: Pads
    stride: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]


def depthwise2d(
    xp: Any,
    x: Array,
    kernel: Array,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    p: Pads,
) -> tuple[Array, DepthwiseSaved]:
    """Depthwise conv of x (N, h, w, c) with kernel [fh, fw, c, m]; channel c·m + j out."""
    fh, fw, c, m = kernel.shape
    xpad = pad2d(xp, x, p)
    eff = effective((fh, fw), dilation)
    out = ((xpad.shape[1] - eff[0]) // stride[0] + 1, (xpad.shape[2] - eff[1]) // stride[1] + 1)
    z = xp.zeros((x.shape[0], *out, c, m), dtype=xp.result_type(x, kernel))
    for u in range(fh):
        for v in range(fw):
            z += tap(xpad, u, v, stride, dilation, out)[..., None] * kernel[u, v]
    return z.reshape(x.shape[0], *out, c * m), DepthwiseSaved(xpad, p, stride, dilation, out)


def depthwise2d_backward(
    xp: Any, s: DepthwiseSaved, dz: Array, kernel: Array, want_dx: bool
) -> tuple[Array | None, Array]:
    """(dx or None, dkernel) of depthwise2d, again one kernel offset at a time."""
    fh, fw, c, m = kernel.shape
    dz = dz.reshape(*dz.shape[:3], c, m)
    dk = xp.empty(kernel.shape, dtype=xp.result_type(s.xpad, dz))
    dxpad = xp.zeros(s.xpad.shape, dtype=dk.dtype) if want_dx else None
    for u in range(fh):
        for v in range(fw):
            patch = tap(s.xpad, u, v, s.stride, s.dilation, s.out)
            dk[u, v] = xp.einsum("nhwc,nhwcm->cm", patch, dz)
            if dxpad is not None:
                tap(dxpad, u, v, s.stride, s.dilation, s.out)[...] += xp.einsum(
                    "nhwcm,cm->nhwc", dz, kernel[u, v]
                )
    return (None if dxpad is None else unpad2d(dxpad, s.pads)), dk


# ---- The ops ----

_WINDOW_ATTRS = {
    "stride": (Pair(), (1, 1)),
    "padding": (Padding(), "valid"),
}


def _suffix(a: Attrs) -> str:
    parts = [f"dilation {fmt_pair(a.dilation)}"] if a.dilation != (1, 1) else []
    if a.activation != "none":
        parts.append(a.activation)
    return "".join(f", {p}" for p in parts)


@register
class Conv(Op):
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
        _, out = geometry("conv", a, x, a.kernel, a.dilation)
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

    def window(self, a: Attrs, *xs: Shape) -> Window:
        return Window(kernel=effective(a.kernel, a.dilation), stride=a.stride)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        p, _ = batch_geometry(x, a, a.kernel, a.dilation)
        z, saved = conv2d(xp, x, w["kernel"], a.stride, a.dilation, p, a.groups)
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, (saved, act_saved)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        conv_saved, act_saved = saved
        dz = activate_backward(xp, a.activation, act_saved, dy)
        dx, dk = conv2d_backward(xp, conv_saved, dz, w["kernel"], ctx.wants_grad(0))
        grads = {"kernel": dk}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=(0, 1, 2))
        return [dx], grads


@register
class DepthwiseConv(Op):
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
        _, out = geometry(self.name, a, x, a.kernel, a.dilation)
        return (*out, x[2] * a.depth_multiplier)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        c = xs[0][2]
        ws = {"kernel": WeightSpec((*a.kernel, c, a.depth_multiplier))}
        if a.bias:
            ws["bias"] = WeightSpec((c * a.depth_multiplier,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Any, y: Shape) -> int:
        return y[0] * y[1] * y[2] * a.kernel[0] * a.kernel[1]

    def window(self, a: Attrs, *xs: Shape) -> Window:
        return Window(kernel=effective(a.kernel, a.dilation), stride=a.stride)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        p, _ = batch_geometry(x, a, a.kernel, a.dilation)
        z, saved = depthwise2d(xp, x, w["kernel"], a.stride, a.dilation, p)
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, (saved, act_saved)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        dw_saved, act_saved = saved
        dz = activate_backward(xp, a.activation, act_saved, dy)
        dx, dk = depthwise2d_backward(xp, dw_saved, dz, w["kernel"], ctx.wants_grad(0))
        grads = {"kernel": dk}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=(0, 1, 2))
        return [dx], grads


@register
class SeparableConv(Op):
    """separable_conv(filters, kernel, stride): depthwise_conv then a 1×1 conv (Keras).

    t = depthwise(x; depthwise_kernel [fh, fw, in, m]) without bias,
    z = t · pointwise_kernel [1, 1, in·m, filters] + b, y = activation(z).
    Attrs: filters, kernel, stride=1, padding=valid, depth_multiplier=1,
    dilation=1, bias=true, activation. Params: depthwise + pointwise + bias.
    """

    name = "separable_conv"
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
        _, out = geometry(self.name, a, x, a.kernel, a.dilation)
        return (*out, a.filters)

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

    def window(self, a: Attrs, *xs: Shape) -> Window:
        return Window(kernel=effective(a.kernel, a.dilation), stride=a.stride)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        p, _ = batch_geometry(x, a, a.kernel, a.dilation)
        t, dw_saved = depthwise2d(xp, x, w["depthwise_kernel"], a.stride, a.dilation, p)
        nopad = ((0, 0), (0, 0))
        z, pw_saved = conv2d(xp, t, w["pointwise_kernel"], (1, 1), (1, 1), nopad, 1)
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, (dw_saved, pw_saved, act_saved)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        dw_saved, pw_saved, act_saved = saved
        dz = activate_backward(xp, a.activation, act_saved, dy)
        dt, dpk = conv2d_backward(xp, pw_saved, dz, w["pointwise_kernel"], True)
        dx, ddk = depthwise2d_backward(xp, dw_saved, dt, w["depthwise_kernel"], ctx.wants_grad(0))
        grads = {"depthwise_kernel": ddk, "pointwise_kernel": dpk}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=(0, 1, 2))
        return [dx], grads
