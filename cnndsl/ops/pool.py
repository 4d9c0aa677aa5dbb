"""Pooling: maxpool, avgpool, global_avgpool, global_maxpool.

Windowed pools follow the conv shape rule with the window size as kernel
(no dilation); `stride` defaults to the size. Padding semantics:

- `same` is Keras's: the padding never counts. maxpool takes the max of the
  real pixels, avgpool divides by the number of real pixels in the window.
- explicit padding (n or (h, w)) is PyTorch's: maxpool pads with −inf,
  avgpool pads with zeros that count (count_include_pad=True).

Kernels loop over the window offsets only, never over pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnndsl.ops.attrs import REQUIRED, Padding, Pair
from cnndsl.ops.conv import fmt_pair
from cnndsl.ops.conv_kernels import padded_chunk
from cnndsl.ops.errors import AttrError
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
from cnndsl.ops.window import (
    NOPAD,
    WHOLE,
    Geometry,
    Window,
    pad2d,
    spatial,
    tap,
    unpad2d,
    window_geometry,
)
from cnndsl.runtime.workers import workers_of

NODIL = (1, 1)


class WindowPool(Op):
    """Shared arguments, shape rule and geometry of maxpool and avgpool."""

    family = "pool"
    args = ("size", "stride")
    attrs = {
        "size": (Pair(), REQUIRED),
        # NOTE: None (the default only; Pair refuses it from a spec) means "= size";
        # `check` fills it in, so bound attrs always hold a pair.
        "stride": (Pair(), None),
        "padding": (Padding(), "valid"),
    }

    def check(self, a: dict[str, Any]) -> None:
        if a["stride"] is None:
            a["stride"] = a["size"]

    def describe(self, a: Attrs) -> str:
        """'maxpool 2×2/2', 'avgpool 3×3/1'."""
        s = a.stride
        stride = str(s[0]) if s[0] == s[1] else fmt_pair(s)
        return f"{self.name} {fmt_pair(a.size)}/{stride}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        return (*self.geometry(a, x).out, x[2])

    def geometry(self, a: Attrs, *xs: Shape) -> Geometry:
        return window_geometry(self.name, xs[0], a.size, a.stride, a.padding)

    def kernel_geometry(self, a: Attrs, x: Shape) -> Geometry:
        """The geometry the kernels run: windows cut to the rows and columns they read."""
        return self.geometry(a, x).reading()


@register
class MaxPool(WindowPool):
    """maxpool(size, stride=size): y[i, j, c] = max over the window at (i·sh, j·sw) of x[., ., c].

    Attrs: size, stride=size, padding=valid|same|n|(h, w). Padding never wins
    the max. Ties send the gradient to the first maximum in row-major order.
    """

    name = "maxpool"

    def check(self, a: dict[str, Any]) -> None:
        super().check(a)
        p = a["padding"]
        if isinstance(p, tuple) and (2 * p[0] > a["size"][0] or 2 * p[1] > a["size"][1]):
            # A window of padding alone would have max −inf (PyTorch refuses it too).
            raise AttrError(
                f"maxpool padding {p} must be at most half the window size {a['size']}",
                "padding",
            )

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """MaxPool; ONNX never takes the max over padding, as ours."""
        geo = self.geometry(a, xs[0])
        attrs = b.window_attrs(geo)
        del attrs["dilations"]
        return b.node("MaxPool", inputs, **attrs)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        geo = self.kernel_geometry(a, x.shape[1:])
        run = (ctx.overrides or {}).get("maxpool2d_forward", maxpool2d_forward)
        y = run(xp, x, geo, workers_of(ctx))
        # NOTE: x and y are alive anyway (the producer's and the next layer's
        # saved values, usually), so saving them costs less than an argmax array.
        return y, (x, y, geo)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        x, y, geo = saved
        run = (ctx.overrides or {}).get("maxpool2d_backward", maxpool2d_backward)
        return [run(xp, x, y, dy, geo, workers_of(ctx))], {}


def window_offsets(geo: Geometry) -> list[tuple[int, int]]:
    """Every (u, v) offset inside the window, row-major (PyTorch's scan order)."""
    return [(u, v) for u in range(geo.kernel[0]) for v in range(geo.kernel[1])]


def maxpool2d_forward(xp: Any, x: Array, geo: Geometry, workers: Any) -> Array:
    """Max over every window of x (N, h, w, c) -> (N, oh, ow, c); padding is −inf."""
    p, out, stride = geo.pads, geo.out, geo.stride
    y = xp.empty((x.shape[0], *out, x.shape[3]), dtype=x.dtype)
    offsets = window_offsets(geo)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        src = padded_chunk(xp, workers, lane, "xpad", x, n0, n1, p, -float("inf"))
        taps = [tap(src, u, v, stride, NODIL, out) for u, v in offsets]
        if len(taps) == 1:
            y[n0:n1] = taps[0]
            return
        xp.maximum(taps[0], taps[1], out=y[n0:n1])
        for t in taps[2:]:
            xp.maximum(y[n0:n1], t, out=y[n0:n1])

    workers.each(_pool_chunks(workers, x, geo), run)
    return y


def maxpool2d_backward(
    xp: Any, x: Array, y: Array, dy: Array, geo: Geometry, workers: Any
) -> Array:
    """dx of maxpool2d_forward: each window's dy goes to its first maximum in row-major order.

    Every pixel of a window receives dy·hit (hit 0 or 1), so a NaN or infinite
    dy reaches the whole window, and a window whose maximum is NaN (no pixel
    equals it) gives its pixels dy·0.
    """
    out, stride, p = geo.out, geo.stride, geo.pads
    dx = xp.empty(x.shape, dtype=dy.dtype)
    offsets = window_offsets(geo)
    # Windows that tile the padded input exactly (2×2/2 on an even map, say).
    tiled = geo.kernel == stride and geo.unread == (0, 0)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        src = padded_chunk(xp, workers, lane, "xpad", x, n0, n1, p, -float("inf"))
        hp, wp = geo.padded
        nb, c = n1 - n0, x.shape[3]
        target = (
            dx[n0:n1] if p == NOPAD
            else workers.scratch(xp, lane, "dxpad", (nb, hp, wp, c), dy.dtype)
        )  # fmt: skip
        if tiled:
            _tiled_max_grad(xp, workers, lane, src, y[n0:n1], dy[n0:n1], target, geo.kernel)
            if p != NOPAD:
                dx[n0:n1] = unpad2d(target, p)
            return
        target[...] = 0
        shape = (nb, *out, c)
        hit = workers.scratch(xp, lane, "hit", shape, bool)
        taken = workers.scratch(xp, lane, "taken", shape, bool)
        val = workers.scratch(xp, lane, "val", shape, dy.dtype)
        yc, d = y[n0:n1], dy[n0:n1]
        for k, (u, v) in enumerate(offsets):
            # The first maximum in row-major order takes the gradient.
            xp.equal(tap(src, u, v, stride, NODIL, out), yc, out=hit)
            if k:
                xp.greater(hit, taken, out=hit)  # hit and not taken
            if k == 0:
                xp.copyto(taken, hit)
            elif k < len(offsets) - 1:
                xp.logical_or(taken, hit, out=taken)
            xp.multiply(d, hit, out=val)
            spot = tap(target, u, v, stride, NODIL, out)
            spot += val
        if p != NOPAD:
            dx[n0:n1] = unpad2d(target, p)

    workers.each(_pool_chunks(workers, x, geo), run)
    return dx


def _tiled_max_grad(
    xp: Any,
    workers: Any,
    lane: int,
    src: Array,
    y: Array,
    dy: Array,
    target: Array,
    size: tuple[int, int],
) -> None:
    """Max-pool gradient where the windows tile src exactly (2×2/2 on an even map, say).

    Every pixel lies in one window, so target is written whole, not added to:
    one comparison of all the window's pixels with their maximum, the ties
    settled on the (window-sized) boolean, one multiply. NOTE: against a
    compare and a masked write per window offset, this made the backward of
    Fashion-MNIST's 2×2 pools (28×28×64, 14×14×128, batch 64) 1.2-1.5× faster.
    """
    nb, hp, wp, c = src.shape
    (sh, sw), (oh, ow) = size, y.shape[1:3]
    hit = workers.scratch(xp, lane, "hit", (nb, oh, sh, ow, sw, c), bool)
    xp.equal(src.reshape(nb, oh, sh, ow, sw, c), y[:, :, None, :, None], out=hit)
    # The first maximum in row-major window order takes the gradient.
    taken = workers.scratch(xp, lane, "taken", (nb, oh, ow, c), bool)
    offsets = [(u, v) for u in range(sh) for v in range(sw)]
    xp.copyto(taken, hit[:, :, 0, :, 0])
    for k, (u, v) in enumerate(offsets[1:], start=1):
        spot = hit[:, :, u, :, v]
        xp.greater(spot, taken, out=spot)  # a maximum, and none before it
        if k < len(offsets) - 1:
            xp.logical_or(taken, spot, out=taken)
    xp.multiply(hit, dy[:, :, None, :, None], out=target.reshape(nb, oh, sh, ow, sw, c))


def _pool_chunks(workers: Any, x: Array, geo: Any) -> list[tuple[int, int]]:
    hp, wp = geo.padded
    per_sample = (hp * wp + 4 * geo.out[0] * geo.out[1]) * x.shape[3] * x.dtype.itemsize
    return workers.batch_chunks(x.shape[0], per_sample, stream=True)


@register
class AvgPool(WindowPool):
    """avgpool(size, stride=size): y[i, j, c] = mean of x[., ., c] over the window.

    Attrs: size, stride=size, padding. With `same` the mean is over the real
    (non-padding) pixels of each window, as Keras; with explicit padding the
    zeros count, as PyTorch's count_include_pad=True.
    """

    name = "avgpool"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """AveragePool: `same` padding never counts (Keras), explicit padding does (PyTorch)."""
        geo = self.geometry(a, xs[0])
        attrs = b.window_attrs(geo)
        del attrs["dilations"]
        counts = int(isinstance(a.padding, tuple))
        return b.node("AveragePool", inputs, **attrs, count_include_pad=counts)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        geo = self.kernel_geometry(a, x.shape[1:])
        # NOTE: the divisor is the whole window's size, fh·fw, even where the
        # kernel geometry cuts off padding that no window needs (a 3×3/3 pool
        # with padding 1 on a 1×1 map reads one pixel and divides it by 9).
        divisor = None if a.padding == "same" else a.size[0] * a.size[1]
        run = (ctx.overrides or {}).get("avgpool2d_forward", avgpool2d_forward)
        return run(xp, x, geo, divisor, workers_of(ctx)), (geo, divisor)

    def fresh_output(self, a: Attrs) -> bool:
        return True

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        geo, divisor = saved
        run = (ctx.overrides or {}).get("avgpool2d_backward", avgpool2d_backward)
        return [run(xp, dy, geo, divisor, workers_of(ctx))], {}


def window_counts(xp: Any, geo: Geometry, divisor: int | None, dtype: Any) -> Any:
    """The divisor of each window's mean: `divisor`, or (None) the real pixels it holds.

    An int, or an (1, oh, ow, 1) array where windows overlap `same` padding.
    """
    p, out = geo.pads, geo.out
    if divisor is not None:
        return divisor
    if p == NOPAD:
        return geo.kernel[0] * geo.kernel[1]
    # Real pixels per window: the same window sums over a mask of ones.
    mask = xp.zeros((1, *geo.padded, 1), dtype=dtype)
    mask[:, p[0][0] : p[0][0] + geo.size[0], p[1][0] : p[1][0] + geo.size[1]] = 1
    return sum(tap(mask, u, v, geo.stride, NODIL, out) for u, v in window_offsets(geo))


def avgpool2d_forward(xp: Any, x: Array, geo: Geometry, divisor: int | None, workers: Any) -> Array:
    """Mean over every window of x (N, h, w, c) -> (N, oh, ow, c).

    divisor: every window's (explicit padding counts, as PyTorch's
    count_include_pad), or None: the real pixels of each (`same`, as Keras).
    """
    xpad = pad2d(xp, x, geo.pads)
    total = None
    for u, v in window_offsets(geo):
        t = tap(xpad, u, v, geo.stride, NODIL, geo.out)
        total = t.copy() if total is None else total + t
    if total is None:  # windows of padding alone (padding 2 around a 1×1 window)
        total = xp.zeros((x.shape[0], *geo.out, x.shape[3]), dtype=x.dtype)
    return total / window_counts(xp, geo, divisor, x.dtype)


def avgpool2d_backward(
    xp: Any, dy: Array, geo: Geometry, divisor: int | None, workers: Any
) -> Array:
    """dx of avgpool2d_forward: each window's dy / count added to its pixels in offset order."""
    g = dy / window_counts(xp, geo, divisor, dy.dtype)
    dxpad = xp.zeros((dy.shape[0], *geo.padded, geo.channels), dtype=dy.dtype)
    for u, v in window_offsets(geo):
        tap(dxpad, u, v, geo.stride, NODIL, geo.out)[...] += g
    return unpad2d(dxpad, geo.pads)


class GlobalPool(Op):
    """Shared shape rule of the global pools: [h, w, c] -> [c]."""

    family = "pool"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        return (spatial(self.name, x)[2],)

    def window(self, a: Attrs, *xs: Shape) -> Window:
        return WHOLE


@register
class GlobalAvgPool(GlobalPool):
    """global_avgpool: y[c] = mean over i, j of x[i, j, c]."""

    name = "global_avgpool"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """GlobalAveragePool, then Flatten: (N, C, 1, 1) -> our [c]."""
        return b.node("Flatten", [b.node("GlobalAveragePool", inputs)], axis=1)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        return x.mean(axis=(1, 2)), x.shape

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        shape = saved
        dx = xp.empty(shape, dtype=dy.dtype)
        dx[...] = (dy / (shape[1] * shape[2]))[:, None, None, :]
        return [dx], {}


@register
class GlobalMaxPool(GlobalPool):
    """global_maxpool: y[c] = max over i, j of x[i, j, c]; ties: first in row-major order."""

    name = "global_maxpool"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """GlobalMaxPool, then Flatten: (N, C, 1, 1) -> our [c]."""
        return b.node("Flatten", [b.node("GlobalMaxPool", inputs)], axis=1)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        flat = x.reshape(x.shape[0], -1, x.shape[3])
        idx = flat.argmax(axis=1)
        return flat.max(axis=1), (idx, x.shape)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        if not ctx.wants_grad(0):
            return [None], {}
        idx, shape = saved
        hit = xp.arange(shape[1] * shape[2])[None, :, None] == idx[:, None, :]
        return [(hit * dy[:, None, :]).reshape(shape)], {}
