"""Structural ops: input, flatten, zeropad, concat, add, multiply.

None of them has weights. Axes in attributes count over the shape without
the batch axis (`concat(axis=-1)` joins channels); kernels add 1 for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnndsl.ops.attrs import REQUIRED, Anything, AttrType, Int, show
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
from cnndsl.ops.window import Pads, pad2d, padded, spatial, unpad2d
from cnndsl.runtime.workers import elementwise


def listing(shapes: tuple[Shape, ...] | list[Shape]) -> str:
    """'[2, 3] and [4]' or '[1], [2] and [3]' for messages."""
    parts = [str(list(s)) for s in shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@register
class Input(Op):
    """input(shape): a network input of the given shape (without the batch axis).

    It has no kernel: the executor feeds its value.
    """

    name = "input"
    family = "input"
    args = ("shape",)
    attrs = {"shape": (Anything(), REQUIRED)}
    arity = (0, 0)

    def describe(self, a: Attrs) -> str:
        """'input [28, 28, 1]'."""
        return f"input {list(a.shape)}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        s = a.shape
        if (
            not isinstance(s, (tuple, list))
            or not s
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in s)
        ):
            raise ShapeError(f"an input shape must list whole numbers >= 1, not {show(s)}")
        return tuple(s)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        raise RuntimeError("'input' has no kernel: the executor feeds input values itself")

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        raise RuntimeError("'input' has no kernel: its gradient is the executor's result")


@register
class Flatten(Op):
    """flatten: any shape -> [product], row-major ([h, w, c] order, as Keras)."""

    name = "flatten"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        return (math.prod(xs[0]),)

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Flatten in our [h, w, c] order: NCHW maps go back to NHWC first."""
        if len(xs[0]) == 1:
            return inputs[0]
        x = b.node("Transpose", inputs, perm=[0, 2, 3, 1]) if len(xs[0]) == 3 else inputs[0]
        return b.node("Flatten", [x], axis=1)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        return x.reshape(x.shape[0], -1), x.shape

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        return [dy.reshape(saved) if ctx.wants_grad(0) else None], {}


