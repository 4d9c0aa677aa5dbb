"""cnndsl weights fetch: the command around cnndsl.formats.fetch, against a local server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cnndsl.cli import main
from cnndsl.formats.fetch import HDF5_SIGNATURE, WEIGHT_FILES, WeightFile

PAYLOAD = HDF5_SIGNATURE + bytes(range(256)) * 100


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server for tmp_path/www, with zoo.resnet50's top file pointing at it."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "r50.h5").write_bytes(PAYLOAD)
    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    entry = WeightFile("resnet50", True, f"{base}/r50.h5", hashlib.md5(PAYLOAD).hexdigest())
    monkeypatch.setitem(WEIGHT_FILES, ("resnet50", True), entry)
    try:
        yield base
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_prints_the_cached_path(served: str, tmp_path: Path, capsys: Any) -> None:
    cache = tmp_path / "cache"
    assert main(["weights", "fetch", "zoo.resnet50", "--cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{cache / 'r50.h5'}\n" and (cache / "r50.h5").read_bytes() == PAYLOAD
    assert f"downloading {served}/r50.h5" in err
    assert "r50.h5: checked (MD5 as Keras publishes it)" in err
    # Listed as cached; fetched again, it is not downloaded.
    assert main(["weights", "fetch", "--list", "--cache", str(cache)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("resnet50 "))
    assert line.split()[-1] == "yes"
    assert main(["weights", "fetch", "resnet50", "-q", "--cache", str(cache)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{cache / 'r50.h5'}\n" and err == ""


def test_fetch_errors_are_one_line(
    served: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = WeightFile("resnet50", True, f"{served}/gone.h5", "0" * 32)
    monkeypatch.setitem(WEIGHT_FILES, ("resnet50", True), entry)
    assert main(["weights", "fetch", "resnet50", "--cache", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "HTTP 404" in err and "Traceback" not in err
    assert not any((tmp_path / "c").iterdir())
    assert main(["weights", "fetch", "resnet05", "--cache", str(tmp_path / "c")]) == 1
    assert "did you mean 'resnet50'?" in capsys.readouterr().err
    assert main(["weights", "fetch"]) == 2
    assert main(["weights"]) == 2
