"""Weight files: a Model's weights to and from .npz, and Keras-layout lists.

Input: a built `Model`. Output: an .npz with one array per weight, keyed
'layer/path:weight' (batchnorm's moving statistics included), written
atomically; or host arrays in `get_weights` order (Keras layouts and order).
Reading never unpickles (`allow_pickle=False`). A file that is not ours,
truncated, corrupt, pickled or of the wrong shapes raises ModelError naming
the file, the problem and the fix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.formats.npz import NpzProblem, read_arrays
from cnndsl.runtime.executor import ModelError

if TYPE_CHECKING:
    from cnndsl.training.model import Model


@dataclass
class LoadReport:
    """What `Model.load` did: weights copied, and every weight it could not match."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # (key, shape in file, shape in model)

    @property
    def complete(self) -> bool:
        """True when every weight of the model came from the file and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line per problem, for the CLI."""
        lines = [f"loaded {len(self.loaded)} weight arrays"]
        lines += [
            f"shape mismatch {k}: file {list(a)}, model {list(b)}" for k, a, b in self.mismatched
        ]
        if self.missing:
            lines.append(f"not in file (kept initial values): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"in file but not in model (ignored): {', '.join(self.unexpected)}")
        return "\n".join(lines)


# ---- Keras-layout lists ----


def get_weights(model: Model) -> list[np.ndarray]:
    """Host copies of every weight, layer by layer in plan order (Keras layouts and order)."""
    return [model.backend.to_host(model.params[k]).copy() for k in model.specs]


def set_weights(model: Model, weights: Sequence[Any]) -> None:
    """Set every weight from a list in `get_weights` order; shapes must match exactly."""
    keys = list(model.specs)
    if len(weights) != len(keys):
        raise ModelError(f"set_weights got {len(weights)} arrays; the model has {len(keys)}")
    for key, value in zip(keys, weights, strict=True):
        if tuple(np.shape(value)) != model.specs[key].shape:
            raise ModelError(
                f"set_weights: {key} needs shape {list(model.specs[key].shape)},"
                f" got {list(np.shape(value))}"
            )
    for key, value in zip(keys, weights, strict=True):
        model._assign(key, np.asarray(value))


# ---- .npz files ----


def write_npz(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    prefix: str = ".tmp-",
    suffix: str = ".npz",
) -> None:
    """Write arrays to an .npz atomically: temp file, fsync, rename, fsync the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
    try:
        # NOTE: mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        # NOTE: readers see the old file or the new one, never a half-written one.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable where the platform allows."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_npz(
    path: str | os.PathLike[str], what: str = "weights", fix: str = ""
) -> dict[str, np.ndarray]:
    """Every array of an .npz, never unpickling; ModelError names the file, problem and fix."""
    path = os.fspath(path)
    other = fix or "pass a file written by `cnndsl run --save` or Model.save"
    fix = fix or f"write the {what} again"
    try:
        return read_arrays(path)
    except NpzProblem as problem:
        messages = {
            "unreadable": f"{path}: cannot read {what} ({problem.detail})",
            "not_zip": f"{path}: not an .npz file (no zip header: empty, cut short or another"
            f" format), so not {what} written by cnndsl; {other}",
            "pickled": f"{path}: holds pickled Python objects, which cnndsl does not load (they"
            " can run code); save plain arrays with Model.save or np.savez",
            "bad_value": f"{path}: corrupt .npz ({problem.detail}); {fix}",
            "corrupt": f"{path}: truncated or corrupt .npz ({problem.detail}); {fix}",
        }
        raise ModelError(messages[problem.kind]) from None


def save_weights(model: Model, path: str | os.PathLike[str]) -> None:
    """Write every weight to an .npz ('layer/path:weight' keys), atomically."""
    write_npz(path, {k: model.backend.to_host(v) for k, v in model.params.items()})


def load_weights(model: Model, path: str | os.PathLike[str], strict: bool = False) -> LoadReport:
    """Copy every weight whose key and shape match from an .npz; report the rest.

    With strict=True any mismatch raises ModelError and nothing is changed; so
    does a file none of whose weights fit (not weights of this network).
    """
    stored = read_npz(path)
    report = LoadReport()
    for key, spec in model.specs.items():
        if key not in stored:
            report.missing.append(key)
        elif tuple(stored[key].shape) != spec.shape:
            report.mismatched.append((key, tuple(stored[key].shape), spec.shape))
        else:
            report.loaded.append(key)
    report.unexpected = [k for k in stored if k not in model.specs]
    if not report.loaded and not report.mismatched:
        theirs = ", ".join(f"'{k}'" for k in list(stored)[:2]) or "none"
        ours = ", ".join(f"'{k}'" for k in list(model.specs)[:2])
        raise ModelError(
            f"{os.fspath(path)}: not weights of this network: none of its {len(stored)} arrays"
            f" is one of its weights (file keys: {theirs}; this network's: {ours}); pass a"
            " file written by `cnndsl run --save` or Model.save for this network"
        )
    if (strict or not report.loaded) and not report.complete:
        raise ModelError(
            f"{os.fspath(path)} does not match this network:\n{report.describe()}\n"
            "pass weights saved from this network, or load only the weights that fit with"
            " --load-partial (Model.load(path, strict=False))"
        )
    for key in report.loaded:
        value = stored[key]
        if value.dtype.kind not in "fiu":
            raise ModelError(
                f"{os.fspath(path)}: weight {key} holds {value.dtype} values, not numbers;"
                " pass a file written by `cnndsl run --save` or Model.save"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ModelError(
                f"{os.fspath(path)}: weight {key} holds NaN or infinite values (saved from a"
                " run that diverged?); load an earlier file or checkpoint"
            )
    for key in report.loaded:
        model._assign(key, stored[key])
    return report


__all__ = [
    "LoadReport",
    "fsync_folder",
    "get_weights",
    "load_weights",
    "read_npz",
    "save_weights",
    "set_weights",
    "write_npz",
]
