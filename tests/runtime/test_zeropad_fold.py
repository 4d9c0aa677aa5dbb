"""A zeropad folded into the conv that reads it, with different padding on every side.

`fuse_zeropad` hands the zeropad's ((top, bottom), (left, right)) to the conv as
`pad_input`; a side swapped anywhere (lowering, the conv's geometry, its backward
crop) must show. The fused plan is checked against the unfused one (forward and
every weight gradient in float64, a conv before the zeropad so that the input
gradient through the fused conv counts too) and the forward against a direct loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.lower import lower
from cnndsl.training.model import Model

# (reader, zeropad): asymmetric top/bottom and left/right, none of them mirror images
CASES = [
    ("conv(4, 3, stride=2)", ((0, 2), (1, 0))),
    ("conv(4, 3, padding=same)", ((2, 0), (0, 1))),
    ("conv(4, 3, stride=2, padding=same)", ((1, 0), (0, 3))),
    ("depthwise_conv(3, stride=2)", ((0, 1), (2, 0))),
    ("separable_conv(4, 3)", ((1, 3), (0, 2))),
]


def spec(reader: str, pad: tuple[tuple[int, int], tuple[int, int]]) -> str:
    return f"""
network n() {{
    input x: [7, 6, 2]
    return x -> conv(3, 1, name="pre") -> zeropad({pad}) -> {reader[:-1]}, name="c")
        -> flatten -> dense(3, activation=softmax)
}}"""


def twins(net: cnndsl.Network) -> tuple[Model, Model]:
    fused = Model(net.graph, seed=4, dtype="float64")
    plain = Model(net.graph, seed=4, dtype="float64")
    plain.plan = lower(net.graph, fuse=False)
    plain._train_plans.clear()
    for key, value in fused.params.items():
        np.testing.assert_array_equal(plain.params[key], value)
    return fused, plain


@pytest.mark.parametrize(("reader", "pad"), CASES, ids=[c[0] for c in CASES])
def test_fused_zeropad_computes_what_the_unfused_plan_computes(
    reader: str, pad: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    net = cnndsl.compile(spec(reader, pad))
    fused_plan = lower(net.graph)
    (conv,) = [s for s in fused_plan if s.path == "c"]
    assert conv.attrs["pad_input"] == pad  # ((top, bottom), (left, right)), in that order
    assert fused_plan.steps[conv.inputs[0]].path == "pre"
    fused, plain = twins(net)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 7, 6, 2)), rng.integers(0, 3, 3)
    np.testing.assert_allclose(fused(x), plain(x), rtol=1e-12, atol=1e-14)
    loss, grads = fused.gradients(x, y)
    ref_loss, ref_grads = plain.gradients(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(grads) == set(ref_grads)
    for key, g in ref_grads.items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-9, atol=1e-12, err_msg=key)
    # the padding is not symmetric in effect: mirroring the input changes the output
    assert not np.allclose(fused(x[:, ::-1]), fused(x))


def conv_by_definition(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, same: bool
) -> np.ndarray:
    """Cross-correlation over x, padded first Keras' `same` way (extra row bottom/right)."""
    n, h, w, _ = x.shape
    f = kernel.shape[0]
    if same:
        oh, ow = math.ceil(h / stride), math.ceil(w / stride)
        th, tw = max((oh - 1) * stride + f - h, 0), max((ow - 1) * stride + f - w, 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
        h, w = x.shape[1:3]
    oh, ow = (h - f) // stride + 1, (w - f) // stride + 1
    out = np.zeros((n, oh, ow, kernel.shape[3]))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(kernel.shape[3]):
                    window = x[b, i * stride : i * stride + f, j * stride : j * stride + f, :]
                    out[b, i, j, k] = bias[k] + np.sum(window * kernel[:, :, :, k])
    return out


@pytest.mark.parametrize(("reader", "pad"), CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_fused_zeropad_conv_matches_the_definition(
    reader: str, pad: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    net = cnndsl.compile(f"""
network n() {{
    input x: [7, 6, 2]
    return x -> zeropad({pad}) -> {reader[:-1]}, name="c")
}}""")
    model = Model(net.graph, seed=5, dtype="float64")
    assert "pad_input" in next(s for s in model.plan if s.path == "c").attrs
    x = np.random.default_rng(1).normal(size=(2, 7, 6, 2))
    padded = np.pad(x, ((0, 0), *pad, (0, 0)))
    stride = 2 if "stride=2" in reader else 1
    expected = conv_by_definition(
        padded, model.params["c:kernel"], model.params["c:bias"], stride, "same" in reader
    )
    got = model(x)
    assert got.shape == expected.shape == (2, *net.output_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
