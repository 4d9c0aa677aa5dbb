"""Fetching weight files, against a local HTTP server on 127.0.0.1.

The server (http.server in a thread) serves a file written here: the HDF5
signature and random bytes (the fetcher checks the signature and hashes,
never the content). Its handler can cut a response short, ignore Range
headers, answer 404 or 503: each case must end in a good file in the cache
or a FetchError that says what to do, with nothing partial left behind.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnndsl.formats.fetch import (
    HDF5_SIGNATURE,
    KERAS_APPLICATIONS,
    WEIGHT_FILES,
    FetchError,
    WeightFile,
    cache_folder,
    cached,
    fetch,
    weight_file,
)

PAYLOAD = HDF5_SIGNATURE + np.random.default_rng(5).bytes(200_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 3, "timeout": 5.0, "backoff": 0.0}


@dataclass
class Behaviour:
    """What the test server does; it records every request's Range header."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: list[int] = field(default_factory=list)  # per response: bytes sent, then close
    ignore_range: bool = False
    fail_with: list[int] = field(default_factory=list)  # statuses to answer first (e.g. 503)
    ranges: list[str | None] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        b = self.server.behaviour  # type: ignore[attr-defined]
        b.ranges.append(self.headers.get("Range"))
        if b.fail_with:
            self.send_error(b.fail_with.pop(0))
            return
        data = b.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        asked = self.headers.get("Range")
        if asked and not b.ignore_range:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if b.cut_after:
            body = body[: b.cut_after.pop(0)]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.behaviour = Behaviour(files={"/w/tiny.h5": PAYLOAD})  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.behaviour  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def table(url: str, keras_hash: str | None = MD5, sha256: str | None = None) -> dict:
    return {("tiny", True): WeightFile("tiny", True, url, keras_hash, sha256)}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_transfer_lands_checked_in_the_cache(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    seen: list[tuple[int, int | None]] = []
    path = fetch(
        "tiny",
        folder=tmp_path,
        table=table(base + "/w/tiny.h5"),
        progress=lambda done, total: seen.append((done, total)),
        **FAST,
    )
    assert path == tmp_path / "tiny.h5" and path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["tiny.h5"]  # no temp file
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) > 2
    assert behaviour.ranges == [None]
    # A second fetch finds it in the cache: checked again, not downloaded.
    assert fetch("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), **FAST) == path
    assert behaviour.ranges == [None]
    assert cached("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5")) == path


def test_sha256_published_by_keras_and_pinned(server: Any, tmp_path: Path) -> None:
    base, _ = server
    entry = table(base + "/w/tiny.h5", keras_hash=SHA256, sha256=SHA256)
    assert fetch("tiny", folder=tmp_path, table=entry, **FAST).read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("keras_hash", "pinned", "what"),
    [
        ("0" * 32, None, "MD5"),
        ("f" * 64, None, "SHA256"),
        (MD5, "0" * 64, "SHA-256 (pinned)"),
    ],
)
def test_wrong_hash_keeps_nothing(
    server: Any, tmp_path: Path, keras_hash: str, pinned: str | None, what: str
) -> None:
    base, _ = server
    with pytest.raises(FetchError) as e:
        fetch("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5", keras_hash, pinned), **FAST)
    message = str(e.value)
    assert f"its {what} is" in message and "nothing was kept" in message
    assert leftovers(tmp_path) == []


