"""Model: a lowered network with weights on a backend, trainable like a Keras model.

    >>> model = cnndsl.compile("specs/digits.cnn").build(seed=0)     # doctest: +SKIP
    >>> history = model.fit(x, y, epochs=5, validation_split=0.1)     # doctest: +SKIP
    >>> model.evaluate(x_test, y_test)   # {'loss': 0.08, 'accuracy': 0.98}  # doctest: +SKIP

Input: an `ir.Graph` with shapes and weight specs (what `cnndsl.compile` gives).
The executor is one loop over `Plan.steps` calling `OPS[step.op].forward`;
backward walks the steps in reverse, summing the gradients of values read by
several steps. Weights live in `params` ('layer/path:weight' -> device array),
allocated exactly from each layer's WeightSpecs with Keras' initialisers.
Weights update in place, so every view of them (the per-layer dicts that the
kernels receive, batchnorm's moving statistics) stays current.

Around the executor: the epoch loop behind `fit` is in cnndsl.training,
checkpoints in cnndsl.checkpoint, weight files in cnndsl.weights, and the
memory and non-finite guards in cnndsl.guards (each imports this module, so
the methods here import them when called).
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.backends import Backend, get_backend
from cnndsl.ir import Graph
from cnndsl.losses import Loss, Metric, get_loss, get_metric
from cnndsl.lower import (
    Plan,
    Step,
    lower,
    output_activation,
    strip_output_activation,
    weight_key,
)
from cnndsl.ops import OPS
from cnndsl.ops.registry import Context, WeightSpec
from cnndsl.optimizers import Optimizer, get_optimizer

if TYPE_CHECKING:
    from cnndsl.weights import LoadReport

Array = Any

DEFAULT_BATCH = 32
DEFAULT_OPTIMIZER = "adam"  # when the spec has no train section and none is given


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


# ---- training bookkeeping ----


class History:
    """What fit returns: `history[name]` is one value per epoch, as in Keras."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict[str, Any] = {}

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Record one epoch's logs."""
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: params, epochs and the per-epoch lists."""
        return {"params": self.params, "epoch": self.epoch, "history": self.history}

    def __repr__(self) -> str:
        return f"History({self.history})"


class Callback:
    """Keras-style hooks; override the ones you need. `logs` hold running means."""

    model: Model

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Before the first epoch; logs hold the run's settings (epochs, batch_size, ...)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Before each epoch (counted from 0)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """After each batch: running loss and metrics, samples, total, seconds."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """After each epoch: the epoch's loss, metrics, val_* and seconds."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """After the last epoch; logs are History.history."""


class ModelError(Exception):
    """A misuse of the model with a message for the user (bad data shape, no match, ...)."""


# ---- the model ----


