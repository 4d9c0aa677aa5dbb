"""Data: load a training set named on the command line, checked against the network.

`load_data(spec, input_shape, classes)` understands:
  "digits"            scikit-learn's 8×8 handwritten digits (shipped with it; the default)
  IDX files           MNIST / Fashion-MNIST as distributed: pass the images file
                      (train-images-idx3-ubyte[.gz]) or their folder; the labels
                      file and the t10k test files are found by the standard names
  a .npz file         arrays x, y (or x_train, y_train, x_test, y_test)
  an image folder     one subfolder per class (tf_flowers layout), resized to the
                      network input with Pillow, RGB or grayscale per its channels

Images become float32 in [0, 1]. Sets without their own test split get a
stratified one with a fixed seed, so the test set never depends on --seed.
Every unreadable file or mismatch with the network raises DataError with the
file, the problem and the fix; the CLI prints it as `error: ...`.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.npzfile import NpzProblem, read_arrays

Shape = tuple[int, ...]

SPLIT_SEED = 0  # the test split never moves with the training seed
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


def load_data(
    spec: str = "digits",
    input_shape: Sequence[int] | None = None,
    classes: int | None = None,
    test_split: float = 0.2,
) -> Dataset:
    """Load `spec` (see module docstring) and check it against the network's input and classes."""
    if not 0 < test_split < 1:
        raise DataError(f"the test split must be a fraction between 0 and 1, got {test_split}")
    try:
        ds = _load(spec, input_shape, test_split)
    except PermissionError as e:
        raise DataError(f"{e.filename}: permission denied; make the data readable") from None
    return check(ds, input_shape, classes)


def _load(spec: str, input_shape: Sequence[int] | None, test_split: float) -> Dataset:
    if spec == "digits":
        ds = load_digits(test_split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(
                f"{spec}: no such file or directory; --data takes 'digits', an IDX images"
                " file, a .npz file or a folder of class subfolders"
            )
        if path.is_dir():
            idx = _idx_in_folder(path)
            ds = (
                load_idx(idx, test_split)
                if idx
                else load_image_folder(path, input_shape, test_split)
            )
        elif path.suffix == ".npz":
            ds = load_npz(path, test_split)
        elif _looks_like_idx(path):
            ds = load_idx(path, test_split)
        else:
            raise DataError(
                f"{path}: cannot tell what kind of data this is; expected an IDX file"
                " (MNIST layout), a .npz file with x and y, or a folder of class subfolders"
            )
    return ds


def class_names(spec: str) -> list[str] | None:
    """Class names of a source without loading it: digits 0-9, a folder's subfolders."""
    if spec == "digits":
        return [str(i) for i in range(10)]
    path = Path(spec)
    if path.is_dir() and _idx_in_folder(path) is None:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None


# ---- checking against the network ----


def check(ds: Dataset, input_shape: Sequence[int] | None, classes: int | None) -> Dataset:
    """Fit ds to the network: add a channel axis to 2-D images, check shapes and labels."""
    if input_shape is not None:
        want = tuple(int(d) for d in input_shape)
        ds.x_train = _fit_shape(ds.x_train, want, ds.name)
        ds.x_test = _fit_shape(ds.x_test, want, ds.name)
    for which, y in (("training", ds.y_train), ("test", ds.y_test)):
        if len(y) == 0:
            raise DataError(
                f"{ds.name}: the {which} set is empty; give it samples (or use x and y and let"
                " --test-split make the test set)"
            )
        if y.ndim != 1:
            raise DataError(
                f"{ds.name}: {which} labels have shape {list(y.shape)}; expected one class"
                " index per sample (shape [N])"
            )
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


def _fit_shape(x: Any, want: Shape, name: str) -> Any:
    have = tuple(x.shape[1:])
    if have == want:
        return x
    if len(have) == 2 and want == (*have, 1):
        return _expand(x)
    raise DataError(
        f"{name}: samples have shape {list(have)} but the network's input is {list(want)};"
        " use data of that shape or change the network's input (e.g. --set size=...)"
    )


def _expand(x: Any) -> Any:
    if isinstance(x, Images):
        return Images(x.pixels[..., None])
    return x[..., None]


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot? save y.argmax(axis=1))" if y.ndim == 2 else ""
        raise DataError(
            f"{where}: labels have shape {list(y.shape)}; expected one class number per"
            f" sample, shape [N]{hint}"
        )
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if bad.any():
            raise DataError(
                f"{where}: labels must be whole class numbers, found {y.dtype} values that are"
                f" not (e.g. {y[bad][0]} for sample {int(np.argmax(bad))}); save class indices"
                " 0..K-1"
            )
    elif y.dtype.kind not in "iub":
        raise DataError(
            f"{where}: labels must be class numbers, found dtype {y.dtype}; map each class to"
            " an index 0..K-1"
        )
    return y.astype(np.int64)


def _images(x: np.ndarray, where: str) -> Any:
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
    x = x.astype(np.float32)
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    if not finite.all():
        raise DataError(
            f"{where}: images contain NaN or infinite values (in {int((~finite).sum())} of"
            f" {len(x)} samples, the first is sample {int(np.argmin(finite))}); fix or drop them"
        )
    return x


