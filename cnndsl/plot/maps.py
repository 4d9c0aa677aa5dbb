"""Feature maps and filters: run an image through a Model, draw what a layer sees.

Input: a Model (`Network.build`), an image file (any format Pillow reads, or
an `.npy` array) and a layer path. Output: matplotlib figures (Agg backend):
every channel of the layer's output as a grid, or a conv layer's kernels.
Images are converted to the network's input shape (grayscale or RGB,
resized to its height × width) and scaled to [0, 1], as Hands-On ML does
with `Rescaling(1 / 255)`; `.npy` arrays are taken as they are.
Raises PlotError for an unknown layer, an unreadable image, or `--filters`
on a layer without convolution kernels.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnndsl.formats.data import DataError  # noqa: E402
from cnndsl.formats.data.images import read_sample  # noqa: E402
from cnndsl.ir import Graph, Layer  # noqa: E402
from cnndsl.ops import OPS  # noqa: E402
from cnndsl.plot.diagram import shape_text  # noqa: E402
from cnndsl.plot.errors import PlotError  # noqa: E402
from cnndsl.runtime.executor import Executor, Observer  # noqa: E402
from cnndsl.runtime.lower import Step  # noqa: E402


def find_layer(g: Graph, path: str) -> Layer:
    """The layer at `path`; PlotError naming close paths when there is none."""
    if path in g:
        return g[path]
    paths = [layer.path for layer in g]
    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
    raise PlotError(
        f"no layer '{path}' in {g.meta.get('name', 'the network')}{hint}"
        f" (layers: {shown}; `cnndsl compile SPEC` lists them all)"
    )


def load_image(path: str | os.PathLike[str], shape: Sequence[int]) -> np.ndarray:
    """An image file or .npy array as one input of the given (h, w, c) shape, float32."""
    try:
        return np.asarray(read_sample(path, shape))
    except DataError as exc:
        raise PlotError(str(exc)) from None


class _Collect(Observer):
    """Host copies of the values of chosen steps; stops the run once it has them all."""

    def __init__(self, wanted: set[int], to_host: Callable[[Any], np.ndarray]) -> None:
        self.wanted = wanted
        self.to_host = to_host
        self.values: dict[int, np.ndarray] = {}

    def output(self, step: Step, value: Any) -> bool:
        if step.output in self.wanted:
            # NOTE: a copy: a later in-place step (relu) may overwrite the executor's array.
            self.values[step.output] = np.array(self.to_host(value))
        return len(self.values) == len(self.wanted)


def activations(model: Executor, x: np.ndarray, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs of the layers at `paths` for the batch `x` (inference mode, on the host).

    Runs the model's own plan with its current weights, up to the last of
    those layers (`Executor.observe`). A relu that lowering moved into its
    producer shows the producer's output, which is the activated value.
    """
    plan = model.plan
    if len(plan.inputs) != 1:
        raise PlotError("feature maps need a network with exactly one input")
    wanted = [plan.index(p) for p in paths]
    collect = _Collect(set(wanted), model.backend.to_host)
    model.observe(x, collect)
    return {p: collect.values[i] for p, i in zip(paths, wanted, strict=True)}


def feature_maps(model: Executor, image: np.ndarray, path: str) -> np.ndarray:
    """The output of layer `path` for one image (h, w, c) -> its maps (h', w', c')."""
    return activations(model, image[None], [path])[path][0]


def _grid(n: int, cell_aspect: float) -> tuple[int, int]:
    """Columns and rows for n cells of height/width `cell_aspect`: a roughly square grid."""
    cols = max(1, min(n, math.ceil(math.sqrt(n * cell_aspect))))
    return cols, math.ceil(n / cols)


def mosaic(
    cells: np.ndarray, cols: int, pad: int = 1, fill: float = np.nan, top: int = 0
) -> np.ndarray:
    """Tile cells (n, h, w) or (n, h, w, 3) into one image, `pad` pixels apart.

    `top` blank rows above each cell leave room for its number (`_label_cells`).
    """
    n, h, w = cells.shape[:3]
    rows = math.ceil(n / cols)
    extra = cells.shape[3:]
    tall = h + top + pad
    out = np.full((rows * tall - pad, cols * (w + pad) - pad, *extra), fill, np.float64)
    for i in range(n):
        r, c = divmod(i, cols)
        y = r * tall + top
        out[y : y + h, c * (w + pad) : c * (w + pad) + w] = cells[i]
    return out


