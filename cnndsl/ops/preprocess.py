"""preprocess: pixels as the data loaders give them to what a pretrained network expects.

cnndsl's image readers give float32 pixels in [0, 1] (RGB). Networks trained
elsewhere expect the input their framework prepared: the three modes of
Keras' `preprocess_input`, applied here to the same image scaled to 0-255,
so that `image -> preprocess(mode=caffe)` on x equals
`preprocess_input(255 * x, mode="caffe")`. Each is a per-channel affine map
y[..., c] = scale[c] · x[..., source[c]] + shift[c], so backward is the
scale, with caffe's channel swap undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.ops.attrs import REQUIRED, Choice
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

# Keras' ImageNet statistics (keras.applications.imagenet_utils).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # on 0-255 pixels, in BGR order
TORCH_MEAN = (0.485, 0.456, 0.406)  # on 0-1 pixels, RGB
TORCH_STD = (0.229, 0.224, 0.225)

MODES = ("caffe", "tf", "torch")
# How image readers fit a picture of another size to the input (cnndsl.formats.data.images).
CROP, STRETCH = "crop", "stretch"
FITS = (CROP, STRETCH)


def channel_affine(mode: str, channels: int) -> tuple[list[int], list[float], list[float]]:
    """(source, scale, shift) per output channel c: y[c] = scale[c]·x[source[c]] + shift[c]."""
    if mode == "caffe":  # RGB -> BGR on 0-255, minus the BGR mean
        return [2, 1, 0], [255.0] * 3, [-m for m in CAFFE_MEAN_BGR]
    if mode == "torch":  # (x - mean) / std on 0-1
        return (
            [0, 1, 2],
            [1 / s for s in TORCH_STD],
            [-m / s for m, s in zip(TORCH_MEAN, TORCH_STD, strict=True)],
        )
    assert mode == "tf", mode  # 255·x / 127.5 - 1 = 2x - 1: [-1, 1]
    return list(range(channels)), [2.0] * channels, [-1.0] * channels


@register
class Preprocess(Op):
    """preprocess(mode, fit=crop): Keras' preprocess_input on pixels in [0, 1].

    mode caffe: RGB -> BGR, y = 255·x - [103.939, 116.779, 123.68] (VGG, ResNet).
    mode tf:    y = 2·x - 1, in [-1, 1] (Inception-v3, Xception, MobileNet v1/v2).
    mode torch: y = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] (DenseNet).
    fit: how an image of another size is brought to the input size by the
    image readers (`--predict`, image folders): `crop` scales it to cover the
    input and cuts out the centre (Keras' Resizing(crop_to_aspect_ratio=True)),
    `stretch` resizes each axis (the aspect ratio changes). The kernel never
    reads it. Shape: unchanged; caffe and torch need 3 channels (RGB) last.
    """

    name = "preprocess"
    args = ("mode",)
    attrs = {"mode": (Choice(MODES), REQUIRED), "fit": (Choice(FITS), CROP)}
    key_attrs = ("mode",)
    family = "norm"  # drawn with the normalisations: it centres and scales the input

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        if a.mode != "tf" and (len(x) != 3 or x[-1] != 3):
            raise ShapeError(
                f"preprocess(mode={a.mode}) needs an RGB image [height, width, 3]; got"
                f" {list(x)} (mode=tf works on any number of channels)"
            )
        return tuple(x)

    def fresh_output(self, a: Attrs) -> bool:
        return True

    def input_preparation(self, a: Attrs) -> dict[str, str]:
        """The mode and `fit`: the kernel never reads fit, the image readers do."""
        return {"preprocess": str(a.mode), "image_fit": str(a.fit)}

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Gather the channels (caffe's RGB -> BGR), then Mul by scale and Add the shift."""
        c = y[-1]
        source, scale, shift = channel_affine(a.mode, c)
        x = inputs[0]
        tail = (c, 1, 1) if len(y) == 3 else (c,)
        if source != list(range(c)):
            x = b.node("Gather", [x, b.const("channels", np.array(source, np.int64))], axis=1)
        x = b.node("Mul", [x, b.const("scale", np.array(scale, np.float32).reshape(tail))])
        return b.node("Add", [x, b.const("shift", np.array(shift, np.float32).reshape(tail))])

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        source, scale, shift = channel_affine(a.mode, x.shape[-1])
        picked = x[..., source] if source != list(range(x.shape[-1])) else x
        y = picked * xp.asarray(scale, dtype=x.dtype) + xp.asarray(shift, dtype=x.dtype)
        return y.astype(x.dtype, copy=False), x.shape[-1]

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        source, scale, _ = channel_affine(a.mode, saved)
        scaled = dy * xp.asarray(scale, dtype=dy.dtype)
        dx = xp.empty_like(scaled)
        dx[..., source] = scaled  # output channel c came from input channel source[c]
        return [dx], {}


__all__ = [
    "CAFFE_MEAN_BGR",
    "CROP",
    "FITS",
    "STRETCH",
    "MODES",
    "TORCH_MEAN",
    "TORCH_STD",
    "channel_affine",
]
