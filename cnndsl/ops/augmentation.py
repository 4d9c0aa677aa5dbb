"""Augmentation layers, random in training: Keras' RandomFlip, RandomCrop, RandomRotation,
RandomZoom, RandomTranslation and RandomContrast.

In training each draws its parameters per sample from ctx.rng, the run's
seeded generator (as dropout's masks), so the same seed gives the same
augmented batches and a resumed run draws what an uninterrupted one would.
At inference they pass the input through (random_crop instead resizes to
its output, as Keras). Backward is the transpose of what forward did with
the parameters it drew (kept in the saved value).

The draws, in order, one uniform u in [0, 1) per sample each (`rng.random(n)`):
  random_flip: u_h (horizontal flip where u_h < 0.5, modes with horizontal),
      then u_v (vertical flip where u_v < 0.5, modes with vertical).
  random_crop: u_top, u_left; top = floor(u_top·(h − height + 1)).
  random_rotation: u; angle = 2π·(lower + (upper − lower)·u).
  random_zoom: u_h, then u_w if width_factor is given (else the height's zoom);
      zoom = 1 + lower + (upper − lower)·u.
  random_translation: u_h, u_w; shift = (lower + (upper − lower)·u)·size.
  random_contrast: u; factor = 1 − lower + (lower + upper)·u.

Rotation, zoom and translation resample each image through an affine map
(TensorFlow's ImageProjectiveTransform, which Keras' layers call): output
pixel (row r, column q) reads input point (b0·q + b1·r + b2, a0·q + a1·r + a2)
(row, column), pixel centres at whole coordinates; a point outside the image
is first mapped back in by fill_mode (reflect: d c b a | a b c d | d c b a,
wrap, nearest: the edge pixel, constant: fill_value where reads fall
outside), then read bilinearly (or the nearest pixel). For fixed parameters
that is linear in x: y = Σ weight·x[gathered pixel] + fill; backward
scatters dy back with the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnndsl.ops.attrs import REQUIRED, AttrType, Choice, Float, Int
from cnndsl.ops.errors import AttrError, ShapeError
from cnndsl.ops.preprocessing import onnx_resize, resample, resample_backward, resize_matrices
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

FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")


@dataclass(frozen=True)
class Factor(AttrType):
    """A number f >= 0 (the range (−f, f)) or a pair (lower, upper) with lower <= upper.

    Keras' factor arguments; `symmetric=False` reads a single f as (f, f)
    (random_contrast's [1 − f, 1 + f]).
    """

    symmetric: bool = True

    @property
    def describe(self) -> str:  # type: ignore[override]
        return "a number >= 0 or a pair (lower, upper) of numbers with lower <= upper"

    def convert(self, name: str, value: Any) -> tuple[float, float] | None:
        if value is None:
            return None
        number = Float()
        if isinstance(value, (tuple, list)) and len(value) == 2:
            lo, hi = (number.convert(name, v) for v in value)
            if lo > hi:
                raise self.fail(name, value)
            return (lo, hi)
        f = number.convert(name, value) if not isinstance(value, (tuple, list)) else -1.0
        if f < 0:
            raise self.fail(name, value)
        return (-f, f) if self.symmetric else (f, f)


def _generator(xp: Any, ctx: Context) -> Any:
    # NOTE: without an rng from the executor, a fresh unseeded one (not reproducible).
    return ctx.rng if ctx.rng is not None else xp.random.default_rng()


def _uniform(xp: Any, rng: Any, n: int, lo: float, hi: float) -> Array:
    """n numbers lo + (hi − lo)·u, u = rng.random(n), in float64."""
    return lo + (hi - lo) * xp.asarray(rng.random(n), dtype=xp.float64)


# ---- Affine resampling (rotation, zoom, translation) ----


def _map_coordinate(xp: Any, t: Array, n: int, mode: str) -> Array:
    """Coordinates t on an axis of n pixels brought back into it by fill_mode (TensorFlow's)."""
    if mode == "constant":
        return t
    if n <= 1:
        return xp.zeros_like(t)
    if mode == "reflect":  # half-sample symmetric, period 2n
        m = xp.mod(t, 2 * n)
        t = xp.where(m >= n, 2 * n - m - 1, m)
    elif mode == "wrap":  # TensorFlow's formula, which steps by n per n − 1 pixels
        below = t + n * (xp.trunc(-t / (n - 1)) + 1)
        above = t - n * xp.trunc(t / (n - 1))
        t = xp.where(t < 0, below, xp.where(t > n - 1, above, t))
    return xp.clip(t, 0, n - 1)


def affine_gather(
    xp: Any,
    shape: tuple[int, int],
    transforms: Array,
    fill_mode: str,
    interpolation: str,
) -> tuple[Array, Array]:
    """(index, weight), each (n, corners, h·w): which input pixels (flat) each output reads.

    transforms: (n, 6) float64 rows (a0, a1, a2, b0, b1, b2) of the affine map
    (module docstring). A read outside the image has weight 0 here; its share
    of the fill value is `1 − Σ weight` in constant mode.
    """
    h, w = shape
    rows, cols = xp.meshgrid(xp.arange(h, dtype=xp.float64), xp.arange(w, dtype=xp.float64),
                             indexing="ij")  # fmt: skip
    rows, cols = rows.ravel()[None, :], cols.ravel()[None, :]
    t = transforms
    col_in = t[:, 0:1] * cols + t[:, 1:2] * rows + t[:, 2:3]
    row_in = t[:, 3:4] * cols + t[:, 4:5] * rows + t[:, 5:6]
    col_in = _map_coordinate(xp, col_in, w, fill_mode)
    row_in = _map_coordinate(xp, row_in, h, fill_mode)
    if interpolation == "nearest":  # TensorFlow rounds half away from zero
        corners = [(xp.sign(row_in) * xp.floor(xp.abs(row_in) + 0.5),
                    xp.sign(col_in) * xp.floor(xp.abs(col_in) + 0.5),
                    xp.ones_like(row_in))]  # fmt: skip
    else:
        r0, c0 = xp.floor(row_in), xp.floor(col_in)
        dr, dc = row_in - r0, col_in - c0
        corners = [
            (r0, c0, (1 - dr) * (1 - dc)),
            (r0, c0 + 1, (1 - dr) * dc),
            (r0 + 1, c0, dr * (1 - dc)),
            (r0 + 1, c0 + 1, dr * dc),
        ]
    index, weight = [], []
    for r, c, wt in corners:
        inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
        flat = xp.clip(r, 0, h - 1) * w + xp.clip(c, 0, w - 1)
        index.append(flat.astype(xp.int64))
        weight.append(xp.where(inside, wt, 0.0))
    return xp.stack(index, axis=1), xp.stack(weight, axis=1)


def gather_forward(xp: Any, x: Array, index: Array, weight: Array, fill: float) -> Array:
    """y[n, p] = Σ_k weight[n, k, p]·x[n, index[n, k, p]] (+ fill where reads fell outside)."""
    n, h, w, c = x.shape
    corners = index.shape[1]
    flat = x.reshape(n, h * w, c)
    picked = flat[xp.arange(n)[:, None], index.reshape(n, -1)].reshape(n, corners, h * w, c)
    wts = weight.astype(x.dtype)[..., None]
    y = (picked * wts).sum(axis=1)
    if fill:
        y += (fill * (1 - weight.sum(axis=1))).astype(x.dtype)[..., None]
    return y.reshape(n, h, w, c)


def gather_backward(xp: Any, dy: Array, index: Array, weight: Array) -> Array:
    """The transpose of `gather_forward`: each dy value scattered back with its weights."""
    n, h, w, c = dy.shape
    size = n * h * w
    offsets = (xp.arange(n) * (h * w))[:, None, None]
    where = (index + offsets).ravel()
    g = dy.reshape(n, 1, h * w, c)
    dx = xp.empty((size, c), dtype=dy.dtype)
    for k in range(c):  # bincount sums repeated indices, as a scatter-add must
        contrib = (weight * g[..., k]).ravel()
        dx[:, k] = xp.bincount(where, weights=contrib, minlength=size)
    return dx.reshape(n, h, w, c)


_TRANSFORM_ATTRS = {
    "fill_mode": (Choice(FILL_MODES), "reflect"),
    "interpolation": (Choice(INTERPOLATIONS), "bilinear"),
    "fill_value": (Float(), 0.0),
}


class AffineAugmentation(Op):
    """Shared by random_rotation, random_zoom, random_translation: draw, resample, transpose."""

    family = "norm"  # drawn with dropout: a training-time regulariser, gone at inference
    dropped_at_inference = True
    augments = True

    def transforms(self, xp: Any, a: Attrs, rng: Any, n: int, h: int, w: int) -> Array:
        """(n, 6) rows (a0, a1, a2, b0, b1, b2) drawn for this batch."""
        raise NotImplementedError

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return spatial(self.name, xs[0])

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Nothing: the identity at inference."""
        return inputs[0]

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        if not ctx.training:
            return x, None
        n, h, wd, _ = x.shape
        t = self.transforms(xp, a, _generator(xp, ctx), n, h, wd)
        index, weight = affine_gather(xp, (h, wd), t, a.fill_mode, a.interpolation)
        fill = a.fill_value if a.fill_mode == "constant" else 0.0
        return gather_forward(xp, x, index, weight, fill), (index, weight)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        return [dy if saved is None else gather_backward(xp, dy, *saved)], {}


@register
class RandomRotation(AffineAugmentation):
    """random_rotation(factor, fill_mode=reflect, interpolation=bilinear, fill_value=0).

    Keras' RandomRotation: each image turned about its centre by 2π·f, f drawn
    from factor's range (a number f: (−f, f)); positive turns counter-clockwise.
    """

    name = "random_rotation"
    args = ("factor",)
    attrs = {"factor": (Factor(), REQUIRED), **_TRANSFORM_ATTRS}
    key_attrs = ("factor",)

    def transforms(self, xp: Any, a: Attrs, rng: Any, n: int, h: int, w: int) -> Array:
        angle = 2 * math.pi * _uniform(xp, rng, n, *a.factor)
        cos, sin = xp.cos(angle), xp.sin(angle)
        x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
        y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
        return xp.stack([cos, -sin, x_off, sin, cos, y_off], axis=1)


@register
class RandomZoom(AffineAugmentation):
    """random_zoom(height_factor, width_factor=none, fill_mode=reflect, interpolation=bilinear,
    fill_value=0).

    Keras' RandomZoom: each axis scaled about the centre; the image shows
    (1 + f) times its extent, f drawn from the factor's range: positive
    zooms out, negative in. Without width_factor both axes share the draw.
    """

    name = "random_zoom"
    args = ("height_factor", "width_factor")
    attrs = {
        "height_factor": (Factor(), REQUIRED),
        "width_factor": (Factor(), None),
        **_TRANSFORM_ATTRS,
    }
    key_attrs = ("height_factor",)

    def check(self, a: dict[str, Any]) -> None:
        for name in ("height_factor", "width_factor"):
            if a[name] is not None and a[name][0] <= -1:
                raise AttrError(f"argument '{name}' must stay above −1 (zoom 1 + f > 0)", name)

    def transforms(self, xp: Any, a: Attrs, rng: Any, n: int, h: int, w: int) -> Array:
        zoom_h = 1 + _uniform(xp, rng, n, *a.height_factor)
        zoom_w = zoom_h if a.width_factor is None else 1 + _uniform(xp, rng, n, *a.width_factor)
        zeros = xp.zeros_like(zoom_h)
        x_off = (w - 1) / 2 * (1 - zoom_w)
        y_off = (h - 1) / 2 * (1 - zoom_h)
        return xp.stack([zoom_w, zeros, x_off, zeros, zoom_h, y_off], axis=1)


@register
class RandomTranslation(AffineAugmentation):
    """random_translation(height_factor, width_factor, fill_mode=reflect, interpolation=bilinear,
    fill_value=0).

    Keras' RandomTranslation: each image shifted by f·height rows and g·width
    columns (positive: down and right), f and g drawn from the factors' ranges.
    """

    name = "random_translation"
    args = ("height_factor", "width_factor")
    attrs = {
        "height_factor": (Factor(), REQUIRED),
        "width_factor": (Factor(), REQUIRED),
        **_TRANSFORM_ATTRS,
    }
    key_attrs = ("height_factor", "width_factor")

    def transforms(self, xp: Any, a: Attrs, rng: Any, n: int, h: int, w: int) -> Array:
        dy = _uniform(xp, rng, n, *a.height_factor) * h
        dx = _uniform(xp, rng, n, *a.width_factor) * w
        ones, zeros = xp.ones_like(dx), xp.zeros_like(dx)
        return xp.stack([ones, zeros, -dx, zeros, ones, -dy], axis=1)


@register
class RandomFlip(Op):
    """random_flip(mode=horizontal_and_vertical): Keras' RandomFlip.

    horizontal mirrors left-right, vertical top-bottom, each with probability
    1/2 per sample (both: independently).
    """

    name = "random_flip"
    family = "norm"
    dropped_at_inference = True
    augments = True
    args = ("mode",)
    attrs = {"mode": (Choice(FLIP_MODES), "horizontal_and_vertical")}
    key_attrs = ("mode",)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return spatial(self.name, xs[0])

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Nothing: the identity at inference."""
        return inputs[0]

    @staticmethod
    def _flip(xp: Any, x: Array, flags: tuple[Array | None, Array | None]) -> Array:
        horizontal, vertical = flags
        if horizontal is not None:
            x = xp.where(horizontal[:, None, None, None], x[:, :, ::-1], x)
        if vertical is not None:
            x = xp.where(vertical[:, None, None, None], x[:, ::-1], x)
        return x

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        if not ctx.training:
            return x, None
        rng, n = _generator(xp, ctx), x.shape[0]
        horizontal = rng.random(n) < 0.5 if "horizontal" in a.mode else None
        vertical = rng.random(n) < 0.5 if "vertical" in a.mode else None
        return self._flip(xp, x, (horizontal, vertical)), (horizontal, vertical)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        return [dy if saved is None else self._flip(xp, dy, saved)], {}  # a flip is its inverse


@register
class RandomContrast(Op):
    """random_contrast(factor, value_range=(0, 1)): Keras' RandomContrast.

    y = clip((x − m)·k + m, value_range), m the mean of each image's channel
    over its pixels, k drawn per sample from [1 − lower, 1 + upper] (factor f:
    [1 − f, 1 + f]). Keras clips to its 0-255 pixels; cnndsl's images are in
    [0, 1], hence the default range.
    """

    name = "random_contrast"
    family = "norm"
    dropped_at_inference = True
    augments = True
    args = ("factor",)
    attrs = {
        "factor": (Factor(symmetric=False), REQUIRED),
        "value_range": (Factor(symmetric=False), (0.0, 1.0)),
    }
    key_attrs = ("factor",)

    def check(self, a: dict[str, Any]) -> None:
        lower, upper = a["factor"]
        if not 0 <= lower <= 1 or upper < 0:
            raise AttrError(
                "argument 'factor' must be f or (lower, upper) with 0 <= lower <= 1 and"
                f" upper >= 0 (contrast drawn from [1 − lower, 1 + upper]), not {a['factor']}",
                "factor",
            )

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return spatial(self.name, xs[0])

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Nothing: the identity at inference."""
        return inputs[0]

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        if not ctx.training:
            return x, None
        lower, upper = a.factor
        k = _uniform(xp, _generator(xp, ctx), x.shape[0], 1 - lower, 1 + upper)
        k = k.astype(x.dtype)[:, None, None, None]
        mean = x.mean(axis=(1, 2), keepdims=True)
        z = (x - mean) * k + mean
        lo, hi = a.value_range
        kept = (z >= lo) & (z <= hi)
        return xp.clip(z, lo, hi).astype(x.dtype), (k, kept)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        if saved is None:
            return [dy], {}
        k, kept = saved
        dz = dy * kept
        # ∂z_i/∂x_j = k·[i = j] + (1 − k)/pixels: the mean feeds every pixel
        return [dz * k + (1 - k) * dz.mean(axis=(1, 2), keepdims=True)], {}


@register
class RandomCrop(Op):
    """random_crop(height, width): Keras' RandomCrop.

    Training: a height×width window at a random place in each image (the
    input must be at least that large). Inference: the image resized to
    height×width as Keras does (its largest centred window of the target's
    aspect ratio, bilinear), not cropped.
    """

    name = "random_crop"
    augments = True
    family = "norm"
    args = ("height", "width")
    attrs = {"height": (Int(min=1), REQUIRED), "width": (Int(min=1), REQUIRED)}
    key_attrs = ("height", "width")

    def describe(self, a: Attrs) -> str:
        """'random_crop 224×224'."""
        return f"random_crop {a.height}×{a.width}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        h, w, c = spatial(self.name, xs[0])
        if h < a.height or w < a.width:
            raise ShapeError(
                f"random_crop({a.height}, {a.width}) needs a map at least that large; got"
                f" {h}×{w} (resize it first, or crop less)"
            )
        return (a.height, a.width, c)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """The inference form: Slice to the aspect ratio, Resize (bilinear, half-pixel)."""
        return onnx_resize(b, inputs[0], xs[0], (a.height, a.width), "bilinear", True)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        n, h, wd, _ = x.shape
        if not ctx.training:
            rows, cols = resize_matrices("bilinear", x.shape[1:], (a.height, a.width), True)
            return resample(xp, x, rows, cols), (rows, cols)
        rng = _generator(xp, ctx)
        top = xp.floor(_uniform(xp, rng, n, 0, h - a.height + 1)).astype(xp.int64)
        left = xp.floor(_uniform(xp, rng, n, 0, wd - a.width + 1)).astype(xp.int64)
        rows = top[:, None, None] + xp.arange(a.height)[None, :, None]
        cols = left[:, None, None] + xp.arange(a.width)[None, None, :]
        picked = (xp.arange(n)[:, None, None], rows, cols)
        return x[picked], (x.shape, picked)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        first, second = saved
        if isinstance(first, np.ndarray):
            return [resample_backward(xp, dy, first, second)], {}
        dx = xp.zeros(first, dtype=dy.dtype)
        dx[second] = dy  # the windows of one sample do not overlap themselves: no sums
        return [dx], {}
