"""Rendering: a Diagram -> SVG, PNG or PDF bytes via Graphviz's `dot`, or its DOT source.

The format comes from the output file's suffix. Without `dot` on PATH,
`render` writes the `.dot` source beside the requested file and raises
PlotError saying how to install Graphviz; a `.dot` request needs nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from cnndsl.plot.diagram import Diagram
from cnndsl.plot.errors import PlotError

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = (
    "Graphviz's `dot` program is not installed; install it with"
    " `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS)"
    " or `conda install graphviz`"
)


def output_format(path: str | Path) -> str:
    """The format a file name asks for: svg, png, pdf or dot; PlotError otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix == "gv":
        suffix = "dot"
    if suffix not in FORMATS:
        raise PlotError(
            f"cannot tell the format of '{path}': use a name ending in"
            f" {', '.join('.' + f for f in FORMATS)} (or .html for a report)"
        )
    return suffix


def have_dot() -> bool:
    """Whether Graphviz's `dot` program is on PATH."""
    return shutil.which("dot") is not None


def pipe(d: Diagram, fmt: str, dpi: int = 96) -> bytes:
    """The diagram rendered by `dot` as bytes (svg, png or pdf); PlotError without dot."""
    if fmt == "dot":
        return d.source.encode("utf-8")
    src = d.dot.copy()
    if fmt == "png":
        src.attr(dpi=str(dpi))
    try:
        return bytes(src.pipe(format=fmt, quiet=True))
    except graphviz.ExecutableNotFound:
        raise PlotError(INSTALL_HINT) from None
    except graphviz.CalledProcessError as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        raise PlotError(f"dot failed: {err.strip() or exc}") from None


def render(d: Diagram, out: str | Path, dpi: int = 96) -> Path:
    """Write the diagram to `out` in the format its suffix names; returns the path written.

    Without `dot`, writes the DOT source beside `out` (same name, `.dot`) and
    raises PlotError saying how to install Graphviz and where the source went.
    """
    out = Path(out)
    fmt = output_format(out)
    if fmt != "dot" and not have_dot():
        beside = out.with_suffix(".dot")
        beside.write_text(d.source, encoding="utf-8")
        raise PlotError(
            f"{INSTALL_HINT}; wrote the Graphviz source to {beside}"
            f" (render it later with `dot -T{fmt} {beside} -o {out}`)"
        )
    data = pipe(d, fmt, dpi)
    out.write_bytes(data)
    return out
