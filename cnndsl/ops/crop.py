"""crop: rows and columns cut off the edges of a feature map, as Keras' Cropping2D.

The inverse of zeropad: forward slices, backward puts the gradient back in
place with zeros where the cut rows were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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
    register,
)
from cnndsl.ops.shape import SidePadding
from cnndsl.ops.window import pad2d, spatial, unpad2d


@register
class Crop(Op):
    """crop(cropping=1): y = x[top : h − bottom, left : w − right].

    cropping: n (all sides), (h, w) (per axis) or ((top, bottom), (left, right)),
    Keras' Cropping2D forms. No weights.
    """

    name = "crop"
    args = ("cropping",)
    attrs = {"cropping": (SidePadding(), ((1, 1), (1, 1)))}

    def describe(self, a: Attrs) -> str:
        """'crop 1' or 'crop ((0, 1), (2, 2))'."""
        (t, b), (l, r) = a.cropping
        return f"crop {t}" if t == b == l == r else f"crop {a.cropping}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        h, w, c = spatial(self.name, xs[0])
        (t, b), (l, r) = a.cropping
        if t + b >= h or l + r >= w:
            raise ShapeError(
                f"crop {a.cropping} leaves nothing of a {h}×{w} map: it cuts"
                f" {t + b} of {h} rows and {l + r} of {w} columns"
            )
        return (h - t - b, w - l - r, c)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Slice of the NCHW map's spatial axes."""
        (t, _), (l, _) = a.cropping
        starts = b.const("starts", np.array([t, l], np.int64))
        ends = b.const("ends", np.array([t + y[0], l + y[1]], np.int64))
        axes = b.const("axes", np.array([b.axis(0, 3), b.axis(1, 3)], np.int64))
        return b.node("Slice", [inputs[0], starts, ends, axes])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        return unpad2d(xs[0], a.cropping), None

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        return [pad2d(xp, dy, a.cropping) if ctx.wants_grad(0) else None], {}
