"""Outputs the command line must not destroy, work it must not lose, and interrupts.

Every output (`run --save`, `--history`, `plot -o`) is checked before any work;
a path that is not a regular file is never written through; files are written
atomically; weights that cannot be saved are kept elsewhere; a diverged run
saves nothing and exits 1; Ctrl-C at any moment exits 130 without a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnndsl.cli import main
from cnndsl.formats import files
from cnndsl.formats.files import UnwritableOutput, check_output_path, write_atomic


def run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# ---- the one rule for outputs ----


def test_a_new_or_regular_file_in_a_writable_folder_is_accepted(tmp_path: Path) -> None:
    check_output_path(tmp_path / "new.json")
    (tmp_path / "old.json").write_text("{}")
    check_output_path(tmp_path / "old.json")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "does not exist"),  # its folder is missing
        (lambda p: p.mkdir(), "a folder"),
        (lambda p: os.mkfifo(p), "FIFO"),
        (lambda p: p.symlink_to(p.parent / "target"), "a symbolic link"),
    ],
    ids=["missing-folder", "folder", "fifo", "symlink"],
)
def test_outputs_that_are_not_regular_files_are_refused(
    tmp_path: Path, make: Any, reason: str
) -> None:
    path = tmp_path / "out.json"
    if reason == "does not exist":
        path = tmp_path / "missing" / "out.json"
    else:
        make(path)
    with pytest.raises(UnwritableOutput, match=reason):
        check_output_path(path)


def test_a_device_is_refused() -> None:
    with pytest.raises(UnwritableOutput, match="character device"):
        check_output_path("/dev/null")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UnwritableOutput, match="not writable"):
            check_output_path(folder / "w.npz")
    finally:
        folder.chmod(0o700)


def test_write_atomic_replaces_and_a_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    path = tmp_path / "h.json"
    write_atomic(path, "first\n")
    write_atomic(path, "second\n")
    assert path.read_text() == "second\n"

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, "third\n")
    assert path.read_text() == "second\n"  # not an empty file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]  # no temp file left


# ---- cnndsl run ----


@pytest.mark.parametrize("option", ["--save", "--history"])
def test_run_refuses_a_bad_output_before_training(option: str, tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "missing" / "out"
    code, _, err = run(["run", "--epochs", "1", "-q", option, str(path)], capsys)
    assert code == 1 and f"error: {option} cannot write" in err and "does not exist" in err
    assert "epoch 1/1" not in err  # refused before the first step


def test_run_never_writes_through_a_device_or_a_link(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(["run", "--epochs", "1", "-q", "--save", "/dev/null"], capsys)
    assert code == 1 and "character device" in err
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "h.json"
    link.symlink_to(target)
    code, _, err = run(["run", "--epochs", "1", "-q", "--history", str(link)], capsys)
    assert code == 1 and "symbolic link" in err
    assert target.read_text() == "keep me" and link.is_symlink()


def test_run_keeps_the_weights_when_saving_fails_at_the_end(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from cnndsl.training.model import Model

    wanted = str(tmp_path / "w.npz")
    original = Model.save

    def flaky(self: Any, path: Any) -> None:
        if str(path) == wanted:  # the disk fills up just as the run ends
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, path)

    monkeypatch.setattr(Model, "save", flaky)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    history = tmp_path / "h.json"
    code, _, err = run(
        ["run", "--epochs", "1", "-q", "--save", wanted, "--history", str(history)], capsys
    )
    assert code == 1 and "No space left on device" in err and "kept in" in err
    kept = err.split("kept in ")[1].split(":")[0]
    assert Path(kept).parent == tmp_path
    arrays = np.load(kept)
    weights = [k for k in arrays.files if ":" in k]  # 'layer:weight'; the class names aside
    assert weights and all(np.isfinite(arrays[k]).all() for k in weights)


def test_run_writes_the_history_atomically_over_an_old_one(tmp_path: Path, capsys: Any) -> None:
    history = tmp_path / "h.json"
    history.write_text("old")
    code, _, _ = run(["run", "--epochs", "1", "-q", "--history", str(history)], capsys)
    assert code == 0 and len(json.loads(history.read_text())["history"]["loss"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


def test_a_diverged_run_saves_nothing_and_exits_1(tmp_path: Path, capsys: Any) -> None:
    # SGD at 1e6 sends batchnorm's moving variances to infinity while the loss stays finite.
    weights = tmp_path / "w.npz"
    argv = ["run", "--epochs", "1", "-q", "--optimizer", "sgd", "--lr", "1e6"]
    code, _, err = run([*argv, "--save", str(weights)], capsys)
    assert code == 1 and "training diverged" in err and "moving_variance" in err
    assert not weights.exists()


def test_an_exploding_loss_is_warned_about_once(capsys: Any) -> None:
    argv = ["run", "--epochs", "2", "-q", "--optimizer", "adam", "--lr", "1e6"]
    _, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if "the training is diverging" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: the loss grew")
    assert "in layer '" in lines[0]


# ---- cnndsl plot ----


@pytest.fixture
def history_file(tmp_path: Path) -> Path:
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"loss": [1.0, 0.5]}))
    return path


def test_plot_into_a_missing_folder_or_onto_a_folder(
    tmp_path: Path, history_file: Path, capsys: Any
) -> None:
    code, _, err = run(["plot", str(history_file), "-o", str(tmp_path / "no" / "c.png")], capsys)
    assert code == 1 and "does not exist" in err
    (tmp_path / "d.png").mkdir()
    code, _, err = run(["plot", str(history_file), "-o", str(tmp_path / "d.png")], capsys)
    assert code == 1 and "a folder, not a regular file" in err
    code, _, err = run(["plot", "zoo.lenet5", "-o", str(tmp_path / "no" / "n.svg")], capsys)
    assert code == 1 and "does not exist" in err


def test_plot_an_unknown_colour_map(tmp_path: Path, capsys: Any) -> None:
    argv = ["plot", "zoo.lenet5", "--feature-maps", "x.png", "--layer", "C1", "--cmap", "nosuch"]
    code, _, err = run([*argv, "-o", str(tmp_path / "m.png")], capsys)
    assert code == 1 and "unknown colour map 'nosuch'" in err


def test_plot_a_history_nested_100k_deep(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run(["plot", str(path), "-o", str(tmp_path / "c.png")], capsys)
    assert code == 1 and "nests too deeply" in err


def test_plot_still_draws_a_history(tmp_path: Path, history_file: Path, capsys: Any) -> None:
    out = tmp_path / "c.png"
    code, _, _ = run(["plot", str(history_file), "-o", str(out)], capsys)
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"


# ---- Ctrl-C ----


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.5])
def test_ctrl_c_early_exits_130_without_a_traceback(delay: float) -> None:
    # Within the first 0.3 s the interrupt lands in the imports (NumPy, the compiler).
    process = subprocess.Popen(
        [sys.executable, "-m", "cnndsl", "run", "--epochs", "50", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


def test_a_test_split_that_leaves_no_training_set(capsys: Any) -> None:
    code, _, err = run(["run", "--epochs", "1", "-q", "--test-split", "0.9999"], capsys)
    assert code == 1 and "leaves the training set empty" in err
