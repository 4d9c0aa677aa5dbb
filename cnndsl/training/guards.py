"""Training guards: memory (from cnndsl.runtime.memory_guard), and non-finite or exploding losses.

Input: a built `Model` and what it is about to run. The memory checks live
with the executor, which runs one before allocating weights; they are
re-exported here beside the training-time checks.

Non-finite values: when a training step's loss or gradients are NaN or
infinite, the step is not applied and the batch is run again under an
executor `Observer`, checking each layer's output in order, then the loss,
then the gradients in backward order; NonFiniteLoss names the first place
non-finite values appear.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.passes.memory import SCRATCH, estimate_memory, largest_batch
from cnndsl.runtime import memory_guard
from cnndsl.runtime.executor import ModelError, Observer
from cnndsl.runtime.lower import Step
from cnndsl.runtime.memory_guard import (
    OutOfMemoryPlan,
    available_memory,
    check_weights_fit,
    parse_size,
)
from cnndsl.summary import human
from cnndsl.training.history import Callback
from cnndsl.training.losses import Loss

if TYPE_CHECKING:
    from cnndsl.training.model import Model


class NonFiniteLoss(ModelError):
    """A loss or gradient that became NaN or infinite; `where` names the first layer seen."""

    def __init__(self, value: float, where: str) -> None:
        self.value = value
        self.where = where
        self.step: int | None = None
        self.checkpoint: str | None = None
        super().__init__(self._message(""))

    def _message(self, at: str) -> str:
        kept = (
            f"; the last good checkpoint is kept: {self.checkpoint} (resume from it with"
            " --resume or resume=True)"
            if self.checkpoint
            else ""
        )
        return (
            f"loss became {self.value}{at}: non-finite values first appear in {self.where};"
            f" the step was not applied{kept}; lower the learning rate or check the data"
            " for extreme values"
        )

    def at(self, epoch: int, batch: int, step: int, checkpoint: str | None) -> NonFiniteLoss:
        """Add where in the run it happened (epoch, batch, global step counted from 1)."""
        self.step, self.checkpoint = step, checkpoint
        self.args = (self._message(f" at epoch {epoch}, batch {batch} (step {step} of the run)"),)
        return self


# ---- memory ----


def check_memory(model: Model, batch: int, training: bool) -> None:
    """Raise OutOfMemoryPlan if running `batch` samples would not fit in the memory available."""
    if batch < 1:
        return
    slots = len(model.optimizer.slots) if training else 0
    itemsize = model.dtype.itemsize
    # NOTE: an unfused update on one lane makes temporaries the size of a weight (Adam: g*g,
    # m/(sqrt(v)+e)); the NumPy backend's lanes update blocks, whose temporaries are small,
    # and CuPy's fused updates make none: counted anyway, a margin on the GPU.
    largest_weight = max((s.size for s in model.specs.values()), default=0) * itemsize
    fixed = 2 * largest_weight if training else 0
    # NOTE: the backend's scratch cap (a GPU keeps far larger buffers than the CPU's lanes).
    scratch = model.backend.capabilities.scratch_bytes or SCRATCH
    mem = estimate_memory(model.graph, batch, slots, itemsize, scratch)
    needed = (mem.training_peak if training else mem.inference_peak + mem.workspace) + fixed
    if model.max_memory is not None:
        available, source = int(model.max_memory), "the figure set by --max-memory"
    else:
        found = memory_guard.available_memory(model.backend)
        if found is None:
            return  # NOTE: nothing to compare with; run as before rather than refuse
        # Weights, optimizer state and layers' buffers exist already: free memory must
        # hold only the rest.
        resident = mem.params + model.layer_buffer_bytes()
        resident += sum(
            a.nbytes for table in model.optimizer.state.values() for a in table.values()
        )
        available, source = found[0] + resident, found[1]
    if needed <= available:
        if training:
            model.keep_layer_buffers(True)
        return
    if training and needed - mem.kept <= available:
        # NOTE: what layers keep by choice (Winograd tiles) only saves time: go without.
        model.keep_layer_buffers(False)
        return
    if training:
        needed -= mem.kept
    largest = largest_batch(
        model.graph, available, training, slots, itemsize, fixed, kept=False, scratch=scratch
    )
    what = "training" if training else "inference"
    if largest >= 1:
        fix = (
            f"the largest batch that fits is {largest}: use --batch-size {largest}"
            " (batch_size= in Python), or set the available figure with --max-memory SIZE"
            " (Model.max_memory) if more memory will be free"
        )
    else:
        fix = (
            "not even a batch of 1 fits (the largest batch that fits is 0); use a smaller"
            " network or a machine with more memory"
        )
    raise OutOfMemoryPlan(
        f"{what} with batch {batch} needs about {human(needed, 'B')} by the memory plan, but"
        f" only {human(available, 'B')} is available ({source}); {fix}",
        needed,
        available,
        largest,
    )


# ---- non-finite losses ----


@dataclass(frozen=True)
class DeviceRngState:
    """A copy of a CuPy bit generator's state buffer (its cuRAND states, on the device)."""

    buffer: Any


