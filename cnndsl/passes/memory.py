"""Memory estimate for a batch size: parameters, and activations for inference and training.

Inference keeps an activation only until its last reader has run (the
executor's liveness plan); training keeps every activation for backward and
adds gradients of the weights and the optimizer's state (one slot, as SGD
with momentum; Adam needs one more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnndsl.ir import Graph

BYTES = 4  # float32


@dataclass(frozen=True)
class Memory:
    """Bytes needed, for one batch size."""

    batch: int
    params: int
    inference_peak: int
    training: int

    def as_dict(self) -> dict[str, int]:
        return {
            "batch": self.batch,
            "params_bytes": self.params,
            "inference_peak_bytes": self.inference_peak,
            "training_bytes": self.training,
        }


def estimate_memory(g: Graph, batch: int = 1, optimizer_slots: int = 1) -> Memory:
    """Estimate memory for `batch` samples (float32) from the shaped IR."""
    layers = list(g)
    sizes = {layer.path: math.prod(layer.shape or ()) * batch * BYTES for layer in layers}
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
    params = sum(layer.params for layer in layers) * BYTES
    trainable = sum(layer.trainable_params for layer in layers) * BYTES
    activations = sum(sizes.values())
    # Training: every activation and its gradient, weights, their grads, optimizer slots.
    training = 2 * activations + params + trainable * (1 + optimizer_slots)
    return Memory(batch, params, peak + params, training)
