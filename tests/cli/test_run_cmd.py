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
