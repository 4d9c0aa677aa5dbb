"""Image folders (one subfolder per class, tf_flowers layout) and single image files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.formats.data.augment import augment_images
from cnndsl.formats.data.dataset import (
    DataError,
    Dataset,
    Images,
    split,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
    x_train, y_train, x_test, y_test = split(Images(pixels), y, test_split, str(folder))
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
