"""Files cnndsl reads: damaged archives, lying headers, huge claims and non-files, each refused.

A case per item of docs/reliability.md's limits: the .npz reader (a member
that is not `.npy`, a compression method or encryption flag flipped, a `.npy`
header that breaks NumPy's parser, a broken deflate stream, a header claiming
a huge shape, a member inflating more than deflate can, the decompressed-size
limit), IDX files (a corrupt .gz, a header claiming more than the file can
hold, the decompressed-size limit, data longer or shorter than claimed),
label ranges (IDX and .npz), and FIFOs, devices and folders where a file is
expected (data, weights, images, specs and imports). The reader itself is
checked against `np.load` on good files of every kind NumPy writes.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.formats import files, npz
from cnndsl.formats.data import DataError, load_data, load_images, read_idx
from cnndsl.formats.data.dataset import MAX_CLASSES
from cnndsl.formats.npz import NpzProblem, read_arrays
from cnndsl.source import CnnError
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    return image -> conv(2, 3, name="c1") -> flatten -> dense(classes, name="head")
}
"""


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    head = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def rebuild(content: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of these members with valid CRCs."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in content.items():
            z.writestr(name, data)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def central_entry(raw: bytes, index: int = 0) -> int:
    """Offset of the index-th central directory record of a zip."""
    pos = -1
    for _ in range(index + 1):
        pos = raw.index(b"PK\x01\x02", pos + 1)
    return pos


def set_field(raw: bytes, offset: int, value: int, size: int) -> bytes:
    out = bytearray(raw)
    out[offset : offset + size] = value.to_bytes(size, "little")
    return bytes(out)


def weights_file(tmp_path: Path) -> tuple[Any, Path]:
    model = cnndsl.compile(TINY).build(seed=0)
    path = tmp_path / "w.npz"
    model.save(path)
    return model, path


# ---- the .npz reader ----

GOOD_ARRAYS = {
    "f4": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "big_endian": np.arange(5, dtype=">i4"),
    "scalar": np.float64(2.5) * np.ones(()),
    "empty": np.zeros((0, 3), np.float32),
    "text": np.array(["ab", "c"]),
    "structured": np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j], np.complex64),
}


@pytest.mark.parametrize("compressed", [False, True])
def test_reader_matches_numpy_on_good_files(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "good.npz"
    (np.savez_compressed if compressed else np.savez)(path, **GOOD_ARRAYS)
    ours = read_arrays(path)
    with np.load(path, allow_pickle=False) as reference:
        assert sorted(ours) == sorted(reference.files)
        for key in reference.files:
            want = reference[key]
            assert ours[key].dtype == want.dtype and ours[key].shape == want.shape, key
            np.testing.assert_array_equal(ours[key], want, err_msg=key)


def test_a_member_that_is_not_npy_is_refused(tmp_path: Path) -> None:
    model, path = weights_file(tmp_path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", "hello")  # CRC valid: np.load would hand back bytes
    with pytest.raises(ModelError, match=r"w.npz: truncated or corrupt .npz \(member 'notes.txt'"):
        model.load(path)
    data = tmp_path / "d.npz"
    data.write_bytes(rebuild({"x.npy": npy(np.zeros((4, 6, 6))), "y.npy": b"not an array"}))
    with pytest.raises(DataError, match=r"d.npz: not a readable .npz file: corrupt array header"):
        load_data(str(data), (6, 6, 1), 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (10, 99, "uses compression method 99, which NumPy never writes"),  # NotImplementedError
        (10, 12, "uses compression method 12"),  # bzip2: another decompressor's errors
        (8, 1, "is marked encrypted"),  # RuntimeError: password required
    ],
)
def test_flipped_zip_header_fields_are_refused(
    tmp_path: Path, field: int, value: int, message: str
) -> None:
    model, path = weights_file(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(set_field(raw, central_entry(raw) + field, value, 2))
    with pytest.raises(ModelError, match=f"truncated or corrupt .npz .*{message}"):
        model.load(path)


def test_a_npy_header_that_breaks_the_tokenizer_is_refused(tmp_path: Path) -> None:
    # An unclosed parenthesis: NumPy's Python-2 header filter raises tokenize.TokenError.
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,".ljust(118) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(4)
    path = tmp_path / "w.npz"
    path.write_bytes(rebuild({"c1:kernel.npy": member}))
    with pytest.raises(NpzProblem) as problem:
        read_arrays(path)
    assert problem.value.kind == "bad_value" and "c1:kernel.npy" in problem.value.detail
    model = cnndsl.compile(TINY).build(seed=0)
    with pytest.raises(ModelError, match="w.npz: corrupt .npz .*write the weights again"):
        model.load(path)


def test_a_broken_deflate_stream_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((4, 6, 6)), y=np.arange(4) % 3)
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", raw[26:30])
    raw[30 + name_length + extra_length] = 0x07  # a final block of the reserved type 3
    path.write_bytes(bytes(raw))
    with pytest.raises(NpzProblem, match="corrupt: .*invalid block type"):  # zlib.error
        read_arrays(path)
    with pytest.raises(DataError, match="d.npz: not a readable .npz file: truncated or corrupt"):
        load_data(str(path), (6, 6, 1), 3)


def test_a_header_claiming_a_huge_shape_allocates_nothing(tmp_path: Path) -> None:
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }"
    text = header.encode().ljust(118) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(8)
    path = tmp_path / "w.npz"
    path.write_bytes(rebuild({"head:bias.npy": member}))  # CRC valid: only the header lies
    with pytest.raises(NpzProblem, match=r"'head:bias.npy' claims shape \[4611686018427387904\]"):
        read_arrays(path)


