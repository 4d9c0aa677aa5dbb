"""The cuDNN path of the CuPy backend (cnndsl/runtime/backends/cudnn.py), without cuDNN.

1. Without nvidia-cudnn-frontend the backend leaves "cudnn" out: lowering never
   picks it and the cuBLAS path runs (the fallback every CI run takes).
2. A fake `cudnn` module that interprets the graphs in NumPy, reading each
   tensor through the dims and strides declared for it (NCHW logical dims over
   cnndsl's NHWC/HWIO buffers) and convolving by the definition: checks the
   layouts, paddings and transposes the real module would be handed.
3. With CuPy, a device and the real module: scripts/gpu_check.py's conv check.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.ops import OPS
from cnndsl.ops.conv import conv_geometry
from cnndsl.ops.conv_kernels import conv2d_backward, conv2d_forward
from cnndsl.runtime.backends import BackendError, cudnn
from cnndsl.runtime.backends.cupy_backend import CupyBackend
from cnndsl.runtime.lower import lower
from cnndsl.runtime.workers import Workers


@pytest.fixture
def no_frontend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "cudnn", None)  # makes `import cudnn` fail
    cudnn._reset_for_tests()
    yield
    cudnn._reset_for_tests()


def test_without_the_frontend_the_cublas_path_runs(no_frontend: None) -> None:
    assert not cudnn.available()
    assert "pip install nvidia-cudnn-frontend" in cudnn.unavailable_reason()
    assert "not available" in cudnn.describe()
    backend = CupyBackend(xp=np)
    assert backend.cudnn is None
    assert "cudnn" not in backend.capabilities.conv_algorithms
    assert "conv2d_forward" not in backend.overrides
    g = cnndsl.compile("specs/resnet18.cnn", size=64).graph
    plan = lower(g, capabilities=backend.capabilities)
    assert not any("cudnn" in str(step.attrs) for step in plan.steps)
    with pytest.raises(BackendError, match="nvidia-cudnn-frontend"):
        CupyBackend(xp=np, cudnn=True)


# ---- a fake `cudnn` module: the graph API, run by definition in NumPy ----


class FakeTensor:
    def __init__(self, name: str, dim: Any = None, stride: Any = None, node: Any = None) -> None:
        self.name, self.dim, self.stride, self.node = name, dim, stride, node
        self.output = False

    def set_output(self, on: bool) -> FakeTensor:
        self.output = on
        return self

    def set_dim(self, dim: list[int]) -> FakeTensor:
        self.dim = list(dim)
        return self

    def set_stride(self, stride: list[int]) -> FakeTensor:
        self.stride = list(stride)
        return self


def _view(a: np.ndarray, t: FakeTensor) -> np.ndarray:
    """The array as the tensor declares it: dims and element strides over a's buffer."""
    assert a.flags.c_contiguous, f"{t.name}: cuDNN gets a contiguous buffer"
    extent = 1 + sum((d - 1) * s for d, s in zip(t.dim, t.stride, strict=True))
    assert extent == a.size, f"{t.name}: dims {t.dim} strides {t.stride} over {a.shape}"
    return np.lib.stride_tricks.as_strided(
        a, shape=t.dim, strides=[s * a.itemsize for s in t.stride]
    )


def _taps(conv: dict[str, Any], hw: tuple[int, int], rs: tuple[int, int]) -> Iterator[Any]:
    """(r, q, rows, cols): padded-input slices each kernel tap reads, by the definition."""
    (sh, sw), (dh, dw) = conv["stride"], conv["dilation"]
    oh, ow = hw
    for r in range(rs[0]):
        for q in range(rs[1]):
            yield (
                r,
                q,
                slice(r * dh, r * dh + sh * (oh - 1) + 1, sh),
                slice(q * dw, q * dw + sw * (ow - 1) + 1, sw),
            )


