"""cnndsl run with a network of several outputs: data per output, each output's metrics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "localization"


def make_data() -> Any:
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_canvases_hold_each_digit_inside_its_box() -> None:
    x, classes, boxes = make_data().digits_on_canvas(size=16, copies=1, seed=3)
    assert x.shape == (1797, 16, 16, 1) and classes.shape == (1797,)
    for canvas, box in zip(x[:50, :, :, 0], boxes[:50] * 16, strict=True):
        top, left, bottom, right = box.round().astype(int)
        assert bottom - top == 8 and right - left == 8
        inside = canvas[top:bottom, left:right].sum()
        assert inside == pytest.approx(canvas.sum()) and inside > 0


def test_localization_example_trains_from_cnndsl_run(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    x, classes, boxes = make_data().digits_on_canvas(copies=1)
    data = tmp_path / "canvas.npz"
    np.savez(data, x=x[:300], y_classes=classes[:300], y_box=boxes[:300])
    history = tmp_path / "h.json"
    argv = [
        "run",
        str(EXAMPLE / "localization.cnn"),
        "--data",
        str(data),
        "--epochs",
        "1",
        "--quiet",
        "--history",
        str(history),
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "classes sparse_categorical_crossentropy, box mean_squared_error × 20" in err
    epoch = next(line for line in err.splitlines() if line.startswith("epoch 1/1"))
    for key in ("loss", "classes_loss", "box_loss", "classes_accuracy"):
        assert f" {key} " in epoch
    test = out.strip().splitlines()[-1]
    assert test.startswith("test loss") and "box_loss" in test and "classes_accuracy" in test
    saved = json.loads(history.read_text())
    assert saved["params"]["loss_weights"] == {"classes": 1.0, "box": 20.0}
    parts = saved["test"]["classes_loss"] + 20 * saved["test"]["box_loss"]
    assert saved["test"]["loss"] == pytest.approx(parts, rel=1e-5)


def test_numbered_label_arrays_and_missing_ones(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    x, classes, boxes = make_data().digits_on_canvas(copies=1)
    numbered = tmp_path / "numbered.npz"
    np.savez(numbered, x=x[:100], y0=classes[:100], y1=boxes[:100])
    spec = str(EXAMPLE / "localization.cnn")
    assert main(["run", spec, "--data", str(numbered), "--epochs", "1", "--quiet"]) == 0
    capsys.readouterr()
    missing = tmp_path / "missing.npz"
    np.savez(missing, x=x[:100], y=classes[:100])
    assert main(["run", spec, "--data", str(missing), "--epochs", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "one label array per output" in err and "y_classes=..., y_box=..." in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=x[:100], y_classes=classes[:100] + 10, y_box=boxes[:100])
    assert main(["run", spec, "--data", str(wrong), "--epochs", "1", "--quiet"]) == 1
    assert "training labels" in capsys.readouterr().err
