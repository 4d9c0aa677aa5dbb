"""Shape inference: sets `Layer.shape` on every layer from its op's shape rule.

Reads op, attrs, inputs. Elaboration already computed shapes (the language
can read them); this pass recomputes them from the IR alone, so any graph
built or rewritten by other means is shaped by the same rule.
"""

from __future__ import annotations

from dataclasses import replace

from cnndsl.ir import Graph, Layer, map_layers, shapes_of
from cnndsl.ops import OPS
from cnndsl.ops.errors import ShapeError
from cnndsl.source import Diagnostic, error


def infer_shapes(g: Graph) -> Graph:
    """Return a copy of g with `shape` set on every layer; CnnError on a bad shape."""

    def shaped(layer: Layer, ins: list[Layer]) -> Layer:
        try:
            shape = tuple(OPS[layer.op].shape(layer.attrs, *shapes_of(ins)))
        except ShapeError as exc:
            notes = [f"working: {exc.working}"] if exc.working else []
            raise error("E041", exc.message, layer.span, *notes) from None
        return replace(layer, shape=shape)

    return map_layers(g, shaped)


def unread_pixel_warnings(g: Graph) -> list[Diagnostic]:
    """Warnings where (N - F + 2P) is not a multiple of S: the last rows are never read.

    Only for sliding-window layers (`Op.geometry`) whose windows are at least as
    wide as their stride (narrower ones skip rows by design, as a strided 1×1
    projection does), and not where the rows left unread are all zero padding
    added just before (`Op.zero_border`: a zeropad).
    """
    out = []
    for layer in g:
        if not layer.inputs or any(g[p].shape is None for p in layer.inputs):
            continue
        source = g[layer.inputs[0]]
        geo = OPS[layer.op].geometry(layer.attrs, *shapes_of([g[p] for p in layer.inputs]))
        if geo is None:
            continue
        # Zero rows/columns a zeropad put at the bottom/right of this layer's input.
        border = OPS[source.op].zero_border(source.attrs)
        trailing = (border[0][1], border[1][1]) if border else (0, 0)
        unread = []
        working = []
        for axis, name in ((0, "rows"), (1, "columns")):
            f, s, left = geo.effective[axis], geo.stride[axis], geo.unread[axis]
            if left and f >= s and left > trailing[axis]:
                unread.append(f"{left} {name}")
                before, after = geo.pads[axis]
                pad = f"2·{before}" if before == after else f"{before}+{after}"
                working.append(f"({geo.size[axis]} - {f} + {pad}) % {s} = {left}")
        if unread:
            stride = geo.stride
            out.append(
                Diagnostic(
                    "warning",
                    "W001",
                    f"{layer.op} never reads the last {' and '.join(unread)} of its input:"
                    f" the windows of stride {stride[0] if stride[0] == stride[1] else stride}"
                    " do not reach the end",
                    layer.span,
                    (
                        f"working: {'; '.join(working)}",
                        f"note: layer '{layer.path}'; padding=same would read them",
                    ),
                )
            )
    return out
