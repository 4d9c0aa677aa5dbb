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


# ---- several steps against PyTorch, and against the Keras formulas where torch differs ----

STEPS = 8


def gradient_sequence(seed: int = 3) -> list[dict[str, np.ndarray]]:
    """Gradients for two arrays whose scale swings (x10, then /100): accumulators must decay."""
    rng = np.random.default_rng(seed)
    scales = [1.0, 1.0, 10.0, 10.0, 0.1, 0.1, 1.0, 0.01]
    return [
        {"a": rng.normal(size=(3, 4)) * s, "b": rng.normal(size=(5,)) * s + 0.5 * s}
        for s in scales[:STEPS]
    ]


def start_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}


def ours(opt: Any, grads: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    params = start_weights()
    out = []
    for g in grads:
        opt.step(np, params, g)
        out.append({k: v.copy() for k, v in params.items()})
    return out


def theirs(
    make: Any, grads: list[dict[str, np.ndarray]], lr: float, decay: float, adam_eps: float = 0.0
) -> list[dict[str, np.ndarray]]:
    """The same steps through torch.optim in float64, lr set per step to Keras' lr / (1 + d·t)."""
    torch = pytest.importorskip("torch")
    params = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in start_weights().items()
    }
    opt = make(list(params.values()))
    out = []
    for t, g in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = lr / (1 + decay * t)
            if adam_eps:
                # torch adds eps to sqrt(v)/sqrt(1-b2^t), Keras to sqrt(v) ("epsilon hat"):
                # eps / sqrt(1-b2^t) in torch is Keras' formula exactly.
                beta_2 = group["betas"][1]
                group["eps"] = adam_eps / math.sqrt(1 - beta_2 ** (t + 1))
        for k, p in params.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in params.items()})
    return out


def assert_same_steps(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b) == STEPS
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        for k in x:
            np.testing.assert_allclose(
                x[k], y[k], rtol=1e-12, atol=1e-14, err_msg=f"step {t + 1} {k}"
            )


@pytest.mark.parametrize(
    ("momentum", "nesterov", "decay"),
    [(0.0, False, 0.0), (0.0, False, 0.3), (0.9, False, 0.0), (0.8, True, 0.0)],
)
def test_sgd_matches_torch(momentum: float, nesterov: bool, decay: float) -> None:
    torch = pytest.importorskip("torch")
    grads = gradient_sequence()
    mine = ours(SGD(lr=0.05, momentum=momentum, nesterov=nesterov, decay=decay), grads)
    ref = theirs(
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=momentum, nesterov=nesterov),
        grads,
        0.05,
        decay,
    )
    assert_same_steps(mine, ref)


def keras_sgd(lr: float, momentum: float, nesterov: bool, decay: float, grads: Any) -> list[Any]:
    """Keras' SGD, one value at a time: its velocity holds lr_t·g, torch's holds g."""
    w = {k: v.copy() for k, v in start_weights().items()}
    v = {k: np.zeros_like(x) for k, x in w.items()}
    out = []
    for t, g in enumerate(grads):
        lr_t = lr / (1 + decay * t)
        for k in w:
            for i in np.ndindex(w[k].shape):
                v[k][i] = momentum * v[k][i] - lr_t * g[k][i]
                if nesterov:
                    w[k][i] += momentum * v[k][i] - lr_t * g[k][i]
                else:
                    w[k][i] += v[k][i]
        out.append({k: x.copy() for k, x in w.items()})
    return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_with_decay_matches_the_keras_formula(nesterov: bool) -> None:
    # With a decaying lr and momentum, torch (lr times a velocity of gradients) and Keras
    # (a velocity of lr_t·g) differ: the reference is Keras' own update, written out.
    grads = gradient_sequence()
    mine = ours(SGD(lr=0.05, momentum=0.9, nesterov=nesterov, decay=0.2), grads)
    assert_same_steps(mine, keras_sgd(0.05, 0.9, nesterov, 0.2, grads))
    # and the difference from the decay-free run is there to see
    plain = ours(SGD(lr=0.05, momentum=0.9, nesterov=nesterov), grads)
    assert not np.allclose(plain[-1]["a"], mine[-1]["a"], rtol=1e-3)


@pytest.mark.parametrize(("decay", "epsilon"), [(0.0, 1e-7), (0.1, 1e-7), (0.0, 0.5)])
def test_adam_matches_torch(decay: float, epsilon: float) -> None:
    torch = pytest.importorskip("torch")
    grads = gradient_sequence()
    mine = ours(Adam(lr=0.01, beta_1=0.8, beta_2=0.95, epsilon=epsilon, decay=decay), grads)
    ref = theirs(
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95)),
        grads,
        0.01,
        decay,
        adam_eps=epsilon,
    )
    assert_same_steps(mine, ref)


@pytest.mark.parametrize(("decay", "epsilon"), [(0.0, 1e-7), (0.1, 1e-7), (0.0, 0.5)])
def test_rmsprop_matches_torch(decay: float, epsilon: float) -> None:
    # torch's RMSprop is Keras': a = alpha·a + (1-alpha)·g², w -= lr·g / (sqrt(a) + eps).
    torch = pytest.importorskip("torch")
    grads = gradient_sequence()
    mine = ours(RMSprop(lr=0.01, rho=0.7, epsilon=epsilon, decay=decay), grads)
    ref = theirs(
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.7, eps=epsilon), grads, 0.01, decay
    )
    assert_same_steps(mine, ref)


