"""cnndsl run for pretrained networks: class names, image fitting, --unfreeze, two stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.cli import main
from cnndsl.formats.imagenet import imagenet_classes
from cnndsl.training.model import ModelError

# A 1,000-class head on a tiny input: enough to be named with ImageNet's classes.
IMAGENET_NET = """
network tiny_imagenet() {
    input image: [6, 6, 3]
    return image -> preprocess(mode=caffe) -> global_avgpool
        -> dense(1000, activation=softmax, name="predictions")
}
"""

# One output that reads the mean brightness of the image as the network sees it.
BRIGHTNESS_NET = """
network brightness(fit="crop") {
    input image: [4, 4, 3]
    return image -> preprocess(mode=tf, fit=fit) -> global_avgpool
        -> dense(2, activation=softmax, name="out")
}
"""

# A frozen base under a trainable head, on scikit-learn's 8×8 digits.
FROZEN_NET = """
block features() {
    return input -> conv(4, 3, padding=same, activation=relu) -> maxpool(2)
}
network frozen(classes=10) {
    input image: [8, 8, 1]
    x = image -> features(name="base", trainable=false)
    return x -> flatten -> dense(classes, activation=softmax, name="head")
}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def save_image(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_predict_names_imagenet_classes(tmp_path: Path, capsys: Any) -> None:
    spec = write(tmp_path / "tiny.cnn", IMAGENET_NET)
    model = cnndsl.compile(spec).build(seed=0)
    kernel = np.zeros((3, 1000), np.float32)
    bias = np.zeros(1000, np.float32)
    bias[[281, 285, 282]] = [6.0, 5.0, 4.0]  # tabby, Egyptian_cat, tiger_cat
    model.set_weights([kernel, bias])
    model.save(tmp_path / "w.npz")
    image = save_image(tmp_path / "cat.png", np.full((9, 7, 3), 128))
    argv = ["run", str(spec), "--load", str(tmp_path / "w.npz"), "--predict", str(image)]
    assert main([*argv, "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    p = np.exp([6.0, 5.0, 4.0]) / (np.exp([6.0, 5.0, 4.0]).sum() + 997)
    assert line == (
        f"{image}: tabby ({p[0]:.3f}), Egyptian_cat ({p[1]:.3f}), tiger_cat ({p[2]:.3f})"
    )
    assert imagenet_classes()[281] == ("n02123045", "tabby")


@pytest.mark.parametrize(("fit", "bright"), [("crop", True), ("stretch", False)])
def test_predict_fits_the_image_as_the_network_declares(
    tmp_path: Path, capsys: Any, fit: str, bright: bool
) -> None:
    spec = write(tmp_path / "bright.cnn", BRIGHTNESS_NET)
    model = cnndsl.compile(spec, fit=fit).build(seed=0)
    # out = softmax([0, 10·mean]) where mean is the mean of 2x - 1 over the image.
    model.set_weights([np.array([[0.0, 10 / 3]] * 3, np.float32), np.zeros(2, np.float32)])
    model.save(tmp_path / "w.npz")
    pixels = np.zeros((12, 36, 3))
    pixels[:, 12:24] = 255  # a white square between two black ones: crop keeps only it
    image = save_image(tmp_path / "wide.png", pixels)
    argv = ["run", str(spec), "--set", f"fit={fit}", "--load", str(tmp_path / "w.npz")]
    assert main([*argv, "--predict", str(image), "--top-k", "1"]) == 0
    shown = capsys.readouterr().out.strip()
    assert shown.startswith(f"{image}: 1 (") if bright else shown.startswith(f"{image}: 0 (")


def test_saved_weights_carry_the_class_names(tmp_path: Path, capsys: Any) -> None:
    rng = np.random.default_rng(0)
    for name, level in (("cats", 40), ("dogs", 215)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(6):
            save_image(tmp_path / "pets" / name / f"{i}.png", rng.normal(level, 20, (8, 8, 3)))
    pets = (
        "network pets(classes=2) {\n    input image: [8, 8, 3]\n    return image"
        ' -> conv(4, 1, name="base") -> global_avgpool -> dense(classes, activation=softmax)\n}\n'
    )
    spec = write(tmp_path / "pets.cnn", pets)
    weights = tmp_path / "pets.npz"
    argv = ["run", str(spec), "--data", str(tmp_path / "pets"), "--epochs", "1", "-q"]
    assert main([*argv, "--save", str(weights)]) == 0
    with np.load(weights, allow_pickle=False) as f:
        assert f["class_names"].tolist() == ["cats", "dogs"]
    capsys.readouterr()
    image = tmp_path / "pets" / "dogs" / "0.png"
    assert main(["run", str(spec), "--load", str(weights), "--predict", str(image)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{image}: ") and {"cats", "dogs"} <= set(out.replace(",", " ").split())
    assert "class names: cats, dogs (2)" in err
    # Names that do not fit the outputs (another task's) are not used.
    model = cnndsl.compile(spec, classes=5).build()
    report = model.load(weights, strict=False)
    assert report.loaded == ["base:kernel", "base:bias"]
    assert model.class_names is None and report.class_names is None


def test_a_bad_class_names_entry_is_refused(tmp_path: Path) -> None:
    model = cnndsl.compile(IMAGENET_NET).build()
    arrays = {k: np.asarray(v) for k, v in zip(model.specs, model.get_weights(), strict=True)}
    np.savez(tmp_path / "w.npz", **arrays, class_names=np.arange(1000))
    with pytest.raises(ModelError, match=r"not a list of names"):
        model.load(tmp_path / "w.npz")


def _run_frozen(tmp_path: Path, *flags: str) -> dict[str, np.ndarray]:
    spec = write(tmp_path / "frozen.cnn", FROZEN_NET)
    out = tmp_path / "w.npz"
    assert main(["run", str(spec), "-q", "--epochs", "1", "--save", str(out), *flags]) == 0
    with np.load(out, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_unfreeze_trains_what_the_spec_froze(tmp_path: Path, capsys: Any) -> None:
    initial = cnndsl.compile(write(tmp_path / "frozen.cnn", FROZEN_NET)).build(seed=0)
    start = dict(zip(initial.specs, initial.get_weights(), strict=True))
    frozen = _run_frozen(tmp_path)
    err = capsys.readouterr().err
    assert "690 parameters (650 trainable)" in err  # base conv 3·3·1·4 + 4 = 40 frozen
    np.testing.assert_array_equal(frozen["base/conv_1:kernel"], start["base/conv_1:kernel"])
    assert not np.array_equal(frozen["head:kernel"], start["head:kernel"])
    thawed = _run_frozen(tmp_path, "--unfreeze", "base")
    assert "690 parameters (690 trainable)" in capsys.readouterr().err
    assert not np.array_equal(thawed["base/conv_1:kernel"], start["base/conv_1:kernel"])


def test_two_stages_fine_tune_the_base(tmp_path: Path, capsys: Any) -> None:
    initial = cnndsl.compile(write(tmp_path / "frozen.cnn", FROZEN_NET)).build(seed=0)
    start = dict(zip(initial.specs, initial.get_weights(), strict=True))
    history = tmp_path / "h.json"
    flags = ["--then-unfreeze", "base/*", "--then-epochs", "2", "--then-lr", "0.0005"]
    tuned = _run_frozen(tmp_path, *flags, "--history", str(history))
    out, err = capsys.readouterr()
    assert "epoch 1/1" in err and "fine-tune epoch 1/2" in err and "fine-tune epoch 2/2" in err
    assert "fine-tuning: 690 of 690 parameters trainable; adam(lr=0.0005" in err
    assert not np.array_equal(tuned["base/conv_1:kernel"], start["base/conv_1:kernel"])
    saved = json.loads(history.read_text())
    assert len(saved["history"]["loss"]) == 1 and len(saved["then"]["history"]["loss"]) == 2
    assert saved["then"]["unfreeze"] == ["base/*"]
    # Without --then-lr: a tenth of the first stage's (adam's default 0.001).
    _run_frozen(tmp_path, "--then-unfreeze", "base", "--then-epochs", "1")
    assert "adam(lr=0.0001" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--then-epochs", "2"], "--then-epochs and --then-lr need --then-unfreeze GLOB"),
        (["--then-unfreeze", "base", "--checkpoint", "ck"], "--checkpoint covers one stage"),
    ],
)
def test_stage_flags_misused(flags: list[str], message: str, capsys: Any) -> None:
    assert main(["run", "--epochs", "1", "-q", *flags]) == 2
    assert message in capsys.readouterr().err


def test_unfreeze_of_no_layer_is_an_error(tmp_path: Path, capsys: Any) -> None:
    spec = write(tmp_path / "frozen.cnn", FROZEN_NET)
    assert main(["run", str(spec), "--epochs", "1", "-q", "--unfreeze", "bse/*"]) == 1
    err = capsys.readouterr().err
    assert "error: no layer path matches 'bse/*'" in err and "Traceback" not in err
