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
checkpoint. One run writes in a folder at a time (its lock:
cnndsl.training.checkpoint_folder). Resuming takes the newest checkpoint that
passes every check of cnndsl.training.checkpoint_schema (warning about each
one skipped, and setting it aside) and refuses one written for another
network, naming the first differences.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.formats.weights import read_npz, write_npz
from cnndsl.runtime.executor import ModelError
from cnndsl.training.checkpoint_folder import (
    LOCK_NAME,
    TEMP_PREFIX,
    FolderLock,
    alive,
    check_checkpoint_folder,
    write_fix,
    write_problem,
    writer_pid,
)
from cnndsl.training.checkpoint_schema import (
    BadCheckpoint,
    Meta,
    MissingArray,
    Restorable,
    check_arrays,
    check_meta,
    check_rng_state,
)
from cnndsl.training.fingerprint import differences, fingerprint, labels_digest, spec_hash
from cnndsl.training.guards import all_finite, rng_state, set_rng_state
from cnndsl.training.history import History
from cnndsl.training.interrupts import Interrupts

if TYPE_CHECKING:
    from cnndsl.training.model import Model

FORMAT = "cnndsl-checkpoint"
VERSION = 1
PREFIX = "checkpoint-"


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


class Checkpointer:
    """Saves a run to `folder` every `every` steps (None: epoch ends only) and at epoch ends.

    Holds the folder's lock from creation until `close()` (fit closes it when it
    returns or raises; a process that ends lets go of it anyway).
    """

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
        self.lock = FolderLock(self.folder)
        try:
            previous = self.lock.acquire()
        except OSError as e:
            raise ModelError(
                f"{self.folder}: cannot write in the checkpoint folder ({e.strerror or e});"
                f" {write_fix(e)}"
            ) from None
        self._release = weakref.finalize(self, self.lock.release)
        problem = write_problem(self.folder)
        if problem:
            self.close()
            raise ModelError(problem)
        if previous is not None:
            warnings.warn(
                f"{self.folder}: taking over the lock left by process {previous}, which"
                f" {'no longer holds it' if alive(previous) else 'is no longer running'}",
                CheckpointWarning,
                stacklevel=3,
            )
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of writes that were killed: never one a live process owns."""
        for stale in self.folder.glob(TEMP_PREFIX + "*.tmp"):
            pid = writer_pid(stale.name)
            if pid is not None and pid != os.getpid() and alive(pid):
                continue  # NOTE: a run that does not lock (an older cnndsl) may be writing it
            with contextlib.suppress(OSError):
                stale.unlink()

    def close(self) -> None:
        """Let go of the folder's lock."""
        self._release()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def files(self) -> list[Path]:
        """Checkpoint files in the folder, oldest first (by step number)."""
        found = []
        for p in self.folder.glob(PREFIX + "*.npz"):
            number = p.name[len(PREFIX) : -len(".npz")]
            if number.isascii() and number.isdigit():  # NOTE: not '²³', which isdigit() accepts
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
            # NOTE: the process id in the temporary name tells a later run whose write it was.
            write_npz(path, arrays, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp")
        except OSError as e:
            raise ModelError(
                f"{path}: cannot write the checkpoint ({e.strerror or e}); {write_fix(e)}"
            ) from None
        self.latest = str(path)
        for old in self.files()[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return str(path)

    # ---- reading ----
    def resume(self, model: Model, state: TrainState) -> TrainState:
        """Restore the newest good checkpoint into model; the state to continue from.

        Every checkpoint is checked whole (cnndsl.training.checkpoint_schema)
        before any of it is used; one that fails is set aside with a warning and
        the one before is tried. Returns `state` unchanged (with a warning) when
        the folder has none. A checkpoint of another network or other data is
        refused (ModelError, the lock let go).
        """
        here = fingerprint(model.graph)
        for path in reversed(self.files()):
            found = self._read(path)
            if found is None:
                continue
            meta, stored = found
            try:
                if meta.spec_hash != spec_hash(here):
                    raise ModelError(
                        f"{path}: checkpoint of a different network: "
                        f"{differences(here, meta.layers)}; resume with the spec it was written"
                        " from, or pass another --checkpoint folder to start afresh"
                    )
                self._check_data(path, meta)
            except ModelError:
                self.close()
                raise
            try:
                check_rng_state(meta.rng_host, model.rng, "rng.host")
                if rng_state(model.backend.rng) is not None:
                    check_rng_state(meta.rng_device, model.backend.rng, "rng.device")
                arrays = check_arrays(model, meta, stored)
            except BadCheckpoint as e:
                self._set_aside(path, f"{path}: {_problem(e)}")
                continue
            restored = self._restore(model, path, meta, arrays)
            self.latest = str(path)
            restored.history.params["resumed_from"] = str(path)
            return restored
        warnings.warn(
            f"{self.folder}: no checkpoint to resume from; starting from the beginning",
            CheckpointWarning,
            stacklevel=3,
        )
        return state

    def _read(self, path: Path) -> tuple[Meta, dict[str, np.ndarray]] | None:
        """A checkpoint's checked metadata and arrays, or None (with a warning) if unusable."""
        try:
            stored = read_npz(path, "checkpoint", fix="resuming from an older one")
            raw = stored.get("meta")
            if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
                raise ModelError(f"{path}: not a cnndsl checkpoint (no metadata)")
            try:
                meta = json.loads(raw.tobytes().decode())
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                # NOTE: RecursionError: JSON nested thousands deep; ValueError: also
                # integers of more than 4300 digits.
                raise ModelError(
                    f"{path}: corrupt checkpoint metadata ({type(e).__name__}: {_short(e)})"
                ) from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ModelError(f"{path}: not a cnndsl checkpoint (no format tag)")
            version = meta.get("version")
            if type(version) is not int:
                raise ModelError(f"{path}: corrupt checkpoint metadata (no format version)")
        except ModelError as e:
            self._set_aside(path, str(e))
            return None
        if version != VERSION:
            # NOTE: kept where it is: a newer cnndsl may read it.
            warnings.warn(
                f"skipping {path}: checkpoint format version {version}; this"
                f" cnndsl reads {VERSION}",
                CheckpointWarning,
                stacklevel=4,
            )
            return None
        try:
            checked = check_meta(meta)
            if spec_hash(checked.layers) != checked.spec_hash:
                raise BadCheckpoint("spec_hash does not match the checkpoint's own layers")
        except BadCheckpoint as e:
            self._set_aside(path, f"{path}: corrupt checkpoint metadata ({e})")
            return None
        return checked, stored

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
        """A fresh run must not mix its checkpoints with an older run's (the lock let go)."""
        existing = self.files()
        if existing:
            self.close()
            raise ModelError(
                f"{self.folder} already holds checkpoints (newest: {existing[-1].name});"
                " pass --resume (resume=True) to continue that run, or choose an empty folder"
            )

    def _check_data(self, path: Path, meta: Meta) -> None:
        then = meta.data
        for key, what in (("samples", "training samples"), ("labels", "training labels")):
            if key in then and key in self.data and then[key] != self.data[key]:
                raise ModelError(
                    f"{path}: the checkpoint was taken training on other data ({what}:"
                    f" {then[key]} then, {self.data[key]} now); resume with the same --data,"
                    " --test-split and --validation-split, or start afresh in another folder"
                )
        if meta.batch > 0 and then.get("batch_size") != self.data.get("batch_size"):
            raise ModelError(
                f"{path}: the checkpoint is in the middle of an epoch of batch size"
                f" {then.get('batch_size')}; resume with --batch-size {then.get('batch_size')}"
            )

    def _restore(self, model: Model, path: Path, meta: Meta, arrays: Restorable) -> TrainState:
        """Put a checked checkpoint into model; nothing here can fail half-way."""
        history = History()
        history.epoch = list(meta.history_epoch)
        history.history = {k: list(vs) for k, vs in meta.history.items()}
        state = TrainState(
            epoch=meta.epoch,
            batch=meta.batch,
            step=meta.step,
            order=arrays.order,
            sums=dict(meta.sums),
            counts=dict(meta.counts),
            history=history,
        )
        for key, value in arrays.weights.items():
            model._assign(key, value)
        then = meta.optimizer
        if then != model.optimizer.config:
            warnings.warn(
                f"{path}: the optimizer was {_config(then)}; continuing with"
                f" {_config(model.optimizer.config)}",
                CheckpointWarning,
                stacklevel=4,
            )
        model.optimizer.load_state_dict(
            {"iterations": meta.iterations, "slots": arrays.slots}, model.xp
        )
        set_rng_state(model.rng, meta.rng_host)
        device = meta.rng_device
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


def _problem(e: BadCheckpoint) -> str:
    """A failed check in the words of the documented warnings."""
    kind = "incomplete" if isinstance(e, MissingArray) else "corrupt"
    return f"{kind} checkpoint ({e})"


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


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


__all__ = [
    "LOCK_NAME",
    "TEMP_PREFIX",
    "CheckpointWarning",
    "Checkpointer",
    "FolderLock",
    "Interrupts",
    "TrainState",
    "TrainingInterrupted",
    "check_checkpoint_folder",
    "differences",
    "fingerprint",
    "labels_digest",
    "spec_hash",
]
