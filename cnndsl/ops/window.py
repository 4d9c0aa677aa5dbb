"""Window geometry: padding, output sizes and receptive-field steps of sliding windows.

The one home of `out = floor((n - f + p_before + p_after) / s) + 1`, Keras'
`same` padding and dilated extents; shape rules, kernels, passes and
warnings all read them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
) -> Pads:
    """((top, bottom), (left, right)) zero padding for a window op."""
    if padding == "same":
        return (
            same_padding(size[0], kernel[0], stride[0]),
            same_padding(size[1], kernel[1], stride[1]),
        )
    if padding == "valid":
        return NOPAD
    assert isinstance(padding, tuple)
    return (padding[0], padding[0]), (padding[1], padding[1])


def padded(size: tuple[int, int], p: Pads) -> tuple[int, int]:
    """(h, w) after padding: (h + top + bottom, w + left + right)."""
    (t, b), (l, r) = p
    return size[0] + t + b, size[1] + l + r


def add_pads(p: Pads, q: Pads) -> Pads:
    """Two paddings of the same map, one around the other, as one."""
    return (p[0][0] + q[0][0], p[0][1] + q[0][1]), (p[1][0] + q[1][0], p[1][1] + q[1][1])


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


def window_geometry(
    op: str,
    x: Shape,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: str | tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    pad_input: Pads = NOPAD,
) -> Geometry:
    """The Geometry of window op `op` on samples x (h, w, c) (ShapeError for another rank).

    padding: valid | same | (h, w), as the ops take it. pad_input: zeros around
    x that a zeropad folded into this op adds (lowering's `fuse_zeropad`): they
    count as x's own rows for `same` and add to the op's padding. Its `out`
    raises ShapeError, with the working, where the window does not fit.
    """
    h, w, c = spatial(op, x)
    eff = effective(kernel, dilation)
    total = add_pads(pad_input, pads(padding, padded((h, w), pad_input), eff, stride))
    return Geometry((h, w), c, kernel, stride, dilation, total)


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
        return padded(self.size, self.pads)

    def reading(self) -> Geometry:
        """The same windows cut to what they read: padding no window needs is dropped.

        NOTE: a `same` window far larger than its input (a pool of size 10⁶ on a
        7×7 map) would make a kernel pad the input by the window's size. Every
        window then covers the whole input, and so does the cut one: each output
        reads the same input rows and columns as before, from a padded array and
        a window of at most (out - 1)·s + n. Undilated windows only (pools).
        """
        assert self.dilation == (1, 1), "only undilated windows are cut"
        kernel, pads = list(self.kernel), [list(self.pads[0]), list(self.pads[1])]
        for axis in (0, 1):
            n, s, out = self.size[axis], self.stride[axis], self.out[axis]
            top = self.pads[axis][0]
            # Rows above the input that no window start needs (every start stays <= 0),
            # then rows below it that no window end needs (every end stays >= n).
            above = max(0, top - (out - 1) * s)
            below = max(0, kernel[axis] - top - n)
            kernel[axis] -= above + below
            pads[axis][0] -= above
            pads[axis][1] -= below
        cut = ((pads[0][0], pads[0][1]), (pads[1][0], pads[1][1]))
        return replace(self, kernel=(kernel[0], kernel[1]), pads=cut)

    @property
    def effective(self) -> tuple[int, int]:
        return effective(self.kernel, self.dilation)

    @property
    def out(self) -> tuple[int, int]:
        (eh, ew), (sh, sw), (ph, pw) = self.effective, self.stride, self.pads
        return (
            window_out(self.size[0], eh, sh, ph, "height"),
            window_out(self.size[1], ew, sw, pw, "width"),
        )

    @property
    def unread(self) -> tuple[int, int]:
        """Rows and columns at the bottom/right of the padded input that no window reaches.

        (n − f_eff + p_before + p_after) mod s per axis; a window narrower than
        its stride also skips rows between windows, which this does not count.
        """
        (hp, wp), (eh, ew), (sh, sw) = self.padded, self.effective, self.stride
        return (hp - eh) % sh, (wp - ew) % sw

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
