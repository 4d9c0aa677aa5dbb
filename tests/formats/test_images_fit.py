"""Bringing an image of any size to the network's input: stretch or centre crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnndsl.formats.data import DataError, load_images, read_image
from cnndsl.formats.data.images import centre_crop


@pytest.mark.parametrize(
    ("size", "target", "box"),
    [
        ((640, 427), (224, 224), (106, 0, 533, 427)),  # landscape photo -> square: cut the sides
        ((427, 640), (224, 224), (0, 106, 427, 533)),  # portrait: cut top and bottom
        ((100, 300), (50, 100), (0, 50, 100, 250)),  # 1:3 -> 1:2
        ((300, 200), (30, 20), (0, 0, 300, 200)),  # same aspect ratio: the whole image
        ((7, 5), (3, 3), (1, 0, 6, 5)),  # odd sizes: the extra pixel goes right
    ],
)
def test_centre_crop_boxes(size: tuple, target: tuple, box: tuple) -> None:
    assert centre_crop(size, target) == box


def _wide(tmp_path: Path) -> Path:
    from PIL import Image

    pixels = np.zeros((10, 30, 3), np.uint8)  # black | white | black, 10 columns each
    pixels[:, 10:20] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    return path


def test_crop_keeps_the_centre(tmp_path: Path) -> None:
    x = read_image(_wide(tmp_path), (5, 5, 3), fit="crop")
    assert x.shape == (5, 5, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x, np.ones((5, 5, 3), np.float32))


def test_stretch_squeezes_the_whole_image(tmp_path: Path) -> None:
    x = read_image(_wide(tmp_path), (5, 5, 3))  # the default, as before
    assert x[:, 0].max() < 0.1 and x[:, -1].max() < 0.1 and x[:, 2].min() > 0.9


def test_load_images_passes_the_fit_on(tmp_path: Path) -> None:
    path = str(_wide(tmp_path))
    batch = load_images([path, path], (4, 4, 1), fit="crop")
    assert batch.shape == (2, 4, 4, 1) and float(batch.min()) == 1.0
    with pytest.raises(DataError, match="no such file"):
        load_images([str(tmp_path / "missing.png")], (4, 4, 1), fit="crop")
