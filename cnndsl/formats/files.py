"""Opening the files a user names: regular files only, read within stated bounds.

Every reader of a user-named file (specs and their imports, data, weight
files, checkpoints, images) opens it through these helpers, because:

- a FIFO blocks `open()` until a writer comes, and /dev/zero or /dev/urandom
  (or a symbolic link to them) never ends: anything that is not a regular file
  is refused with `NotRegularFile`, an OSError, so the callers' `except
  OSError` handlers report it in their own words ("cannot read X: a named
  pipe (FIFO), not a regular file");
- a compressed stream can claim any size: `read_exactly` fills a buffer of
  the size a header stated, never more, and compressed data is decompressed
  to at most MAX_DECOMPRESSED_BYTES per file (documented in docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Any, BinaryIO, Protocol

import numpy as np

# Decompressed bytes cnndsl reads from one compressed file (a .gz IDX file, the
# compressed members of an .npz): past this the file is refused before anything
# is allocated. Uncompressed files are bounded by their real size instead.
MAX_DECOMPRESSED_BYTES = 2 * 1024**3

# Deflate cannot expand data more than about 1032 times (RFC 1951: a 258-byte
# match costs at least 2 bits); a stream claiming more than this is corrupt.
MAX_DEFLATE_RATIO = 1032

_CHUNK = 16 * 1024 * 1024  # bytes read at once: the temporary copy stays this small


class Readable(Protocol):
    """A binary stream: a file, a GzipFile, a zip member."""

    def read(self, size: int, /) -> bytes:
        """Up to size bytes; b"" at the end."""
        ...


class NotRegularFile(OSError):
    """A path that names a FIFO, device, socket or folder where a file was expected."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
        self.kind = kind


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


class TruncatedData(EOFError):
    """A stream that ended before the size its header stated (from `read_exactly`)."""


def require_regular_file(path: str | os.PathLike[str]) -> os.stat_result:
    """stat() of path (links followed); NotRegularFile unless it is a regular file."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(path, _kind(info.st_mode))
    return info


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for binary reading; NotRegularFile (never a hang) for anything else.

    NOTE: opened without blocking, then checked with fstat, so a FIFO neither
    blocks the open nor slips in between a check and the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path, _kind(info.st_mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_exactly(stream: Readable, count: int, dtype: Any = np.uint8) -> np.ndarray:
    """`count` items of dtype from stream into a new 1-D array; TruncatedData if it ends sooner.

    Reads in chunks, so a stream that lies about its length costs no more than
    the array it claimed (checked against a limit by the caller) plus one chunk.
    """
    out = np.empty(count, dtype)
    raw = out.view(np.uint8) if out.nbytes else out
    done = 0
    while done < out.nbytes:
        chunk = stream.read(min(_CHUNK, out.nbytes - done))
        if not chunk:
            raise TruncatedData(f"ended after {done:,} of {out.nbytes:,} bytes")
        raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    return out


class UnwritableOutput(OSError):
    """An output path that cannot be written: its folder is missing or read-only, or it
    names something other than a regular file (a folder, a device, a link, a FIFO)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(errno.EINVAL, reason, os.fspath(path))

    def __str__(self) -> str:
        return f"cannot write '{self.filename}': {self.strerror}"


def check_output_path(path: str | os.PathLike[str]) -> None:
    """Refuse an output before any work: UnwritableOutput unless it can be written atomically.

    One rule for every file cnndsl writes: the folder exists and is writable,
    and the path is new or an existing regular file. A symbolic link, a
    device (/dev/null), a FIFO or a folder is never replaced or written through.
    """
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise UnwritableOutput(path, exc.strerror or str(exc)) from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else _kind(info.st_mode)
        raise UnwritableOutput(
            path, f"it is {kind}, not a regular file; cnndsl writes only to new or regular files"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UnwritableOutput(path, f"the folder '{folder}' does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnwritableOutput(path, f"the folder '{folder}' is not writable; choose another place")


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write bytes or UTF-8 text atomically: temp file in the same folder, fsync, rename.

    The counterpart of cnndsl.formats.weights.write_npz for text and other
    small files: readers (and a full disk) see the old file or the new one,
    never a half-written or empty one.
    """
    check_output_path(path)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        # NOTE: mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def size_text(n: int) -> str:
    """A byte count for messages: 2.0 GiB, 512.0 MiB, 3,200 bytes."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,} bytes"


__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "MAX_DEFLATE_RATIO",
    "NotRegularFile",
    "Readable",
    "TruncatedData",
    "UnwritableOutput",
    "check_output_path",
    "open_regular",
    "read_exactly",
    "require_regular_file",
    "size_text",
    "write_atomic",
]
