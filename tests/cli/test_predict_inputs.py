"""--predict takes .npy arrays as plot --feature-maps does, and refuses bad ones clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import cnndsl
from cnndsl.cli import main

SPEC = """network tiny(classes=3) {
    input x: [6, 6, 1]
    return x -> conv(2, 3) -> flatten -> dense(classes, activation=softmax)
}
"""


def test_predict_npy_equals_model_predict(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(SPEC)
    model = cnndsl.compile(spec).build(seed=4)
    model.save(tmp_path / "w.npz")
    rng = np.random.default_rng(0)
    samples = [rng.random((6, 6)).astype(np.float32), rng.random((6, 6, 1)).astype(np.float32)]
    for i, sample in enumerate(samples):
        np.save(tmp_path / f"s{i}.npy", sample)
    argv = ["run", str(spec), "--load", str(tmp_path / "w.npz"), "-q", "--top-k", "1"]
    code = main([*argv, "--predict", str(tmp_path / "s0.npy"), str(tmp_path / "s1.npy")])
    out = capsys.readouterr().out
    assert code == 0, out
    expected = model.predict(np.stack([s.reshape(6, 6, 1) for s in samples])).argmax(axis=1)
    for i, label in enumerate(expected):
        line = next(x for x in out.splitlines() if f"s{i}.npy" in x)
        assert f" {label} " in f" {line} ".replace(":", " ").replace("(", " "), line


def test_predict_refuses_an_array_of_the_wrong_shape(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(SPEC)
    cnndsl.compile(spec).build().save(tmp_path / "w.npz")
    np.save(tmp_path / "big.npy", np.zeros((7, 7, 1), np.float32))
    argv = ["run", str(spec), "--load", str(tmp_path / "w.npz"), "-q"]
    assert main([*argv, "--predict", str(tmp_path / "big.npy")]) == 1
    err = capsys.readouterr().err
    assert "big.npy holds an array of shape [7, 7, 1]; the network's input is [6, 6, 1]" in err
    assert "Traceback" not in err
