"""`cnndsl export` and `cnndsl import`: files written, outputs equal, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnndsl
from cnndsl.cli import main

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_export_then_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx_path, spec = tmp_path / "d.onnx", tmp_path / "d.cnn"
    weights = tmp_path / "w.npz"
    model = cnndsl.compile("zoo.digits").build(seed=3)
    model.save(weights)
    assert main(["export", "zoo.digits", "--load", str(weights), "-o", str(onnx_path)]) == 0
    assert main(["import", str(onnx_path), "-o", str(spec)]) == 0
    assert "wrote" in capsys.readouterr().out
    again = cnndsl.compile(str(spec)).build(seed=0)
    again.load(tmp_path / "d.npz", strict=True)
    x = np.random.default_rng(0).random((5, 8, 8, 1), np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_ort = session.run(None, {"image": x})[0]
    assert np.max(np.abs(from_ort - model.predict(x))) < 1e-5
    assert np.max(np.abs(again.predict(x) - model.predict(x))) < 1e-5


def test_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "x.cnn")]) == 1
    assert "no such file" in capsys.readouterr().err
    out = str(tmp_path / "d.onnx")
    with pytest.raises(SystemExit) as usage:  # a usage error, before any work
        main(["export", "zoo.digits", "-o", out, "--opset", "3"])
    assert usage.value.code == 2
    assert "--opset: expected a whole number >= 13, not 3" in capsys.readouterr().err
