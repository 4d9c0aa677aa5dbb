"""Checkpoints: a training run saved between two steps, so it can continue bit for bit.

Input: a `Model` in the middle of `fit` and its `TrainState`. Output: files
DIR/checkpoint-<step>.npz, one per save, the newest `keep` kept. Each holds:

  meta                 JSON as uint8 bytes (never a pickle): format, the spec's
                       fingerprint, epoch / batch / step, the epoch's running
                       sums, History so far, the host and device generator states,
                       optimizer config and iteration count, data size and labels digest
  weights/<key>        every weight, batchnorm's moving statistics included
  optimizer/<slot>/<key>  the optimizer's slots (Adam's m and v, momentum)
  order                the current epoch's sample order (mid-epoch checkpoints)

A write goes to a temporary file in the same folder, is flushed and fsynced,
renamed over the final name and the folder fsynced: a crash leaves the old
checkpoints and at worst a stray temporary file, never a half-written
checkpoint. Resuming takes the newest checkpoint that reads back whole
(warning about each one skipped) and refuses one written for another network,
naming the first differences.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.formats.weights import read_npz, write_npz
from cnndsl.ir import Graph
from cnndsl.runtime.executor import ModelError
from cnndsl.training.guards import all_finite, rng_state, set_rng_state
from cnndsl.training.history import History

if TYPE_CHECKING:
    from cnndsl.training.model import Model

FORMAT = "cnndsl-checkpoint"
VERSION = 1
PREFIX = "checkpoint-"
TEMP_PREFIX = ".checkpoint-"


class CheckpointWarning(UserWarning):
    """A checkpoint skipped (corrupt, truncated, not ours) or a setting that changed on resume."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit, honoured between two steps; `checkpoint` is what was saved, if any."""

    def __init__(self, message: str, checkpoint: str | None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainState:
    """Where a run stands between two steps: everything fit needs to continue it."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps in the whole run
    order: np.ndarray | None = None  # the current epoch's sample order, once drawn
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0})
    counts: dict[str, int] = field(default_factory=lambda: {"loss": 0})
    history: History = field(default_factory=History)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch += 1
        self.batch = 0
        self.order = None
        self.sums, self.counts = {"loss": 0.0}, {"loss": 0}


# ---- the spec's fingerprint ----


def fingerprint(graph: Graph) -> list[dict[str, Any]]:
    """Per layer: path, op, label, attrs, inputs, weight shapes and trainable flag."""
    return [
        {
            "path": layer.path,
            "op": layer.op,
            "label": layer.label,
            "attrs": {k: repr(v) for k, v in sorted(layer.attrs.items())},
            "inputs": list(layer.inputs),
            "weights": {k: list(s.shape) for k, s in layer.weights.items()},
            "trainable": layer.trainable,
        }
        for layer in graph
    ]


def spec_hash(layers: list[dict[str, Any]]) -> str:
    """SHA-256 of a fingerprint: equal exactly when the networks are the same."""
    return hashlib.sha256(json.dumps(layers, sort_keys=True).encode()).hexdigest()


def differences(here: list[dict[str, Any]], there: list[dict[str, Any]], limit: int = 2) -> str:
    """The first differences between this network and a checkpoint's, in words.

    Layers added or removed come first, then changed labels, then other changes
    (which often only follow from the first ones).
    """
    mine = {d["path"]: d for d in here}
    theirs = {d["path"]: d for d in there}
    found = [
        f"layer {d['path']} ({d['label']}) is not in the checkpoint"
        for d in here
        if d["path"] not in theirs
    ]
    found += [
        f"the checkpoint has layer {d['path']} ({d['label']}), which this network lacks"
        for d in there
        if d["path"] not in mine
    ]
    details: list[str] = []
    for d in here:
        other = theirs.get(d["path"])
        if other is None or other == d:
            continue
        if other["label"] != d["label"]:
            found.append(
                f"layer {d['path']} is {d['label']} here but {other['label']} in the checkpoint"
            )
            continue
        keys = ("attrs", "inputs", "weights", "trainable", "op")
        what = next(k for k in keys if d[k] != other[k])
        details.append(
            f"layer {d['path']} has {what} {_show(d[what])} here but {_show(other[what])}"
            " in the checkpoint"
        )
    found += details
    if not found and [d["path"] for d in here] != [d["path"] for d in there]:
        found.append("the layers are in a different order")
    more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def labels_digest(y: np.ndarray) -> str:
    """A short digest of the training labels: resuming on other data is refused."""
    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()[:16]


# ---- writing ----


class Checkpointer:
    """Saves a run to `folder` every `every` steps (None: epoch ends only) and at epoch ends."""

    def __init__(self, folder: str | os.PathLike[str], every: int | None = None, keep: int = 3):
        if every is not None and every < 1:
            raise ModelError(f"checkpoint_every must be >= 1 step, got {every}")
        if keep < 1:
            raise ModelError(f"keep must be >= 1 checkpoint, got {keep}")
        self.folder = Path(folder)
        self.every = every
        self.keep = keep
        self.latest: str | None = None  # the newest checkpoint known good
        self.written = 0
        self.data: dict[str, Any] = {}  # samples, batch_size, labels: what the run trains on
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelError(
                f"{self.folder}: cannot create the checkpoint folder ({e.strerror or e})"
            ) from None
        if not self.folder.is_dir():
            raise ModelError(f"{self.folder}: not a folder; --checkpoint takes a folder")
        for stale in self.folder.glob(TEMP_PREFIX + "*.tmp"):  # left by a killed write
            with contextlib.suppress(OSError):
                stale.unlink()

    def files(self) -> list[Path]:
        """Checkpoint files in the folder, oldest first (by step number)."""
        found = []
        for p in self.folder.glob(PREFIX + "*.npz"):
            number = p.name[len(PREFIX) : -len(".npz")]
            if number.isdigit():
                found.append((int(number), p))
        return [p for _, p in sorted(found)]

    def due(self, state: TrainState, steps_per_epoch: int) -> bool:
        """Whether to save after this step (epoch ends are saved after validation instead)."""
        return (
            self.every is not None
            and state.step % self.every == 0
            and state.batch < steps_per_epoch
        )

    def save(self, model: Model, state: TrainState) -> str:
        """Write a checkpoint of `model` at `state` atomically; prune to the newest `keep`."""
        if not all_finite(model.xp, 0.0, model.params):
            bad = [k for k, v in model.params.items() if not bool(model.xp.isfinite(v).all())]
            kept = f"; the last good checkpoint is kept: {self.latest}" if self.latest else ""
            raise ModelError(
                f"weights became non-finite at step {state.step} ({', '.join(bad[:3])}),"
                f" so no checkpoint was written{kept}; lower the learning rate"
            )
        host = model.backend.to_host
        opt = model.optimizer.state_dict()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "network": model.graph.meta.get("name", "network"),
            "spec_hash": spec_hash(fp := fingerprint(model.graph)),
            "layers": fp,
            "epoch": state.epoch,
            "batch": state.batch,
            "step": state.step,
            "sums": state.sums,
            "counts": state.counts,
            "history": {"epoch": state.history.epoch, "history": state.history.history},
            "rng": {
                "host": rng_state(model.rng),
                "device": _jsonable(rng_state(model.backend.rng)),
            },
            "backend": model.backend.name,
            "optimizer": {"config": opt["config"], "iterations": opt["iterations"]},
            "data": self.data,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        arrays.update({f"weights/{k}": host(v) for k, v in model.params.items()})
        arrays.update({f"optimizer/{k}": host(v) for k, v in opt["slots"].items()})
        if state.order is not None and state.batch > 0:
            arrays["order"] = np.asarray(state.order, np.int64)
        path = self.folder / f"{PREFIX}{state.step:09d}.npz"
        self.written += 1
        try:
            write_npz(path, arrays, prefix=TEMP_PREFIX, suffix=".tmp")
        except OSError as e:
            raise ModelError(
                f"{path}: cannot write the checkpoint ({e.strerror or e}); free some space or"
                " pass another --checkpoint folder"
            ) from None
        self.latest = str(path)
        for old in self.files()[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return str(path)

    # ---- reading ----
    def resume(self, model: Model, state: TrainState) -> TrainState:
        """Restore the newest good checkpoint into model; the state to continue from.

        Returns `state` unchanged (with a warning) when the folder has none.
        """
        here = fingerprint(model.graph)
        for path in reversed(self.files()):
            found = self._read(path)
            if found is None:
                continue
            meta, stored = found
            if meta["spec_hash"] != spec_hash(here):
                raise ModelError(
                    f"{path}: checkpoint of a different network: "
                    f"{differences(here, meta['layers'])}; resume with the spec it was written"
                    " from, or pass another --checkpoint folder to start afresh"
                )
            self._check_data(path, meta)
            try:
                restored = self._restore(model, path, meta, stored)
            except (KeyError, ValueError, TypeError) as e:
                self._set_aside(path, f"{path}: incomplete checkpoint ({e})")
                continue
            self.latest = str(path)
            restored.history.params["resumed_from"] = str(path)
            return restored
        warnings.warn(
            f"{self.folder}: no checkpoint to resume from; starting from the beginning",
            CheckpointWarning,
            stacklevel=3,
        )
        return state

    def _read(self, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """A checkpoint's metadata and arrays, or None (with a warning) if it is unusable."""
        try:
            stored = read_npz(path, "checkpoint", fix="resuming from an older one")
            raw = stored.get("meta")
            if raw is None or raw.dtype != np.uint8:
                raise ModelError(f"{path}: not a cnndsl checkpoint (no metadata)")
            try:
                meta = json.loads(raw.tobytes().decode())
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(f"{path}: corrupt checkpoint metadata ({e})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ModelError(f"{path}: not a cnndsl checkpoint (no format tag)")
        except ModelError as e:
            self._set_aside(path, str(e))
            return None
        if meta.get("version") != VERSION:
            # NOTE: kept where it is: a newer cnndsl may read it.
            warnings.warn(
                f"skipping {path}: checkpoint format version {meta.get('version')}; this"
                f" cnndsl reads {VERSION}",
                CheckpointWarning,
                stacklevel=4,
            )
            return None
        return meta, stored

    def _set_aside(self, path: Path, problem: str) -> None:
        """Rename an unusable checkpoint, so that new ones are not pruned in its favour."""
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.rename(aside)
        except OSError:
            warnings.warn(f"skipping {problem}", CheckpointWarning, stacklevel=4)
        else:
            warnings.warn(
                f"skipping {problem}; renamed to {aside.name}", CheckpointWarning, stacklevel=4
            )

    def refuse_existing(self) -> None:
        """A fresh run must not mix its checkpoints with an older run's."""
        existing = self.files()
        if existing:
            raise ModelError(
                f"{self.folder} already holds checkpoints (newest: {existing[-1].name});"
                " pass --resume (resume=True) to continue that run, or choose an empty folder"
            )

    def _check_data(self, path: Path, meta: dict[str, Any]) -> None:
        then = meta.get("data", {})
        for key, what in (("samples", "training samples"), ("labels", "training labels")):
            if key in then and key in self.data and then[key] != self.data[key]:
                raise ModelError(
                    f"{path}: the checkpoint was taken training on other data ({what}:"
                    f" {then[key]} then, {self.data[key]} now); resume with the same --data,"
                    " --test-split and --validation-split, or start afresh in another folder"
                )
        if meta["batch"] > 0 and then.get("batch_size") != self.data.get("batch_size"):
            raise ModelError(
                f"{path}: the checkpoint is in the middle of an epoch of batch size"
                f" {then.get('batch_size')}; resume with --batch-size {then.get('batch_size')}"
            )

    def _restore(
        self, model: Model, path: Path, meta: dict[str, Any], stored: dict[str, np.ndarray]
    ) -> TrainState:
        # Read and check everything first: a bad checkpoint must leave the model untouched.
        weights = {k: stored[f"weights/{k}"] for k in model.specs}
        for key, value in weights.items():
            if value.shape != model.specs[key].shape or value.dtype.kind != "f":
                raise ValueError(f"{key} is {value.dtype} {list(value.shape)}")
        slots = {k[len("optimizer/") :]: v for k, v in stored.items() if k.startswith("optimizer/")}
        batch = int(meta["batch"])
        order = stored.get("order") if batch > 0 else None
        if batch > 0 and order is None:
            raise KeyError("order")
        then = dict(meta["optimizer"]["config"])
        iterations = int(meta["optimizer"]["iterations"])
        host, device = meta["rng"]["host"], meta["rng"]["device"]
        history = History()
        history.epoch = [int(e) for e in meta["history"]["epoch"]]
        history.history = {
            k: [float(v) for v in vs] for k, vs in meta["history"]["history"].items()
        }
        state = TrainState(
            epoch=int(meta["epoch"]),
            batch=batch,
            step=int(meta["step"]),
            order=order,
            sums={k: float(v) for k, v in meta["sums"].items()},
            counts={k: int(v) for k, v in meta["counts"].items()},
            history=history,
        )
        for key, value in weights.items():
            model._assign(key, value)
        if then != model.optimizer.config:
            warnings.warn(
                f"{path}: the optimizer was {_config(then)}; continuing with"
                f" {_config(model.optimizer.config)}",
                CheckpointWarning,
                stacklevel=4,
            )
        if then.get("name") != model.optimizer.name:
            slots = {}  # another optimizer's slots mean nothing to this one
        model.optimizer.load_state_dict({"iterations": iterations, "slots": slots}, model.xp)
        set_rng_state(model.rng, host)
        if device is not None and rng_state(model.backend.rng) is not None:
            set_rng_state(model.backend.rng, device)
        else:
            warnings.warn(
                f"{path}: the {model.backend.name} backend's generator state cannot be"
                " restored; dropout masks will differ from an uninterrupted run",
                CheckpointWarning,
                stacklevel=4,
            )
        return state


def _jsonable(state: Any) -> Any:
    """A generator state that JSON can hold, else None (a device generator's arrays)."""
    try:
        json.dumps(state)
    except (TypeError, ValueError):
        return None
    return state


def _config(config: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in config.items() if k != "name")
    return f"{config.get('name')}({args})"


# ---- Ctrl-C ----


class Interrupts:
    """Defers the first SIGINT to the next step boundary, where a checkpoint is consistent.

    A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread
    signals cannot be caught, so nothing changes there.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Catch SIGINT while the block runs, then restore the previous handler."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)


__all__ = [
    "CheckpointWarning",
    "Checkpointer",
    "Interrupts",
    "TrainState",
    "TrainingInterrupted",
    "differences",
    "fingerprint",
    "labels_digest",
    "spec_hash",
]
