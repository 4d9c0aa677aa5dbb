"""The shipped ImageNet class index and decode_predictions."""

from __future__ import annotations

import numpy as np
import pytest

from cnndsl.formats.imagenet import class_names, decode_predictions, imagenet_classes


def test_class_index_is_imagenets() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({wnid for wnid, _ in classes}) == 1000
    # Entries a reader can check against any copy of imagenet_class_index.json.
    assert classes[0] == ("n01440764", "tench")
    assert classes[281] == ("n02123045", "tabby")
    assert classes[417] == ("n02782093", "balloon")
    assert classes[999] == ("n15075141", "toilet_tissue")
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w, _ in classes)
    assert [w for w, _ in classes] == sorted(w for w, _ in classes)  # ILSVRC orders by wnid
    names = class_names()
    assert names[134] == names[517] == "crane"  # a bird and a machine, as in Keras' index
    assert all(" " not in n for n in names)


def test_decode_predictions_as_keras() -> None:
    probs = np.full((2, 1000), 1e-4)
    probs[0, [3, 7, 999]] = [0.5, 0.3, 0.1]
    probs[1, 0] = 0.9
    decoded = decode_predictions(probs, top=3)
    assert [(w, n) for w, n, _ in decoded[0]] == [
        ("n01491361", "tiger_shark"),
        ("n01514668", "cock"),
        ("n15075141", "toilet_tissue"),
    ]
    assert [p for *_, p in decoded[0]] == [0.5, 0.3, 0.1]
    assert decoded[1][0] == ("n01440764", "tench", 0.9) and len(decoded[1]) == 3
    with pytest.raises(ValueError, match=r"shape \[samples, 1000\]; got \[2, 10\]"):
        decode_predictions(np.zeros((2, 10)))
