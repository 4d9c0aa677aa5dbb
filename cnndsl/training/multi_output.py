"""Several outputs, Keras' way: one value for every output, a list in return order, or a dict.

A network that returns several tensors takes a loss, a loss weight, metrics
and labels per output; each may be given once (for every output), as a list
in the order the network returns them, or as a dict by output name. The
helpers here spread such a value over the outputs or refuse it, naming them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnndsl.runtime.errors import ModelError
from cnndsl.training.losses import Loss, get_metric


def output_names_of(paths: list[str]) -> list[str]:
    """One name per output, as History's keys and dict labels name them.

    The block call or layer that holds each output (`aux1` for `aux1/linear`)
    where those are all different, as Keras names outputs by their layer; else
    the layer paths.
    """
    tops = [path.split("/", 1)[0] for path in paths]
    return tops if len(set(tops)) == len(tops) else list(paths)


def spread(names: Sequence[str], value: Any, what: str) -> list[Any]:
    """`value` spread over the outputs: a list in return order, or a dict by output name."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ModelError(
                f"{what}: no output named {', '.join(map(repr, unknown))};"
                f" the outputs are {', '.join(names)}"
            )
        return [value.get(name) for name in names]
    if len(value) != len(names):
        raise ModelError(
            f"{what}: {len(value)} given for {len(names)} outputs ({', '.join(names)});"
            " give one per output, in return order, or a dict by output name"
        )
    return list(value)


def weights_per_output(names: Sequence[str], weights: Any) -> list[float]:
    """One loss weight per output from a list or a dict (missing: 1); None: all 1."""
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, (int, float)):
        weights = [weights]
    chosen = spread(names, weights, "loss_weights")
    out = [1.0 if w is None else float(w) for w in chosen]
    if not all(np.isfinite(w) and w >= 0 for w in out):
        raise ModelError(f"loss_weights must be finite numbers >= 0, not {out}")
    return out


def metrics_per_output(
    names: Sequence[str], losses: Sequence[Loss], metrics: Any
) -> list[list[str]]:
    """Each output's metrics: a list applies to every output, a dict names them per
    output; None: accuracy for each output trained with a cross-entropy loss."""
    if metrics is None:
        return [["accuracy"] if "crossentropy" in loss.name else [] for loss in losses]
    if isinstance(metrics, Mapping):
        chosen = spread(names, metrics, "metrics")
        return [known_metrics(m) if m is not None else [] for m in chosen]
    return [known_metrics(metrics) for _ in names]


def label_list(names: Sequence[str], y: Any) -> list[np.ndarray]:
    """Each output's labels as a host array: y itself for one output; for several, a
    list or tuple in return order, or a dict by output name."""
    if len(names) == 1:
        if isinstance(y, Mapping):
            return [np.asarray(spread(names, y, "labels")[0])]
        return [np.asarray(y)]
    if isinstance(y, np.ndarray) or not isinstance(y, (Mapping, list, tuple)):
        raise ModelError(
            f"the network has {len(names)} outputs ({', '.join(names)}): give their"
            " labels as a list or tuple in return order, or a dict by output name"
        )
    ys = spread(names, y, "labels")
    missing = [name for name, v in zip(names, ys, strict=True) if v is None]
    if missing:
        raise ModelError(f"labels: none given for output {', '.join(missing)}")
    return [np.asarray(v) for v in ys]


def known_metrics(names: Sequence[str] | str) -> list[str]:
    """The metric names as a list; LossError for one that is unknown (at compile, not in fit)."""
    if isinstance(names, str):
        names = [names]
    for name in names:
        get_metric(name)
    return list(names)
