"""Data loaders on small files written here, and a clear DataError for each kind of damage."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnndsl.formats.data import (
    DataError,
    Images,
    augment_images,
    load_data,
    load_images,
    read_idx,
)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file as MNIST distributes it: magic 0x0000 type ndim, big-endian dims, data."""
    header = struct.pack(">HBB", 0, code, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    return header + array.astype(dtype).tobytes()


def write_mnist(
    folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, size, size), dtype=np.uint8)
    labels = np.arange(n_train, dtype=np.uint8) % 10
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    files = {
        "train-images-idx3-ubyte": images,
        "train-labels-idx1-ubyte": labels,
        "t10k-images-idx3-ubyte": images[:n_test],
        "t10k-labels-idx1-ubyte": labels[:n_test],
    }
    for name, array in files.items():
        (folder / (name + suffix)).write_bytes(opener(idx_bytes(array)))
    return images, labels


# ---- digits ----


def test_digits_default() -> None:
    ds = load_data("digits", (8, 8, 1), 10)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == 360  # 20%
    assert ds.x_train.min() >= 0 and ds.x_train.max() == 1.0
    # Stratified: every class appears in the test set in proportion.
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    again = load_data("digits", (8, 8, 1), 10)
    np.testing.assert_array_equal(ds.y_test, again.y_test)  # fixed split


def test_digits_shape_mismatch_names_the_fix() -> None:
    with pytest.raises(
        DataError,
        match=r"digits: samples have shape \[8, 8, 1\] but the"
        r" network's input is \[28, 28, 1\]",
    ):
        load_data("digits", (28, 28, 1), 10)
    with pytest.raises(DataError, match="label 9 is out of range for a network with 5 classes"):
        load_data("digits", (8, 8, 1), 5)


# ---- IDX ----


@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist_layout(tmp_path: Path, gz: bool) -> None:
    images, labels = write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    ds = load_data(str(tmp_path / name), (28, 28, 1), 10)
    assert ds.x_train.shape == (30, 28, 28, 1)  # channel axis added for a 1-channel network
    assert ds.x_test.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train[:][..., 0], images / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, labels)
    # The folder works too.
    assert load_data(str(tmp_path), (28, 28, 1), 10).x_test.shape == (10, 28, 28, 1)


def test_idx_without_test_files_is_split(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=50, gz=False)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).unlink()
    ds = load_data(str(tmp_path / "train-images-idx3-ubyte"), (28, 28, 1), 10)
    assert len(ds.x_train) == 40 and len(ds.x_test) == 10


def test_read_idx_types(tmp_path: Path) -> None:
    path = tmp_path / "f.idx"
    data = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    path.write_bytes(idx_bytes(data, 0x0D))
    out = read_idx(path)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, data)
    path.write_bytes(idx_bytes(np.array([-3, 300]), 0x0B))
    assert read_idx(path).tolist() == [-3, 300]


