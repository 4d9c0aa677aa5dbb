"""What `cnndsl run` prints: the progress bar on a terminal (and nothing of it elsewhere),
and predictions that name the right digit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnndsl.cli import main
from cnndsl.formats.data import load_data

EPOCH_LINE = re.compile(
    r"epoch [12]/2  loss \d+\.\d{4}  accuracy \d\.\d{4}  \(\d+\.\d s, [\d,]+ samples/s\)"
)


def run_two_epochs(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(["run", "--epochs", "2", "--batch-size", "128"]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def check_results(out: str, err: str) -> None:
    # stdout holds the results only; the epoch lines are progress, on stderr
    lines = out.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"test loss \d+\.\d{4}, accuracy \d\.\d{4}", lines[0])
    epochs = [line for line in err.splitlines() if EPOCH_LINE.search(line)]
    assert len(epochs) == 2 and all(EPOCH_LINE.search(line) for line in epochs), err


def test_without_a_terminal_no_bar_is_drawn(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    out, err = run_two_epochs(capsys)
    check_results(out, err)
    # stderr holds the lines describing the run and one per epoch: no bar, no control sequences
    # (and a warning: 24 steps are too few for the batchnorm momentum of 0.99)
    lines = [line for line in err.splitlines() if not line.startswith("warning: batchnorm")]
    assert len(lines) == 5 and lines[1].endswith(" 2 epochs"), err
    assert all(EPOCH_LINE.fullmatch(line) for line in lines[3:]), err
    assert err.startswith("digits: 45,546 parameters (45,290 trainable); data digits: 1437")
    assert "\x1b" not in err and "\r" not in err and "ETA" not in err


@pytest.mark.parametrize("columns", [160, 80])
def test_on_a_terminal_the_bar_shows_progress_and_is_erased(
    columns: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: draw as on a terminal
    monkeypatch.setenv("COLUMNS", str(columns))
    out, err = run_two_epochs(capsys)
    check_results(out, err)  # the bar never reaches stdout
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)
    for epoch in (1, 2):
        # the last frame of each epoch: every sample done, the metrics so far and the rate
        frames = [f for f in plain.split("\r") if f.startswith(f"epoch {epoch}/2 ") and "ETA" in f]
        assert frames, plain
        last = frames[-1].rstrip("\n")
        # the count and its total stay visible at 80 columns; the metrics give way first
        assert "1437/1437" in last and len(last) < columns, last
        if columns > 100:
            assert re.search(r"loss \d+\.\d{4}  accuracy \d\.\d{4}  [\d,]+ samples/s", last)
        else:
            assert re.search(r"━ ETA \d+:\d\d:\d\d loss \d+\.\d{4}", last), last
        # transient: the bar is erased before the epoch's line is printed
        assert re.search(rf"\x1b\[2Kepoch {epoch}/2  loss", err), err


def test_predict_names_the_right_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 images of the fixed test split (never trained on), written as 8-bit PNGs
    ds = load_data("digits", (8, 8, 1), 10)
    images = []
    for i in range(20):
        path = tmp_path / f"test{i}.png"
        Image.fromarray(np.rint(ds.x_test[i, ..., 0] * 255).astype(np.uint8)).save(path)
        images.append(str(path))
    truth = ds.y_test[:20].tolist()
    weights = tmp_path / "w.npz"
    argv = ["run", "--epochs", "6", "--batch-size", "32", "-q", "--save", str(weights)]
    assert main([*argv, "--predict", *images]) == 0
    after_training = predictions(capsys.readouterr().out, images)
    assert main(["run", "--load", str(weights), "--predict", *images]) == 0
    loaded = predictions(capsys.readouterr().out, images)
    assert loaded == after_training
    right = sum(top[0][0] == str(label) for top, label in zip(loaded, truth, strict=True))
    assert right >= 17, (right, truth, loaded)  # ~93% on the test split after 6 epochs
    for top in loaded:
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001
        assert len({name for name, _ in top}) == 3  # --top-k 3 by default


def predictions(out: str, images: list[str]) -> list[list[tuple[str, float]]]:
    """Per image, its (class, probability) pairs in the order printed."""
    lines = [line for line in out.splitlines() if line.startswith(tuple(images))]
    assert [line.split(": ")[0] for line in lines] == images
    return [
        [(m[0], float(m[1])) for m in re.findall(r"(\w+) \((\d\.\d{3})\)", line.split(": ", 1)[1])]
        for line in lines
    ]
