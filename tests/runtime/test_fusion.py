"""Lowering-time kernel choices: fused activations, in-place activations, conv variants.

The fused plan must compute what the unfused one computes (`lower(g, fuse=False)`):
same outputs and same gradients on whole networks in float64, in training and in
inference, and the same bits in float32 where nothing was reassociated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.lower import lower
from cnndsl.training.model import Model

SPEC = """
defaults conv(kernel=3, padding=same, bias=false)

block unit(filters, stride=1) {
    main = input -> conv(filters, stride=stride) -> batchnorm -> relu
        -> conv(filters) -> batchnorm
    skip = input
    if stride > 1 {
        skip = input -> conv(filters, 1, stride=stride) -> batchnorm
    }
    return relu(main + skip)
}

network n(classes=3) {
    input image: [8, 8, 3]
    x = image -> conv(6, activation=relu) -> conv(6) -> relu
        -> unit(6) -> unit(8, stride=2) -> maxpool(2)
        -> depthwise_conv(3, padding=same, bias=false) -> batchnorm -> relu6
        -> separable_conv(8, 3, padding=same) -> relu
    return x -> flatten -> dense(16) -> batchnorm -> relu -> dropout(0.3)
        -> dense(classes, activation=softmax)
}
"""


@pytest.fixture(scope="module")
def net() -> Any:
    return cnndsl.compile(SPEC)


def test_batchnorm_relu_fuses_and_the_relu_step_becomes_identity(net: Any) -> None:
    fused, plain = lower(net.graph), lower(net.graph, fuse=False)
    assert len(fused) == len(plain)
    assert [s.path for s in fused] == [s.path for s in plain]
    assert fused.last_use == plain.last_use and fused.frees == plain.frees
    by_path = {s.path: s for s in fused}
    for step in plain:
        new = by_path[step.path]
        if step.op in ("relu", "relu6") and plain.steps[step.inputs[0]].op == "batchnorm":
            assert new.op == "identity"
            src = fused.steps[step.inputs[0]]
            assert src.attrs["activation"] == step.op
            assert new.attrs["fused_into"] == src.path
    ops = [s.op for s in fused]
    assert "relu6" not in ops  # depthwise -> batchnorm -> relu6 fused
    # conv(6) -> relu: the relu moves into the conv's own activation.
    conv2 = fused.steps[2]
    assert conv2.op == "conv" and conv2.attrs["activation"] == "relu"
    assert fused.steps[3].op == "identity"


def test_relu_after_an_add_joins_the_add(net: Any) -> None:
    plan = lower(net.graph)
    adds = [s for s in plan if s.op == "add"]
    assert adds
    for add in adds:
        assert add.attrs["activation"] == "relu"
        (reader,) = plan.consumers[add.output]
        assert plan.steps[reader].op == "identity"


def test_relu_that_cannot_join_its_producer_runs_in_place() -> None:
    g = cnndsl.compile(
        """
        network n() {
            input x: [4, 4, 2]
            return x -> conv(3, 1) -> avgpool(2) -> relu -> flatten -> dense(2)
        }
        """
    ).graph
    plan = lower(g)
    relu = next(s for s in plan if s.op == "relu")
    assert plan.steps[relu.inputs[0]].op == "avgpool" and relu.attrs["inplace"] is True


def test_relu_after_an_upsample_runs_in_place_and_computes_the_same() -> None:
    """upsample hands over a fresh array (`Op.fresh_output`): the relu may overwrite it."""
    net = cnndsl.compile(
        """
        network n() {
            input x: [3, 4, 2]
            return x -> conv(3, 1) -> upsample(2, interpolation=bilinear) -> relu
                -> flatten -> dense(2)
        }
        """
    )
    plan = lower(net.graph)
    relu = next(s for s in plan if s.op == "relu")
    assert plan.steps[relu.inputs[0]].op == "upsample" and relu.attrs["inplace"] is True
    fused, plain = twin_models(net)
    x = np.random.default_rng(2).normal(size=(3, 3, 4, 2))
    np.testing.assert_array_equal(fused(x), plain(x))


def test_conv_variants_are_recorded_at_lowering(net: Any) -> None:
    plan = lower(net.graph)
    methods = {s.path: s.attrs.get("input_grad") for s in plan if s.op == "conv"}
    assert set(methods.values()) <= {"full", "col2im", "gemm"}
    assert "gemm" in methods.values() and "full" in methods.values()
    assert "col2im" in methods.values()  # the 3×3/2 conv of the strided unit
    forward = {s.attrs.get("forward") for s in plan if s.op == "conv"}
    assert forward == {"im2col", "gemm"}  # no conv here is wide enough for Winograd
    wide = cnndsl.compile(
        "network n() {\n input x: [8, 8, 128]\n"
        " return x -> conv(128, 3, padding=same) -> conv(128, 3, stride=2)\n}"
    )
    steps = [s for s in lower(wide.graph) if s.op == "conv"]
    kernels = [(s.attrs["forward"], s.attrs["input_grad"], s.attrs["kernel_grad"]) for s in steps]
    assert kernels == [("winograd", "winograd", "winograd"), ("im2col", "col2im", "im2col")]


def test_a_value_read_twice_is_never_overwritten() -> None:
    g = cnndsl.compile(
        """
        network n() {
            input x: [4, 4, 2]
            a = x -> conv(3, 1)
            b = a -> relu
            return concat(b, a)
        }
        """
    ).graph
    plan = lower(g)
    relu = next(s for s in plan if s.path.startswith("relu"))
    assert relu.op == "relu" and not relu.attrs.get("inplace")
    assert plan.steps[relu.inputs[0]].attrs["activation"] == "none"


def twin_models(net: Any, dtype: str = "float64") -> tuple[Model, Model]:
    """The same weights run by the fused plan and by the unfused one."""
    fused = Model(net.graph, seed=3, dtype=dtype)
    plain = Model(net.graph, seed=3, dtype=dtype)
    plain.plan = lower(net.graph, fuse=False)
    plain._train_plans.clear()
    rng = np.random.default_rng(1)
    for key, value in fused.params.items():
        if key.endswith(("moving_mean", "beta")):
            value[...] = rng.normal(size=value.shape) * 0.2
        elif key.endswith(("moving_variance", "gamma")):
            value[...] = rng.uniform(0.5, 1.5, size=value.shape)
        plain.params[key][...] = value
    return fused, plain


@pytest.mark.parametrize("training", [True, False])
def test_fused_network_matches_unfused_in_float64(net: Any, training: bool) -> None:
    fused, plain = twin_models(net)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 8, 8, 3)), rng.integers(0, 3, 6)
    np.testing.assert_allclose(fused(x), plain(x), rtol=1e-12, atol=1e-14)
    loss_f, grads_f = fused.gradients(x, y, training=training)
    loss_p, grads_p = plain.gradients(x, y, training=training)
    assert loss_f == pytest.approx(loss_p, rel=1e-12)
    assert set(grads_f) == set(grads_p)
    for key, g in grads_p.items():
        np.testing.assert_allclose(grads_f[key], g, rtol=1e-9, atol=1e-12, err_msg=key)


def test_fused_training_run_matches_unfused(net: Any) -> None:
    """A few optimizer steps (batchnorm statistics moving, dropout drawing) stay together."""
    fused, plain = twin_models(net)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(8, 8, 8, 3)), rng.integers(0, 3, 8)
    for _ in range(3):
        loss_f, _ = fused.train_step(x, y)
        loss_p, _ = plain.train_step(x, y)
        assert loss_f == pytest.approx(loss_p, rel=1e-10)
    for a, b in zip(fused.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_image_input_gets_no_gradient(net: Any, monkeypatch: Any) -> None:
    """needs_input_grad end to end: the first conv's backward is told not to form dx."""
    from cnndsl.ops import conv as conv_module

    calls: list[bool] = []
    real = conv_module.conv2d_backward

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append(kw["want_dx"])
        return real(*args, **kw)

    monkeypatch.setattr(conv_module, "conv2d_backward", spy)
    model = Model(net.graph, seed=0)
    rng = np.random.default_rng(0)
    model.train_step(rng.random((4, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 4))
    assert calls[-1] is False  # backward runs last to first: the stem conv comes last
    assert all(calls[:-1])


def test_zeropad_joins_the_padding_of_the_conv_that_reads_it() -> None:
    """MobileNet pads before each strided depthwise conv: the conv pads itself instead."""
    net = cnndsl.compile("zoo.mobilenet", size=32, classes=5)
    fused, plain = lower(net.graph), lower(net.graph, fuse=False)
    zeropads = [s for s in plain if s.op == "zeropad"]
    assert len(zeropads) == 4
    for z in zeropads:
        (reader,) = plain.consumers[z.output]
        assert fused.steps[z.output].op == "identity"
        assert fused.steps[reader].inputs == z.inputs
        assert fused.steps[reader].attrs["pad_input"] == z.attrs["padding"]
        assert fused.consumers[z.output] == ()  # dropped as soon as it is made
    model, reference = twin_models(net)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 32, 32, 3)), rng.integers(0, 5, 3)
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-12, atol=1e-14)
    loss, grads = model.gradients(x, y)
    ref_loss, ref_grads = reference.gradients(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for key, g in ref_grads.items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-9, atol=1e-12, err_msg=key)


def test_inference_memory_stays_a_few_activations_deep() -> None:
    """Liveness frees each value after its last reader, relu overwrites its input, and the
    kernels' scratch is reused: 40 layers run in about two activations of memory."""
    import tracemalloc

    links = "\n".join("        -> conv(8, 3, padding=same) -> relu" for _ in range(20))
    spec = f"network chain() {{\n    input x: [16, 16, 8]\n    return x\n{links}\n}}\n"
    model = Model(cnndsl.compile(spec).graph, seed=0)
    x = np.random.default_rng(0).random((32, 16, 16, 8), dtype=np.float32)
    model(x)  # warm-up: scratch buffers are allocated once
    tracemalloc.start()
    try:
        model(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * x.nbytes  # 40 activations of x's size if nothing were freed
