"""Reading .npz files safely: never unpickling, never trusting a size, every failure phrased.

Data (cnndsl.formats.data), weight files (cnndsl.formats.weights) and checkpoints
(cnndsl.training.checkpoint) all read user-supplied .npz files. The rules that
keep a file from running code or exhausting memory live here once; each caller
turns an `NpzProblem` into its own error with a fix that fits what it was reading.

Before anything is allocated, every member's claims are checked against the
archive's real size: a member must be a `.npy` array, stored or deflated (what
NumPy writes), not encrypted, inside the file, inflating no more than deflate
can (MAX_DEFLATE_RATIO), all compressed members together to at most
MAX_DECOMPRESSED_BYTES; its `.npy` header must describe exactly the bytes it
holds. Then each array is read into a buffer of that size; the zip CRC is
checked at the end of every member.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from typing import Any

import numpy as np

from cnndsl.formats.files import (
    MAX_DECOMPRESSED_BYTES,
    MAX_DEFLATE_RATIO,
    open_regular,
    read_exactly,
    size_text,
)

ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files
_ENCRYPTED = 0x1  # zip general purpose flag bit 0

# What zipfile, zlib and NumPy's header parser raise for damaged bytes. A bit
# flip in a header can turn into any of them (an unknown compression method
# is NotImplementedError, the encryption flag RuntimeError, a broken `.npy`
# header tokenize.TokenError or ValueError, a broken deflate stream zlib.error).
ZIP_DAMAGE = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    struct.error,
    KeyError,
    OverflowError,
    MemoryError,
)


class NpzProblem(Exception):
    """Why an .npz could not be read.

    kind: "unreadable" (cannot open it, or not a regular file), "not_zip" (no
    zip header: empty, cut short or another format), "pickled" (holds Python
    objects), "bad_value" (NumPy refused a member's `.npy` header), "corrupt"
    (truncated or damaged archive, or a member whose claims do not hold) or
    "too_large" (more compressed data than MAX_DECOMPRESSED_BYTES);
    detail: the system's, NumPy's or this module's own words.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def read_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of the .npz at path, loaded into memory; raises NpzProblem."""
    try:
        f = open_regular(path)
    except OSError as e:
        raise NpzProblem("unreadable", str(e.strerror or e)) from None
    with f:
        try:
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                raise NpzProblem("not_zip")
            size = os.fstat(f.fileno()).st_size
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                members = _checked_members(archive, size)
                return {key: _read_member(archive, info) for key, info in members.items()}
        except NpzProblem:
            raise
        except ZIP_DAMAGE as e:
            raise NpzProblem("corrupt", _words(e)) from None


def _checked_members(archive: zipfile.ZipFile, size: int) -> dict[str, zipfile.ZipInfo]:
    """Members by array name, once their claimed sizes are shown possible for `size` bytes."""
    members: dict[str, zipfile.ZipInfo] = {}
    inflated = 0
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise NpzProblem("corrupt", f"member '{name}' is not a .npy array")
        if info.flag_bits & _ENCRYPTED:
            raise NpzProblem("corrupt", f"member '{name}' is marked encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise NpzProblem(
                "corrupt",
                f"member '{name}' uses compression method {info.compress_type}, which NumPy"
                " never writes",
            )
        if info.header_offset + info.compress_size > size:
            raise NpzProblem(
                "corrupt",
                f"member '{name}' claims {info.compress_size:,} bytes at offset"
                f" {info.header_offset:,} of a {size:,}-byte file",
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise NpzProblem(
                "corrupt",
                f"stored member '{name}' claims {info.file_size:,} bytes but holds"
                f" {info.compress_size:,}",
            )
        if info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
                raise NpzProblem(
                    "corrupt",
                    f"member '{name}' claims to inflate {info.compress_size:,} bytes to"
                    f" {info.file_size:,}, more than deflate can",
                )
            inflated += info.file_size
        members[name[: -len(".npy")]] = info
    if inflated > MAX_DECOMPRESSED_BYTES:
        raise NpzProblem(
            "too_large",
            f"its compressed arrays take {size_text(inflated)} once decompressed, more than"
            f" the {size_text(MAX_DECOMPRESSED_BYTES)} cnndsl decompresses from one file",
        )
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member's array, its `.npy` header checked against the member's size first."""
    with archive.open(info) as stream:
        return read_npy(stream, info.file_size, info.filename)


def read_npy_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A standalone `.npy` file, read by the same rules as an archive's members; NpzProblem."""
    try:
        stream = open_regular(path)
    except OSError as e:
        raise NpzProblem("unreadable", str(e.strerror or e)) from None
    with stream:
        try:
            return read_npy(stream, os.fstat(stream.fileno()).st_size, os.path.basename(path))
        except (OSError, EOFError) as e:
            raise NpzProblem("corrupt", _words(e)) from None


def read_npy(stream: Any, size: int, name: str) -> np.ndarray:
    """A `.npy` array from a stream of `size` bytes, its header checked against that size first."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            # NOTE: 3.0 differs from 2.0 only in allowing UTF-8 field names.
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy format version {version}")
    except (ValueError, SyntaxError, tokenize.TokenError, RecursionError) as e:
        raise NpzProblem("bad_value", f"'{name}': {_words(e)}") from None
    if dtype.hasobject:
        raise NpzProblem("pickled", f"'{name}' holds Python objects")
    count = math.prod(int(d) for d in shape)
    if any(d < 0 for d in shape) or (dtype.itemsize == 0 and count):
        raise NpzProblem("corrupt", f"'{name}' has an impossible shape {list(shape)}")
    need = count * dtype.itemsize
    have = size - stream.tell()
    if need != have:
        raise NpzProblem(
            "corrupt",
            f"'{name}' claims shape {list(shape)} of {dtype} ({size_text(need)}) but holds"
            f" {size_text(max(have, 0))}",
        )
    values = read_exactly(stream, count, dtype)
    if stream.read(1):  # NOTE: reading to the end also completes the CRC check
        raise NpzProblem("corrupt", f"'{name}' is longer than its header says")
    return values.reshape(shape[::-1]).T if fortran else values.reshape(shape)


def _words(e: BaseException) -> str:
    """An exception's message, kept short (NumPy quotes whole headers)."""
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["ZIP_DAMAGE", "ZIP_MAGIC", "NpzProblem", "read_arrays", "read_npy", "read_npy_file"]
