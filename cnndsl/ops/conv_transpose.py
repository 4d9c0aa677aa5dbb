"""conv_transpose: the transposed ("fractionally strided") convolution, as Keras' Conv2DTranspose.

Each input pixel x[i, j] scatters a weighted copy of the kernel onto the
output at (i·s + u, j·s + v): along one axis the scattered map ("full") has
(n − 1)·s + f rows. The output is a window of it, as TensorFlow's
conv2d_transpose (the input gradient of a conv) takes it:

    output length L (Keras' `deconv_output_length`, f the kernel):
        valid, no output_padding:  n·s + max(f − s, 0)    = (n − 1)·s + f  when f >= s
        same,  no output_padding:  n·s
        otherwise:   (n − 1)·s + f − 2·p + output_padding, p = 0 (valid), f // 2 (same)
    crop before: valid 0; same max((n − 1)·s + f − L, 0) // 2 (TensorFlow's `same` on L)

Output rows past the end of the full map are zeros (plus the bias). Forward is
one matmul per input pixel (x·Wᵀ for all f·f taps at once) and a scatter-add
per tap; backward gathers per tap: dx is Σ_taps dfull·W, dW is Σ dfullᵀ·x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnndsl.ops.act import activate, activate_backward
from cnndsl.ops.attrs import REQUIRED, AttrType, Bool, Choice, Int, Pair
from cnndsl.ops.conv import fmt_pair, fmt_stride
from cnndsl.ops.errors import AttrError, ShapeError
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
from cnndsl.ops.window import Window, spatial


@dataclass(frozen=True)
class OptionalPair(AttrType):
    """none, or a whole number n >= 0 (meaning (n, n)) or a pair (h, w) of them."""

    describe = "none, a whole number >= 0 or a pair (h, w) of them"

    def convert(self, name: str, value: Any) -> tuple[int, int] | None:
        if value is None or value == "none":
            return None
        return Pair(min=0).convert(name, value)


def transposed_length(n: int, f: int, s: int, padding: str, extra: int | None) -> int:
    """Output length along one axis (Keras' deconv_output_length, dilation 1)."""
    if extra is None:
        return n * s + max(f - s, 0) if padding == "valid" else n * s
    p = f // 2 if padding == "same" else 0
    return (n - 1) * s + f - 2 * p + extra


def crop_before(n: int, f: int, s: int, padding: str, length: int) -> int:
    """Rows of the scattered map before output row 0: TensorFlow's `same` on the output."""
    if padding == "valid":
        return 0
    return max((n - 1) * s + f - length, 0) // 2


@dataclass(frozen=True)
class TransposeGeometry:
    """Per axis (rows, columns): input size, scattered ("full") size, output size, crop."""

    size: tuple[int, int]
    full: tuple[int, int]
    out: tuple[int, int]
    crop: tuple[int, int]


def transpose_geometry(a: Attrs, x: Shape) -> TransposeGeometry:
    """The geometry of conv_transpose with attrs a on samples x (h, w, c)."""
    h, w, _ = spatial("conv_transpose", x)
    size = (h, w)
    extra = a.output_padding or (None, None)
    full, out, crop = [], [], []
    for axis in range(2):
        n, f, s = size[axis], a.kernel[axis], a.stride[axis]
        length = transposed_length(n, f, s, a.padding, extra[axis])
        if length < 1:
            raise ShapeError(f"conv_transpose output would have {length} rows or columns")
        full.append((n - 1) * s + f)
        out.append(length)
        crop.append(crop_before(n, f, s, a.padding, length))
    return TransposeGeometry(size, (full[0], full[1]), (out[0], out[1]), (crop[0], crop[1]))


def _overlap(geo: TransposeGeometry, axis: int) -> tuple[slice, slice]:
    """(output rows, full-map rows) where the output window and the scattered map overlap."""
    rows = min(geo.out[axis], geo.full[axis] - geo.crop[axis])
    return slice(0, rows), slice(geo.crop[axis], geo.crop[axis] + rows)


@register
class ConvTranspose(Op):
    """conv_transpose(filters, kernel, stride): the transpose of a strided conv.

    full[i·sh + u, j·sw + v, k] += Σ_c x[i, j, c] · w[u, v, k, c];
    z = full cropped to the output (see the module docstring) + b; y = activation(z).
    Attrs: filters, kernel, stride=1, padding=valid|same, output_padding=none
    (each < stride), bias=true, activation=none. Weights: kernel
    [fh, fw, filters, in] and bias [filters] (Keras Conv2DTranspose).
    """

    name = "conv_transpose"
    family = "conv"
    args = ("filters", "kernel", "stride")
    attrs = {
        "filters": (Int(1), REQUIRED),
        "kernel": (Pair(), REQUIRED),
        "stride": (Pair(), (1, 1)),
        "padding": (Choice(("valid", "same")), "valid"),
        "output_padding": (OptionalPair(), None),
        "bias": (Bool(), True),
        "activation": (Activation(), "none"),
    }
    key_attrs = ("kernel", "stride", "filters")

    def check(self, a: dict[str, Any]) -> None:
        extra = a["output_padding"]
        if extra is not None and any(e >= s for e, s in zip(extra, a["stride"], strict=True)):
            raise AttrError(
                f"conv_transpose output_padding {extra} must be smaller than the stride"
                f" {a['stride']} (Keras' rule)",
                "output_padding",
            )

    def describe(self, a: Attrs) -> str:
        """'conv_transpose 3×3/2, 64, relu'."""
        act = f", {a.activation}" if a.activation != "none" else ""
        return f"conv_transpose {fmt_pair(a.kernel)}{fmt_stride(a.stride)}, {a.filters}{act}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return (*transpose_geometry(a, xs[0]).out, a.filters)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        ws = {"kernel": WeightSpec((*a.kernel, a.filters, xs[0][2]))}
        if a.bias:
            ws["bias"] = WeightSpec((a.filters,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """Every input value meets every tap and filter once: h·w·c·fh·fw·filters."""
        return math.prod(xs[0]) * a.kernel[0] * a.kernel[1] * a.filters

    def window(self, a: Attrs, *xs: Shape) -> Window:
        """Each output reads at most ceil(f/s) input pixels per axis.

        NOTE: as with upsample, the jump really shrinks by the stride, which
        Window's whole-number stride cannot say: later receptive fields are upper bounds.
        """
        k, s = a.kernel, a.stride
        return Window(kernel=(-(-k[0] // s[0]), -(-k[1] // s[1])))

    def fresh_output(self, a: Attrs) -> bool:
        return a.activation == "none"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """ConvTranspose (weight [in, filters, fh, fw]) with explicit pads; rows past the
        scattered map become output_padding."""
        geo = transpose_geometry(a, xs[0])
        kernel = b.weight("kernel", b.w("kernel").transpose(3, 2, 0, 1))
        bias = [b.weight("bias", b.w("bias"))] if a.bias else []
        begin, end, extra = [], [], []
        for axis in range(2):
            after = geo.full[axis] - geo.crop[axis] - geo.out[axis]
            begin.append(geo.crop[axis])
            end.append(max(after, 0))
            extra.append(max(-after, 0))
        out = b.node(
            "ConvTranspose",
            [inputs[0], kernel, *bias],
            kernel_shape=list(a.kernel),
            strides=list(a.stride),
            pads=[*begin, *end],
            output_padding=extra,
        )
        return b.activate(a.activation, out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        n, h, wd, c = x.shape
        geo = transpose_geometry(a, x.shape[1:])
        (fh, fw), (sh, sw), f = a.kernel, a.stride, a.filters
        kernel = w["kernel"]
        # taps[n, i, j, u, v, k] = Σ_c x[n, i, j, c] · w[u, v, k, c]
        taps = (x.reshape(-1, c) @ kernel.reshape(-1, c).T).reshape(n, h, wd, fh, fw, f)
        full = xp.zeros((n, *geo.full, f), dtype=x.dtype)
        for u in range(fh):
            for v in range(fw):
                full[:, u : u + (h - 1) * sh + 1 : sh, v : v + (wd - 1) * sw + 1 : sw] += taps[
                    :, :, :, u, v
                ]
        (out_rows, full_rows), (out_cols, full_cols) = _overlap(geo, 0), _overlap(geo, 1)
        z = xp.zeros((n, *geo.out, f), dtype=x.dtype)
        z[:, out_rows, out_cols] = full[:, full_rows, full_cols]
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, (x, geo, act_saved)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        x, geo, act_saved = saved
        n, h, wd, c = x.shape
        (fh, fw), (sh, sw), f = a.kernel, a.stride, a.filters
        dz = activate_backward(xp, a.activation, act_saved, dy)
        (out_rows, full_rows), (out_cols, full_cols) = _overlap(geo, 0), _overlap(geo, 1)
        dfull = xp.zeros((n, *geo.full, f), dtype=dz.dtype)
        dfull[:, full_rows, full_cols] = dz[:, out_rows, out_cols]
        dtaps = xp.empty((n, h, wd, fh, fw, f), dtype=dz.dtype)
        for u in range(fh):
            for v in range(fw):
                dtaps[:, :, :, u, v] = dfull[
                    :, u : u + (h - 1) * sh + 1 : sh, v : v + (wd - 1) * sw + 1 : sw
                ]
        dtaps = dtaps.reshape(n * h * wd, fh * fw * f)
        kernel = w["kernel"]
        dx = (dtaps @ kernel.reshape(-1, c)).reshape(x.shape) if ctx.wants_grad(0) else None
        grads = {"kernel": (dtaps.T @ x.reshape(-1, c)).reshape(kernel.shape)}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=(0, 1, 2))
        return [dx], grads
