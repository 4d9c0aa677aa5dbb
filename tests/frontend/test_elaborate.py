"""Elaboration: blocks, loops, repeats, defaults and names expand into the IR as specified."""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl.ir import verify
from cnndsl.source import CnnError


def compile_net(body: str, header: str = "", **params):  # type: ignore[no-untyped-def]
    return cnndsl.compile(
        header + "network n(k=2) {\n    input x: [8, 8, 3]\n" + body + "\n}", **params
    )


def paths(net) -> list[str]:  # type: ignore[no-untyped-def]
    return [layer.path for layer in net.layers]


def test_chain_names_layers_per_op() -> None:
    net = compile_net("    return x -> conv(4, 3) -> relu -> conv(4, 3)")
    assert paths(net) == ["x", "conv_1", "relu_1", "conv_2"]
    verify(net.graph)


def test_repeat_of_a_layer_and_of_a_block() -> None:
    header = "block unit(f) { return input -> conv(f, 1) -> relu }\n"
    net = compile_net("    return x -> unit(5) * 3 -> relu * 2", header)
    assert paths(net) == [
        "x",
        "unit_1/conv_1",
        "unit_1/relu_1",
        "unit_2/conv_1",
        "unit_2/relu_1",
        "unit_3/conv_1",
        "unit_3/relu_1",
        "relu_1",
        "relu_2",
    ]
    scope = net.graph["unit_2/conv_1"].scopes[0]
    assert (scope.path, scope.block, scope.repeat) == ("unit_2", "unit", "repeat 2 of 3")


def test_names_and_nested_paths() -> None:
    header = (
        "block inner() { return input -> conv(2, 1) }\n"
        'block outer() { return input -> inner -> inner(name="second") }\n'
    )
    net = compile_net('    return x -> outer(name="stage2")', header)
    assert paths(net) == ["x", "stage2/inner_1/conv_1", "stage2/second/conv_1"]


def test_operands_keep_their_order_and_duplicates() -> None:
    net = compile_net("    return concat(x, x -> maxpool(1), x)")
    concat = net.graph["concat_1"]
    assert concat.inputs == ("x", "maxpool_1", "x")
    assert concat.shape == (8, 8, 9)
    add = compile_net("    return x + x").graph["add_1"]
    assert add.inputs == ("x", "x")


def test_defaults_are_lexically_scoped() -> None:
    header = (
        "defaults conv(kernel=3, padding=same)\n"
        "block b() { defaults conv(kernel=1)\n return input -> conv(2) }\n"
    )
    net = compile_net(
        "    y = x -> conv(4)\n    defaults conv(kernel=5)\n    return y -> conv(4) -> b", header
    )
    kernels = [layer.attrs["kernel"] for layer in net.layers if layer.op == "conv"]
    assert kernels == [(3, 3), (5, 5), (1, 1)]


def test_defaults_never_reach_blocks_defined_elsewhere(tmp_path) -> None:
    (tmp_path / "lib.cnn").write_text("block b() { return input -> conv(2, 3) }")
    (tmp_path / "main.cnn").write_text(
        'import "lib.cnn"\ndefaults conv(padding=same)\n'
        "network n() {\n input x: [8, 8, 1]\n return x -> conv(2, 3) -> b\n}"
    )
    net = cnndsl.compile(tmp_path / "main.cnn")
    assert [layer.shape for layer in net.layers] == [(8, 8, 1), (8, 8, 2), (6, 6, 2)]


def test_positional_beats_defaults() -> None:
    net = compile_net("    return x -> conv(4, 5)", "defaults conv(kernel=3)\n")
    assert net.graph["conv_1"].attrs["kernel"] == (5, 5)


def test_rebinding_is_ssa_and_if_opens_no_scope() -> None:
    body = (
        "    old = x -> conv(4, 1)\n"
        "    y = old\n"
        "    if y.channels == 4 {\n        y = y -> conv(6, 1)\n    }\n"
        "    return concat(old, y)"
    )
    net = compile_net(body)
    assert net.output_shape == (8, 8, 10)


