"""Every example of the language design compiles as written.

The examples live in examples/language/ as copies of the code blocks of the
language design, which the repository keeps in docs/design/LANGUAGE.md; the
copies are checked against it in every clone, so they cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cnndsl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "language"
DESIGN = ROOT / "docs" / "design" / "LANGUAGE.md"
# The shared original, where a checkout has it beside it.
ORIGINAL = ROOT.parent / "shared" / "LANGUAGE.md"


def test_copies_match_the_design_document() -> None:
    blocks = re.findall(r"```cnn\n(.*?)```", DESIGN.read_text(), re.S)
    # blocks.cnn is no design example: it is the library flowers.cnn imports, as the design shows
    copies = {p.read_text() for p in EXAMPLES.glob("*.cnn") if p.name != "blocks.cnn"}
    assert len(blocks) == len(copies) == 5
    assert set(blocks) == copies
    assert 'import "blocks.cnn"' in (EXAMPLES / "flowers.cnn").read_text()


def test_the_kept_design_is_the_original() -> None:
    if not ORIGINAL.is_file():
        pytest.skip("no shared LANGUAGE.md beside this checkout (the kept copy is checked above)")
    assert DESIGN.read_text() == ORIGINAL.read_text()


def test_fashion_mnist_example() -> None:
    net = cnndsl.compile(EXAMPLES / "fashion_mnist.cnn")
    assert net.total_params == 1_413_834
    assert net.output_shape == (10,)


def test_resnet34_example() -> None:
    net = cnndsl.compile(EXAMPLES / "resnet34.cnn")
    # Keras' summary for the same model (Hands-On ML ch. 14, without the Flatten).
    assert (net.total_params, net.trainable_params, net.non_trainable_params) == (
        21_306_826,
        21_289_802,
        17_024,
    )
    assert net.output_shape == (10,)


def test_inception_example() -> None:
    # GoogLeNet's inception (3a) on a 28×28×192 input: 64+128+32+32 = 256 channels.
    net = cnndsl.compile_block(
        EXAMPLES / "inception.cnn",
        "inception",
        (28, 28, 192),
        c1=64,
        c3_reduce=96,
        c3=128,
        c5_reduce=16,
        c5=32,
        pool_proj=32,
    )
    assert net.output_shape == (28, 28, 256)
    hand = (
        (192 * 64 + 64)
        + (192 * 96 + 96)
        + (9 * 96 * 128 + 128)
        + (192 * 16 + 16)
        + (25 * 16 * 32 + 32)
        + (192 * 32 + 32)
    )
    assert net.total_params == hand


def test_se_and_xception_examples() -> None:
    path = EXAMPLES / "se_xception.cnn"
    se = cnndsl.compile_block(path, "se", (14, 14, 64))
    assert se.output_shape == (14, 14, 64)
    assert se.total_params == (64 * 4 + 4) + (4 * 64 + 64)
    entry = cnndsl.compile_block(path, "xception_entry", (28, 28, 64), filters=128)
    assert entry.output_shape == (14, 14, 128)
    separable_1 = 9 * 64 + 64 * 128
    separable_2 = 9 * 128 + 128 * 128
    assert entry.total_params == separable_1 + separable_2 + 64 * 128 + 3 * 4 * 128


def test_flowers_example_with_a_local_blocks_file(tmp_path: Path) -> None:
    if not (cnndsl.frontend.grammar.resource_path("specs") / "xception.cnn").is_file():
        pytest.skip("zoo.xception is not shipped yet")
    (tmp_path / "blocks.cnn").write_text("block head_unit() { return input }\n")
    (tmp_path / "flowers.cnn").write_text((EXAMPLES / "flowers.cnn").read_text())
    net = cnndsl.compile(tmp_path / "flowers.cnn")
    assert net.output_shape == (5,)
    head = net.graph["head"]
    assert head.trainable and head.params == 2048 * 5 + 5
    base = [layer for layer in net.layers if layer.path.startswith("base/")]
    assert base and not any(layer.trainable for layer in base)
    assert net.trainable_params == head.params
    assert net.train["optimizer"] == {"name": "sgd", "lr": 0.2, "momentum": 0.9, "decay": 0.01}
    assert net.train["batch"] == 32 and net.train["metrics"] == ["accuracy"]