def test_a_member_claiming_more_than_deflate_can_give_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros(1000))
    raw = path.read_bytes()
    entry = central_entry(raw)
    compressed = struct.unpack("<I", raw[entry + 20 : entry + 24])[0]
    path.write_bytes(set_field(raw, entry + 24, compressed * 2000, 4))  # uncompressed size
    with pytest.raises(NpzProblem, match="claims to inflate .* more than deflate can"):
        read_arrays(path)


def test_the_decompressed_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.zeros((40, 6, 6)), y=np.arange(40) % 3)  # 11.8 KB inflated
    monkeypatch.setattr(npz, "MAX_DECOMPRESSED_BYTES", 10_000)
    refused = r"d.npz: refused: .*11.8 KiB .* more than the 9.8 KiB .*; save it uncompressed"
    with pytest.raises(DataError, match=refused):
        load_data(str(path), (6, 6, 1), 3)
    np.savez(path, x=np.zeros((40, 6, 6)), y=np.arange(40) % 3)  # stored: bounded by the file
    assert load_data(str(path), (6, 6, 1), 3).x_train.shape[1:] == (6, 6, 1)


# ---- IDX files ----


def write_idx_pair(folder: Path, images: bytes, labels: np.ndarray, gz: bool = True) -> Path:
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (folder / name).write_bytes(images)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return folder / name


def test_a_corrupt_gz_idx_is_refused(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (12, 6, 6), np.uint8)
    raw = bytearray(gzip.compress(idx_bytes(images)))
    raw[10] = 0x07  # the deflate stream's first block: reserved type, zlib.error
    path = write_idx_pair(tmp_path, bytes(raw), np.arange(12, dtype=np.uint8) % 3)
    with pytest.raises(DataError, match=r"cannot read it \(.*invalid block type.*download"):
        load_data(str(path), (6, 6, 1), 3)


def test_a_gz_header_claiming_more_than_the_file_can_hold(tmp_path: Path) -> None:
    # A 1 KB .gz whose header claims 3 GB: refused before anything is decompressed.
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 3_000_000, 1000, 1)
    path = write_idx_pair(tmp_path, gzip.compress(header + bytes(1000)), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"corrupt: .*3000000 × 1000 × 1 = 3000000000 bytes.* can"):
        read_idx(path)


def test_the_gz_decompressed_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cnndsl.formats.data import idx

    images = np.zeros((40, 6, 6), np.uint8)
    path = write_idx_pair(tmp_path, gzip.compress(idx_bytes(images)), np.zeros(40, np.uint8))
    monkeypatch.setattr(idx, "MAX_DECOMPRESSED_BYTES", 1000)
    with pytest.raises(DataError, match="refused: .*1440 bytes of data.*decompress it"):
        read_idx(path)


def test_gz_data_shorter_or_longer_than_its_header(tmp_path: Path) -> None:
    images = np.ones((4, 6, 6), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)[:-10]))  # a whole stream, short data
    with pytest.raises(DataError, match="file is truncated: .*ended after 134 of 144 bytes"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(images) + b"more"))
    with pytest.raises(DataError, match="file is longer than its header says"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path), images)


