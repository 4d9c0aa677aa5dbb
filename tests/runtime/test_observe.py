"""The executor's observer hook: each step's value, the loss and the gradients, in order.

The values an Observer sees must be what a plain layer-by-layer forward computes
(direct loops in float64 here), in plan order, taken before any later in-place
step overwrites them; observing must not change a bit of what the run computes;
and a hook that returns True stops the run there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.executor import Observer
from cnndsl.runtime.lower import Step, weight_key

# c1 -> bn -> r1: lowering moves r1 into batchnorm; relu(a + b): into the add;
# c3 -> r6: relu6 runs in place over c3's output (conv hosts only relu).
SPEC = """
network watched(classes=3) {
    input image: [6, 6, 2]
    a = image -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu(name="r1")
    b = a -> conv(4, 3, padding=same, activation=relu, name="c2")
    return relu(a + b) -> conv(3, 1, name="c3") -> relu6(name="r6") -> maxpool(2, name="pool")
        -> flatten -> dense(classes, activation=softmax, name="head")
}
"""


class Record(Observer):
    """Copies of everything reported, in order; stops at the call numbered `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[str, str, Any]] = []  # (hook, step path or "", value copy)
        self.stop_at = stop_at

    def _note(self, hook: str, path: str, value: Any) -> bool:
        self.calls.append((hook, path, value))
        return self.stop_at is not None and len(self.calls) == self.stop_at

    def output(self, step: Step, value: Any) -> bool:
        return self._note("output", step.path, np.array(value))

    def loss(self, value: Any) -> bool:
        return self._note("loss", "", float(value))

    def gradients(
        self, step: Step, input_grads: Sequence[Any], weight_grads: Mapping[str, Any]
    ) -> bool:
        copies = {weight_key(step.path, k): np.array(g) for k, g in weight_grads.items()}
        return self._note("gradients", step.path, copies)

    def hooks(self) -> list[str]:
        return [hook for hook, _, _ in self.calls]


def build(dtype: str = "float64", seed: int = 1) -> Any:
    model = cnndsl.compile(SPEC).build(seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    model.params["bn:gamma"][...] = rng.uniform(0.5, 1.5, 4)
    model.params["bn:beta"][...] = rng.normal(size=4)
    model.params["bn:moving_mean"][...] = rng.normal(size=4)
    model.params["bn:moving_variance"][...] = rng.uniform(0.5, 2.0, 4)
    for key in ("c1:bias", "c2:bias", "c3:bias"):
        model.params[key][...] = rng.normal(size=model.params[key].shape)
    model.params["c3:kernel"][...] = rng.normal(scale=4.0, size=(1, 1, 4, 3))  # past 6 and 0
    return model


def batch(n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(size=(n, 6, 6, 2)), rng.integers(0, 3, n)


# ---- the reference: each layer by its definition, in float64 ----


def conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, same: bool) -> np.ndarray:
    """Stride-1 cross-correlation by direct loops; `same` pads as Keras does at stride 1."""
    fh, fw, _, f = kernel.shape
    if same:
        top, left = (fh - 1) // 2, (fw - 1) // 2
        x = np.pad(x, ((0, 0), (top, fh - 1 - top), (left, fw - 1 - left), (0, 0)))
    n, h, w, c = x.shape
    out = np.zeros((n, h - fh + 1, w - fw + 1, f))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            for u in range(fh):
                for v in range(fw):
                    for ci in range(c):
                        out[:, i, j, :] += x[:, i + u, j + v, ci, None] * kernel[u, v, ci]
    return out + bias


def reference(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output, computed one layer at a time from the IR, not the plan."""
    values: dict[str, np.ndarray] = {}
    for layer in model.graph:
        ins = [values[p] for p in layer.inputs]
        w = model.layer_weights(layer.path)
        a = layer.attrs
        if layer.op == "input":
            y = x
        elif layer.op == "conv":
            y = conv(ins[0], w["kernel"], w["bias"], a["padding"] == "same")
            y = np.maximum(y, 0) if a["activation"] == "relu" else y
        elif layer.op == "batchnorm":
            scale = w["gamma"] / np.sqrt(w["moving_variance"] + a["epsilon"])
            y = (ins[0] - w["moving_mean"]) * scale + w["beta"]
        elif layer.op == "relu":
            y = np.maximum(ins[0], 0)
        elif layer.op == "relu6":
            y = np.clip(ins[0], 0, 6)
        elif layer.op == "add":
            y = ins[0] + ins[1]
        elif layer.op == "maxpool":
            n, h, wd, c = ins[0].shape
            y = ins[0].reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
        elif layer.op == "flatten":
            y = ins[0].reshape(len(ins[0]), -1)
        elif layer.op == "dense":
            z = ins[0] @ w["kernel"] + w["bias"]
            e = np.exp(z - z.max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        else:
            raise AssertionError(f"no reference for {layer.op}")
        values[layer.path] = y
    return values


def test_observed_values_are_a_layer_by_layer_forward_in_plan_order() -> None:
    model = build()
    plan = model.plan
    # Lowering fused both relus into their producers and runs relu6 in place: the
    # cases where what a step holds differs from a plain one-layer-per-step run.
    hosts = {s.attrs["fused_into"]: s.path for s in plan if "fused_into" in s.attrs}
    assert sorted(model.graph[p].op for p in hosts) == ["add", "batchnorm"]
    assert plan.steps[plan.index("r6")].attrs.get("inplace") is True
    x, _ = batch()
    seen = Record()
    model.observe(x, seen)
    assert seen.hooks() == ["output"] * len(plan)
    assert [path for _, path, _ in seen.calls] == [layer.path for layer in model.graph]
    ref = reference(model, x)
    for _, path, value in seen.calls:
        # NOTE: a producer that runs its reader's relu holds the activated value.
        want = ref[hosts.get(path, path)]
        np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-12, err_msg=path)
    # c3 before relu6 overwrote it: negative and > 6 values are still there.
    c3 = dict((p, v) for _, p, v in seen.calls)["c3"]
    assert c3.min() < 0 and c3.max() > 6


def test_observing_changes_no_bits_of_outputs_loss_or_gradients() -> None:
    x, y = batch(4)
    plain, watched = build("float32"), build("float32")
    out = plain(x)
    seen = Record()
    watched.observe(x, seen)
    np.testing.assert_array_equal(seen.calls[-1][2], out)
    np.testing.assert_array_equal(watched(x), out)  # the hook leaves no trace either

    value, grads = plain.gradients(x, y)
    xb = watched.backend.to_device(x, dtype=watched.dtype)
    yb = watched.backend.to_device(y.astype(np.int64))
    seen = Record()
    watched.observe_gradients(xb, yb, watched.loss, seen)
    hooks = seen.hooks()
    n_out = hooks.count("output")
    assert hooks == ["output"] * n_out + ["loss"] + ["gradients"] * (len(hooks) - n_out - 1)
    assert seen.calls[n_out][2] == value
    # Backward order: reversed plan order over the steps that need gradients.
    order = [path for hook, path, _ in seen.calls if hook == "gradients"]
    run = [s.path for s in watched.plan]
    assert order == sorted(order, key=run.index, reverse=True) and order[0] == "head"
    observed = {k: g for hook, _, gs in seen.calls if hook == "gradients" for k, g in gs.items()}
    assert set(grads) <= set(observed)
    for key, g in grads.items():
        np.testing.assert_array_equal(observed[key], g, err_msg=key)
    # The observed step moved the moving statistics as a training forward does
    # (gradients() puts them back: it changes nothing).
    trained = build("float32")
    trained(x, training=True)
    for key in ("bn:moving_mean", "bn:moving_variance"):
        np.testing.assert_array_equal(watched.params[key], trained.params[key], err_msg=key)
        np.testing.assert_array_equal(plain.params[key], build("float32").params[key])


@pytest.mark.parametrize("stop_at", [1, 4, 12, 13, 14])
def test_a_hook_returning_true_stops_the_run_there(stop_at: int) -> None:
    model = build()
    x, y = batch()
    n = len(model.plan)  # 12 steps: outputs are calls 1..12, the loss 13
    seen = Record(stop_at)
    xb, yb = model.backend.to_device(x), model.backend.to_device(y.astype(np.int64))
    model.observe_gradients(xb, yb, model.loss, seen)
    assert n == 12 and len(seen.calls) == stop_at
    last = "output" if stop_at <= n else "loss" if stop_at == n + 1 else "gradients"
    assert seen.hooks()[-1] == last
    forward = Record(stop_at)
    model.observe(x, forward)
    assert len(forward.calls) == min(stop_at, n)
    # A stopped run leaves a working executor behind.
    np.testing.assert_allclose(model(x), reference(model, x)["head"], rtol=1e-12)
