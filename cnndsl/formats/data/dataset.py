"""Data sets in memory: the Dataset every loader returns, and the checks they share.

Images become float32 in [0, 1] (uint8 ones stay compact in `Images`). Sets
without their own test split get a stratified one with a fixed seed, so the
test set never depends on --seed. Every problem raises DataError with the
file, the problem and the fix; the CLI prints it as `error: ...`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Shape = tuple[int, ...]

SPLIT_SEED = 0  # the test split never moves with the training seed

# Labels are class indices 0..K-1 with K at most this (ImageNet-21k has 21,841
# classes). Counting classes allocates per class, so a label of 2**40 in a
# damaged file is refused here, before anything is counted.
MAX_CLASSES = 100_000


class DataError(Exception):
    """Data that cannot be used: names the file, the problem and the fix."""


class Images:
    """uint8 images held compactly, read as float32 in [0, 1] one batch at a time.

    Indexing with an index array or slice gives float32 arrays, so `Model.fit`
    treats it like any array; a 3670-image 224×224 folder stays 550 MB, not 2.2 GB.
    """

    def __init__(self, pixels: np.ndarray) -> None:
        assert pixels.dtype == np.uint8
        self.pixels = pixels

    @property
    def shape(self) -> Shape:
        return tuple(self.pixels.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self.pixels.ndim

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.pixels[index].astype(np.float32) * np.float32(1 / 255)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, index: np.ndarray) -> Images:
        """The images at `index`, still compact."""
        return Images(self.pixels[index])


@dataclass
class Dataset:
    """Train and test arrays (NHWC float32, int64 labels) plus where they came from."""

    name: str
    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name}: train {list(self.x_train.shape)}, "
            f"test {list(self.x_test.shape)}, {len(self.class_names)} classes)"
        )


# ---- checking against the network ----


def check(
    ds: Dataset,
    input_shape: Sequence[int] | None,
    classes: int | None,
    size_params: Sequence[str] | None = None,
    label_shape: Sequence[int] = (),
) -> Dataset:
    """Fit ds to the network: add a channel axis to 2-D images, check shapes and labels.

    size_params: the network parameters that set its input size (see _fit_shape).
    label_shape: the class indices each sample needs, the output's shape but its
    class axis: () for one class per sample, (h, w) for one per pixel.
    """
    if input_shape is not None:
        want = tuple(int(d) for d in input_shape)
        ds.x_train = _fit_shape(ds.x_train, want, ds.name, size_params)
        ds.x_test = _fit_shape(ds.x_test, want, ds.name, size_params)
    for which, y in (("training", ds.y_train), ("test", ds.y_test)):
        if len(y) == 0:
            raise DataError(
                f"{ds.name}: the {which} set is empty; give it samples (or use x and y and let"
                " --test-split make the test set)"
            )
        _check_label_shape(ds.name, which, y, tuple(label_shape))
    if classes is not None:
        for which, y in (("training", ds.y_train), ("test", ds.y_test)):
            if len(y) and (y.min() < 0 or y.max() >= classes):
                bad = int(y.max()) if y.max() >= classes else int(y.min())
                raise DataError(
                    f"{ds.name}: {which} label {bad} is out of range for a network with"
                    f" {classes} classes (labels must be 0..{classes - 1}); set the network's"
                    f" class count to match the data (e.g. --set classes={int(y.max()) + 1})"
                )
    return ds


def _check_label_shape(name: str, which: str, y: np.ndarray, want: Shape) -> None:
    """DataError unless y holds one class index per sample, or per output position."""
    have = tuple(y.shape[1:])
    # NOTE: axes of length 1 carry no positions: masks [N, h, w, 1] fit an output [h, w, C].
    if tuple(d for d in have if d != 1) == tuple(d for d in want if d != 1):
        return
    if not want:
        raise DataError(
            f"{name}: {which} labels have shape {list(y.shape)}; expected one class index per"
            " sample (shape [N])"
        )
    raise DataError(
        f"{name}: {which} labels have shape {list(y.shape)}; the network's output gives a class"
        f" per position, {list(want)} per sample, so expected labels of shape"
        f" {['N', *want]} (one class index per position)"
    )


def _fit_shape(x: Any, want: Shape, name: str, size_params: Sequence[str] | None) -> Any:
    have = tuple(x.shape[1:])
    if have == want:
        return x
    if len(have) == 2 and want == (*have, 1):
        return _expand(x)
    message = f"{name}: samples have shape {list(have)} but the network's input is {list(want)}"
    # NOTE: suggest only a parameter the network has: a --set it lacks is one more error.
    have_channels = have[2] if len(have) == 3 else 1
    if len(have) not in (2, 3) or have_channels != want[-1]:
        fix = f"use data of shape {list(want)} ({want[-1]} channels)"
    elif size_params is None:
        fix = "use data of that shape or change the network's input"
    elif size_params:
        value = have[0] if len(have) >= 2 and have[0] == have[1] else "..."
        sets = " ".join(f"--set {p}={value}" for p in size_params)
        fix = f"use data of that shape or change the network's input size ({sets})"
    else:
        fix = (
            f"use data of shape {list(want)} (this network has no parameter for its input"
            " size; edit its `input` line to take other data)"
        )
    raise DataError(f"{message}; {fix}")


def _expand(x: Any) -> Any:
    if isinstance(x, Images):
        return Images(x.pixels[..., None])
    return x[..., None]


def as_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices as int64: one per sample [N], or one per output position [N, ...].

    Which shape the network needs is `check`'s to say; here only what no network takes.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 0:
        raise DataError(
            f"{where}: labels have shape []; expected one class number per sample, shape [N]"
        )
    per_sample = max(1, math.prod(y.shape[1:]))
    if y.ndim == 2 and y.dtype.kind in "iubf" and _one_hot_or_soft(y):
        # NOTE: a table of labels with fractions, or one 1 a row, is one-hot, not positions.
        raise DataError(
            f"{where}: labels have shape {list(y.shape)}; expected one class number per"
            " sample, shape [N] (one-hot? save y.argmax(axis=1))"
        )
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if bad.any():
            raise DataError(
                f"{where}: labels must be whole class numbers, found {y.dtype} values that are"
                f" not (e.g. {y[bad][0]} for sample {int(np.argmax(bad)) // per_sample}); save"
                " class indices 0..K-1"
            )
    elif y.dtype.kind not in "iub":
        raise DataError(
            f"{where}: labels must be class numbers, found dtype {y.dtype}; map each class to"
            " an index 0..K-1"
        )
    # NOTE: checked before the cast: uint64 2**63 would wrap to negative, float 1e300 to junk.
    wide = y.astype(np.float64) if y.dtype.kind == "f" else y  # float16 cannot hold 100,000
    far = (wide >= MAX_CLASSES) | (wide <= -MAX_CLASSES)
    if far.any():
        i = int(np.argmax(far))
        raise DataError(
            f"{where}: label {y.flat[i]} (sample {i // per_sample}) is not a class index cnndsl"
            f" accepts: labels are 0..K-1 with at most {MAX_CLASSES:,} classes; save class"
            " indices, not class codes"
        )
    return y.astype(np.int64)


def _one_hot_or_soft(y: np.ndarray) -> bool:
    """Whether 2-D labels read as one-hot or soft: values in [0, 1], rows summing to 1."""
    with np.errstate(invalid="ignore", over="ignore"):
        wide = y.astype(np.float64)
        inside = bool(((wide >= 0) & (wide <= 1)).all())
        return inside and bool(np.allclose(wide.sum(axis=1), 1, atol=1e-3))


def as_images(x: np.ndarray, where: str) -> Any:
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise DataError(
            f"{where}: images must be numbers, found dtype {x.dtype}; save them as uint8 or float32"
        )
    if x.ndim not in (3, 4):
        raise DataError(
            f"{where}: expected images of shape [N, height, width] or [N, height, width,"
            f" channels], found {list(x.shape)}; reshape them, e.g. x.reshape(-1, 28, 28)"
        )
    if x.dtype == np.uint8:
        return Images(np.ascontiguousarray(x))
    with np.errstate(over="ignore", invalid="ignore"):  # NOTE: what overflows is refused below
        x = x.astype(np.float32)
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    if not finite.all():
        raise DataError(
            f"{where}: images contain NaN or infinite values (in {int((~finite).sum())} of"
            f" {len(x)} samples, the first is sample {int(np.argmin(finite))}); fix or drop them"
        )
    return x


def split(x: Any, y: np.ndarray, test_split: float, name: str) -> tuple[Any, Any, Any, Any]:
    # NOTE: scikit-learn loads in ~0.7 s; only splitting needs it, compiling never does.
    from sklearn.model_selection import train_test_split

    if len(y) < 2:
        raise DataError(f"{name}: needs at least 2 samples to split off a test set")
    n_test = math.ceil(test_split * len(y))
    if not 1 <= n_test < len(y):
        side = "training" if n_test >= len(y) else "test"
        raise DataError(
            f"{name}: a test split of {test_split:g} of {len(y)} samples leaves the {side} set"
            " empty; choose a --test-split that keeps samples on both sides (e.g. 0.2)"
        )
    stratify = None
    # NOTE: labels per position (a class per pixel) name no one class to stratify by.
    if y.ndim == 1 and y.min() >= 0:
        present = np.bincount(y)
        present = present[present > 0]
        # Stratify only where every class can appear on both sides.
        if present.min() >= 2 and min(n_test, len(y) - n_test) >= len(present):
            stratify = y
    tr, te = train_test_split(
        np.arange(len(y)), test_size=test_split, random_state=SPLIT_SEED, stratify=stratify
    )
    return take(x, tr), y[tr], take(x, te), y[te]


def take(x: Any, index: np.ndarray) -> Any:
    return x.take(index) if isinstance(x, Images) else x[index]


def class_names_of(*ys: np.ndarray) -> list[str]:
    top = max((int(y.max()) for y in ys if len(y)), default=-1)
    return [str(i) for i in range(top + 1)]
