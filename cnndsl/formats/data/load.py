"""Loading: a training set named on the command line, checked against the network.

`load_data(spec, input_shape, classes)` understands:
  "digits"            scikit-learn's 8×8 handwritten digits (shipped with it; the default)
  a set's name        mnist, fashion_mnist, cifar10, tf_flowers: downloaded once into the
                      user's cache folder (cnndsl.formats.data.named), with their own split
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

from collections.abc import Sequence
from pathlib import Path

from cnndsl.formats.data.arrays import load_npz
from cnndsl.formats.data.dataset import DataError, Dataset, check
from cnndsl.formats.data.digits import load_digits
from cnndsl.formats.data.idx import idx_in_folder, load_idx, looks_like_idx
from cnndsl.formats.data.images import load_image_folder
from cnndsl.formats.data.named import CIFAR10_CLASSES, FASHION_CLASSES, NAMED, load_named
from cnndsl.formats.fetch import Notify, Progress
from cnndsl.formats.files import NotRegularFile, require_regular_file

KNOWN_CLASSES = {"fashion_mnist": FASHION_CLASSES, "cifar10": CIFAR10_CLASSES}


def load_data(
    spec: str = "digits",
    input_shape: Sequence[int] | None = None,
    classes: int | None = None,
    test_split: float = 0.2,
    fit: str = "stretch",
    size_params: Sequence[str] | None = None,
    progress: Progress | None = None,
    notify: Notify | None = None,
    label_shape: Sequence[int] = (),
) -> Dataset:
    """Load `spec` (see module docstring) and check it against the network's input and classes.

    fit: how images of a folder are brought to the input size, `stretch` or `crop`.
    size_params: the network parameters that set its input size, named in the
    fix of a shape mismatch (None: not known; empty: the network has none).
    progress, notify: callbacks of a named set's download (bytes so far and total; notices).
    label_shape: class indices per sample, () for one, (h, w) for one per pixel (see `check`).
    """
    if not 0 < test_split < 1:
        raise DataError(f"the test split must be a fraction between 0 and 1, got {test_split}")
    try:
        if spec in NAMED:
            ds = load_named(spec, input_shape, test_split, fit, progress=progress, notify=notify)
        else:
            ds = _load(spec, input_shape, test_split, fit)
    except PermissionError as e:
        raise DataError(f"{e.filename}: permission denied; make the data readable") from None
    return check(ds, input_shape, classes, size_params, label_shape)


def _load(
    spec: str, input_shape: Sequence[int] | None, test_split: float, fit: str = "stretch"
) -> Dataset:
    if spec == "digits":
        ds = load_digits(test_split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(
                f"{spec}: no such file or directory; the data must be 'digits', a named set"
                f" ({', '.join(NAMED)}), an IDX images file, a .npz file or a folder of class"
                " subfolders"
            )
        if path.is_dir():
            idx = idx_in_folder(path)
            ds = (
                load_idx(idx, test_split)
                if idx
                else load_image_folder(path, input_shape, test_split, fit)
            )
        elif (problem := _not_regular(path)) is not None:
            raise DataError(
                f"{path}: {problem}; the data must be 'digits', an IDX images file, a .npz file or"
                " a folder of class subfolders"
            )
        elif path.suffix == ".npz":
            ds = load_npz(path, test_split)
        elif looks_like_idx(path):
            ds = load_idx(path, test_split)
        else:
            raise DataError(
                f"{path}: cannot tell what kind of data this is; expected an IDX file"
                " (MNIST layout), a .npz file with x and y, or a folder of class subfolders"
            )
    return ds


def _not_regular(path: Path) -> str | None:
    """Why path is not a file to read (a FIFO would hang, /dev/zero never end), else None."""
    try:
        require_regular_file(path)
    except NotRegularFile as e:
        return str(e.strerror)
    return None


def class_names(spec: str) -> list[str] | None:
    """Class names of a source without loading it: digits 0-9, a folder's subfolders."""
    if spec in ("digits", "mnist"):
        return [str(i) for i in range(10)]
    if spec in KNOWN_CLASSES:
        return list(KNOWN_CLASSES[spec])
    path = Path(spec)
    if path.is_dir() and idx_in_folder(path) is None:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return None
