"""Image folders (one subfolder per class, tf_flowers layout) and single image files.

Every image is brought to the network's input size in one of two ways (`fit`):
`stretch` resizes each axis to the input (the aspect ratio changes, as
tf.image.resize), `crop` cuts the largest centred box of the input's aspect
ratio and resizes that (Keras' Resizing(crop_to_aspect_ratio=True)). A
network declares its way with `preprocess(..., fit=...)`; without it, stretch.
"""

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
from cnndsl.formats.files import NotRegularFile, open_regular
from cnndsl.formats.npz import NpzProblem, read_npy_file
from cnndsl.ops.preprocess import CROP, FITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load_image_folder(
    folder: str | os.PathLike[str],
    input_shape: Sequence[int] | None,
    test_split: float = 0.2,
    fit: str = "stretch",
) -> Dataset:
    """One subfolder per class, images fitted to the network input; flips and crops in fit."""
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
        pixels[i] = read_image(path, (height, width, channels), as_uint8=True, fit=fit)
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
    path: str | os.PathLike[str],
    shape: Sequence[int],
    as_uint8: bool = False,
    fit: str = "stretch",
) -> np.ndarray:
    """One image file fitted (bilinear, as Keras) to shape [h, w, c]; float32 in [0, 1].

    fit: `stretch` or `crop` (see the module docstring).
    """
    from PIL import Image, UnidentifiedImageError

    assert fit in FITS, fit
    height, width, channels = (int(d) for d in shape)
    try:
        # NOTE: opened as a regular file first: Image.open would wait forever on a FIFO.
        with open_regular(path) as file, Image.open(file) as opened:
            img = _eight_bit(opened, path)
            img = img.convert("L" if channels == 1 else "RGB")
            if fit == CROP:  # NOTE: cut first, so no pixel outside the box leaks in
                img = img.crop(centre_crop(img.size, (width, height)))
            img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{path}: refused as a possible decompression bomb ({e}); shrink the image"
        ) from None
    except NotRegularFile as e:
        raise DataError(f"{path}: {e.strerror}; pass an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{path}: cannot read this image ({e}); remove or replace the file"
        ) from None
    arr = arr.reshape(height, width, channels)
    return arr if as_uint8 else arr.astype(np.float32) / 255


def centre_crop(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred box of target's aspect ratio.

    size and target are (width, height); whole pixels, as Keras' smart_resize.
    """
    width, height = size
    crop_width = min(width, int(height * target[0] / target[1]))
    crop_height = min(height, int(width * target[1] / target[0]))
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


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


def load_images(paths: Sequence[str], shape: Sequence[int], fit: str = "stretch") -> np.ndarray:
    """Samples to predict on (image files or .npy arrays), as a batch [N, h, w, c] float32."""
    return np.stack([read_sample(p, shape, fit=fit) for p in paths]).astype(np.float32)


def read_sample(path: str | os.PathLike[str], shape: Sequence[int], fit: str = "stretch") -> Any:
    """One network input: an .npy array of the input's shape as it is, else an image file.

    An .npy holds values as the network takes them (e.g. in [0, 1]); a 2-D
    array gets the channel axis of a one-channel input.
    """
    if not Path(path).exists():  # NOTE: a FIFO or folder is refused by the readers, by name
        raise DataError(f"{path}: no such file")
    if os.fspath(path).endswith(".npy"):
        return _read_array(path, shape)
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise DataError(
            f"{path}: the network's input is {list(shape)}, not an image [height, width, 1 or"
            " 3 channels]; pass an .npy array of that shape instead"
        )
    return read_image(path, shape, fit=fit)


def _read_array(path: str | os.PathLike[str], shape: Sequence[int]) -> np.ndarray:
    try:
        arr = read_npy_file(path)
    except NpzProblem as e:
        raise DataError(f"{path}: not a usable .npy array ({e}); save it with numpy.save") from None
    if arr.ndim == len(shape) - 1 and shape[-1] == 1:
        arr = arr[..., None]
    if tuple(arr.shape) != tuple(int(d) for d in shape):
        raise DataError(
            f"{path} holds an array of shape {list(arr.shape)}; the network's input is"
            f" {list(shape)}"
        )
    if arr.dtype.kind not in "uif" or not np.isfinite(arr).all():
        raise DataError(f"{path}: the array must hold finite numbers, not {arr.dtype} or NaN")
    return arr.astype(np.float32)
