"""Lowering: IR Graph -> Plan, the flat program the executor runs.

Input: an `ir.Graph` whose layers carry shapes and weights (after the passes).
Output: a frozen `Plan`: the layers as a topologically ordered tuple of `Step`s,
each naming its inputs by step index, plus liveness (the last step that reads
each value) so inference can drop an activation as soon as nothing needs it.
Each step produces exactly one value, numbered like the step itself.

The executor in `cnndsl.runtime.executor` is one loop over `plan.steps` calling
`OPS[step.op].forward`; backward walks `reversed(plan.steps)` and sums the
gradients of a value read by several steps (fan-out). Nothing here touches
arrays; the plan depends on the backend only through its `Capabilities`
(which conv kernels it has), and is the same for every backend that has them all.

Lowering also fixes kernel choices that depend only on shapes and on the
graph around a step, so that no kernel decides them per call:

- `Op.plan` variants, merged into the step's attrs (conv's forward kernel:
  im2col or Winograd; its input gradient: "full" convolution, Winograd or
  col2im; its kernel gradient: im2col or Winograd; all by the layer's shape);
- fusion (`fuse`): a zeropad (`Op.zero_border`) read only by a convolution
  (`Op.pads_itself`) joins that convolution's own padding (`fuse_zeropad`);
  a relu/relu6 (`Op.in_place`) whose input is read by nothing else moves
  into the producer where the producer's kernel can apply it
  (`Op.hosts_activation`: batchnorm's or a residual add's kernel, or a
  conv/dense's `activation=`), and the activation's own step becomes
  `identity` (attrs fused_into=producer), keeping indices and liveness; any
  other relu/relu6 that is its input's only reader, where the producer hands
  over a fresh array it keeps no reference to (`Op.fresh_output`), runs in
  place (attrs inplace=True).

What lowering asks of an op are its `Op` attributes and methods; no op is
named here but `identity`, the op a step becomes when its work moves elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from cnndsl.ir import Graph
from cnndsl.ops.registry import OPS, Attrs, Shape
from cnndsl.runtime.backends.base import Capabilities
from cnndsl.source import Span


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


def lower(g: Graph, fuse: bool = True, capabilities: Capabilities | None = None) -> Plan:
    """Lower a shaped graph to a Plan (pure: reads g, never changes it).

    fuse=False keeps one step per layer with the layer's own activation
    (the reference that the fused plan is tested against). capabilities: the
    backend's (`Backend.capabilities`): the kernels `Op.plan` may choose from;
    None: every kernel, the CPU's choices.
    """
    algorithms = capabilities.conv_algorithms if capabilities is not None else None
    order = list(g)
    index = {layer.path: i for i, layer in enumerate(order)}
    steps = []
    for i, layer in enumerate(order):
        assert layer.op in OPS, f"{layer.path}: unregistered op {layer.op}"
        attrs = layer.attrs
        shapes = [order[index[p]].shape for p in layer.inputs]
        if layer.shape is not None and all(s is not None for s in shapes):
            chosen = OPS[layer.op].plan(attrs, shapes, layer.shape, algorithms)  # type: ignore[arg-type]
            if chosen:
                attrs = attrs.replace(**chosen)
        steps.append(
            Step(
                output=i,
                op=layer.op,
                attrs=attrs,
                inputs=tuple(index[p] for p in layer.inputs),
                path=layer.path,
                weights=tuple(layer.weights),
                shape=layer.shape,
                span=layer.span,
            )
        )
    inputs = tuple(index[p] for p in g.inputs)
    outputs = tuple(index[p] for p in g.outputs)
    plan = _plan(tuple(steps), inputs, outputs)
    return fuse_activations(fuse_zeropad(plan)) if fuse else plan


_IDENTITY = OPS["identity"].bind()  # what a step whose work moved elsewhere becomes


def fuse_zeropad(plan: Plan) -> Plan:
    """Let a conv read past a zeropad that only it reads: the padding joins its own.

    The conv gets attrs pad_input=((top, bottom), (left, right)) and reads the
    zeropad's input; the zeropad step becomes an `identity` nobody reads (its
    value is dropped at once), so no padded copy is made in forward and none
    cropped in backward. Pure: returns a new Plan; indices stay, liveness is
    recomputed.
    """
    steps = list(plan.steps)
    changed = False
    for step in plan.steps:
        border = OPS[step.op].zero_border(step.attrs)
        if border is None or step.output in plan.outputs:
            continue
        readers = plan.consumers[step.output]
        if len(readers) != 1:
            continue
        reader = steps[readers[0]]
        if not OPS[reader.op].pads_itself or reader.inputs != (step.output,):
            continue
        if "pad_input" in reader.attrs:
            continue
        steps[reader.output] = replace(
            reader, attrs=reader.attrs.replace(pad_input=border), inputs=step.inputs
        )
        steps[step.output] = replace(
            step, op="identity", attrs=_IDENTITY.replace(fused_into=reader.path)
        )
        changed = True
    return _plan(tuple(steps), plan.inputs, plan.outputs) if changed else plan


def fuse_activations(plan: Plan) -> Plan:
    """Move single-reader relu/relu6 steps into their producers, or run them in place.

    Pure: returns a new Plan with the same indices, inputs, outputs and liveness.
    """
    steps = list(plan.steps)
    for step in plan.steps:
        if not OPS[step.op].in_place or len(step.inputs) != 1:
            continue
        j = step.inputs[0]
        src = steps[j]
        if plan.consumers[j] != (step.output,) or j in plan.outputs or j in plan.inputs:
            continue
        if step.output not in plan.outputs and OPS[src.op].hosts_activation(src.attrs, step.op):
            steps[j] = replace(src, attrs=src.attrs.replace(activation=step.op))
            steps[step.output] = replace(
                step, op="identity", attrs=_IDENTITY.replace(fused_into=src.path)
            )
        elif OPS[src.op].fresh_output(src.attrs):
            steps[step.output] = replace(step, attrs=step.attrs.replace(inplace=True))
    return replace(plan, steps=tuple(steps))


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
    return OPS[step.op].final_activation(step.attrs)


def strip_output_activation(plan: Plan, output: int | None = None) -> Plan:
    """The plan with the final activation removed, so the output is pre-activation logits.

    A loss fused with its activation (softmax + cross-entropy) runs this plan in
    training: a separate activation layer becomes `identity`, a fused
    `activation=` attribute becomes `none`. Indices and liveness stay the same.
    """
    out = plan.outputs[0] if output is None else output
    step = plan.steps[out]
    op = OPS[step.op]
    if op.final_activation(step.attrs) is None:
        return plan
    if op.is_activation:
        new = replace(step, op="identity", attrs=_IDENTITY)
    else:
        new = replace(step, attrs=step.attrs.replace(activation="none"))
    steps = tuple(new if s.output == out else s for s in plan.steps)
    return replace(plan, steps=steps)


__all__ = [
    "fuse_activations",
    "fuse_zeropad",
    "Plan",
    "Step",
    "lower",
    "output_activation",
    "strip_output_activation",
    "weight_key",
]
