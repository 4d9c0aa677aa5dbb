"""Pictures of a network: architecture diagrams, feature maps, filters, training curves.

    >>> import cnndsl
    >>> from cnndsl.plot import draw, render
    >>> net = cnndsl.compile("specs/resnet34.cnn")       # doctest: +SKIP
    >>> render(draw(net.graph, depth=1), "resnet34.svg")  # doctest: +SKIP

Modules: `diagram` (the layout as Graphviz DOT), `rendering` (DOT -> SVG,
PNG, PDF with `dot`), `maps` (feature maps and filters, matplotlib),
`curves` (training history), `report` (one self-contained HTML page).
Every user-facing problem raises `PlotError`.
"""

from cnndsl.plot.diagram import Diagram, draw, shape_text
from cnndsl.plot.errors import PlotError
from cnndsl.plot.rendering import output_format, render

__all__ = ["Diagram", "PlotError", "draw", "output_format", "render", "shape_text"]