def label_band(h: int, n: int) -> int:
    """Blank rows above each cell for its number: none past 64 cells (they go unnumbered)."""
    return 0 if n > 64 else max(1, round(0.15 * h))


def _normalise(cells: np.ndarray) -> np.ndarray:
    """Each cell scaled to [0, 1] on its own (a flat cell, e.g. a dead ReLU, becomes 0)."""
    axes = tuple(range(1, cells.ndim))
    lo = cells.min(axis=axes, keepdims=True)
    hi = cells.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (cells - lo) / span, 0.0)


def draw_feature_maps(
    maps: np.ndarray, title: str = "", cmap: str = "gray", max_channels: int | None = None
) -> Figure:
    """Every channel of maps (h, w, c) as a grid, each scaled to its own range."""
    if maps.ndim == 1:
        fig, ax = plt.subplots(figsize=(min(16, 4 + maps.size * 0.08), 3), layout="constrained")
        ax.bar(np.arange(maps.size), maps, color="#3d85c6")
        ax.set_xlabel("unit")
        ax.set_ylabel("activation")
        ax.set_title(title, fontsize=10)
        return fig
    if maps.ndim != 3:
        raise PlotError(f"cannot draw an output of shape {list(maps.shape)} as feature maps")
    h, w, c = maps.shape
    n = c if max_channels is None else min(c, max_channels)
    cells = np.moveaxis(maps[..., :n], -1, 0).astype(np.float64)
    cols, rows = _grid(n, h / w)
    pad = max(1, round(max(h, w) / 40))
    top = label_band(h, n)
    image = mosaic(_normalise(cells), cols, pad, top=top)
    width = min(16.0, max(4.0, cols * min(6.0, 16.0 / cols)))
    height = width * image.shape[0] / image.shape[1] + 0.6
    fig, ax = plt.subplots(figsize=(width, min(height, 40.0)), layout="constrained")
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    ax.imshow(
        np.ma.masked_invalid(image),
        cmap=colours,
        vmin=0,
        vmax=1,
        interpolation="nearest" if max(h, w) <= 64 else "antialiased",
    )
    ax.set_axis_off()
    _label_cells(ax, n, cols, h, w, pad, top)
    shown = f"channels 0–{n - 1} of {c}" if n < c else f"{c} channel{'s' if c != 1 else ''}"
    ax.set_title(f"{title}\n{shown}, each scaled to its own range" if title else shown, fontsize=10)
    return fig


def require_kernel(layer: Layer) -> str:
    """The name of the layer's spatial kernel weight; PlotError unless it is a conv layer."""
    kernel = OPS[layer.op].drawn_kernel
    if kernel is None:
        drawn = sorted(name for name, op in OPS.items() if op.drawn_kernel)
        raise PlotError(
            f"'{layer.path}' is a {layer.op} layer ({layer.label}); --filters"
            f" draws the kernels of {', '.join(drawn)} layers"
        )
    return kernel


