"""Training: losses, metrics and optimizers against hand-computed values; fit on digits."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.data import load_data
from cnndsl.losses import (
    LossError,
    SparseCategoricalCrossentropy,
    get_loss,
    get_metric,
)
from cnndsl.model import Callback, Model, ModelError
from cnndsl.optimizers import SGD, UPDATE_BLOCK, Adam, OptimizerError, RMSprop, get_optimizer
from cnndsl.parse import resource_path

# ---- optimizers: Keras formulas, numbers worked by hand ----


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
    from cnndsl.backends.numpy_backend import ThreadWorkers

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


# ---- losses and metrics: direct formulas ----

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
Y = np.array([0, 2])


def test_sparse_crossentropy_on_probabilities() -> None:
    loss, grad = get_loss("sparse_categorical_crossentropy")(np, P, Y)
    assert loss == pytest.approx(-(math.log(0.7) + math.log(0.6)) / 2, rel=1e-12)
    expected = np.zeros_like(P)
    expected[0, 0], expected[1, 2] = -1 / (0.7 * 2), -1 / (0.6 * 2)
    np.testing.assert_allclose(grad, expected, rtol=1e-12)


def test_categorical_and_binary_crossentropy() -> None:
    onehot = np.eye(3)[Y]
    loss, _ = get_loss("categorical_crossentropy")(np, P, onehot)
    assert loss == pytest.approx(-(math.log(0.7) + math.log(0.6)) / 2, rel=1e-12)
    p, y = np.array([[0.9], [0.2]]), np.array([[1.0], [0.0]])
    loss, grad = get_loss("binary_crossentropy")(np, p, y)
    assert loss == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, [[-1 / 0.9 / 2], [1 / 0.8 / 2]], rtol=1e-12)
    loss, grad = get_loss("mse")(np, p, y)
    assert loss == pytest.approx((0.01 + 0.04) / 2)


def _fd(f: Any, z: np.ndarray) -> np.ndarray:
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        old = z[i]
        z[i] = old + 1e-6
        up = f(z)
        z[i] = old - 1e-6
        down = f(z)
        z[i] = old
        g[i] = (up - down) / 2e-6
    return g


@pytest.mark.parametrize(
    "name", ["sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy"]
)
def test_fused_gradient_matches_finite_differences(name: str) -> None:
    rng = np.random.default_rng(0)
    loss = get_loss(name)
    if name == "binary_crossentropy":
        z, y = rng.normal(size=(6, 1)) * 3, rng.integers(0, 2, (6, 1)).astype(float)
    else:
        z, labels = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, 6)
        y = labels if name.startswith("sparse") else np.eye(5)[labels]
    value, grad, p = loss.from_logits(np, z, y)
    np.testing.assert_allclose(
        grad, _fd(lambda t: loss.from_logits(np, t, y)[0], z), rtol=1e-6, atol=1e-10
    )
    # The fused loss is the plain loss applied to the activation's output.
    plain, _ = loss(np, p, y)
    assert value == pytest.approx(float(plain), rel=1e-9)


def test_fused_loss_is_stable_for_huge_logits() -> None:
    z = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    value, grad, p = get_loss("sparse_categorical_crossentropy").from_logits(np, z, np.array([1]))
    assert value == pytest.approx(1000.0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[1, -1, 0]], atol=1e-6)


def test_model_fused_and_unfused_gradients_agree() -> None:
    net = cnndsl.compile("""
