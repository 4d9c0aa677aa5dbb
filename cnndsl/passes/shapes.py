"""Shape inference: sets `Layer.shape` on every layer from its op's shape rule.

Reads op, attrs, inputs. Elaboration already computed shapes (the language
can read them); this pass recomputes them from the IR alone, so any graph
built or rewritten by other means is shaped by the same rule.
"""

from __future__ import annotations

from dataclasses import replace

from cnndsl.ir import Graph, Layer, map_layers, shapes_of
from cnndsl.ops import OPS
from cnndsl.ops.registry import ShapeError
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

    Only for windows at least as wide as their stride; narrower ones skip rows anyway.
    """
    out = []
    for layer in g:
        a = layer.attrs
        kernel = a.get("kernel", a.get("size"))
        stride = a.get("stride")
        padding = a.get("padding", "valid")
        if kernel is None or stride is None or padding == "same" or not layer.inputs:
            continue
        x = g[layer.inputs[0]].shape
        if x is None or len(x) != 3:
            continue
        dilation = a.get("dilation", (1, 1))
        pad = (0, 0) if padding == "valid" else padding
        for axis, name in ((0, "rows"), (1, "columns")):
            f = dilation[axis] * (kernel[axis] - 1) + 1
            span = x[axis] - f + 2 * pad[axis]
            # A window narrower than its stride skips rows by design (a strided 1×1
            # projection); only warn where windows tile the input and drop its end.
            if span >= 0 and span % stride[axis] and f >= stride[axis]:
                left = span % stride[axis]
                out.append(
                    Diagnostic(
                        "warning",
                        "W001",
                        f"{layer.op} never reads the last {left} {name} of its input:"
                        f" ({x[axis]} - {f} + 2·{pad[axis]}) is not a multiple of the stride"
                        f" {stride[axis]}",
                        layer.span,
                        (f"note: layer '{layer.path}'; padding=same would keep them",),
                    )
                )
    return out
