"""The summaries of the seed specs, pinned word for word.

To accept an intended change: CNNDSL_UPDATE_GOLDEN=1 pytest tests/passes/test_golden.py,
then read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import cnndsl

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"

CASES = {
    "fashion_mnist": (ROOT / "specs" / "fashion_mnist.cnn", None),
    "resnet34": (ROOT / "specs" / "resnet34.cnn", None),
    "resnet34_depth1": (ROOT / "specs" / "resnet34.cnn", 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_summary_matches_golden(name: str) -> None:
    path, depth = CASES[name]
    text = cnndsl.compile(path).summary(depth=depth, batch=32) + "\n"
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("CNNDSL_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_golden_totals_are_keras_numbers() -> None:
    # Keras' model.summary() for the same Keras code (scripts/keras_counts.py).
    fashion = (GOLDEN / "fashion_mnist.txt").read_text()
    resnet = (GOLDEN / "resnet34.txt").read_text()
    assert "Total params: 1,413,834 " in fashion
    assert "Total params: 21,306,826 " in resnet
    assert "Trainable params: 21,289,802\n" in resnet
    assert "Non-trainable params: 17,024\n" in resnet


# ---- the golden rows, worked out by hand (not by the passes that wrote them) ----


def rows(name: str) -> dict[str, tuple[list[int], int, int, int]]:
    """Layer -> (output shape, params, MACs, receptive field), read from a golden table."""
    out = {}
    for line in (GOLDEN / f"{name}.txt").read_text().splitlines():
        match = re.fullmatch(r"(\S+)\s+.*?\s+(\[[\d, ]+\])\s+([\d,]+)\s+([\d,]+)\s+(\d+)", line)
        if match:
            path, shape, params, macs, rf = match.groups()
            numbers = (int(params.replace(",", "")), int(macs.replace(",", "")), int(rf))
            out[path] = (json.loads(shape), *numbers)
    return out


def conv(k: int, c_in: int, c_out: int, bias: bool = True) -> int:
    return k * k * c_in * c_out + (c_out if bias else 0)


def total_line(name: str, label: str) -> int:
    text = (GOLDEN / f"{name}.txt").read_text()
    return int(re.search(rf"^{label}: ([\d,]+)", text, re.M)[1].replace(",", ""))  # type: ignore[index]


def test_fashion_mnist_rows_by_hand() -> None:
    # Receptive fields: r += (k - 1)·j, j *= s; a vector (flatten, dense) sees the whole image.
    expected = {
        "image": ([28, 28, 1], 0, 0, 1),
        "conv_1": ([28, 28, 64], conv(7, 1, 64), 28 * 28 * 64 * 49, 7),
        "maxpool_1": ([14, 14, 64], 0, 0, 7 + 1),
        "conv_2": ([14, 14, 128], conv(3, 64, 128), 14 * 14 * 128 * 9 * 64, 8 + 2 * 2),
        "conv_3": ([14, 14, 128], conv(3, 128, 128), 14 * 14 * 128 * 9 * 128, 12 + 2 * 2),
        "maxpool_2": ([7, 7, 128], 0, 0, 16 + 1 * 2),
        "conv_4": ([7, 7, 256], conv(3, 128, 256), 7 * 7 * 256 * 9 * 128, 18 + 2 * 4),
        "conv_5": ([7, 7, 256], conv(3, 256, 256), 7 * 7 * 256 * 9 * 256, 26 + 2 * 4),
        "maxpool_3": ([3, 3, 256], 0, 0, 34 + 1 * 4),
        "flatten_1": ([2304], 0, 0, 28),
        "dense_1": ([128], 2304 * 128 + 128, 2304 * 128, 28),
        "dropout_1": ([128], 0, 0, 28),
        "dense_2": ([64], 128 * 64 + 64, 128 * 64, 28),
        "dropout_2": ([64], 0, 0, 28),
        "dense_3": ([10], 64 * 10 + 10, 64 * 10, 28),
    }
    got = rows("fashion_mnist")
    assert got == expected
    assert total_line("fashion_mnist", "Total params") == sum(r[1] for r in expected.values())
    assert total_line("fashion_mnist", "MACs per image") == sum(r[2] for r in expected.values())


def test_resnet34_units_by_hand() -> None:
    # A residual unit: two 3×3 convs without bias, a batchnorm (4·C) after each; a unit that
    # halves the size also has a strided 1×1 projection and its batchnorm.
    def unit(c_in: int, c: int, size: int) -> tuple[int, int]:
        params = conv(3, c_in, c, False) + conv(3, c, c, False) + 2 * 4 * c
        macs = size * size * c * 9 * (c_in + c)
        if c_in != c:
            params += c_in * c + 4 * c
            macs += size * size * c * c_in
        return params, macs

    expected = {
        "image": ([224, 224, 3], 0, 0, 1),
        "conv_1": ([112, 112, 64], conv(7, 3, 64, False), 112 * 112 * 64 * 49 * 3, 7),
        "batchnorm_1": ([112, 112, 64], 4 * 64, 0, 7),
        "relu_1": ([112, 112, 64], 0, 0, 7),
        "maxpool_1": ([56, 56, 64], 0, 0, 7 + 2 * 2),
    }
    rf, jump, c_in, size, index = 11, 4, 64, 56, 1
    for c, count in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(count):
            stride = 2 if i == 0 and c != 64 else 1
            size //= stride
            rf += 2 * jump  # first conv
            jump *= stride
            rf += 2 * jump  # second conv
            expected[f"residual_unit_{index}/"] = ([size, size, c], *unit(c_in, c, size), rf)
            c_in, index = c, index + 1
    expected["global_avgpool_1"] = ([512], 0, 0, 224)
    expected["flatten_1"] = ([512], 0, 0, 224)
    expected["dense_1"] = ([10], 512 * 10 + 10, 512 * 10, 224)
    assert rows("resnet34_depth1") == expected
    total = sum(r[1] for r in expected.values())
    assert total == total_line("resnet34_depth1", "Total params") == 21_306_826  # Keras' total
    assert total_line("resnet34_depth1", "MACs per image") == sum(r[2] for r in expected.values())
    # batchnorm's moving mean and variance: 2·C per batchnorm, 36 of them
    moving = 2 * (64 + 2 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512) + 128 + 256 + 512)
    assert total_line("resnet34_depth1", "Non-trainable params") == moving == 17_024


def test_full_resnet34_rows_add_up_to_their_units() -> None:
    full = (GOLDEN / "resnet34.txt").read_text().splitlines()
    units = rows("resnet34_depth1")
    inner: dict[str, int] = {}
    current = None
    for line in full:
        if re.match(r"residual_unit_\d+/ ", line):
            current = line.split()[0]
        elif line.startswith("  ") and current:
            params = re.search(r"\]\s+([\d,]+)\s+[\d,]+\s+\d+$", line)
            assert params, line
            inner[current] = inner.get(current, 0) + int(params[1].replace(",", ""))
        else:
            current = None
    assert len(inner) == 16
    assert all(inner[u] == units[u][1] for u in inner)
