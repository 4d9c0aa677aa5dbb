"""Executor: a lowered plan run forward and backward over a backend, with its weights.

Input: an `ir.Graph` with shapes and weight specs (what `cnndsl.compile` gives).
Output: network outputs, losses and weight gradients as device arrays.
The executor is one loop over `Plan.steps` calling `OPS[step.op].forward`,
dropping each value after its last reader (`Plan.frees`); backward walks the
steps in reverse, summing the gradients of values read by several steps.
Weights live in `params` ('layer/path:weight' -> device array), allocated
exactly from each layer's WeightSpecs with Keras' initialisers. Weights update
in place, so every view of them (the per-layer dicts that the kernels receive,
batchnorm's moving statistics) stays current. Freezing decides which values
need gradients at all.

This is the engine under `cnndsl.training.model.Model`, kept apart from the Keras-style
API (compile, fit, evaluate, predict) so that each reads on its own.
An `Observer` watches a run step by step (`observe`, `observe_gradients`), as
torch.fx's `Interpreter.run_node` does: the non-finite guard in
cnndsl.training.guards and the feature maps in cnndsl.plot.maps use it rather
than a loop of their own. Unobserved runs pay one `is None` test per step.
Raises ModelError for inputs of the wrong number or shape, networks with
several outputs where one is needed, and freeze patterns that match no layer.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnndsl.ir import Graph
from cnndsl.ops import OPS
from cnndsl.ops.registry import Context, WeightSpec
from cnndsl.runtime.backends import Backend, get_backend
from cnndsl.runtime.errors import ModelError
from cnndsl.runtime.lower import (
    Plan,
    Step,
    lower,
    output_activation,
    strip_output_activation,
    weight_key,
)
from cnndsl.runtime.memory_guard import check_weights_fit
from cnndsl.training.losses import Loss

Array = Any


class Observer:
    """Hooks that watch a run step by step: subclass and override what you need.

    Each hook returns True to stop the run there (nothing after it runs).
    Values are the executor's own device arrays: a later in-place step may
    overwrite one and the executor drops each after its last reader, so copy
    what you keep. A step reports what it computed in the lowered plan: a
    producer that runs its reader's activation (`cnndsl.runtime.lower`'s
    fusion) reports the activated value, and so does that reader, now identity.
    """

    def output(self, step: Step, value: Array) -> bool:
        """After each step's forward, in run order; the network's inputs included."""
        return False

    def loss(self, value: Array) -> bool:
        """After the loss of a training run (`observe_gradients`), before backward."""
        return False

    def gradients(
        self, step: Step, input_grads: Sequence[Array | None], weight_grads: Mapping[str, Array]
    ) -> bool:
        """After each step's backward, in reverse run order: its inputs' and weights' gradients.

        weight_grads holds every weight gradient the kernel gave (by weight
        name), frozen or not; input_grads is None where no gradient is needed.
        """
        return False


class _Stop(Exception):
    """An observer asked to stop the run (caught by `observe` and `observe_gradients`)."""


# ---- initialisers ----


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """Keras fan_in, fan_out: conv [fh, fw, in, out] -> (fh·fw·in, fh·fw·out), dense [in, out]."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    return math.prod(shape[:-1]), math.prod(shape[:-2]) * shape[-1]


def initial_value(spec: WeightSpec, rng: np.random.Generator, dtype: Any) -> np.ndarray:
    """A host array for one WeightSpec: glorot_uniform, zeros or ones (Keras defaults)."""
    if spec.init == "zeros":
        return np.zeros(spec.shape, dtype)
    if spec.init == "ones":
        return np.ones(spec.shape, dtype)
    if spec.init == "glorot_uniform":
        fan_in, fan_out = fans(spec.shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, spec.shape).astype(dtype)
    raise ValueError(f"unknown initialiser '{spec.init}'")


# ---- the executor ----


