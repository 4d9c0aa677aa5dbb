"""PyTorch state dicts (.pt/.pth through torch.load(weights_only=True), .safetensors).

ResNet-18 and ResNet-34 written as torchvision writes them (its module
names: conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, fc, and its order:
the downsample last), with the padding our Keras-style specs use, load into
the zoo specs and give PyTorch's outputs. A small network checks the layout
conversions one by one (conv, depthwise conv, batchnorm, and the dense layer
after `flatten`, whose rows follow PyTorch's channels-first flattening)
against PyTorch and, without torch, against the definitions by direct loops.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=5) {
    input image: [6, 6, 3]
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> depthwise_conv(3, name="dw")
        -> flatten
        -> dense(classes, activation=softmax, name="head")
}
"""


def tiny_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """TINY's weights as PyTorch names and layouts (OIHW, [C, 1, kh, kw], [out, in])."""
    f32 = np.float32
    return {
        "features.0.weight": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(f32),
        "features.0.bias": rng.normal(0, 0.5, (4,)).astype(f32),
        "features.1.weight": rng.uniform(0.5, 2.0, (4,)).astype(f32),
        "features.1.bias": rng.normal(0, 0.5, (4,)).astype(f32),
        "features.1.running_mean": rng.normal(0, 0.5, (4,)).astype(f32),
        "features.1.running_var": rng.uniform(0.5, 2.0, (4,)).astype(f32),
        "features.1.num_batches_tracked": np.array(7, dtype=np.int64),
        "features.3.weight": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(f32),
        "features.3.bias": rng.normal(0, 0.5, (4,)).astype(f32),
        "classifier.weight": rng.normal(0, 0.5, (5, 4 * 4 * 4)).astype(f32),
        "classifier.bias": rng.normal(0, 0.5, (5,)).astype(f32),
    }


def save_safetensors(state: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file(state, str(path))


# ---- layouts by their definitions (no torch) ----


def test_layouts_follow_the_definitions(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    state = tiny_state(np.random.default_rng(0))
    save_safetensors(state, tmp_path / "tiny.safetensors")
    model = cnndsl.compile(TINY).build()
    report = model.load(tmp_path / "tiny.safetensors")
    assert report.complete and report.source == "safetensors"
    w = {k: model.layer_weights(k) for k in ("c1", "bn", "dw", "head")}
    conv, dw, fc = (
        state["features.0.weight"],
        state["features.3.weight"],
        state["classifier.weight"],
    )
    for o in range(4):
        for i in range(3):
            for y in range(3):
                for x in range(3):
                    assert w["c1"]["kernel"][y, x, i, o] == conv[o, i, y, x]
                    assert w["dw"]["kernel"][y, x, o, 0] == dw[o, 0, y, x]
    # flatten: ours reads [h, w, c] rows, PyTorch's Linear reads (c, h, w) columns.
    for h in range(4):
        for x in range(4):
            for c in range(4):
                for u in range(5):
                    assert w["head"]["kernel"][(h * 4 + x) * 4 + c, u] == fc[u, (c * 4 + h) * 4 + x]
    np.testing.assert_array_equal(w["bn"]["gamma"], state["features.1.weight"])
    np.testing.assert_array_equal(w["bn"]["moving_variance"], state["features.1.running_var"])
    assert report.origins["head:kernel"].startswith(
        "classifier.weight ([out, in] -> [in, out], rows"
    )
    assert report.origins["dw:kernel"] == "features.3.weight ([C, 1, kh, kw] -> [kh, kw, C, 1])"


# ---- against PyTorch ----


def torch_modules() -> Any:
    """torchvision-named ResNets that pad as our specs do (Keras' 'same')."""
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class SameConv2d(nn.Conv2d):
        """Keras' 'same' padding: the odd pixel goes bottom/right (torchvision: both sides)."""

        def forward(self, x: Any) -> Any:
            (kh, kw), (sh, sw), (h, w) = self.kernel_size, self.stride, x.shape[-2:]
            ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
            pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            return F.conv2d(x, self.weight, self.bias, self.stride)

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, eps: float) -> None:
            super().__init__()
            self.conv1 = SameConv2d(cin, cout, 3, stride, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=eps)
            self.conv2 = SameConv2d(cout, cout, 3, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=eps)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=eps)
                )

        def forward(self, x: Any) -> Any:
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        """torchvision's names and order (downsample last); zoo.resnet50's layers (Keras')."""

        def __init__(self, cin: int, f: int, stride: int) -> None:
            super().__init__()
            eps = 1.001e-5
            self.conv1, self.bn1 = nn.Conv2d(cin, f, 1, stride), nn.BatchNorm2d(f, eps=eps)
            self.conv2, self.bn2 = SameConv2d(f, f, 3, 1), nn.BatchNorm2d(f, eps=eps)
            self.conv3, self.bn3 = nn.Conv2d(f, 4 * f, 1), nn.BatchNorm2d(4 * f, eps=eps)
            self.downsample = None
            if stride != 1 or cin != 4 * f:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, 4 * f, 1, stride), nn.BatchNorm2d(4 * f, eps=eps)
                )

        def forward(self, x: Any) -> Any:
            y = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
            y = self.bn3(self.conv3(y))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        """zoo.resnet18 (torchvision's stem) or zoo.resnet34 (the book's: 'same' everywhere)."""

        def __init__(self, blocks: list[int], classes: int, zoo18: bool, bottleneck: bool) -> None:
            super().__init__()
            self.zoo18 = zoo18
            eps = 1.001e-5 if zoo18 else 1e-3  # the specs' batchnorm epsilon
            conv = (
                nn.Conv2d(3, 64, 7, 2, 3, bias=bottleneck)
                if zoo18
                else SameConv2d(3, 64, 7, 2, bias=False)
            )
            self.conv1, self.bn1 = conv, nn.BatchNorm2d(64, eps=eps)
            cin = 64
            for i, (n, f) in enumerate(zip(blocks, [64, 128, 256, 512], strict=True)):
                stages = []
                for j in range(n):
                    stride = 2 if j == 0 and i else 1
                    stages.append(
                        Bottleneck(cin, f, stride)
                        if bottleneck
                        else BasicBlock(cin, f, stride, eps)
                    )
                    cin = 4 * f if bottleneck else f
                setattr(self, f"layer{i + 1}", nn.Sequential(*stages))
            self.fc = nn.Linear(cin, classes)

        def forward(self, x: Any) -> Any:
            x = F.relu(self.bn1(self.conv1(x)))
            pad = (1, 1, 1, 1) if self.zoo18 else (0, 1, 0, 1)  # zeropad(1) / 'same' on even sizes
            x = F.max_pool2d(F.pad(x, pad, value=0.0 if self.zoo18 else -float("inf")), 3, 2)
            for i in range(4):
                x = getattr(self, f"layer{i + 1}")(x)
            return F.softmax(self.fc(x.mean((2, 3))), dim=-1)

    return torch, ResNet


