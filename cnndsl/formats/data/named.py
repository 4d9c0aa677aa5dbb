"""Named data sets: mnist, fashion_mnist, cifar10, tf_flowers, fetched once into the user's cache.

Input: a set's name. Output: a Dataset with the set's own train/test split
(tf_flowers has none: a stratified split with the fixed seed, as any image
folder). The files are the originals from their usual public locations,
downloaded by `cnndsl.formats.fetch` (hash check, resume, temp file renamed
into place only when whole and checked) into $XDG_CACHE_HOME/cnndsl/data/<name>
(else ~/.cache/cnndsl/data/<name>):

    mnist          the four IDX files (train/t10k images and labels), gzipped
    fashion_mnist  the same four files of Zalando's Fashion-MNIST
    cifar10        cifar-10-binary.tar.gz: the binary version, read inside the tarball
                   (the pickled python version is never read: unpickling runs code)
    tf_flowers     flower_photos.tgz, unpacked once (regular files and folders only,
                   every path checked to stay inside) to flower_photos/<class>/*.jpg

A download that fails raises DataError naming the file to fetch by hand and
where to put it; a file already in place is checked and used offline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from cnndsl.formats.data.dataset import DataError, Dataset, Images
from cnndsl.formats.data.idx import load_idx
from cnndsl.formats.data.images import load_image_folder
from cnndsl.formats.fetch import FetchError, Notify, Progress, WeightFile, fetch

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
FLOWERS_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
)

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR_SIDE = 32
CIFAR_RECORD = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE  # label byte, then 1024 R, 1024 G, 1024 B


def _files(base: str, md5: Mapping[str, str]) -> tuple[WeightFile, ...]:
    return tuple(WeightFile(name, True, base + name, digest) for name, digest in md5.items())


# MD5s as the sets' authors publish them (the same torchvision checks against).
NAMED: dict[str, tuple[WeightFile, ...]] = {
    "mnist": _files(
        MNIST_URL,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": _files(
        FASHION_URL,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        WeightFile("cifar-10-binary.tar.gz", True, CIFAR10_URL, "c32a1d4ab5d03f1284b67883e8d87530"),
    ),
    # NOTE: TensorFlow publishes no hash for the flowers tarball; fetch reports its
    # SHA-256 as unchecked. Pin `sha256` here once a good copy has been hashed.
    "tf_flowers": (WeightFile("flower_photos.tgz", True, FLOWERS_URL, None),),
}

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def data_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Where named sets are kept: $XDG_CACHE_HOME/cnndsl/data, else ~/.cache/cnndsl/data."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    # NOTE: the XDG spec says to ignore a relative XDG_CACHE_HOME.
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "cnndsl" / "data"


def fetch_named(
    name: str,
    folder: str | os.PathLike[str] | None = None,
    *,
    sets: Mapping[str, tuple[WeightFile, ...]] | None = None,
    retries: int = 4,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: Progress | None = None,
    notify: Notify | None = None,
) -> list[Path]:
    """The checked files of set `name` in its cache folder, downloading those not there yet.

    sets: the table of files to use instead of NAMED (tests point it at a local server).
    """
    where = Path(folder if folder is not None else data_folder()) / name
    paths = []
    for entry in (NAMED if sets is None else sets)[name]:
        try:
            paths.append(
                fetch(
                    entry.model,
                    folder=where,
                    table={(entry.model, True): entry},
                    retries=retries,
                    timeout=timeout,
                    backoff=backoff,
                    progress=progress,
                    notify=notify,
                )
            )
        except FetchError as e:
            raise DataError(
                f"{name}: could not get {entry.model}: {e}. Without a connection, download"
                f" {entry.url} by hand and place it at {where / entry.model}"
            ) from None
    return paths


def load_named(
    name: str,
    input_shape: Sequence[int] | None = None,
    test_split: float = 0.2,
    fit: str = "stretch",
    folder: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    notify: Notify | None = None,
    sets: Mapping[str, tuple[WeightFile, ...]] | None = None,
) -> Dataset:
    """Data set `name` (one of NAMED), fetched if needed, with its own split where it has one.

    MNIST-style digits smaller than the network's input are padded with zeros
    around them, centred: LeCun et al. fed LeNet-5 the 28×28 digits so, on 32×32.
    """
    paths = fetch_named(name, folder, sets=sets, progress=progress, notify=notify)
    if name in ("mnist", "fashion_mnist"):
        ds = load_idx(paths[0], test_split)
        ds.name = name
        if input_shape is not None and len(input_shape) == 3:
            ds.x_train = pad_to(ds.x_train, input_shape)
            ds.x_test = pad_to(ds.x_test, input_shape)
        if name == "fashion_mnist":
            ds.class_names = list(FASHION_CLASSES)
        return ds
    if name == "cifar10":
        return read_cifar_binary(paths[0])
    photos = unpack_tarball(paths[0], paths[0].parent / "flower_photos")
    ds = load_image_folder(photos, input_shape, test_split, fit)
    ds.name = name
    return ds


def pad_to(x: Images, input_shape: Sequence[int]) -> Images:
    """x's images with zero rows and columns around them up to input_shape's size, centred.

    Unchanged where the input is not larger in both axes by an even number of
    pixels (the shape check then says what does not fit).
    """
    extra_h, extra_w = int(input_shape[0]) - x.shape[1], int(input_shape[1]) - x.shape[2]
    if extra_h < 0 or extra_w < 0 or extra_h % 2 or extra_w % 2 or extra_h == extra_w == 0:
        return x
    pads = [(0, 0), (extra_h // 2, extra_h // 2), (extra_w // 2, extra_w // 2)]
    pads += [(0, 0)] * (x.ndim - 3)
    return Images(np.pad(x.pixels, pads))


# ---- CIFAR-10, binary version ----


def read_cifar_binary(path: str | os.PathLike[str]) -> Dataset:
    """cifar-10-binary.tar.gz: data_batch_1..5.bin for training, test_batch.bin for testing.

    Each record is a label byte and the 32×32 image as three planes (R, G, B),
    rows in order. Read from inside the tarball; batches.meta.txt names the classes.
    """
    path = Path(path)
    batches: dict[str, np.ndarray] = {}
    names = list(CIFAR10_CLASSES)
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if not member.isfile() or not (base.endswith(".bin") or base == "batches.meta.txt"):
                    continue
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file
                raw = stream.read()
                if base == "batches.meta.txt":
                    names = [n for n in raw.decode("ascii", "replace").split() if n] or names
                else:
                    batches[base] = _cifar_records(raw, f"{path}: {member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"{path}: not a readable gzipped tarball ({e}); delete it and run again to"
            " download it anew"
        ) from None
    train = [
        batches[f"data_batch_{k}.bin"] for k in range(1, 6) if f"data_batch_{k}.bin" in batches
    ]
    if not train or "test_batch.bin" not in batches:
        raise DataError(
            f"{path}: expected data_batch_1..5.bin and test_batch.bin inside (CIFAR-10's binary"
            f" version), found {sorted(batches) or 'none'}; download cifar-10-binary.tar.gz"
        )
    x_train, y_train = _cifar_split(np.concatenate(train))
    x_test, y_test = _cifar_split(batches["test_batch.bin"])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, names)


def _cifar_records(raw: bytes, where: str) -> np.ndarray:
    if len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{where}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte records"
            " (a label byte and a 32×32×3 image); the file is truncated or not CIFAR-10's"
        )
    return np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)


def _cifar_split(records: np.ndarray) -> tuple[Images, np.ndarray]:
    labels = records[:, 0].astype(np.int64)
    if len(labels) and labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(f"CIFAR-10 label {int(labels.max())} is out of range 0..9")
    planes = records[:, 1:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
    return Images(np.ascontiguousarray(planes.transpose(0, 2, 3, 1))), labels


# ---- tf_flowers: unpacking a folder tarball safely ----


def unpack_tarball(path: Path, dest: Path) -> Path:
    """Unpack the flowers tarball once, into dest (its top folder); dest if already there.

    Only regular files and folders are unpacked, each path checked to stay
    inside (no absolute paths, no '..', no links); into a temp folder renamed
    into place when complete, so a half-unpacked folder never has dest's name.
    """
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-unpack-"))
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts or not parts:
                    raise DataError(
                        f"{path}: refusing the entry {member.name!r}: it leaves the folder"
                    )
                if not (member.isfile() or member.isdir()):
                    continue  # links, devices: skipped, never followed
                target = tmp.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                stream = tar.extractfile(member)
                assert stream is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(stream, out)
        top = tmp / dest.name
        if not top.is_dir():
            raise DataError(
                f"{path}: expected a top folder '{dest.name}/' inside; delete it and run again"
                " to download it anew"
            )
        os.replace(top, dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"{path}: cannot unpack it ({e}); delete it and run again to download it anew"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return dest
