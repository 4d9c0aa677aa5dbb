"""Lowering: step order, liveness, and gradients through fan-out (finite differences)."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from typing import Any

import numpy as np
import pytest

from cnndsl.ir import Graph, Layer
from cnndsl.ops import OPS
from cnndsl.runtime.lower import lower, output_activation, strip_output_activation
from cnndsl.training.model import Model


def build(*layers: tuple[Any, ...]) -> Graph:
    """A shaped graph from (path, op, inputs, kwargs) rows, as the passes would make it."""
    g = Graph()
    for path, op, inputs, kw in layers:
        a = OPS[op].bind(**kw)
        shapes = [g[i].shape for i in inputs]
        shape = OPS[op].shape(a, *shapes)
        weights = OPS[op].weights(a, *shapes)
        g.add(Layer(path, op, a, tuple(inputs), shape=shape, weights=weights))
    return g


def diamond() -> Graph:
    """x feeds two branches that join again, and `e` reads `d` twice: d·d."""
    return build(
        ("x", "input", [], {"shape": (4, 4, 2)}),
        ("a", "conv", ["x"], {"filters": 3, "kernel": 3, "padding": "same"}),
        ("b", "tanh", ["a"], {}),
        ("c", "sigmoid", ["a"], {}),
        ("d", "add", ["b", "c"], {}),
        ("e", "multiply", ["d", "d"], {}),
        ("f", "flatten", ["e"], {}),
        ("g", "dense", ["f"], {"units": 3, "activation": "softmax"}),
    )


def test_steps_are_topological_with_input_indices() -> None:
    plan = lower(diamond())
    assert [s.path for s in plan.steps] == list("xabcdefg")
    assert [s.inputs for s in plan.steps] == [(), (0,), (1,), (1,), (2, 3), (4, 4), (5,), (6,)]
    assert [s.output for s in plan.steps] == list(range(8))
    assert plan.inputs == (0,) and plan.outputs == (7,)
    assert plan.steps[1].weight_keys == ("a:kernel", "a:bias")
    assert plan.steps[7].shape == (3,)


def test_liveness_last_reader_and_frees() -> None:
    plan = lower(diamond())
    # a is read by b and c: it dies after c (step 3); d is read twice by e.
    assert plan.consumers[1] == (2, 3)
    assert plan.consumers[4] == (5,)
    assert plan.last_use == (1, 3, 4, 4, 5, 6, 7, 8)  # the output (7) lives on: len(steps)
    assert plan.frees == ((), (0,), (), (1,), (2, 3), (4,), (5,), (6,))


def test_dead_value_is_freed_at_its_own_step() -> None:
    g = build(
        ("x", "input", [], {"shape": (5,)}),
        ("unused", "relu", ["x"], {}),
        ("y", "tanh", ["x"], {}),
    )
    g.meta["outputs"] = ["y"]
    plan = lower(g)
    assert plan.frees[1] == (1,)
    assert plan.last_use[2] == 3


def test_plan_is_frozen() -> None:
    plan = lower(diamond())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps[0].op = "relu"  # type: ignore[misc]


def test_lower_does_not_change_the_graph() -> None:
    g = diamond()
    before = [(layer.path, layer.op, layer.inputs, layer.shape) for layer in g]
    lower(g)
    assert [(layer.path, layer.op, layer.inputs, layer.shape) for layer in g] == before


def test_inference_drops_activations_after_their_last_reader(monkeypatch: Any) -> None:
    rows: list[tuple[Any, ...]] = [("x", "input", [], {"shape": (64,)})]
    for i in range(8):
        rows.append((f"t{i}", "tanh", [rows[-1][0]], {}))
    model = Model(build(*rows))
    outputs: list[weakref.ref[Any]] = []
    alive_at_step: list[int] = []
    real = OPS["tanh"].forward

    def spy(xp: Any, a: Any, xs: Any, w: Any, ctx: Any) -> Any:
        gc.collect()
        alive_at_step.append(sum(r() is not None for r in outputs))
        y, saved = real(xp, a, xs, w, ctx)
        outputs.append(weakref.ref(y))
        return y, saved

    monkeypatch.setattr(OPS["tanh"], "forward", spy)
    model(np.ones((2, 64), np.float32))
    # A chain keeps only the value being read: never more than one earlier output alive.
    assert alive_at_step[0] == 0
    assert max(alive_at_step) == 1


def test_strip_output_activation() -> None:
    plan = lower(diamond())
    assert output_activation(plan) == "softmax"
    stripped = strip_output_activation(plan)
    assert stripped.steps[7].attrs["activation"] == "none"
    assert plan.steps[7].attrs["activation"] == "softmax"  # the original is untouched
    assert stripped.last_use == plan.last_use

    g = build(
        ("x", "input", [], {"shape": (4,)}),
        ("d", "dense", ["x"], {"units": 3}),
        ("s", "softmax", ["d"], {}),
    )
    plan = lower(g)
    assert output_activation(plan) == "softmax"
    assert strip_output_activation(plan).steps[2].op == "identity"

    g = build(("x", "input", [], {"shape": (4,)}), ("d", "dense", ["x"], {"units": 3}))
    assert output_activation(lower(g)) is None
    assert strip_output_activation(lower(g)) == lower(g)


def _numeric_grad(model: Model, key: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = model.params[key]
    grad = np.zeros_like(w)
    eps = 1e-6
    for i in np.ndindex(w.shape):
        old = w[i]
        w[i] = old + eps
        up = model.evaluate(x, y)["loss"]
        w[i] = old - eps
        down = model.evaluate(x, y)["loss"]
        w[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def test_fan_out_gradients_match_finite_differences() -> None:
    """`a` feeds two branches and `d` is read twice by one step: both sums must be right."""
    model = Model(diamond(), seed=3, dtype="float64")
    model.compile(loss="sparse_categorical_crossentropy", metrics=[])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 4, 2))
    y = np.array([0, 2, 1])
    loss, grads = model.gradients(x, y, training=False)
    assert set(grads) == {"a:kernel", "a:bias", "g:kernel", "g:bias"}
    assert loss == pytest.approx(model.evaluate(x, y)["loss"], rel=1e-12)
    for key in ("a:kernel", "a:bias", "g:bias"):
        numeric = _numeric_grad(model, key, x, y)
        np.testing.assert_allclose(grads[key], numeric, rtol=1e-5, atol=1e-8)


def test_fan_out_gradient_is_the_sum_of_both_paths() -> None:
    """y = tanh(a) + tanh(a) must give exactly twice the gradient of one tanh(a)."""

    def net(twice: bool) -> Graph:
        rows: list[tuple[Any, ...]] = [
            ("x", "input", [], {"shape": (3,)}),
            ("a", "dense", ["x"], {"units": 4}),
            ("b", "tanh", ["a"], {}),
        ]
        if twice:
            rows += [("c", "tanh", ["a"], {}), ("d", "add", ["b", "c"], {})]
        else:
            rows += [("d", "add", ["b", "b"], {})]
        rows.append(("o", "dense", ["d"], {"units": 2}))
        return build(*rows)

    x = np.random.default_rng(1).normal(size=(5, 3))
    y = np.random.default_rng(2).normal(size=(5, 2))
    one = Model(net(False), seed=0, dtype="float64").compile(loss="mse", metrics=[])
    two = Model(net(True), seed=0, dtype="float64").compile(loss="mse", metrics=[])
    _, g1 = one.gradients(x, y)
    _, g2 = two.gradients(x, y)
    np.testing.assert_allclose(g2["a:kernel"], g1["a:kernel"], rtol=1e-12)
    # And the gradient is not zero, so the comparison means something.
    assert np.abs(g1["a:kernel"]).max() > 1e-3
