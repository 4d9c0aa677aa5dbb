"""Receptive fields worked by hand: r' = r + (k - 1)·j, j' = j·s, widest where branches meet."""

from __future__ import annotations

import cnndsl


def fields(body: str, shape: str = "[32, 32, 8]") -> dict[str, tuple[int, int] | None]:
    text = f"network n() {{\n    input x: {shape}\n{body}\n}}"
    return {layer.path: layer.receptive for layer in cnndsl.compile(text).graph}


def test_strided_chain() -> None:
    got = fields("    return x -> conv(4, 3, stride=2, name=\"a\") -> conv(4, 3, name=\"b\")"
                 " -> maxpool(2, name=\"p\")")  # fmt: skip
    # a: 1 + 2·1 = 3 (jump 2); b: 3 + 2·2 = 7; p: 7 + 1·2 = 9 (jump 4)
    assert (got["a"], got["b"], got["p"]) == ((3, 3), (7, 7), (9, 9))


def test_dilated() -> None:
    got = fields('    return x -> conv(4, 3, dilation=2, name="a") -> conv(4, 3, name="b")')
    # a: effective kernel 2·(3 - 1) + 1 = 5; b: 5 + 2 = 7
    assert (got["a"], got["b"]) == ((5, 5), (7, 7))


def test_residual_takes_the_wider_branch() -> None:
    body = """    a = x -> conv(8, 3, padding=same, name="a")
    b = x -> conv(8, 3, padding=same) -> conv(8, 3, padding=same, name="b")
    return a + b"""
    got = fields(body)
    assert (got["a"], got["b"], got["add_1"]) == ((3, 3), (5, 5), (5, 5))


def test_inception_concat() -> None:
    body = """    one = x -> conv(4, 1, name="one")
    three = x -> conv(4, 3, padding=same, name="three")
    five = x -> conv(4, 5, padding=same, name="five")
    pool = x -> maxpool(3, stride=1, padding=same) -> conv(4, 1, name="proj")
    return concat(one, three, five, pool)"""
    got = fields(body)
    assert (got["one"], got["three"], got["five"], got["proj"]) == ((1, 1), (3, 3), (5, 5), (3, 3))
    assert got["concat_1"] == (5, 5)


def test_squeeze_excitation_gate_adds_no_spatial_field() -> None:
    body = """    y = x -> conv(8, 3, padding=same, name="a")
    gate = y -> global_avgpool -> dense(2, activation=relu) -> dense(8, activation=sigmoid)
    return y * gate -> conv(8, 3, padding=same, name="b")"""
    got = fields(body)
    # The gate is a vector broadcast over every pixel: the product keeps a's field.
    assert got["a"] == (3, 3) and got["multiply_1"] == (3, 3) and got["b"] == (5, 5)
    assert got["global_avgpool_1"] == got["dense_2"] == (32, 32)  # vectors: the whole input


def test_vectors_see_the_whole_input() -> None:
    body = "    return x -> conv(4, 7, padding=same) -> conv(4, 7, padding=same) -> flatten"
    got = fields(body + ' -> dense(3, name="d")', "[10, 10, 1]")
    # conv_2's field (13) is wider than the input; flatten and dense are the input (10).
    assert got["conv_2"] == (13, 13)
    assert got["flatten_1"] == got["d"] == (10, 10)


def test_se_resnet_fields_equal_resnet() -> None:
    plain = cnndsl.compile("zoo.resnet50").graph
    se = cnndsl.compile("zoo.se_resnet50").graph
    for stage in ("conv2", "conv3", "conv4", "conv5"):
        last = [layer for layer in plain if layer.path.startswith(stage + "/")][-1]
        se_last = [layer for layer in se if layer.path.startswith(stage + "/")][-1]
        assert se_last.receptive == last.receptive, stage
    assert [layer.receptive for layer in plain][-1] == (224, 224)
