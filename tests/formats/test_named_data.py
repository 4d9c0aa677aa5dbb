"""Named data sets: downloads from a local HTTP server on 127.0.0.1, loaders on small files.

The files are tiny stand-ins written here in each set's real format: gzipped
IDX (MNIST, Fashion-MNIST), CIFAR-10's binary tarball, the flowers' folder
tarball. Their MD5s replace the published ones in the table handed to the
loader, so the same code paths run as with the real files, without a network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnndsl.formats.data import DataError, load_data
from cnndsl.formats.data import named as named_module
from cnndsl.formats.data.named import (
    NAMED,
    data_folder,
    fetch_named,
    load_named,
    read_cifar_binary,
    unpack_tarball,
)
from cnndsl.formats.fetch import WeightFile

FAST = {"retries": 1, "timeout": 5.0, "backoff": 0.0}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 values: magic 0x0000 08 ndim, big-endian sizes, the bytes."""
    head = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(head + array.astype(np.uint8).tobytes())


def mnist_files(rng: np.random.Generator, train: int = 20, test: int = 10) -> dict[str, bytes]:
    """The four gzipped IDX files, with 28×28 images and labels 0..9."""
    files = {}
    for part, n in (("train", train), ("t10k", test)):
        files[f"{part}-images-idx3-ubyte.gz"] = idx_bytes(rng.integers(0, 256, (n, 28, 28)))
        files[f"{part}-labels-idx1-ubyte.gz"] = idx_bytes(np.arange(n) % 10)
    return files


def cifar_tarball(rng: np.random.Generator, per_batch: int = 3) -> tuple[bytes, dict[str, Any]]:
    """cifar-10-binary.tar.gz with per_batch records per batch; also what went in."""
    buf = io.BytesIO()
    truth: dict[str, Any] = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"]
        names += ["data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"]
        for name in names:
            labels = rng.integers(0, 10, per_batch)
            planes = rng.integers(0, 256, (per_batch, 3, 32, 32))
            records = np.concatenate([labels[:, None], planes.reshape(per_batch, -1)], axis=1)
            truth[name] = (labels, planes)
            _add(tar, f"cifar-10-batches-bin/{name}", records.astype(np.uint8).tobytes())
        meta = "\n".join(["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse"])
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", (meta + "\nship\ntruck\n\n").encode())
    return buf.getvalue(), truth