network n() {
    input x: [5, 5, 2]
    return x -> conv(3, 3, activation=tanh) -> flatten -> dense(4, activation=softmax)
}""")
    x = np.random.default_rng(0).normal(size=(3, 5, 5, 2))
    y = np.array([0, 3, 1])
    fused = Model(net.graph, seed=0, dtype="float64")
    assert fused._train_plan(fused.loss)[1] is True
    plain_loss = SparseCategoricalCrossentropy("plain_sparse_ce", activation=None)
    lf, gf = fused.gradients(x, y)
    lp, gp = fused.gradients(x, y, loss=plain_loss)
    assert lf == pytest.approx(lp, rel=1e-10)
    for key in gf:
        np.testing.assert_allclose(gf[key], gp[key], rtol=1e-7, atol=1e-12)


def test_accuracy_and_top_k() -> None:
    p = np.array([[0.1, 0.5, 0.3, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.3, 0.2]])
    y = np.array([2, 0, 3])  # ranks of the label: 2nd, 1st, 4th
    assert get_metric("accuracy")(np, p, y) == (1, 3)
    assert tuple(map(int, get_metric("top2")(np, p, y))) == (2, 3)
    assert tuple(map(int, get_metric("top_3_accuracy")(np, p, y))) == (2, 3)
    assert tuple(map(int, get_metric("top_k_accuracy")(np, p, y))) == (3, 3)  # k = 5
    assert tuple(map(int, get_metric("accuracy")(np, p, np.eye(4)[y]))) == (1, 3)
    binary = get_metric("accuracy")(np, np.array([[0.7], [0.4], [0.6]]), np.array([1, 0, 0]))
    assert tuple(map(int, binary)) == (2, 3)
    with pytest.raises(LossError, match="unknown metric"):
        get_metric("f1")
    with pytest.raises(LossError, match="unknown loss"):
        get_loss("hinge")


# ---- fit, evaluate, predict ----

TINY = """
network tiny(classes=3) {
    input x: [4, 4, 1]
    train {
        loss = sparse_categorical_crossentropy
        optimizer = sgd(lr=0.1, momentum=0.9)
        metrics = [accuracy, top2]
        batch = 8
        epochs = 3
    }
    return x -> conv(4, 3, padding=same, activation=relu) -> flatten
        -> dense(classes, activation=softmax)
}
"""


def tiny_data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32) + y[:, None, None, None]
    return x, y


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.events.append(("begin", logs["epochs"]))

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self.events.append(("batch", logs["samples"]))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.events.append(("epoch", epoch))


def test_fit_uses_train_section_and_reports_history() -> None:
    x, y = tiny_data()
    model = cnndsl.compile(TINY).build(seed=0)
    assert model.optimizer.config["momentum"] == 0.9 and model.batch_size == 8
    rec = Recorder()
    history = model.fit(x, y, validation_split=0.25, callbacks=[rec])
    assert set(history.history) == {
        "loss",
        "accuracy",
        "top2",
        "val_loss",
        "val_accuracy",
        "val_top2",
    }
    assert all(len(v) == 3 for v in history.history.values())
    assert history.history["loss"][-1] < history.history["loss"][0]
    # Keras: the validation set is the last 25% before shuffling (10 of 40 samples).
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(x[30:], y[30:])["loss"], rel=1e-6
    )
    batches = [e[1] for e in rec.events if e[0] == "batch"]
    assert batches[:4] == [8, 16, 24, 30]  # 30 training samples in batches of 8
    assert rec.events[0] == ("begin", 3) and rec.events[-1] == ("epoch", 2)


def test_evaluate_matches_predict() -> None:
    x, y = tiny_data()
    model = cnndsl.compile(TINY).build(seed=1)
    model.fit(x, y, epochs=1)
    p = model.predict(x, batch_size=7)
    assert p.shape == (40, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    result = model.evaluate(x, y, batch_size=7)
    assert result["loss"] == pytest.approx(-np.log(p[np.arange(40), y]).mean(), rel=1e-4)
    assert result["accuracy"] == pytest.approx((p.argmax(1) == y).mean())


def test_fit_stops_on_request_and_rejects_bad_input() -> None:
    x, y = tiny_data()
    model = cnndsl.compile(TINY).build(seed=0)

    class Stop(Callback):
        def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
            self.model.stop_training = True

    history = model.fit(x, y, epochs=5, callbacks=[Stop()])
    assert len(history.epoch) == 1
    with pytest.raises(ModelError, match="40 samples but y has 39"):
        model.fit(x, y[:-1])
    with pytest.raises(ModelError, match="takes samples of shape \\[4, 4, 1\\]"):
        model.predict(np.zeros((2, 5, 5, 1), np.float32))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_reports_divergence() -> None:
    x, y = tiny_data()
    model = cnndsl.compile(TINY).build(seed=0)
    with pytest.raises(ModelError, match="lower the learning rate"):
        model.fit(x * 1e30, y, optimizer={"name": "sgd", "lr": 1e10})


def test_augment_hook_sees_every_training_batch() -> None:
    x, y = tiny_data()
    seen: list[int] = []

    def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append(len(batch))
        return batch

    cnndsl.compile(TINY).build().fit(x, y, epochs=1, augment=augment)
    assert sum(seen) == 40


def test_digits_reaches_97_percent() -> None:
    """The README's main job: specs/digits.cnn on digits, its own train section."""
    net = cnndsl.compile(str(resource_path("specs") / "digits.cnn"))
    data = load_data("digits", net.input_shape, net.output_shape[-1])
    model = net.build(seed=0)
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train)
    elapsed = time.perf_counter() - start
    result = model.evaluate(data.x_test, data.y_test)
    assert result["accuracy"] >= 0.97, result
    assert elapsed < 120


# ---- cnndsl run ----


def test_cli_run_trains_saves_and_writes_history(tmp_path: Any, capsys: Any) -> None:
    from cnndsl.cli import main

    weights, history = tmp_path / "w.npz", tmp_path / "h.json"
    argv = ["run", "--epochs", "2", "--quiet", "--save", str(weights), "--history", str(history)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test loss" in out
    import json

    saved = json.loads(history.read_text())
    assert len(saved["history"]["loss"]) == 2 and "accuracy" in saved["test"]
    assert saved["params"]["optimizer"]["name"] == "adam"  # from specs/digits.cnn
    assert weights.exists()

    # Predict from the saved weights, without training.
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = tmp_path / "seven.png"
    Image.fromarray((digits.images[7] * 255 / 16).astype(np.uint8)).save(image)
    assert main(["run", "--load", str(weights), "--predict", str(image), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith(f"{image}: ") and line.count("(") == 2
    assert "loaded" in captured.err


def test_cli_run_flags_override_the_train_section(capsys: Any) -> None:
    from cnndsl.cli import main

    flags = "--optimizer sgd --lr 0.05 --batch-size 64 --validation-split 0.1"
    assert main(["run", "--epochs", "1", "-q", *flags.split()]) == 0
    captured = capsys.readouterr()
    assert "sgd(lr=0.05" in captured.err and "batch 64" in captured.err
    assert "val_accuracy" in captured.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "missing.npz"], "error: missing.npz: no such file or directory"),
        (["--freeze", "base/*"], "error: no layer path matches 'base/*'"),
        (["--load", "nothing.npz"], "error: nothing.npz: cannot read weights"),
    ],
)
def test_cli_run_reports_user_errors(argv: list[str], message: str, capsys: Any) -> None:
    from cnndsl.cli import main

    assert main(["run", "--epochs", "1", "-q", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_run_spec_and_data_disagree(capsys: Any) -> None:
    from cnndsl.cli import main

    spec = str(resource_path("specs") / "fashion_mnist.cnn")
    assert main(["run", spec, "--epochs", "1"]) == 1
    assert "error: digits: samples have shape [8, 8, 1]" in capsys.readouterr().err
