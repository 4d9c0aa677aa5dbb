"""Optimizers: Keras formulas, numbers worked by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cnndsl.training.optimizers import (
    SGD,
    UPDATE_BLOCK,
    Adam,
    OptimizerError,
    RMSprop,
    get_optimizer,
)


def run(opt: Any, grads: list[list[float]], w0: list[float]) -> list[list[float]]:
    params = {"w": np.array(w0, np.float64)}
    out = []
    for g in grads:
        opt.step(np, params, {"w": np.array(g, np.float64)})
        out.append(params["w"].tolist())
    return out


def test_sgd_plain_and_decay() -> None:
    # w1 = 1 - 0.1·0.5 = 0.95; then lr = 0.1 / (1 + 0.5·1) = 0.0666…: w2 = 0.95 - 0.2/15
    steps = run(SGD(lr=0.1, decay=0.5), [[0.5], [0.2]], [1.0])
    assert steps[0] == pytest.approx([0.95], abs=1e-15)
    assert steps[1] == pytest.approx([0.95 - 0.2 / 15], abs=1e-15)


def test_sgd_momentum() -> None:
    # v1 = -0.1·g1 = [-0.05, 0.1] -> w1 = [0.95, -1.9]
    # v2 = 0.9·v1 - 0.1·g2 = [-0.065, 0.05] -> w2 = [0.885, -1.85]
    steps = run(SGD(lr=0.1, momentum=0.9), [[0.5, -1.0], [0.2, 0.4]], [1.0, -2.0])
    assert steps[0] == pytest.approx([0.95, -1.9], abs=1e-12)
    assert steps[1] == pytest.approx([0.885, -1.85], abs=1e-12)


def test_sgd_nesterov() -> None:
    # w1 = w0 + 0.9·v1 - 0.1·g1 = [1 - 0.045 - 0.05, -2 + 0.09 + 0.1] = [0.905, -1.81]
    # w2 = w1 + 0.9·v2 - 0.1·g2 = [0.905 - 0.0585 - 0.02, -1.81 + 0.045 - 0.04]
    opt = SGD(lr=0.1, momentum=0.9, nesterov=True)
    steps = run(opt, [[0.5, -1.0], [0.2, 0.4]], [1.0, -2.0])
    assert steps[0] == pytest.approx([0.905, -1.81], abs=1e-12)
    assert steps[1] == pytest.approx([0.8265, -1.805], abs=1e-12)
    assert opt.iterations == 2


def test_adam_matches_keras_formula() -> None:
    # t=1: m = 0.05, v = 0.00025, lr_t = 0.1·sqrt(0.001)/0.1 = 0.0316228;
    #      w1 = 1 - 0.0316228·0.05/(0.0158114 + 1e-7) = 0.90000063245…
    # t=2: m = 0.065, v = 0.00028975, lr_t = 0.1·sqrt(0.001999)/0.19 = 0.0235317;
    #      w2 = w1 - 0.0235317·0.065/(0.0170220 + 1e-7) = 0.81014363988…
    steps = run(Adam(lr=0.1), [[0.5], [0.2]], [1.0])
    assert steps[0][0] == pytest.approx(0.9000006324515321, abs=1e-12)
    assert steps[1][0] == pytest.approx(0.8101436398802739, abs=1e-12)


def test_adam_defaults_are_keras() -> None:
    opt = get_optimizer("adam")
    assert (opt.lr, opt.beta_1, opt.beta_2, opt.epsilon) == (0.001, 0.9, 0.999, 1e-7)  # type: ignore[attr-defined]
    assert get_optimizer("sgd").lr == 0.01


def test_rmsprop() -> None:
    # a = 0.1·0.25 = 0.025; w1 = 1 - 0.01·0.5/(sqrt(0.025) + 1e-7)
    steps = run(RMSprop(lr=0.01), [[0.5]], [1.0])
    assert steps[0][0] == pytest.approx(1 - 0.005 / (math.sqrt(0.025) + 1e-7), abs=1e-14)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
def test_optimizer_on_lanes_gives_the_serial_bits(name: str) -> None:
    """Updates spread over threads (one array per lane) equal the serial updates exactly."""
    from cnndsl.runtime.backends.numpy_backend import ThreadWorkers

    rng = np.random.default_rng(5)
    shapes = [(400, 300), (7,), (3, 3, 16, 32), (1,), (64, 10)]  # (400, 300): two blocks
    assert UPDATE_BLOCK < 400 * 300
    start = {f"w{i}": rng.normal(size=s).astype(np.float32) for i, s in enumerate(shapes)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in start.items()}] * 3
    # a gradient that is a transposed view (no flat view of it exists): updated whole
    grads[1] = {**grads[1], "w0": np.ascontiguousarray(grads[1]["w0"].T).T}
    results = []
    for workers in (None, ThreadWorkers(2), ThreadWorkers(3)):
        opt = get_optimizer({"name": name, "lr": 0.05})
        params = {k: v.copy() for k, v in start.items()}
        for g in grads:
            if workers is None:
                opt.step(np, params, g)
            else:
                opt.step(np, params, g, workers)
        results.append(params)
    for other in results[1:]:
        for k in start:
            np.testing.assert_array_equal(other[k], results[0][k])
    assert not np.array_equal(results[0]["w0"], start["w0"])


def test_optimizer_specs_and_state_round_trip() -> None:
    opt = get_optimizer({"name": "sgd", "lr": 0.2, "momentum": 0.9, "decay": 0.01}, lr=0.05)
    assert isinstance(opt, SGD) and opt.lr == 0.05 and opt.momentum == 0.9
    run(opt, [[1.0, 2.0]], [0.0, 0.0])
    state = opt.state_dict()
    assert state["iterations"] == 1
    clone = get_optimizer(state["config"])
    clone.load_state_dict(state)
    a, b = run(opt, [[0.5, 0.5]], [0.0, 0.0]), run(clone, [[0.5, 0.5]], [0.0, 0.0])
    assert a == b
    with pytest.raises(OptimizerError, match="unknown optimizer 'adamw'"):
        get_optimizer("adamw")
    with pytest.raises(OptimizerError, match="no setting 'beta'"):
        get_optimizer({"name": "sgd", "beta": 1})
    with pytest.raises(OptimizerError, match="learning rate"):
        SGD(lr=0)
