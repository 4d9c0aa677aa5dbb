"""ONNX import: zoo round trips, PyTorch-written nets, blocks, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnndsl
from cnndsl.formats.onnx_export import export_onnx
from cnndsl.formats.onnx_import import OnnxImportError
from cnndsl.formats.onnx_spec import from_onnx, import_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    ("spec", "params"),
    [("zoo.digits", {}), ("zoo.resnet18", {"size": 32, "classes": 10}),
     ("zoo.googlenet", {"size": 32, "classes": 10})],
)  # fmt: skip
def test_zoo_round_trip(tmp_path: Path, spec: str, params: dict[str, int]) -> None:
    net = cnndsl.compile(spec, **params)
    model = net.build(seed=0)
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    text, _, again = import_onnx(str(path))
    assert again.total_params == net.total_params
    assert again.output_shape == net.output_shape
    assert [layer.shape for layer in again.layers if layer.op in ("conv", "dense")] == [
        layer.shape for layer in net.layers if layer.op in ("conv", "dense")
    ]
    x = np.random.default_rng(0).random((3, *net.input_shape), np.float32)
    assert np.max(np.abs(from_onnx(path).predict(x) - model.predict(x))) < 1e-5
    if spec == "zoo.resnet18":
        assert "residual_unit(64) * 2" in text


torch = pytest.importorskip("torch")
nn = torch.nn


class Residual(nn.Module):
    """A basic residual unit with a projection skip where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.units = nn.Sequential(
            Residual(8, 8, 1), Residual(8, 8, 1), Residual(8, 16, 2), Residual(16, 16, 1),
            Residual(16, 32, 2), Residual(32, 32, 1),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)))


class Inception(nn.Module):
    """Four branches: 1×1; 1×1 -> 3×3; 1×1 -> 5×5; 3×3 max pool -> 1×1."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(cin, 3, 1), nn.ReLU(), nn.Conv2d(3, 6, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(cin, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class SmallInception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(2))
        self.mix = nn.Sequential(Inception(8), nn.ReLU(), Inception(16), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 3 * 3, 7), nn.Softmax(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.stem(x)))


def torch_round_trip(tmp_path: Path, net: nn.Module, size: int) -> tuple[str, float]:
    """Export `net` with torch.onnx.export, import it; (spec text, max relative error)."""
    torch.manual_seed(0)
    net.eval()
    with torch.no_grad():  # non-trivial batchnorm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.rand(4, 3, size, size)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["x"])
    with torch.no_grad():
        expected = net(x).numpy()
    text, _, _ = import_onnx(str(path))
    ours = from_onnx(path).predict(x.numpy().transpose(0, 2, 3, 1))  # NCHW model, NHWC spec
    return text, float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))


def test_pytorch_resnet_imports_with_a_block(tmp_path: Path) -> None:
    text, error = torch_round_trip(tmp_path, SmallResNet(), 16)
    assert error < 1e-4
    assert "block residual_unit(filters)" in text
    assert "-> residual_unit(8) * 2" in text
    assert text.count("conv(") < 12  # 13 convs, most written once inside blocks


def test_pytorch_inception_imports_with_four_branches(tmp_path: Path) -> None:
    text, error = torch_round_trip(tmp_path, SmallInception(), 29)
    assert error < 1e-4
    assert "concat(" in text


def test_unsupported_op_names_the_node(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sin", ["x"], ["y"], name="the_sine")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "sin.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxImportError, match=r"'the_sine' \(Sin\).*Supported: Conv"):
        import_onnx(str(path))


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\x00 not a protobuf at all")
    with pytest.raises(OnnxImportError, match="not an ONNX model|no such|Supported"):
        import_onnx(str(path))
    with pytest.raises(OnnxImportError, match="no such file"):
        import_onnx(str(tmp_path / "missing.onnx"))