def test_idx_truncated(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        load_data(str(path), (28, 28, 1), 10)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "30 × 28 × 28 = 23520 bytes" in msg
    assert "found 23420" in msg and "download the file again" in msg


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{path}: cannot read it"):
        load_data(str(path), (28, 28, 1), 10)


def test_idx_bad_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG" + path.read_bytes()[4:])
    with pytest.raises(DataError, match=r"bad magic number 0x89504E47.*0x00000803"):
        load_data(str(path), (28, 28, 1), 10)


def test_idx_missing_or_mismatched_labels(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(DataError, match="has 29 labels but train-images-idx3-ubyte has 30"):
        load_data(str(tmp_path / "train-images-idx3-ubyte"), (28, 28, 1), 10)
    labels.unlink()
    with pytest.raises(DataError, match="found no labels file.*train-labels-idx1-ubyte"):
        load_data(str(tmp_path / "train-images-idx3-ubyte"), (28, 28, 1), 10)


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    with pytest.raises(DataError, match=r"label 9 is out of range .* 3 classes .*--set classes=10"):
        load_data(str(tmp_path / "train-images-idx3-ubyte"), (28, 28, 1), 3)


def test_idx_wrong_image_size(tmp_path: Path) -> None:
    write_mnist(tmp_path, size=20)
    with pytest.raises(
        DataError,
        match=r"samples have shape \[20, 20\] but the network's input"
        r" is \[28, 28, 1\]",
    ):
        load_data(str(tmp_path / "train-images-idx3-ubyte.gz"), (28, 28, 1), 10)


# ---- npz ----


def test_npz_x_y(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(1)
    x = rng.random((20, 6, 6, 3)).astype(np.float32)
    y = np.repeat(np.arange(4), 5)
    np.savez(path, x=x, y=y)
    ds = load_data(str(path), (6, 6, 3), 4)
    assert len(ds.x_train) == 16 and len(ds.x_test) == 4
    assert sorted(ds.y_test.tolist()) == [0, 1, 2, 3]  # stratified
    assert ds.x_train.dtype == np.float32


def test_npz_keras_layout_uint8(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    x = np.full((5, 4, 4), 255, np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.arange(2))
    ds = load_data(str(path), (4, 4, 1), 5)
    assert isinstance(ds.x_train, Images) and ds.x_train.shape == (5, 4, 4, 1)
    batch = ds.x_train[np.array([0, 3])]
    assert batch.dtype == np.float32 and batch.max() == 1.0 and batch.shape == (2, 4, 4, 1)


def test_npz_pickled_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match=r"evil.npz: holds pickled Python objects.*np.savez"):
        load_data(str(path), (1,), 4)


def test_npz_wrong_keys_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "k.npz"
    np.savez(path, images=np.zeros((2, 2)), labels=np.zeros(2))
    with pytest.raises(DataError, match="has arrays images, labels; expected x and y"):
        load_data(str(path), None, None)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="k.npz: not a readable .npz file"):
        load_data(str(path), None, None)


def test_npz_label_problems(tmp_path: Path) -> None:
    path = tmp_path / "l.npz"
    np.savez(path, x=np.zeros((4, 3, 3, 1)), y=np.array([0.0, 1.5, 1.0, 0.0]))
    with pytest.raises(DataError, match="labels must be whole class numbers"):
        load_data(str(path), (3, 3, 1), 2)
    np.savez(path, x=np.zeros((4, 3, 3, 1)), y=np.array([0, -1, 1, 0]))
    with pytest.raises(DataError, match="label -1 is out of range"):
        load_data(str(path), (3, 3, 1), 2)
    np.savez(path, x=np.zeros((4, 3, 3, 1)), y=np.array([0, 1, 1]))
    with pytest.raises(DataError, match="x has 4 samples but y has 3 labels"):
        load_data(str(path), (3, 3, 1), 2)


# ---- image folders ----


def write_folder(root: Path, size: tuple[int, int] = (10, 12)) -> None:
    rng = np.random.default_rng(0)
    for cls in ("daisy", "roses", "tulips"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "LICENSE.txt").write_text("not a class")


def test_image_folder(tmp_path: Path) -> None:
    write_folder(tmp_path / "flowers")
    ds = load_data(str(tmp_path / "flowers"), (8, 8, 3), 3)
    assert ds.class_names == ["daisy", "roses", "tulips"]
    assert ds.x_train.shape == (12, 8, 8, 3) and ds.x_test.shape == (3, 8, 8, 3)
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]
    assert ds.augment is not None
    gray = load_data(str(tmp_path / "flowers"), (8, 8, 1), 3)
    assert gray.x_train.shape == (12, 8, 8, 1)
    x = ds.x_train[np.arange(4)]
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1


def test_image_folder_damage(tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    write_folder(root)
    bad = root / "roses" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=f"{bad}: cannot read this image"):
        load_data(str(root), (8, 8, 3), 3)
    bad.unlink()
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_data(str(root), (8, 8, 3), 4)
    (root / "empty").rmdir()
    with pytest.raises(DataError, match="label 2 is out of range for a network with 2 classes"):
        load_data(str(root), (8, 8, 3), 2)
    with pytest.raises(DataError, match="has no class subfolders"):
        load_data(str(root / "daisy"), (8, 8, 3), 3)


def test_predict_images_are_resized(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((30, 20), 255, np.uint8)).save(path)
    batch = load_images([str(path)], (8, 8, 3))
    assert batch.shape == (1, 8, 8, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, 1.0)
    with pytest.raises(DataError, match="nope.png: no such file"):
        load_images([str(tmp_path / "nope.png")], (8, 8, 3))


def test_augment_flips_and_crops() -> None:
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).random((64, 16, 16, 3)).astype(np.float32)
    out = augment_images(x, rng)
    assert out.shape == x.shape and out.dtype == x.dtype
    same = sum(np.array_equal(a, b) for a, b in zip(out, x, strict=True))
    flipped = sum(np.array_equal(a, b[:, ::-1]) for a, b in zip(out, x, strict=True))
    assert 0 < same + flipped < 64  # some untouched, some only flipped, most shifted


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory; the data must be 'digits'"):
        load_data(str(tmp_path / "missing"), (8, 8, 1), 10)
    odd = tmp_path / "data.csv"
    odd.write_text("1,2,3")
    with pytest.raises(DataError, match="data.csv: cannot tell what kind of data this is"):
        load_data(str(odd), (8, 8, 1), 10)


