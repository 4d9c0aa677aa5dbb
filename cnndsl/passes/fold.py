"""Inference folding: Graph -> Graph for a network that will only run forward.

Reads op, attrs, inputs, consumers; writes a new graph in which

- a batchnorm (`Op.folds_into_producer`) whose input comes from a conv,
  depthwise_conv, separable_conv or dense without activation
  (`Op.channel_weight`), and is that layer's only reader, is gone: at
  inference it is the per-channel affine map y = s·z + t
  (`Op.inference_affine`: s = gamma/sqrt(var + epsilon), t = beta − s·mean),
  which folds into the producer's weight (scaled by s along its output
  channels) and bias (added if the producer had none). The batchnorm's
  readers read the producer;
- every dropout (`Op.dropped_at_inference`) is gone (the identity at
  inference); its readers read its input.

Layers that are network outputs stay. Weights change with the structure:
`fold_weights(folded, weights)` maps the original network's weights (host
arrays keyed 'path:name') to the folded network's. The folded graph records
what it folded in meta["folded"]: a tuple of (producer, batchnorm path,
batchnorm layer).

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


def fold_inference(g: Graph) -> Graph:
    """A copy of g with batchnorms folded into their producers and dropouts removed."""
    outputs = set(g.outputs)
    alias: dict[str, str] = {}  # removed layer -> the layer its readers read instead
    folded: list[tuple[str, str, Layer]] = []
    changed: dict[str, Layer] = {}
    for layer in g:
        if layer.path in outputs or len(layer.inputs) != 1:
            continue
        src = alias.get(layer.inputs[0], layer.inputs[0])
        op = OPS[layer.op]
        if op.dropped_at_inference:
            alias[layer.path] = src
        elif op.folds_into_producer and _foldable(g, g[src], layer):
            producer = changed.get(src, g[src])
            attrs = producer.attrs.replace(bias=True)
            shapes = [g[p].shape for p in producer.inputs]
            changed[src] = replace(
                producer,
                attrs=attrs,
                weights=dict(OPS[producer.op].weights(attrs, *shapes)),  # type: ignore[arg-type]
            )
            alias[layer.path] = src
            folded.append((src, layer.path, layer))
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
    if OPS[producer.op].channel_weight(producer.attrs) is None:
        return False
    # The producer's output must reach nothing but this batchnorm.
    return g.consumers(producer.path) == [bn.path] and producer.path not in g.outputs


def fold_weights(folded: Graph, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Weights of the folded graph from the original network's (host arrays by 'path:name').

    Arithmetic in float64, results in each weight's original dtype.
    """
    out: dict[str, np.ndarray] = {}
    plans = {producer: (path, bn) for producer, path, bn in folded.meta.get("folded", ())}
    for layer in folded:
        if layer.path not in plans:
            for name in layer.weights:
                out[f"{layer.path}:{name}"] = np.asarray(weights[f"{layer.path}:{name}"])
            continue
        path, bn = plans[layer.path]
        bn_weights = {n: weights[f"{path}:{n}"] for n in bn.weights if f"{path}:{n}" in weights}
        scale, shift = OPS[bn.op].inference_affine(bn.attrs, bn_weights)
        carrier = OPS[layer.op].channel_weight(layer.attrs)
        assert carrier is not None, f"{layer.path}: folded into a layer without a channel weight"
        target, axes = carrier
        kernel = np.asarray(weights[f"{layer.path}:{target}"])
        dtype = kernel.dtype
        old_bias = weights.get(f"{layer.path}:bias")
        bias = np.zeros_like(scale) if old_bias is None else np.asarray(old_bias, np.float64)
        for name in layer.weights:
            key = f"{layer.path}:{name}"
            if name == target:
                s = scale.reshape(kernel.shape[-axes:])  # the axes of the output channels
                out[key] = (kernel.astype(np.float64) * s).astype(dtype)
            elif name == "bias":
                out[key] = (bias * scale + shift).astype(dtype)
            else:
                out[key] = np.asarray(weights[key])
    return out


__all__ = ["fold_inference", "fold_weights"]
