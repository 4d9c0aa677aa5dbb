"""MAC counting: sets `Layer.macs`, multiply-accumulates per sample, from each op.

Reads op, attrs, input and output shapes (run after infer_shapes).
"""

from __future__ import annotations

from dataclasses import replace

from cnndsl.ir import Graph, Layer, map_layers, shapes_of
from cnndsl.ops import OPS


def count_macs(g: Graph) -> Graph:
    """Return a copy of g with `macs` set on every layer."""

    def counted(layer: Layer, ins: list[Layer]) -> Layer:
        assert layer.shape is not None, "count_macs runs after infer_shapes"
        xs = shapes_of(ins)
        return replace(layer, macs=int(OPS[layer.op].macs(layer.attrs, xs, layer.shape)))

    return map_layers(g, counted)
