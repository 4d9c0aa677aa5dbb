"""Labels per output position (a class per pixel) through the .npz loader and the checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnndsl.formats.data import DataError, load_data
from cnndsl.formats.data.dataset import as_labels, split


def _save(path: Path, y: np.ndarray, n: int = 10) -> str:
    np.savez(path, x=np.zeros((n, 4, 4, 1), np.float32), y=y)
    return str(path)


def test_masks_load_when_they_match_the_output_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (10, 4, 4))
    ds = load_data(_save(tmp_path / "m.npz", y), (4, 4, 1), 3, label_shape=(4, 4))
    assert ds.y_train.shape == (8, 4, 4) and ds.y_test.shape == (2, 4, 4)
    assert ds.y_train.dtype == np.int64
    # every sample's mask travels with it through the split
    both = np.concatenate([ds.y_train, ds.y_test])
    assert sorted(map(bytes, both)) == sorted(map(bytes, y.astype(np.int64)))
    # Keras-style masks with a channel axis of one fit too
    ds = load_data(_save(tmp_path / "c.npz", y[..., None]), (4, 4, 1), 3, label_shape=(4, 4))
    assert ds.y_train.shape == (8, 4, 4, 1)


@pytest.mark.parametrize(
    ("y", "want", "message"),
    [
        (np.zeros((10, 2, 2), np.int64), (4, 4), r"labels have shape \[8, 2, 2\].*\['N', 4, 4\]"),
        (np.zeros((10, 4), np.int64), (4, 4), r"labels have shape \[8, 4\].*\['N', 4, 4\]"),
        (np.zeros((10, 4, 4), np.int64), (), r"shape \[8, 4, 4\]; expected one class index per"),
        (np.full((10, 4, 4), 5), (4, 4), "label 5 is out of range for a network with 3 classes"),
    ],
)
def test_labels_that_do_not_fit_the_output_are_refused(
    tmp_path: Path, y: np.ndarray, want: tuple[int, ...], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load_data(_save(tmp_path / "bad.npz", y), (4, 4, 1), 3, label_shape=want)


def test_one_hot_labels_still_say_one_hot(tmp_path: Path) -> None:
    y = np.eye(3, dtype=np.int64)[np.arange(10) % 3]
    soft = np.full((10, 3), 1 / 3)
    for labels in (y, soft):
        # refused by the loader, whatever the network: no output gives one-hot class indices
        with pytest.raises(DataError, match=r"h.npz: labels have shape \[10, 3\].*one-hot"):
            load_data(_save(tmp_path / "h.npz", labels), (4, 4, 1), 3, label_shape=(3,))
    # class indices along one axis load, and fit only an output with that axis
    rows = np.arange(30).reshape(10, 3) % 3
    ds = load_data(_save(tmp_path / "r.npz", rows), (4, 4, 1), 3, label_shape=(3,))
    assert ds.y_train.shape == (8, 3)
    with pytest.raises(DataError, match=r"shape \[8, 3\]; expected one class index per sample"):
        load_data(_save(tmp_path / "r.npz", rows), (4, 4, 1), 3)


def test_bad_values_in_masks_name_their_sample(tmp_path: Path) -> None:
    y = np.zeros((10, 4, 4))
    y[7, 2, 3] = 0.5
    with pytest.raises(DataError, match=r"e.g. 0.5 for sample 7\)"):
        as_labels(y, "m.npz")
    y = np.zeros((10, 4, 4), np.int64)
    y[6, 1, 1] = 2**40
    with pytest.raises(DataError, match=rf"label {2**40} \(sample 6\)"):
        as_labels(y, "m.npz")


def test_masks_split_unstratified_and_reproducibly() -> None:
    x = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    y = np.arange(20).reshape(20, 1, 1) * np.ones((1, 2, 2), np.int64)
    first = split(x, y, 0.25, "m")
    again = split(x, y, 0.25, "m")
    x_train, y_train, x_test, y_test = first
    assert len(x_test) == 5 and len(x_train) == 15
    # each image keeps its own mask (here the mask repeats the image's number)
    np.testing.assert_array_equal(y_train[:, 0, 0], x_train[:, 0, 0, 0])
    np.testing.assert_array_equal(y_test[:, 0, 0], x_test[:, 0, 0, 0])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