def _split(x: Any, y: np.ndarray, test_split: float, name: str) -> tuple[Any, Any, Any, Any]:
    from sklearn.model_selection import train_test_split

    if len(y) < 2:
        raise DataError(f"{name}: needs at least 2 samples to split off a test set")
    n_test = math.ceil(test_split * len(y))
    stratify = None
    if y.min() >= 0:
        present = np.bincount(y)
        present = present[present > 0]
        # Stratify only where every class can appear on both sides.
        if present.min() >= 2 and min(n_test, len(y) - n_test) >= len(present):
            stratify = y
    tr, te = train_test_split(
        np.arange(len(y)), test_size=test_split, random_state=SPLIT_SEED, stratify=stratify
    )
    return _take(x, tr), y[tr], _take(x, te), y[te]


def _take(x: Any, index: np.ndarray) -> Any:
    return x.take(index) if isinstance(x, Images) else x[index]


# ---- digits ----


def load_digits(test_split: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8×8 digits scaled to [0, 1], stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    x_train, y_train, x_test, y_test = _split(x, y, test_split, "digits")
    return Dataset("digits", x_train, y_train, x_test, y_test, [str(i) for i in range(10)])


# ---- IDX (MNIST, Fashion-MNIST) ----

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not); DataError on any corruption."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"{path}: cannot read it ({e}); download the file again") from None
    if len(raw) < 4:
        raise DataError(f"{path}: file is truncated: {len(raw)} bytes, no IDX header")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or code not in _IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08X}; an IDX file starts with 0x00000803"
            " (images) or 0x00000801 (labels); this is not an IDX file or it is corrupt"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: file is truncated inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    need = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        problem = "truncated" if have < need else "longer than its header says"
        raise DataError(
            f"{path}: file is {problem}: the header says {' × '.join(map(str, dims))}"
            f" = {need} bytes of data, found {have}; download the file again"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # native byte order, and writable


def _looks_like_idx(path: Path) -> bool:
    name = path.name.lower()
    return "idx" in name or "ubyte" in name


def _idx_in_folder(folder: Path) -> Path | None:
    for name in ("train-images-idx3-ubyte", "train-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _companion(images: Path, replacements: Sequence[tuple[str, str]]) -> Path | None:
    """The file named like `images` with replacements applied, .gz or not."""
    name = images.name
    for old, new in replacements:
        name = name.replace(old, new)
    stem = name.removesuffix(".gz")
    for candidate in (stem, stem + ".gz"):
        if (images.parent / candidate).is_file() and candidate != images.name:
            return images.parent / candidate
    return None


def _labels_for(images: Path) -> Path:
    labels = _companion(images, [("images", "labels"), ("idx3", "idx1")])
    if labels is None:
        guess = images.name.replace("images", "labels").replace("idx3", "idx1")
        raise DataError(
            f"{images}: found no labels file beside it (looked for {guess.removesuffix('.gz')}"
            " with or without .gz); put the labels file in the same folder"
        )
    return labels


def load_idx(images: str | os.PathLike[str], test_split: float = 0.2) -> Dataset:
    """MNIST-layout IDX data: the images file, its labels and the t10k test pair if present."""
    images = Path(images)
    if "labels" in images.name or "idx1" in images.name:
        raise DataError(f"{images}: this is a labels file; pass the images file (idx3) instead")
    x, y = _idx_pair(images)
    name = images.name.removesuffix(".gz")
    test = _companion(images, [("train", "t10k")]) if "train" in images.name else None
    if test is not None:
        x_test, y_test = _idx_pair(test)
        if tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
            raise DataError(
                f"{test}: test images are {list(x_test.shape[1:])} but training images are"
                f" {list(x.shape[1:])}; use matching files"
            )
        return Dataset(name, x, y, x_test, y_test, _class_names(y, y_test))
    x_train, y_train, x_test, y_test = _split(x, y, test_split, str(images))
    return Dataset(name, x_train, y_train, x_test, y_test, _class_names(y))


def _idx_pair(images: Path) -> tuple[Any, np.ndarray]:
    labels_path = _labels_for(images)
    raw = read_idx(images)
    if raw.ndim not in (3, 4):
        raise DataError(
            f"{images}: holds an array of shape {list(raw.shape)}; an images file holds"
            " [N, height, width] (magic 0x00000803); did you pass a labels file?"
        )
    labels = read_idx(labels_path)
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: holds an array of shape {list(labels.shape)}; a labels file holds"
            " one class number per image (magic 0x00000801)"
        )
    if len(labels) != len(raw):
        raise DataError(
            f"{labels_path}: has {len(labels)} labels but {images.name} has {len(raw)} images;"
            " use the labels file that belongs to these images"
        )
    return _images(raw, str(images)), _labels(labels, str(labels_path))


def _class_names(*ys: np.ndarray) -> list[str]:
    top = max((int(y.max()) for y in ys if len(y)), default=-1)
    return [str(i) for i in range(top + 1)]


# ---- .npz ----


def _npz_message(path: Path, problem: NpzProblem) -> str:
    """What is wrong with a data .npz, and how to write one that works."""
    messages = {
        "unreadable": f"{path}: cannot read it ({problem.detail})",
        "not_zip": f"{path}: not a readable .npz file (no zip header); write it with"
        " np.savez(path, x=images, y=labels)",
        "pickled": f"{path}: holds pickled Python objects, which cnndsl does not load (they"
        " can run code); save plain numeric arrays: np.savez(path, x=x.astype('float32'),"
        " y=y.astype('int64'))",
        "bad_value": f"{path}: cannot read it as .npz ({problem.detail})",
        "corrupt": f"{path}: not a readable .npz file: truncated or corrupt ({problem.detail});"
        " write it again with np.savez",
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
        x, y = _images(arrays["x"], where), _labels(arrays["y"], where)
        if len(x) != len(y):
            raise DataError(
                f"{path}: x has {len(x)} samples but y has {len(y)} labels; give one label per"
                " sample"
            )
        x_train, y_train, x_test, y_test = _split(x, y, test_split, where)
    else:
        x_train, y_train = _images(arrays["x_train"], where), _labels(arrays["y_train"], where)
        x_test, y_test = _images(arrays["x_test"], where), _labels(arrays["y_test"], where)
        for part, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
            if len(xs) != len(ys):
                raise DataError(
                    f"{path}: x_{part} has {len(xs)} samples but y_{part} has {len(ys)} labels"
                )
    return Dataset(path.name, x_train, y_train, x_test, y_test, _class_names(y_train, y_test))


# ---- image folders ----


def load_image_folder(
    folder: str | os.PathLike[str],
    input_shape: Sequence[int] | None,
    test_split: float = 0.2,
) -> Dataset:
    """One subfolder per class, images resized to the network input; flips and crops in fit."""
    folder = Path(folder)
    if input_shape is None or len(input_shape) != 3:
        raise DataError(f"{folder}: an image folder needs a network whose input is [h, w, c]")
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise DataError(
            f"{folder}: the network's input has {channels} channels; images load as"
            " grayscale (1) or RGB (3)"
        )
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{folder}: has no class subfolders; put each class's images in its own"
            " subfolder (flowers/daisy/*.jpg, flowers/roses/*.jpg, ...)"
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise DataError(
                f"{d}: class folder has no images ({', '.join(IMAGE_SUFFIXES)});"
                " remove it or add images"
            )
        files.extend((p, label) for p in found)
    pixels = np.empty((len(files), height, width, channels), np.uint8)
    for i, (path, _) in enumerate(files):
        pixels[i] = read_image(path, (height, width, channels), as_uint8=True)
    y = np.array([label for _, label in files], np.int64)
    x_train, y_train, x_test, y_test = _split(Images(pixels), y, test_split, str(folder))
    return Dataset(
        folder.name,
        x_train,
        y_train,
        x_test,
        y_test,
        [d.name for d in class_dirs],
        augment=augment_images,
    )


def read_image(
    path: str | os.PathLike[str], shape: Sequence[int], as_uint8: bool = False
) -> np.ndarray:
    """One image file resized (bilinear, as Keras) to shape [h, w, c]; float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = (int(d) for d in shape)
    try:
        with Image.open(path) as opened:
            img = _eight_bit(opened, path)
            img = img.convert("L" if channels == 1 else "RGB")
            img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{path}: refused as a possible decompression bomb ({e}); shrink the image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{path}: cannot read this image ({e}); remove or replace the file"
        ) from None
    arr = arr.reshape(height, width, channels)
    return arr if as_uint8 else arr.astype(np.float32) / 255


def _eight_bit(img: Any, path: Any) -> Any:
    """16-bit grayscale scaled to 8 bits (convert('L') would clip it to white); float refused."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(
                f"{path}: 32-bit integer image with values outside 0..65535; save it as an"
                " 8- or 16-bit image"
            )
        return Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    if img.mode == "F":
        raise DataError(
            f"{path}: floating-point image (mode F) has no fixed range of values; save it"
            " as an 8- or 16-bit image"
        )
    return img


def load_images(paths: Sequence[str], shape: Sequence[int]) -> np.ndarray:
    """Images to predict on, as a batch [N, h, w, c] float32 (npy/IDX not accepted here)."""
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such image file")
    return np.stack([read_image(p, shape) for p in paths]).astype(np.float32)


# ---- augmentation ----


def augment_images(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and random crop (pad by 1/8 edge-replicated, crop back)."""
    n, height, width = x.shape[:3]
    out = np.empty_like(x)
    ph, pw = max(1, height // 8), max(1, width // 8)
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")
    flips = np.asarray(rng.random(n)) < 0.5
    dy = rng.integers(0, 2 * ph + 1, n)
    dx = rng.integers(0, 2 * pw + 1, n)
    for i in range(n):  # per sample: whole-image slices, never per pixel
        crop = padded[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


__all__ = [
    "DataError",
    "Dataset",
    "Images",
    "augment_images",
    "check",
    "class_names",
    "load_data",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_images",
    "load_npz",
    "read_idx",
    "read_image",
]
