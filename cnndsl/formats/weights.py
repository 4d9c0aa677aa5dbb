"""Weight files: a Model's weights to and from .npz, and Keras-layout lists.

Input: a built `Model`. Output: an .npz with one array per weight, keyed
'layer/path:weight' (batchnorm's moving statistics included), written
atomically; or host arrays in `get_weights` order (Keras layouts and order).
Besides the weights, the .npz may hold `class_names` (a 1-D string array:
what `Model.class_names` names, e.g. a folder's classes), which `--predict`
prints. Reading never unpickles (`allow_pickle=False`). A file that is not ours,
truncated, corrupt, pickled or of the wrong shapes raises ModelError naming
the file, the problem and the fix.

`load_weights` also reads other frameworks' files, told apart by content:
Keras (legacy HDF5, `.weights.h5`, `.keras`: cnndsl.formats.keras_h5) and
PyTorch state dicts (`.safetensors`, `.pt`/`.pth`: cnndsl.formats.torch_state),
their layers matched to ours by the graph (cnndsl.formats.weight_matching).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.formats.keras_h5 import read_keras
from cnndsl.formats.npz import NpzProblem, read_arrays
from cnndsl.formats.torch_state import read_safetensors, read_torch
from cnndsl.formats.weight_matching import Matching, match, misfits, targets_of
from cnndsl.formats.weight_sources import WeightSource, detect_format, load_mapping
from cnndsl.runtime.executor import ModelError

if TYPE_CHECKING:
    from cnndsl.training.model import Model


# NOTE: weight keys are 'layer/path:weight'; a key without ':' is never a weight.
CLASS_NAMES_KEY = "class_names"


@dataclass
class LoadReport:
    """What `Model.load` did: weights copied, and every weight it could not match."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # (key, shape in file, shape in model)
    class_names: list[str] | None = None  # the file's, when they fit the network's outputs
    # Another framework's file: its format, and for each weight loaded, where it came from.
    source: str = ""
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every weight of the model came from the file and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line per problem, for the CLI."""
        lines = [f"loaded {len(self.loaded)} weight arrays"]
        if self.source:
            lines[0] += f" from a {self.source} file, matched by the graph"
        lines += [
            f"shape mismatch {k}: file {list(a)}, model {list(b)}" for k, a, b in self.mismatched
        ]
        if self.missing:
            lines.append(f"not in file (kept initial values): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"in file but not in model (ignored): {', '.join(self.unexpected)}")
        if self.class_names:
            shown = ", ".join(self.class_names[:5]) + (", ..." if len(self.class_names) > 5 else "")
            lines.append(f"class names: {shown} ({len(self.class_names)})")
        return "\n".join(lines)

    def describe_origins(self) -> str:
        """One line per weight loaded: our key <- the file's name (and how it was rearranged)."""
        return "\n".join(f"{k} <- {self.origins.get(k, k)}" for k in self.loaded)


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
            "too_large": f"{path}: refused: {problem.detail}; save it uncompressed (np.savez)",
        }
        raise ModelError(messages[problem.kind]) from None


def save_weights(model: Model, path: str | os.PathLike[str], force: bool = False) -> None:
    """Write every weight to an .npz ('layer/path:weight' keys), and the class names, atomically.

    Weights holding NaN or infinity (a run that diverged) are refused with
    ModelError, so a broken file is never saved as if it were good; force=True
    writes them anyway (to inspect them).
    """
    from cnndsl.training.guards import non_finite_weights

    bad = [] if force else non_finite_weights(model)
    if bad:
        raise ModelError(
            f"{os.fspath(path)}: not saved: weights hold NaN or infinite values"
            f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the training diverged;"
            " lower the learning rate (save_weights(..., force=True) writes them anyway)"
        )
    arrays = {k: model.backend.to_host(v) for k, v in model.params.items()}
    if model.class_names:
        arrays[CLASS_NAMES_KEY] = np.array([str(n) for n in model.class_names], dtype=str)
    write_npz(path, arrays)


