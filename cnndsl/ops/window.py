"""Window geometry: padding, output sizes and receptive-field steps of sliding windows.

The one home of `out = floor((n - f + p_before + p_after) / s) + 1`, Keras'
`same` padding and dilated extents; shape rules, kernels, passes and
warnings all read them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnndsl.ops.errors import ShapeError

Shape = tuple[int, ...]
Array = Any  # numpy.ndarray or cupy.ndarray
Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
NOPAD: Pads = ((0, 0), (0, 0))


@dataclass(frozen=True)
class Window:
    """A layer's receptive-field step per axis: effective kernel extent and stride.

    `whole=True` means every output sees the whole input (global pools, dense).
    """

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    whole: bool = False


POINTWISE = Window()
WHOLE = Window(whole=True)


def same_padding(n: int, f: int, s: int) -> tuple[int, int]:
    """TensorFlow/Keras `same`: out = ceil(n/s); the extra pixel goes bottom/right."""
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2


def pads(
    padding: str | tuple[int, int], size: Shape, kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding for a window op."""
    if padding == "same":
        return (
            same_padding(size[0], kernel[0], stride[0]),
            same_padding(size[1], kernel[1], stride[1]),
        )
    if padding == "valid":
        return (0, 0), (0, 0)
    assert isinstance(padding, tuple)
    return (padding[0], padding[0]), (padding[1], padding[1])


def window_out(n: int, f: int, s: int, pad: tuple[int, int], axis: str) -> int:
    """out = floor((n - f + p_before + p_after) / s) + 1, or ShapeError with the working."""
    span = n - f + pad[0] + pad[1]
    if span < 0:
        raise ShapeError(
            f"output {axis} would be {span // s + 1}: the window ({f}) is larger than the"
            f" padded input ({n + pad[0] + pad[1]})",
            working=f"({n} - {f} + {pad[0] + pad[1]})/{s} + 1 = {span / s + 1:g}",
        )
    return span // s + 1


def effective(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Dilated kernel extent d·(f−1)+1 per axis."""
    return (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)


def spatial(op: str, x: Shape) -> tuple[int, int, int]:
    """(h, w, c) of a feature map, or ShapeError for any other rank."""
    if len(x) != 3:
        raise ShapeError(f"{op} needs a feature map [height, width, channels], got {list(x)}")
    return x[0], x[1], x[2]


# ---- window geometry on arrays ----


def pad2d(xp: Any, x: Array, p: Pads, value: float = 0.0) -> Array:
    """Pad the two spatial axes of an (N, h, w, c) batch; a contiguous array either way."""
    if p == NOPAD:
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


@dataclass(frozen=True)
class Geometry:
    """The window arithmetic of one convolution on (h, w, c) samples."""

    size: tuple[int, int]
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: Pads

    @property
    def padded(self) -> tuple[int, int]:
        (t, b), (l, r) = self.pads
        return self.size[0] + t + b, self.size[1] + l + r

    @property
    def effective(self) -> tuple[int, int]:
        return (
            self.dilation[0] * (self.kernel[0] - 1) + 1,
            self.dilation[1] * (self.kernel[1] - 1) + 1,
        )

    @property
    def out(self) -> tuple[int, int]:
        (hp, wp), (eh, ew) = self.padded, self.effective
        return (hp - eh) // self.stride[0] + 1, (wp - ew) // self.stride[1] + 1

    @property
    def pointwise(self) -> bool:
        """A 1×1 kernel without padding: a matmul over the pixels it visits."""
        return self.kernel == (1, 1) and self.pads == NOPAD

    @property
    def columns(self) -> int:
        """Length of one im2col row: fh·fw·c."""
        return self.kernel[0] * self.kernel[1] * self.channels

    def transposed(self, filters: int) -> Geometry | None:
        """The stride-1 correlation that maps dz back to dx, or None where there is none."""
        if self.stride != (1, 1):
            return None
        eh, ew = self.effective
        (t, b), (l, r) = self.pads
        pads = ((eh - 1 - t, eh - 1 - b), (ew - 1 - l, ew - 1 - r))
        if min(pads[0] + pads[1]) < 0:
            return None
        geo = Geometry(self.out, filters, self.kernel, (1, 1), self.dilation, pads)
        return geo if geo.out == self.size else None


def geometry_of(
    x_shape: Sequence[int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pads: Pads,
) -> Geometry:
    """Geometry for samples of shape (h, w, c) (a batch shape's last three axes)."""
    h, w, c = x_shape[-3:]
    return Geometry((h, w), c, kernel, stride, dilation, pads)


def im2col_view(xp: Any, xpad: Array, geo: Geometry) -> Array:
    """Strided view (N, oh, ow, fh, fw, c) of padded x: patch (i, j) of every output."""
    n, _, _, c = xpad.shape
    sn, sh, sw, sc = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad,
        shape=(n, *geo.out, *geo.kernel, c),
        strides=(
            sn,
            sh * geo.stride[0],
            sw * geo.stride[1],
            sh * geo.dilation[0],
            sw * geo.dilation[1],
            sc,
        ),
    )
