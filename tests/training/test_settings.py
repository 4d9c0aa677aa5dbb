"""The train section's settings: each one from the spec, from Model.fit/compile, and its errors.

Every documented setting is read from the spec and overridden by an explicit
argument; a wrong one fails compilation with a span. The CLI's side is in
tests/cli/test_run_cmd.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.frontend.values import TRAIN_SETTINGS
from cnndsl.source import CnnError
from cnndsl.training.history import Callback
from cnndsl.training.losses import LossError
from cnndsl.training.model import ModelError
from cnndsl.training.optimizers import SGD
from cnndsl.training.settings import TrainSettings

LANGUAGE_DOC = Path(__file__).parents[2] / "docs" / "language.md"


def classifier(settings: str = "") -> str:
    """A tiny 3-class softmax network with these lines as its train section."""
    section = f"    train {{\n{settings}\n    }}\n" if settings else ""
    return (
        "network tiny() {\n    input x: [4, 4, 1]\n" + section + "    return x -> flatten"
        " -> dense(6, activation=relu) -> dense(3, activation=softmax)\n}\n"
    )


def data(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32) + y[:, None, None, None]
    return x, y


class Batches(Callback):
    """Records the samples seen after each training batch."""

    def __init__(self) -> None:
        self.samples: list[int] = []

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self.samples.append(int(logs["samples"]))


def build(settings: str = "", **kwargs: Any) -> Any:
    return cnndsl.compile(classifier(settings)).build(**kwargs)


# ---- one owner ----


def test_one_field_per_setting_and_every_documented_setting_has_one() -> None:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    assert names == set(TRAIN_SETTINGS)
    text = LANGUAGE_DOC.read_text()
    table = text[text.index("### `train`") : text.index("### `budget`")]
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert documented == names


def test_no_section_gives_the_defaults() -> None:
    model = build()
    assert model.settings == TrainSettings()
    assert (model.batch_size, model.epochs) == (32, 1)
    assert model.optimizer.name == "adam" and model.loss.name == "sparse_categorical_crossentropy"
    assert model.metric_names == ["accuracy"]
    seeded = build(seed=0)
    for a, b in zip(model.get_weights(), seeded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_settings_object_is_frozen_and_its_optimizer_read_only() -> None:
    settings = TrainSettings.from_section({"optimizer": {"name": "sgd", "momentum": 0.9}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.optimizer["momentum"] = 0.5  # type: ignore[index]


# ---- lr ----


def test_spec_lr_steps_sgd_with_it() -> None:
    spec = (
        "network lin() {\n    input x: [3]\n    train {\n        optimizer = sgd\n"
        "        lr = 0.5\n        loss = mean_squared_error\n    }\n    return x -> dense(2)\n}\n"
    )
    model = cnndsl.compile(spec).build(dtype="float64")
    assert isinstance(model.optimizer, SGD) and model.optimizer.lr == 0.5
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    before = {k: np.array(v) for k, v in model.params.items()}
    _, grads = model.gradients(x, y)
    model.train_step(x, y)
    for key, g in grads.items():  # plain SGD: w <- w - lr * g
        np.testing.assert_allclose(model.params[key], before[key] - 0.5 * g, rtol=1e-12)


def test_spec_lr_applies_to_the_default_optimizer_and_to_a_named_one() -> None:
    model = build("        lr = 0.02")
    assert model.optimizer.name == "adam" and model.optimizer.lr == 0.02
    model.compile(optimizer="rmsprop")  # a bare name takes the spec's lr
    assert model.optimizer.name == "rmsprop" and model.optimizer.lr == 0.02
    model.compile(optimizer={"name": "sgd", "lr": 0.3})  # an optimizer stating its lr keeps it
    assert model.optimizer.lr == 0.3
    model.compile(optimizer=SGD(lr=0.4))
    assert model.optimizer.lr == 0.4


def test_explicit_lr_beats_the_spec_and_keeps_the_optimizer_state() -> None:
    x, y = data()
    model = build("        optimizer = sgd(lr=0.1, momentum=0.9)\n        epochs = 1")
    model.fit(x, y)
    steps = model.optimizer.iterations
    model.fit(x, y, lr=0.01)
    assert model.optimizer.lr == 0.01 and model.optimizer.config["momentum"] == 0.9
    assert model.optimizer.iterations == 2 * steps  # the momentum run goes on
    model.compile(optimizer="adam", lr=0.003)
    assert model.optimizer.name == "adam" and model.optimizer.lr == 0.003
    with pytest.raises(ModelError, match="lr: expected a number > 0"):
        model.compile(lr=-1.0)


# ---- loss, optimizer, metrics ----


def test_loss_optimizer_metrics_from_the_spec_and_from_fit() -> None:
    x, y = data()
    model = build(
        "        loss = categorical_crossentropy\n        optimizer = sgd(momentum=0.9)\n"
        "        metrics = [accuracy, top2]"
    )
    assert model.loss.name == "categorical_crossentropy"
    assert model.optimizer.config["momentum"] == 0.9 and model.optimizer.lr == 0.01
    history = model.fit(np.asarray(x), np.eye(3)[y], epochs=1)
    assert set(history.history) == {"loss", "accuracy", "top2"}
    history = model.fit(
        x,
        y,
        epochs=1,
        loss="sparse_categorical_crossentropy",
        optimizer="rmsprop",
        metrics=["top2"],
    )
    assert set(history.history) == {"loss", "top2"}
    assert history.params["loss"] == "sparse_categorical_crossentropy"
    assert history.params["optimizer"]["name"] == "rmsprop"


def test_unknown_names_fail_when_the_model_is_built_not_later() -> None:
    with pytest.raises(LossError, match="unknown metric 'acuracy'"):
        build("        metrics = [acuracy]")
    with pytest.raises(LossError, match="unknown loss 'msee'"):
        build("        loss = msee")
    with pytest.raises(LossError, match="unknown metric"):
        build().compile(metrics=["nope"])


# ---- batch, epochs, validation_split ----


def test_batch_and_epochs_from_the_spec_and_from_fit() -> None:
    x, y = data()
    model = build("        batch = 8\n        epochs = 2")
    seen = Batches()
    history = model.fit(x, y, callbacks=[seen])
    assert len(history.epoch) == 2 and seen.samples[:5] == [8, 16, 24, 32, 40]
    seen = Batches()
    history = model.fit(x, y, epochs=1, batch_size=np.int64(15), callbacks=[seen])
    assert len(history.epoch) == 1 and seen.samples == [15, 30, 40]


def test_validation_split_from_the_spec_and_from_fit() -> None:
    x, y = data()
    model = build("        validation_split = 0.25\n        batch = 8")
    seen = Batches()
    history = model.fit(x, y, callbacks=[seen])
    assert {"val_loss", "val_accuracy"} <= set(history.history)
    assert seen.samples[-1] == 30  # the last 10 of 40 samples are held out
    assert history.history["val_loss"][-1] == pytest.approx(
        model.evaluate(x[30:], y[30:])["loss"], rel=1e-6
    )
    history = model.fit(x, y, validation_split=0.0)  # explicit: none
    assert not any(k.startswith("val_") for k in history.history)
    seen = Batches()
    model.fit(x, y, validation_split=0.5, callbacks=[seen])
    assert seen.samples[-1] == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch: expected a whole number >= 1, not 0"),
        ({"epochs": -1}, "epochs: expected a whole number >= 0"),
        ({"epochs": 1.5}, "epochs: expected a whole number"),
        ({"validation_split": 1.0}, "validation_split: expected a fraction >= 0 and < 1"),
    ],
)
def test_fit_refuses_settings_out_of_range(kwargs: dict[str, Any], message: str) -> None:
    x, y = data()
    with pytest.raises(ModelError, match=re.escape(message)):
        build().fit(x, y, **kwargs)


def test_settings_that_fit_cannot_use_are_errors_there() -> None:
    x, y = data()
    model = build("        data = digits\n        seed = 2")
    for name in ("data", "seed"):
        with pytest.raises(TypeError, match=name):
            model.fit(x, y, **{name: 1})


# ---- seed ----


def test_seed_from_the_spec_equals_the_same_explicit_seed() -> None:
    from_spec = build("        seed = 7")
    explicit = build(seed=7)
    other = build("        seed = 7", seed=8)  # an explicit seed beats the spec's
    assert from_spec.seed == 7 and other.seed == 8
    for a, b, c in zip(
        from_spec.get_weights(), explicit.get_weights(), other.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
        if a.ndim > 1:
            assert not np.array_equal(a, c)
    with pytest.raises(ModelError, match="seed: expected a whole number >= 0"):
        build(seed=-1)


# ---- data ----


def test_data_is_the_spec_folders_path_or_a_built_in_name(tmp_path: Path) -> None:
    spec = tmp_path / "net.cnn"
    spec.write_text(classifier('        data = "train.npz"'))
    assert cnndsl.compile(spec).build().settings.data == str(tmp_path / "train.npz")
    assert build("        data = digits").settings.data == "digits"
    assert build().settings.data == "digits"


# ---- compile-time errors ----


@pytest.mark.parametrize(
    ("settings", "code", "message", "line"),
    [
        ("        epoch = 3", "E071", "did you mean 'epochs'", 4),
        ("        batch = 0", "E073", "expected a whole number >= 1, not 0", 4),
        ("        batch = 2.5", "E073", "expected a whole number >= 1", 4),
        ("        epochs = -1", "E073", "expected a whole number >= 0", 4),
        ("        lr = 0", "E073", "expected a number > 0", 4),
        ("        validation_split = 1", "E073", "a fraction >= 0 and < 1", 4),
        ("        seed = -3", "E073", "expected a whole number >= 0", 4),
        ("        batch = 8\n        batch = 16", "E073", "'batch' is given twice", 5),
        ("        optimizer = sgd(0.1)", "E073", "settings are named: sgd(lr=0.1)", 4),
        (
            "        optimizer = sgd(lr=0.1)\n        lr = 0.5",
            "E073",
            "learning rate is given twice",
            5,
        ),
        (
            "        optimizer = adam(learning_rate=0.1)\n        lr = 0.5",
            "E073",
            "as the optimizer's learning_rate=",
            5,
        ),
        ("        loss = 3", "E073", "loss must be a name", 4),
    ],
)
def test_wrong_settings_fail_compilation_at_their_line(
    settings: str, code: str, message: str, line: int
) -> None:
    with pytest.raises(CnnError) as info:
        cnndsl.compile(classifier(settings))
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == code and message in diagnostic.message
    assert diagnostic.span is not None and diagnostic.span.line == line


def test_a_second_train_section_is_an_error_and_one_per_branch_is_not() -> None:
    twice = classifier("        batch = 8").replace(
        "    return", "    train { epochs = 2 }\n    return"
    )
    with pytest.raises(CnnError, match="one `train {}` section") as info:
        cnndsl.compile(twice)
    assert info.value.diagnostics[0].code == "E070"
    branches = classifier().replace(
        "    return",
        "    if true { train { batch = 4 } } else { train { batch = 64 } }\n    return",
    )
    assert cnndsl.compile(branches).build().batch_size == 4