def rng_state(rng: Any) -> Any:
    """A copy of a generator's state, or None if it cannot be captured.

    NumPy: `bit_generator.state`, a fresh dict. CuPy (cupy.random.Generator):
    `bit_generator.state` is a method returning a device pointer; the states
    live in the device array `bit_generator._state`, which is copied.
    """
    bits = getattr(rng, "bit_generator", None)
    if bits is None:
        return None
    state = getattr(bits, "state", None)
    if not callable(state):
        return state
    device = getattr(bits, "_state", None)
    # NOTE: a CuPy private attribute (cupy/random/_bit_generator.pyx, CuPy 9-14);
    # without it the state cannot be captured and the caller goes on without.
    return DeviceRngState(device.copy()) if device is not None else None


def set_rng_state(rng: Any, state: Any) -> None:
    """Restore what rng_state returned (nothing for None)."""
    if state is None:
        return
    bits = rng.bit_generator
    if isinstance(state, DeviceRngState):
        # In place: the generator's kernels hold the buffer's pointer.
        bits._state[...] = state.buffer
    else:
        bits.state = state


def _finite(xp: Any, a: Any) -> bool:
    return a is None or bool(xp.isfinite(a).all())


def _finite_probe(xp: Any, value: Any, grads: Mapping[str, Any]) -> Any:
    """A float64 device scalar, non-finite if the loss or any gradient is (or a sum overflows)."""
    total = xp.asarray(value, dtype=xp.float64)
    for g in grads.values():
        total = total + g.sum()  # NaN or inf anywhere makes the sum non-finite
    return total


def _each_finite(xp: Any, value: Any, grads: Mapping[str, Any]) -> bool:
    # NOTE: a float32 sum of huge finite values can overflow; only then look at every value.
    return _finite(xp, value) and all(_finite(xp, g) for g in grads.values())


def all_finite(xp: Any, value: Any, grads: dict[str, Any]) -> bool:
    """Whether a loss and every gradient are finite, with one device-to-host transfer."""
    if math.isfinite(float(_finite_probe(xp, value, grads))):
        return True
    return _each_finite(xp, value, grads)


def host_scalars(backend: Any, values: Sequence[Any]) -> list[float]:
    """Scalars (device 0-d arrays or host numbers) as floats, in at most one device-to-host copy.

    On a GPU each float() of a device scalar is a transfer that waits for the
    device: a step's loss, metrics and finite check would wait several times.
    """
    xp = backend.xp
    on_device = [i for i, v in enumerate(values) if not isinstance(v, (int, float))]
    floats = [float(v) if isinstance(v, (int, float)) else 0.0 for v in values]
    if on_device:
        # float64 holds every float32 loss and integer count exactly: the same floats as float().
        stacked = xp.stack([xp.asarray(values[i], dtype=xp.float64).reshape(()) for i in on_device])
        for i, host in zip(on_device, backend.to_host(stacked).tolist(), strict=True):
            floats[i] = host
    return floats


