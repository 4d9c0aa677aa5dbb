"""Receptive fields: sets `Layer.receptive` and `Layer.jump` (both (h, w), input pixels).

For a layer with effective kernel k and stride s on an input with field r
and jump j: r' = r + (k - 1)·j and j' = j·s (Dumoulin & Visin's arithmetic).
Where branches meet, the widest field and jump win. This is how the tool
answers "why do three 3×3 convolutions see as far as one 7×7".

NOTE: a field is a property of a feature map's pixels. A layer whose output
is not a feature map (flatten, dense, global pools: a vector) sees the whole
input, and its field and jump are the input's size; so do layers whose
window says so. Where a feature map meets a vector (squeeze-and-excitation's
`x * gate`, a [h, w, c] map times a [c] gate), the vector broadcasts over
every pixel and adds no spatial extent: the map's field goes on alone.
"""

from __future__ import annotations

from dataclasses import replace

from cnndsl.ir import Graph, Layer, map_layers, shapes_of
from cnndsl.ops import OPS


def receptive_fields(g: Graph) -> Graph:
    """Return a copy of g with `receptive` and `jump` set on every layer."""

    def field_of(layer: Layer, ins: list[Layer]) -> Layer:
        if not ins:
            return replace(layer, receptive=(1, 1), jump=(1, 1))
        window = OPS[layer.op].window(layer.attrs, *shapes_of(ins))
        maps = [i for i in ins if _is_map(i)]
        if window.whole or not maps or not _is_map(layer):
            whole = _input_extent(g)
            return replace(layer, receptive=whole, jump=whole, window=window)
        fields = [i.receptive or (1, 1) for i in maps]
        jumps = [i.jump or (1, 1) for i in maps]
        r = (max(f[0] for f in fields), max(f[1] for f in fields))
        j = (max(x[0] for x in jumps), max(x[1] for x in jumps))
        k, s = window.kernel, window.stride
        return replace(
            layer,
            receptive=(r[0] + (k[0] - 1) * j[0], r[1] + (k[1] - 1) * j[1]),
            jump=(j[0] * s[0], j[1] * s[1]),
            window=window,
        )

    return map_layers(g, field_of)


def _is_map(layer: Layer) -> bool:
    """Whether the layer's output is a feature map [h, w, c] (unknown shapes count as maps)."""
    return layer.shape is None or len(layer.shape) == 3


def _input_extent(g: Graph) -> tuple[int, int]:
    sizes = [g[p].shape for p in g.inputs]
    spatial = [s for s in sizes if s is not None and len(s) == 3]
    if not spatial:
        return (1, 1)
    return (max(s[0] for s in spatial), max(s[1] for s in spatial))