class Executor:
    """A plan with its weights on a backend: forward, backward and freezing."""

    def __init__(
        self,
        graph: Graph,
        backend: str | Backend = "numpy",
        seed: int = 0,
        dtype: Any = "float32",
    ) -> None:
        self.graph = graph
        self.backend = get_backend(backend, seed=seed)
        self.plan: Plan = lower(graph, capabilities=self.backend.capabilities)
        if isinstance(backend, Backend):
            backend.seed(seed)  # a backend object passed in is reseeded too: determinism
        self.xp = self.backend.xp
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.macs = sum(layer.macs for layer in graph)  # per sample, forward
        self.specs: dict[str, WeightSpec] = {}
        self.params: dict[str, Array] = {}
        # Per step, the dict of weights its kernel receives (the same arrays as params).
        self._weights: list[dict[str, Array]] = []
        # Per step, buffers its layer keeps between calls (ctx.cache; None while turned off).
        self._caches: list[dict[str, Any]] = [{} for _ in self.plan.steps]
        self._layer_buffers = True
        self.frozen: set[str] = {layer.path for layer in graph if not layer.trainable}
        check_weights_fit(graph, self.backend, self.dtype)  # before allocating, not after
        self._init_weights(seed)
        self._train_plans: dict[tuple[str, ...], tuple[Plan, tuple[bool, ...]]] = {}
        self._refresh()

    # ---- weights ----
    def _init_weights(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._weights = []
        for step in self.plan.steps:
            layer = self.graph[step.path]
            mine: dict[str, Array] = {}
            for name in step.weights:
                spec = layer.weights[name]
                key = weight_key(step.path, name)
                self.specs[key] = spec
                arr = self.backend.to_device(initial_value(spec, rng, self.dtype))
                self.params[key] = arr
                mine[name] = arr
            self._weights.append(mine)

    def _assign(self, key: str, value: np.ndarray) -> None:
        """Copy a host value into the existing device array (so every view sees it)."""
        self.params[key][...] = self.backend.to_device(value, dtype=self.dtype)

    @property
    def trainable_keys(self) -> list[str]:
        """Weights the optimizer updates: trainable specs of layers not frozen."""
        return [k for k, s in self.specs.items() if s.trainable and _path(k) not in self.frozen]

    def count_params(self) -> dict[str, int]:
        """Total, trainable (given the current freezing) and non-trainable parameter counts."""
        total = sum(s.size for s in self.specs.values())
        trainable = sum(self.specs[k].size for k in self.trainable_keys)
        return {"total": total, "trainable": trainable, "non_trainable": total - trainable}

    def layer_weights(self, path: str) -> dict[str, np.ndarray]:
        """Host copies of one layer's weights by name."""
        i = self.plan.index(path)
        return {n: self.backend.to_host(a).copy() for n, a in self._weights[i].items()}

    # ---- freezing ----
    def _match(self, pattern: str) -> list[str]:
        paths = [s.path for s in self.plan.steps]
        hits = [
            p
            for p in paths
            if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.rstrip("/") + "/*")
        ]
        if not hits:
            raise ModelError(
                f"no layer path matches '{pattern}'; paths look like"
                f" {', '.join(paths[1:4] or paths)}"
            )
        return hits

    def freeze(self, pattern: str = "*") -> list[str]:
        """Freeze the layers whose path matches the glob (or lie under it); returns them.

        Frozen layers get no updates, and a frozen batchnorm runs in inference
        mode (moving statistics, no updates to them), as in Keras.
        """
        hits = self._match(pattern)
        self.frozen.update(hits)
        self._refresh()
        return hits

    def unfreeze(self, pattern: str = "*") -> list[str]:
        """Make matching layers trainable again; returns them."""
        hits = self._match(pattern)
        self.frozen.difference_update(hits)
        self._refresh()
        return hits

    def _refresh(self) -> None:
        """Recompute which values need gradients after a change of freezing."""
        updatable = set(self.trainable_keys)
        requires: list[bool] = []
        for step in self.plan.steps:
            own = any(k in updatable for k in step.weight_keys)
            requires.append(own or any(requires[j] for j in step.inputs))
        self._requires = requires
        self._updatable = updatable

    def keep_layer_buffers(self, on: bool) -> None:
        """Let layers keep buffers between calls (Winograd convs: their input tiles), or not.

        Such buffers only save time; the memory guard turns them off (and
        frees them) where a training batch fits only without them.
        """
        self._layer_buffers = on
        if not on:
            for cache in self._caches:
                cache.clear()

    def layer_buffer_bytes(self) -> int:
        """Bytes of the buffers layers keep between calls now."""
        return sum(getattr(v, "nbytes", 0) for cache in self._caches for v in cache.values())

    # ---- forward and backward ----
    def _context(self, step: Step, training: bool) -> Context:
        if training and OPS[step.op].frozen_as_inference and step.path in self.frozen:
            training = False
        return Context(
            training=training,
            rng=self.backend.rng,
            needs_input_grad=tuple(self._requires[j] for j in step.inputs),
            overrides=self.backend.overrides,
            cache=self._caches[step.output] if self._layer_buffers else None,
            workers=self.backend.workers,
        )

    def _forward(
        self,
        plan: Plan,
        xs: Sequence[Array],
        training: bool,
        keep: bool,
        observer: Observer | None = None,
    ) -> tuple[list[Array], list[Any] | None]:
        """Run the plan; with keep=True also return what each step saved for backward.

        With an observer, each step's value goes to observer.output (raises _Stop
        when it asks to stop).
        """
        values: list[Array] = [None] * len(plan.steps)
        saved: list[Any] | None = [None] * len(plan.steps) if keep else None
        if len(xs) != len(plan.inputs):
            raise ModelError(f"the network takes {len(plan.inputs)} inputs, got {len(xs)}")
        for x, i in zip(xs, plan.inputs, strict=True):
            step = plan.steps[i]
            if step.shape is not None and tuple(x.shape[1:]) != tuple(step.shape):
                raise ModelError(
                    f"input '{step.path}' takes samples of shape {list(step.shape)},"
                    f" got {list(x.shape[1:])}"
                )
            values[i] = x
        xp = self.xp
        for step in plan.steps:
            i = step.output
            if step.op == "input":
                if observer is not None and observer.output(step, values[i]):
                    raise _Stop
                continue
            ins = [values[j] for j in step.inputs]
            try:
                y, s = OPS[step.op].forward(
                    xp, step.attrs, ins, self._weights[i], self._context(step, training)
                )
            except Exception as e:
                e.add_note(f"while running {step.where()}")
                raise
            values[i] = y
            if saved is not None:
                saved[i] = s
            if observer is not None and observer.output(step, y):
                raise _Stop
            for v in plan.frees[i]:
                values[v] = None
        return [values[o] for o in plan.outputs], saved

    def _backward(
        self,
        plan: Plan,
        saved: list[Any],
        output_grads: Mapping[int, Array],
        observer: Observer | None = None,
    ) -> dict[str, Array]:
        """Walk the steps in reverse; returns gradients of the updatable weights.

        With an observer, each step's gradients go to observer.gradients (raises
        _Stop when it asks to stop).
        """
        grads: list[Array] = [None] * len(plan.steps)
        for o, g in output_grads.items():
            grads[o] = g
        weight_grads: dict[str, Array] = {}
        xp = self.xp
        for step in reversed(plan.steps):
            i = step.output
            dy, grads[i] = grads[i], None
            if dy is None or not self._requires[i] or step.op == "input":
                saved[i] = None
                continue
            try:
                dxs, dws = OPS[step.op].backward(
                    xp, step.attrs, saved[i], dy, self._weights[i], self._context(step, True)
                )
            except Exception as e:
                e.add_note(f"while running backward of {step.where()}")
                raise
            saved[i] = None
            if observer is not None and observer.gradients(step, dxs, dws):
                raise _Stop
            for name, g in dws.items():
                key = weight_key(step.path, name)
                if key in self._updatable:
                    weight_grads[key] = g
            for j, dx in zip(step.inputs, dxs, strict=True):
                if dx is None or not self._requires[j]:
                    continue
                # NOTE: fan-out: a value read by several steps gets the sum of their grads.
                grads[j] = dx if grads[j] is None else grads[j] + dx
        return weight_grads

    def _train_plan(self, loss: Loss) -> tuple[Plan, bool]:
        """The plan used with `loss`: logits out and fused=True when the loss absorbs the
        network's final activation (softmax + cross-entropy, sigmoid + binary)."""
        plan, (fused,) = self._heads_plan([loss])
        return plan, fused

    def _heads_plan(self, losses: Sequence[Loss]) -> tuple[Plan, tuple[bool, ...]]:
        """The plan trained with `losses` (one per output) and, per output, whether it is fused.

        An output whose loss absorbs its final activation (softmax + cross-entropy,
        sigmoid + binary) gives logits in this plan, and its loss works on them.
        """
        key = tuple(loss.name for loss in losses)
        if key not in self._train_plans:
            plan, fused = self.plan, []
            for o, loss in zip(self.plan.outputs, losses, strict=True):
                act = output_activation(self.plan, o)
                step = self.plan.steps[o]
                last_axis = OPS[step.op].acts_along_last_axis(step.attrs, step.shape or ())
                # NOTE: an output another step reads keeps its activation: that reader needs it.
                read = bool(self.plan.consumers[o]) or self.plan.outputs.count(o) > 1
                fuse = act is not None and act == loss.activation and last_axis and not read
                plan = strip_output_activation(plan, o) if fuse else plan
                fused.append(fuse)
            self._train_plans[key] = (plan, tuple(fused))
        return self._train_plans[key]

    # ---- one batch ----
    def _device_batch(self, x: Any) -> Array:
        return self.backend.to_device(np.asarray(x), dtype=self.dtype)

    def _labels(self, y: Any) -> Array:
        y = np.asarray(y)
        if y.dtype.kind == "f":
            return self.backend.to_device(y, dtype=self.dtype)
        return self.backend.to_device(y.astype(np.int64))

    def _loss_and_output(
        self,
        x: Array,
        y: Array,
        loss: Loss,
        training: bool,
        keep: bool,
        observer: Observer | None = None,
    ) -> tuple[Array, Array, Array, Plan, list[Any] | None]:
        """(loss, d loss/d plan output, network output probabilities, plan, saved)."""
        self._single_output()
        value, _, grads, (p,), plan, saved = self._losses_and_outputs(
            x, [y], [loss], [1.0], training, keep, observer
        )
        return value, grads[plan.outputs[0]], p, plan, saved

    def _losses_and_outputs(
        self,
        x: Array,
        ys: Sequence[Array],
        losses: Sequence[Loss],
        weights: Sequence[float],
        training: bool,
        keep: bool,
        observer: Observer | None = None,
    ) -> tuple[Array, list[Array], dict[int, Array], list[Array], Plan, list[Any] | None]:
        """Every output's loss at once: (weighted total, each output's loss, d total/d each
        plan output by step index, each output's probabilities, plan, saved).

        The total is sum(weight_i · loss_i), as Keras' loss_weights, so each output's
        gradient is its own loss's gradient times its weight.
        """
        if not len(ys) == len(losses) == len(weights) == len(self.plan.outputs):
            raise ModelError(
                f"the network has {len(self.plan.outputs)} outputs; got {len(ys)} labels,"
                f" {len(losses)} losses and {len(weights)} loss weights"
            )
        plan, fused = self._heads_plan(losses)
        outs, saved = self._forward(plan, [x], training, keep, observer)
        total: Array = 0.0
        values: list[Array] = []
        grads: dict[int, Array] = {}
        probabilities: list[Array] = []
        for o, out, y, loss, weight, from_logits in zip(
            plan.outputs, outs, ys, losses, weights, fused, strict=True
        ):
            if from_logits:
                value, grad, p = loss.from_logits(self.xp, out, y)
            else:
                (value, grad), p = loss(self.xp, out, y), out
            values.append(value)
            if weight != 1:  # NOTE: weight 1 multiplies nothing, so one output stays bit exact
                value, grad = value * weight, grad * self.dtype.type(weight)
            total = value if len(values) == 1 else total + value
            grads[o] = grad if o not in grads else grads[o] + grad
            probabilities.append(p)
        return total, values, grads, probabilities, plan, saved

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        """Network output for one batch, as a host array (a list of them, one per output,
        for a network with several outputs)."""
        batch = self._device_batch(x)
        with self.backend.compute_scope(self.macs * len(batch)):
            outs, _ = self._forward(self.plan, [batch], training, keep=False)
        if len(outs) > 1:
            return [self.backend.to_host(out) for out in outs]  # type: ignore[return-value]
        return self.backend.to_host(outs[0])

    # ---- observed runs ----
    def observe(self, x: Any, observer: Observer, training: bool = False) -> None:
        """Run a batch forward (host or device array), each step's value to observer.output.

        Runs the network as `__call__` does (its final activation included)
        until the observer asks to stop; the values stay on the device.
        """
        batch = self.backend.to_device(x, dtype=self.dtype)
        with self.backend.compute_scope(self.macs * len(batch)), contextlib.suppress(_Stop):
            self._forward(self.plan, [batch], training, keep=False, observer=observer)

    def observe_gradients(
        self,
        x: Array,
        y: Array | Sequence[Array],
        loss: Loss | Sequence[Loss],
        observer: Observer,
        loss_weights: Sequence[float] | None = None,
    ) -> None:
        """A training step without the update, every value to the observer, until it stops.

        x and y are device arrays, as a training step holds them (y: one per
        output, with `loss` one per output, for a network with several). Runs the
        plan that `loss` trains (logits out where the loss absorbs the final
        activation): each step's output, then the loss (the weighted total),
        then each step's gradients in backward order. Changes what a training
        forward changes (batchnorm's moving statistics, the device generator).
        """
        losses = [loss] if isinstance(loss, Loss) else list(loss)
        ys = [y] if isinstance(loss, Loss) else list(y)
        weights = [1.0] * len(losses) if loss_weights is None else list(loss_weights)
        with self.backend.compute_scope(3 * self.macs * len(x)), contextlib.suppress(_Stop):
            value, _, grads, _, plan, saved = self._losses_and_outputs(
                x, ys, losses, weights, training=True, keep=True, observer=observer
            )
            if observer.loss(value):
                return
            assert saved is not None
            self._backward(plan, saved, grads, observer)

    def _single_output(self) -> None:
        if len(self.plan.outputs) != 1:
            raise ModelError("training and evaluation support networks with one output")


def _path(key: str) -> str:
    return key.rsplit(":", 1)[0]


__all__ = ["Executor", "ModelError", "Observer", "fans", "initial_value"]