@dataclass(frozen=True)
class StepFigures:
    """A training step's numbers on the host, fetched from the device together."""

    finite: bool  # the loss and every gradient are finite
    loss: float  # the weighted total
    losses: list[float]  # each output's loss
    metrics: list[float]  # each metric's sum over the batch, then each one's count


def step_figures(
    backend: Any,
    value: Any,
    values: Sequence[Any],
    grads: Mapping[str, Any],
    scored: Sequence[tuple[Any, Any]],
) -> StepFigures:
    """The step's finite check, losses and metric (sum, count) pairs, in one device-to-host copy."""
    xp = backend.xp
    probe = _finite_probe(xp, value, grads)
    sums, counts = [s for s, _ in scored], [c for _, c in scored]
    host = host_scalars(backend, [probe, value, *values, *sums, *counts])
    finite = math.isfinite(host[0]) or _each_finite(xp, value, grads)
    return StepFigures(finite, host[1], host[2 : 2 + len(values)], host[2 + len(values) :])


def non_finite_weights(model: Model) -> list[str]:
    """Keys of the weights holding NaN or infinite values, moving statistics included."""
    with np.errstate(all="ignore"):  # overflowing sums are what this looks for
        if all_finite(model.xp, 0.0, model.params):  # one transfer in the common case
            return []
        return [k for k, v in model.params.items() if not _finite(model.xp, v)]


EXPLOSION_FACTOR = 100.0  # a running loss this many times the first batch's is exploding


class LossExplosionWarning(UserWarning):
    """The loss grew by orders of magnitude over its start while staying finite."""


class LossExplosion(Callback):
    """Warns once when the running loss exceeds EXPLOSION_FACTOR × the first batch's loss.

    Such a run is finite, so nothing stops it, yet it learns nothing (Adam at
    lr 1e6: a loss near 193,000). The warning names the layer whose gradient
    has the largest norm on `sample` (a few training samples): where to look.
    """

    def __init__(self, x_sample: Any, y_sample: Any, factor: float = EXPLOSION_FACTOR) -> None:
        self.x_sample = x_sample
        self.y_sample = y_sample
        self.factor = factor
        self.start: float | None = None
        self.warned = False

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """Compare the running loss with the first batch's; warn the first time it explodes."""
        loss = logs.get("loss")
        if self.warned or loss is None or not math.isfinite(loss):
            return
        if self.start is None:
            self.start = float(loss)
            return
        if self.start > 0 and loss > self.factor * self.start:
            self.warned = True
            warnings.warn(
                f"the loss grew from {self.start:.4g} (first batch) to {loss:.4g}, more than"
                f" {self.factor:g} times: the training is diverging; the largest gradient is"
                f" {largest_gradient(self.model, self.x_sample, self.y_sample)};"
                " lower the learning rate",
                LossExplosionWarning,
                stacklevel=2,
            )


def largest_gradient(model: Model, x: Any, y: Any) -> str:
    """'layer 'fc' (norm 1.2e+05)': the layer whose gradient on (x, y) has the largest norm."""
    state = rng_state(model.backend.rng)  # dropout masks: the run goes on as it would have
    try:
        with np.errstate(all="ignore"):
            _, grads = model.gradients(x, y)
    finally:
        set_rng_state(model.backend.rng, state)
    norms: dict[str, float] = {}
    for key, g in grads.items():
        layer = key.rpartition(":")[0]
        norms[layer] = norms.get(layer, 0.0) + float(np.sum(np.square(g, dtype=np.float64)))
    if not norms:
        return "unknown (no trainable weights)"
    layer = max(norms, key=lambda k: norms[k])
    return f"in layer '{layer}' (norm {math.sqrt(norms[layer]):.3g})"


