"""Checkpoint contents: the schema a checkpoint must meet before any of it is used.

Input: a checkpoint's JSON metadata (already decoded) and its arrays. Output:
`Meta`, every field typed and in range, and `Restorable`, the arrays a model
takes (weights and optimizer slots of its shapes, finite; the epoch's order).
Raises `BadCheckpoint`, naming the first field that is wrong, for anything a
damaged or hand-edited file can hold: a missing field, a wrong type, a count
that is not a whole number (an epoch of 1e999), a generator state NumPy
refuses, a fingerprint that does not hash to its `spec_hash`, a missing,
misshapen, non-float or non-finite weight or slot, an order that indexes
outside the data. `cnndsl.training.checkpoint` sets such a file aside and
resumes from the one before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cnndsl.training.model import Model

# Epochs, batches, steps, samples and iterations are whole numbers up to this:
# the largest JSON (a float64) keeps exactly, and far beyond any real run.
MAX_COUNT = 2**53

# Slots that are running averages of squares (Adam's v, RMSprop's rms): a
# negative value there is damage, and would be NaN at the next step's sqrt.
SQUARE_SLOTS = frozenset({"v", "rms"})

LAYER_KEYS = frozenset({"path", "op", "label", "attrs", "inputs", "weights", "trainable"})


class BadCheckpoint(ValueError):
    """A checkpoint that does not meet the schema; the message names the field and the problem."""


class MissingArray(BadCheckpoint):
    """A checkpoint without an array the model needs (an incomplete checkpoint)."""


@dataclass(frozen=True)
class Meta:
    """A checkpoint's metadata, checked: every field the resume reads, typed."""

    spec_hash: str
    layers: list[dict[str, Any]]
    epoch: int
    batch: int
    step: int
    sums: dict[str, float]
    counts: dict[str, int]
    history_epoch: list[int]
    history: dict[str, list[float]]
    rng_host: Any
    rng_device: Any
    optimizer: dict[str, Any]
    iterations: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Restorable:
    """The arrays a resume assigns, checked against the model: host arrays, float, finite."""

    weights: dict[str, np.ndarray]
    slots: dict[str, np.ndarray]  # 'slot/key' -> array, as Optimizer.load_state_dict takes
    order: np.ndarray | None


# ---- the metadata ----


def check_meta(meta: dict[str, Any]) -> Meta:
    """Every field of decoded metadata checked; BadCheckpoint names the first wrong one."""
    layers = [
        _layer(v, f"layers[{i}]") for i, v in enumerate(_items(_get(meta, "layers"), "layers"))
    ]
    spec_hash = _text(_get(meta, "spec_hash"), "spec_hash")
    sums = {k: _number(v, f"sums.{k}") for k, v in _table(_get(meta, "sums"), "sums").items()}
    counts = {
        k: _whole(v, f"counts.{k}") for k, v in _table(_get(meta, "counts"), "counts").items()
    }
    if set(sums) != set(counts) or "loss" not in sums:
        raise BadCheckpoint("sums and counts must name the same values, loss among them")
    history = _table(_get(meta, "history"), "history")
    per_epoch = _table(_get(history, "history", "history"), "history.history")
    rng = _table(_get(meta, "rng"), "rng")
    optimizer = _table(_get(meta, "optimizer"), "optimizer")
    config = _table(_get(optimizer, "config", "optimizer"), "optimizer.config")
    for key, value in config.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise BadCheckpoint(f"optimizer.config.{key} must be a number or text")
    _text(_get(config, "name", "optimizer.config"), "optimizer.config.name")
    data = _table(_get(meta, "data"), "data")
    for key in ("samples", "batch_size"):
        if key in data:
            _whole(data[key], f"data.{key}")
    if "labels" in data:
        _text(data["labels"], "data.labels")
    batch = _whole(_get(meta, "batch"), "batch")
    if batch > 0:  # NOTE: continuing within an epoch needs its batch size and sample count
        _get(data, "batch_size", "data")
        _get(data, "samples", "data")
    return Meta(
        spec_hash=spec_hash,
        layers=layers,
        epoch=_whole(_get(meta, "epoch"), "epoch"),
        batch=batch,
        step=_whole(_get(meta, "step"), "step"),
        sums=sums,
        counts=counts,
        history_epoch=[
            _whole(v, "history.epoch[]")
            for v in _items(_get(history, "epoch", "history"), "history.epoch")
        ],
        history={
            k: [_number(v, f"history.{k}[]", finite=False) for v in _items(vs, f"history.{k}")]
            for k, vs in per_epoch.items()
        },
        rng_host=_get(rng, "host", "rng"),
        rng_device=_get(rng, "device", "rng"),
        optimizer=config,
        iterations=_whole(_get(optimizer, "iterations", "optimizer"), "optimizer.iterations"),
        data=data,
    )


def check_rng_state(state: Any, rng: Any, field: str) -> None:
    """BadCheckpoint unless a generator like `rng` accepts `state` (None: nothing to restore)."""
    if state is None or not hasattr(rng, "bit_generator"):
        return
    scratch = type(rng.bit_generator)()
    try:
        scratch.state = state
    except (TypeError, ValueError, KeyError, OverflowError, IndexError, AttributeError) as e:
        raise BadCheckpoint(f"{field} is not a state of {type(scratch).__name__} ({e})") from None


