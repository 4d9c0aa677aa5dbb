"""The Python API next to Keras': verbose, weights by name, gradients without side effects,
logits, top-k accuracy, the batchnorm-momentum warning and labels a loss cannot take."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.fit import ShortStatisticsWarning
from cnndsl.training.losses import LossError
from cnndsl.training.model import ModelError

NET = """
network tiny(classes=5, momentum=0.99) {
    input image: [6, 6, 1]
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(momentum=momentum, name="bn")
        -> relu -> flatten -> dense(classes, activation=softmax, name="head")
}
"""


def data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = rng.random((n, 6, 6, 1), dtype=np.float32) + 0.2 * y[:, None, None, None]
    return x.astype(np.float32), y


def build(dtype: str = "float32", **params: Any) -> Any:
    return cnndsl.compile(NET, **params).build(seed=0, dtype=dtype)


# ---- verbose ----


def test_fit_is_quiet_by_default_off_a_terminal(capsys: Any) -> None:
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        build().fit(x, y, epochs=2, batch_size=16)
        build().fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [1, 2])
def test_fit_verbose_prints_a_line_per_epoch_on_stderr(verbose: int, capsys: Any) -> None:
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        build().fit(x, y, epochs=2, batch_size=16, verbose=verbose, validation_split=0.25)
    out, err = capsys.readouterr()
    assert out == ""  # the bar is not drawn off a terminal; the lines go to stderr
    lines = err.splitlines()
    assert len(lines) == 2, err
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(
            rf"epoch {epoch}/2  loss \d\.\d{{4}}  accuracy \d\.\d{{4}}  val_loss \d\.\d{{4}}"
            r"  val_accuracy \d\.\d{4}  \(\d+\.\d s, [\d,]+ samples/s\)",
            line,
        ), line


def test_fit_verbose_1_draws_the_bar_on_a_terminal(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        build().fit(x, y, epochs=1, batch_size=16)  # "auto": 1 on a terminal
    err = capsys.readouterr().err
    assert "36/48" in err or "48/48" in err  # the bar's count and total
    assert "epoch 1/1  loss" in err  # and the epoch's line after it


@pytest.mark.parametrize("verbose", [3, -1, "yes", True])
def test_fit_refuses_an_unknown_verbose(verbose: Any) -> None:
    x, y = data()
    with pytest.raises(ModelError, match="verbose must be 0, 1, 2 or 'auto'"):
        build().fit(x, y, epochs=1, verbose=verbose)


# ---- weights by name ----


def test_weights_by_name_are_the_saved_keys(tmp_path: Any) -> None:
    model = build()
    named = model.weights
    assert list(named) == [
        "c1:kernel",
        "c1:bias",
        "bn:gamma",
        "bn:beta",
        "bn:moving_mean",
        "bn:moving_variance",
        "head:kernel",
        "head:bias",
    ]
    for (key, value), listed in zip(named.items(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(value, listed, err_msg=key)
    assert named["c1:kernel"].shape == (3, 3, 1, 4)  # Keras' layout
    model.save(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as saved:
        for key, value in model.named_weights().items():
            np.testing.assert_array_equal(saved[key], value)
    named["c1:kernel"][...] = 7  # a copy: the model is unchanged
    assert not np.any(model.weights["c1:kernel"] == 7)


# ---- gradients: no update ----


def test_gradients_leave_the_moving_statistics_alone() -> None:
    model = build()
    x, y = data(16)
    before = model.weights
    loss_1, grads_1 = model.gradients(x, y, training=True)
    after = model.weights
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    loss_2, grads_2 = model.gradients(x, y, training=True)  # the same, as nothing moved
    assert loss_1 == loss_2
    for key in grads_1:
        np.testing.assert_array_equal(grads_1[key], grads_2[key], err_msg=key)
    assert model.moving_updates == {"bn": 0}


def test_training_steps_still_move_the_moving_statistics() -> None:
    model = build()
    x, y = data(16)
    start = model.weights["bn:moving_mean"]
    model.train_step(x, y)
    assert not np.array_equal(model.weights["bn:moving_mean"], start)
    assert model.moving_updates == {"bn": 1}


# ---- logits ----


def test_predict_logits_is_the_last_layer_before_its_softmax() -> None:
    model = build("float64")
    x, _ = data(10)
    logits = model.predict(x, logits=True)
    probs = model.predict(x)
    # By the definition: the dense layer on the features before it, no activation.
    w = model.weights
    features = x.astype(np.float64)
    conv = np.zeros((10, 6, 6, 4))
    padded = np.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for i in range(6):
        for j in range(6):
            patch = padded[:, i : i + 3, j : j + 3, :]
            conv[:, i, j, :] = np.einsum("nhwc,hwck->nk", patch, w["c1:kernel"]) + w["c1:bias"]
    scale = w["bn:gamma"] / np.sqrt(w["bn:moving_variance"] + 1e-3)
    normed = np.maximum((conv - w["bn:moving_mean"]) * scale + w["bn:beta"], 0)
    expected = normed.reshape(10, -1) @ w["head:kernel"] + w["head:bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-10)
    assert not np.allclose(logits.sum(axis=1), 1)


# ---- top-k accuracy ----


@pytest.mark.parametrize(
    ("name", "k"),
    [
        ("top5", 5),
        ("top2", 2),
        ("top_k_categorical_accuracy", 5),
        ("sparse_top_k_categorical_accuracy", 5),
        ("top_3_accuracy", 3),
    ],
)
def test_evaluate_reports_top_k_accuracy(name: str, k: int) -> None:
    model = build(classes=8)
    x, y = data(40)
    result = model.evaluate(x, y, metrics=[name])
    p = model.predict(x)
    # by the definition: fewer than k classes score strictly higher than the label
    higher = (p > p[np.arange(len(y)), y][:, None]).sum(axis=1)
    assert result[name] == pytest.approx(float(np.mean(higher < k)))
    model.compile(metrics=["accuracy", name])
    assert set(model.evaluate(x, y)) == {"loss", "accuracy", name}


def test_top_k_metrics_reach_the_command_line(tmp_path: Any, capsys: Any) -> None:
    from cnndsl.cli import main

    argv = ["run", "--epochs", "1", "-q", "--metrics", "accuracy,top5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        assert main(argv) == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(r"test loss \d\.\d{4}, accuracy \d\.\d{4}, top5 \d\.\d{4}\n", out), out
    assert re.search(r"epoch 1/1  loss \d\.\d{4}  accuracy \d\.\d{4}  top5 \d\.\d{4}", err)


# ---- the batchnorm momentum warning ----


def test_short_runs_warn_that_the_moving_statistics_are_mostly_initial() -> None:
    model = build()
    x, y = data(48)
    with pytest.warns(ShortStatisticsWarning) as caught:
        model.fit(x, y, epochs=2, batch_size=16)  # 6 updates; 0.99 needs 300
    (message,) = [str(w.message) for w in caught]
    assert "batchnorm bn:" in message and "6 updates" in message
    assert "momentum 0.99 (about 300 needed)" in message
    assert "momentum=0.5 (1 - 3/6)" in message


def test_no_warning_when_the_momentum_fits_the_run() -> None:
    model = build(momentum=0.5)  # needs 6 updates
    x, y = data(48)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortStatisticsWarning)
        model.fit(x, y, epochs=2, batch_size=16)
    assert model.moving_updates == {"bn": 6}


def test_no_warning_for_statistics_loaded_from_a_file(tmp_path: Any) -> None:
    trained = build(momentum=0.5)
    x, y = data(48)
    trained.fit(x, y, epochs=2, batch_size=16)
    trained.save(tmp_path / "w.npz")
    model = build()
    model.load(tmp_path / "w.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortStatisticsWarning)
        model.fit(x, y, epochs=1, batch_size=16)


def test_the_command_line_shows_the_warning(capsys: Any) -> None:
    from cnndsl.cli import main

    assert main(["run", "--epochs", "1", "-q", "--batch-size", "256"]) == 0
    err = capsys.readouterr().err
    assert re.search(
        r"^warning: batchnorm batchnorm_1, batchnorm_2, batchnorm_3: the moving statistics"
        r" had 6 updates, too few for momentum 0.99 .* set momentum=0.5 \(1 - 3/6\)$",
        err,
        re.MULTILINE,
    ), err


# ---- labels a loss cannot take ----


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mean_squared_error"])
def test_class_indices_with_a_loss_for_one_hot_labels_name_the_fix(loss: str) -> None:
    model = build()
    x, y = data(16)
    with pytest.raises(LossError, match="use sparse_categorical_crossentropy, or one-hot"):
        model.fit(x, y, epochs=1, loss=loss)
    with pytest.raises(LossError, match=r"the labels are \[\] per sample"):
        model.evaluate(x, y, loss=loss)
    onehot = np.eye(5, dtype=np.float32)[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShortStatisticsWarning)
        model.fit(x, onehot, epochs=1, loss=loss)  # what it takes


def test_one_hot_labels_with_the_sparse_loss_name_the_fix() -> None:
    model = build()
    x, y = data(16)
    with pytest.raises(LossError, match=r"one-hot\? use categorical_crossentropy"):
        model.fit(x, np.eye(5)[y], epochs=1, loss="sparse_categorical_crossentropy")


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_the_command_line_reports_the_label_mismatch(loss: str, capsys: Any) -> None:
    from cnndsl.cli import main

    assert main(["run", "--epochs", "1", "-q", "--loss", loss]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "use sparse_categorical_crossentropy" in err
    assert "Traceback" not in err