def load_weights(
    model: Model,
    path: str | os.PathLike[str],
    strict: bool | None = None,
    mapping: str | os.PathLike[str] | dict[str, str] | None = None,
) -> LoadReport:
    """Load weights from our .npz or another framework's file (told by content); report.

    Our .npz: weights whose key and shape match are copied, the rest reported
    (strict=None or False); with strict=True any mismatch raises ModelError
    and nothing is changed; so does a file none of whose weights fit.
    Keras and PyTorch files: layers are matched by the graph (see
    cnndsl.formats.weight_matching), `mapping` (a JSON file or dict: our
    weight key or layer path -> the file's name) settling what that cannot;
    anything missing, left over or mismatched raises ModelError unless
    strict=False (a partial load, reported).
    """
    kind = detect_format(os.fspath(path))
    if kind not in ("npz", "unknown"):
        return _load_foreign(model, os.fspath(path), kind, strict is not False, mapping)
    if mapping is not None:
        raise ModelError(
            f"{os.fspath(path)}: a mapping file is for other frameworks' weights (Keras,"
            " PyTorch); our .npz files are keyed by layer path already"
        )
    stored = read_npz(path)
    names = _class_names(path, stored.pop(CLASS_NAMES_KEY, None), model)
    report = LoadReport(class_names=names)
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
    if names is not None:
        model.class_names = names
    return report


def read_source(path: str, kind: str) -> WeightSource:
    """Another framework's weight file as layers, by the kind detect_format told."""
    if kind in ("hdf5", "keras"):
        return read_keras(path, kind)
    if kind == "safetensors":
        return read_safetensors(path)
    return read_torch(path)


def _load_foreign(
    model: Model,
    path: str,
    kind: str,
    strict: bool,
    mapping: str | os.PathLike[str] | dict[str, str] | None,
) -> LoadReport:
    """Match a Keras or PyTorch file's layers to ours; copy them unless something misfits."""
    source = read_source(path, kind)
    targets = targets_of(model)
    found = match(source, targets, load_mapping(mapping) if mapping is not None else None)
    report = _foreign_report(model, source, found)
    if not report.loaded:
        raise ModelError(
            f"{path}: not weights of this network: none of the {len(source.layers)} layers"
            f" with weights in this {source.format} file fits one of its layers\n"
            + "\n".join(misfits(source, targets, found))
        )
    if strict and not report.complete:
        raise ModelError(
            f"{path} ({source.format}) does not fit this network: matched"
            f" {len(found.layers)} of its {len(targets)} layers with weights\n"
            + "\n".join(misfits(source, targets, found))
            + "\npass weights of this network, name what matching cannot find in a mapping"
            " file (--map), or load only the layers that fit with --load-partial"
            " (weights convert --partial; Model.load(path, strict=False))"
        )
    for key in report.loaded:
        value = found.arrays[key][1]
        if value.dtype.kind not in "fiu":
            raise ModelError(
                f"{path}: {report.origins[key]} (for {key}) holds {value.dtype} values, not"
                " numbers; pass a weights file of numeric arrays"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ModelError(
                f"{path}: {report.origins[key]} (for {key}) holds NaN or infinite values;"
                " pass weights of a model that trained well"
            )
    for key in report.loaded:
        model._assign(key, found.arrays[key][1])
    return report


def _foreign_report(model: Model, source: WeightSource, found: Matching) -> LoadReport:
    """The LoadReport of a match: each weight's origin, what is missing and left over."""
    report = LoadReport(source=source.format)
    for key in model.specs:
        if key in found.arrays:
            report.loaded.append(key)
            report.origins[key] = found.arrays[key][0]
        else:
            report.missing.append(key)
    report.unexpected = [n for layer in found.unused for n in layer.names] + found.unused_weights
    return report


def output_classes(model: Model) -> int | None:
    """Classes the output scores (2 for one sigmoid unit); None for an output not a vector."""
    shape = model.plan.steps[model.plan.outputs[0]].shape or ()
    if len(shape) != 1:
        return None
    return 2 if shape[0] == 1 else int(shape[0])


def _class_names(path: Any, stored: np.ndarray | None, model: Model) -> list[str] | None:
    """The file's class names if it has some that fit the model's outputs, else None."""
    if stored is None:
        return None
    if stored.dtype.kind != "U" or stored.ndim != 1:
        raise ModelError(
            f"{os.fspath(path)}: '{CLASS_NAMES_KEY}' holds {stored.dtype} values of shape"
            f" {list(stored.shape)}, not a list of names; pass a file written by"
            " `cnndsl run --save` or Model.save"
        )
    # NOTE: a file trained for other classes (transfer learning) lends its weights, not its names.
    return [str(n) for n in stored] if len(stored) == output_classes(model) else None


__all__ = [
    "CLASS_NAMES_KEY",
    "LoadReport",
    "fsync_folder",
    "get_weights",
    "load_weights",
    "output_classes",
    "read_npz",
    "read_source",
    "save_weights",
    "set_weights",
    "write_npz",
]
