"""scikit-learn's 8×8 handwritten digits: the built-in default data set."""

from __future__ import annotations

import numpy as np

from cnndsl.formats.data.dataset import Dataset, split


def load_digits(test_split: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8×8 digits scaled to [0, 1], stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits  # slow to import: load on use

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    x_train, y_train, x_test, y_test = split(x, y, test_split, "digits")
    return Dataset("digits", x_train, y_train, x_test, y_test, [str(i) for i in range(10)])
