"""Reading .npz files safely: never unpickling, every failure a reason to phrase.

Data (cnndsl.formats.data), weight files (cnndsl.formats.weights) and checkpoints
(cnndsl.training.checkpoint) all read user-supplied .npz files. The rule that keeps a
file from running code (`allow_pickle=False`) and the ways such a file can be
broken live here once; each caller turns an `NpzProblem` into its own error
with a fix that fits what it was reading.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files


class NpzProblem(Exception):
    """Why an .npz could not be read.

    kind: "unreadable" (cannot open it), "not_zip" (no zip header: empty, cut
    short or another format), "pickled" (holds Python objects), "bad_value"
    (NumPy refused an array) or "corrupt" (truncated or damaged archive);
    detail: the system's or NumPy's own words.
    """

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


def read_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every array of the .npz at path, loaded into memory; raises NpzProblem."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise NpzProblem("unreadable", str(e.strerror or e)) from None
    if magic != ZIP_MAGIC:
        raise NpzProblem("not_zip")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as e:
        kind = "pickled" if "pickle" in str(e) else "bad_value"
        raise NpzProblem(kind, str(e)) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise NpzProblem("corrupt", str(e)) from None


__all__ = ["ZIP_MAGIC", "NpzProblem", "read_arrays"]
