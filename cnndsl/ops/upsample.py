"""upsample: a feature map made larger by whole factors, as Keras' UpSampling2D.

nearest repeats every pixel fh×fw times. bilinear places output row i at
input coordinate t = (i + 0.5)/f − 0.5 (half-pixel centres: TensorFlow's
resize with half_pixel_centers, which UpSampling2D uses, and PyTorch's
`interpolate(mode="bilinear", align_corners=False)`) and blends the two
input rows around t, clamping t to the map; columns likewise.

With a whole factor f, output row f·k + r sits at t = k + δ_r with
δ_r = (2r + 1 − f)/(2f) in (−1/2, 1/2): every phase r is a fixed blend of
input rows k − 1, k and k + 1 (`phase_weights`), the rows past an edge
being copies of the edge row (the clamp). So each axis is f shifted,
weighted sums in forward, and their transpose, a sum of weighted shifts
back onto the input rows, in backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.ops.attrs import Choice, Pair
from cnndsl.ops.registry import (
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
from cnndsl.ops.window import POINTWISE, Window, spatial

INTERPOLATIONS = ("nearest", "bilinear")


def phase_weights(f: int) -> list[tuple[float, float, float]]:
    """Per output phase r (output row f·k + r): the weights of input rows k − 1, k, k + 1."""
    weights = []
    for r in range(f):
        d = (2 * r + 1 - f) / (2 * f)  # t − k, in (−1/2, 1/2)
        weights.append((max(-d, 0.0), 1 - abs(d), max(d, 0.0)))
    return weights


def _along(axis: int, ndim: int, index: Any) -> tuple[Any, ...]:
    """An index that picks `index` on `axis` and everything on the other axes."""
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


def _interpolate(xp: Any, x: Array, f: int, axis: int) -> Array:
    """x made f times longer on `axis` (1: rows, 2: columns) by bilinear interpolation."""
    n = x.shape[axis]
    pads = [(0, 0)] * x.ndim
    pads[axis] = (1, 1)
    edged = xp.pad(x, pads, mode="edge")  # rows −1 and n: copies of the edge rows (the clamp)
    phased = list(x.shape)
    phased.insert(axis + 1, f)  # the f phases of each input row, next to it
    y = xp.empty(phased, dtype=x.dtype)
    for r, weights in enumerate(phase_weights(f)):
        out = y[_along(axis + 1, y.ndim, r)]
        first = True
        for offset, weight in enumerate(weights):
            if weight == 0:
                continue
            rows = edged[_along(axis, x.ndim, slice(offset, offset + n))]
            if first:
                xp.multiply(rows, weight, out=out)
                first = False
            else:
                out += rows * weight
    longer = list(x.shape)
    longer[axis] = n * f
    return y.reshape(longer)


def _interpolate_backward(xp: Any, dy: Array, f: int, axis: int) -> Array:
    """The transpose of `_interpolate`: dy on the longer axis summed back onto the input rows."""
    n = dy.shape[axis] // f
    phased = list(dy.shape)
    phased[axis : axis + 1] = [n, f]
    dy = dy.reshape(phased)
    edged_shape = list(dy.shape)
    del edged_shape[axis + 1]
    edged_shape[axis] = n + 2
    edged = xp.zeros(edged_shape, dtype=dy.dtype)
    for r, weights in enumerate(phase_weights(f)):
        g = dy[_along(axis + 1, dy.ndim, r)]
        for offset, weight in enumerate(weights):
            if weight:
                edged[_along(axis, edged.ndim, slice(offset, offset + n))] += g * weight
    dx = edged[_along(axis, edged.ndim, slice(1, n + 1))].copy()
    # The rows past the edges were copies of the edge rows: their gradients go there.
    dx[_along(axis, dx.ndim, 0)] += edged[_along(axis, edged.ndim, 0)]
    dx[_along(axis, dx.ndim, n - 1)] += edged[_along(axis, edged.ndim, n + 1)]
    return dx


@register
class Upsample(Op):
    """upsample(size=2, interpolation=nearest): [h, w, c] -> [h·fh, w·fw, c].

    nearest: y[i, j] = x[i // fh, j // fw]. bilinear: y[i, j] blends the 2×2
    input pixels around ((i + 0.5)/fh − 0.5, (j + 0.5)/fw − 0.5), the
    coordinates clamped to the map (Keras UpSampling2D; see the module
    docstring). Attrs: size (a whole number >= 1 or a pair (fh, fw)),
    interpolation=nearest|bilinear. No weights.
    """

    name = "upsample"
    family = "pool"  # resampling: drawn with the pools
    args = ("size",)
    attrs = {
        "size": (Pair(), (2, 2)),
        "interpolation": (Choice(INTERPOLATIONS), "nearest"),
    }

    def describe(self, a: Attrs) -> str:
        """'upsample ×2', 'upsample 2×3, bilinear'."""
        fh, fw = a.size
        size = f"×{fh}" if fh == fw else f"{fh}×{fw}"
        mode = ", bilinear" if a.interpolation == "bilinear" else ""
        return f"upsample {size}{mode}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        h, w, c = spatial(self.name, xs[0])
        return (h * a.size[0], w * a.size[1], c)

    def macs(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """nearest: 0 (copies). bilinear: 4 per output value, the weights of the 2×2 input
        pixels it blends (the kernel's two separable passes do about 3 at factor 2)."""
        return 0 if a.interpolation == "nearest" else 4 * math.prod(y)

    def window(self, a: Attrs, *xs: Shape) -> Window:
        """nearest: each output reads one input pixel; bilinear: two per enlarged axis.

        NOTE: the jump (input pixels between neighbouring outputs) really
        shrinks to j/f, which Window's whole-number stride cannot say: it stays
        j, so the receptive fields of the layers after an upsample are upper
        bounds, as they already are where branches meet (the widest field wins).
        """
        if a.interpolation == "nearest":
            return POINTWISE
        return Window(kernel=(min(a.size[0], 2), min(a.size[1], 2)))

    def workspace(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> tuple[int, bool]:
        """bilinear: the rows pass's result and the edge-padded copies, for every sample."""
        if a.interpolation == "nearest":
            return 0, False
        h, w, c = xs[0]
        fh = a.size[0]
        return ((h + 2) * w + h * fh * w + h * fh * (w + 2)) * c, True

    def fresh_output(self, a: Attrs) -> bool:
        return True

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Resize: nearest as floor(i/f), bilinear with half-pixel centres (as ours)."""
        fh, fw = a.size
        scales = b.const("scales", np.array([1, 1, fh, fw], np.float32))
        if a.interpolation == "nearest":
            return b.node(
                "Resize",
                [inputs[0], "", scales],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        return b.node(
            "Resize",
            [inputs[0], "", scales],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        (fh, fw), (n, h, wd, c) = a.size, x.shape
        if a.interpolation == "bilinear":
            return _interpolate(xp, _interpolate(xp, x, fh, 1), fw, 2), x.shape
        y = xp.empty((n, h, fh, wd, fw, c), dtype=x.dtype)
        y[...] = x[:, :, None, :, None, :]
        return y.reshape(n, h * fh, wd * fw, c), x.shape

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        (fh, fw), (n, h, wd, c) = a.size, saved
        if a.interpolation == "bilinear":
            return [_interpolate_backward(xp, _interpolate_backward(xp, dy, fw, 2), fh, 1)], {}
        return [dy.reshape(n, h, fh, wd, fw, c).sum(axis=(2, 4))], {}