@dataclass(frozen=True)
class SidePadding(AttrType):
    """n, (h, w) or ((top, bottom), (left, right)) of whole numbers >= 0."""

    describe = "a whole number >= 0, a pair (h, w) or ((top, bottom), (left, right))"

    def convert(self, name: str, value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        def whole(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        def pair(v: Any) -> bool:
            return isinstance(v, (tuple, list)) and len(v) == 2

        if whole(value):
            return ((value, value), (value, value))
        if pair(value) and all(whole(v) for v in value):
            return ((value[0], value[0]), (value[1], value[1]))
        if pair(value) and all(pair(v) and whole(v[0]) and whole(v[1]) for v in value):
            return ((value[0][0], value[0][1]), (value[1][0], value[1][1]))
        raise self.fail(name, value)


@register
class ZeroPad(Op):
    """zeropad(padding=1): zero rows above/below and columns left/right of a feature map.

    padding: n (all sides), (h, w) (per axis) or ((top, bottom), (left, right)).
    """

    name = "zeropad"
    args = ("padding",)
    attrs = {"padding": (SidePadding(), ((1, 1), (1, 1)))}

    def describe(self, a: Attrs) -> str:
        """'zeropad 1' or 'zeropad ((0, 1), (0, 1))'."""
        (t, b), (l, r) = a.padding
        return f"zeropad {t}" if t == b == l == r else f"zeropad {a.padding}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        h, w, c = spatial(self.name, xs[0])
        return (*padded((h, w), a.padding), c)

    def zero_border(self, a: Attrs) -> Pads:
        return a.padding

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Pad with zeros on the spatial axes of the NCHW map."""
        (t, bottom), (left, r) = a.padding
        pads = b.const("pads", np.array([0, 0, t, left, 0, 0, bottom, r], np.int64))
        return b.node("Pad", [inputs[0], pads], mode="constant")

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        return pad2d(xp, xs[0], a.padding), None

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        return [unpad2d(dy, a.padding) if ctx.wants_grad(0) else None], {}


_AXIS_NAMES = ("height", "width", "channels")


@register
class Concat(Op):
    """concat(axis=-1): join the inputs along one axis (default: channels).

    Every other axis must agree. The axis counts without the batch axis.
    """

    name = "concat"
    family = "merge"
    attrs = {"axis": (Int(), -1)}
    arity = (1, None)

    def describe(self, a: Attrs) -> str:
        """'concat', or 'concat axis 0' off the channel axis."""
        return "concat" if a.axis == -1 else f"concat axis {a.axis}"

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        rank = len(xs[0])
        head = f"cannot concat {listing(xs)} along axis {a.axis}"
        if any(len(x) != rank for x in xs):
            raise ShapeError(f"{head}: they have different numbers of axes")
        if not -rank <= a.axis < rank:
            raise ShapeError(f"{head}: the axis is out of range for {rank}-axis shapes")
        ax = a.axis % rank
        differ = [k for k in range(rank) if k != ax and len({x[k] for x in xs}) > 1]
        if differ:
            names = [_AXIS_NAMES[k] if rank == 3 else f"axis {k}" for k in differ]
            raise ShapeError(f"{head}: they differ in {' and '.join(names)}")
        return tuple(sum(x[k] for x in xs) if k == ax else xs[0][k] for k in range(rank))

    def shape_note(self, a: Attrs, xs: Sequence[Shape], y: Shape) -> str:
        """' 64+32=96': the channels each input brings, where the join is along channels."""
        if a.axis != -1:
            return ""
        return f" {'+'.join(str(x[-1]) for x in xs)}={y[-1]}"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Concat along the mapped axis (channels: ONNX axis 1)."""
        return b.node("Concat", inputs, axis=b.axis(a.axis, len(y)))

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        axis = a.axis % (xs[0].ndim - 1) + 1
        return xp.concatenate(xs, axis=axis), (axis, [x.shape[axis] for x in xs])

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        axis, sizes = saved
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        parts = xp.split(dy, ends, axis=axis)
        return [g if ctx.wants_grad(i) else None for i, g in enumerate(parts)], {}


@register
class Add(Op):
    """add: y = x1 + x2 + ... of equal shapes (the residual connection, `a + b`).

    Lowering may add activation=relu when a relu is the sum's only reader.
    """

    name = "add"
    infix = "+"
    family = "merge"
    arity = (2, None)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        if any(tuple(x) != tuple(xs[0]) for x in xs):
            raise ShapeError(f"cannot add tensors of shapes {listing(xs)}")
        return tuple(xs[0])

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Add for two inputs, Sum for more."""
        return b.node("Add" if len(inputs) == 2 else "Sum", inputs)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        first, second, rest = xs[0], xs[1], xs[2:]
        relu = a.get("activation") == "relu"  # set by lowering (relu(a + b) in ResNets)
        y = xp.empty(first.shape, dtype=xp.result_type(first, second))

        def run(lo: int, hi: int) -> None:
            out = y[lo:hi]
            xp.add(first[lo:hi], second[lo:hi], out=out)
            for x in rest:
                out += x[lo:hi]
            if relu:
                xp.maximum(out, 0, out=out)

        elementwise(xp, ctx, run, y)
        return y, (len(xs), y if relu else None)

    def hosts_activation(self, a: Attrs, activation: str) -> bool:
        """relu, as in relu(a + b) of ResNets: applied while the sum is hot."""
        return activation == "relu" and a.get("activation", "none") == "none"

    def fresh_output(self, a: Attrs) -> bool:
        return a.get("activation", "none") == "none"

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        count, y = saved
        if y is not None:  # a fused relu: dz = dy·(y > 0)
            dz = xp.empty_like(dy)
            elementwise(
                xp, ctx, lambda lo, hi: xp.multiply(dy[lo:hi], y[lo:hi] > 0, out=dz[lo:hi]), dy
            )
            dy = dz
        # Each input gets its own array, so a caller accumulating in place cannot
        # change another input's gradient through an alias.
        return [(dy if i == 0 else dy.copy()) if ctx.wants_grad(i) else None
                for i in range(count)], {}  # fmt: skip


def broadcast(shapes: tuple[Shape, ...]) -> Shape | None:
    """NumPy broadcasting of shapes aligned at the right, or None if they do not broadcast."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded, strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


@register
class Multiply(Op):
    """multiply: y = x1 · x2 · ... elementwise, NumPy broadcasting aligned at the right.

    [h, w, c] · [c] scales each feature map by one number (squeeze-and-excitation).
    """

    name = "multiply"
    infix = "*"
    family = "merge"
    arity = (2, None)

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        out = broadcast(xs)
        if out is None:
            raise ShapeError(
                f"cannot multiply tensors of shapes {listing(xs)}: they do not broadcast"
                " (each axis, counted from the right, must match or be 1)"
            )
        return out

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Mul, shorter inputs given size-1 axes so they broadcast as ours do (SE's [c])."""
        names = []
        for name, x in zip(inputs, xs, strict=True):
            if len(x) < len(y):
                if len(y) == 3 and len(x) != 1:
                    raise b.unsupported(self.name, f"broadcasting {list(x)} over {list(y)}")
                # (N, c) -> (N, c, 1, 1) in NCHW; (N, ...) -> (N, 1, ..., ...) otherwise
                axes = [2, 3] if len(y) == 3 else list(range(1, 1 + len(y) - len(x)))
                name = b.node("Unsqueeze", [name, b.const("axes", np.array(axes, np.int64))])
            names.append(name)
        out = names[0]
        for other in names[1:]:
            out = b.node("Mul", [out, other])
        return out

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        rank = max(x.ndim for x in xs)
        # The batch axis stays first: lower-rank inputs get 1s after it, not before.
        rs = [x.reshape(x.shape[0], *(1,) * (rank - x.ndim), *x.shape[1:]) for x in xs]
        y = rs[0] * rs[1]
        for r in rs[2:]:
            y = y * r
        return y, (rs, [x.shape for x in xs])

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        rs, shapes = saved
        grads: list[Array | None] = []
        for i, r in enumerate(rs):
            if not ctx.wants_grad(i):
                grads.append(None)
                continue
            g = dy
            for j, other in enumerate(rs):
                if j != i:
                    g = g * other
            axes = tuple(k for k in range(1, dy.ndim) if r.shape[k] == 1 and dy.shape[k] != 1)
            if axes:
                g = g.sum(axis=axes, keepdims=True)
            grads.append(g.reshape(shapes[i]))
        return grads, {}
