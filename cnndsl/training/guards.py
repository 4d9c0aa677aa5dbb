"""Run-time guards: refuse a batch that will not fit in memory; locate a non-finite loss.

Input: a built `Model` and what it is about to run.

Memory: before training, evaluation or prediction, the executor's memory plan
for the batch (`cnndsl.passes.memory`, plus the optimizer's temporaries) is
compared with the memory available: /proc/meminfo's MemAvailable capped by
the cgroup limit (a container's), or the GPU's free memory for CuPy;
`Model.max_memory` (`cnndsl run --max-memory 8G`) replaces that figure.
OutOfMemoryPlan gives both figures and the largest batch that fits, instead
of the process being killed halfway through an epoch.

Non-finite values: when a training step's loss or gradients are NaN or
infinite, the step is not applied and the batch is run again, checking each
layer's output in order, then the loss, then the gradients in backward order;
NonFiniteLoss names the first place non-finite values appear.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.ops import OPS
from cnndsl.passes.memory import estimate_memory, largest_batch
from cnndsl.runtime.executor import ModelError
from cnndsl.summary import human
from cnndsl.training.losses import Loss

if TYPE_CHECKING:
    from cnndsl.training.model import Model

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
CGROUP = Path("/sys/fs/cgroup")  # where a container's memory limit is read
GPU_SOURCE = "free GPU memory (cudaMemGetInfo + CuPy's pool)"


class OutOfMemoryPlan(ModelError):
    """A batch whose memory plan exceeds the memory free: both figures, the batch that fits."""

    def __init__(self, message: str, needed: int, available: int, largest: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest_batch = largest


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


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1000000' -> bytes (binary units); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"'{text}' is not a size; write e.g. 8G, 512M or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available_memory(backend: Any) -> tuple[int, str] | None:
    """(bytes free for new arrays, where the figure comes from), or None if unknown."""
    if backend.name == "cupy":
        try:
            free, _ = backend.xp.cuda.runtime.memGetInfo()
            pool = backend.xp.get_default_memory_pool().free_bytes()  # freed, reusable
        except AttributeError:  # NOTE: a stand-in array module (tests): arrays on the host
            pass
        else:
            return int(free + pool), GPU_SOURCE
    found = _meminfo()
    limit = _cgroup_headroom()
    if limit is not None and (found is None or limit[0] < found[0]):
        return limit
    return found


def _meminfo() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(pages), "free physical pages (sysconf)"


def _cgroup_headroom() -> tuple[int, str] | None:
    """Limit minus usage of this container's cgroup (v2 or v1); page cache counts as free."""
    for limit_file, usage_file, cache_key in (
        ("memory.max", "memory.current", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),
    ):
        base = CGROUP
        try:
            raw = (base / limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                continue  # no limit
            usage = int((base / usage_file).read_text())
            stat = (base / limit_file).parent / "memory.stat"
            cache = 0
            for line in stat.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
            return max(0, int(raw) - usage + cache), f"the cgroup limit in {base / limit_file}"
        except (OSError, ValueError):
            continue
    return None


def check_memory(model: Model, batch: int, training: bool) -> None:
    """Raise OutOfMemoryPlan if running `batch` samples would not fit in the memory available."""
    if batch < 1:
        return
    slots = len(model.optimizer.slots) if training else 0
    itemsize = model.dtype.itemsize
    # NOTE: an update on one lane (CuPy) makes temporaries the size of a weight (Adam: g*g,
    # m/(sqrt(v)+e)); the NumPy backend's lanes update blocks, whose temporaries are small.
    largest_weight = max((s.size for s in model.specs.values()), default=0) * itemsize
    fixed = 2 * largest_weight if training else 0
    mem = estimate_memory(model.graph, batch, slots, itemsize)
    needed = (mem.training_peak if training else mem.inference_peak + mem.workspace) + fixed
    if model.max_memory is not None:
        available, source = int(model.max_memory), "the figure set by --max-memory"
    else:
        found = available_memory(model.backend)
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
    largest = largest_batch(model.graph, available, training, slots, itemsize, fixed, kept=False)
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


def rng_state(rng: Any) -> Any:
    """A copy of a generator's state (numpy's bit_generator.state), or None if not capturable."""
    try:
        return rng.bit_generator.state
    except AttributeError:  # NOTE: cupy's generators do not expose their state
        return None


def set_rng_state(rng: Any, state: Any) -> None:
    """Restore what rng_state returned (nothing for None)."""
    if state is not None:
        rng.bit_generator.state = state


def _finite(xp: Any, a: Any) -> bool:
    return a is None or bool(xp.isfinite(a).all())


def all_finite(xp: Any, value: Any, grads: dict[str, Any]) -> bool:
    """Whether a loss and every gradient are finite, with one device-to-host transfer."""
    total = xp.asarray(value, dtype=xp.float64)
    for g in grads.values():
        total = total + g.sum()  # NaN or inf anywhere makes the sum non-finite
    if math.isfinite(float(total)):
        return True
    # NOTE: a float32 sum of huge finite values can overflow; only then look at every value.
    return _finite(xp, value) and all(_finite(xp, g) for g in grads.values())


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


def _layer(step: Any) -> str:
    at = f", {step.span}" if step.span else ""
    return f"layer '{step.path}' ({step.op}, step {step.output}{at})"


def _locate(model: Model, x: Any, y: Any, loss: Loss) -> str:
    xp = model.xp
    plan, fused = model._train_plan(loss)
    n = len(plan.steps)
    values: list[Any] = [None] * n
    saved: list[Any] = [None] * n
    for step in plan.steps:
        i = step.output
        if step.op == "input":
            values[i] = x
            if not _finite(xp, x):
                return f"the input batch ('{step.path}')"
            continue
        ctx = model._context(step, True)
        out, saved[i] = OPS[step.op].forward(
            xp, step.attrs, [values[j] for j in step.inputs], model._weights[i], ctx
        )
        values[i] = out
        if not _finite(xp, out):
            bad = [k for k, w in model._weights[i].items() if not _finite(xp, w)]
            weights = f" (its weights {', '.join(bad)} are non-finite)" if bad else ""
            return f"the output of {_layer(step)}{weights}"
    out = values[plan.outputs[0]]
    value, grad = (loss.from_logits(xp, out, y)[:2]) if fused else loss(xp, out, y)
    if not _finite(xp, value):
        return f"the loss {loss.name} (every layer's output is finite)"
    grads: list[Any] = [None] * n
    grads[plan.outputs[0]] = grad
    for step in reversed(plan.steps):
        i = step.output
        dy = grads[i]
        if dy is None or step.op == "input" or not model._requires[i]:
            continue
        ctx = model._context(step, True)
        dxs, dws = OPS[step.op].backward(xp, step.attrs, saved[i], dy, model._weights[i], ctx)
        bad = [k for k, g in dws.items() if not _finite(xp, g)]
        bad += [f"input {n}" for n, g in enumerate(dxs) if not _finite(xp, g)]
        if bad:
            return f"the gradients of {_layer(step)}: {', '.join(bad)}"
        for j, dx in zip(step.inputs, dxs, strict=True):
            if dx is not None:
                grads[j] = dx if grads[j] is None else grads[j] + dx
    return "no layer on a rerun of the batch (the values were non-finite only once)"


__all__ = [
    "NonFiniteLoss",
    "OutOfMemoryPlan",
    "all_finite",
    "available_memory",
    "check_memory",
    "non_finite_step",
    "parse_size",
    "rng_state",
    "snapshot",
    "set_rng_state",
]
