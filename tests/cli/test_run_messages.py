"""What `cnndsl run` tells a new user: the data-shape fix, where output goes, the header."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cnndsl.cli import main

SIZED = """
network sized(classes=10, size=12, width=4) {
    input image: [size, size, %d]
    return image -> conv(width, 3, padding=same) -> flatten -> dense(classes, activation=softmax)
}
"""


def test_a_network_without_a_size_parameter_is_not_told_to_set_one(capsys: Any) -> None:
    assert main(["run", "zoo.fashion_mnist", "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "digits: samples have shape [8, 8, 1] but the network's input is [28, 28, 1]" in err
    assert "--set" not in err
    assert "use data of shape [28, 28, 1] (this network has no parameter for its input" in err


def test_a_network_with_a_size_parameter_is_told_to_set_it(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "sized.cnn"
    spec.write_text(SIZED % 1)
    assert main(["run", str(spec), "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    # width=4 is a whole-number parameter too, but not the input's size
    assert err.rstrip().endswith("change the network's input size (--set size=8)"), err
    assert main(["run", str(spec), "--epochs", "1", "-q", "--set", "size=8"]) == 0
    capsys.readouterr()
    spec.write_text(SIZED % 3)  # three channels: no size fixes that
    assert main(["run", str(spec), "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "use data of shape [12, 12, 3] (3 channels)" in err and "--set" not in err


def test_stdout_holds_only_results_when_it_is_not_a_terminal(tmp_path: Path) -> None:
    weights = tmp_path / "w.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    done = subprocess.run(
        [sys.executable, "-m", "cnndsl", "run", "--epochs", "2", "--save", str(weights)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"test loss \d\.\d{4}, accuracy \d\.\d{4}\n", done.stdout), done.stdout
    assert "epoch 1/2  loss" in done.stderr and "epoch 2/2  loss" in done.stderr
    assert f"saved weights to {weights}" in done.stderr


def test_help_says_where_progress_and_results_go(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Progress (the bar, one line per epoch, notes) goes to stderr" in text
    assert "results (test metrics, predictions) to stdout" in text


def test_the_header_fits_in_lines_not_one(capsys: Any) -> None:
    assert main(["run", "--epochs", "1", "-q", "--batch-size", "64"]) == 0
    header = capsys.readouterr().err.splitlines()[:3]
    assert header[0] == (
        "digits: 45,546 parameters (45,290 trainable); data digits: 1437 training, 360 test samples"
    )
    assert header[1] == "training: sparse_categorical_crossentropy, batch 64, 1 epoch"
    assert header[2].startswith("optimizer: adam(lr=")


@pytest.mark.parametrize(
    "script", ["examples/fashion_mnist/train_idx.py", "examples/transfer_learning/transfer.py"]
)
def test_the_examples_do_not_name_a_flag_they_lack(script: str, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    missing = tmp_path / "missing"
    done = subprocess.run(
        [sys.executable, str(root / script), str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and f"error: {missing}" in done.stderr, done.stderr
    assert "--data" not in done.stderr and "Traceback" not in done.stderr
