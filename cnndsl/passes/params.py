"""Parameter counting: sets `Layer.weights` (name -> WeightSpec) from each op.

Reads op, attrs, input shapes. A layer's parameter count is the sum of its
weight sizes; trainable/non-trainable split as Keras reports it (batchnorm's
moving statistics are non-trainable; a frozen layer's weights all are).
"""

from __future__ import annotations

from dataclasses import replace

from cnndsl.ir import Graph, Layer, map_layers, shapes_of
from cnndsl.ops import OPS


def count_params(g: Graph) -> Graph:
    """Return a copy of g with `weights` set on every layer."""

    def weighed(layer: Layer, ins: list[Layer]) -> Layer:
        shapes = shapes_of(ins)
        return replace(layer, weights=dict(OPS[layer.op].weights(layer.attrs, *shapes)))

    return map_layers(g, weighed)


def totals(g: Graph) -> dict[str, int]:
    """Total, trainable and non-trainable parameters, MACs and layer count."""
    layers = list(g)
    return {
        "params": sum(layer.params for layer in layers),
        "trainable_params": sum(layer.trainable_params for layer in layers),
        "non_trainable_params": sum(layer.non_trainable_params for layer in layers),
        "macs": sum(layer.macs for layer in layers),
        "layers": sum(1 for layer in layers if layer.op != "input"),
    }