def randomized(torch: Any, module: Any, seed: int) -> Any:
    """Every weight random, batchnorm statistics included, so a misplaced one shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
        module.fc.weight.mul_(0.2)  # keep the softmax from saturating
    return module.eval()


def photos(size: int) -> np.ndarray:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    images = [load_sample_image(f) for f in ("china.jpg", "flower.jpg")]
    resized = [np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in images]
    return np.stack(resized).astype(np.float32) / 255.0


def caffe(x: np.ndarray) -> np.ndarray:
    """Keras' caffe preprocessing of [0, 1] pixels: RGB -> BGR, 0-255, minus the ImageNet mean."""
    return (255.0 * x[..., ::-1] - np.array([103.939, 116.779, 123.68])).astype(np.float32)


# ResNet-50's first unit has a shortcut conv and a last conv of the same shapes, on
# parallel branches; torchvision lists the shortcut (downsample) after the last conv.
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnet_state_dicts(name: str, tmp_path: Path) -> None:
    torch, ResNet = torch_modules()
    from safetensors.torch import save_file

    blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}[name]
    module = ResNet(blocks, 10, zoo18=name != "resnet34", bottleneck=name == "resnet50")
    reference = randomized(torch, module, seed=len(name))
    net = cnndsl.compile(f"zoo.{name}", size=32, classes=10)
    prepare = [layer.attrs for layer in net.layers if layer.op == "preprocess"]
    assert [a.mode for a in prepare] == (["caffe"] if name == "resnet50" else [])
    x = photos(32)
    with torch.no_grad():
        given = caffe(x) if prepare else x
        expected = reference(torch.from_numpy(given.transpose(0, 3, 1, 2).copy())).numpy()
    state = reference.state_dict()
    torch.save(state, tmp_path / f"{name}.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"{name}.safetensors"))
    for path in (tmp_path / f"{name}.pth", tmp_path / f"{name}.safetensors"):
        model = net.build()
        report = model.load(path)
        assert report.complete
        head = list(model.specs)[-2]  # the dense layer's kernel
        assert report.origins[head] == "fc.weight ([out, in] -> [in, out])"
        got = model.predict(x)
        np.testing.assert_allclose(
            got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max())
        )
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def test_tiny_network_against_torch(tmp_path: Path) -> None:
    torch, _ = torch_modules()
    nn = torch.nn
    reference = nn.Module()
    reference.features = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4)
    )
    reference.classifier = nn.Linear(64, 5)
    state = tiny_state(np.random.default_rng(1))
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    reference.eval()
    x = np.random.default_rng(2).uniform(0, 1, (3, 6, 6, 3)).astype(np.float32)
    with torch.no_grad():
        h = reference.features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        expected = torch.softmax(reference.classifier(h.flatten(1)), dim=-1).numpy()
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    # PyTorch's batchnorm epsilon is 1e-5 (the spec's default: Keras' 1e-3); it is no weight.
    spec = TINY.replace('batchnorm(name="bn")', 'batchnorm(epsilon=1e-5, name="bn")')
    model = cnndsl.compile(spec).build()
    assert model.load(tmp_path / "tiny.pt").complete
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_dict_holding_the_state_dict(tmp_path: Path) -> None:
    torch, _ = torch_modules()
    state = {k: torch.from_numpy(v) for k, v in tiny_state(np.random.default_rng(3)).items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pth")
    model = cnndsl.compile(TINY).build()
    assert model.load(tmp_path / "ckpt.pth").complete
    np.testing.assert_array_equal(
        model.layer_weights("head")["bias"], state["classifier.bias"].numpy()
    )


# ---- files that do not fit ----


def test_a_pickle_disguised_as_pth_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from cnndsl.cli import main

    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps({"features.0.weight": [1.0, 2.0]}, protocol=2))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    model = cnndsl.compile(TINY).build()
    before = model.get_weights()
    with pytest.raises(ModelError) as info:
        model.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a PyTorch file (a pickle); cnndsl reads those only through")
    assert "torch is not installed" in message and "s.save_file(torch.load('IN.pth'" in message
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    assert (
        main(["weights", "convert", str(path), "--spec", str(spec), "-o", str(tmp_path / "o.npz")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: a PyTorch file") and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


class Exploit:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> Any:
        return (Path.touch, (self.target,))


def test_a_malicious_pth_runs_no_code(tmp_path: Path) -> None:
    torch_modules()
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"features.0.weight": Exploit(marker)}, protocol=2))
    with pytest.raises(ModelError, match=rf"{path}: torch.load\(weights_only=True\) refused it"):
        cnndsl.compile(TINY).build().load(path)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncated", "header"])