# ---- damage the loaders refuse (docs/reliability.md) ----


def test_npz_truncated_or_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 3, 3, 1), np.float32), y=np.arange(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="d.npz: not a readable .npz file"):
        load_data(str(path), (3, 3, 1), 4)
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF  # inside x's data: the zip CRC catches it
    path.write_bytes(bytes(flipped))
    with pytest.raises(
        DataError, match="d.npz: not a readable .npz file: truncated or corrupt .*CRC"
    ):
        load_data(str(path), (3, 3, 1), 4)


def test_npz_one_hot_labels_and_empty_sets(tmp_path: Path) -> None:
    path = tmp_path / "h.npz"
    np.savez(path, x=np.zeros((4, 3, 3, 1)), y=np.eye(2)[[0, 1, 1, 0]])
    with pytest.raises(DataError, match=r"labels have shape \[4, 2\].*one-hot"):
        load_data(str(path), (3, 3, 1), 2)
    x = np.zeros((4, 3, 3, 1))
    np.savez(path, x_train=x[:0], y_train=np.arange(0), x_test=x, y_test=np.arange(4) % 2)
    with pytest.raises(DataError, match="the training set is empty"):
        load_data(str(path), (3, 3, 1), 2)


def test_image_modes_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 40000, np.uint16)).save(deep)
    # 16-bit gray is scaled to 8 bits, not clipped to white: 40000 >> 8 = 156.
    np.testing.assert_allclose(load_images([str(deep)], (4, 4, 1)), 156 / 255)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((6, 6, 4), 200, np.uint8)).save(rgba)
    assert load_images([str(rgba)], (4, 4, 3)).shape == (1, 4, 4, 3)
    floats = tmp_path / "f.tiff"
    Image.fromarray(np.full((6, 6), 0.5, np.float32)).save(floats)
    with pytest.raises(DataError, match="f.tiff: floating-point image"):
        load_images([str(floats)], (4, 4, 1))
    cut = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.png: cannot read this image"):
        load_images([str(cut)], (4, 4, 1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 36 pixels is over twice the limit
    with pytest.raises(DataError, match="deep.png: refused as a possible decompression bomb"):
        load_images([str(deep)], (4, 4, 1))


# ---- samples that carry their labels: pairing survives every loader, split and augmentation ----


def labelled_arrays(n: int, classes: int, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Float images: channel 0 is label/10 everywhere, channel 1 the sample's index/1000."""
    y = np.arange(n) % classes
    np.random.default_rng(n).shuffle(y)
    x = np.empty((n, size, size, 2), np.float32)
    x[..., 0] = (y / 10)[:, None, None]
    x[..., 1] = (np.arange(n) / 1000)[:, None, None]
    return x, y


def assert_paired(x: object, y: np.ndarray, label_of: object) -> None:
    """Every sample's pixels, all alike, decode to its own label."""
    pixels = np.asarray(x)
    assert len(pixels) == len(y)
    for i in range(len(y)):
        assert label_of(pixels[i]) == y[i], f"sample {i}"


def assert_partition(train_ids: np.ndarray, test_ids: np.ndarray, n: int) -> None:
    assert len(set(train_ids.tolist()) & set(test_ids.tolist())) == 0
    assert sorted([*train_ids.tolist(), *test_ids.tolist()]) == list(range(n))


def test_npz_split_keeps_samples_with_their_labels(tmp_path: Path) -> None:
    x, y = labelled_arrays(50, 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_data(str(tmp_path / "d.npz"), (4, 4, 2), 5, test_split=0.2)
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert np.all(xs[..., 0] == xs[:, :1, :1, 0])  # still uniform per sample
        np.testing.assert_array_equal(np.rint(xs[:, 0, 0, 0] * 10).astype(int), ys)
    ids = [np.rint(xs[:, 0, 0, 1] * 1000).astype(int) for xs in (ds.x_train, ds.x_test)]
    assert_partition(ids[0], ids[1], 50)
    assert np.bincount(ds.y_test).tolist() == [2] * 5  # stratified: 10 test samples, 2 a class
    np.testing.assert_array_equal(x[ids[1]], ds.x_test)  # pixels equal the file's exactly


def test_npz_keras_layout_keeps_pairs_and_order(tmp_path: Path) -> None:
    y_train, y_test = np.arange(12) % 4, np.array([3, 1, 2, 0, 2])
    x_train = np.repeat((y_train * 60)[:, None, None], 5, 1).repeat(5, 2).astype(np.uint8)
    x_test = np.repeat((y_test * 60)[:, None, None], 5, 1).repeat(5, 2).astype(np.uint8)
    path = tmp_path / "k.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_data(str(path), (5, 5, 1), 4)
    np.testing.assert_array_equal(ds.y_train, y_train)  # no split, no shuffle
    np.testing.assert_array_equal(ds.y_test, y_test)
    np.testing.assert_allclose(ds.x_train[:], x_train[..., None] / 255, rtol=1e-6)
    assert_paired(ds.x_test[:], ds.y_test, lambda p: round(float(p.max()) * 255 / 60))


@pytest.mark.parametrize(("gz", "with_test"), [(True, True), (False, True), (True, False)])
def test_idx_keeps_pixels_with_their_labels(tmp_path: Path, gz: bool, with_test: bool) -> None:
    n = 40
    labels = (np.arange(n) * 7 % 10).astype(np.uint8)
    images = np.empty((n, 6, 6), np.uint8)
    images[:] = (labels * 20)[:, None, None]
    images[:, 0, 0] = np.arange(n)  # the sample's index, to check the split loses none
    files = {"train-images-idx3-ubyte": images, "train-labels-idx1-ubyte": labels}
    if with_test:
        files["t10k-images-idx3-ubyte"] = images[::-1][:10]
        files["t10k-labels-idx1-ubyte"] = labels[::-1][:10]
    suffix = ".gz" if gz else ""
    for name, array in files.items():
        raw = idx_bytes(array)
        (tmp_path / (name + suffix)).write_bytes(gzip.compress(raw) if gz else raw)
    ds = load_data(str(tmp_path / ("train-images-idx3-ubyte" + suffix)), (6, 6, 1), 10)
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        pixels = np.rint(np.asarray(xs[:]) * 255).astype(int)
        np.testing.assert_array_equal(pixels[:, 3, 3, 0], ys * 20)
        np.testing.assert_array_equal(
            pixels[:, 1:, :, 0], np.broadcast_to((ys * 20)[:, None, None], (len(ys), 5, 6))
        )
    ids = [
        np.rint(np.asarray(xs[:])[:, 0, 0, 0] * 255).astype(int) for xs in (ds.x_train, ds.x_test)
    ]
    if with_test:
        np.testing.assert_array_equal(ids[0], np.arange(n))
        np.testing.assert_array_equal(ids[1], np.arange(n)[::-1][:10])
    else:
        assert_partition(ids[0], ids[1], n)
        assert len(ids[1]) == 8


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_keeps_images_with_their_class(tmp_path: Path, channels: int) -> None:
    root = tmp_path / "shades"
    names = ["a_dark", "b_mid", "c_light"]
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(5):
            value = 60 * label + 2 * i  # class in the tens, sample in the units
            Image.fromarray(np.full((9, 7, 3), value, np.uint8)).save(root / name / f"{i}.png")
    ds = load_data(str(root), (4, 4, channels), 3)
    assert ds.class_names == names
    ids = []
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        pixels = np.rint(np.asarray(xs[:]) * 255).astype(int)
        assert np.all(pixels == pixels[:, :1, :1, :1])  # a flat image stays flat when resized
        np.testing.assert_array_equal(pixels[:, 0, 0, 0] // 60, ys)
        ids.extend((pixels[:, 0, 0, 0] % 60 // 2 + 5 * ys).tolist())
    assert sorted(ids) == list(range(15))
    assert sorted(ds.y_test.tolist()) == [0, 1, 2]


def test_digits_pairs_are_scikit_learns() -> None:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    source = {(bunch.images[i] / 16).astype(np.float32).tobytes(): i for i in range(1797)}
    ds = load_data("digits", (8, 8, 1), 10)
    seen = []
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for image, label in zip(xs, ys, strict=True):
            i = source.get(image[..., 0].tobytes())
            assert i is not None and bunch.target[i] == label
            seen.append(i)
    # 1797 images, some identical: every source image used once, as a multiset
    assert sorted(bunch.images[i].tobytes() for i in seen) == sorted(
        im.tobytes() for im in bunch.images
    )


def test_augmented_images_are_flips_and_crops_of_their_own_input() -> None:
    n, h, w = 40, 16, 12
    x = np.random.default_rng(3).random((n, h, w, 2)).astype(np.float32)
    out = augment_images(x, np.random.default_rng(0))
    ph, pw = h // 8, w // 8  # the crop moves up to 1/8 of each side: 2 rows, 1 column
    seen_flip, seen_shift = set(), set()
    for i in range(n):
        padded = np.pad(x[i], ((ph, ph), (pw, pw), (0, 0)), mode="edge")
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(2 * ph + 1)
            for dx in range(2 * pw + 1)
            if np.array_equal(
                out[i],
                padded[dy : dy + h, dx : dx + w][:, ::-1]
                if flip
                else padded[dy : dy + h, dx : dx + w],
            )
        ]
        assert matches, f"sample {i} is no flip or crop of its input"
        flip, dy, dx = matches[0]
        seen_flip.add(flip)
        seen_shift.add((dy - ph, dx - pw))
    assert seen_flip == {False, True}
    assert len(seen_shift) >= 8 and (0, 0) in seen_shift  # 15 offsets in all
    # a one-pixel image pads to copies of itself: every flip and crop is the image
    tiny = np.random.default_rng(1).random((5, 1, 1, 3)).astype(np.float32)
    np.testing.assert_array_equal(augment_images(tiny, np.random.default_rng(0)), tiny)
