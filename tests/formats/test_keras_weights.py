"""Keras weight files, checked against Keras itself (Keras 3 on the torch backend).

For every zoo model that keras.applications has, Keras builds the model with
random weights (weights=None; then every weight random, batchnorm statistics
included, so that a weight in the wrong place shows), saves it, and cnndsl
loads the file into the zoo spec and predicts on scikit-learn's sample
photos (china.jpg, flower.jpg), resized. Outputs agree within 1e-4 of the
largest output, with the same top 5, with and without the top. Inputs are
the smallest Keras accepts and 10 classes, to stay quick on two cores.

Each model is saved in one of the three formats (legacy HDF5 as
keras.applications downloads it, Keras 3 `.weights.h5`, `.keras`); ResNet-50
goes through all of them, and through `model.save("m.h5")` too.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported, here or by another test
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend", allow_module_level=True)

import cnndsl  # noqa: E402
from cnndsl.training.model import ModelError  # noqa: E402

# Keras' torch backend converts tensors with np.array(x) on each weight it touches.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

apps = keras.applications
# zoo name: (Keras constructor, its module with preprocess_input, smallest input Keras accepts)
APPS: dict[str, tuple[Any, Any, int]] = {
    "vgg16": (apps.VGG16, apps.vgg16, 32),
    "vgg19": (apps.VGG19, apps.vgg19, 32),
    "resnet50": (apps.ResNet50, apps.resnet50, 32),
    "resnet101": (apps.ResNet101, apps.resnet, 32),
    "resnet152": (apps.ResNet152, apps.resnet, 32),
    "inception_v3": (apps.InceptionV3, apps.inception_v3, 75),
    "xception": (apps.Xception, apps.xception, 71),
    "mobilenet": (apps.MobileNet, apps.mobilenet, 32),
    "mobilenet_v2": (apps.MobileNetV2, apps.mobilenet_v2, 32),
    "densenet121": (apps.DenseNet121, apps.densenet, 32),
}
CLASSES = 10
EXTENSIONS = {"h5": ".h5", "weights.h5": ".weights.h5", "keras": ".keras", "model.h5": "_model.h5"}

WITH_TOP = [
    ("vgg16", "h5"),
    ("vgg19", "weights.h5"),
    ("resnet50", "h5"),
    ("resnet50", "weights.h5"),
    ("resnet50", "keras"),
    ("resnet50", "model.h5"),
    ("resnet101", "keras"),
    ("resnet152", "h5"),
    ("inception_v3", "weights.h5"),
    ("xception", "keras"),
    ("mobilenet", "h5"),
    ("mobilenet_v2", "weights.h5"),
    ("densenet121", "keras"),
]
WITHOUT_TOP = [
    ("vgg16", "keras"),
    ("vgg19", "h5"),
    ("resnet50", "h5"),
    ("resnet101", "weights.h5"),
    ("resnet152", "keras"),
    ("inception_v3", "h5"),
    ("xception", "weights.h5"),
    ("mobilenet", "keras"),
    ("mobilenet_v2", "h5"),
    ("densenet121", "weights.h5"),
]


# ---- Keras' side ----


@functools.cache
def keras_model(name: str, top: bool) -> Any:
    """The Keras application with every weight random (seeded), its top calibrated."""
    build, _, size = APPS[name]
    model = build(weights=None, input_shape=(size, size, 3), include_top=top, classes=CLASSES)
    rng = np.random.default_rng(sum(map(ord, name)))
    for w in model.weights:
        kind = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if kind in ("gamma", "moving_variance"):
            w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif kind in ("beta", "moving_mean", "bias"):
            w.assign(rng.normal(0.0, 0.3, shape).astype("float32"))
    if top:
        # NOTE: random weights can saturate the softmax, where any weights give one-hot
        # outputs; scale the classifier so the logits spread over a few units.
        head = [layer for layer in model.layers if layer.weights][-1]
        features = keras.ops.convert_to_numpy(keras.Model(model.input, head.input)(inputs(name)))
        kernel = head.weights[0]
        logits = features.reshape(len(features), -1) @ keras.ops.convert_to_numpy(kernel).reshape(
            -1, CLASSES
        )
        kernel.assign(keras.ops.convert_to_numpy(kernel) * (2.0 / float(logits.std())))
    return model


@functools.cache
def inputs(name: str) -> np.ndarray:
    """The book's two sample photos, resized to the model's input, pixels in [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    size = APPS[name][2]
    photos = [load_sample_image(f) for f in ("china.jpg", "flower.jpg")]
    resized = [np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in photos]
    return (np.stack(resized).astype("float32") / 255.0).astype("float32")


def keras_predict(name: str, top: bool, net: cnndsl.Network) -> np.ndarray:
    """Keras' output on the photos, prepared as the spec prepares them (its preprocess op)."""
    x = inputs(name)
    if any(layer.op == "preprocess" for layer in net.layers):
        x = APPS[name][1].preprocess_input(255.0 * x)
    return np.asarray(keras.ops.convert_to_numpy(keras_model(name, top)(x)))


def save(model: Any, fmt: str, path: Path) -> None:
    """Save as Keras does for each format; 'h5' is the layout keras.applications downloads."""
    if fmt == "h5":
        # Keras' own writer of that layout (what model.save_weights wrote in Keras 2).
        legacy_h5_format = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")

        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    elif fmt == "weights.h5":
        model.save_weights(path)
    else:  # .keras, and model.save("m.h5"): the legacy model file with its config
        model.save(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("keras")

    @functools.cache
    def path(name: str, top: bool, fmt: str) -> Path:
        out = folder / f"{name}{'' if top else '_notop'}{EXTENSIONS[fmt]}"
        save(keras_model(name, top), fmt, out)
        return out

    return path


def ours(name: str, top: bool, classes: int = CLASSES) -> cnndsl.Network:
    size = APPS[name][2]
    return cnndsl.compile(f"zoo.{name}", size=size, classes=classes, include_top=top)


def check_same(ours_out: np.ndarray, theirs: np.ndarray, top: bool) -> None:
    assert ours_out.shape == theirs.shape
    err = float(np.abs(ours_out - theirs).max() / np.abs(theirs).max())
    assert err < 1e-4, f"largest difference {err:.2e} of the largest output"
    if top:
        np.testing.assert_array_equal(
            np.argsort(-ours_out, axis=1)[:, :5], np.argsort(-theirs, axis=1)[:, :5]
        )


# ---- the zoo against Keras ----


@pytest.mark.parametrize(("name", "fmt"), WITH_TOP, ids=[f"{n}-{f}" for n, f in WITH_TOP])
def test_keras_application_with_top(name: str, fmt: str, saved: Any) -> None:
    net = ours(name, top=True)
    model = net.build()
    report = model.load(saved(name, True, fmt))
    assert report.complete and len(report.loaded) == len(model.specs)
    assert report.source and set(report.origins) == set(model.specs)
    check_same(model.predict(inputs(name)), keras_predict(name, True, net), top=True)


@pytest.mark.parametrize(("name", "fmt"), WITHOUT_TOP, ids=[f"{n}-{f}" for n, f in WITHOUT_TOP])
def test_keras_application_without_top(name: str, fmt: str, saved: Any) -> None:
    net = ours(name, top=False)
    model = net.build()
    assert model.load(saved(name, False, fmt)).complete
    check_same(model.predict(inputs(name)), keras_predict(name, False, net), top=False)


def test_report_names_where_each_weight_came_from(saved: Any) -> None:
    model = ours("resnet50", top=True).build()
    report = model.load(saved("resnet50", True, "h5"))
    # The shortcut conv of the first unit: Keras names it _0_, and lists it between _2_ and _3_.
    skip = "conv2/bottleneck_unit_1/conv_1"
    assert report.origins[f"{skip}:kernel"] == "conv2_block1_0_conv/kernel"
    assert report.origins["conv2/bottleneck_unit_1/conv_4:kernel"] == "conv2_block1_3_conv/kernel"
    assert report.origins["predictions:bias"] == "predictions/bias"
    lines = report.describe_origins().splitlines()
    assert len(lines) == len(model.specs) and lines[0].startswith("conv1/conv_1:kernel <- ")


# ---- files that do not fit ----


def unchanged(model: Any, before: list[np.ndarray]) -> None:
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_file_of_another_model_names_the_first_layers_that_do_not_fit(saved: Any) -> None:
    model = ours("vgg16", top=True).build()
    before = model.get_weights()
    with pytest.raises(ModelError) as info:
        model.load(saved("resnet50", True, "h5"))
    message = str(info.value)
    assert "resnet50.h5 (Keras HDF5 weights) does not fit this network" in message
    assert (
        "in the file, fitting no layer of the network: conv1_conv (Conv2D: kernel [7, 7, 3, 64]"
        in message
    )
    assert (
        "in the network, with no weights in the file: block1/conv_1 (conv: kernel [3, 3, 3, 64]"
        in message
    )
    assert "--load-partial" in message
    unchanged(model, before)


def test_a_top_for_another_class_count(saved: Any) -> None:
    model = ours("resnet50", top=True, classes=1000).build()
    before = model.get_weights()
    with pytest.raises(
        ModelError,
        match=r"has 10 outputs where this network's predictions has 1000: "
        r"a top for 10 classes\? compile the network with them \(--set classes=10\)",
    ):
        model.load(saved("resnet50", True, "keras"))
    unchanged(model, before)
    # Asked for, the rest loads: everything but the top.
    report = model.load(saved("resnet50", True, "keras"), strict=False)
    assert report.missing == ["predictions:kernel", "predictions:bias"]
    assert report.unexpected == ["predictions/vars/0", "predictions/vars/1"]


def test_a_file_without_its_top(saved: Any) -> None:
    model = ours("xception", top=True).build()
    with pytest.raises(
        ModelError,
        match=r"saved without its top \(Keras' include_top=False\)\?"
        r" compile the network without it \(zoo models: --set include_top=false\)",
    ):
        model.load(saved("xception", False, "weights.h5"))


@pytest.mark.parametrize("how", ["truncated", "bit flips"])
def test_a_damaged_hdf5_file(how: str, saved: Any, tmp_path: Path) -> None:
    raw = saved("mobilenet", True, "h5").read_bytes()
    path = tmp_path / "mobilenet.h5"
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        damaged = bytearray(raw)
        for i in range(600, 4000, 7):  # the superblock and the first object headers
            damaged[i] ^= 0x5A
        path.write_bytes(bytes(damaged))
    model = ours("mobilenet", top=True).build()
    before = model.get_weights()
    with pytest.raises(
        ModelError,
        match=f"{path}: truncated or corrupt Keras weights: cannot read"
        ".*; download or save the file again",
    ):
        model.load(path)
    unchanged(model, before)


def test_a_damaged_keras_archive(saved: Any, tmp_path: Path) -> None:
    raw = saved("resnet50", True, "keras").read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(raw[: len(raw) - 5000])  # the zip's directory is at the end
    message = f"{path}: truncated or corrupt Keras weights: cannot read the .keras archive"
    with pytest.raises(ModelError, match=message):
        ours("resnet50", top=True).build().load(path)


def test_the_format_is_told_by_content_not_name(saved: Any, tmp_path: Path) -> None:
    misnamed = tmp_path / "weights.npz"
    misnamed.write_bytes(saved("mobilenet_v2", False, "keras").read_bytes())
    net = ours("mobilenet_v2", top=False)
    model = net.build()
    assert model.load(misnamed).source == ".keras archive"
    check_same(
        model.predict(inputs("mobilenet_v2")), keras_predict("mobilenet_v2", False, net), False
    )