def _add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def flowers_tarball(extra: list[tuple[str, bytes, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    """flower_photos.tgz with two classes of small PNGs, a LICENSE.txt and `extra` entries."""
    from PIL import Image

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for k, cls in enumerate(("daisy", "roses")):
            for i in range(5):
                png = io.BytesIO()
                Image.new("RGB", (12, 10), (40 * i, 100 * k, 7)).save(png, format="PNG")
                _add(tar, f"flower_photos/{cls}/{i}.png", png.getvalue())
        _add(tar, "flower_photos/LICENSE.txt", b"CC-BY")
        for name, data, kind in extra:
            _add(tar, name, data, kind)
    return buf.getvalue()


def table(base: str, name: str, files: dict[str, bytes]) -> dict[str, tuple[WeightFile, ...]]:
    """A one-set table of files served at base/<file>, with their true MD5s."""
    entries = tuple(
        WeightFile(f, True, f"{base}/{f}", hashlib.md5(d).hexdigest()) for f, d in files.items()
    )
    return {name: entries}


# ---- a local server ----


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        server: Any = self.server
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        body = data[: server.cut] if server.cut is not None else data
        self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut = {}, None
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---- downloads ----


def test_download_lands_checked_and_loads_with_the_official_split(
    server: Any, tmp_path: Path
) -> None:
    files = mnist_files(np.random.default_rng(0))
    server.files = files
    seen: list[tuple[int, int | None]] = []
    sets = table(server.base, "mnist", files)
    ds = load_named("mnist", folder=tmp_path, sets=sets, progress=lambda d, t: seen.append((d, t)))
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(files)
    assert seen and seen[-1][0] == seen[-1][1]  # the progress callback saw each file end
    assert ds.name == "mnist" and ds.x_train.shape == (20, 28, 28) and ds.x_test.shape[0] == 10
    raw = gzip.decompress(files["train-images-idx3-ubyte.gz"])[16:]
    np.testing.assert_array_equal(ds.x_train.pixels.ravel(), np.frombuffer(raw, np.uint8))
    np.testing.assert_array_equal(ds.y_test, np.arange(10) % 10)
    # Offline now: the cached files are checked and used, the server not asked again.
    server.files = {}
    again = load_named("mnist", folder=tmp_path, sets=sets)
    np.testing.assert_array_equal(again.y_train, ds.y_train)


def test_wrong_checksum_keeps_nothing(server: Any, tmp_path: Path) -> None:
    files = mnist_files(np.random.default_rng(1))
    sets = table(server.base, "mnist", files)
    server.files = {**files, "t10k-labels-idx1-ubyte.gz": b"not the published file"}
    with pytest.raises(DataError, match=r"not the published file.*place it at"):
        fetch_named("mnist", tmp_path, sets=sets, **FAST)
    assert not (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(".tmp")]


def test_truncated_transfer_keeps_nothing(server: Any, tmp_path: Path) -> None:
    data, _ = cifar_tarball(np.random.default_rng(2))
    server.files = {"cifar-10-binary.tar.gz": data}
    server.cut = len(data) // 2  # every answer stops half way, Range or not
    sets = table(server.base, "cifar10", server.files)
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz"):
        fetch_named("cifar10", tmp_path, sets=sets, **FAST)
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_404_and_refused_say_which_file_to_place_where(server: Any, tmp_path: Path) -> None:
    files = mnist_files(np.random.default_rng(3))
    for base in (server.base, refused_url()):  # nothing served; nothing listening
        sets = table(base, "mnist", files)
        with pytest.raises(DataError) as info:
            fetch_named("mnist", tmp_path, sets=sets, **FAST)
        message = str(info.value)
        assert f"download {base}/train-images-idx3-ubyte.gz by hand" in message
        assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message


def test_cache_folder_follows_xdg(tmp_path: Path) -> None:
    assert data_folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cnndsl" / "data"
    assert data_folder({"XDG_CACHE_HOME": "relative"}) == Path.home() / ".cache/cnndsl/data"


def test_table_names_the_canonical_files() -> None:
    assert sorted(NAMED) == ["cifar10", "fashion_mnist", "mnist", "tf_flowers"]
    assert [e.model for e in NAMED["cifar10"]] == ["cifar-10-binary.tar.gz"]
    assert all(len(e.keras_hash or "") == 32 for k in ("mnist", "cifar10") for e in NAMED[k])


# ---- loaders on small files in the real formats ----


def test_cifar_binary_records_become_nhwc_images(tmp_path: Path) -> None:
    data, truth = cifar_tarball(np.random.default_rng(4))
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(data)
    ds = read_cifar_binary(path)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    labels, planes = truth["data_batch_2.bin"]
    np.testing.assert_array_equal(ds.y_train[3:6], labels)
    for n in range(3):  # record n of batch 2: pixel (i, j) channel c is plane c at i·32 + j
        for i, j, c in ((0, 0, 0), (5, 17, 1), (31, 2, 2)):
            assert ds.x_train.pixels[3 + n, i, j, c] == planes[n, c, i, j]
    assert ds.class_names[0] == "plane" and ds.class_names[-1] == "truck"


def test_cifar_truncated_batch_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "cifar-10-batches-bin/test_batch.bin", b"\x01" * 3000)
    path = tmp_path / "c.tar.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        read_cifar_binary(path)


def test_flowers_tarball_unpacks_once_and_loads(server: Any, tmp_path: Path) -> None:
    server.files = {"flower_photos.tgz": flowers_tarball()}
    sets = table(server.base, "tf_flowers", server.files)
    ds = load_named("tf_flowers", (8, 8, 3), 0.4, folder=tmp_path, sets=sets)
    assert ds.class_names == ["daisy", "roses"]
    assert len(ds.y_train) + len(ds.y_test) == 10 and ds.x_train.shape[1:] == (8, 8, 3)
    assert (tmp_path / "tf_flowers" / "flower_photos" / "roses" / "4.png").is_file()


@pytest.mark.parametrize("evil", ["../escape.txt", "/abs.txt", "flower_photos/../../up.txt"])
def test_tarball_entries_outside_the_folder_are_refused(tmp_path: Path, evil: str) -> None:
    path = tmp_path / "cache" / "flower_photos.tgz"
    path.parent.mkdir()
    path.write_bytes(flowers_tarball([(evil, b"x", tarfile.REGTYPE)]))
    with pytest.raises(DataError, match="refusing the entry"):
        unpack_tarball(path, path.parent / "flower_photos")
    assert sorted(p.name for p in path.parent.iterdir()) == ["flower_photos.tgz"]
    assert not list(tmp_path.rglob("*.txt"))


def test_tarball_links_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "flower_photos.tgz"
    path.write_bytes(flowers_tarball([("flower_photos/daisy/link", b"", tarfile.SYMTYPE)]))
    out = unpack_tarball(path, tmp_path / "flower_photos")
    assert not (out / "daisy" / "link").exists() and (out / "daisy" / "0.png").is_file()


def test_load_data_by_name_from_the_cache_pads_digits_for_lenet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--data mnist` with the files in $XDG_CACHE_HOME: no network, 28×28 padded to 32×32."""
    files = mnist_files(np.random.default_rng(5))
    folder = tmp_path / "cnndsl" / "data" / "mnist"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(named_module.NAMED, "mnist", table(refused_url(), "mnist", files)["mnist"])
    ds = load_data("mnist", (32, 32, 1), 10)
    assert ds.x_train.shape == (20, 32, 32, 1)
    x = np.asarray(ds.x_train)
    raw = np.frombuffer(gzip.decompress(files["train-images-idx3-ubyte.gz"])[16:], np.uint8)
    np.testing.assert_allclose(x[:, 2:30, 2:30, 0], raw.reshape(20, 28, 28) / 255, rtol=1e-6)
    assert not x[:, :2].any() and not x[:, 30:].any() and not x[:, :, :2].any()
    assert load_data("mnist", (28, 28, 1), 10).x_train.shape == (20, 28, 28, 1)


def _cache_with(tmp_path: Path, name: str, files: dict[str, bytes], monkeypatch: Any) -> None:
    """Stand-in files of set `name` in $XDG_CACHE_HOME, the table checking their MD5s."""
    folder = tmp_path / "cnndsl" / "data" / name
    folder.mkdir(parents=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(named_module.NAMED, name, table(refused_url(), name, files)[name])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_cli_runs_lenet5_on_a_named_set_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, name: str
) -> None:
    from cnndsl.cli import main

    _cache_with(tmp_path, name, mnist_files(np.random.default_rng(6)), monkeypatch)
    argv = ["run", "zoo.lenet5", "--data", name, "--epochs", "1", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "test loss" in capsys.readouterr().out


def test_cli_runs_on_cifar10_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from cnndsl.cli import main

    data, _ = cifar_tarball(np.random.default_rng(7))
    _cache_with(tmp_path, "cifar10", {"cifar-10-binary.tar.gz": data}, monkeypatch)
    spec = tmp_path / "tiny.cnn"
    spec.write_text(
        "network tiny(classes=10) {\n    input image: [32, 32, 3]\n"
        "    return image -> conv(2, 3, stride=4) -> flatten\n"
        "        -> dense(classes, activation=softmax)\n}\n"
    )
    assert main(["run", str(spec), "--data", "cifar10", "--epochs", "1", "--quiet"]) == 0
    assert "test loss" in capsys.readouterr().out


def test_cli_offline_error_names_the_file_and_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from cnndsl.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    files = mnist_files(np.random.default_rng(8))
    monkeypatch.setitem(named_module.NAMED, "mnist", table(refused_url(), "mnist", files)["mnist"])
    assert main(["run", "zoo.lenet5", "--data", "mnist", "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert str(tmp_path / "cnndsl" / "data" / "mnist" / "train-images-idx3-ubyte.gz") in err