def test_truncated_transfer_resumes_where_it_stopped(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.cut_after = [70_000, 50_000]  # two cuts, then the rest
    notices: list[str] = []
    path = fetch(
        "tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), notify=notices.append, **FAST
    )
    assert path.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["tiny.h5"]
    assert behaviour.ranges == [None, "bytes=70000-", "bytes=120000-"]
    assert "closed after 70,000 of 200,008 bytes; resuming at 70,000 bytes" in notices[0]


def test_server_ignoring_range_starts_over(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.cut_after = [90_000]
    behaviour.ignore_range = True
    path = fetch("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), **FAST)
    assert path.read_bytes() == PAYLOAD  # the 200 answer replaced the partial bytes


def test_transfer_cut_every_time_gives_up_cleanly(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.cut_after = [10_000] * 10
    with pytest.raises(FetchError) as e:
        fetch("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), **FAST)
    assert "gave up after 4 tries, the last: the connection closed after 40,000 of 200,008" in str(
        e.value
    )
    assert "run the command again" in str(e.value)
    assert len(behaviour.ranges) == 4 and leftovers(tmp_path) == []


def test_server_errors_are_retried(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.fail_with = [503, 500]
    notices: list[str] = []
    path = fetch(
        "tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), notify=notices.append, **FAST
    )
    assert path.read_bytes() == PAYLOAD
    assert "HTTP 503" in notices[0] and "starting again" in notices[0]


def test_404_is_not_retried(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    with pytest.raises(FetchError, match=r"HTTP 404 Not Found; the file may have moved"):
        fetch("tiny", folder=tmp_path, table=table(base + "/w/missing.h5"), **FAST)
    assert len(behaviour.ranges) == 1 and leftovers(tmp_path) == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notices: list[str] = []
    with pytest.raises(FetchError) as e:
        fetch(
            "tiny",
            folder=tmp_path,
            table=table(f"http://127.0.0.1:{port}/w/tiny.h5"),
            notify=notices.append,
            **FAST,
        )
    assert "gave up after 4 tries, the last: cannot connect (Connection refused)" in str(e.value)
    assert len(notices) == 3 and leftovers(tmp_path) == []


def test_an_error_page_is_not_a_weight_file(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    behaviour.files["/w/page.h5"] = b"<!DOCTYPE html><title>Sign in</title>"
    with pytest.raises(
        FetchError, match=r"did not give an HDF5 file \(it starts with '<!DOCTYPE html>"
    ):
        fetch("tiny", folder=tmp_path, table=table(base + "/w/page.h5", keras_hash=None), **FAST)
    assert leftovers(tmp_path) == []


def test_file_without_a_published_hash_is_kept_with_a_notice(server: Any, tmp_path: Path) -> None:
    base, _ = server
    notices: list[str] = []
    entry = table(base + "/w/tiny.h5", keras_hash=None)
    path = fetch("tiny", folder=tmp_path, table=entry, notify=notices.append, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert notices == [
        f"tiny.h5: Keras publishes no hash for this file, so it is unchecked; its SHA-256 is"
        f" {SHA256}"
    ]


def test_a_bad_cached_file_is_fetched_again(server: Any, tmp_path: Path) -> None:
    base, behaviour = server
    (tmp_path / "tiny.h5").write_bytes(PAYLOAD[:1000])  # say, copied by hand, cut short
    notices: list[str] = []
    path = fetch(
        "tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), notify=notices.append, **FAST
    )
    assert path.read_bytes() == PAYLOAD and behaviour.ranges == [None]
    assert "is not the published file" in notices[0] and "fetching it again" in notices[0]


def test_unwritable_cache_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FetchError, match=r"cannot create the cache folder"):
        fetch("tiny", folder=blocker / "cache", table=table("http://127.0.0.1:9/x.h5"), **FAST)


def test_cache_folder_follows_xdg(tmp_path: Path) -> None:
    assert cache_folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cnndsl" / "weights"
    home = Path.home() / ".cache" / "cnndsl" / "weights"
    assert cache_folder({"XDG_CACHE_HOME": "relative/path"}) == home  # ignored, as XDG says
    assert cache_folder({}) == home


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(FetchError, match=r"'resnet5'; did you mean 'resnet50'\?.*vgg16"):
        weight_file("resnet5")
    with pytest.raises(FetchError, match=r"no pretrained weights known for 'lenet5'"):
        weight_file("lenet5")
    assert weight_file("zoo.xception", top=False).filename == (
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_weight_table_matches_the_zoo() -> None:
    from cnndsl.frontend.grammar import resource_path

    specs = {p.stem for p in resource_path("specs").glob("*.cnn")}
    models = {m for m, _ in WEIGHT_FILES}
    assert models == {
        "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "inception_v3",
        "xception", "mobilenet", "mobilenet_v2", "densenet121",
    }  # fmt: skip
    assert models <= specs
    for (model, top), entry in WEIGHT_FILES.items():
        assert (model, not top) in WEIGHT_FILES
        assert entry.url.startswith(KERAS_APPLICATIONS) and entry.filename.endswith(".h5")
        assert ("no_top" in entry.filename or "notop" in entry.filename) == (not top)
        if entry.keras_hash is not None:
            assert len(entry.keras_hash) in (32, 64) and int(entry.keras_hash, 16) >= 0
        assert entry.sha256 is None  # pinned only after hashing a good copy
    assert weight_file("resnet50").url == (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    )


def test_no_temp_file_left_when_interrupted(server: Any, tmp_path: Path) -> None:
    base, _ = server

    def interrupt(done: int, total: int | None) -> None:
        if done > 50_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch("tiny", folder=tmp_path, table=table(base + "/w/tiny.h5"), progress=interrupt)
    assert leftovers(tmp_path) == []
