"""The command line: main(argv) -> exit code, with stdout and stderr as a user sees them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnndsl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_compile_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(ROOT / "specs" / "fashion_mnist.cnn")]) == 0
    out = capsys.readouterr().out
    assert "conv 7×7, 64, relu" in out
    assert "Total params: 1,413,834" in out
    assert "MACs per image: 89,466,496" in out


def test_compile_depth_collapses_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "zoo.resnet34", "--depth", "1", "--set", "size=64"]) == 0
    out = capsys.readouterr().out
    assert out.count("residual_unit (collapsed)") == 16
    assert "  conv_1" not in out


def test_compile_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "compile",
                str(ROOT / "specs" / "fashion_mnist.cnn"),
                "--format",
                "json",
                "--batch",
                "32",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "cnndsl.summary/1"
    assert doc["totals"]["params"] == 1_413_834
    assert doc["memory"]["batch"] == 32
    assert len(doc["edges"]) == len(doc["layers"]) - 1
    conv = next(layer for layer in doc["layers"] if layer["path"] == "conv_1")
    assert conv["shape"] == [28, 28, 64] and conv["weights"]["kernel"] == [7, 7, 1, 64]
    assert conv["span"]["line"] > 0


def test_compile_error_exits_1_with_partial_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.cnn"
    spec.write_text("network n() {\n  input x: [8, 8, 1]\n  return x -> conv(4, 3) -> dense(2)\n}")
    assert main(["compile", str(spec)]) == 1
    captured = capsys.readouterr()
    assert "conv_1" in captured.out and "compilation stopped here" in captured.out
    assert f"{spec}:3:29: error[E041]" in captured.err
    assert "Traceback" not in captured.err


def test_missing_file_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "does/not/exist.cnn"]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_a_spec_file_named_without_cnn_is_read_as_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SPEC argument names a file whatever its suffix; a device is refused, not parsed."""
    spec = tmp_path / "lenet.txt"
    spec.write_text((ROOT / "specs" / "lenet5.cnn").read_text())
    assert main(["compile", str(spec)]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out
    assert main(["compile", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert "E060" in err and "not a regular file" in err and "<string>" not in err


def test_block_compilation(capsys: pytest.CaptureFixture[str]) -> None:
    spec = ROOT / "examples" / "language" / "inception.cnn"
    argv = [
        "compile",
        str(spec),
        "--block",
        "inception",
        "--input-shape",
        "28,28,192",
        "--set",
        "c1=64",
        "c3_reduce=96",
        "c3=128",
        "c5_reduce=16",
        "c5=32",
        "pool_proj=32",
    ]
    assert main(argv) == 0
    assert "concat 64+128+32+32=256" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compile"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["compile", "zoo.resnet34", "--set", "nonsense"])
    assert info.value.code == 2


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "compile" in out and "examples:" in out


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnndsl",
            "compile",
            "zoo.resnet34",
            "--set",
            "size=32",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["network"] == "resnet34"
