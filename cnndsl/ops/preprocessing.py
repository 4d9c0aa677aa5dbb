"""Preprocessing layers, deterministic: rescale, resize, center_crop (Keras' Rescaling,
Resizing and CenterCrop).

Each acts the same in training and at inference. resize (and center_crop of
a map smaller than its target, as Keras) is linear and separable: every
output row is a fixed blend of input rows, so forward multiplies by one
(out, in) matrix per axis (`resize_matrix`) and backward by its transpose.
Keras' Resizing samples at half-pixel centres (TensorFlow's resize with
half_pixel_centers, no antialiasing): bilinear places output row i at input
coordinate t = (i + 0.5)·in/out − 0.5, clamped to [0, in − 1], and blends the
two rows around t; nearest takes row min(floor((i + 0.5)·in/out), in − 1).
crop_to_aspect_ratio first cuts the largest centred window of the target's
aspect ratio (Keras' smart_resize), which the matrices fold in as zero columns.
The random augmentation layers are in cnndsl/ops/augmentation.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.ops.attrs import REQUIRED, Bool, Choice, Float, Int
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
from cnndsl.ops.window import spatial

INTERPOLATIONS = ("bilinear", "nearest")


def aspect_crop(h: int, w: int, th: int, tw: int) -> tuple[int, int, int, int]:
    """(top, left, height, width): the largest centred window of aspect th:tw in an h×w map.

    Keras' smart_resize: crop_height = min(h, int(w·th/tw)), likewise the width,
    the window's start int((h − crop_height)/2).
    """
    ch = min(h, int(float(w * th) / tw))
    cw = min(w, int(float(h * tw) / th))
    return int((h - ch) / 2), int((w - cw) / 2), ch, cw


def resize_matrix(
    n_in: int, n_out: int, interpolation: str, start: int = 0, length: int | None = None
) -> np.ndarray:
    """(n_out, n_in) float64: output row i as a blend of input rows start .. start + length − 1.

    Half-pixel centres (see the module docstring); rows outside the window get weight 0.
    """
    length = n_in - start if length is None else length
    scale = length / n_out
    centres = (np.arange(n_out) + 0.5) * scale
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if interpolation == "nearest":
        src = np.minimum(np.floor(centres).astype(np.int64), length - 1)
        m[rows, start + src] = 1.0
        return m
    t = np.clip(centres - 0.5, 0, length - 1)
    k = np.floor(t).astype(np.int64)
    frac = t - k
    np.add.at(m, (rows, start + k), 1 - frac)
    np.add.at(m, (rows, start + np.minimum(k + 1, length - 1)), frac)
    return m


def resample(xp: Any, x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """y[n, i, j] = Σ rows[i, k]·cols[j, l]·x[n, k, l]: a separable linear map of each map."""
    n, h, w, c = x.shape
    mh = xp.asarray(rows, dtype=x.dtype)
    mw = xp.asarray(cols, dtype=x.dtype)
    y = xp.matmul(mh, x.reshape(n, h, w * c)).reshape(n, rows.shape[0], w, c)
    return xp.matmul(mw, y)  # (W, w) @ (n, H, w, c) -> (n, H, W, c)


def resample_backward(xp: Any, dy: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
    """The transpose of `resample`: dy on the output summed back onto the input pixels."""
    n, big_h, _, c = dy.shape
    mh = xp.asarray(rows.T, dtype=dy.dtype)
    mw = xp.asarray(cols.T, dtype=dy.dtype)
    d = xp.matmul(mw, dy)  # (n, H, w, c)
    w = d.shape[2]
    return xp.matmul(mh, d.reshape(n, big_h, w * c)).reshape(n, rows.shape[1], w, c)


def resize_matrices(
    interpolation: str, x: Shape, target: tuple[int, int], crop_to_aspect_ratio: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The row and column matrices that resize an [h, w, c] map to target (th, tw)."""
    h, w = x[0], x[1]
    th, tw = target
    top, left, ch, cw = aspect_crop(h, w, th, tw) if crop_to_aspect_ratio else (0, 0, h, w)
    return (
        resize_matrix(h, th, interpolation, top, ch),
        resize_matrix(w, tw, interpolation, left, cw),
    )


