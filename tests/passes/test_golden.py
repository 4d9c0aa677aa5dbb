"""The summaries of the seed specs, pinned word for word.

To accept an intended change: CNNDSL_UPDATE_GOLDEN=1 pytest tests/passes/test_golden.py,
then read the diff before committing it.
"""

from __future__ import annotations

import os
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
