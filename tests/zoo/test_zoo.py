"""The model zoo: every shipped classic CNN, counted exactly.

Parameter counts of the keras.applications models are Keras' model.summary()
figures (weights=None, include_top=True, default input, 1000 classes). The
networks Keras does not ship (LeNet-5, AlexNet, GoogLeNet, ResNet-18,
SE-ResNet-50) are checked against hand formulas written out below, from the
layer tables of their papers; none of the expected numbers comes from the
code under test. Stage shapes are literal.

Forward passes and training steps need the Model API (cnndsl.training.model) and are
skipped without it. The heavy ones are marked `slow` (about 25 s together on
2 cores): they run by default, and `-m "not slow"` or CNNDSL_SKIP_SLOW=1 leaves them out.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.cli import main as cli_main
from cnndsl.frontend.grammar import resource_path
from cnndsl.summary import rows

ROOT = Path(__file__).resolve().parents[2]
SPECS = resource_path("specs")
EXAMPLES = ROOT / "examples"

ZOO = [
    "lenet5", "alexnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet50", "resnet101",
    "resnet152", "inception_v3", "xception", "mobilenet", "mobilenet_v2", "densenet121",
    "se_resnet50",
]  # fmt: skip
LIBRARIES = ["resnet_blocks", "squeeze_excite", "vgg_blocks"]


def compile_zoo(name: str, **params: Any) -> cnndsl.Network:
    return cnndsl.compile(SPECS / f"{name}.cnn", **params)


# ---- hand formulas: parameter counts as (trainable, non-trainable) ----


@dataclass(frozen=True)
class Count:
    trainable: int = 0
    frozen: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.trainable + other.trainable, self.frozen + other.frozen)

    def __mul__(self, n: int) -> Count:
        return Count(self.trainable * n, self.frozen * n)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def total(counts: list[Count]) -> Count:
    out = Count()
    for c in counts:
        out = out + c
    return out


def conv(
    k: int | tuple[int, int], cin: int, cout: int, bias: bool = True, groups: int = 1
) -> Count:
    kh, kw = (k, k) if isinstance(k, int) else k
    return Count(kh * kw * (cin // groups) * cout + (cout if bias else 0))


def dense(n: int, units: int, bias: bool = True) -> Count:
    return Count(n * units + (units if bias else 0))


def bn(c: int, scale: bool = True) -> Count:
    """gamma (if scale) and beta train; moving mean and variance do not."""
    return Count((2 if scale else 1) * c, 2 * c)


def depthwise(k: int, c: int) -> Count:
    return Count(k * k * c)


def sep(k: int, cin: int, cout: int) -> Count:
    return Count(k * k * cin + cin * cout)


def lenet5_count(classes: int = 10) -> Count:
    # C1, C3 (fully connected to S2), C5, F6, output; S2 and S4 have no parameters.
    return total(
        [conv(5, 1, 6), conv(5, 6, 16), conv(5, 16, 120), dense(120, 84), dense(84, classes)]
    )


def alexnet_count(groups: int = 1, classes: int = 1000) -> Count:
    return total(
        [
            conv(11, 3, 96),
            conv(5, 96, 256, groups=groups),
            conv(3, 256, 384),
            conv(3, 384, 384, groups=groups),
            conv(3, 384, 256, groups=groups),
            dense(6 * 6 * 256, 4096),
            dense(4096, 4096),
            dense(4096, classes),
        ]
    )


# GoogLeNet, table 1: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
GOOGLENET_TABLE = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),                  # 3a, 3b
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),                 # 4a, 4b
    (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),                # 4c, 4d
    (256, 160, 320, 32, 128, 128),                                           # 4e
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),            # 5a, 5b
]  # fmt: skip


def googlenet_count(classes: int = 1000) -> Count:
    parts = [conv(7, 3, 64), conv(1, 64, 64), conv(3, 64, 192)]
    cin = 192
    for c1, r3, c3, r5, c5, pp in GOOGLENET_TABLE:
        parts += [
            conv(1, cin, c1),
            conv(1, cin, r3),
            conv(3, r3, c3),
            conv(1, cin, r5),
            conv(5, r5, c5),
            conv(1, cin, pp),
        ]
        cin = c1 + c3 + c5 + pp
    return total([*parts, dense(cin, classes)])


def resnet18_count(classes: int = 1000) -> Count:
    parts = [conv(7, 3, 64, bias=False), bn(64)]
    cin = 64
    for filters, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for unit in range(2):
            s = stride if unit == 0 else 1
            parts += [
                conv(3, cin, filters, bias=False),
                bn(filters),
                conv(3, filters, filters, bias=False),
                bn(filters),
            ]
            if s > 1 or cin != filters:
                parts += [conv(1, cin, filters, bias=False), bn(filters)]
            cin = filters
    return total([*parts, dense(512, classes)])


def keras_resnet_count(units: list[int], classes: int = 1000, se_ratio: int = 0) -> Count:
    """keras.applications ResNet v1 (biased convs), optionally with SE on every unit."""
    parts = [conv(7, 3, 64), bn(64)]
    cin = 64
    for filters, n in zip([64, 128, 256, 512], units, strict=True):
        out = 4 * filters
        for unit in range(n):
            if unit == 0:
                parts += [conv(1, cin, out), bn(out)]  # projection skip
            parts += [
                conv(1, cin, filters),
                bn(filters),
                conv(3, filters, filters),
                bn(filters),
                conv(1, filters, out),
                bn(out),
            ]
            if se_ratio:
                parts += [dense(out, out // se_ratio), dense(out // se_ratio, out)]
            cin = out
    return total([*parts, dense(cin, classes)])


def mobilenet_count(alpha: float, classes: int = 1000) -> Count:
    blocks = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        *[(512, 1)] * 5,
        (1024, 2),
        (1024, 1),
    ]
    cin = int(32 * alpha)
    parts = [conv(3, 3, cin, bias=False), bn(cin)]
    for filters, _ in blocks:
        cout = int(filters * alpha)
        parts += [depthwise(3, cin), bn(cin), conv(1, cin, cout, bias=False), bn(cout)]
        cin = cout
    return total([*parts, conv(1, cin, classes)])


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def mobilenet_v2_count(alpha: float, classes: int = 1000) -> Count:
    table = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    cin = make_divisible(32 * alpha)
    parts = [conv(3, 3, cin, bias=False), bn(cin)]
    for t, c, n, _ in table:
        out = make_divisible(int(c * alpha))
        for _ in range(n):
            mid = cin * t
            if t != 1:
                parts += [conv(1, cin, mid, bias=False), bn(mid)]
            parts += [depthwise(3, mid), bn(mid), conv(1, mid, out, bias=False), bn(out)]
            cin = out
    last = make_divisible(1280 * alpha) if alpha > 1 else 1280
    return total([*parts, conv(1, cin, last, bias=False), bn(last), dense(last, classes)])


# ---- pinned counts: (total, trainable, non-trainable) ----

KERAS = {
    "vgg16": (138_357_544, 138_357_544, 0),
    "vgg19": (143_667_240, 143_667_240, 0),
    "resnet50": (25_636_712, 25_583_592, 53_120),
    "resnet101": (44_707_176, 44_601_832, 105_344),
    "resnet152": (60_419_944, 60_268_520, 151_424),
    "inception_v3": (23_851_784, 23_817_352, 34_432),
    "xception": (22_910_480, 22_855_952, 54_528),
    "mobilenet": (4_253_864, 4_231_976, 21_888),
    "mobilenet_v2": (3_538_984, 3_504_872, 34_112),
    "densenet121": (8_062_504, 7_978_856, 83_648),
}

BY_HAND = {
    "lenet5": (lenet5_count(), (61_706, 61_706, 0)),
    "alexnet": (alexnet_count(), (62_378_344, 62_378_344, 0)),
    "googlenet": (googlenet_count(), (6_998_552, 6_998_552, 0)),
    "resnet18": (resnet18_count(), (11_699_112, 11_689_512, 9_600)),
    "se_resnet50": (
        keras_resnet_count([3, 4, 6, 3], se_ratio=16),
        (28_167_704, 28_114_584, 53_120),
    ),
}


def counts(net: cnndsl.Network) -> tuple[int, int, int]:
    return (net.total_params, net.trainable_params, net.non_trainable_params)


def as_triple(c: Count) -> tuple[int, int, int]:
    return (c.total, c.trainable, c.frozen)


def test_every_model_is_pinned() -> None:
    assert sorted([*KERAS, *BY_HAND]) == sorted(ZOO)
    assert sorted(STAGES) == sorted(ZOO)


@pytest.mark.parametrize("name", sorted(KERAS))
def test_keras_counts(name: str) -> None:
    assert counts(compile_zoo(name)) == KERAS[name]


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_paper_models_match_hand_formulas(name: str) -> None:
    formula, literal = BY_HAND[name]
    assert as_triple(formula) == literal
    assert counts(compile_zoo(name)) == literal


def test_lenet5_differs_from_the_paper_as_the_header_says() -> None:
    # The paper: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164 = 60,000 trainable.
    paper = 156 + 12 + 1_516 + 32 + 48_120 + 10_164
    assert paper == 60_000
    # Ours: no S2/S4 coefficients, a full C3 (2,416), a trained dense output (850).
    assert paper - 12 - 32 - 1_516 + 2_416 + 850 == lenet5_count().total


def test_alexnet_two_gpu_layout_has_the_papers_60_million() -> None:
    net = compile_zoo("alexnet", groups=2)
    assert counts(net) == as_triple(alexnet_count(groups=2)) == (60_965_224, 60_965_224, 0)


def test_se_resnet50_adds_the_papers_se_parameters() -> None:
    stages = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
    weights = sum(2 * n * c * c // 16 for n, c in stages)
    biases = sum(n * (c // 16 + c) for n, c in stages)
    assert weights == 2_514_944  # the paper's "about 2.5 million"
    se = compile_zoo("se_resnet50")
    assert se.total_params == KERAS["resnet50"][0] + weights + biases
    assert se.non_trainable_params == KERAS["resnet50"][2]


def test_resnet_macs_match_the_papers_flops() -> None:
    # Table 1 of He et al.: 1.8, 3.8, 7.6 and 11.3 ×10⁹ multiply-adds.
    for name, flops in [
        ("resnet18", 1.8e9),
        ("resnet50", 3.8e9),
        ("resnet101", 7.6e9),
        ("resnet152", 11.3e9),
    ]:
        assert abs(compile_zoo(name).macs - flops) / flops < 0.03, name


@pytest.mark.parametrize(
    ("name", "alpha"),
    [("mobilenet", 0.5), ("mobilenet", 0.75), ("mobilenet_v2", 0.35), ("mobilenet_v2", 1.4)],
)
def test_width_multiplier(name: str, alpha: float) -> None:
    formula = mobilenet_count if name == "mobilenet" else mobilenet_v2_count
    net = compile_zoo(name, alpha=alpha, classes=10)
    assert counts(net) == as_triple(formula(alpha, classes=10))


def test_mobilenet_counts_agree_with_the_formulas_at_alpha_1() -> None:
    assert as_triple(mobilenet_count(1.0)) == KERAS["mobilenet"]
    assert as_triple(mobilenet_v2_count(1.0)) == KERAS["mobilenet_v2"]


# ---- stage output shapes: the summary rows at the given depth ----

# fmt: off
STAGES: dict[str, tuple[int, list[tuple[str, list[int]]]]] = {
    "lenet5": (1, [
        ("image", [32, 32, 1]), ("C1", [28, 28, 6]), ("S2", [14, 14, 6]), ("tanh_1", [14, 14, 6]),
        ("C3", [10, 10, 16]), ("S4", [5, 5, 16]), ("tanh_2", [5, 5, 16]), ("C5", [1, 1, 120]),
        ("flatten_1", [120]), ("F6", [84]), ("out", [10]),
    ]),
    "alexnet": (1, [
        ("image", [227, 227, 3]), ("C1", [55, 55, 96]), ("lrn_1", [55, 55, 96]),
        ("S2", [27, 27, 96]), ("C3", [27, 27, 256]), ("lrn_2", [27, 27, 256]),
        ("S4", [13, 13, 256]), ("C5", [13, 13, 384]), ("C6", [13, 13, 384]),
        ("C7", [13, 13, 256]), ("S8", [6, 6, 256]), ("flatten_1", [9216]), ("F9", [4096]),
        ("dropout_1", [4096]), ("F10", [4096]), ("dropout_2", [4096]), ("out", [1000]),
    ]),
    "vgg16": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("block1", [112, 112, 64]), ("block2", [56, 56, 128]),
        ("block3", [28, 28, 256]), ("block4", [14, 14, 512]), ("block5", [7, 7, 512]),
        ("top", [1000]),
    ]),
    "vgg19": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("block1", [112, 112, 64]), ("block2", [56, 56, 128]),
        ("block3", [28, 28, 256]), ("block4", [14, 14, 512]), ("block5", [7, 7, 512]),
        ("top", [1000]),
    ]),
    "googlenet": (1, [
        ("image", [224, 224, 3]), ("conv_1", [112, 112, 64]), ("maxpool_1", [56, 56, 64]),
        ("lrn_1", [56, 56, 64]), ("conv_2", [56, 56, 64]), ("conv_3", [56, 56, 192]),
        ("lrn_2", [56, 56, 192]), ("maxpool_2", [28, 28, 192]), ("inception_3a", [28, 28, 256]),
        ("inception_3b", [28, 28, 480]), ("maxpool_3", [14, 14, 480]),
        ("inception_4a", [14, 14, 512]), ("inception_4b", [14, 14, 512]),
        ("inception_4c", [14, 14, 512]), ("inception_4d", [14, 14, 528]),
        ("inception_4e", [14, 14, 832]), ("maxpool_4", [7, 7, 832]),
        ("inception_5a", [7, 7, 832]), ("inception_5b", [7, 7, 1024]),
        ("global_avgpool_1", [1024]), ("dropout_1", [1024]), ("linear", [1000]),
    ]),
    "resnet18": (1, [
        ("image", [224, 224, 3]), ("conv1", [56, 56, 64]), ("conv2", [56, 56, 64]),
        ("conv3", [28, 28, 128]), ("conv4", [14, 14, 256]), ("conv5", [7, 7, 512]),
        ("global_avgpool_1", [512]), ("predictions", [1000]),
    ]),
    "resnet50": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("conv1", [56, 56, 64]), ("conv2", [56, 56, 256]),
        ("conv3", [28, 28, 512]), ("conv4", [14, 14, 1024]), ("conv5", [7, 7, 2048]),
        ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
    "resnet101": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("conv1", [56, 56, 64]), ("conv2", [56, 56, 256]),
        ("conv3", [28, 28, 512]), ("conv4", [14, 14, 1024]), ("conv5", [7, 7, 2048]),
        ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
    "resnet152": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("conv1", [56, 56, 64]), ("conv2", [56, 56, 256]),
        ("conv3", [28, 28, 512]), ("conv4", [14, 14, 1024]), ("conv5", [7, 7, 2048]),
        ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
    "inception_v3": (1, [
        ("image", [299, 299, 3]), ("preprocess_1", [299, 299, 3]),
        ("conv_bn_1", [149, 149, 32]), ("conv_bn_2", [147, 147, 32]),
        ("conv_bn_3", [147, 147, 64]), ("maxpool_1", [73, 73, 64]), ("conv_bn_4", [73, 73, 80]),
        ("conv_bn_5", [71, 71, 192]), ("maxpool_2", [35, 35, 192]), ("mixed0", [35, 35, 256]),
        ("mixed1", [35, 35, 288]), ("mixed2", [35, 35, 288]), ("mixed3", [17, 17, 768]),
        ("mixed4", [17, 17, 768]), ("mixed5", [17, 17, 768]), ("mixed6", [17, 17, 768]),
        ("mixed7", [17, 17, 768]), ("mixed8", [8, 8, 1280]), ("mixed9", [8, 8, 2048]),
        ("mixed10", [8, 8, 2048]), ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
    "xception": (2, [
        ("image", [299, 299, 3]), ("preprocess_1", [299, 299, 3]),
        ("base", [10, 10, 2048]), ("base/entry_flow", [19, 19, 728]),
        ("base/middle_flow", [19, 19, 728]), ("base/exit_flow", [10, 10, 2048]),
        ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
    "mobilenet": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("conv_1", [112, 112, 32]), ("batchnorm_1", [112, 112, 32]),
        ("relu6_1", [112, 112, 32]), ("depthwise_separable_1", [112, 112, 64]),
        ("depthwise_separable_2", [56, 56, 128]), ("depthwise_separable_3", [56, 56, 128]),
        ("depthwise_separable_4", [28, 28, 256]), ("depthwise_separable_5", [28, 28, 256]),
        ("depthwise_separable_6", [14, 14, 512]), ("depthwise_separable_7", [14, 14, 512]),
        ("depthwise_separable_8", [14, 14, 512]), ("depthwise_separable_9", [14, 14, 512]),
        ("depthwise_separable_10", [14, 14, 512]), ("depthwise_separable_11", [14, 14, 512]),
        ("depthwise_separable_12", [7, 7, 1024]), ("depthwise_separable_13", [7, 7, 1024]),
        ("avgpool_1", [1, 1, 1024]), ("dropout_1", [1, 1, 1024]), ("conv_preds", [1, 1, 1000]),
        ("flatten_1", [1000]), ("softmax_1", [1000]),
    ]),
    "mobilenet_v2": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("conv_1", [112, 112, 32]), ("batchnorm_1", [112, 112, 32]),
        ("relu6_1", [112, 112, 32]), ("inverted_residual_stage_1", [112, 112, 16]),
        ("inverted_residual_stage_2", [56, 56, 24]), ("inverted_residual_stage_3", [28, 28, 32]),
        ("inverted_residual_stage_4", [14, 14, 64]), ("inverted_residual_stage_5", [14, 14, 96]),
        ("inverted_residual_stage_6", [7, 7, 160]), ("inverted_residual_stage_7", [7, 7, 320]),
        ("conv_2", [7, 7, 1280]), ("batchnorm_2", [7, 7, 1280]), ("relu6_2", [7, 7, 1280]),
        ("global_avgpool_1", [1280]), ("predictions", [1000]),
    ]),
    "densenet121": (1, [
        ("image", [224, 224, 3]), ("preprocess_1", [224, 224, 3]),
        ("zeropad_1", [230, 230, 3]), ("conv_1", [112, 112, 64]),
        ("batchnorm_1", [112, 112, 64]), ("relu_1", [112, 112, 64]),
        ("zeropad_2", [114, 114, 64]), ("maxpool_1", [56, 56, 64]), ("conv2", [56, 56, 256]),
        ("pool2", [28, 28, 128]), ("conv3", [28, 28, 512]), ("pool3", [14, 14, 256]),
        ("conv4", [14, 14, 1024]), ("pool4", [7, 7, 512]), ("conv5", [7, 7, 1024]),
        ("batchnorm_2", [7, 7, 1024]), ("relu_2", [7, 7, 1024]), ("global_avgpool_1", [1024]),
        ("predictions", [1000]),
    ]),
    "se_resnet50": (1, [
        ("image", [224, 224, 3]), ("conv1", [56, 56, 64]), ("conv2", [56, 56, 256]),
        ("conv3", [28, 28, 512]), ("conv4", [14, 14, 1024]), ("conv5", [7, 7, 2048]),
        ("global_avgpool_1", [2048]), ("predictions", [1000]),
    ]),
}
# fmt: on


@pytest.mark.parametrize("name", ZOO)
def test_stage_shapes(name: str) -> None:
    depth, expected = STAGES[name]
    net = compile_zoo(name)
    got = [(r.path, list(r.shape or ())) for r in rows(net.graph, depth)]
    assert got == expected


# ---- parameters, CLI, headers ----


@pytest.mark.parametrize("name", ZOO)
def test_classes_and_size_can_be_set(name: str) -> None:
    net = compile_zoo(name, classes=5, size=96)
    assert net.output_shape == (5,)
    assert net.input_shape[:2] == (96, 96)


@pytest.mark.parametrize("name", ZOO)
def test_cli_compile_depth_1(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["compile", f"zoo.{name}", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    total_params = (KERAS.get(name) or BY_HAND[name][1])[0]
    assert f"Total params: {total_params:,}" in out
    assert (
        cli_main(["compile", f"zoo.{name}", "--depth", "1", "--set", "classes=5", "size=96"]) == 0
    )
    assert "[5]" in capsys.readouterr().out


@pytest.mark.parametrize("name", ZOO + LIBRARIES)
def test_header_comment(name: str) -> None:
    text = (SPECS / f"{name}.cnn").read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 3, f"{name}.cnn needs a header comment"
    joined = " ".join(header)
    assert re.search(r"(19|20)\d\d\)", joined), "the header names the paper and year"
    if name in ZOO:
        assert re.search(r"Input \d+×\d+×\d", joined), "the header gives the input size"
        total_params = (KERAS.get(name) or BY_HAND[name][1])[0]
        assert f"{total_params:,}" in joined, "the header gives the reference count"


@pytest.mark.parametrize("name", ZOO + LIBRARIES)
def test_importable_as_zoo_module(name: str) -> None:
    # A spec that only imports the zoo file and defines its own tiny network.
    text = f"import zoo.{name}\nnetwork probe() {{ input x: [8, 8, 3] return x -> relu }}\n"
    assert cnndsl.compile(text).output_shape == (8, 8, 3)


def test_blocks_are_reusable_from_other_specs() -> None:
    text = """
        import zoo.resnet_blocks
        import zoo.mobilenet_v2
        network probe(classes=3) {
            input x: [32, 32, 16]
            y = x
                -> bottleneck_unit(8, stride=2, se_ratio=4)       # [16, 16, 32]
                -> basic_unit(32)                                 # identity skip
                -> inverted_residual(32, expansion=6)             # identity skip
            return y -> global_avgpool -> dense(classes, activation=softmax)
        }
    """
    net = cnndsl.compile(text)
    expected = total(
        [
            conv(1, 16, 32),
            bn(32),  # projection
            conv(1, 16, 8),
            bn(8),
            conv(3, 8, 8),
            bn(8),
            conv(1, 8, 32),
            bn(32),
            dense(32, 8),
            dense(8, 32),  # squeeze-and-excitation, ratio 4
            conv(3, 32, 32, bias=False),
            bn(32),
            conv(3, 32, 32, bias=False),
            bn(32),
            conv(1, 32, 192, bias=False),
            bn(192),
            depthwise(3, 192),
            bn(192),
            conv(1, 192, 32, bias=False),
            bn(32),
            dense(32, 3),
        ]
    )
    assert counts(net) == as_triple(expected)
    assert sum(1 for layer in net.layers if layer.op == "add") == 3


def test_squeeze_excite_block() -> None:
    net = cnndsl.compile_block(SPECS / "squeeze_excite.cnn", "squeeze_excite", (7, 7, 64))
    assert net.output_shape == (7, 7, 64)
    assert net.total_params == as_triple(dense(64, 4) + dense(4, 64))[0]


def test_frozen_xception_base() -> None:
    text = """
        import zoo.xception
        network transfer(classes=5) {
            input image: [71, 71, 3]
            features = image -> xception_base(name="base", trainable=false)
            return features -> global_avgpool -> dense(classes, activation=softmax, name="head")
        }
    """
    net = cnndsl.compile(text)
    base = KERAS["xception"][0] - dense(2048, 1000).total
    assert counts(net) == (base + dense(2048, 5).total, dense(2048, 5).total, base)
    assert all(not layer.trainable for layer in net.layers if layer.path.startswith("base/"))
    assert net.graph["base/exit_flow/separable_conv_2"].trainable is False
    assert net.graph["head"].trainable


# The blocks LANGUAGE.md defines, as examples/language keeps them.
LANGUAGE_MD_BLOCKS = (EXAMPLES / "language" / "se_xception.cnn").read_text(encoding="utf-8")


def test_language_md_flowers_example(tmp_path: Path) -> None:
    # LANGUAGE.md: the flowers spec imports a blocks.cnn beside it and zoo.xception;
    # the zoo must not clash with the blocks that LANGUAGE.md defines (se, xception_entry).
    (tmp_path / "blocks.cnn").write_text(LANGUAGE_MD_BLOCKS, encoding="utf-8")
    spec = tmp_path / "flowers.cnn"
    spec.write_text(
        """
