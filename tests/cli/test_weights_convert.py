"""`cnndsl weights convert`, and other frameworks' files given to `run --load` and `plot --load`.

The files are PyTorch state dicts written with safetensors' NumPy API (no
torch needed); Keras files go through the same commands in
tests/formats/test_keras_weights.py's Python API tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.cli import main

safetensors_numpy = pytest.importorskip("safetensors.numpy")

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 3]
    return image -> conv(4, 3, name="c1") -> batchnorm(name="bn") -> relu
        -> global_avgpool -> dense(classes, activation=softmax, name="head")
}
"""


def state(classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(f32),
        "conv.bias": rng.normal(size=(4,)).astype(f32),
        "norm.weight": rng.uniform(0.5, 2, (4,)).astype(f32),
        "norm.bias": rng.normal(size=(4,)).astype(f32),
        "norm.running_mean": rng.normal(size=(4,)).astype(f32),
        "norm.running_var": rng.uniform(0.5, 2, (4,)).astype(f32),
        "fc.weight": rng.normal(size=(classes, 4)).astype(f32),
        "fc.bias": rng.normal(size=(classes,)).astype(f32),
    }


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    weights = tmp_path / "tiny.safetensors"
    safetensors_numpy.save_file(state(), str(weights))
    return spec, weights


def test_convert_writes_our_npz(files: Any, tmp_path: Path, capsys: Any) -> None:
    spec, weights = files
    out = tmp_path / "tiny.npz"
    assert main(["weights", "convert", str(weights), "--spec", str(spec), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout == f"wrote {out}: 8 of 8 weight arrays of tiny from {weights} (safetensors)\n"
    direct, converted = (cnndsl.compile(TINY).build(seed=s) for s in (1, 2))
    direct.load(weights)
    assert converted.load(out).complete
    for a, b in zip(direct.get_weights(), converted.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_verbose_names_each_origin(files: Any, tmp_path: Path, capsys: Any) -> None:
    spec, weights = files
    argv = ["weights", "convert", str(weights), "--spec", str(spec), "-o", str(tmp_path / "o.npz")]
    assert main([*argv, "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "c1:kernel <- conv.weight (OIHW -> HWIO)",
        "c1:bias <- conv.bias",
        "bn:gamma <- norm.weight",
    ]
    assert "head:kernel <- fc.weight ([out, in] -> [in, out])" in lines


def test_convert_with_a_mapping_and_set(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    weights = tmp_path / "five.safetensors"
    safetensors_numpy.save_file(state(classes=5), str(weights))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"head": "fc"}))
    out = tmp_path / "o.npz"
    argv = ["weights", "convert", str(weights), "--spec", str(spec), "--set", "classes=5"]
    assert main([*argv, "--map", str(mapping), "-o", str(out)]) == 0
    assert "8 of 8 weight arrays" in capsys.readouterr().out


def test_convert_partial(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    weights = tmp_path / "five.safetensors"
    safetensors_numpy.save_file(state(classes=5), str(weights))
    out = tmp_path / "o.npz"
    argv = ["weights", "convert", str(weights), "--spec", str(spec), "-o", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights} (safetensors) does not fit this network")
    assert "--set classes=5" in err and "Traceback" not in err and not out.exists()
    assert main([*argv, "--partial"]) == 0
    captured = capsys.readouterr()
    assert "6 of 8 weight arrays" in captured.out
    assert "not in file (kept initial values): head:kernel, head:bias" in captured.err
    assert "in file but not in model (ignored): fc.weight, fc.bias" in captured.err


def test_convert_needs_a_subcommand_and_its_arguments(capsys: Any) -> None:
    assert main(["weights"]) == 2
    assert "convert SRC --spec SPEC -o OUT.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["weights", "convert", "x.h5"])
    assert info.value.code == 2


def test_convert_into_a_missing_folder(files: Any, tmp_path: Path, capsys: Any) -> None:
    spec, weights = files
    out = tmp_path / "no" / "o.npz"
    assert main(["weights", "convert", str(weights), "--spec", str(spec), "-o", str(out)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {out}: cannot write the weights (")


def test_run_predicts_from_another_frameworks_file(files: Any, tmp_path: Path, capsys: Any) -> None:
    from PIL import Image

    spec, weights = files
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
        image
    )
    assert main(["run", str(spec), "--load", str(weights), "--predict", str(image)]) == 0
    captured = capsys.readouterr()
    assert f"{weights}: loaded 8 weight arrays from a safetensors file" in captured.err
    model = cnndsl.compile(TINY).build()
    model.load(weights)
    p = model.predict(np.asarray(Image.open(image), np.float32)[None] / 255)[0]
    best = int(p.argmax())
    assert captured.out.startswith(f"{image}: {best} ({p[best]:.3f})")


def test_run_refuses_a_file_that_does_not_fit(tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    weights = tmp_path / "five.safetensors"
    safetensors_numpy.save_file(state(classes=5), str(weights))
    assert main(["run", str(spec), "--load", str(weights), "--epochs", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights} (safetensors) does not fit") and "Traceback" not in err


def test_plot_filters_from_another_frameworks_file(files: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec, weights = files
    out = tmp_path / "filters.png"
    assert main(["plot", str(spec), "--load", str(weights), "--filters", "c1", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