def _layer(value: Any, field: str) -> dict[str, Any]:
    layer = _table(value, field)
    if set(layer) != LAYER_KEYS:
        raise BadCheckpoint(f"{field} must have exactly the keys {', '.join(sorted(LAYER_KEYS))}")
    for key in ("path", "op", "label"):
        _text(layer[key], f"{field}.{key}")
    for key, text in _table(layer["attrs"], f"{field}.attrs").items():
        _text(text, f"{field}.attrs.{key}")
    for i, name in enumerate(_items(layer["inputs"], f"{field}.inputs")):
        _text(name, f"{field}.inputs[{i}]")
    for key, shape in _table(layer["weights"], f"{field}.weights").items():
        for d in _items(shape, f"{field}.weights.{key}"):
            _whole(d, f"{field}.weights.{key}[]")
    if not isinstance(layer["trainable"], bool):
        raise BadCheckpoint(f"{field}.trainable must be true or false")
    return layer


def _get(table: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in table:
        raise BadCheckpoint(f"{where + '.' if where else ''}{key} is missing")
    return table[key]


def _whole(value: Any, field: str, top: int = MAX_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= top:
        raise BadCheckpoint(f"{field} must be a whole number 0..{top}, found {_brief(value)}")
    return value


def _number(value: Any, field: str, finite: bool = True) -> float:
    try:
        number = float(value) if type(value) in (int, float) else None
    except OverflowError:  # an integer of 400 digits
        number = None
    if number is None or (finite and not math.isfinite(number)):
        kind = "a finite number" if finite else "a number"
        raise BadCheckpoint(f"{field} must be {kind}, found {_brief(value)}")
    return number


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadCheckpoint(f"{field} must be text, found {_brief(value)}")
    return value


def _table(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadCheckpoint(f"{field} must be an object, found {_brief(value)}")
    return value


def _items(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadCheckpoint(f"{field} must be a list, found {_brief(value)}")
    return value


def _brief(value: Any) -> str:
    """A value for a message: scalars shown (cut short), containers named, never recursed into."""
    if isinstance(value, (dict, list)):
        return f"a{'n object' if isinstance(value, dict) else ' list'}"
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return text if len(text) <= 40 else text[:37] + "..."


# ---- the arrays ----


def check_arrays(model: Model, meta: Meta, stored: dict[str, np.ndarray]) -> Restorable:
    """The weights, slots and order a resume assigns, each checked against `model`."""
    weights = {key: _array(stored, f"weights/{key}", key, model) for key in model.specs}
    same_optimizer = meta.optimizer.get("name") == model.optimizer.name
    slots = {}
    for name in stored:
        if not name.startswith("optimizer/"):
            continue
        slot, _, key = name[len("optimizer/") :].partition("/")
        if key not in model.specs or (same_optimizer and slot not in model.optimizer.slots):
            raise BadCheckpoint(f"{name} is no slot of this network's {meta.optimizer['name']}")
        value = _array(stored, name, key, model)
        if slot in SQUARE_SLOTS and (value < 0).any():
            raise BadCheckpoint(f"{name} holds negative values; it is a running mean of squares")
        slots[f"{slot}/{key}"] = value
    order = None
    if meta.batch > 0:
        order = _order(stored, meta)
    return Restorable(weights, slots if same_optimizer else {}, order)


def _array(stored: dict[str, np.ndarray], name: str, key: str, model: Model) -> np.ndarray:
    if name not in stored:
        raise MissingArray(f"'{name}' is missing")
    value = stored[name]
    want = model.specs[key].shape
    if tuple(value.shape) != tuple(want) or value.dtype.kind != "f":
        raise BadCheckpoint(
            f"{name} is {value.dtype} {list(value.shape)}; this network's is float {list(want)}"
        )
    if not np.isfinite(value).all():
        raise BadCheckpoint(f"{name} holds NaN or infinite values")
    return value.astype(model.dtype, copy=False)


def _order(stored: dict[str, np.ndarray], meta: Meta) -> np.ndarray:
    """The interrupted epoch's sample order: a list of sample indices the batch position fits."""
    if "order" not in stored:
        raise MissingArray("'order' is missing from a checkpoint within an epoch")
    order = stored["order"]
    samples = meta.data.get("samples", len(order))
    if order.ndim != 1 or order.dtype.kind not in "iu" or len(order) != samples:
        raise BadCheckpoint(
            f"order must be {samples} sample indices, found {order.dtype} {list(order.shape)}"
        )
    if len(order) and (order.min() < 0 or order.max() >= samples):
        raise BadCheckpoint(f"order holds sample indices outside 0..{samples - 1}")
    batch_size = meta.data.get("batch_size")
    if batch_size is not None and not 0 < meta.batch * batch_size < len(order):
        raise BadCheckpoint(
            f"batch {meta.batch} of size {batch_size} is past the epoch's {len(order)} samples"
        )
    return order.astype(np.int64)


__all__ = [
    "MAX_COUNT",
    "BadCheckpoint",
    "Meta",
    "MissingArray",
    "Restorable",
    "check_arrays",
    "check_meta",
    "check_rng_state",
]