import "blocks.cnn"              # path relative to this file
import zoo.xception              # a spec shipped with cnndsl

network flowers(classes=5) {
    input image: [224, 224, 3]
    train {
        loss      = sparse_categorical_crossentropy
        optimizer = sgd(lr=0.2, momentum=0.9, decay=0.01)
        metrics   = [accuracy]
        batch     = 32
        epochs    = 5
    }
    features = image -> xception_base(name="base", trainable=false)
    return features -> global_avgpool -> dense(classes, activation=softmax, name="head")
}
""",
        encoding="utf-8",
    )
    net = cnndsl.compile(spec)
    assert net.trainable_params == dense(2048, 5).total


def test_transfer_learning_spec() -> None:
    net = cnndsl.compile(EXAMPLES / "transfer_learning" / "flowers.cnn", size=32)
    base = KERAS["xception"][0] - dense(2048, 1000).total
    assert counts(net) == (base + 10_245, 10_245, base)
    assert net.output_shape == (5,)
    assert net.train["optimizer"]["name"] == "sgd"


# ---- `cnndsl zoo` ----


def test_zoo_command_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in ZOO:
        total_params = (KERAS.get(name) or BY_HAND[name][1])[0]
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{total_params:,}" in line
    assert "zoo.resnet_blocks" in out.splitlines()[-1]


def test_zoo_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["zoo", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "cnndsl.zoo/1"
    models = {m["name"]: m for m in doc["models"]}
    assert set(ZOO) <= set(models)
    assert models["resnet34"]["params"] == 21_306_826  # Hands-On ML's, shipped before the zoo
    xc = models["xception"]
    assert (xc["params"], xc["trainable_params"], xc["non_trainable_params"]) == KERAS["xception"]
    assert xc["input_shape"] == [299, 299, 3] and xc["output_shape"] == [1000]
    assert xc["macs"] > 8e9 and xc["spec"] == "zoo.xception"
    assert models["mobilenet"]["parameters"]["alpha"] == 1.0
    assert set(doc["libraries"]) >= {f"zoo.{n}" for n in LIBRARIES}
    assert not any(m["error"] for m in doc["models"])


def test_zoo_command_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["zoo", "resnet1*", "--format", "json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert names == ["resnet18", "resnet101", "resnet152"]
    assert cli_main(["zoo", "no_such_model"]) == 1
    assert "no shipped model" in capsys.readouterr().err


# ---- forward passes and training steps (need the Model API) ----


def _model_api() -> bool:
    try:
        from cnndsl.training.model import Model  # noqa: F401
    except ImportError:
        return False
    return True


needs_model = pytest.mark.skipif(not _model_api(), reason="cnndsl.training.model is not available")


def run_slow(request: pytest.FixtureRequest) -> None:
    """Skip a `slow` test where CNNDSL_SKIP_SLOW is set (a quick local run)."""
    if os.environ.get("CNNDSL_SKIP_SLOW"):
        pytest.skip("slow: CNNDSL_SKIP_SLOW is set")


# Native-size forward passes of these take several seconds each in NumPy.
SLOW_FORWARD = {"vgg16", "vgg19", "resnet101", "resnet152", "se_resnet50", "alexnet"}
# Reduced input size for one training step; the smallest each network takes is near it.
TRAIN_SIZE = {"alexnet": 67, "inception_v3": 75}
SLOW_TRAIN = {
    "vgg16",
    "vgg19",
    "resnet101",
    "resnet152",
    "inception_v3",
    "se_resnet50",
    "alexnet",
}


def _param(name: str, slow: set[str]) -> object:
    return pytest.param(name, marks=pytest.mark.slow) if name in slow else name


@needs_model
@pytest.mark.parametrize("name", [_param(n, SLOW_FORWARD) for n in ZOO])
def test_native_forward(name: str, request: pytest.FixtureRequest) -> None:
    if name in SLOW_FORWARD:
        run_slow(request)
    net = compile_zoo(name)
    model = net.build(seed=0)
    x = np.random.default_rng(0).random((1, *net.input_shape), dtype=np.float32)
    y = model(x)
    assert y.shape == (1, net.output_shape[0])
    assert np.all(np.isfinite(y))
    assert math.isclose(float(y.sum()), 1.0, rel_tol=1e-4)  # softmax


@needs_model
@pytest.mark.parametrize("name", [_param(n, SLOW_TRAIN) for n in ZOO])
def test_training_step_at_reduced_size(name: str, request: pytest.FixtureRequest) -> None:
    if name in SLOW_TRAIN:
        run_slow(request)
    net = compile_zoo(name, classes=5, size=TRAIN_SIZE.get(name, 32))
    model = net.build(seed=0)
    x = np.random.default_rng(1).random((2, *net.input_shape), dtype=np.float32)
    before = [w.copy() for w in model.get_weights()]
    loss, _ = model.train_step(x, np.array([1, 3]))
    assert math.isfinite(loss) and loss > 0
    after = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# ---- the example scripts ----


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@needs_model
def test_transfer_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    # An empty cache: the script says how to get the pretrained weights and goes on.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    rng = np.random.default_rng(0)
    for cls in ("daisy", "roses"):
        (tmp_path / "flowers" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "flowers" / cls / f"{i}.png")
    script = load_script(EXAMPLES / "transfer_learning" / "transfer.py")
    out = tmp_path / "flowers.npz"
    args = [
        str(tmp_path / "flowers"),
        "--size",
        "16",
        "--head-epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--batch",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]
    result = script.main(args)
    assert math.isfinite(result["loss"]) and 0 <= result["accuracy"] <= 1
    assert "cnndsl weights fetch xception --no-top" in capsys.readouterr().err
    assert out.is_file()
    with np.load(out) as saved:
        assert "head:kernel" in saved.files and saved["head:kernel"].shape == (2048, 2)
        assert saved["class_names"].tolist() == ["daisy", "roses"]
    # Start again from the saved weights.
    again = script.main(
        [
            *args[:-1],
            "--weights",
            str(out),
            "--quiet",
            "--fine-tune-epochs",
            "0",
            "--head-epochs",
            "0",
        ]
    )
    assert math.isclose(again["loss"], result["loss"], rel_tol=1e-4)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_model
def test_fashion_mnist_idx_script(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    script = load_script(EXAMPLES / "fashion_mnist" / "train_idx.py")
    out = tmp_path / "fm.npz"
    result = script.main(
        [
            str(tmp_path / "train-images-idx3-ubyte.gz"),
            "--epochs",
            "1",
            "--batch",
            "20",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert math.isfinite(result["loss"]) and out.is_file()
