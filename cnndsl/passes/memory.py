"""Memory estimate for a batch size: parameters, and activations for inference and training.

What `compile` reports: `inference_peak`, activations alive at once (an
activation lives until its last reader has run: the executor's liveness
plan) plus weights; `training`, every activation and its gradient, weights,
their gradients and the optimizer's state (one slot, as SGD with momentum;
Adam needs two).

What the memory guard plans with (cnndsl/training/guards.py) adds kernel workspace:
`workspace` is the largest per-layer scratch (`Op.workspace`). A conv with a
kernel larger than 1×1 runs as im2col + GEMM, whose column matrix holds
oh·ow·fh·fw·c_in values per sample, besides its padded input; the kernels
walk the batch in chunks with reusable scratch buffers
(cnndsl/runtime/workers.py), so the workspace is the whole batch's columns
or SCRATCH bytes, whichever is less, but never less than one sample's.
Grouped convs (groups > 1) still build the whole batch's columns at once, so
theirs are counted in full. `training_peak` is the executor's
training plan: what backward keeps of each activation (about one
activation's worth per layer), the gradients alive at once (at most the two
largest activations), weights, gradients, optimizer slots, the workspace
twice (columns and their gradient), the scratch the lanes share (the
Winograd kernel transform, the kernel-gradient partials, and a Winograd
dW's per-point sums, 36·c·f values a lane: `Op.shared_scratch`;
the transform is part of `workspace` too), and what layers keep in their own
buffers from forward to backward (`Op.kept_for_training`: a Winograd conv's
transformed input tiles, 2.25 values per input value).

`training_peak` plus the optimizer's temporaries the guard adds, against
tracemalloc peaks from building a model through two Adam training steps
(measured 2026-11-29): digits b=2048 +92%, Fashion-MNIST b=256 +21%,
ResNet-18 at 64×64 b=64 +47%, MobileNetV2 at 64×64 b=64 +76%, VGG-16 at
32×32 b=8 +20%: it errs on the safe side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.ir import Graph, Layer, shapes_of
from cnndsl.ops import OPS
from cnndsl.ops.conv_kernels import LANE_SCRATCH

BYTES = 4  # float32
# Bytes of scratch the chunked conv kernels keep per lane: about 4 MiB of
# im2col columns, and for Winograd layers tile buffers of 128-256 tiles
# (36·tiles·(c + f) values each) plus the per-point kernel-gradient sums.
# Measured after a batch-64 training step: 39 MiB a lane for Fashion-MNIST,
# 51 MiB for CIFAR ResNet-18. training_peak counts SCRATCH twice; its other
# terms err on the safe side by more than the rest (see the module docstring).
# Shared by the lanes, and counted apart (`shared_scratch`): the Winograd
# kernel transform and the kernel-gradient partials; and, also apart, a
# Winograd dW's 36·c·f per-point sums in each lane, which lowering takes only
# where they fit this cap (`conv_kernels.kernel_grad_method`).
SCRATCH = LANE_SCRATCH


@dataclass(frozen=True)
class Memory:
    """Bytes needed, for one batch size."""

    batch: int
    params: int
    inference_peak: int
    training: int
    workspace: int = 0  # the largest layer's kernel scratch (see the module docstring)
    training_peak: int = 0  # the executor's training plan, workspace included
    kept: int = 0  # the part of training_peak that layers keep by choice (kept_for_training)

    def as_dict(self) -> dict[str, int]:
        """The figures as a JSON-ready dict (compile --format json)."""
        return {
            "batch": self.batch,
            "params_bytes": self.params,
            "inference_peak_bytes": self.inference_peak,
            "training_bytes": self.training,
        }


def workspace(layer: Layer, inputs: list[Layer]) -> tuple[int, bool]:
    """(values per sample, all samples at once) a layer's kernels allocate besides its output.

    E.g. a conv's im2col columns (`Op.workspace`).
    """
    if layer.shape is None or any(i.shape is None for i in inputs):
        return 0, False
    return OPS[layer.op].workspace(layer.attrs, shapes_of(inputs), layer.shape)


def shared_scratch(layer: Layer, inputs: list[Layer], batch: int, itemsize: int) -> tuple[int, int]:
    """Bytes of the scratch a layer's kernels share between lanes (`Op.shared_scratch`)."""
    if layer.shape is None or any(i.shape is None for i in inputs):
        return 0, 0
    return OPS[layer.op].shared_scratch(
        layer.attrs, shapes_of(inputs), layer.shape, batch, itemsize
    )


