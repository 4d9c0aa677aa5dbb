"""Passes: pure functions of the IR, checked against numbers a reader can work by hand."""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl.compiler import load, pick_network
from cnndsl.frontend.elaborate import Elaborator
from cnndsl.ir import verify
from cnndsl.passes import PIPELINE, estimate_memory, totals
from cnndsl.passes.memory import workspace


def elaborated(text: str):  # type: ignore[no-untyped-def]
    loader, scope = load(text)
    return Elaborator(loader).network(scope, pick_network(scope, None), {})


def test_every_pass_is_pure_and_keeps_the_graph_valid() -> None:
    g = elaborated("network n() {\n input x: [9, 9, 2]\n return x -> conv(4, 3) -> relu\n}")
    current = g
    for step in PIPELINE:
        before = [(layer.path, layer.weights, layer.macs, layer.receptive) for layer in current]
        out = step(current)
        verify(out)
        after = [(layer.path, layer.weights, layer.macs, layer.receptive) for layer in current]
        assert after == before, f"{step.__name__} changed its input"
        current = out
    assert current["conv_1"].params == 3 * 3 * 2 * 4 + 4
    assert current["conv_1"].receptive == (3, 3) and g["conv_1"].receptive is None


def test_three_3x3_convs_see_as_far_as_one_7x7() -> None:
    three = cnndsl.compile(
        "network n() {\n input x: [32, 32, 3]\n"
        " return x -> conv(8, 3) -> conv(8, 3) -> conv(8, 3)\n}"
    )
    one = cnndsl.compile("network n() {\n input x: [32, 32, 3]\n return x -> conv(8, 7)\n}")
    assert three.layers[-1].receptive == one.layers[-1].receptive == (7, 7)
    # ... with fewer weights: 3·(3·3·8·8) against 7·7·8·8 for the same channels.
    assert [layer.receptive for layer in three.layers] == [(1, 1), (3, 3), (5, 5), (7, 7)]


def test_receptive_field_with_strides_and_dilation() -> None:
    net = cnndsl.compile(
        "network n() {\n input x: [64, 64, 1]\n"
        " return x -> conv(2, 3, stride=2) -> maxpool(2) -> conv(2, 3, dilation=2)\n}"
    )
    # r: 1 -> 3 (jump 2) -> 3 + 1·2 = 5 (jump 4) -> 5 + (5 - 1)·4 = 21 (jump 4)
    assert [layer.receptive for layer in net.layers] == [(1, 1), (3, 3), (5, 5), (21, 21)]
    assert [layer.jump for layer in net.layers] == [(1, 1), (2, 2), (4, 4), (4, 4)]


def test_upsample_receptive_field_macs_and_workspace_by_hand() -> None:
    net = cnndsl.compile(
        "network n() {\n input x: [8, 8, 2]\n"
        " return x -> maxpool(2) -> upsample(2, interpolation=bilinear) -> conv(2, 3)\n}"
    )
    # r: 1 -> 2 (jump 2) -> 2 + (2 - 1)·2 = 4 (a bilinear output blends two neighbours;
    # the jump stays 2, an upper bound of the real 1) -> 4 + (3 - 1)·2 = 8
    assert [layer.receptive for layer in net.layers] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert [layer.jump for layer in net.layers] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    # 8×8×2 outputs, each blending 4 pixels; then 6×6×2 outputs of 3·3·2 products
    assert [layer.macs for layer in net.layers] == [0, 0, 8 * 8 * 2 * 4, 6 * 6 * 2 * 18]
    up = net.graph["upsample_1"]
    # rows pass on 4×4×2: edge-padded input 6·4, its result 8·4, edge-padded result 8·6
    assert workspace(up, [net.graph[p] for p in up.inputs]) == ((24 + 32 + 48) * 2, True)


def test_macs_by_hand() -> None:
    net = cnndsl.compile(
        "network n() {\n input x: [28, 28, 1]\n return x -> conv(6, 5) -> flatten -> dense(10)\n}"
    )
    assert [layer.macs for layer in net.layers] == [0, 24 * 24 * 6 * 25, 0, 24 * 24 * 6 * 10]


def test_memory_estimate_by_hand() -> None:
    net = cnndsl.compile(
        "network n() {\n input x: [4, 4, 1]\n return x -> conv(2, 1) -> relu -> flatten\n}"
    )
    mem = estimate_memory(net.graph, batch=8)
    params = (1 * 2 + 2) * 4
    # Sizes in floats per sample: input 16, conv 32, relu 32, flatten 32. Inference peak: the
    # input and conv live together (48), then conv and relu (64), then relu and flatten (64).
    assert mem.params == params
    assert mem.inference_peak == 64 * 8 * 4 + params
    activations = (16 + 32 + 32 + 32) * 8 * 4
    assert mem.training == 2 * activations + params + params * 2


def test_totals_and_frozen_split() -> None:
    net = cnndsl.compile(
        "network n() {\n input x: [4, 4, 3]\n"
        " return x -> conv(2, 1, trainable=false) -> batchnorm\n}"
    )
    assert totals(net.graph) == {
        "params": 8 + 8,
        "trainable_params": 4,
        "non_trainable_params": 8 + 4,
        "macs": 4 * 4 * 2 * 3,
        "layers": 2,
    }


def test_zoo_name_in_the_api() -> None:
    assert cnndsl.compile("zoo.resnet34", size=32).output_shape == (10,)
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.compile("zoo.resnet343")
    assert "did you mean 'resnet34'" in info.value.diagnostics[0].message


def test_summary_depth_collapses_nested_blocks() -> None:
    from cnndsl.summary import rows

    net = cnndsl.compile(
        "block leaf() { return input -> conv(2, 1) -> relu }\n"
        "block mid() { return input -> leaf -> leaf }\n"
        'network n() {\n input x: [4, 4, 2]\n return x -> mid(name="m") -> relu\n}'
    )
    full = [(r.path, r.is_block) for r in rows(net.graph)]
    assert full == [
        ("x", False),
        ("m", True),
        ("m/leaf_1", True),
        ("m/leaf_1/conv_1", False),
        ("m/leaf_1/relu_1", False),
        ("m/leaf_2", True),
        ("m/leaf_2/conv_1", False),
        ("m/leaf_2/relu_1", False),
        ("relu_1", False),
    ]
    depth1 = [(r.path, r.collapsed, r.params) for r in rows(net.graph, depth=1)]
    assert depth1 == [("x", False, 0), ("m", True, 2 * (2 * 2 + 2)), ("relu_1", False, 0)]
    depth2 = [r.path for r in rows(net.graph, depth=2)]
    assert depth2 == ["x", "m", "m/leaf_1", "m/leaf_2", "relu_1"]
