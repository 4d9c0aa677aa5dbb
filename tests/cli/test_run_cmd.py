"""cnndsl run: training from the command line, its flags and its errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cnndsl.frontend.grammar import resource_path


def test_cli_run_trains_saves_and_writes_history(tmp_path: Any, capsys: Any) -> None:
    from cnndsl.cli import main

    weights, history = tmp_path / "w.npz", tmp_path / "h.json"
    argv = ["run", "--epochs", "2", "--quiet", "--save", str(weights), "--history", str(history)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "epoch 1/2" in err and "epoch 2/2" in err and "test loss" in out
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
    assert "val_accuracy" in captured.err and "test loss" in captured.out


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


# ---- the train section: every setting from the spec, every flag over it ----

SETTINGS_NET = """network tiny() {
    input x: [4, 4, 1]
    train {
%s
    }
    return x -> flatten -> dense(6, activation=relu) -> dense(3, activation=softmax)
}
"""
BINARY_NET = SETTINGS_NET.replace("dense(3, activation=softmax)", "dense(1, activation=sigmoid)")


def _write_data(path: Any, n: int = 48, classes: int = 3) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32) + y[:, None, None, None]
    np.savez(path, x=x, y=y)


def _history(path: Any) -> dict[str, Any]:
    import json

    return dict(json.loads(path.read_text()))


def test_cli_run_takes_every_setting_from_the_train_section(
    tmp_path: Any, capsys: Any, monkeypatch: Any
) -> None:
    from cnndsl.cli import main

    (tmp_path / "spec").mkdir()
    _write_data(tmp_path / "spec" / "train.npz")
    spec = tmp_path / "spec" / "tiny.cnn"
    settings = (
        '        data = "train.npz"\n        loss = sparse_categorical_crossentropy\n'
        "        optimizer = sgd(momentum=0.5)\n        lr = 0.05\n"
        "        metrics = [top2]\n        batch = 8\n        epochs = 2\n"
        "        validation_split = 0.25\n        seed = 3"
    )
    spec.write_text(SETTINGS_NET % settings)
    monkeypatch.chdir(tmp_path)  # data = "train.npz" is read beside the spec, not here
    history = tmp_path / "h.json"
    assert main(["run", str(spec), "-q", "--history", str(history), "--test-split", "0.25"]) == 0
    err = capsys.readouterr().err
    assert "training: sparse_categorical_crossentropy, batch 8, 2 epochs" in err
    assert "optimizer: sgd(lr=0.05" in err
    saved = _history(history)
    params = saved["params"]
    assert params["optimizer"]["lr"] == 0.05 and params["optimizer"]["momentum"] == 0.5
    assert (params["batch_size"], params["epochs"]) == (8, 2)
    assert params["loss"] == "sparse_categorical_crossentropy" and params["metrics"] == ["top2"]
    assert set(saved["history"]) == {"loss", "top2", "val_loss", "val_top2"}
    assert saved["data"].endswith("train.npz")


def test_cli_run_seed_from_the_spec_gives_the_weights_of_the_flag(
    tmp_path: Any, capsys: Any
) -> None:
    from cnndsl.cli import main

    _write_data(tmp_path / "train.npz")
    seeded, plain = tmp_path / "seeded.cnn", tmp_path / "plain.cnn"
    seeded.write_text(SETTINGS_NET % '        data = "train.npz"\n        seed = 3')
    plain.write_text(SETTINGS_NET % '        data = "train.npz"')

    def weights(*argv: str) -> dict[str, np.ndarray]:
        out = tmp_path / "w.npz"
        assert main(["run", *argv, "-q", "--epochs", "1", "--save", str(out)]) == 0
        with np.load(out, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    from_spec = weights(str(seeded))
    from_flag = weights(str(plain), "--seed", "3")
    default = weights(str(plain))
    over_spec = weights(str(seeded), "--seed", "4")
    for key, value in from_spec.items():
        np.testing.assert_array_equal(value, from_flag[key])
    kernels = [k for k in from_spec if k.endswith("kernel")]
    assert kernels and all(not np.array_equal(from_spec[k], default[k]) for k in kernels)
    assert all(not np.array_equal(from_spec[k], over_spec[k]) for k in kernels)
    capsys.readouterr()


def test_cli_run_flags_beat_every_setting_of_the_spec(tmp_path: Any, capsys: Any) -> None:
    from cnndsl.cli import main

    _write_data(tmp_path / "other.npz", classes=2)
    spec = tmp_path / "tiny.cnn"
    settings = (
        '        data = "missing.npz"\n        loss = binary_crossentropy\n'
        "        optimizer = sgd(momentum=0.5)\n        lr = 0.5\n        metrics = [accuracy]\n"
        "        batch = 8\n        epochs = 3\n        validation_split = 0.25"
    )
    spec.write_text(BINARY_NET % settings)
    history, data = tmp_path / "h.json", str(tmp_path / "other.npz")
    common = ["run", str(spec), "-q", "--history", str(history), "--data", data]
    flags = (
        "--lr 0.01 --loss mse --metrics binary_crossentropy,accuracy --batch-size 4 --epochs 1"
        " --validation-split 0"
    )
    assert main([*common, *flags.split()]) == 0
    capsys.readouterr()
    saved = _history(history)
    params = saved["params"]
    assert params["optimizer"] == {
        "name": "sgd",
        "lr": 0.01,
        "decay": 0.0,
        "momentum": 0.5,
        "nesterov": False,
    }
    assert (params["batch_size"], params["epochs"], params["loss"]) == (
        4,
        1,
        "mean_squared_error",
    )
    assert params["metrics"] == ["binary_crossentropy", "accuracy"]
    assert not any(k.startswith("val_") for k in saved["history"])
    # --optimizer naming another optimizer starts it from its own defaults, at the spec's lr.
    assert main([*common, "--epochs", "1", "--optimizer", "adam"]) == 0
    capsys.readouterr()
    assert _history(history)["params"]["optimizer"]["lr"] == 0.5
    assert _history(history)["params"]["optimizer"]["name"] == "adam"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # NOTE: numbers out of range are usage errors (exit 2): tests/cli/test_run_options.py
        (["--metrics", "acuracy"], "error: unknown metric 'acuracy'"),
        (["--loss", "msee"], "error: unknown loss 'msee'"),
    ],
)
def test_cli_run_refuses_bad_training_flags(argv: list[str], message: str, capsys: Any) -> None:
    from cnndsl.cli import main

    assert main(["run", "--epochs", "1", "-q", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
