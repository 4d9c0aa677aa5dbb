"""Model: a lowered network with weights on a backend, trainable like a Keras model.

    >>> model = cnndsl.compile("specs/digits.cnn").build(seed=0)     # doctest: +SKIP
    >>> history = model.fit(x, y, epochs=5, validation_split=0.1)     # doctest: +SKIP
    >>> model.evaluate(x_test, y_test)   # {'loss': 0.08, 'accuracy': 0.98}  # doctest: +SKIP

Input: an `ir.Graph` with shapes and weight specs (what `cnndsl.compile` gives).
This module holds the Keras-style API: the loss, optimizer and metrics that
`compile` sets (by default from the spec's train section, read once, into
`self.settings`: cnndsl.training.settings), one optimizer step,
evaluate, predict, weight files and the summary. Running the plan forward and
backward (buffers, gradients, freezing) is the executor's, in cnndsl.runtime.executor,
which `Model` extends; the engine and the API change for different reasons.

Around the model: `fit` and its epoch loop are defined once in cnndsl.training.fit
and bound here as a method; checkpoints are in cnndsl.training.checkpoint, weight
files in cnndsl.formats.weights, and the memory and non-finite guards in
cnndsl.training.guards (those modules name `Model` in type hints only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnndsl.formats import weights as weight_files
from cnndsl.ir import Graph
from cnndsl.runtime.backends import Backend
from cnndsl.runtime.executor import Executor, ModelError, fans, initial_value
from cnndsl.runtime.lower import output_activation, strip_output_activation
from cnndsl.training import guards
from cnndsl.training.fit import fit as fit_loop
from cnndsl.training.history import Callback, History
from cnndsl.training.losses import LOSSES, Loss, Metric, get_loss, get_metric
from cnndsl.training.optimizers import Optimizer
from cnndsl.training.settings import TrainSettings, checked

Array = Any


class Model(Executor):
    """An executable network: weights on a backend, forward/backward, fit/evaluate/predict."""

    def __init__(
        self,
        graph: Graph,
        backend: str | Backend = "numpy",
        seed: int | None = None,
        dtype: Any = "float32",
    ) -> None:
        # NOTE: the one place the spec's train section is read; seed=None takes its seed.
        self.settings = TrainSettings.from_section(graph.meta.get("train") or {})
        seed = self.settings.overridden(seed=seed).seed
        super().__init__(graph, backend, seed, dtype)
        self.rng = np.random.default_rng(seed)  # host: shuffling and augmentation
        self.stop_training = False
        # Bytes the memory guard may plan for (None: what the machine has free now).
        self.max_memory: int | None = None
        # Names of the output classes, saved with the weights (None: unnamed).
        self.class_names: list[str] | None = None
        self.loss: Loss = get_loss(self.settings.loss or self._default_loss())
        self.optimizer: Optimizer = self.settings.build_optimizer()
        metrics = self.settings.metrics
        if metrics is None:
            metrics = ("accuracy",) if "crossentropy" in self.loss.name else ()
        self.metric_names: list[str] = _known_metrics(metrics)
        # Training steps that moved each layer's moving statistics since they were
        # initialised (None: they came from a file); fit warns when too few for the momentum.
        with_statistics = {k.rsplit(":", 1)[0] for k, s in self.specs.items() if not s.trainable}
        self.moving_updates: dict[str, int | None] = {
            step.path: 0
            for step in self.plan.steps
            if step.path in with_statistics and hasattr(step.attrs, "momentum")
        }

    @property
    def batch_size(self) -> int:
        """The batch of fit, evaluate and predict when none is given: the spec's, else 32."""
        return self.settings.batch

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one sample's output (no batch axis)."""
        return tuple(self.plan.steps[self.plan.outputs[0]].shape or ())

    @property
    def epochs(self) -> int:
        """The epochs of fit when none are given: the spec's, else 1."""
        return self.settings.epochs

    def _default_loss(self) -> str:
        # The first loss (LOSSES' order) that absorbs the network's final
        # activation: softmax -> sparse categorical, sigmoid -> binary cross-entropy.
        act = output_activation(self.plan)
        fused = [name for name, loss in LOSSES.items() if act and loss.activation == act]
        return fused[0] if fused else "mean_squared_error"

    # ---- weights ----
    def get_weights(self) -> list[np.ndarray]:
        """Host copies of every weight, layer by layer in plan order (Keras layouts and order)."""
        return weight_files.get_weights(self)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set every weight from a list in `get_weights` order; shapes must match exactly."""
        weight_files.set_weights(self, weights)
        self.moving_updates = dict.fromkeys(self.moving_updates)

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Host copies of every weight by name, 'layer/path:weight' as in saved .npz files.

        E.g. `model.weights["stage2/residual_unit_1/conv_1:kernel"]`; a copy, so
        changing it changes nothing (use set_weights, or load, to change weights).
        """
        return dict(zip(self.specs, self.get_weights(), strict=True))

    def named_weights(self) -> dict[str, np.ndarray]:
        """Host copies of every weight by name ('layer/path:weight'), as `weights`."""
        return self.weights

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every weight to an .npz ('layer/path:weight' keys), atomically."""
        weight_files.save_weights(self, path)

    def export_onnx(
        self, path: str | os.PathLike[str], opset: int = 17, layout: str = "nhwc"
    ) -> None:
        """Write the network and its weights as a checked ONNX file (docs/onnx.md)."""
        from cnndsl.formats.onnx_export import export_onnx

        export_onnx(self, path, opset=opset, layout=layout)

    def load(
        self,
        path: str | os.PathLike[str],
        strict: bool | None = None,
        mapping: str | os.PathLike[str] | dict[str, str] | None = None,
    ) -> weight_files.LoadReport:
        """Load our .npz, or a Keras (.h5, .keras) or PyTorch (.safetensors, .pt) file; report.

        Our .npz: what fits is copied and the rest reported (strict=True: any
        mismatch raises ModelError and nothing is changed). Other frameworks'
        files are matched to this network by the graph (`mapping`: a JSON file
        or dict, our weight key or layer path -> the file's name, for what
        matching cannot tell); any misfit raises unless strict=False.
        """
        report = weight_files.load_weights(self, path, strict, mapping)
        self.moving_updates = dict.fromkeys(self.moving_updates)  # from the file, not initial
        return report

    # ---- one batch ----
    def gradients(
        self, x: Any, y: Any, loss: str | Loss | None = None, training: bool = True
    ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, host gradients of every updatable weight) on one batch; no update.

        Nothing changes: training=True (dropout on, batchnorm on the batch's
        statistics) leaves batchnorm's moving statistics as they were; only the
        device generator moves on (the dropout masks drawn).
        """
        lf = get_loss(loss) if loss is not None else self.loss
        xb = self._device_batch(x)
        # NOTE: a training forward moves the moving statistics; they are put back after.
        kept = {k: self.params[k].copy() for k, s in self.specs.items() if not s.trainable}
        try:
            with self.backend.compute_scope(3 * self.macs * len(xb)):
                value, grad, _, plan, saved = self._loss_and_output(
                    xb, self._labels(y), lf, training, keep=True
                )
                assert saved is not None
                grads = self._backward(plan, saved, {plan.outputs[0]: grad})
        finally:
            for key, value_before in kept.items():
                self.params[key][...] = value_before
        return float(value), {k: self.backend.to_host(g) for k, g in grads.items()}

    def train_step(self, x: Any, y: Any) -> tuple[float, Array]:
        """One optimizer step on a batch: (loss, network output); uses the compiled settings.

        A NaN or infinite loss or gradient raises NonFiniteLoss and changes nothing.
        """
        xb, yb = self._device_batch(x), self._labels(y)
        before = guards.snapshot(self)  # generator state, moving statistics: to undo a NaN step
        with self.backend.compute_scope(3 * self.macs * len(xb)):
            value, grad, p, plan, saved = self._loss_and_output(xb, yb, self.loss, True, keep=True)
            assert saved is not None
            grads = self._backward(plan, saved, {plan.outputs[0]: grad})
        if not guards.all_finite(self.xp, value, grads):
            raise guards.non_finite_step(self, xb, yb, float(value), before)
        self.optimizer.step(self.xp, self.params, grads, self.backend.workers)
        for path, count in self.moving_updates.items():
            if count is not None and path not in self.frozen:  # frozen: inference mode
                self.moving_updates[path] = count + 1
        return float(value), p

    def _check_memory(self, batch: int, training: bool) -> None:
        """Refuse (OutOfMemoryPlan) a batch whose memory plan exceeds the memory available."""
        guards.check_memory(self, batch, training)

    # ---- Keras-style API ----
    def compile(
        self,
        loss: str | Loss | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | None = None,
        metrics: Sequence[str] | None = None,
        lr: float | None = None,
    ) -> Model:
        """Set the loss, optimizer, metrics and learning rate that fit/evaluate use.

        What is not given stays (at first: the spec's train section). An optimizer
        given by name takes `lr`, else the spec's `lr`, else its own default; `lr`
        alone changes the current optimizer's learning rate and keeps its state.
        """
        if loss is not None:
            self.loss = get_loss(loss)
        if optimizer is not None:
            self.optimizer = self.settings.build_optimizer(optimizer, lr)
        elif lr is not None:
            self.optimizer.lr = checked("lr", lr)
        if metrics is not None:
            self.metric_names = _known_metrics(metrics)
        return self

    # NOTE: one definition of fit's parameters and docs, there; bound here as a method.
    fit = fit_loop

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
        lf.check_labels(y_all, self.output_shape)
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

    def predict(self, x: Any, batch_size: int | None = None, logits: bool = False) -> np.ndarray:
        """Network outputs for every sample, in inference mode, as a host array.

        logits=True: the output before the network's final activation (softmax,
        sigmoid...), the last layer's pre-activation values; the same as the
        outputs for a network that ends without one.
        """
        batch_size = batch_size or self.batch_size
        self._check_memory(min(batch_size, len(x)), training=False)
        plan = strip_output_activation(self.plan) if logits else self.plan
        with self.backend.compute_scope(self.macs * batch_size):
            outs = [self._run(plan, x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)]
        if not outs:
            step = self.plan.steps[self.plan.outputs[0]]
            return np.zeros((0, *(step.shape or ())), self.dtype)
        return np.concatenate(outs)

    def _run(self, plan: Any, x: Any) -> np.ndarray:
        """`plan`'s output for one batch in inference mode, as a host array."""
        (out,), _ = self._forward(plan, [self._device_batch(x)], False, keep=False)
        return self.backend.to_host(out)

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


def _known_metrics(names: Sequence[str]) -> list[str]:
    """The metric names as a list; LossError for one that is unknown (at compile, not in fit)."""
    if isinstance(names, str):
        names = [names]
    for name in names:
        get_metric(name)
    return list(names)


__all__ = ["Callback", "History", "Model", "ModelError", "fans", "initial_value"]
