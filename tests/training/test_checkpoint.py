"""Checkpoints: resumed runs equal uninterrupted ones bit for bit; crashes and Ctrl-C lose nothing.

The subprocess tests run `python -m cnndsl run` on a 6×6 toy set (96 training
samples, batch 8: 12 steps an epoch); to SIGKILL a run in the middle of a checkpoint
write, `PAUSING_RUN` runs the same command with the N-th checkpoint rename held back.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.checkpoint import TEMP_PREFIX, CheckpointWarning, TrainingInterrupted
from cnndsl.training.fit import ShortStatisticsWarning
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3, width=4) {
    input image: [6, 6, 1]
    train {
        optimizer = adam(lr=0.01)
        batch = 8
        epochs = 3
    }
    return image
        -> conv(width, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> maxpool(2) -> flatten -> dense(8, activation=relu, name="fc") -> dropout(0.5)
        -> dense(classes, activation=softmax, name="head")
}
"""


def toy(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by brightness, plus noise: [n, 6, 6, 1] float32, labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 6, 6, 1), dtype=np.float32) + (0.3 * y[:, None, None, None])
    return x.astype(np.float32), y


def build(**params: Any) -> Any:
    return cnndsl.compile(TINY, **params).build(seed=1)


def fit(model: Any, x: np.ndarray, y: np.ndarray, **kw: Any) -> Any:
    kw = {"epochs": 3, "batch_size": 8, "validation_split": 0.25, **kw}
    return model.fit(x, y, **kw)


def same_weights(a: Any, b: Any) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(), strict=True))


# ---- in process ----


def test_resume_from_every_checkpoint_is_bit_exact(tmp_path: Path) -> None:
    x, y = toy()
    reference = build()
    expected = fit(reference, x, y)
    full = tmp_path / "all"
    # 72 training samples, batch 8: 9 steps an epoch; every 4 steps and each epoch end.
    fit(build(), x, y, checkpoint_dir=full, checkpoint_every=4, keep=100)
    names = sorted(p.name for p in full.iterdir())
    assert names == [f"checkpoint-{s:09d}.npz" for s in (4, 8, 9, 12, 16, 18, 20, 24, 27)]
    for name in names:
        one = tmp_path / name
        one.mkdir()
        (one / name).write_bytes((full / name).read_bytes())
        resumed = build()
        history = fit(resumed, x, y, checkpoint_dir=one, resume=True)
        assert same_weights(resumed, reference), name
        assert history.history == expected.history, name
        assert history.params["resumed_from"] == str(one / name)


def test_corrupt_newest_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    x, y = toy()
    reference = build()
    fit(reference, x, y)
    fit(build(), x, y, epochs=2, checkpoint_dir=tmp_path, checkpoint_every=4)
    newest = sorted(tmp_path.iterdir())[-1]
    assert newest.name == "checkpoint-000000018.npz"
    newest.write_bytes(newest.read_bytes()[:-100])  # cut short, as by a full disk
    resumed = build()
    with pytest.warns(CheckpointWarning, match="skipping .*checkpoint-000000018.npz: truncated"):
        history = fit(resumed, x, y, checkpoint_dir=tmp_path, resume=True)
    assert history.params["resumed_from"].endswith("checkpoint-000000016.npz")
    assert same_weights(resumed, reference)
    assert (tmp_path / "checkpoint-000000018.npz.corrupt").exists()


