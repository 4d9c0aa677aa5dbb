"""`cnndsl run --predict`: the top classes of images or arrays, with their names.

Images are fitted to the input as the network's `preprocess` declares;
class names come from the weights, else the data, else ImageNet's for 1,000.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from cnndsl.formats import imagenet
from cnndsl.formats.data import load_images
from cnndsl.ops import OPS


def image_fit(net: Any) -> str:
    """How images are fitted to the input: as the network's `preprocess` says, else stretch."""
    for layer in net.layers:
        fit = OPS[layer.op].input_preparation(layer.attrs).get("image_fit")
        if fit is not None:
            return fit
    return "stretch"


def output_names(model: Any, classes: int | None, names: list[str] | None) -> list[str] | None:
    """Names of the output classes: the weights', else the data's, else ImageNet's for 1,000.

    Names count only when there is one per class (digits' ten do not name a
    flowers model), as Keras' decode_predictions takes any 1,000 outputs as ImageNet's.
    """
    for candidate in (model.class_names, names):
        if candidate and len(candidate) == classes:
            return list(candidate)
    return imagenet.class_names() if classes == imagenet.CLASSES else None


def classes_of(net: Any) -> int | None:
    """Number of classes the network predicts (2 for a single sigmoid unit)."""
    shape = net.output_shape
    if len(shape) != 1:
        return None
    return 2 if shape[0] == 1 else shape[0]


def predict(
    args: argparse.Namespace,
    model: Any,
    net: Any,
    classes: int | None,
    names: list[str] | None,
) -> int:
    """Print each --predict input's top classes (and the other outputs' values); exit code 0."""
    names = output_names(model, classes, names)
    x = load_images(args.predict, net.input_shape, fit=image_fit(net))
    outputs = model.predict(x)
    # NOTE: several outputs: the first ranks classes; the others are shown as values.
    probs, others = (outputs[0], outputs[1:]) if isinstance(outputs, list) else (outputs, [])
    k = max(1, args.top_k)
    for n, (path, p) in enumerate(zip(args.predict, probs, strict=True)):
        rest = "".join(
            f"; {name} {np.array2string(o[n].reshape(-1), precision=3)}"
            for name, o in zip(model.output_names[1:], others, strict=True)
        )
        p = p.reshape(-1)
        if p.shape[0] == 1:  # one sigmoid unit: P(class 1)
            p = np.array([1 - p[0], p[0]])
        top = p.argsort()[::-1][:k]
        shown = ", ".join(
            f"{names[i] if names and i < len(names) else i} ({p[i]:.3f})" for i in top
        )
        print(f"{path}: {shown}{rest}")
    return 0
