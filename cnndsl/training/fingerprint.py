"""Whose checkpoint is it: a network's fingerprint and the digest of the labels it trained on.

A checkpoint records both; resuming compares them, naming the first layers
that differ, so a checkpoint of another spec or other data is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.ir import Graph


def fingerprint(graph: Graph) -> list[dict[str, Any]]:
    """Per layer: path, op, label, attrs, inputs, weight shapes and trainable flag."""
    return [
        {
            "path": layer.path,
            "op": layer.op,
            "label": layer.label,
            "attrs": {k: repr(v) for k, v in sorted(layer.attrs.items())},
            "inputs": list(layer.inputs),
            "weights": {k: list(s.shape) for k, s in layer.weights.items()},
            "trainable": layer.trainable,
        }
        for layer in graph
    ]


def spec_hash(layers: list[dict[str, Any]]) -> str:
    """SHA-256 of a fingerprint: equal exactly when the networks are the same."""
    return hashlib.sha256(json.dumps(layers, sort_keys=True).encode()).hexdigest()


def differences(here: list[dict[str, Any]], there: list[dict[str, Any]], limit: int = 2) -> str:
    """The first differences between this network and a checkpoint's, in words.

    Layers added or removed come first, then changed labels, then other changes
    (which often only follow from the first ones).
    """
    mine = {d["path"]: d for d in here}
    theirs = {d["path"]: d for d in there}
    found = [
        f"layer {d['path']} ({d['label']}) is not in the checkpoint"
        for d in here
        if d["path"] not in theirs
    ]
    found += [
        f"the checkpoint has layer {d['path']} ({d['label']}), which this network lacks"
        for d in there
        if d["path"] not in mine
    ]
    details: list[str] = []
    for d in here:
        other = theirs.get(d["path"])
        if other is None or other == d:
            continue
        if other["label"] != d["label"]:
            found.append(
                f"layer {d['path']} is {d['label']} here but {other['label']} in the checkpoint"
            )
            continue
        keys = ("attrs", "inputs", "weights", "trainable", "op")
        what = next(k for k in keys if d[k] != other[k])
        details.append(
            f"layer {d['path']} has {what} {_show(d[what])} here but {_show(other[what])}"
            " in the checkpoint"
        )
    found += details
    if not found and [d["path"] for d in here] != [d["path"] for d in there]:
        found.append("the layers are in a different order")
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def labels_digest(y: np.ndarray | Sequence[np.ndarray]) -> str:
    """A short digest of the training labels: resuming on other data is refused.

    A list holds each output's labels: one gives the single output's digest;
    several are hashed together, float labels (boxes) by their values.
    """
    if isinstance(y, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()[:16]
    if len(y) == 1:
        return labels_digest(np.asarray(y[0]))
    h = hashlib.sha256()
    for y_i in y:
        y_i = np.asarray(y_i)
        kind = np.float64 if y_i.dtype.kind == "f" else np.int64
        h.update(str(y_i.shape).encode() + np.ascontiguousarray(y_i, dtype=kind).tobytes())
    return h.hexdigest()[:16]


# ---- writing ----