class FakeGraph:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.nodes: list[tuple[str, dict[str, Any], FakeTensor]] = []
        self.deselected: list[Any] = []

    def tensor(self, name: str, dim: Any, stride: Any, data_type: Any) -> FakeTensor:
        return FakeTensor(name, list(dim), list(stride))

    def _node(self, kind: str, **kw: Any) -> FakeTensor:
        out = FakeTensor(kind)
        self.nodes.append((kind, kw, out))
        return out

    def conv_fprop(self, image: Any, weight: Any, name: str, **conv: Any) -> FakeTensor:
        return self._node("fprop", image=image, weight=weight, **conv)

    def conv_dgrad(self, loss: Any, filter: Any, name: str, **conv: Any) -> FakeTensor:  # noqa: A002
        return self._node("dgrad", loss=loss, filter=filter, **conv)

    def conv_wgrad(self, image: Any, loss: Any, name: str, **conv: Any) -> FakeTensor:
        return self._node("wgrad", image=image, loss=loss, **conv)

    def validate(self) -> None: ...
    def build_operation_graph(self) -> None: ...
    def create_execution_plans(self, modes: Any) -> None: ...
    def check_support(self) -> None: ...
    def build_plans(self) -> None: ...

    def deselect_numeric_notes(self, notes: Any) -> None:
        self.deselected += notes

    def get_workspace_size(self) -> int:
        return 64

    def execute(self, pack: dict[Any, np.ndarray], workspace: Any, handle: Any) -> None:
        (kind, node, out), = self.nodes  # fmt: skip
        assert out.output
        arrays = {t.name: _view(a, t) for t, a in pack.items()}
        pads = list(zip(node["pre_padding"], node["post_padding"], strict=True))
        if kind == "fprop":
            x, w = arrays["X"], arrays["W"]  # NCHW, KCRS
            xpad = np.pad(x, [(0, 0), (0, 0), *pads])
            y = np.zeros(out.dim)
            for r, q, rows, cols in _taps(node, out.dim[2:], w.shape[2:]):
                y += np.einsum("nchw,kc->nkhw", xpad[:, :, rows, cols], w[:, :, r, q])
            arrays["fprop"][...] = y
        elif kind == "dgrad":
            dy, w = arrays["DY"], arrays["W"]
            n, c, h, wd = out.dim
            dxpad = np.zeros((n, c, h + sum(pads[0]), wd + sum(pads[1])))
            for r, q, rows, cols in _taps(node, dy.shape[2:], w.shape[2:]):
                dxpad[:, :, rows, cols] += np.einsum("nkhw,kc->nchw", dy, w[:, :, r, q])
            arrays["dgrad"][...] = dxpad[
                :, :, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + wd
            ]
        else:
            x, dy = arrays["X"], arrays["DY"]
            xpad = np.pad(x, [(0, 0), (0, 0), *pads])
            dw = np.zeros(out.dim)
            for r, q, rows, cols in _taps(node, dy.shape[2:], out.dim[2:]):
                dw[:, :, r, q] = np.einsum("nchw,nkhw->kc", xpad[:, :, rows, cols], dy)
            arrays["wgrad"][...] = dw


def fake_cudnn() -> types.ModuleType:
    m = types.ModuleType("cudnn")
    m.__version__ = "fake"  # type: ignore[attr-defined]
    m.data_type = types.SimpleNamespace(FLOAT="float")  # type: ignore[attr-defined]
    m.heur_mode = types.SimpleNamespace(A="A", FALLBACK="FALLBACK")  # type: ignore[attr-defined]
    m.numerical_note = types.SimpleNamespace(TENSOR_CORE="TENSOR_CORE")  # type: ignore[attr-defined]
    m.pygraph = FakeGraph  # type: ignore[attr-defined]
    m.create_handle = lambda: "handle"  # type: ignore[attr-defined]
    m.set_stream = lambda handle, stream: None  # type: ignore[attr-defined]
    m.backend_version = lambda: 90000  # type: ignore[attr-defined]
    return m


@pytest.fixture
def fake_frontend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "cudnn", fake_cudnn())
    cudnn._reset_for_tests()
    yield
    cudnn._reset_for_tests()