@dataclass
class Snapshot:
    """What a training forward pass changes besides its outputs: to undo a failed step."""

    rng: Any  # the device generator's state (dropout masks)
    stats: dict[str, Any]  # copies of non-trainable weights (batchnorm's moving statistics)


def snapshot(model: Model) -> Snapshot:
    """Capture the state a training step changes before the optimizer runs (cheap: small arrays)."""
    stats = {k: model.params[k].copy() for k, s in model.specs.items() if not s.trainable}
    return Snapshot(rng_state(model.backend.rng), stats)


def _restore(model: Model, snap: Snapshot) -> None:
    set_rng_state(model.backend.rng, snap.rng)
    for key, value in snap.stats.items():
        model.params[key][...] = value


def non_finite_step(model: Model, x: Any, y: Any, value: float, before: Snapshot) -> NonFiniteLoss:
    """Undo a step whose loss or gradients are not finite and say where they first appear.

    Reruns the batch from the state before the step (same dropout masks),
    checking the input, each layer's output in plan order, the loss, then each
    step's gradients in backward order; leaves the model as it was before the
    step, except that the device generator stays where the failed step left it.
    """
    after = rng_state(model.backend.rng)
    _restore(model, before)
    try:
        with np.errstate(all="ignore"):  # the overflows are what we are looking for
            where = _locate(model, x, y, model.loss)
    finally:
        _restore(model, before)
        set_rng_state(model.backend.rng, after)
    return NonFiniteLoss(value, where)


def _layer(step: Step) -> str:
    at = f", {step.span}" if step.span else ""
    return f"layer '{step.path}' ({step.op}, step {step.output}{at})"


class _FirstNonFinite(Observer):
    """Watches a rerun of a training step; `where` names the first non-finite value."""

    def __init__(self, model: Model, loss: Loss) -> None:
        self.model = model
        self.xp = model.xp
        self.loss_name = loss.name
        self.where: str | None = None

    def output(self, step: Step, value: Any) -> bool:
        if _finite(self.xp, value):
            return False
        if step.op == "input":
            self.where = f"the input batch ('{step.path}')"
            return True
        params = self.model.params
        bad = [
            name
            for name, key in zip(step.weights, step.weight_keys, strict=True)
            if not _finite(self.xp, params[key])
        ]
        weights = f" (its weights {', '.join(bad)} are non-finite)" if bad else ""
        self.where = f"the output of {_layer(step)}{weights}"
        return True

    def loss(self, value: Any) -> bool:
        if _finite(self.xp, value):
            return False
        self.where = f"the loss {self.loss_name} (every layer's output is finite)"
        return True

    def gradients(
        self, step: Step, input_grads: Sequence[Any], weight_grads: Mapping[str, Any]
    ) -> bool:
        bad = [k for k, g in weight_grads.items() if not _finite(self.xp, g)]
        bad += [f"input {n}" for n, g in enumerate(input_grads) if not _finite(self.xp, g)]
        if not bad:
            return False
        self.where = f"the gradients of {_layer(step)}: {', '.join(bad)}"
        return True


def _locate(model: Model, x: Any, y: Any, loss: Loss) -> str:
    watch = _FirstNonFinite(model, loss)
    model.observe_gradients(x, y, loss, watch)
    return watch.where or "no layer on a rerun of the batch (the values were non-finite only once)"


__all__ = [
    "LossExplosion",
    "LossExplosionWarning",
    "NonFiniteLoss",
    "OutOfMemoryPlan",
    "StepFigures",
    "all_finite",
    "available_memory",
    "check_memory",
    "check_weights_fit",
    "host_scalars",
    "non_finite_step",
    "non_finite_weights",
    "parse_size",
    "rng_state",
    "snapshot",
    "set_rng_state",
    "step_figures",
]
