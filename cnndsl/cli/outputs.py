"""What `cnndsl run` writes: checked before any work, written atomically, never lost.

`--save` and `--history` are refused up front if they could not be written
(a folder missing, a device or link in the way); weights that cannot be
saved at the end are kept in the checkpoint folder or the temp folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from cnndsl.formats.files import UnwritableOutput, check_output_path, write_atomic
from cnndsl.runtime.errors import ModelError


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse --save and --history paths that could not be written, before any work."""
    for option, path in (("--save", args.save), ("--history", args.history)):
        if path:
            try:
                check_output_path(path)
            except UnwritableOutput as e:
                raise ModelError(f"{option} {e}") from None


def save_weights(model: Any, path: str, checkpoint: str | None) -> None:
    """Save the trained weights; if that fails, keep them elsewhere and say where."""
    try:
        model.save(path)
        return
    except OSError as e:
        reason = e.strerror or str(e)
    # NOTE: the work must not be lost to a full disk or a folder removed meanwhile.
    for folder in (checkpoint, tempfile.gettempdir()):
        if not folder or not os.path.isdir(folder):
            continue
        try:
            fd, kept = tempfile.mkstemp(dir=folder, prefix="cnndsl-unsaved-", suffix=".npz")
            os.close(fd)
            model.save(kept)
        except OSError:
            continue
        raise ModelError(
            f"{path}: cannot write the weights ({reason}); they were kept in {kept}:"
            " move them where they belong"
        )
    raise ModelError(f"{path}: cannot write the weights ({reason}), nor keep them elsewhere")


def write_text(path: str, text: str) -> None:
    """Write a text output atomically; ModelError naming the path if it cannot be written."""
    try:
        write_atomic(path, text)  # a full disk leaves the old file, not an empty one
    except OSError as e:
        raise ModelError(f"{path}: cannot write ({e.strerror or e})") from None
