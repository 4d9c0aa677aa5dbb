"""Lowering: IR Graph -> Plan, the flat program the executor runs.

Input: an `ir.Graph` whose layers carry shapes and weights (after the passes).
Output: a frozen `Plan`: the layers as a topologically ordered tuple of `Step`s,
each naming its inputs by step index, plus liveness (the last step that reads
each value) so inference can drop an activation as soon as nothing needs it.
Each step produces exactly one value, numbered like the step itself.

The executor in `cnndsl.model` is one loop over `plan.steps` calling
`OPS[step.op].forward`; backward walks `reversed(plan.steps)` and sums the
gradients of a value read by several steps (fan-out). Nothing here touches
arrays, so the plan is the same for every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from cnndsl.ir import Graph
from cnndsl.ops.registry import OPS, Attrs, Shape
from cnndsl.source import Span

# Ops that take a fused `activation=` attribute, which the loss may strip off.
FUSABLE = ("conv", "depthwise_conv", "separable_conv", "dense")


@dataclass(frozen=True)
class Step:
    """One layer to run: `op` on the values of the steps in `inputs`, giving value `output`."""

    output: int
    op: str
    attrs: Attrs
    inputs: tuple[int, ...]
    path: str
    weights: tuple[str, ...]  # weight names of this layer, in the op's order
    shape: Shape | None = None  # output shape without the batch axis
    span: Span | None = None

    @property
    def weight_keys(self) -> tuple[str, ...]:
        """Keys of this step's weights in a model's parameter dict ('path:name')."""
        return tuple(weight_key(self.path, name) for name in self.weights)

    def where(self) -> str:
        """Human context for errors: "step 12 'c3' (conv) from lenet.cnn:14:3"."""
        at = f" from {self.span}" if self.span else ""
        return f"step {self.output} '{self.path}' ({self.op}){at}"


def weight_key(path: str, name: str) -> str:
    """The key of weight `name` of layer `path` in parameter dicts and weight files."""
    return f"{path}:{name}"


@dataclass(frozen=True)
class Plan:
    """A lowered network: steps in run order, which are inputs/outputs, and liveness.

    last_use[i] is the index of the last step that reads value i (or len(steps)
    for a network output, which is never dropped); frees[s] lists the values
    that may be dropped once step s has run.
    """

    steps: tuple[Step, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    consumers: tuple[tuple[int, ...], ...]
    last_use: tuple[int, ...]
    frees: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def index(self, path: str) -> int:
        """Step index of the layer at `path`."""
        for step in self.steps:
            if step.path == path:
                return step.output
        raise KeyError(path)


def lower(g: Graph) -> Plan:
    """Lower a shaped graph to a Plan (pure: reads g, never changes it)."""
    order = list(g)
    index = {layer.path: i for i, layer in enumerate(order)}
    steps = []
    for i, layer in enumerate(order):
        assert layer.op in OPS, f"{layer.path}: unregistered op {layer.op}"
        steps.append(
            Step(
                output=i,
                op=layer.op,
                attrs=layer.attrs,
                inputs=tuple(index[p] for p in layer.inputs),
                path=layer.path,
                weights=tuple(layer.weights),
                shape=layer.shape,
                span=layer.span,
            )
        )
    inputs = tuple(index[p] for p in g.inputs)
    outputs = tuple(index[p] for p in g.outputs)
    return _plan(tuple(steps), inputs, outputs)


def _plan(steps: tuple[Step, ...], inputs: tuple[int, ...], outputs: tuple[int, ...]) -> Plan:
    n = len(steps)
    consumers: list[list[int]] = [[] for _ in range(n)]
    for step in steps:
        assert all(j < step.output for j in step.inputs), f"{step.path}: not topological"
        for j in step.inputs:
            if step.output not in consumers[j]:
                consumers[j].append(step.output)
    last_use = [max(c) if c else step.output for step, c in zip(steps, consumers, strict=True)]
    for o in outputs:
        last_use[o] = n
    frees: list[list[int]] = [[] for _ in range(n)]
    for value, last in enumerate(last_use):
        if last < n:
            frees[last].append(value)
    return Plan(
        steps=steps,
        inputs=inputs,
        outputs=outputs,
        consumers=tuple(tuple(c) for c in consumers),
        last_use=tuple(last_use),
        frees=tuple(tuple(f) for f in frees),
    )


def output_activation(plan: Plan, output: int | None = None) -> str | None:
    """The activation that ends the network at `output` (softmax, sigmoid, ...), if any."""
    step = plan.steps[plan.outputs[0] if output is None else output]
    if OPS[step.op].is_activation:
        return step.op if step.op != "identity" else None
    if step.op in FUSABLE and "activation" in step.attrs:
        act = step.attrs["activation"]
        return None if act in (None, "none", "identity") else str(act)
    return None


def strip_output_activation(plan: Plan, output: int | None = None) -> Plan:
    """The plan with the final activation removed, so the output is pre-activation logits.

    A loss fused with its activation (softmax + cross-entropy) runs this plan in
    training: a separate activation layer becomes `identity`, a fused
    `activation=` attribute becomes `none`. Indices and liveness stay the same.
    """
    out = plan.outputs[0] if output is None else output
    step = plan.steps[out]
    if OPS[step.op].is_activation:
        new = replace(step, op="identity", attrs=OPS["identity"].bind())
    elif step.op in FUSABLE:
        new = replace(step, attrs=step.attrs.replace(activation="none"))
    else:
        return plan
    steps = tuple(new if s.output == out else s for s in plan.steps)
    return replace(plan, steps=steps)


__all__ = [
    "FUSABLE",
    "Plan",
    "Step",
    "lower",
    "output_activation",
    "strip_output_activation",
    "weight_key",
]
