"""Fetching pretrained weights: the official Keras files of zoo models, into the user's cache.

Input: a zoo model name (`resnet50`, `xception`, ...) and whether the file
has the classifier (`top`). Output: the path of a checked file in the cache
folder ($XDG_CACHE_HOME/cnndsl/weights, else ~/.cache/cnndsl/weights).

The files are those `keras.applications` downloads, from the same public
location, checked against the hash Keras publishes for each (MD5 for these;
`file_hash` values of 64 hex digits are SHA-256) and against a SHA-256
pinned here once a good copy has been hashed (`sha256`: None until then).
The transfer goes to a temp file in the cache folder; an interrupted one is
retried and resumed where it stopped (HTTP Range), a bounded number of
times; only a complete file whose hashes match is renamed into place, so
the cache never holds a partial or bad file under a weight file's name.
Failures raise FetchError saying what happened and what to do. Uses
urllib only; progress and notices go to callbacks (the CLI prints).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cnndsl.formats.weights import fsync_folder

KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHUNK = 1 << 16
USER_AGENT = "cnndsl/0.1 (weights fetch)"

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)
Notify = Callable[[str], None]


@dataclass(frozen=True)
class WeightFile:
    """One downloadable weight file of a zoo model and the hashes that check it.

    keras_hash: as keras.applications publishes it (`file_hash`): MD5 (32 hex
    digits) or SHA-256 (64); None where Keras publishes none (MobileNets).
    sha256: pinned by this project after hashing a good copy; None until then.
    """

    model: str
    top: bool
    url: str
    keras_hash: str | None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        """The file's name, as Keras keeps it in ~/.keras/models."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def keras_algorithm(self) -> str | None:
        """'md5' or 'sha256' for keras_hash (Keras tells them apart by length)."""
        if self.keras_hash is None:
            return None
        return "sha256" if len(self.keras_hash) == 64 else "md5"


def _keras(
    model: str, folder: str, top: tuple[str, str | None], notop: tuple[str, str | None]
) -> dict[tuple[str, bool], WeightFile]:
    base = f"{KERAS_APPLICATIONS}{folder}/"
    return {
        (model, True): WeightFile(model, True, base + top[0], top[1]),
        (model, False): WeightFile(model, False, base + notop[0], notop[1]),
    }