def onnx_resize(
    b: Any, x: str, xs: Shape, target: tuple[int, int], interpolation: str, crop: bool
) -> str:
    """Slice (the aspect-ratio window, if any) then Resize to target, half-pixel centres."""
    h, w = xs[0], xs[1]
    if crop:
        top, left, ch, cw = aspect_crop(h, w, *target)
        if (ch, cw) != (h, w):
            x = b.node(
                "Slice",
                [
                    x,
                    b.const("starts", np.array([top, left], np.int64)),
                    b.const("ends", np.array([top + ch, left + cw], np.int64)),
                    b.const("axes", np.array([b.axis(0, 3), b.axis(1, 3)], np.int64)),
                ],
            )
    # sizes, not scales: a float scale may round the output length down by one
    batch_channels = b.node(
        "Slice",
        [
            b.node("Shape", [x]),
            b.const("first", np.array([0], np.int64)),
            b.const("second", np.array([2], np.int64)),
        ],
    )
    sizes = b.node("Concat", [batch_channels, b.const("hw", np.array(target, np.int64))], axis=0)
    if interpolation == "nearest":
        return b.node(
            "Resize",
            [x, "", "", sizes],
            mode="nearest",
            coordinate_transformation_mode="tf_half_pixel_for_nn",
            nearest_mode="floor",
        )
    return b.node(
        "Resize", [x, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel"
    )


@register
class Rescale(Op):
    """rescale(scale, offset=0): y = x·scale + offset, Keras' Rescaling.

    E.g. rescale(1/127.5, -1) maps 0-255 pixels to [−1, 1]. Any shape. No weights.
    """

    name = "rescale"
    family = "norm"  # drawn with the normalisations: it scales the input
    args = ("scale", "offset")
    attrs = {"scale": (Float(), REQUIRED), "offset": (Float(), 0.0)}
    key_attrs = ("scale", "offset")

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return tuple(xs[0])

    def macs(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """One multiply-add per value."""
        return int(np.prod(y))

    def fresh_output(self, a: Attrs) -> bool:
        return True

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Mul by scale, Add the offset."""
        x = b.node("Mul", [inputs[0], b.const("scale", np.array(a.scale, np.float32))])
        return b.node("Add", [x, b.const("offset", np.array(a.offset, np.float32))])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        return (x * x.dtype.type(a.scale) + x.dtype.type(a.offset)).astype(x.dtype), None

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        return [dy * dy.dtype.type(a.scale) if ctx.wants_grad(0) else None], {}


@register
class Resize(Op):
    """resize(height, width, interpolation=bilinear, crop_to_aspect_ratio=false): Keras' Resizing.

    [h, w, c] -> [height, width, c], sampled at half-pixel centres (module
    docstring); crop_to_aspect_ratio cuts the largest centred window of the
    target's aspect ratio first, so nothing is stretched. No weights.
    """

    name = "resize"
    family = "pool"  # resampling: drawn with the pools, as upsample
    args = ("height", "width", "interpolation")
    attrs = {
        "height": (Int(min=1), REQUIRED),
        "width": (Int(min=1), REQUIRED),
        "interpolation": (Choice(INTERPOLATIONS), "bilinear"),
        "crop_to_aspect_ratio": (Bool(), False),
    }

    def describe(self, a: Attrs) -> str:
        """'resize 224×224', 'resize 32×48, nearest'."""
        mode = ", nearest" if a.interpolation == "nearest" else ""
        return f"resize {a.height}×{a.width}{mode}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        _, _, c = spatial(self.name, xs[0])
        return (a.height, a.width, c)

    def macs(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> int:
        """nearest: 0 (copies). bilinear: 4 per output value, the weights of the 2×2 pixels."""
        return 0 if a.interpolation == "nearest" else 4 * int(np.prod(y))

    def fresh_output(self, a: Attrs) -> bool:
        return True

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Slice (crop_to_aspect_ratio) and Resize with half-pixel centres."""
        target = (a.height, a.width)
        return onnx_resize(b, inputs[0], xs[0], target, a.interpolation, a.crop_to_aspect_ratio)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        target = (a.height, a.width)
        rows, cols = resize_matrices(a.interpolation, x.shape[1:], target, a.crop_to_aspect_ratio)
        return resample(xp, x, rows, cols), (rows, cols)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        return [resample_backward(xp, dy, *saved)], {}


@register
class CenterCrop(Op):
    """center_crop(height, width): the centred height×width window, Keras' CenterCrop.

    The window starts at row int((h − height)/2), column int((w − width)/2).
    A map smaller than the target on either axis is resized to it as Keras does
    (crop to the target's aspect ratio, then bilinear). No weights.
    """

    name = "center_crop"
    args = ("height", "width")
    attrs = {"height": (Int(min=1), REQUIRED), "width": (Int(min=1), REQUIRED)}
    key_attrs = ("height", "width")

    def describe(self, a: Attrs) -> str:
        """'center_crop 224×224'."""
        return f"center_crop {a.height}×{a.width}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        _, _, c = spatial(self.name, xs[0])
        return (a.height, a.width, c)

    def _cuts(self, a: Attrs, x: Shape) -> tuple[int, int] | None:
        """(top, left) of the window; None where the map is smaller (Keras resizes)."""
        h, w = x[0], x[1]
        if h < a.height or w < a.width:
            return None
        return int((h - a.height) / 2), int((w - a.width) / 2)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Slice of the spatial axes (Slice and Resize for a smaller map)."""
        cuts = self._cuts(a, xs[0])
        if cuts is None:
            return onnx_resize(b, inputs[0], xs[0], (a.height, a.width), "bilinear", True)
        t, l = cuts
        return b.node(
            "Slice",
            [
                inputs[0],
                b.const("starts", np.array([t, l], np.int64)),
                b.const("ends", np.array([t + a.height, l + a.width], np.int64)),
                b.const("axes", np.array([b.axis(0, 3), b.axis(1, 3)], np.int64)),
            ],
        )

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        cuts = self._cuts(a, x.shape[1:])
        if cuts is None:
            rows, cols = resize_matrices("bilinear", x.shape[1:], (a.height, a.width), True)
            return resample(xp, x, rows, cols), (x.shape, rows, cols)
        t, l = cuts
        return x[:, t : t + a.height, l : l + a.width].copy(), (x.shape, t, l)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        shape, first, second = saved
        if isinstance(first, np.ndarray):
            return [resample_backward(xp, dy, first, second)], {}
        dx = xp.zeros(shape, dtype=dy.dtype)
        dx[:, first : first + a.height, second : second + a.width] = dy
        return [dx], {}
