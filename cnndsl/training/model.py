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

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from cnndsl.formats import weights as weight_files
from cnndsl.ir import Graph
from cnndsl.ops.registry import Context
from cnndsl.runtime.backends import Backend
from cnndsl.runtime.executor import Executor, ModelError, Observer, fans, initial_value
from cnndsl.runtime.lower import Step, output_activation, strip_output_activation
from cnndsl.training import guards
from cnndsl.training.distributed import Ranks, ShardedGenerator
from cnndsl.training.fit import fit as fit_loop
from cnndsl.training.history import Callback, History
from cnndsl.training.losses import LOSSES, Loss, Metric, get_loss, get_metric
from cnndsl.training.multi_output import (
    label_list,
    metrics_per_output,
    output_names_of,
    spread,
    weights_per_output,
)
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
        # The data-parallel job fit trains in (cnndsl.training.distributed); None: one process.
        self.ranks: Ranks | None = None
        self._shard: tuple[Any, Any] | None = None  # a training step's allreduce and generator
        # Names of the output classes, saved with the weights (None: unnamed).
        self.class_names: list[str] | None = None
        self.output_names: list[str] = output_names_of(
            [self.plan.steps[o].path for o in self.plan.outputs]
        )
        self.losses: list[Loss] = self._per_output_losses(self.settings.loss)
        self.loss_weights: list[float] = weights_per_output(
            self.output_names, self.settings.loss_weights
        )
        self.optimizer: Optimizer = self.settings.build_optimizer()
        self.output_metrics: list[list[str]] = metrics_per_output(
            self.output_names, self.losses, self.settings.metrics
        )
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
        """The shape of one sample's output (no batch axis); the first output's, if several."""
        return tuple(self.plan.steps[self.plan.outputs[0]].shape or ())

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        """The shape of one sample of each output (no batch axis), in return order."""
        return [tuple(self.plan.steps[o].shape or ()) for o in self.plan.outputs]

    @property
    def loss(self) -> Loss:
        """The loss of the network's (first) output; `losses` holds one per output."""
        return self.losses[0]

    @property
    def metric_names(self) -> list[str]:
        """The metrics reported, as History names them: 'accuracy', or with several
        outputs '<output>_accuracy' for each output that has it."""
        return [key for key, _, _ in self._metric_keys()]

    def _metric_keys(self) -> list[tuple[str, int, str]]:
        """(History key, output index, metric name) for every metric of every output."""
        if len(self.output_names) == 1:
            return [(name, 0, name) for name in self.output_metrics[0]]
        return [
            (f"{self.output_names[i]}_{name}", i, name)
            for i, names in enumerate(self.output_metrics)
            for name in names
        ]

    def _loss_keys(self) -> list[str]:
        """History keys of each output's own loss: none for one output, else '<output>_loss'."""
        return [f"{name}_loss" for name in self.output_names] if len(self.output_names) > 1 else []

    @property
    def epochs(self) -> int:
        """The epochs of fit when none are given: the spec's, else 1."""
        return self.settings.epochs

    def _default_loss(self, output: int | None = None) -> str:
        # The first loss (LOSSES' order) that absorbs the output's final
        # activation: softmax -> sparse categorical, sigmoid -> binary cross-entropy.
        act = output_activation(self.plan, output)
        fused = [name for name, loss in LOSSES.items() if act and loss.activation == act]
        return fused[0] if fused else "mean_squared_error"

    # ---- one setting per output (cnndsl.training.multi_output) ----
    def _per_output_losses(self, loss: Any) -> list[Loss]:
        """One Loss per output from a name/Loss (every output), a list or a dict; None: defaults."""
        if loss is None or isinstance(loss, (str, Loss)):
            chosen: list[Any] = [loss] * len(self.output_names)
        else:
            chosen = spread(self.output_names, loss, "loss")
        return [
            get_loss(name if name is not None else self._default_loss(o))
            for name, o in zip(chosen, self.plan.outputs, strict=True)
        ]

    def _checked_labels(
        self, y: Any, n: int, losses: Sequence[Loss] | None = None
    ) -> list[np.ndarray]:
        """`label_list`, each checked against its output and loss (default: the compiled)."""
        ys = label_list(self.output_names, y)
        losses = self.losses if losses is None else losses
        for name, y_i, loss, shape in zip(
            self.output_names, ys, losses, self.output_shapes, strict=True
        ):
            if len(y_i) != n:
                label = "y" if len(ys) == 1 else f"the labels of output {name}"
                raise ModelError(f"x has {n} samples but {label} has {len(y_i)}")
            loss.check_labels(y_i, shape)
        return ys

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
        self, x: Any, y: Any, loss: Any = None, training: bool = True
    ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, host gradients of every updatable weight) on one batch; no update.

        With several outputs, y holds each output's labels (a list, or a dict by
        output name), `loss` may give one per output, and the loss is the total
        weighted by `loss_weights`. Nothing changes: training=True (dropout on,
        batchnorm on the batch's statistics) leaves batchnorm's moving statistics
        as they were; only the device generator moves on (the dropout masks drawn).
        """
        losses = self.losses if loss is None else self._per_output_losses(loss)
        xb = self._device_batch(x)
        ys = [self._labels(y_i) for y_i in label_list(self.output_names, y)]
        # NOTE: a training forward moves the moving statistics; they are put back after.
        kept = {k: self.params[k].copy() for k, s in self.specs.items() if not s.trainable}
        try:
            with self.backend.compute_scope(3 * self.macs * len(xb)):
                value, _, out_grads, _, plan, saved = self._losses_and_outputs(
                    xb, ys, losses, self.loss_weights, training, keep=True
                )
                assert saved is not None
                grads = self._backward(plan, saved, out_grads)
        finally:
            for key, value_before in kept.items():
                self.params[key][...] = value_before
        return float(value), {k: self.backend.to_host(g) for k, g in grads.items()}

    def train_step(self, x: Any, y: Any) -> tuple[float, Array]:
        """One optimizer step on a batch: (loss, network output); uses the compiled settings.

        With several outputs: y as `fit` takes it, the loss is the weighted total
        and the output a list, one per output. A NaN or infinite loss or gradient
        raises NonFiniteLoss and changes nothing.
        """
        value, _, ps, _ = self._train_step(x, label_list(self.output_names, y))
        return value, ps[0] if len(ps) == 1 else ps

    def _train_step(
        self,
        x: Any,
        y: Sequence[Any],
        global_batch: int | None = None,
        metrics: Sequence[tuple[int, Metric]] = (),
    ) -> tuple[float, list[float], list[Array], list[float]]:
        """One optimizer step: (weighted total loss, each output's loss, each output, the
        sum of each (output index, metric) of `metrics` over the batch, then each one's count).

        Under data-parallel training (self.ranks), x and y are this rank's shard of a
        global batch of `global_batch` samples, and the step is the global batch's.
        The numbers come to the host in one transfer (guards.step_figures).
        """
        xb, ys = self._device_batch(x), [self._labels(y_i) for y_i in y]
        before = guards.snapshot(self)  # generator state, moving statistics: to undo a NaN step
        ranks = self.ranks
        with self.backend.compute_scope(3 * self.macs * len(xb)), self._sharded(global_batch):
            value, values, out_grads, ps, plan, saved = self._losses_and_outputs(
                xb, ys, self.losses, self.loss_weights, True, keep=True
            )
            assert saved is not None
            if ranks is not None:
                # NOTE: each rank's loss is its shard's mean; weighted by the shard's share
                # of the global batch, the sum over ranks is the global batch's mean.
                share = len(xb) / (global_batch or len(xb))
                out_grads = {o: g * g.dtype.type(share) for o, g in out_grads.items()}
                losses = guards.host_scalars(self.backend, [value, *values])
                # NOTE: each bucket of gradients is summed over ranks as soon as backward fills it.
                buckets = ranks.buckets(self, plan, [v * share for v in losses])
            grads = self._backward(plan, saved, out_grads, buckets if ranks is not None else None)
        if ranks is not None:
            value, *values = buckets.finish(grads)
        scored = [fn(self.xp, ps[i], ys[i]) for i, fn in metrics]
        figures = guards.step_figures(self.backend, value, values, grads, scored)
        if not figures.finite:
            labels = ys[0] if len(ys) == 1 else ys
            raise guards.non_finite_step(self, xb, labels, figures.loss, before)
        fused = self.backend.overrides.get("optimizer_update")  # one launch per weight (GPU)
        self.optimizer.step(self.xp, self.params, grads, self.backend.workers, fused)
        for path, count in self.moving_updates.items():
            if count is not None and path not in self.frozen:  # frozen: inference mode
                self.moving_updates[path] = count + 1
        return figures.loss, figures.losses, ps, figures.metrics

    @contextmanager
    def _sharded(self, global_batch: int | None) -> Iterator[None]:
        """Within: training kernels see the ranks' allreduce and the global batch's draws."""
        if self.ranks is None:
            yield
            return
        ranks, xp = self.ranks, self.xp
        total = global_batch or 0
        self._shard = (
            lambda a: ranks.allreduce(xp, a),
            ShardedGenerator(self.backend.rng, ranks.shard(total), total),
        )
        try:
            yield
        finally:
            self._shard = None

    def _context(self, step: Step, training: bool) -> Context:
        ctx = super()._context(step, training)
        if self._shard is None or not ctx.training:
            return ctx
        allreduce, rng = self._shard
        return dataclasses.replace(ctx, allreduce=allreduce, rng=rng)

    def observe_gradients(
        self,
        x: Array,
        y: Array | Sequence[Array],
        loss: Loss | Sequence[Loss],
        observer: Observer,
        loss_weights: Sequence[float] | None = None,
    ) -> None:
        """The executor's observed training step; with several outputs and one loss given
        (the non-finite guard's rerun), every output's loss, weighted, as training has it."""
        if isinstance(loss, Loss) and len(self.losses) > 1:
            loss, loss_weights = self.losses, self.loss_weights
        super().observe_gradients(x, y, loss, observer, loss_weights)

    def _check_memory(self, batch: int, training: bool) -> None:
        """Refuse (OutOfMemoryPlan) a batch whose memory plan exceeds the memory available."""
        guards.check_memory(self, batch, training)

    # ---- Keras-style API ----
    def compile(
        self,
        loss: str | Loss | Sequence[str | Loss] | Mapping[str, str | Loss] | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | None = None,
        metrics: Sequence[str] | Mapping[str, Sequence[str] | str] | None = None,
        lr: float | None = None,
        loss_weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> Model:
        """Set the loss, optimizer, metrics and learning rate that fit/evaluate use.

        What is not given stays (at first: the spec's train section). An optimizer
        given by name takes `lr`, else the spec's `lr`, else its own default; `lr`
        alone changes the current optimizer's learning rate and keeps its state.
        With several outputs, as Keras: `loss` is one for all, a list in return
        order or a dict by output name; `loss_weights` a list or dict (the total
        loss is their weighted sum); `metrics` a list for every output or a dict.
        """
        if loss is not None:
            self.losses = self._per_output_losses(loss)
        if loss_weights is not None:
            self.loss_weights = weights_per_output(self.output_names, loss_weights)
        if optimizer is not None:
            self.optimizer = self.settings.build_optimizer(optimizer, lr)
        elif lr is not None:
            self.optimizer.lr = checked("lr", lr)
        if metrics is not None:
            self.output_metrics = metrics_per_output(self.output_names, self.losses, metrics)
        return self

    # NOTE: one definition of fit's parameters and docs, there; bound here as a method.
    fit = fit_loop

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: int | None = None,
        loss: Any = None,
        metrics: Sequence[str] | Mapping[str, Sequence[str] | str] | None = None,
    ) -> dict[str, float]:
        """Loss and metrics over (x, y) in inference mode: {'loss': ..., 'accuracy': ...}.

        With several outputs, y as `fit` takes it; the result holds the weighted
        total 'loss', each output's '<output>_loss' and '<output>_<metric>'.
        """
        losses = self.losses if loss is None else self._per_output_losses(loss)
        keys = self._metric_keys()
        if metrics is not None:
            kept = self.output_metrics
            self.output_metrics = metrics_per_output(self.output_names, self.losses, metrics)
            keys, self.output_metrics = self._metric_keys(), kept
        metric_fns = [(key, i, get_metric(name)) for key, i, name in keys]
        batch_size = batch_size or self.batch_size
        n = len(x)
        ys = self._checked_labels(y, n, losses)
        self._check_memory(min(batch_size, n), training=False)
        sums = {"loss": 0.0, **dict.fromkeys(self._loss_keys(), 0.0)}
        sums.update({key: 0.0 for key, _, _ in metric_fns})
        counts = dict.fromkeys(sums, 0)
        if self.ranks is not None:  # each rank evaluates its part; the sums are added
            part = self.ranks.shard(n)
            x, ys = x[part], [y_i[part] for y_i in ys]
        with self.backend.compute_scope(self.macs * batch_size):
            self._evaluate(x, ys, losses, metric_fns, batch_size, sums, counts)
        if self.ranks is not None:
            names = list(sums)
            added = self.ranks.sum_floats([*sums.values(), *counts.values()])
            sums = dict(zip(names, added[: len(names)], strict=True))
            counts = {k: round(c) for k, c in zip(names, added[len(names) :], strict=True)}
        return {k: sums[k] / max(counts[k], 1) for k in sums}

    def _evaluate(
        self,
        x: Any,
        ys: list[np.ndarray],
        losses: list[Loss],
        metric_fns: list[tuple[str, int, Metric]],
        batch_size: int,
        sums: dict[str, float],
        counts: dict[str, int],
    ) -> None:
        loss_keys = self._loss_keys()
        for lo in range(0, len(x), batch_size):
            xb = self._device_batch(x[lo : lo + batch_size])
            yb = [self._labels(y_i[lo : lo + batch_size]) for y_i in ys]
            value, values, _, ps, _, _ = self._losses_and_outputs(
                xb, yb, losses, self.loss_weights, training=False, keep=False
            )
            n = xb.shape[0]
            scored = [fn(self.xp, ps[i], yb[i]) for _, i, fn in metric_fns]
            # NOTE: one device-to-host transfer for the batch's losses and metric sums
            host = guards.host_scalars(self.backend, [value, *values, *(s for s, _ in scored)])
            for key, v in [("loss", host[0]), *zip(loss_keys, host[1:], strict=False)]:
                sums[key] += v * n
                counts[key] += n
            found = host[1 + len(values) :]
            for (key, _, _), v, (_, c) in zip(metric_fns, found, scored, strict=True):
                sums[key] += v
                counts[key] += c

    def predict(
        self, x: Any, batch_size: int | None = None, logits: bool = False
    ) -> np.ndarray | list[np.ndarray]:
        """Network outputs for every sample, in inference mode, as a host array.

        A network with several outputs gives a list, one array per output, as
        Keras. logits=True: the output before the network's final activation
        (softmax, sigmoid...), the last layer's pre-activation values; the same
        as the outputs for a network that ends without one.
        """
        batch_size = batch_size or self.batch_size
        self._check_memory(min(batch_size, len(x)), training=False)
        plan = self.plan
        if logits:
            for o in self.plan.outputs:
                if not self.plan.consumers[o]:  # NOTE: an output another step reads keeps it
                    plan = strip_output_activation(plan, o)
        with self.backend.compute_scope(self.macs * batch_size):
            outs = [self._run(plan, x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)]
        if not outs:
            empty = [np.zeros((0, *shape), self.dtype) for shape in self.output_shapes]
        else:
            empty = [np.concatenate(parts) for parts in zip(*outs, strict=True)]
        return empty[0] if len(empty) == 1 else empty

    def _run(self, plan: Any, x: Any) -> list[np.ndarray]:
        """`plan`'s outputs for one batch in inference mode, as host arrays."""
        outs, _ = self._forward(plan, [self._device_batch(x)], False, keep=False)
        return [self.backend.to_host(out) for out in outs]

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
        if len(self.output_names) > 1:  # which loss, at which weight, trains each output
            lines += ["", "Outputs (loss × weight):"]
            for name, lf, weight in zip(
                self.output_names, self.losses, self.loss_weights, strict=True
            ):
                lines.append(f"  {name}: {lf.name}" + (f" × {weight:g}" if weight != 1 else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = self.graph.meta.get("name", "network")
        return (
            f"<Model {name}: {len(self.plan)} steps, {self.count_params()['total']:,}"
            f" params, backend {self.backend.name}>"
        )


__all__ = ["Callback", "History", "Model", "ModelError", "fans", "initial_value"]