CONVS = [  # (input HWC, filters, kernel, attrs)
    ((7, 6, 3), 4, 3, {"padding": "same"}),  # asymmetric `same` pads: extra pixel after
    ((8, 8, 2), 5, (3, 2), {"padding": "same", "stride": 2}),
    ((9, 7, 3), 2, 3, {"padding": "valid", "dilation": 2}),
    ((5, 5, 4), 3, 1, {}),
]


@pytest.mark.parametrize(("shape", "filters", "kernel", "kw"), CONVS)
def test_cudnn_graphs_compute_the_generic_kernels_results(
    fake_frontend: None, shape: Any, filters: int, kernel: Any, kw: dict[str, Any]
) -> None:
    assert cudnn.available()
    a = OPS["conv"].bind(filters, kernel, activation="relu", **kw)
    geo = conv_geometry(a, shape)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *shape))
    k = rng.normal(size=(*geo.kernel, shape[2], filters))
    b = rng.normal(size=filters)
    convs = cudnn.CudnnConvolutions(np)
    z = convs.conv2d_forward(np, x, k, b, geo, True, None, "cudnn")
    want = conv2d_forward(
        np, x, k, b, geo, True, Workers(), "im2col" if not geo.pointwise else "gemm"
    )
    np.testing.assert_allclose(z, want, rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=z.shape)
    got = convs.conv2d_backward(
        np, x, dy, k, geo, want_dx=True, want_db=True, method="cudnn", relu_out=z,
        workers=None, kernel_method="cudnn",
    )  # fmt: skip
    generic = cudnn.cublas_methods(geo, filters)
    ref = conv2d_backward(
        np, x, dy, k, geo, want_dx=True, want_db=True, method=generic["input_grad"],
        relu_out=z, workers=Workers(), kernel_method=generic["kernel_grad"],
    )  # fmt: skip
    for ours, theirs in zip(got, ref, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert all(g is None or g[0].deselected == ["TENSOR_CORE"] for g in convs._graphs.values())


def test_tf32_keeps_the_tensor_core_engines(fake_frontend: None) -> None:
    a = OPS["conv"].bind(2, 3)
    geo = conv_geometry(a, (5, 5, 2))
    convs = cudnn.CudnnConvolutions(np, tf32=True)
    convs.forward(np.ones((1, 5, 5, 2)), np.ones((3, 3, 2, 2)), geo)
    (graph, _), = convs._graphs.values()  # fmt: skip
    assert graph.deselected == []


def test_a_problem_cudnn_refuses_runs_the_cublas_path(
    fake_frontend: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any) -> None:
        raise RuntimeError("no engine")

    monkeypatch.setattr(FakeGraph, "check_support", refuse)
    a = OPS["conv"].bind(4, 3, padding="same")
    geo = conv_geometry(a, (6, 6, 3))
    rng = np.random.default_rng(1)
    x, k = rng.normal(size=(2, 6, 6, 3)), rng.normal(size=(3, 3, 3, 4))
    convs = cudnn.CudnnConvolutions(np)
    z = convs.conv2d_forward(np, x, k, None, geo, False, Workers(), "cudnn")
    np.testing.assert_array_equal(
        z, conv2d_forward(np, x, k, None, geo, False, Workers(), "im2col")
    )
    assert list(convs._graphs.values()) == [None]


def test_with_cudnn_lowering_picks_it_for_every_plain_conv(fake_frontend: None) -> None:
    from cnndsl.runtime.backends.base import ALL_CONV_ALGORITHMS, Capabilities

    caps = Capabilities(conv_algorithms=ALL_CONV_ALGORITHMS | {"cudnn"})
    g = cnndsl.compile("specs/resnet18.cnn", size=64).graph
    convs = [s for s in lower(g, capabilities=caps).steps if s.op == "conv"]
    assert convs and all(s.attrs.get("forward") == "cudnn" for s in convs)
    assert all(s.attrs.get("input_grad") == s.attrs.get("kernel_grad") == "cudnn" for s in convs)
