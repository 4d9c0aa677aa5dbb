"""fit, evaluate and predict: the train section, history, callbacks; digits to 97%."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.formats.data import load_data
from cnndsl.frontend.grammar import resource_path
from cnndsl.training.model import Callback, ModelError

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
