"""Training curves: a history JSON -> loss and metrics per epoch, training and validation.

Input: a dict of per-epoch lists as Keras' `history.history` holds them
(`{"loss": [...], "accuracy": [...], "val_loss": [...], ...}`), or the same
wrapped as `{"history": {...}}` (what `History.to_json()` and `cnndsl run`
write, optionally with an "epoch" list). Output: a matplotlib figure with one
panel per quantity, the `val_` series drawn beside its training series.
Raises PlotError for a file that is not such a history.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnndsl.formats.files import open_regular  # noqa: E402
from cnndsl.plot.errors import PlotError  # noqa: E402

TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#ff7f0e"


def parse_history(
    data: Any, where: str = "the history"
) -> tuple[dict[str, list[float]], list[int] | None]:
    """Per-epoch series by name and the epoch numbers (if given), from loaded JSON."""
    epochs = None
    if isinstance(data, dict) and isinstance(data.get("history"), dict):
        raw_epochs = data.get("epoch")
        if isinstance(raw_epochs, list) and all(isinstance(e, int) for e in raw_epochs):
            epochs = [e + 1 for e in raw_epochs]  # Keras counts epochs from 0
        data = data["history"]
    if not isinstance(data, dict) or not data:
        raise PlotError(
            f"{where} is not a training history: expected a JSON object of"
            ' per-epoch lists like {"loss": [...], "val_loss": [...]}'
        )
    series: dict[str, list[float]] = {}
    for name, values in data.items():
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in values
        ):
            raise PlotError(f"{where}: '{name}' is not a list of numbers")
        series[str(name)] = [math.nan if v is None else float(v) for v in values]
    if not any(series.values()):
        raise PlotError(f"{where} has no epochs")
    if epochs is not None and len(epochs) != max(len(v) for v in series.values()):
        epochs = None
    return series, epochs


class HistoryFile(NamedTuple):
    """A history JSON as read: per-epoch series, epoch numbers, the network it trained."""

    series: dict[str, list[float]]
    epochs: list[int] | None
    network: str | None  # `cnndsl run --history` records it; a bare history has none


def load_history(path: str | os.PathLike[str]) -> HistoryFile:
    """Read a history JSON file; PlotError when it can't be read or isn't one."""
    path = os.fspath(path)
    try:
        with open_regular(path) as f:  # a FIFO would hang the read
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise PlotError(f"no such file: '{path}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"cannot read '{path}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise PlotError(f"'{path}' is not valid JSON: {exc}") from None
    except RecursionError:  # brackets nested thousands deep: no history looks like that
        raise PlotError(
            f"'{path}' is not a training history: its JSON nests too deeply to read"
        ) from None
    series, epochs = parse_history(data, f"'{path}'")
    network = data.get("spec") if isinstance(data, dict) else None
    return HistoryFile(series, epochs, network if isinstance(network, str) else None)


def panels(series: dict[str, list[float]]) -> list[tuple[str, str | None]]:
    """(training name, validation name or None) per panel; loss first, then the metrics."""
    names = [n for n in series if not n.startswith("val_")]
    names += [n[4:] for n in series if n.startswith("val_") and n[4:] not in series]
    names.sort(key=lambda n: (n != "loss", list(series).index(n) if n in series else 0))
    return [(n, f"val_{n}" if f"val_{n}" in series else None) for n in names]


def draw_history(
    series: dict[str, list[float]], epochs: list[int] | None = None, title: str = ""
) -> Figure:
    """One panel per quantity: training (solid) and validation (dashed) against epoch."""
    pairs = panels(series)
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, layout="constrained"
    )
    for ax, (name, val) in zip(axes.flat, pairs, strict=False):
        for key, colour, style, label in (
            (name, TRAIN_COLOUR, "-", "training"),
            (val, VAL_COLOUR, "--", "validation"),
        ):
            if key is None or key not in series:
                continue
            ys = series[key]
            xs = epochs if epochs and len(epochs) == len(ys) else list(range(1, len(ys) + 1))
            ax.plot(
                xs,
                ys,
                style,
                color=colour,
                marker="o" if len(ys) <= 30 else None,
                markersize=3,
                label=label,
            )
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (closes it)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()
