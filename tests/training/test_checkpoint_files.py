"""Checkpoint files and folders: every bad checkpoint falls back, a folder has one writer.

A case per item of docs/reliability.md: metadata that parses but is wrong
(a field missing, a wrong type, JSON nested 100,000 deep, an epoch of 1e999,
a fingerprint that does not hash to its spec_hash), arrays that do not fit
(optimizer slots of another shape or dtype, NaN weights or slots, a sample
order outside the data), a zip member that is not `.npy`, a FIFO, an odd
name (`checkpoint-²³.npz`); the folder's lock (a second run refused while the
first holds it, a dead run's lock taken over with a note, only dead writers'
temporary files removed); a read-only folder reported before any work.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training import checkpoint
from cnndsl.training.checkpoint import (
    LOCK_NAME,
    TEMP_PREFIX,
    Checkpointer,
    CheckpointWarning,
    check_checkpoint_folder,
)
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    train {
        optimizer = adam(lr=0.01)
        batch = 8
        epochs = 2
    }
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> maxpool(2) -> flatten -> dense(classes, activation=softmax, name="head")
}
"""
OLDER, NEWEST = "checkpoint-000000004.npz", "checkpoint-000000008.npz"


def toy(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 6, 6, 1), dtype=np.float32) + (0.3 * y[:, None, None, None])
    return x.astype(np.float32), y


def build() -> Any:
    return cnndsl.compile(TINY).build(seed=1)


def fit(model: Any, folder: Path, **kw: Any) -> Any:
    x, y = toy()
    return model.fit(x, y, batch_size=8, checkpoint_dir=folder, **kw)


