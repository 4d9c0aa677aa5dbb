"""Receptive fields: sets `Layer.receptive` and `Layer.jump` (both (h, w), input pixels).

For a layer with effective kernel k and stride s on an input with field r
and jump j: r' = r + (k - 1)·j and j' = j·s (Dumoulin & Visin's arithmetic).
Where branches meet, the widest field and jump win. Layers that see the
whole input (dense, global pools) get the input's size. This is how the tool
answers "why do three 3×3 convolutions see as far as one 7×7".
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
        fields = [i.receptive or (1, 1) for i in ins]
        jumps = [i.jump or (1, 1) for i in ins]
        r = (max(f[0] for f in fields), max(f[1] for f in fields))
        j = (max(x[0] for x in jumps), max(x[1] for x in jumps))
        if window.whole:
            whole = _input_extent(g)
            return replace(layer, receptive=whole, jump=whole, window=window)
        k, s = window.kernel, window.stride
        return replace(
            layer,
            receptive=(r[0] + (k[0] - 1) * j[0], r[1] + (k[1] - 1) * j[1]),
            jump=(j[0] * s[0], j[1] * s[1]),
            window=window,
        )

    return map_layers(g, field_of)


def _input_extent(g: Graph) -> tuple[int, int]:
    sizes = [g[p].shape for p in g.inputs]
    spatial = [s for s in sizes if s is not None and len(s) == 3]
    if not spatial:
        return (1, 1)
    return (max(s[0] for s in spatial), max(s[1] for s in spatial))
