"""The fully connected layer: dense."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnndsl.ops.act import activate, activate_backward
from cnndsl.ops.attrs import REQUIRED, Bool, Int
from cnndsl.ops.errors import ShapeError
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
from cnndsl.ops.window import WHOLE, Window
from cnndsl.runtime.workers import workers_of


@register
class Dense(Op):
    """dense(units): y = activation(x·W + b) on a vector x of n features.

    Attrs: units, bias=true, activation=none. Weights: kernel [n, units] and
    bias [units] (Keras Dense). A feature map must be flattened or pooled first.
    """

    name = "dense"
    family = "dense"
    args = ("units",)
    attrs = {
        "units": (Int(1), REQUIRED),
        "bias": (Bool(), True),
        "activation": (Activation(), "none"),
    }
    key_attrs = ("units",)

    def describe(self, a: Attrs) -> str:
        """'dense 128' or 'dense 10, softmax'."""
        return f"dense {a.units}" + (f", {a.activation}" if a.activation != "none" else "")

    def shape(self, a: Attrs, *xs: Shape) -> Shape:
        (x,) = xs
        if len(x) != 1:
            hint = (": add flatten or global_avgpool before it" if len(x) == 3
                    else ": add flatten before it")  # fmt: skip
            raise ShapeError(f"dense needs a vector; got {list(x)}{hint}")
        return (a.units,)

    def weights(self, a: Attrs, *xs: Shape) -> dict[str, WeightSpec]:
        ws = {"kernel": WeightSpec((xs[0][0], a.units))}
        if a.bias:
            ws["bias"] = WeightSpec((a.units,), init="zeros")
        return ws

    def macs(self, a: Attrs, xs: Any, y: Shape) -> int:
        return xs[0][0] * a.units

    def window(self, a: Attrs, *xs: Shape) -> Window:
        return WHOLE

    def hosts_activation(self, a: Attrs, activation: str) -> bool:
        """relu, run as the layer's own activation= (one step fewer)."""
        return activation == "relu" and a.activation == "none"

    def channel_weight(self, a: Attrs) -> tuple[str, int] | None:
        """The kernel [n, units]: units on the last axis."""
        return ("kernel", 1) if a.activation == "none" else None

    def fresh_output(self, a: Attrs) -> bool:
        return a.activation == "none"

    def onnx(self, a: Attrs, b: Any, inputs: list[str], xs: Sequence[Shape], y: Shape) -> str:
        """Gemm with our [in, units] kernel as B: x·W + b."""
        bias = [b.weight("bias", b.w("bias"))] if a.bias else []
        out = b.node("Gemm", [inputs[0], b.weight("kernel", b.w("kernel")), *bias])
        return b.activate(a.activation, out, y)

    def forward(self, xp: Any, a: Attrs, xs: list[Array], w: Weights, ctx: Context) -> Forward:
        x = xs[0]
        z = workers_of(ctx).matmul(xp, x, w["kernel"])
        if "bias" in w:
            z += w["bias"]
        y, act_saved = activate(xp, a.activation, z)
        return y, (x, act_saved)

    def backward(
        self, xp: Any, a: Attrs, saved: Any, dy: Array, w: Weights, ctx: Context
    ) -> Backward:
        x, act_saved = saved
        dz = activate_backward(xp, a.activation, act_saved, dy)
        workers = workers_of(ctx)
        grads = {"kernel": workers.matmul(xp, x.T, dz)}
        if "bias" in w:
            grads["bias"] = dz.sum(axis=0)
        return [workers.matmul(xp, dz, w["kernel"].T) if ctx.wants_grad(0) else None], grads