def test_rmsprop_accumulator_decays() -> None:
    # a2 = rho·a1 + (1-rho)·g2² = 0.9·0.025 + 0.1·0.04 = 0.0265 (one value, worked by hand)
    steps = run(RMSprop(lr=0.01), [[0.5], [0.2]], [1.0])
    w1 = 1 - 0.01 * 0.5 / (math.sqrt(0.025) + 1e-7)
    assert steps[1][0] == pytest.approx(w1 - 0.01 * 0.2 / (math.sqrt(0.0265) + 1e-7), abs=1e-14)


CONFIGS = [
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "decay": 0.1},
    {"name": "sgd", "lr": 0.05, "decay": 0.3},
    {"name": "adam", "lr": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-4, "decay": 0.1},
    {"name": "rmsprop", "lr": 0.01, "rho": 0.7, "epsilon": 1e-3, "decay": 0.1},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['name']}-{len(c)}")
@pytest.mark.parametrize("on_xp", [False, True])
def test_state_round_trip_continues_as_if_uninterrupted(
    config: dict[str, Any], on_xp: bool
) -> None:
    grads = gradient_sequence()
    whole = ours(get_optimizer(config), grads)[-1]

    first = get_optimizer(config)
    params = start_weights()
    for g in grads[:3]:
        first.step(np, params, g)
    state = first.state_dict()
    assert state["iterations"] == 3 and state["config"] == {**first.config, **config}
    clone = get_optimizer(state["config"])
    assert type(clone) is type(first) and clone.config == first.config
    clone.load_state_dict(state, xp=np if on_xp else None)
    assert clone.iterations == 3
    for slot in state["slots"].values():
        slot[...] = 1e6  # the clone holds copies: later changes to the saved state never leak in
    resumed = {k: v.copy() for k, v in params.items()}
    for g in grads[3:]:
        clone.step(np, resumed, g)
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k])
    # The slots did matter: restarting from fresh slots (iteration count kept) lands elsewhere.
    fresh = get_optimizer(config)
    fresh.iterations = 3
    elsewhere = {k: v.copy() for k, v in params.items()}
    for g in grads[3:]:
        fresh.step(np, elsewhere, g)
    if config["name"] != "sgd" or config.get("momentum"):  # plain SGD keeps no state
        assert not np.allclose(elsewhere["a"], whole["a"], rtol=1e-9)


# ---- settings, checks and edges the mutation run found unchecked (docs/testing.md) ----


def test_defaults_and_repr_are_keras() -> None:
    sgd, adam, rms = SGD(), Adam(), RMSprop()
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.decay) == (0.01, 0.0, False, 0.0)
    assert (adam.lr, adam.beta_1, adam.beta_2, adam.epsilon, adam.decay) == (
        0.001,
        0.9,
        0.999,
        1e-7,
        0.0,
    )
    assert (rms.lr, rms.rho, rms.epsilon, rms.decay) == (0.001, 0.9, 1e-7, 0.0)
    assert repr(sgd) == "sgd(lr=0.01, decay=0.0, momentum=0.0, nesterov=False)"
    assert repr(rms) == "rmsprop(lr=0.001, decay=0.0, rho=0.9, epsilon=1e-07)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SGD(lr=-1), "sgd: learning rate must be > 0, got -1"),
        (lambda: SGD(decay=-0.1), "sgd: decay must be >= 0, got -0.1"),
        (lambda: SGD(momentum=1), r"sgd: momentum must be in \[0, 1\), got 1"),
        (lambda: SGD(momentum=-0.5), r"sgd: momentum must be in \[0, 1\), got -0.5"),
        (lambda: Adam(beta_1=1.0), r"adam: beta_1 must be in \[0, 1\), got 1.0"),
        (lambda: Adam(beta_2=1.5), r"adam: beta_2 must be in \[0, 1\), got 1.5"),
        (lambda: RMSprop(rho=1), r"rmsprop: rho must be in \[0, 1\), got 1"),
        (lambda: RMSprop(rho=-0.1), r"rmsprop: rho must be in \[0, 1\), got -0.1"),
    ],
)
def test_bad_hyperparameters_are_refused(make: Any, message: str) -> None:
    with pytest.raises(OptimizerError, match=f"^{message}$"):
        make()


def test_zero_is_an_allowed_beta_rho_and_momentum() -> None:
    # rho = 0: a = g², so the step is lr·g/(|g| + eps); beta_1 = beta_2 = 0 likewise for Adam
    assert run(RMSprop(lr=0.1, rho=0.0, epsilon=0.0), [[0.5], [-2.0]], [1.0]) == [[0.9], [1.0]]
    assert run(Adam(lr=0.1, beta_1=0.0, beta_2=0.0, epsilon=0.0), [[0.5]], [1.0]) == [[0.9]]
    assert run(SGD(lr=0.1, momentum=0.0), [[0.5]], [1.0]) == [[0.95]]


