"""Preprocessing and augmentation layers in a network: shapes, seeds, inference, errors.

The kernels themselves are checked with every op (definition, finite
differences, PyTorch, ONNX); here: what a spec sees. The augmentations act
only in training, draw per sample from the model's seeded generator (the
same seed gives the same augmented batch), and pass through at inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from op_cases import RANDOM_OPS

import cnndsl
from cnndsl.ops import OPS
from cnndsl.ops.errors import AttrError, ShapeError
from cnndsl.ops.registry import Context
from cnndsl.source import CnnError

SPEC = """
network augmented() {
    input image: [12, 10, 3]
    return image -> rescale(2, -0.5) -> random_flip(horizontal) -> random_rotation(0.1)
        -> random_zoom(0.2) -> random_translation(0.1, 0.1) -> random_contrast(0.3)
        -> random_crop(8, 8) -> resize(6, 6) -> center_crop(4, 4)
}
"""


@pytest.fixture
def net(tmp_path: Path) -> cnndsl.Network:
    spec = tmp_path / "augmented.cnn"
    spec.write_text(SPEC)
    return cnndsl.compile(str(spec))


SHAPES = [
    ("rescale", (1 / 255,), {}, (32, 32, 3), (32, 32, 3)),
    ("resize", (224, 224), {}, (180, 240, 3), (224, 224, 3)),
    ("resize", (8, 4), {"crop_to_aspect_ratio": True}, (5, 7, 2), (8, 4, 2)),
    ("center_crop", (224, 224), {}, (256, 256, 3), (224, 224, 3)),
    ("center_crop", (32, 32), {}, (28, 28, 1), (32, 32, 1)),  # smaller: resized, as Keras
    ("random_flip", (), {}, (32, 32, 3), (32, 32, 3)),
    ("random_crop", (24, 20), {}, (32, 32, 3), (24, 20, 3)),
    ("random_rotation", (0.2,), {}, (32, 30, 3), (32, 30, 3)),
    ("random_zoom", (0.2, (0.1, 0.3)), {}, (32, 30, 3), (32, 30, 3)),
    ("random_translation", (0.1, 0.2), {}, (32, 30, 3), (32, 30, 3)),
    ("random_contrast", (0.5,), {}, (32, 30, 3), (32, 30, 3)),
]


@pytest.mark.parametrize(("op", "args", "kw", "x", "y"), SHAPES)
def test_shape_table(op: str, args: tuple, kw: dict, x: tuple, y: tuple) -> None:
    assert OPS[op].shape(OPS[op].bind(*args, **kw), x) == y


@pytest.mark.parametrize(
    ("op", "args", "kw", "words"),
    [
        ("random_rotation", ((0.3, 0.1),), {}, "lower <= upper"),
        ("random_rotation", (-0.1,), {}, "a number >= 0"),
        ("random_zoom", ((-1.5, 0.2),), {}, "above −1"),
        ("random_contrast", (1.5,), {}, "0 <= lower <= 1"),
        ("random_flip", ("sideways",), {}, "horizontal"),
        ("resize", (0, 4), {}, "height"),
        ("random_translation", (0.1,), {}, "width_factor"),
        ("random_rotation", (0.1,), {"fill_mode": "mirror"}, "reflect"),
    ],
)
def test_bad_arguments_are_clear(op: str, args: tuple, kw: dict, words: str) -> None:
    with pytest.raises(AttrError, match=words):
        OPS[op].bind(*args, **kw)


def test_random_crop_larger_than_the_map_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="at least that large"):
        OPS["random_crop"].shape(OPS["random_crop"].bind(10, 4), (8, 8, 3))


def test_spec_error_has_a_span(tmp_path: Path) -> None:
    spec = tmp_path / "bad.cnn"
    spec.write_text(SPEC.replace("random_crop(8, 8)", "random_crop(20, 8)"))
    with pytest.raises(CnnError, match=r"E041.*random_crop"):
        cnndsl.compile(str(spec))


def test_network_shapes_and_inference_pass_through(net: cnndsl.Network, tmp_path: Path) -> None:
    assert [tuple(layer.shape) for layer in net.layers][-3:] == [(8, 8, 3), (6, 6, 3), (4, 4, 3)]
    x = np.random.default_rng(0).random((3, 12, 10, 3))
    got = net.build(seed=0, dtype="float64").predict(x)
    # inference: the random layers pass through, random_crop resizes (Keras' rule)
    plain = tmp_path / "plain.cnn"
    plain.write_text(
        "network plain() {\n    input image: [12, 10, 3]\n"
        "    return image -> rescale(2, -0.5) -> resize(8, 8, crop_to_aspect_ratio=true)\n"
        "        -> resize(6, 6) -> center_crop(4, 4)\n}\n"
    )
    expected = cnndsl.compile(str(plain)).build(seed=0, dtype="float64").predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_same_seed_same_augmented_batch(net: cnndsl.Network) -> None:
    x = np.random.default_rng(1).random((4, 12, 10, 3))
    a, b = net.build(seed=5), net.build(seed=5)
    first = a(x, training=True)
    np.testing.assert_array_equal(first, b(x, training=True))  # reproducible from the seed
    assert not np.array_equal(first, a(x, training=True))  # the generator moves on
    assert not np.allclose(first, net.build(seed=6)(x, training=True))


@pytest.mark.parametrize("op", RANDOM_OPS)
def test_draws_differ_per_sample_and_inference_is_identity(op: str) -> None:
    args = {
        "random_flip": ("horizontal_and_vertical",),
        "random_crop": (4, 4),
        "random_rotation": (0.3,),
        "random_zoom": (0.4,),
        "random_translation": (0.3, 0.3),
        "random_contrast": (0.8,),
    }[op]
    a = OPS[op].bind(*args)
    one = np.random.default_rng(2).random((1, 7, 6, 2))
    x = np.repeat(one, 16, axis=0)  # the same image 16 times
    y, _ = OPS[op].forward(np, a, [x], {}, Context(training=True, rng=np.random.default_rng(3)))
    distinct = {y[i].tobytes() for i in range(len(y))}
    assert len(distinct) > 1, "every sample got the same draw"
    again, _ = OPS[op].forward(np, a, [x], {}, Context(training=True, rng=np.random.default_rng(3)))
    np.testing.assert_array_equal(y, again)
    if op != "random_crop":
        z, _ = OPS[op].forward(np, a, [x], {}, Context(training=False))
        np.testing.assert_array_equal(z, x)
        assert OPS[op].dropped_at_inference


def test_resize_half_pixel_by_hand() -> None:
    """A 1×4 row halved: outputs sit at 0.5 and 2.5, the means of the pairs around them."""
    x = np.array([0.0, 2.0, 4.0, 10.0]).reshape(1, 1, 4, 1)
    a = OPS["resize"].bind(1, 2)
    y, _ = OPS["resize"].forward(np, a, [x], {}, Context())
    assert y.ravel().tolist() == [1.0, 7.0]
    nearest = OPS["resize"].bind(1, 2, interpolation="nearest")
    y, _ = OPS["resize"].forward(np, nearest, [x], {}, Context())
    assert y.ravel().tolist() == [2.0, 10.0]  # floor((i + 0.5)·2): columns 1 and 3


def test_flip_by_hand() -> None:
    x = np.arange(6.0).reshape(1, 1, 3, 2)
    a = OPS["random_flip"].bind("horizontal")

    class Heads:  # a generator that always draws 0: every sample flips
        def random(self, n: int) -> np.ndarray:
            return np.zeros(n)

    y, _ = OPS["random_flip"].forward(np, a, [x], {}, Context(training=True, rng=Heads()))
    assert y[0, 0, :, 0].tolist() == [4.0, 2.0, 0.0]
