"""A .npz file of arrays: x and y, or x_train, y_train, x_test and y_test.

y holds class indices: one per sample [N], or one per output position, e.g.
[N, h, w] for a network whose output is [h, w, classes] (segmentation); which
one the network needs is checked against it later (dataset.check).

A network with several outputs reads one label array per output, named by the
output (its layer path; `/` written `.`): `y_<output>` beside `x`
(e.g. y_classes, y_box), or `y_train_<output>` and `y_test_<output>` beside
x_train and x_test; `y0, y1, ...` (and y_train0, y_test0, ...) number them in
return order instead. Labels keep their dtype: class numbers or float targets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.formats.data.dataset import (
    DataError,
    Dataset,
    as_images,
    as_labels,
    class_names_of,
    split,
)
from cnndsl.formats.npz import NpzProblem, read_arrays


def _npz_message(path: Path, problem: NpzProblem) -> str:
    """What is wrong with a data .npz, and how to write one that works."""
    messages = {
        "unreadable": f"{path}: cannot read it ({problem.detail})",
        "not_zip": f"{path}: not a readable .npz file (no zip header); write it with"
        " np.savez(path, x=images, y=labels)",
        "pickled": f"{path}: holds pickled Python objects, which cnndsl does not load (they"
        " can run code); save plain numeric arrays: np.savez(path, x=x.astype('float32'),"
        " y=y.astype('int64'))",
        "bad_value": f"{path}: not a readable .npz file: corrupt array header"
        f" ({problem.detail}); write it again with np.savez",
        "corrupt": f"{path}: not a readable .npz file: truncated or corrupt ({problem.detail});"
        " write it again with np.savez",
        "too_large": f"{path}: refused: {problem.detail}; save it uncompressed (np.savez)",
    }
    return messages[problem.kind]


def load_npz(path: str | os.PathLike[str], test_split: float = 0.2) -> Dataset:
    """Arrays x, y (split here) or x_train, y_train, x_test, y_test (Keras' mnist.npz)."""
    path = Path(path)
    try:
        stored = read_arrays(path)
    except NpzProblem as problem:
        raise DataError(_npz_message(path, problem)) from None
    if {"x_train", "y_train", "x_test", "y_test"} <= stored.keys():
        arrays = {k: stored[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    elif {"x", "y"} <= stored.keys():
        arrays = {"x": stored["x"], "y": stored["y"]}
    else:
        raise DataError(
            f"{path}: has arrays {', '.join(sorted(stored)) or '(none)'}; expected x and y"
            " (or x_train, y_train, x_test, y_test): np.savez(path, x=images, y=labels)"
        )
    where = str(path)
    if "x" in arrays:
        x, y = as_images(arrays["x"], where), as_labels(arrays["y"], where)
        if len(x) != len(y):
            raise DataError(
                f"{path}: x has {len(x)} samples but y has {len(y)} labels; give one label per"
                " sample"
            )
        x_train, y_train, x_test, y_test = split(x, y, test_split, where)
    else:
        x_train, y_train = as_images(arrays["x_train"], where), as_labels(arrays["y_train"], where)
        x_test, y_test = as_images(arrays["x_test"], where), as_labels(arrays["y_test"], where)
        for part, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
            if len(xs) != len(ys):
                raise DataError(
                    f"{path}: x_{part} has {len(xs)} samples but y_{part} has {len(ys)} labels"
                )
    return Dataset(path.name, x_train, y_train, x_test, y_test, class_names_of(y_train, y_test))


@dataclass
class OutputArrays:
    """Train and test images and, per output name, their labels (for several outputs)."""

    name: str
    x_train: Any
    y_train: dict[str, np.ndarray]
    x_test: Any
    y_test: dict[str, np.ndarray]
    class_names: list[str] = field(default_factory=list)
    augment: None = None  # NOTE: flips and crops would move boxes away from their labels


def _label_keys(stored: Mapping[str, np.ndarray], part: str, outputs: Sequence[str]) -> list[str]:
    """The keys holding each output's labels: y<part>_<output>, else y<part><number>."""
    named = [f"y{part}_{o.replace('/', '.')}" for o in outputs]
    numbered = [f"y{part}{i}" for i in range(len(outputs))]
    for keys in (named, numbered):
        if all(k in stored for k in keys):
            return keys
    return []


def load_output_arrays(
    path: str | os.PathLike[str], outputs: Sequence[str], test_split: float = 0.2
) -> OutputArrays:
    """A .npz with images and one label array per output (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(
            f"{path}: a network with {len(outputs)} outputs trains on a .npz with x and one"
            f" label array per output: {', '.join(_label_keys_hint(outputs))}"
        )
    try:
        stored = read_arrays(path)
    except NpzProblem as problem:
        raise DataError(_npz_message(path, problem)) from None
    where = str(path)
    whole, train, test = (_label_keys(stored, p, outputs) for p in ("", "_train", "_test"))
    if "x" in stored and whole:
        x = as_images(stored["x"], where)
        ys = [np.asarray(stored[k]) for k in whole]
        _same_count(path, "x", x, zip(whole, ys, strict=True))
        # NOTE: the split is drawn over sample indices, so every output's labels follow it.
        x_train, i_train, x_test, i_test = split(x, np.arange(len(x)), test_split, where)
        y_train = {o: y[i_train] for o, y in zip(outputs, ys, strict=True)}
        y_test = {o: y[i_test] for o, y in zip(outputs, ys, strict=True)}
    elif {"x_train", "x_test"} <= stored.keys() and train and test:
        x_train, x_test = as_images(stored["x_train"], where), as_images(stored["x_test"], where)
        y_train = {o: np.asarray(stored[k]) for o, k in zip(outputs, train, strict=True)}
        y_test = {o: np.asarray(stored[k]) for o, k in zip(outputs, test, strict=True)}
        _same_count(path, "x_train", x_train, zip(train, y_train.values(), strict=True))
        _same_count(path, "x_test", x_test, zip(test, y_test.values(), strict=True))
    else:
        raise DataError(
            f"{path}: has arrays {', '.join(sorted(stored)) or '(none)'}; a network with"
            f" outputs {', '.join(outputs)} needs x and one label array per output:"
            f" np.savez(path, x=images, {', '.join(f'{k}=...' for k in _label_keys_hint(outputs))})"
            " (or y0, y1, ... in return order; or x_train, x_test with y_train_<output>,"
            " y_test_<output>)"
        )
    return OutputArrays(path.name, x_train, y_train, x_test, y_test)


def _label_keys_hint(outputs: Sequence[str]) -> list[str]:
    return [f"y_{o.replace('/', '.')}" for o in outputs]


def _same_count(path: Path, x_key: str, x: Any, labels: Any) -> None:
    for key, y in labels:
        if len(y) != len(x):
            raise DataError(
                f"{path}: {x_key} has {len(x)} samples but {key} has {len(y)} labels; give one"
                " label per sample"
            )