def conv_kernel(layer: Layer, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The spatial kernel [fh, fw, in, out] of a conv-family layer; PlotError for others."""
    return np.asarray(weights[require_kernel(layer)])


def draw_filters(
    kernel: np.ndarray, title: str = "", max_filters: int = 64, max_inputs: int = 16
) -> Figure:
    """A conv kernel [fh, fw, in, out] as pictures: one cell per filter, or filter × input.

    With 3 input channels each filter is one colour image (scaled on its own);
    with 1 input channel, a grid of filters; otherwise rows are filters and
    columns input channels. Single-channel cells share one symmetric
    blue-white-red scale, so signs and sizes compare across cells.
    """
    fh, fw, cin, cout = kernel.shape
    n = min(cout, max_filters)
    note = f"first {n} of {cout} filters" if n < cout else f"{cout} filter{'s' * (cout != 1)}"
    if cin == 3:
        cells = np.moveaxis(kernel[..., :n], -1, 0).astype(np.float64)  # (n, fh, fw, 3)
        cols, rows = _grid(n, fh / fw)
        top = label_band(fh, n)
        image = mosaic(_normalise(cells), cols, 1, fill=1.0, top=top)
        fig, ax = plt.subplots(figsize=_fig_size(image, 1.1 * cols), layout="constrained")
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        _label_cells(ax, n, cols, fh, fw, 1, top)
        ax.set_title(f"{title}\n{note}, {fh}×{fw}×3 shown as RGB", fontsize=10)
        return fig
    if cin == 1:
        cells = np.moveaxis(kernel[:, :, 0, :n], -1, 0)
        cols, _ = _grid(n, fh / fw)
        k, top = 1, label_band(fh, n)
    else:
        k = min(cin, max_inputs)
        cells = np.transpose(kernel[:, :, :k, :n], (3, 2, 0, 1)).reshape(n * k, fh, fw)
        cols, top = k, 0  # rows and columns are numbered on the axes instead
    image = mosaic(cells.astype(np.float64), cols, 1, top=top)
    limit = float(np.nanmax(np.abs(image))) or 1.0
    # NOTE: the colour bar takes ~1.5 in of the width, not of the mosaic's.
    fig, ax = plt.subplots(
        figsize=_fig_size(image, 1.0 * cols + 1.5, beside=1.5), layout="constrained"
    )
    colours = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    shown = ax.imshow(
        np.ma.masked_invalid(image), cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest"
    )
    if cin == 1:
        ax.set_axis_off()
        _label_cells(ax, n, cols, fh, fw, 1, top)
    else:
        ax.set_xticks(
            [(fw + 1) * j + (fw - 1) / 2 for j in range(k)], [str(j) for j in range(k)], fontsize=7
        )
        ax.set_yticks(
            [(fh + 1) * i + (fh - 1) / 2 for i in range(n)], [str(i) for i in range(n)], fontsize=7
        )
        ax.set_xlabel("input channel" + (f" (first {k} of {cin})" if k < cin else ""))
        ax.set_ylabel("filter")
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.colorbar(shown, ax=ax, shrink=0.6)
    ax.set_title(f"{title}\n{note}, {fh}×{fw}×{cin} kernels", fontsize=10)
    return fig


def _fig_size(image: np.ndarray, width: float, beside: float = 0.0) -> tuple[float, float]:
    """Figure inches for a mosaic: `width` wide (clamped), height by aspect, plus a title.

    `beside`: inches of the width that go to something next to the mosaic (a colour bar).
    """
    width = min(14.0, max(4.0, width))
    shown = max(1.0, width - beside)
    return width, min(30.0, max(2.5, shown * image.shape[0] / image.shape[1] + 0.8))


def _label_cells(ax: Any, n: int, cols: int, h: int, w: int, pad: int = 1, top: int = 1) -> None:
    """Number the cells of a mosaic in the blank band above each (up to 64 of them).

    NOTE: above the cell, never on it: a badge on the cell hides its top-left value.
    """
    if n > 64 or top < 1:
        return
    size = max(6.0, min(9.0, 54.0 / cols))
    for i in range(n):
        r, c = divmod(i, cols)
        ax.text(
            c * (w + pad) - 0.5,
            r * (h + top + pad) + top - 0.5,
            str(i),
            color="#333333",
            fontsize=size,
            va="bottom",
            ha="left",
        )


def layer_title(layer: Layer) -> str:
    """'path · label → shape', the heading of a layer's pictures."""
    return f"{layer.path} · {layer.label} → {shape_text(layer.shape)}"


def save(fig: Figure, out: str | os.PathLike[str], dpi: int = 100) -> None:
    """Write a figure (format from the file name: .png, .svg, .pdf) and close it."""
    try:
        fig.savefig(os.fspath(out), dpi=dpi)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write '{os.fspath(out)}': {exc}") from None
    finally:
        plt.close(fig)
