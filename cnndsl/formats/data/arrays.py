"""A .npz file of arrays: x and y, or x_train, y_train, x_test and y_test."""

from __future__ import annotations

import os
from pathlib import Path

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
