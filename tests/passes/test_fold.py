"""The inference folding pass: batchnorm into the producer's weights, dropout gone.

The folded network must compute what the original computes in inference mode
(float64, tight tolerance), and the pass must leave its input graph untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.ir import dump, verify
from cnndsl.passes.fold import fold_inference, fold_weights
from cnndsl.training.model import Model

SPEC = """
defaults conv(kernel=3, padding=same)

network n(classes=4) {
    input image: [8, 8, 3]
    x = image -> conv(6, bias=false) -> batchnorm -> relu
        -> conv(6) -> batchnorm -> dropout(0.5) -> relu
        -> depthwise_conv(3, padding=same, depth_multiplier=2, bias=false) -> batchnorm -> relu6
        -> separable_conv(8, 3, padding=same, bias=false) -> batchnorm
        -> conv(8, activation=relu) -> batchnorm
    y = x -> conv(4, 1)
    z = y -> batchnorm
    return concat(y, z) -> flatten -> dense(16) -> batchnorm -> relu -> dropout(0.2)
        -> dense(classes) -> batchnorm(scale=false, center=false) -> softmax
}
"""


def randomise_statistics(model: Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for key, value in model.params.items():
        if key.endswith(("moving_mean", "beta", "bias")):
            value[...] = rng.normal(size=value.shape) * 0.3
        elif key.endswith(("moving_variance", "gamma")):
            value[...] = rng.uniform(0.3, 2.0, size=value.shape)


def folded_model(model: Model, graph: Any) -> tuple[Model, Any]:
    folded = fold_inference(graph)
    weights = fold_weights(folded, dict(zip(model.specs, model.get_weights(), strict=True)))
    fast = Model(folded, dtype=model.dtype)
    fast.set_weights([weights[k] for k in fast.specs])
    return fast, folded


def test_folded_network_computes_the_same_inference_output() -> None:
    net = cnndsl.compile(SPEC)
    model = Model(net.graph, dtype="float64", seed=2)
    randomise_statistics(model)
    fast, folded = folded_model(model, net.graph)
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3))
    np.testing.assert_allclose(fast.predict(x), model.predict(x), rtol=1e-12, atol=1e-15)


def test_what_folds_and_what_stays() -> None:
    net = cnndsl.compile(SPEC)
    folded = fold_inference(net.graph)
    verify(folded)
    ops = [layer.op for layer in folded]
    assert "dropout" not in ops
    producers = {producer for producer, _, _ in folded.meta["folded"]}
    kinds = sorted(folded[p].op for p in producers)
    assert kinds == ["conv", "conv", "dense", "dense", "depthwise_conv", "separable_conv"]
    # Not folded: after a conv with a relu of its own, and where the conv has two readers.
    assert ops.count("batchnorm") == 2
    for p in producers:
        assert folded[p].attrs["bias"] is True and "bias" in folded[p].weights
    # Readers of a folded batchnorm read the producer; the parameter count drops.
    assert sum(layer.params for layer in folded) < sum(layer.params for layer in net.graph)


def test_fold_is_pure() -> None:
    net = cnndsl.compile(SPEC)
    before = dump(net.graph)
    meta = dict(net.graph.meta)
    fold_inference(net.graph)
    assert dump(net.graph) == before
    assert dict(net.graph.meta) == meta


def test_an_output_batchnorm_stays() -> None:
    net = cnndsl.compile("network n() { input x: [4, 4, 2]\n return x -> conv(3, 3) -> batchnorm }")
    folded = fold_inference(net.graph)
    assert [layer.op for layer in folded] == ["input", "conv", "batchnorm"]
    assert folded.meta["folded"] == ()


@pytest.mark.parametrize(("spec", "batchnorms"), [("specs/resnet34.cnn", 36)])
def test_zoo_network_folds_every_batchnorm(spec: str, batchnorms: int) -> None:
    net = cnndsl.compile(spec, size=32)
    folded = fold_inference(net.graph)
    assert len(folded.meta["folded"]) == batchnorms
    assert len(folded) == len(net.graph) - batchnorms
    model = Model(net.graph, dtype="float64", seed=0)
    randomise_statistics(model, 3)
    fast, _ = folded_model(model, net.graph)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3))
    np.testing.assert_allclose(fast(x), model(x), rtol=1e-11, atol=1e-14)
