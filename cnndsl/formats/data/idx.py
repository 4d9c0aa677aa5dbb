"""IDX files: MNIST and Fashion-MNIST as distributed (gzip or not), labels found by name."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
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
from cnndsl.formats.files import (
    MAX_DECOMPRESSED_BYTES,
    MAX_DEFLATE_RATIO,
    NotRegularFile,
    Readable,
    TruncatedData,
    open_regular,
    read_exactly,
    size_text,
)

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not); DataError on any corruption.

    The header's claimed size is checked before anything is allocated: against
    the file's size for a plain file; for a .gz file against what deflate can
    expand it to and MAX_DECOMPRESSED_BYTES, and then read with a bounded reader.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(2) != b"\x1f\x8b":
                f.seek(0)
                return _read_idx_stream(f, path, size, compressed=False)
            f.seek(0)
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _read_idx_stream(stream, path, size, compressed=True)
    except NotRegularFile as e:
        raise DataError(f"{path}: {e.strerror}; pass an IDX file") from None
    # gzip raises BadGzipFile (an OSError), EOFError or zlib.error on damaged data
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it ({e}); download the file again") from None


def _read_idx_stream(stream: Readable, path: Path, size: int, compressed: bool) -> np.ndarray:
    """The array of an IDX stream whose file is `size` bytes (compressed or not)."""
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: file is truncated: {len(head)} bytes, no IDX header")
    magic = int.from_bytes(head, "big")
    code, ndim = head[2], head[3]
    if head[:2] != b"\0\0" or code not in _IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08X}; an IDX file starts with 0x00000803"
            " (images) or 0x00000801 (labels); this is not an IDX file or it is corrupt"
        )
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: file is truncated inside its header")
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = _IDX_TYPES[code]
    need = math.prod(dims) * dtype.itemsize
    claim = f"the header says {' × '.join(map(str, dims))} = {need} bytes of data"
    if not compressed:
        have = size - 4 - 4 * ndim
        if have != need:
            problem = "truncated" if have < need else "longer than its header says"
            raise DataError(
                f"{path}: file is {problem}: {claim}, found {have}; download the file again"
            )
    elif need > MAX_DEFLATE_RATIO * size:
        raise DataError(
            f"{path}: file is corrupt: {claim}, more than a {size:,}-byte .gz file can hold;"
            " download the file again"
        )
    elif need > MAX_DECOMPRESSED_BYTES:
        raise DataError(
            f"{path}: refused: {claim} ({size_text(need)}), more than the"
            f" {size_text(MAX_DECOMPRESSED_BYTES)} cnndsl decompresses from one file;"
            " decompress it (gunzip) and pass the uncompressed file"
        )
    try:
        values = read_exactly(stream, math.prod(dims), dtype)
    except TruncatedData as e:
        raise DataError(
            f"{path}: file is truncated: {claim}; the data {e}; download the file again"
        ) from None
    if stream.read(1):
        raise DataError(
            f"{path}: file is longer than its header says: {claim}; download the file again"
        )
    return values.reshape(dims).astype(dtype.newbyteorder("="), copy=False)  # native order


def looks_like_idx(path: Path) -> bool:
    name = path.name.lower()
    return "idx" in name or "ubyte" in name


def idx_in_folder(folder: Path) -> Path | None:
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
        return Dataset(name, x, y, x_test, y_test, class_names_of(y, y_test))
    x_train, y_train, x_test, y_test = split(x, y, test_split, str(images))
    return Dataset(name, x_train, y_train, x_test, y_test, class_names_of(y))


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
    return as_images(raw, str(images)), as_labels(labels, str(labels_path))
