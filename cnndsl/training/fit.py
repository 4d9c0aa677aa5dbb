"""Training: `Model.fit`, the epochs-and-batches loop, checkpointed and interruptible.

Input: a built `Model`, arrays x and y, and fit's settings. Output: a
`History`, with the model's weights trained in place. Every step's position
(epoch, batch, sample order, running sums, generator states) lives in a
`checkpoint.TrainState`, so a run saved between two steps continues bit for
bit. A NaN or infinite loss raises `guards.NonFiniteLoss` naming the step and
the layer; Ctrl-C stops between two steps with `checkpoint.TrainingInterrupted`.

`fit` is written once, here, and `cnndsl.training.model.Model` binds it as its method,
so its parameters, defaults and docs have one place to change.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.runtime.executor import ModelError
from cnndsl.training.checkpoint import (
    Checkpointer,
    Interrupts,
    TrainingInterrupted,
    TrainState,
    labels_digest,
)
from cnndsl.training.distributed import Ranks, fail_together, join
from cnndsl.training.guards import NonFiniteLoss
from cnndsl.training.history import Callback, History
from cnndsl.training.losses import Loss, Metric, get_metric
from cnndsl.training.optimizers import Optimizer

if TYPE_CHECKING:
    from cnndsl.training.model import Model


def fit(
    model: Model,
    x: Any,
    y: Any,
    epochs: int | None = None,
    batch_size: int | None = None,
    validation_split: float | None = None,
    validation_data: tuple[Any, Any] | None = None,
    shuffle: bool = True,
    callbacks: Iterable[Callback] = (),
    loss: str | Loss | None = None,
    optimizer: str | Mapping[str, Any] | Optimizer | None = None,
    metrics: Sequence[str] | None = None,
    lr: float | None = None,
    loss_weights: Sequence[float] | Mapping[str, float] | None = None,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    initial_epoch: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    keep: int = 3,
    resume: bool = False,
    verbose: int | str = "auto",
    distributed: bool | None = None,
) -> History:
    """Train for `epochs`; returns History with loss, metrics and val_* per epoch.

    Called as `model.fit(x, y, ...)`. A setting not given (None) is the spec's
    train section's, else its default (cnndsl.training.settings): epochs,
    batch_size (the spec's `batch`), validation_split, and loss, optimizer,
    metrics, lr and loss_weights as `Model.compile` takes them. A network with
    several outputs takes y as a list or tuple (return order) or a dict by output
    name; History then has the weighted total `loss`, `<output>_loss` and
    `<output>_<metric>` (and their val_*), as Keras. Like Keras, validation_split
    takes the last fraction of (x, y) before shuffling, and validation_data
    replaces it. `augment(batch, rng)` transforms each training batch on the host.
    With checkpoint_dir, the run is saved there every `checkpoint_every` steps
    and at each epoch end (the newest `keep` kept); resume=True continues from
    the newest good one, ending with the same weights as an uninterrupted run.
    Ctrl-C stops between two steps (saving a checkpoint) with TrainingInterrupted;
    a NaN or infinite loss raises NonFiniteLoss; a batch that will not fit in
    memory (Model.max_memory, else what is free) raises OutOfMemoryPlan.
    verbose, as Keras' (on stderr): 0 quiet, 1 a progress bar (on a terminal)
    and a line per epoch, 2 a line per epoch; "auto" (the default) is 1 where
    stderr is a terminal or a notebook, else 0, so scripts and tests stay quiet.
    Batchnorm layers whose moving statistics had too few updates for their
    momentum get a ShortStatisticsWarning at the end (see warn_short_statistics).
    distributed: data-parallel over MPI ranks (docs/distributed.md); None (the
    default) when a launcher (mpiexec, srun) started more than one process;
    every rank calls fit with the same arguments, each global batch of
    batch_size is split over the ranks, and the run ends as one process's
    would; rank 0 alone shows progress and writes checkpoints; an error on any
    rank ends every rank.
    """
    ranks = join(distributed)
    model.ranks = ranks
    with fail_together(ranks):
        return _fit(
            model, x, y, epochs, batch_size, validation_split, validation_data, shuffle,
            callbacks, loss, optimizer, metrics, lr, loss_weights, augment, initial_epoch,
            checkpoint_dir, checkpoint_every, keep, resume, verbose, ranks,
        )  # fmt: skip


def _fit(
    model: Model,
    x: Any,
    y: Any,
    epochs: int | None,
    batch_size: int | None,
    validation_split: float | None,
    validation_data: tuple[Any, Any] | None,
    shuffle: bool,
    callbacks: Iterable[Callback],
    loss: str | Loss | None,
    optimizer: str | Mapping[str, Any] | Optimizer | None,
    metrics: Sequence[str] | None,
    lr: float | None,
    loss_weights: Sequence[float] | Mapping[str, float] | None,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None,
    initial_epoch: int,
    checkpoint_dir: str | os.PathLike[str] | None,
    checkpoint_every: int | None,
    keep: int,
    resume: bool,
    verbose: int | str,
    ranks: Ranks | None,
) -> History:
    """fit's body, on one process or on this rank of `ranks`."""
    model.compile(loss, optimizer, metrics, lr, loss_weights)
    run = model.settings.overridden(
        epochs=epochs, batch=batch_size, validation_split=validation_split
    )
    epochs, batch_size, validation_split = run.epochs, run.batch, run.validation_split
    n = len(x)
    ys = model._checked_labels(y, n)
    train_idx = np.arange(n)
    if validation_data is None and validation_split:
        n_val = int(n * validation_split)
        if n_val == 0 or n_val == n:
            raise ModelError(
                f"validation_split {validation_split} of {n} samples leaves an empty set"
            )
        val_idx = train_idx[n - n_val :]
        train_idx = train_idx[: n - n_val]
        val_ys = [y_i[val_idx] for y_i in ys]
        validation_data = (x[val_idx], val_ys[0] if len(ys) == 1 else val_ys)
    model._check_memory(min(batch_size, len(train_idx)), training=True)
    state = TrainState(epoch=initial_epoch)
    saver = None
    voice = ranks is None or ranks.first  # NOTE: rank 0 alone prints and writes
    if ranks is not None:
        ranks.check_batches(len(train_idx), batch_size)
    if checkpoint_dir is not None and voice:
        saver = Checkpointer(checkpoint_dir, checkpoint_every, keep)
        saver.data = {
            "samples": len(train_idx),
            "labels": labels_digest([y_i[train_idx] for y_i in ys]),
            "batch_size": batch_size,
        }
        state = saver.resume(model, state) if resume else state
        if not resume:
            saver.refuse_existing()
    elif resume and checkpoint_dir is None:
        raise ModelError("resume=True needs checkpoint_dir, the folder to resume from")
    if ranks is not None:  # rank 0's weights, optimizer, generators and (resumed) state
        state = ranks.share_start(model, state)
    metric_fns = [(key, i, get_metric(name)) for key, i, name in model._metric_keys()]
    history = state.history
    history.params = {
        **history.params,  # resumed_from, after a resume
        "epochs": epochs,
        "batch_size": batch_size,
        "samples": len(train_idx),
        "steps": math.ceil(len(train_idx) / batch_size),
        "loss": model.loss.name,
        "optimizer": model.optimizer.config,
        "metrics": list(model.metric_names),
    }
    if len(model.output_names) > 1:
        history.params.update(
            outputs=list(model.output_names),
            loss={o: lf.name for o, lf in zip(model.output_names, model.losses, strict=True)},
            loss_weights=dict(zip(model.output_names, model.loss_weights, strict=True)),
        )
    callbacks = [*_verbose_callbacks(verbose if voice else 0), *callbacks]
    if state.step:  # NOTE: a resumed run's moving statistics have had its earlier steps
        model.moving_updates = {
            p: None if c is None else max(c, state.step) for p, c in model.moving_updates.items()
        }
    for cb in callbacks:
        cb.model = model
    model.stop_training = False
    for cb in callbacks:
        cb.on_train_begin(dict(history.params))
    interrupts = Interrupts()
    # NOTE: the checkpoint folder's lock is let go however fit ends.
    with (
        model.backend.compute_scope(3 * model.macs * batch_size),
        interrupts.installed(),
        saver if saver is not None else contextlib.nullcontext(),
    ):
        while state.epoch < epochs:
            epoch = state.epoch
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            start = time.perf_counter()
            if state.order is None:  # NOTE: a resumed epoch keeps the order it was given
                state.order = model.rng.permutation(train_idx) if shuffle else train_idx
            logs = _train_epoch(
                model,
                x,
                ys,
                state,
                batch_size,
                augment,
                metric_fns,
                callbacks,
                saver,
                interrupts,
                ranks,
            )
            if validation_data is not None:
                val = model.evaluate(validation_data[0], validation_data[1], batch_size)
                logs.update({f"val_{k}": v for k, v in val.items()})
            history.append(epoch, logs)
            state.next_epoch()
            if saver is not None:
                saver.save(model, state)
            for cb in callbacks:
                cb.on_epoch_end(epoch, {**logs, "seconds": time.perf_counter() - start})
            if interrupts.requested:
                _interrupted(state, saver.latest if saver else None)
            if model.stop_training:
                break
    for cb in callbacks:
        cb.on_train_end(history.history)
    if voice:
        warn_short_statistics(model)
    return history


class ShortStatisticsWarning(UserWarning):
    """Batchnorm's moving statistics had too few updates to forget their initial values."""


# Updates for a moving average to forget its start: momentum**n < e**-3, about 5%.
FORGET = 3.0


def warn_short_statistics(model: Model) -> None:
    """Warn (ShortStatisticsWarning) for layers whose moving statistics are mostly initial.

    With momentum m, after n updates the initial value still weighs m**n ~ exp(-n(1-m));
    below n = 3/(1-m) (300 for Keras' 0.99) it weighs more than 5%, and inference,
    which uses the moving statistics, looks far worse than training. Names the
    layers, their updates, and the momentum that would fit: 1 - 3/n.
    """
    short: dict[tuple[float, int], list[str]] = {}
    for step in model.plan.steps:
        updates = model.moving_updates.get(step.path)
        momentum = float(getattr(step.attrs, "momentum", 0.0))
        # NOTE: a layer never trained here (frozen, or updates None: loaded) is not the momentum's.
        if updates is None or updates == 0 or step.path in model.frozen:
            continue
        if momentum >= 1 or updates < FORGET / (1 - momentum):
            short.setdefault((momentum, updates), []).append(step.path)
    for (momentum, updates), paths in short.items():
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        fits = max(math.floor((1 - FORGET / updates) * 100) / 100, 0.0)
        warnings.warn(
            ShortStatisticsWarning(
                f"batchnorm {shown}: the moving statistics had {updates} updates, too few for"
                f" momentum {momentum:g} ({_needed(momentum)}),"
                f" so evaluation and predictions use mostly their initial values and look"
                f" worse than training; train longer or set momentum={fits:g} (1 - 3/{updates})"
            ),
            stacklevel=3,
        )


def _needed(momentum: float) -> str:
    if momentum >= 1:
        return "which never moves them"
    return f"about {math.ceil(FORGET / (1 - momentum))} needed"


def _verbose_callbacks(verbose: int | str) -> list[Callback]:
    """The progress callbacks `verbose` asks for (0, 1, 2 or "auto")."""
    from cnndsl.training.progress import EpochLines, ProgressBar

    if verbose == "auto":
        from rich.console import Console

        console = Console(stderr=True)
        verbose = 1 if console.is_terminal or console.is_jupyter else 0
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ModelError(f"verbose must be 0, 1, 2 or 'auto', not {verbose!r}")
    shown: list[Callback] = [EpochLines()] if verbose else []
    return [ProgressBar(), *shown] if verbose == 1 else shown


def _train_epoch(
    model: Model,
    x: Any,
    ys: list[np.ndarray],
    state: TrainState,
    batch_size: int,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None,
    metric_fns: list[tuple[str, int, Metric]],
    callbacks: list[Callback],
    saver: Checkpointer | None,
    interrupts: Interrupts,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """The rest of the pass over x[state.order]; returns the epoch's mean loss and metrics.

    Under `ranks`, this rank trains on its shard of each global batch; the loss
    and metrics are the global batch's.
    """

    sums, counts, order = state.sums, state.counts, state.order
    assert order is not None, "fit draws the epoch's order first"
    steps = math.ceil(len(order) / batch_size)
    loss_keys = model._loss_keys()  # each output's own loss, with several
    metrics = [(i, fn) for _, i, fn in metric_fns]
    start = time.perf_counter()
    for lo in range(state.batch * batch_size, len(order), batch_size):
        b = state.batch
        idx = order[lo : lo + batch_size]
        part = slice(None) if ranks is None else ranks.shard(len(idx))
        if augment is not None:  # NOTE: the whole global batch, so the draws are one process's
            xb = augment(np.asarray(x[idx]), model.rng)[part]
        else:
            xb = np.asarray(x[idx[part]])
        yb = [y_i[idx[part]] for y_i in ys]
        try:
            value, values, _, found = model._train_step(xb, yb, len(idx), metrics)
        except NonFiniteLoss as e:
            last = saver.latest if saver else None
            raise e.at(state.epoch + 1, b + 1, state.step + 1, last) from None
        state.batch, state.step = b + 1, state.step + 1
        for key, v in [("loss", value), *zip(loss_keys, values, strict=False)]:
            sums[key] = sums.get(key, 0.0) + v * len(idx)
            counts[key] = counts.get(key, 0) + len(idx)
        if ranks is not None and found:
            found = ranks.sum_floats(found)
        for j, (key, _, _) in enumerate(metric_fns):
            sums[key] = sums.get(key, 0.0) + found[j]
            counts[key] = counts.get(key, 0) + round(found[len(metric_fns) + j])
        logs: dict[str, Any] = {k: sums[k] / max(counts[k], 1) for k in sums}
        logs.update(samples=lo + len(idx), total=len(order), seconds=time.perf_counter() - start)
        for cb in callbacks:
            cb.on_batch_end(b, logs)
        # NOTE: Ctrl-C on an epoch's last batch stops after its validation and save.
        stop = interrupts.requested and state.batch < steps
        if saver is not None and (saver.due(state, steps) or stop):
            saver.save(model, state)
        if stop:
            _interrupted(state, saver.latest if saver else None)
        if model.stop_training:
            break
    return {k: sums[k] / max(counts[k], 1) for k in sums}


def _interrupted(state: TrainState, checkpoint: str | None) -> None:

    where = f"after step {state.step} (epoch {state.epoch + 1}, batch {state.batch})"
    if state.batch == 0:
        where = f"after step {state.step} (the end of epoch {state.epoch})"
    kept = (
        f"; checkpoint saved: {checkpoint}; continue with --resume (resume=True)"
        if checkpoint
        else "; nothing saved (pass --checkpoint DIR to keep the work)"
    )
    raise TrainingInterrupted(f"interrupted {where}{kept}", checkpoint)


__all__ = ["Callback", "History", "ShortStatisticsWarning", "fit", "warn_short_statistics"]