def test_foreign_and_incomplete_checkpoints_are_skipped(tmp_path: Path) -> None:
    x, y = toy()
    reference = build()
    fit(reference, x, y)
    fit(build(), x, y, epochs=1, checkpoint_dir=tmp_path)  # checkpoint-000000009.npz
    np.savez(tmp_path / "checkpoint-000000050.npz", a=np.zeros(3))  # not ours
    with np.load(tmp_path / "checkpoint-000000009.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "weights/head:bias"}
    np.savez(tmp_path / "checkpoint-000000040.npz", **arrays)  # a weight missing
    resumed = build()
    with pytest.warns(CheckpointWarning) as record:
        fit(resumed, x, y, checkpoint_dir=tmp_path, resume=True)
    messages = [str(w.message) for w in record]
    assert any("checkpoint-000000050.npz: not a cnndsl checkpoint" in m for m in messages)
    assert any("checkpoint-000000040.npz: incomplete checkpoint" in m for m in messages)
    assert same_weights(resumed, reference)


def test_spec_change_is_refused_with_the_difference(tmp_path: Path) -> None:
    x, y = toy()
    fit(build(), x, y, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(
        ModelError, match="layer c1 is conv 3×3, 8 here but conv 3×3, 4 in the checkpoint"
    ):
        fit(build(width=8), x, y, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ModelError, match="checkpoint has layer fc .*which this network lacks"):
        other = TINY.replace('-> dense(8, activation=relu, name="fc") ', "")
        fit(cnndsl.compile(other).build(), x, y, checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_other_data_and_fresh_runs_refuse_a_used_folder(tmp_path: Path) -> None:
    x, y = toy()
    fit(build(), x, y, epochs=1, checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.raises(ModelError, match="other data"):
        fit(build(), *toy(seed=1), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ModelError, match="already holds checkpoints"):
        fit(build(), x, y, checkpoint_dir=tmp_path)
    with pytest.raises(ModelError, match="needs checkpoint_dir"):
        fit(build(), x, y, resume=True)


def test_keeps_the_newest_k_and_no_temporary_files(tmp_path: Path) -> None:
    x, y = toy()
    fit(build(), x, y, checkpoint_dir=tmp_path, checkpoint_every=2, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000000026.npz",
        "checkpoint-000000027.npz",
    ]
    with np.load(tmp_path / "checkpoint-000000027.npz", allow_pickle=False) as f:
        meta = json.loads(f["meta"].tobytes())
        assert "weights/bn:moving_variance" in f.files and "optimizer/m/c1:kernel" in f.files
    assert meta["epoch"] == 3 and meta["batch"] == 0 and meta["step"] == 27
    assert meta["layers"][1]["label"] == "conv 3×3, 4" and len(meta["spec_hash"]) == 64


def test_resume_with_an_empty_folder_starts_afresh(tmp_path: Path) -> None:
    x, y = toy()
    reference = build()
    fit(reference, x, y, epochs=1)
    model = build()
    with pytest.warns(CheckpointWarning, match="no checkpoint to resume from"):
        fit(model, x, y, epochs=1, checkpoint_dir=tmp_path, resume=True)
    assert same_weights(model, reference)


def test_interrupt_saves_between_steps(tmp_path: Path) -> None:
    """SIGINT during fit: the step finishes, a checkpoint is written, fit raises."""
    from cnndsl.training.model import Callback

    class CtrlC(Callback):
        def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
            if batch == 3:
                os.kill(os.getpid(), signal.SIGINT)

    x, y = toy()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="after step 4 .*checkpoint saved") as info:
        fit(build(), x, y, checkpoint_dir=tmp_path, callbacks=[CtrlC()])
    assert info.value.checkpoint == str(tmp_path / "checkpoint-000000004.npz")
    assert signal.getsignal(signal.SIGINT) is before  # restored
    reference = build()
    fit(reference, x, y)
    resumed = build()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ShortStatisticsWarning)  # a toy run: few steps
        fit(resumed, x, y, checkpoint_dir=tmp_path, resume=True)
    assert same_weights(resumed, reference)


# ---- real processes ----


def write_toy(folder: Path) -> tuple[Path, Path]:
    spec, data = folder / "tiny.cnn", folder / "tiny.npz"
    spec.write_text(TINY)
    x, y = toy(120)
    np.savez(data, x=x, y=y)
    return spec, data


# `cnndsl run ARGS` whose PAUSE-th checkpoint write stops between its temporary file
# and the rename (announcing it on stderr), so that a test can kill it right there.
PAUSING_RUN = f"""
import os, sys, time
from cnndsl.cli import main
pause_at, argv, renames = int(sys.argv[1]), sys.argv[2:], [0]
real_replace = os.replace
def replace(src, dst, **kw):
    if os.path.basename(src).startswith({TEMP_PREFIX!r}):
        renames[0] += 1
        if renames[0] == pause_at:
            print("cnndsl-test: paused writing checkpoint", src, file=sys.stderr, flush=True)
            time.sleep(600)
    return real_replace(src, dst, **kw)
os.replace = replace
sys.exit(main(argv))
"""


def cnndsl_run(*args: str, pause_at: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = ["-m", "cnndsl"] if pause_at is None else ["-c", PAUSING_RUN, str(pause_at)]
    return subprocess.Popen(
        [sys.executable, *command, "run", *args, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # NOTE: unbuffered, so select() sees every line as it is written
        env=env,
    )


def wait_for(proc: subprocess.Popen[bytes], stream: Any, marker: str, timeout: float = 60) -> str:
    """Read `stream` until `marker` appears; returns what was read."""
    seen = b""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen and time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        seen += chunk
    if marker.encode() not in seen:
        proc.kill()
        raise AssertionError(f"never saw {marker!r}; output so far:\n{seen.decode()}")
    return seen.decode()


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode(), err.decode()


def test_sigkill_during_a_checkpoint_write_then_resume_is_bit_exact(tmp_path: Path) -> None:
    spec, data = write_toy(tmp_path)
    common = [str(spec), "--data", str(data), "--epochs", "3", "--checkpoint-every", "5"]
    reference = cnndsl_run(
        *common, "--checkpoint", str(tmp_path / "ref"), "--save", str(tmp_path / "ref.npz")
    )
    # The third write (step 10, in epoch 1) pauses after its temp file: kill it there.
    killed = cnndsl_run(*common, "--checkpoint", str(tmp_path / "ck"), pause_at=3)
    assert killed.stderr is not None
    wait_for(killed, killed.stderr, "cnndsl-test: paused writing checkpoint")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert [n for n in left if not n.startswith(".")] == [
        "checkpoint-000000005.npz",
        "checkpoint-000000010.npz",
    ]
    temp = [n for n in left if n.endswith(".tmp")]  # the write the kill interrupted
    assert len(temp) == 1 and temp[0].startswith(".checkpoint-")
    assert ".lock" in left  # the killed run's lock file, taken over on resume

    resumed = cnndsl_run(
        *common, "--checkpoint", str(tmp_path / "ck"), "--resume",
        "--save", str(tmp_path / "resumed.npz"),
    )  # fmt: skip
    code, out, err = finish(resumed)
    assert code == 0, err
    assert "resuming from" in err and "checkpoint-000000010.npz" in err
    assert f"taking over the lock left by process {killed.pid}" in err
    ref_code, ref_out, ref_err = finish(reference)
    assert ref_code == 0, ref_err
    with (
        np.load(tmp_path / "ref.npz", allow_pickle=False) as a,
        np.load(tmp_path / "resumed.npz", allow_pickle=False) as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert out.splitlines()[-1] == ref_out.splitlines()[-1]  # the same test loss and accuracy
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "ck").iterdir())


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    spec, data = write_toy(tmp_path)
    proc = cnndsl_run(
        str(spec), "--data", str(data), "--epochs", "400", "--checkpoint", str(tmp_path / "ck")
    )
    assert proc.stdout is not None
    wait_for(proc, proc.stderr, " 2/400 ")  # the epoch lines are progress, on stderr
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "interrupted after step" in err and "checkpoint saved" in err and "--resume" in err
    assert "Traceback" not in err
    assert list((tmp_path / "ck").glob("checkpoint-*.npz"))


def test_cli_refuses_bad_checkpoint_use(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    spec, data = write_toy(tmp_path)
    ck = tmp_path / "ck"
    argv = ["run", str(spec), "--data", str(data), "--epochs", "1", "-q"]
    assert main([*argv, "--resume"]) == 2
    assert "error: --resume needs --checkpoint DIR" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(ck)]) == 0
    assert main([*argv, "--checkpoint", str(ck)]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*argv, "--checkpoint", str(ck), "--resume", "--set", "width=8"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "checkpoint of a different network: layer c1 is conv 3×3, 8" in err
    (ck / "checkpoint-000000012.npz").write_bytes(b"")  # the only one, emptied
    assert main([*argv, "--checkpoint", str(ck), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "no checkpoint to resume from" in err
    (tmp_path / "file").write_text("")
    assert main([*argv, "--checkpoint", str(tmp_path / "file")]) == 1
    assert "cannot create the checkpoint folder" in capsys.readouterr().err


def test_a_device_generator_without_state_still_checkpoints(tmp_path: Path) -> None:
    """CuPy's generators hide their state: the run resumes, warning that masks differ."""

    class Opaque:  # draws like numpy's Generator but exposes no bit_generator
        def __init__(self) -> None:
            self._rng = np.random.default_rng(0)

        def random(self, shape: Any, dtype: Any = np.float64) -> np.ndarray:
            return self._rng.random(shape, dtype)

    x, y = toy()
    model = build()
    model.backend.rng = Opaque()
    fit(model, x, y, epochs=1, checkpoint_dir=tmp_path)
    resumed = build()
    resumed.backend.rng = Opaque()
    with pytest.warns(CheckpointWarning, match="dropout masks will differ"):
        history = fit(resumed, x, y, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert history.epoch == [0, 1]