class Model:
    """An executable network: weights on a backend, forward/backward, fit/evaluate/predict."""

    def __init__(
        self,
        graph: Graph,
        backend: str | Backend = "numpy",
        seed: int = 0,
        dtype: Any = "float32",
    ) -> None:
        self.graph = graph
        self.plan: Plan = lower(graph)
        self.backend = get_backend(backend, seed=seed)
        if isinstance(backend, Backend):
            backend.seed(seed)  # a backend object passed in is reseeded too: determinism
        self.xp = self.backend.xp
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self.macs = sum(layer.macs for layer in graph)  # per sample, forward
        self.rng = np.random.default_rng(seed)  # host: shuffling and augmentation
        self.specs: dict[str, WeightSpec] = {}
        self.params: dict[str, Array] = {}
        # Per step, the dict of weights its kernel receives (the same arrays as params).
        self._weights: list[dict[str, Array]] = []
        self._caches: list[dict[str, Any]] = [{} for _ in self.plan.steps]
        self.frozen: set[str] = {layer.path for layer in graph if not layer.trainable}
        self._init_weights(seed)
        self.stop_training = False
        # Bytes the memory guard may plan for (None: what the machine has free now).
        self.max_memory: int | None = None
        self._train_plans: dict[str, tuple[Plan, bool]] = {}
        self._refresh()
        train = dict(graph.meta.get("train", {}) or {})
        self.loss: Loss = get_loss(train.get("loss", self._default_loss()))
        self.optimizer: Optimizer = get_optimizer(train.get("optimizer", DEFAULT_OPTIMIZER))
        self.metric_names: list[str] = list(
            train.get("metrics", ["accuracy"] if "crossentropy" in self.loss.name else [])
        )
        self.batch_size = int(train.get("batch", train.get("batch_size")) or DEFAULT_BATCH)
        self.epochs = int(train.get("epochs") or 1)

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

    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every weight, layer by layer in plan order (Keras layouts and order)."""
        from cnndsl.weights import get_weights

        return get_weights(self)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set every weight from a list in `get_weights` order; shapes must match exactly."""
        from cnndsl.weights import set_weights

        set_weights(self, weights)

    def layer_weights(self, path: str) -> dict[str, np.ndarray]:
        """Host copies of one layer's weights by name."""
        i = self.plan.index(path)
        return {n: self.backend.to_host(a).copy() for n, a in self._weights[i].items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every weight to an .npz ('layer/path:weight' keys), atomically."""
        from cnndsl.weights import save_weights

        save_weights(self, path)

    def load(self, path: str | os.PathLike[str], strict: bool = False) -> LoadReport:
        """Copy every weight whose key and shape match from an .npz; report the rest.

        With strict=True any mismatch raises ModelError and nothing is changed.
        """
        from cnndsl.weights import load_weights

        return load_weights(self, path, strict)

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

    # ---- executor ----
    def _context(self, step: Step, training: bool) -> Context:
        if training and step.op == "batchnorm" and step.path in self.frozen:
            training = False
        return Context(
            training=training,
            rng=self.backend.rng,
            needs_input_grad=tuple(self._requires[j] for j in step.inputs),
            overrides=self.backend.overrides,
            cache=self._caches[step.output],
            workers=self.backend.workers,
        )

    def _forward(
        self, plan: Plan, xs: Sequence[Array], training: bool, keep: bool
    ) -> tuple[list[Array], list[Any] | None]:
        """Run the plan; with keep=True also return what each step saved for backward."""
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
            for v in plan.frees[i]:
                values[v] = None
        return [values[o] for o in plan.outputs], saved

    def _backward(
        self, plan: Plan, saved: list[Any], output_grads: Mapping[int, Array]
    ) -> dict[str, Array]:
        """Walk the steps in reverse; returns gradients of the updatable weights."""
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
        key = loss.name
        if key not in self._train_plans:
            act = output_activation(self.plan)
            step = self.plan.steps[self.plan.outputs[0]]
            last_axis = step.op != "softmax" or step.attrs.get("axis", -1) in (
                -1,
                len(step.shape or ()) - 1,
            )
            if act is not None and act == loss.activation and last_axis:
                self._train_plans[key] = (strip_output_activation(self.plan), True)
            else:
                self._train_plans[key] = (self.plan, False)
        return self._train_plans[key]

    def _default_loss(self) -> str:
        act = output_activation(self.plan)
        if act == "sigmoid":
            return "binary_crossentropy"
        if act == "softmax":
            return "sparse_categorical_crossentropy"
        return "mean_squared_error"

    # ---- one batch ----
    def _device_batch(self, x: Any) -> Array:
        return self.backend.to_device(np.asarray(x), dtype=self.dtype)

    def _labels(self, y: Any) -> Array:
        y = np.asarray(y)
        if y.dtype.kind == "f":
            return self.backend.to_device(y, dtype=self.dtype)
        return self.backend.to_device(y.astype(np.int64))

    def _loss_and_output(
        self, x: Array, y: Array, loss: Loss, training: bool, keep: bool
    ) -> tuple[Array, Array, Array, Plan, list[Any] | None]:
        """(loss, d loss/d plan output, network output probabilities, plan, saved)."""
        plan, fused = self._train_plan(loss)
        self._single_output()
        (out,), saved = self._forward(plan, [x], training, keep)
        if fused:
            value, grad, p = loss.from_logits(self.xp, out, y)
        else:
            value, grad = loss(self.xp, out, y)
            p = out
        return value, grad, p, plan, saved

    def gradients(
        self, x: Any, y: Any, loss: str | Loss | None = None, training: bool = True
    ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, host gradients of every updatable weight) on one batch; no update."""
        lf = get_loss(loss) if loss is not None else self.loss
        value, grad, _, plan, saved = self._loss_and_output(
            self._device_batch(x), self._labels(y), lf, training, keep=True
        )
        assert saved is not None
        grads = self._backward(plan, saved, {plan.outputs[0]: grad})
        return float(value), {k: self.backend.to_host(g) for k, g in grads.items()}

    def train_step(self, x: Any, y: Any) -> tuple[float, Array]:
        """One optimizer step on a batch: (loss, network output); uses the compiled settings.

        A NaN or infinite loss or gradient raises NonFiniteLoss and changes nothing.
        """
        from cnndsl import guards

        xb, yb = self._device_batch(x), self._labels(y)
        before = guards.snapshot(self)  # generator state, moving statistics: to undo a NaN step
        value, grad, p, plan, saved = self._loss_and_output(xb, yb, self.loss, True, keep=True)
        assert saved is not None
        grads = self._backward(plan, saved, {plan.outputs[0]: grad})
        if not guards.all_finite(self.xp, value, grads):
            raise guards.non_finite_step(self, xb, yb, float(value), before)
        self.optimizer.step(self.xp, self.params, grads)
        return float(value), p

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        """Network output for one batch, as a host array."""
        (out,), _ = self._forward(self.plan, [self._device_batch(x)], training, keep=False)
        return self.backend.to_host(out)

    def _single_output(self) -> None:
        if len(self.plan.outputs) != 1:
            raise ModelError("training and evaluation support networks with one output")

    def _check_memory(self, batch: int, training: bool) -> None:
        """Refuse (OutOfMemoryPlan) a batch whose memory plan exceeds the memory available."""
        from cnndsl.guards import check_memory

        check_memory(self, batch, training)

    # ---- Keras-style API ----
    def compile(
        self,
        loss: str | Loss | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | None = None,
        metrics: Sequence[str] | None = None,
    ) -> Model:
        """Set the loss, optimizer and metrics that fit/evaluate use (defaults: the spec's)."""
        if loss is not None:
            self.loss = get_loss(loss)
        if optimizer is not None:
            self.optimizer = get_optimizer(optimizer)
        if metrics is not None:
            self.metric_names = list(metrics)
        return self

    def fit(
        self,
        x: Any,
        y: Any,
        epochs: int | None = None,
        batch_size: int | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        callbacks: Iterable[Callback] = (),
        loss: str | Loss | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | None = None,
        metrics: Sequence[str] | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        initial_epoch: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        keep: int = 3,
        resume: bool = False,
    ) -> History:
        """Train for `epochs`; returns History with loss, metrics and val_* per epoch.

        Like Keras, validation_split takes the last fraction of (x, y) before
        shuffling. `augment(batch, rng)` transforms each training batch on the host.
        With checkpoint_dir, the run is saved there every `checkpoint_every` steps
        and at each epoch end (the newest `keep` kept); resume=True continues from
        the newest good one, ending with the same weights as an uninterrupted run.
        Ctrl-C stops between two steps (saving a checkpoint) with TrainingInterrupted;
        a NaN or infinite loss raises NonFiniteLoss; a batch that will not fit in
        memory (Model.max_memory, else what is free) raises OutOfMemoryPlan.
        """
        from cnndsl.training import fit

        return fit(
            self,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            validation_split=validation_split,
            validation_data=validation_data,
            shuffle=shuffle,
            callbacks=callbacks,
            loss=loss,
            optimizer=optimizer,
            metrics=metrics,
            augment=augment,
            initial_epoch=initial_epoch,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep=keep,
            resume=resume,
        )

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: int | None = None,
        loss: str | Loss | None = None,
        metrics: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Loss and metrics over (x, y) in inference mode: {'loss': ..., 'accuracy': ...}."""
        lf = get_loss(loss) if loss is not None else self.loss
        names = self.metric_names if metrics is None else list(metrics)
        metric_fns = [(name, get_metric(name)) for name in names]
        batch_size = batch_size or self.batch_size
        n = len(x)
        if len(y) != n:
            raise ModelError(f"x has {n} samples but y has {len(y)}")
        self._check_memory(min(batch_size, n), training=False)
        y_all = np.asarray(y)
        sums = {"loss": 0.0, **{name: 0.0 for name in names}}
        counts = dict.fromkeys(sums, 0)
        with self.backend.compute_scope(self.macs * batch_size):
            self._evaluate(x, y_all, lf, metric_fns, batch_size, sums, counts)
        return {k: sums[k] / max(counts[k], 1) for k in sums}

    def _evaluate(
        self,
        x: Any,
        y_all: np.ndarray,
        lf: Loss,
        metric_fns: list[tuple[str, Metric]],
        batch_size: int,
        sums: dict[str, float],
        counts: dict[str, int],
    ) -> None:
        for lo in range(0, len(x), batch_size):
            xb = self._device_batch(x[lo : lo + batch_size])
            yb = self._labels(y_all[lo : lo + batch_size])
            value, _, p, _, _ = self._loss_and_output(xb, yb, lf, training=False, keep=False)
            sums["loss"] += float(value) * xb.shape[0]
            counts["loss"] += xb.shape[0]
            for name, fn in metric_fns:
                s, c = fn(self.xp, p, yb)
                sums[name] += float(s)
                counts[name] += c

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """Network outputs for every sample, in inference mode, as a host array."""
        batch_size = batch_size or self.batch_size
        self._check_memory(min(batch_size, len(x)), training=False)
        with self.backend.compute_scope(self.macs * batch_size):
            outs = [self(x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)]
        if not outs:
            step = self.plan.steps[self.plan.outputs[0]]
            return np.zeros((0, *(step.shape or ())), self.dtype)
        return np.concatenate(outs)

    def summary(self) -> str:
        """A Keras-like table: layer path, op, output shape, parameters; and the totals."""
        rows = [("Layer", "Op", "Output shape", "Params")]
        for step in self.plan.steps:
            layer = self.graph[step.path]
            flag = " (frozen)" if step.path in self.frozen and layer.params else ""
            rows.append(
                (step.path + flag, layer.label, str(list(step.shape or ())), f"{layer.params:,}")
            )
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        counts = self.count_params()
        lines += [
            "",
            f"Total params: {counts['total']:,}",
            f"Trainable params: {counts['trainable']:,}",
            f"Non-trainable params: {counts['non_trainable']:,}",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = self.graph.meta.get("name", "network")
        return (
            f"<Model {name}: {len(self.plan)} steps, {self.count_params()['total']:,}"
            f" params, backend {self.backend.name}>"
        )


def _path(key: str) -> str:
    return key.rsplit(":", 1)[0]


__all__ = ["Callback", "History", "Model", "ModelError", "fans", "initial_value"]
