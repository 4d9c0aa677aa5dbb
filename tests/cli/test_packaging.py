"""The built wheel carries the grammar and the zoo, and works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {result.stderr[-300:]}")
    return next(out.glob("cnndsl-*.whl"))


def test_wheel_contains_grammar_and_specs(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnndsl/grammars/cnn.lark" in names
    shipped = {Path(n).name for n in names if n.startswith("cnndsl/specs/")}
    expected = {p.name for p in (ROOT / "specs").glob("*.cnn")}
    assert expected <= shipped
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_compiles_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import cnndsl, pathlib; p = pathlib.Path(cnndsl.__file__).parent;"
        f" assert str(p).startswith({str(target)!r}), p;"
        " n = cnndsl.compile('zoo.resnet34', size=32); print(n.total_params)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "21306826"


def test_wheel_ships_the_imagenet_class_index(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "cnndsl/formats/imagenet_class_index.json" in names