@pytest.fixture
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run's weights and a run's checkpoints at steps 4 and 8 (of 12).

    NOTE: per test, not per module: the reference must be computed with the
    test-sized chunks conftest sets for each test, or its sums round differently.
    """
    root = tmp_path_factory.mktemp("run")
    reference = build()
    fit(reference, root / "reference")
    folder = root / "ck"
    fit(build(), folder, epochs=2, checkpoint_every=4, keep=5)
    return {
        "weights": reference.get_weights(),
        "older": (folder / OLDER).read_bytes(),
        "newest": (folder / NEWEST).read_bytes(),
    }


def members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rebuild(content: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    return out.getvalue()


def npy(array: Any) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array))
    return out.getvalue()


def with_meta(raw: bytes, change: Callable[[dict[str, Any]], None] | str) -> bytes:
    """The checkpoint with its metadata changed in place, or replaced by raw JSON text."""
    content = members(raw)
    meta = json.loads(np.load(io.BytesIO(content["meta.npy"])).tobytes())
    if isinstance(change, str):
        text = change
    else:
        change(meta)
        text = json.dumps(meta)
    content["meta.npy"] = npy(np.frombuffer(text.encode(), np.uint8))
    return rebuild(content)


def with_array(raw: bytes, name: str, value: Any) -> bytes:
    content = members(raw)
    content[f"{name}.npy"] = npy(value)
    return rebuild(content)


def array_of(raw: bytes, name: str) -> np.ndarray:
    return np.load(io.BytesIO(members(raw)[f"{name}.npy"]))


def falls_back(run: dict[str, Any], folder: Path, damaged: bytes, problem: str) -> None:
    """With a damaged newest checkpoint, resume warns, sets it aside and ends as uninterrupted."""
    folder.mkdir(exist_ok=True)
    (folder / OLDER).write_bytes(run["older"])
    (folder / NEWEST).write_bytes(damaged)
    model = build()
    with pytest.warns(CheckpointWarning, match=f"skipping .*{NEWEST}: .*{problem}") as record:
        history = fit(model, folder, epochs=2, resume=True)
    assert history.params["resumed_from"].endswith(OLDER), [str(w.message) for w in record]
    assert (folder / f"{NEWEST}.corrupt").exists()
    for a, b in zip(run["weights"], model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the fallback continued bit for bit


def test_an_untouched_newest_checkpoint_is_used(run: dict[str, Any], tmp_path: Path) -> None:
    """The control for the cases below: the same folder, nothing damaged."""
    (tmp_path / OLDER).write_bytes(run["older"])
    (tmp_path / NEWEST).write_bytes(run["newest"])
    model = build()
    history = fit(model, tmp_path, epochs=2, resume=True)
    assert history.params["resumed_from"].endswith(NEWEST)
    for a, b in zip(run["weights"], model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# ---- metadata that parses but is wrong ----

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.pop("spec_hash"), r"corrupt checkpoint metadata \(spec_hash is missing\)"),
        (lambda m: m.pop("batch"), r"corrupt checkpoint metadata \(batch is missing\)"),
        (lambda m: m.update(epoch="1"), "epoch must be a whole number 0..9007199254740992"),
        (lambda m: m.update(step=2.0), "step must be a whole number .*found 2.0"),
        (lambda m: m.update(sums=[1]), "sums must be an object, found a list"),
        (lambda m: m["history"].update(history={"loss": ["x"]}), "history.loss.. must be a number"),
        (lambda m: m["optimizer"].update(iterations=-1), "optimizer.iterations must be a whole"),
        (lambda m: m["rng"].update(host={"bit_generator": "MT19937"}), "rng.host is not a state"),
        (lambda m: m["layers"][0].update(op="dense"), "spec_hash does not match"),
        (lambda m: m["layers"][0].pop("op"), r"layers\[0\] must have exactly the keys"),
        (lambda m: m["data"].pop("batch_size"), r"data.batch_size is missing"),
        (lambda m: m.update(version="1"), r"corrupt checkpoint metadata \(no format version\)"),
    ],
    ids=[
        "no spec_hash",
        "no batch",
        "epoch as text",
        "step as float",
        "sums a list",
        "history text",
        "negative iterations",
        "another generator",
        "layers edited",
        "layer key missing",
        "no batch size",
        "version as text",
    ],
)
def test_wrong_metadata_falls_back(
    run: dict[str, Any], tmp_path: Path, change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    falls_back(run, tmp_path, with_meta(run["newest"], change), problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (lambda t: re.sub(r'"epoch": \d+', '"epoch": 1e999', t), "epoch must be a whole number"),
        (lambda t: t.replace('"history": {', f'"history": {{"deep": {DEEP}, '), "RecursionError"),
        (lambda t: re.sub(r'"step": \d+', '"step": 1' + "0" * 5000, t), "ValueError: Exceeds"),
        (lambda t: "[1, 2]", r"not a cnndsl checkpoint \(no format tag\)"),
    ],
    ids=["epoch 1e999", "100k-deep JSON", "5000-digit step", "not an object"],
)
def test_metadata_text_that_parses_badly_falls_back(
    run: dict[str, Any], tmp_path: Path, text: Callable[[str], str], problem: str
) -> None:
    raw = members(run["newest"])["meta.npy"]
    original = np.load(io.BytesIO(raw)).tobytes().decode()
    changed = text(original)
    assert changed != original
    falls_back(run, tmp_path, with_meta(run["newest"], changed), problem)


# ---- arrays that do not fit ----


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("optimizer/m/c1:kernel", np.zeros((3, 3, 1, 5), np.float32), r"is float32 \[3, 3, 1, 5\]"),
        ("optimizer/v/head:bias", np.zeros(3, np.int64), "optimizer/v/head:bias is int64"),
        ("optimizer/v/head:bias", np.full(3, -1.0, np.float32), "holds negative values"),
        ("optimizer/m/head:bias", np.array([0, np.nan, 0], np.float32), "holds NaN or infinite"),
        ("optimizer/zz/head:bias", np.zeros(3, np.float32), "is no slot of this network's adam"),
        ("weights/head:bias", np.array([0, np.inf, 0], np.float32), "holds NaN or infinite"),
        ("weights/bn:moving_variance", np.full(4, np.nan, np.float32), "NaN or infinite values"),
        ("order", np.arange(48) + 1000, r"order holds sample indices outside 0..47"),
        ("order", np.arange(48.0), "order must be 48 sample indices, found float64"),
    ],
    ids=[
        "slot shape",
        "slot dtype",
        "negative v",
        "NaN slot",
        "unknown slot",
        "inf weight",
        "NaN moving variance",
        "order out of range",
        "order of floats",
    ],
)
def test_arrays_that_do_not_fit_fall_back(
    run: dict[str, Any], tmp_path: Path, name: str, value: np.ndarray, problem: str
) -> None:
    falls_back(run, tmp_path, with_array(run["newest"], name, value), problem)


def test_a_missing_weight_is_an_incomplete_checkpoint(run: dict[str, Any], tmp_path: Path) -> None:
    content = members(run["newest"])
    del content["weights/c1:kernel.npy"]
    falls_back(run, tmp_path, rebuild(content), r"incomplete checkpoint \('weights/c1:kernel'")


def test_a_member_that_is_not_npy_falls_back(run: dict[str, Any], tmp_path: Path) -> None:
    content = members(run["newest"])
    content["notes.txt"] = b"hello"  # CRC valid: np.load would give bytes, then AttributeError
    falls_back(run, tmp_path, rebuild(content), r"truncated or corrupt .npz \(member 'notes.txt'")


def test_a_fifo_named_like_a_checkpoint_falls_back(run: dict[str, Any], tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    (tmp_path / OLDER).write_bytes(run["older"])
    os.mkfifo(tmp_path / NEWEST)
    model = build()
    with pytest.warns(CheckpointWarning, match="a named pipe \\(FIFO\\), not a regular file"):
        history = fit(model, tmp_path, epochs=2, resume=True)
    assert history.params["resumed_from"].endswith(OLDER)


def test_odd_names_in_the_folder_are_ignored(run: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / OLDER).write_bytes(run["older"])
    for odd in ("checkpoint-²³.npz", "checkpoint-٣.npz", "checkpoint-1e5.npz", "checkpoint-.npz"):
        (tmp_path / odd).write_bytes(b"")  # '²³'.isdigit() is True, int('²³') is an error
    saver = Checkpointer(tmp_path)
    try:
        assert [p.name for p in saver.files()] == [OLDER]
    finally:
        saver.close()
    history = fit(build(), tmp_path, epochs=2, resume=True)
    assert history.params["resumed_from"].endswith(OLDER)


def test_cli_resume_with_an_odd_name(run: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    spec, data, ck = tmp_path / "tiny.cnn", tmp_path / "d.npz", tmp_path / "ck"
    spec.write_text(TINY)
    np.savez(data, x=toy(60)[0], y=toy(60)[1])
    ck.mkdir()
    (ck / "checkpoint-²³.npz").write_bytes(b"")
    argv = ["run", str(spec), "--data", str(data), "--epochs", "1", "-q", "--checkpoint", str(ck)]
    assert main([*argv, "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ---- one run per folder ----

HOLDER = """
import sys, time
from cnndsl.training.checkpoint import Checkpointer
saver = Checkpointer(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        in_flight = tmp_path / f"{TEMP_PREFIX}{holder.pid}-abcd.tmp"
        in_flight.write_bytes(b"half a checkpoint")  # the holder's write in progress
        with pytest.raises(
            ModelError,
            match=f"another run is checkpointing into this folder \\(process {holder.pid}\\)",
        ):
            fit(build(), tmp_path)
        assert in_flight.exists()  # not deleted by the run that was refused
    finally:
        holder.communicate("\n", timeout=30)
    assert not (tmp_path / LOCK_NAME).exists()  # removed as the holder ended
    fit(build(), tmp_path, epochs=1)  # free again
    assert not in_flight.exists()  # its writer is gone: a stale temporary file


def test_a_folder_is_locked_in_process_and_let_go_after_fit(tmp_path: Path) -> None:
    first = Checkpointer(tmp_path)
    with pytest.raises(ModelError, match="another run in this process is checkpointing"):
        Checkpointer(tmp_path)
    first.close()
    fit(build(), tmp_path, epochs=1)
    with pytest.raises(ModelError, match="already holds checkpoints"):
        fit(build(), tmp_path, epochs=1)
    assert not (tmp_path / LOCK_NAME).exists()  # let go although fit raised
    Checkpointer(tmp_path).close()


def test_a_dead_runs_lock_is_taken_over_with_a_note(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    pid = int(gone.stdout)
    (tmp_path / LOCK_NAME).write_text(f"{pid}\n")  # left by a run killed with -9
    stale = tmp_path / f"{TEMP_PREFIX}{pid}-dead.tmp"
    stale.write_bytes(b"")
    old_style = tmp_path / f"{TEMP_PREFIX}x1y2.tmp"  # written before names carried a process id
    old_style.write_bytes(b"")
    alive = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-live.tmp"  # a live process's, unlocked
    alive.write_bytes(b"")
    with pytest.warns(CheckpointWarning, match=f"taking over the lock left by process {pid}, "):
        saver = Checkpointer(tmp_path)
    saver.close()
    assert not stale.exists() and not old_style.exists() and alive.exists()


# ---- a folder that cannot take checkpoints ----


def test_check_checkpoint_folder_reports_each_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_checkpoint_folder(tmp_path)  # writable: nothing to say
    check_checkpoint_folder(tmp_path / "new" / "deeper")  # creatable
    assert not (tmp_path / "new").exists()  # and nothing created
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError, match="file: cannot create the checkpoint folder \\(a file"):
        check_checkpoint_folder(tmp_path / "file")
    with pytest.raises(ModelError, match="cannot create the checkpoint folder"):
        check_checkpoint_folder(tmp_path / "file" / "below")

    def refuse(code: int) -> Callable[..., Any]:
        def mkstemp(*args: Any, **kwargs: Any) -> Any:
            raise OSError(code, os.strerror(code))

        return mkstemp

    monkeypatch.setattr(tempfile, "mkstemp", refuse(errno.EROFS))
    with pytest.raises(
        ModelError,
        match="cannot write in the checkpoint folder \\(Read-only file system\\); make the folder"
        " writable or pass another --checkpoint folder",
    ):
        check_checkpoint_folder(tmp_path)
    monkeypatch.setattr(tempfile, "mkstemp", refuse(errno.ENOSPC))
    with pytest.raises(ModelError, match="free some space"):
        Checkpointer(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()  # the refused run let go of the lock


def test_a_failed_checkpoint_write_names_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(checkpoint, "write_npz", read_only)
    with pytest.raises(ModelError, match="Read-only file system\\); make the folder writable"):
        fit(build(), tmp_path, epochs=1)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Any:
    """A folder no one can create files in: chmod for users, the immutable flag for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_a_read_only_folder_is_refused_before_any_work(
    read_only_folder: Path, tmp_path: Path, capsys: Any
) -> None:
    from cnndsl.cli import main

    spec, data = tmp_path / "tiny.cnn", tmp_path / "d.npz"
    spec.write_text(TINY)
    np.savez(data, x=toy()[0], y=toy()[1])
    argv = ["run", str(spec), "--data", str(data), "--epochs", "1"]
    assert main([*argv, "--checkpoint", str(read_only_folder)]) == 1
    err = capsys.readouterr().err
    assert f"error: {read_only_folder}: cannot write in the checkpoint folder" in err
    assert "make the folder writable" in err and "free some space" not in err
    assert "parameters" not in err  # refused before the data was loaded
    with pytest.raises(ModelError, match="cannot write in the checkpoint folder"):
        fit(build(), read_only_folder, epochs=1)
