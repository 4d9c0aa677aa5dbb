"""The U-Net example: its data generator, and training it per pixel from `cnndsl run`."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "segmentation"


def make_data() -> Any:
    spec = importlib.util.spec_from_file_location("make_data", EXAMPLE / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_masks_mark_the_bright_shapes() -> None:
    x, y = make_data().shapes_on_canvas(count=100, size=16, seed=1)
    assert x.shape == (100, 16, 16, 1) and x.dtype == np.float32
    assert y.shape == (100, 16, 16) and y.dtype == np.int64
    assert set(np.unique(y)) == {0, 1, 2}
    assert x.min() >= 0 and x.max() <= 1
    pixels = x[..., 0]
    # shapes are drawn at brightness 0.5..1 over noise of deviation 0.1 around 0
    assert pixels[y == 0].mean() < 0.1 and pixels[y > 0].mean() > 0.6
    again, _ = make_data().shapes_on_canvas(count=100, size=16, seed=1)
    np.testing.assert_array_equal(x, again)


def test_a_lone_square_is_square_and_a_lone_disc_is_round() -> None:
    _, y = make_data().shapes_on_canvas(count=300, size=16, seed=2)
    squares = discs = 0
    for mask in y:
        kinds = set(np.unique(mask)) - {0}
        if len(kinds) != 1:
            continue
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        if kinds == {1} and len(rows) == box:  # overlapping squares need not fill their box
            squares += 1
        if kinds == {2} and len(rows) < box:  # a disc never fills its box
            discs += 1
    assert squares > 10 and discs > 10


def test_unet_trains_per_pixel_from_cnndsl_run(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    x, y = make_data().shapes_on_canvas(count=400, size=16, seed=0)
    data = tmp_path / "shapes.npz"
    np.savez(data, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    history = tmp_path / "h.json"
    argv = ["run", str(EXAMPLE / "unet.cnn"), "--data", str(data), "--set", "size=16"]
    argv += ["--epochs", "4", "--batch-size", "32", "--quiet", "--history", str(history)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "300 training, 100 test samples" in err
    assert "epoch 4/4" in err and " accuracy " in err
    saved = json.loads(history.read_text())
    assert len(saved["history"]["accuracy"]) == 4
    # accuracy counts pixels: calling every pixel background scores this much
    background = float((y[300:] == 0).mean())
    assert 0.6 < background < 0.9
    assert saved["test"]["accuracy"] > background + 0.05
    assert f"accuracy {saved['test']['accuracy']:.4f}" in out


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((20, 8, 8), np.int64), r"labels have shape \[16, 8, 8\].*\['N', 16, 16\]"),
        (np.zeros(20, np.int64), r"labels have shape \[16\].*\['N', 16, 16\]"),
        (np.full((20, 16, 16), 3), "label 3 is out of range for a network with 3 classes"),
    ],
)
def test_per_pixel_labels_that_do_not_fit_are_refused(
    tmp_path: Path, capsys: Any, labels: np.ndarray, message: str
) -> None:
    from cnndsl.cli import main

    data = tmp_path / "bad.npz"
    np.savez(data, x=np.zeros((20, 16, 16, 1), np.float32), y=labels)
    argv = ["run", str(EXAMPLE / "unet.cnn"), "--data", str(data), "--set", "size=16", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bad.npz: training label") and "Traceback" not in err
    assert re.search(message, err), err