def kept_for_training(layer: Layer, inputs: list[Layer]) -> int:
    """Values per sample a layer keeps in its own buffer from forward to backward."""
    if layer.shape is None or any(i.shape is None for i in inputs):
        return 0
    return OPS[layer.op].kept_for_training(layer.attrs, shapes_of(inputs), layer.shape)


def estimate_memory(
    g: Graph,
    batch: int = 1,
    optimizer_slots: int = 1,
    itemsize: int = BYTES,
    scratch: int = SCRATCH,
) -> Memory:
    """Estimate memory for `batch` samples (itemsize bytes per value) from the shaped IR.

    scratch: the most a conv kernel's chunked scratch holds (the backend's
    `Capabilities.scratch_bytes`; SCRATCH, measured on the CPU, by default).
    """
    layers = list(g)
    sizes = {layer.path: math.prod(layer.shape or ()) * batch * itemsize for layer in layers}
    work = {}
    kept = transform = partials = 0
    for layer in layers:
        inputs = [g[p] for p in layer.inputs]
        kept += kept_for_training(layer, inputs) * batch * itemsize
        shared = shared_scratch(layer, inputs, batch, itemsize)
        transform, partials = max(transform, shared[0]), max(partials, shared[1])
        values, every_sample = workspace(layer, inputs)
        one = values * itemsize  # one sample's
        work[layer.path] = one * batch if every_sample else min(one * batch, max(one, scratch))
    order = {layer.path: i for i, layer in enumerate(layers)}
    last_read = {layer.path: order[layer.path] for layer in layers}
    for layer in layers:
        for src in layer.inputs:
            last_read[src] = max(last_read[src], order[layer.path])
    for out in g.outputs:
        last_read[out] = len(layers)
    live = peak = 0
    frees: dict[int, int] = {}
    for i, layer in enumerate(layers):
        live += sizes[layer.path]
        peak = max(peak, live)
        frees[last_read[layer.path]] = frees.get(last_read[layer.path], 0) + sizes[layer.path]
        live -= frees.pop(i, 0)
    params = sum(layer.params for layer in layers) * itemsize
    trainable = sum(layer.trainable_params for layer in layers) * itemsize
    activations = sum(sizes.values())
    weights = params + trainable * (1 + optimizer_slots)  # weights, grads, optimizer slots
    largest_work = max(work.values(), default=0)
    largest = sorted(sizes.values(), reverse=True)[:2]
    return Memory(
        batch,
        params,
        inference_peak=peak + params,
        training=2 * activations + weights,
        workspace=largest_work + transform,
        training_peak=activations
        + sum(largest)
        + weights
        + 2 * largest_work
        + transform
        + partials
        + kept,
        kept=kept,
    )


def largest_batch(
    g: Graph,
    budget: int,
    training: bool,
    optimizer_slots: int = 1,
    itemsize: int = BYTES,
    fixed: int = 0,
    kept: bool = True,
    scratch: int = SCRATCH,
) -> int:
    """The largest batch whose estimate plus `fixed` bytes fits `budget` (0: not even one).

    kept=False: without what layers keep by choice (`Memory.kept`); scratch: as
    for estimate_memory.
    """

    def fits(b: int) -> bool:
        m = estimate_memory(g, b, optimizer_slots, itemsize, scratch)
        need = (
            m.training_peak - (0 if kept else m.kept)
            if training
            else m.inference_peak + m.workspace
        )
        return need + fixed <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2  # NOTE: the estimate grows with the batch: double, then bisect
    while fits(hi):
        if hi >= 1 << 40:
            return hi
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["BYTES", "SCRATCH", "Memory", "estimate_memory", "largest_batch", "workspace"]