def test_for_loops_lists_and_conditional_expressions() -> None:
    body = (
        "    for f in [2] * 2 + [4] {\n"
        "        x = x -> conv(f, 3, padding=same, stride=(1 if x.channels == f else 2))\n"
        "    }\n"
        "    return x"
    )
    net = compile_net(body)
    assert [layer.shape for layer in net.layers][1:] == [(4, 4, 2), (4, 4, 2), (2, 2, 4)]


def test_tensor_attributes_and_arithmetic() -> None:
    body = (
        "    assert x.shape == [8, 8, 3]\n"
        "    assert x.height * x.width // 4 == 16 and x.channels % 2 == 1\n"
        "    assert len(range(k)) == 2 and max(1, k) == 2 and -k < 0\n"
        "    return x -> conv(x.channels * k, 1)"
    )
    assert compile_net(body).output_shape == (8, 8, 6)


def test_network_parameters_can_be_overridden() -> None:
    net = compile_net("    return x -> conv(k, 1)", k=7)
    assert net.output_shape == (8, 8, 7)
    with pytest.raises(CnnError) as info:
        compile_net("    return x", kk=1)
    assert "did you mean 'k'" in info.value.diagnostics[0].message


def test_trainable_false_freezes_a_whole_block() -> None:
    header = "block b() { return input -> conv(2, 1) -> batchnorm }\n"
    net = compile_net("    return x -> b(trainable=false) -> conv(3, 1)", header)
    assert [layer.trainable for layer in net.layers] == [True, False, False, True]
    assert net.trainable_params == 2 * 3 + 3
    assert net.non_trainable_params == (3 * 2 + 2) + 4 * 2


def test_layer_called_on_tensors_and_configured_for_a_chain() -> None:
    net = compile_net("    a = leaky_relu(x, alpha=0.1)\n    return a -> leaky_relu(0.2)")
    alphas = [layer.attrs["alpha"] for layer in net.layers[1:]]
    assert alphas == [0.1, 0.2]


def test_multiply_broadcasts_like_numpy() -> None:
    body = "    s = x -> global_avgpool -> dense(3, activation=sigmoid)\n    return x * s"
    net = compile_net(body)
    assert net.output_shape == (8, 8, 3)


def test_train_section() -> None:
    body = (
        "    train {\n        loss = sparse_categorical_crossentropy\n"
        "        optimizer = adam(lr=0.01)\n        metrics = [accuracy]\n"
        "        batch = 16\n        epochs = 3\n    }\n    return x"
    )
    assert compile_net(body).train == {
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"name": "adam", "lr": 0.01},
        "metrics": ["accuracy"],
        "batch": 16,
        "epochs": 3,
    }


def test_budget_that_holds() -> None:
    net = compile_net(
        "    budget { params <= 100 macs <= 1e9 layers == 1 }\n    return x -> conv(2, 1)"
    )
    assert net.total_params == 8


def test_multiple_inputs_and_outputs() -> None:
    net = cnndsl.compile(
        "network two() {\n input a: [4, 4, 1]\n input b: [4, 4, 1]\n"
        " return (a + b, concat(a, b))\n}"
    )
    assert net.graph.inputs == ["a", "b"]
    assert net.graph.outputs == ["add_1", "concat_1"]


def test_import_zoo_and_file(tmp_path) -> None:
    (tmp_path / "lib.cnn").write_text("block twice() { return input -> relu * 2 }")
    (tmp_path / "main.cnn").write_text(
        'import "lib.cnn"\nimport zoo.resnet34\n'
        "network n() {\n input x: [8, 8, 64]\n return x -> twice -> residual_unit(64)\n}"
    )
    net = cnndsl.compile(tmp_path / "main.cnn")
    assert net.output_shape == (8, 8, 64)
    assert net.graph["residual_unit_1/conv_1"].span.file.endswith("resnet34.cnn")


def test_spans_point_into_the_block_definition() -> None:
    header = "block b() {\n    return input -> conv(2, 1)\n}\n"
    net = compile_net("    return x -> b", header)
    span = net.graph["b_1/conv_1"].span
    assert (span.line, span.col) == (2, 21)