def test_get_optimizer_specs_overrides_and_aliases() -> None:
    opt = SGD(lr=0.1, momentum=0.5)
    assert get_optimizer(opt) is opt
    changed = get_optimizer(opt, lr=0.02)
    assert changed is not opt and changed.config == {**opt.config, "lr": 0.02}
    assert get_optimizer(opt, lr=None) is not opt and get_optimizer(opt, lr=None).lr == 0.1
    assert get_optimizer({"learning_rate": 0.3}).config == SGD(lr=0.3).config  # sgd by default
    assert get_optimizer("adam", learning_rate=0.2).lr == 0.2
    assert isinstance(get_optimizer("RMSprop"), RMSprop)
    with pytest.raises(
        OptimizerError, match=r"^unknown optimizer 'adamw'; known: sgd, adam, rmsprop$"
    ):
        get_optimizer("adamw")
    with pytest.raises(OptimizerError) as err:
        get_optimizer({"name": "rmsprop", "beta": 1, "alpha": 2})
    assert str(err.value) == (
        "rmsprop has no setting 'alpha', 'beta' (it takes: lr, rho, epsilon, decay)"
    )


def test_non_contiguous_weights_are_updated_in_place() -> None:
    # A transposed view has no flat view: it is updated whole, and every later weight still is.
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    params = {"t": base.T, "after": np.ones(5)}
    grads = {"t": np.ones((4, 3)), "after": np.full(5, 2.0)}
    opt = SGD(lr=0.5, momentum=0.9)
    opt.step(np, params, grads)
    np.testing.assert_array_equal(base, np.arange(12).reshape(3, 4) - 0.5)
    np.testing.assert_array_equal(params["after"], np.zeros(5))


def test_state_keys_with_slashes_round_trip() -> None:
    # weight keys are layer paths: 'stage2/unit_1/conv:kernel'
    keys = ["stage2/unit_1/conv:kernel", "head:bias"]
    grads = [{k: np.full(3, g) for k in keys} for g in (0.5, -1.0, 2.0)]
    whole = get_optimizer({"name": "adam", "lr": 0.1})
    first = get_optimizer({"name": "adam", "lr": 0.1})
    w_whole = {k: np.zeros(3) for k in keys}
    w_split = {k: np.zeros(3) for k in keys}
    for g in grads:
        whole.step(np, w_whole, g)
    first.step(np, w_split, grads[0])
    state = first.state_dict()
    assert sorted(state["slots"]) == sorted(f"{s}/{k}" for s in ("m", "v") for k in keys)
    clone = get_optimizer(state["config"])
    clone.load_state_dict(state)
    assert sorted(clone.state["m"]) == sorted(keys)
    for g in grads[1:]:
        clone.step(np, w_split, g)
    for k in keys:
        np.testing.assert_array_equal(w_split[k], w_whole[k])


def test_plain_sgd_keeps_no_velocity() -> None:
    opt = SGD(lr=0.1)
    run(opt, [[0.5, 1.0]], [0.0, 0.0])
    assert all(not np.any(v) for v in opt.state_dict()["slots"].values())


def test_a_fused_update_gets_each_weight_once_with_the_steps_scalars() -> None:
    """A backend's one-launch update (cnndsl.runtime.backends.cupy_backend) is called once
    per weight with its slots; Adam's step size carries the bias correction of each step
    count and the learning rate its decay. Its values: tests/runtime/test_gpu_path.py."""
    calls: list[tuple[str, tuple[float, ...], list[str]]] = []

    def fused(name: str, scalars: tuple[float, ...], g: Any, w: Any, slots: dict) -> None:
        calls.append((name, scalars, sorted(slots)))

    opt = Adam(lr=0.1, decay=0.5)
    params = {"a": np.zeros(3), "b": np.zeros(2)}
    opt.step(np, params, {"a": np.ones(3), "b": np.ones(2)}, fused=fused)
    opt.step(np, params, {"a": np.ones(3)}, fused=fused)
    assert opt.iterations == 2 and not params["a"].any()  # the fused update alone writes
    assert [(name, slots) for name, _, slots in calls] == [("adam", ["m", "v"])] * 3
    alpha_1 = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9)
    alpha_2 = 0.1 / 1.5 * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    assert calls[0][1] == pytest.approx((alpha_1, 0.9, 0.1, 0.999, 0.001, 1e-7), rel=1e-15)
    assert calls[2][1][0] == pytest.approx(alpha_2, rel=1e-15)
    assert SGD(lr=0.1).fused_update(0.05) == ("sgd", (0.05,))
    assert SGD(lr=0.1, momentum=0.9).fused_update(0.05) == ("sgd_momentum", (0.05, 0.9))
    nesterov = SGD(lr=0.1, momentum=0.9, nesterov=True)
    assert nesterov.fused_update(0.05) == ("sgd_nesterov", (0.05, 0.9))
    assert RMSprop(rho=0.8).fused_update(0.01) == ("rmsprop", (0.01, 0.8, 1 - 0.8, 1e-7))
