"""Inference folding: Graph -> Graph for a network that will only run forward.

Reads op, attrs, inputs, consumers; writes a new graph in which

- a batchnorm whose input comes from a conv, depthwise_conv,
  separable_conv or dense without activation, and is that layer's only
  reader, is gone: at inference it is the per-channel affine map
  y = s·z + (beta − s·mean), s = gamma/sqrt(var + epsilon), which folds into
  the producer's kernel (scaled by s along its output channels) and bias
  (added if the producer had none). The batchnorm's readers read the producer;
- every dropout is gone (the identity at inference); its readers read its input.

Layers that are network outputs stay. Weights change with the structure:
`fold_weights(folded, weights)` maps the original network's weights (host
arrays keyed 'path:name') to the folded network's. The folded graph records
what it folded in meta["folded"]: a tuple of (producer, batchnorm, epsilon).

    >>> import cnndsl                                                  # doctest: +SKIP
    >>> net = cnndsl.compile("specs/resnet34.cnn")                     # doctest: +SKIP
    >>> g = fold_inference(net.graph)                                  # doctest: +SKIP
    >>> len(net.graph), len(g)   # 36 batchnorms folded away            # doctest: +SKIP
    (126, 90)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from cnndsl.ir import Graph, Layer
from cnndsl.ops import OPS

# Producers a batchnorm folds into, and the weight its scale multiplies.
FOLD_INTO = {
    "conv": "kernel",
    "depthwise_conv": "kernel",
    "separable_conv": "pointwise_kernel",
    "dense": "kernel",
}


def fold_inference(g: Graph) -> Graph:
    """A copy of g with batchnorms folded into their producers and dropouts removed."""
    outputs = set(g.outputs)
    alias: dict[str, str] = {}  # removed layer -> the layer its readers read instead
    folded: list[tuple[str, str, float]] = []
    changed: dict[str, Layer] = {}
    for layer in g:
        if layer.path in outputs or len(layer.inputs) != 1:
            continue
        src = alias.get(layer.inputs[0], layer.inputs[0])
        if layer.op == "dropout":
            alias[layer.path] = src
        elif layer.op == "batchnorm" and _foldable(g, g[src], layer):
            producer = changed.get(src, g[src])
            attrs = producer.attrs.replace(bias=True)
            shapes = [g[p].shape for p in producer.inputs]
            changed[src] = replace(
                producer,
                attrs=attrs,
                weights=dict(OPS[producer.op].weights(attrs, *shapes)),  # type: ignore[arg-type]
            )
            alias[layer.path] = src
            folded.append((src, layer.path, float(layer.attrs.epsilon)))
    out = Graph()
    for layer in g:
        if layer.path in alias:
            continue
        new = changed.get(layer.path, layer)
        inputs = tuple(alias.get(p, p) for p in new.inputs)
        out.add(replace(new, inputs=inputs) if inputs != new.inputs else new)
    out.meta.update(g.meta)
    out.meta["folded"] = tuple(folded)
    if "outputs" in g.meta:
        out.meta["outputs"] = [alias.get(p, p) for p in g.meta["outputs"]]
    return out


def _foldable(g: Graph, producer: Layer, bn: Layer) -> bool:
    if producer.op not in FOLD_INTO:
        return False
    if producer.attrs.get("activation", "none") != "none":
        return False
    # The producer's output must reach nothing but this batchnorm.
    return g.consumers(producer.path) == [bn.path] and producer.path not in g.outputs


def fold_weights(folded: Graph, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Weights of the folded graph from the original network's (host arrays by 'path:name').

    Arithmetic in float64, results in each weight's original dtype.
    """
    out: dict[str, np.ndarray] = {}
    plans = {producer: (bn, eps) for producer, bn, eps in folded.meta.get("folded", ())}
    for layer in folded:
        if layer.path not in plans:
            for name in layer.weights:
                out[f"{layer.path}:{name}"] = np.asarray(weights[f"{layer.path}:{name}"])
            continue
        bn, eps = plans[layer.path]
        target = FOLD_INTO[layer.op]
        kernel = np.asarray(weights[f"{layer.path}:{target}"])
        dtype = kernel.dtype
        mean = np.asarray(weights[f"{bn}:moving_mean"], np.float64)
        var = np.asarray(weights[f"{bn}:moving_variance"], np.float64)
        gamma = np.asarray(weights.get(f"{bn}:gamma", np.ones_like(mean)), np.float64)
        beta = np.asarray(weights.get(f"{bn}:beta", np.zeros_like(mean)), np.float64)
        scale = gamma / np.sqrt(var + eps)
        old_bias = weights.get(f"{layer.path}:bias")
        bias = np.zeros_like(mean) if old_bias is None else np.asarray(old_bias, np.float64)
        for name in layer.weights:
            key = f"{layer.path}:{name}"
            if name == target:
                # depthwise kernels [fh, fw, c, m] put output channel c·m + j on the last two axes
                s = scale.reshape(kernel.shape[-2:]) if layer.op == "depthwise_conv" else scale
                out[key] = (kernel.astype(np.float64) * s).astype(dtype)
            elif name == "bias":
                out[key] = ((bias - mean) * scale + beta).astype(dtype)
            else:
                out[key] = np.asarray(weights[key])
    return out


__all__ = ["FOLD_INTO", "fold_inference", "fold_weights"]