_TF = "_weights_tf_dim_ordering_tf_kernels"
# NOTE: file names, folders and hashes as in keras/src/applications/*.py (Keras 3.15).
# The MobileNet files are those of the zoo's defaults (alpha 1.0, size 224).
WEIGHT_FILES: dict[tuple[str, bool], WeightFile] = {
    **_keras(
        "vgg16",
        "vgg16",
        (f"vgg16{_TF}.h5", "64373286793e3c8b2b4e3219cbf3544b"),
        (f"vgg16{_TF}_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    ),
    **_keras(
        "vgg19",
        "vgg19",
        (f"vgg19{_TF}.h5", "cbe5617147190e668d6c5d5026f83318"),
        (f"vgg19{_TF}_notop.h5", "253f8cb515780f3b799900260a226db6"),
    ),
    **_keras(
        "resnet50",
        "resnet",
        (f"resnet50{_TF}.h5", "2cb95161c43110f7111970584f804107"),
        (f"resnet50{_TF}_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    ),
    **_keras(
        "resnet101",
        "resnet",
        (f"resnet101{_TF}.h5", "f1aeb4b969a6efcfb50fad2f0c20cfc5"),
        (f"resnet101{_TF}_notop.h5", "88cf7a10940856eca736dc7b7e228a21"),
    ),
    **_keras(
        "resnet152",
        "resnet",
        (f"resnet152{_TF}.h5", "100835be76be38e30d865e96f2aaae62"),
        (f"resnet152{_TF}_notop.h5", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    ),
    **_keras(
        "inception_v3",
        "inception_v3",
        (f"inception_v3{_TF}.h5", "9a0d58056eeedaa3f26cb7ebd46da564"),
        (f"inception_v3{_TF}_notop.h5", "bcbd6486424b2319ff4ef7d526e38f63"),
    ),
    **_keras(
        "xception",
        "xception",
        (f"xception{_TF}.h5", "0a58e3b7378bc2990ea3b43d5981f1f6"),
        (f"xception{_TF}_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
    ),
    **_keras(
        "mobilenet",
        "mobilenet",
        ("mobilenet_1_0_224_tf.h5", None),
        ("mobilenet_1_0_224_tf_no_top.h5", None),
    ),
    **_keras(
        "mobilenet_v2",
        "mobilenet_v2",
        (f"mobilenet_v2{_TF}_1.0_224.h5", None),
        (f"mobilenet_v2{_TF}_1.0_224_no_top.h5", None),
    ),
    **_keras(
        "densenet121",
        "densenet",
        (f"densenet121{_TF}.h5", "9d60b8095a5708f2dcce2bca79d332c7"),
        (f"densenet121{_TF}_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
    ),
}


class FetchError(Exception):
    """A fetch that gave no good file: what happened and what to do."""


class _Retry(Exception):
    """A failure worth another try (connection lost, timeout, server error)."""


def cache_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Where fetched weights are kept: $XDG_CACHE_HOME/cnndsl/weights, else ~/.cache/...."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    # NOTE: the XDG spec says to ignore a relative XDG_CACHE_HOME.
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "cnndsl" / "weights"


def weight_file(
    model: str, top: bool = True, table: Mapping[tuple[str, bool], WeightFile] | None = None
) -> WeightFile:
    """The table's entry for a zoo model ('zoo.' prefix allowed); FetchError naming the others."""
    table = WEIGHT_FILES if table is None else table
    name = model.removeprefix("zoo.")
    if (name, top) in table:
        return table[(name, top)]
    known = sorted({m for m, _ in table})
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise FetchError(
        f"no pretrained weights known for '{model}'{hint} (there are files for:"
        f" {', '.join(known)}); for another model, pass a weights file you have to --load"
    )


def cached(
    model: str,
    top: bool = True,
    folder: str | os.PathLike[str] | None = None,
    table: Mapping[tuple[str, bool], WeightFile] | None = None,
) -> Path | None:
    """The cached file of a zoo model if it has been fetched, else None (no download)."""
    entry = weight_file(model, top, table)
    path = Path(folder if folder is not None else cache_folder()) / entry.filename
    return path if path.is_file() else None


def fetch(
    model: str,
    top: bool = True,
    *,
    folder: str | os.PathLike[str] | None = None,
    table: Mapping[tuple[str, bool], WeightFile] | None = None,
    retries: int = 4,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: Progress | None = None,
    notify: Notify | None = None,
) -> Path:
    """Download (or find in the cache) a zoo model's weight file, checked; returns its path.

    retries: further tries after a lost connection, a timeout or a server
    error, each resuming where the last stopped, `backoff`·2^k seconds apart.
    A file already in the cache is checked again; a bad one is fetched anew.
    """
    entry = weight_file(model, top, table)
    say = notify or (lambda message: None)
    cache = Path(folder if folder is not None else cache_folder())
    dest = cache / entry.filename
    if dest.is_file():
        try:
            check_file(dest, entry, say)
            return dest
        except FetchError as e:
            say(f"{dest}: {e}; fetching it again")
            dest.unlink()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(
            f"{cache}: cannot create the cache folder ({e.strerror or e}); set XDG_CACHE_HOME"
            " or pass another folder (--cache DIR)"
        ) from None
    fd, tmp = _temp_file(cache)
    try:
        with os.fdopen(fd, "w+b") as out:
            _transfer(entry.url, out, retries, timeout, backoff, progress, say)
            out.flush()
            os.fsync(out.fileno())
        check_file(Path(tmp), entry, say)
        os.replace(tmp, dest)  # NOTE: only a complete, checked file gets the real name
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(str(cache))
    return dest


def _temp_file(cache: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(dir=cache, prefix=".tmp-", suffix=".part")
    except OSError as e:
        raise FetchError(
            f"{cache}: cannot write to the cache folder ({e.strerror or e}); set"
            " XDG_CACHE_HOME or pass another folder (--cache DIR)"
        ) from None


def file_hashes(path: str | os.PathLike[str]) -> dict[str, str]:
    """MD5 and SHA-256 of a file, read once: {'md5': hex, 'sha256': hex}."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def check_file(path: Path, entry: WeightFile, notify: Notify | None = None) -> dict[str, str]:
    """Check a downloaded file against the entry's hashes; FetchError if one differs."""
    if entry.filename.endswith(".h5"):
        with open(path, "rb") as f:
            head = f.read(24)
        if not head.startswith(HDF5_SIGNATURE):
            shown = head.decode("ascii", "replace").strip() or "nothing"
            raise FetchError(
                f"{entry.url} did not give an HDF5 file (it starts with {shown!r}: an error page"
                " or a proxy's answer?); try again later or download it by hand"
            )
    digests = file_hashes(path)
    algorithm = entry.keras_algorithm
    if algorithm is not None and digests[algorithm] != str(entry.keras_hash).lower():
        raise FetchError(_mismatch(entry, algorithm.upper(), entry.keras_hash, digests[algorithm]))
    if entry.sha256 is not None and digests["sha256"] != entry.sha256.lower():
        raise FetchError(_mismatch(entry, "SHA-256 (pinned)", entry.sha256, digests["sha256"]))
    if algorithm is None and entry.sha256 is None and notify is not None:
        notify(
            f"{entry.filename}: Keras publishes no hash for this file, so it is unchecked;"
            f" its SHA-256 is {digests['sha256']}"
        )
    return digests


def _mismatch(entry: WeightFile, what: str, expected: str | None, got: str) -> str:
    return (
        f"{entry.filename} is not the published file: its {what} is {got}, expected {expected}"
        " (a corrupted transfer, or the file changed upstream); nothing was kept: run the"
        " command again, and if it fails the same way, report it"
    )


def _transfer(
    url: str,
    out: IO[bytes],
    retries: int,
    timeout: float,
    backoff: float,
    progress: Progress | None,
    say: Notify,
) -> int:
    """Copy url into out, resuming with HTTP Range after a failure; returns the byte count."""
    total: int | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            total = _attempt(url, out, total, timeout, progress)
            return out.tell()
        except _Retry as e:
            reason = str(e)
        done = out.tell()
        if attempt > retries:
            tries = f"{attempt} tries, the last: " if attempt > 1 else ""
            raise FetchError(
                f"{url}: gave up after {tries}{reason}; nothing was kept: check the connection"
                " (or proxy settings) and run the command again, or download the file by hand"
                " and pass it to --load"
            )
        wait = backoff * 2 ** (attempt - 1)
        where = f"resuming at {done:,} bytes" if done else "starting again"
        say(f"{reason}; {where} in {wait:g} s (try {attempt + 1} of {retries + 1})")
        time.sleep(wait)


def _attempt(
    url: str, out: IO[bytes], total: int | None, timeout: float, progress: Progress | None
) -> int | None:
    """One request, appending what arrives to out; returns the total size. _Retry to go on."""
    done = out.tell()
    headers = {"User-Agent": USER_AGENT}
    if done:
        headers["Range"] = f"bytes={done}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            start, total = _where(response, total)
            if start != done:  # the server ignored the range (or misplaced it): start over
                asked, done = done, 0
                out.seek(0)
                out.truncate()
                if start != 0:
                    raise _Retry(f"the server sent a part that does not start at byte {asked:,}")
            if progress is not None:
                progress(done, total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        if e.code == 416 and total is not None and done == total:
            return total  # asked for bytes past the end: it had all arrived
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(f"the server answered HTTP {e.code} {e.reason}") from None
        raise FetchError(
            f"{url}: the server answered HTTP {e.code} {e.reason}; the file may have moved:"
            " check the URL Keras uses (keras/src/applications) or download it by hand and"
            " pass it to --load"
        ) from None
    except urllib.error.URLError as e:
        raise _Retry(f"cannot connect ({_reason(e.reason)})") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retry(f"the connection broke ({_reason(e)})") from None
    if total is not None and done < total:
        raise _Retry(f"the connection closed after {done:,} of {total:,} bytes")
    return total


def _where(response: http.client.HTTPResponse, total: int | None) -> tuple[int, int | None]:
    """(offset of the first byte sent, total size) from the status and headers."""
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match:
            return int(match[1]), int(match[2]) if match[2] != "*" else total
        return -1, total  # a part we cannot place
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _reason(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    return text or type(error).__name__


__all__ = [
    "KERAS_APPLICATIONS",
    "WEIGHT_FILES",
    "FetchError",
    "WeightFile",
    "cache_folder",
    "cached",
    "check_file",
    "fetch",
    "file_hashes",
    "weight_file",
]