def test_a_damaged_safetensors_file(how: str, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_safetensors(tiny_state(np.random.default_rng(0)), path)
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) - 100]
    else:
        raw[30:50] = b"\x00" * 20  # control characters inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(
        ModelError, match=f"{path}: truncated or corrupt safetensors file .*; download"
    ):
        cnndsl.compile(TINY).build().load(path)


def test_a_state_dict_of_another_model(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_safetensors(tiny_state(np.random.default_rng(0)), path)
    with pytest.raises(ModelError) as info:
        cnndsl.compile("zoo.resnet18", size=32).build().load(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: not weights of this network: none of the 4 layers with weights in this"
        " safetensors file fits one of its layers\nin the file, fitting no layer of the network:"
        " classifier (Linear: weight [5, 64], bias [5]), features.0 (Conv2d: weight [4, 3, 3, 3],"
    )
    assert (
        "in the network, with no weights in the file: conv1/conv_1 (conv: kernel [7, 7, 3"
        in message
    )


def test_a_top_for_another_class_count(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "w.safetensors"
    save_safetensors(tiny_state(np.random.default_rng(0)), path)
    with pytest.raises(
        ModelError,
        match="the file's classifier has 5 outputs where this network's head"
        r" has 3: a top for 5 classes\? compile the network with them \(--set classes=5\)",
    ):
        cnndsl.compile(TINY, classes=3).build().load(path)


def test_bfloat16_safetensors(tmp_path: Path) -> None:
    torch, _ = torch_modules()
    from safetensors.torch import save_file

    state = {k: torch.from_numpy(v) for k, v in tiny_state(np.random.default_rng(4)).items()}
    halved = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "bf16.safetensors"
    save_file(halved, str(path))
    model = cnndsl.compile(TINY).build()
    assert model.load(path).complete
    expected = halved["classifier.bias"].float().numpy()  # bfloat16 widens to float32 exactly
    np.testing.assert_array_equal(model.layer_weights("head")["bias"], expected)