def test_an_idx_name_linked_to_dev_zero_is_refused(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    (tmp_path / "train-images-idx3-ubyte").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="a character device, not a regular file"):
        load_data(str(tmp_path / "train-images-idx3-ubyte"), (6, 6, 1), 3)
    with pytest.raises(DataError, match="a character device, not a regular file"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


# ---- label ranges ----


def test_an_idx_label_of_2_to_the_31_is_refused(tmp_path: Path) -> None:
    images = np.zeros((4, 6, 6), np.uint8)
    labels = np.array([0, 1, 2**31 - 1, 2], ">i4")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x0C))
    with pytest.raises(DataError, match=r"label 2147483647 \(sample 2\) is not a class index"):
        load_data(str(tmp_path / "train-images-idx3-ubyte"), (6, 6, 1), 3)


@pytest.mark.parametrize(
    "arrays",
    [
        {"y": np.array([0, 1, 2**40, 2])},
        {"y": np.array([0, 1, 2**62, 2])},
        {"y": np.array([0, 1, 2**64 - 1, 2], np.uint64)},  # would wrap to -1 as int64
        {"y": np.array([0, 1, 1e300, 2])},
        {"y": np.array([0, 1, -(2**62), 2])},
    ],
    ids=["2**40", "2**62", "uint64", "1e300", "-2**62"],
)
def test_npz_labels_far_out_of_range_are_refused(tmp_path: Path, arrays: dict[str, Any]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 6, 6)), **arrays)
    with pytest.raises(DataError, match=f"at most {MAX_CLASSES:,} classes"):
        load_data(str(path), (6, 6, 1), 3)


def test_a_y_test_label_of_2_to_the_40_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.zeros((4, 6, 6))
    y_test = np.array([0, 2**40, 1, 2])
    np.savez(path, x_train=x, y_train=np.arange(4) % 3, x_test=x, y_test=y_test)
    with pytest.raises(DataError, match=r"label 1099511627776 \(sample 1\)"):
        load_data(str(path), (6, 6, 1), 3)


def test_the_largest_accepted_label(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    y = np.array([0, 1, MAX_CLASSES - 1, 2])
    np.savez(path, x_train=np.zeros((4, 6, 6)), y_train=y, x_test=np.zeros((4, 6, 6)), y_test=y)
    assert len(load_data(str(path), (6, 6, 1)).class_names) == MAX_CLASSES


# ---- FIFOs, devices and folders where a file is expected ----


def finishes(call: Callable[[], Any], fifo: Path) -> BaseException | None:
    """What call raised (None if nothing), failing the test if it hangs on the FIFO."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # let the reader go, then fail
        os.close(fd)
        worker.join(timeout=5)
        pytest.fail(f"hung on the FIFO {fifo}")
    return outcome[0]


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    return tmp_path


def test_fifos_are_refused_everywhere(fifo_dir: Path) -> None:
    spec = fifo_dir / "tiny.cnn"
    spec.write_text(TINY)
    model = cnndsl.compile(spec).build(seed=0)
    cases: list[tuple[str, Callable[[Path], Any], type[BaseException]]] = [
        ("w.npz", lambda p: model.load(p), ModelError),
        ("d.npz", lambda p: load_data(str(p), (6, 6, 1), 3), DataError),
        ("train-images-idx3-ubyte", lambda p: load_data(str(p), (6, 6, 1), 3), DataError),
        ("photo.png", lambda p: load_images([str(p)], (6, 6, 1)), DataError),
        ("spec.cnn", lambda p: cnndsl.compile(p), CnnError),
        ("lib.cnn", lambda p: cnndsl.compile(f'import "{p}"\n' + TINY), CnnError),
    ]
    for name, call, error in cases:
        fifo = fifo_dir / name
        os.mkfifo(fifo)
        raised = finishes(lambda call=call, fifo=fifo: call(fifo), fifo)
        assert isinstance(raised, error), (name, raised)
        assert "a named pipe (FIFO), not a regular file" in str(raised), (name, str(raised))


def test_require_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "f"
    regular.write_bytes(b"x")
    assert files.require_regular_file(regular).st_size == 1
    with pytest.raises(files.NotRegularFile, match="a folder, not a regular file"):
        files.require_regular_file(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.require_regular_file(tmp_path / "missing")
    if Path("/dev/null").exists():
        with pytest.raises(files.NotRegularFile, match="a character device") as e:
            files.open_regular("/dev/null")
        assert isinstance(e.value, OSError) and e.value.filename == "/dev/null"


def test_read_exactly_reads_what_was_claimed() -> None:
    data = np.arange(10, dtype="<i4")
    np.testing.assert_array_equal(files.read_exactly(io.BytesIO(data.tobytes()), 10, "<i4"), data)
    with pytest.raises(files.TruncatedData, match="ended after 36 of 40 bytes"):
        files.read_exactly(io.BytesIO(data.tobytes()[:-4]), 10, "<i4")
