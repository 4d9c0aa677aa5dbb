"""The image-folder loader's own flip-and-crop stays off when the spec augments itself."""

from __future__ import annotations

import argparse

import cnndsl
from cnndsl.cli.run_cmd import loader_augmentation


class Data:
    augment = staticmethod(lambda x, rng: x)


def layers(body: str) -> list:
    text = f"network n() {{\n    input x: [8, 8, 3]\n    return x{body} -> flatten -> dense(2)\n}}"
    return cnndsl.compile(text).layers


def test_the_loader_augments_only_specs_that_do_not() -> None:
    on, off = argparse.Namespace(no_augment=False), argparse.Namespace(no_augment=True)
    assert loader_augmentation(on, layers(""), Data) is Data.augment
    assert loader_augmentation(off, layers(""), Data) is None
    assert loader_augmentation(on, layers(" -> random_flip"), Data) is None
    assert loader_augmentation(on, layers(" -> rescale(2)"), Data) is Data.augment
