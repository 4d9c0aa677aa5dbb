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

    Only for windows at least as wide as their stride (narrower ones skip rows
    by design, as a strided 1×1 projection does), and not where the rows left
    unread are all zero padding added by a `zeropad` just before.
    """
    out = []
    for layer in g:
        a = layer.attrs
        kernel = a.get("kernel", a.get("size"))
        stride = a.get("stride")
        padding = a.get("padding", "valid")
        if kernel is None or stride is None or padding == "same" or not layer.inputs:
            continue
        source = g[layer.inputs[0]]
        x = source.shape
        if x is None or len(x) != 3:
            continue
        dilation = a.get("dilation", (1, 1))
        pad = (0, 0) if padding == "valid" else padding
        # Zero rows/columns a zeropad put at the bottom/right of this layer's input.
        trailing = (
            (source.attrs["padding"][0][1], source.attrs["padding"][1][1])
            if (source.op == "zeropad")
            else (0, 0)
        )
        unread = []
        working = []
        for axis, name in ((0, "rows"), (1, "columns")):
            f = dilation[axis] * (kernel[axis] - 1) + 1
            span = x[axis] - f + 2 * pad[axis]
            left = span % stride[axis] if span >= 0 else 0
            if left and f >= stride[axis] and left > trailing[axis]:
                unread.append(f"{left} {name}")
                working.append(f"({x[axis]} - {f} + 2·{pad[axis]}) % {stride[axis]} = {left}")
        if unread:
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
