"""cuDNN convolutions for the CuPy backend, through nvidia-cudnn-frontend's graph API.

CuPy 14 dropped its cuDNN bindings; the `cudnn` Python module of the
nvidia-cudnn-frontend package (with the cuDNN wheel, nvidia-cudnn-cu12/cu13)
builds cuDNN graphs from Python and runs them on device pointers that it takes
from any DLPack array, CuPy's included. Used here for conv (groups = 1):
forward (conv_fprop), input gradient (conv_dgrad), kernel gradient
(conv_wgrad), NHWC float32, TF32 off by default (engines with the
TENSOR_CORE numerical note are left out, as PyTorch does with TF32 off).

Everything here is optional: `available()` says whether the module imports
and has what is used; without it the CuPy backend leaves "cudnn" out of its
capabilities, lowering never picks it, and convolutions run as im2col +
cuBLAS. A shape cuDNN refuses (no engine supports it) runs the cuBLAS path too.

NOTE: written against the frontend's documented Python API (its samples
test_conv_bias.py and test_wgrads.py, and pygraph's bindings) without a GPU at
hand; scripts/gpu_check.py checks it against NumPy on the first device run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cnndsl.ops import conv_kernels
from cnndsl.ops.window import Geometry

INSTALL = (
    "pip install nvidia-cudnn-frontend and the cuDNN wheel of the machine's CUDA"
    " (nvidia-cudnn-cu12 or nvidia-cudnn-cu13)"
)
_NEEDED = ("pygraph", "data_type", "heur_mode", "create_handle", "set_stream")
_module: Any = None
_reason = ""


def _load() -> Any:
    """The `cudnn` module, or None with `_reason` saying why (imported once)."""
    global _module, _reason
    if _module is None and not _reason:
        try:
            module = importlib.import_module("cudnn")
        except (ImportError, OSError) as e:  # NOTE: OSError: the cuDNN library missing
            _reason = f"nvidia-cudnn-frontend does not import ({e}); {INSTALL}"
            return None
        missing = [name for name in _NEEDED if not hasattr(module, name)]
        if missing:
            _reason = f"the cudnn module lacks {', '.join(missing)}: not nvidia-cudnn-frontend 1.x"
            return None
        _module = module
    return _module


def available() -> bool:
    """Whether nvidia-cudnn-frontend imports with the graph API used here."""
    return _load() is not None


def unavailable_reason() -> str:
    """Why `available()` is False ('' when it is True)."""
    _load()
    return _reason


def describe() -> str:
    """A line for logs: the frontend's and cuDNN's versions, or why there is none."""
    cudnn = _load()
    if cudnn is None:
        return f"not available: {_reason}"
    version = getattr(cudnn, "__version__", "?")
    try:
        backend = cudnn.backend_version()
    except Exception as e:  # NOTE: needs the cuDNN library; report, do not fail
        backend = f"? ({e})"
    return f"nvidia-cudnn-frontend {version}, cuDNN {backend}"


def _reset_for_tests() -> None:
    """Forget the import result (tests that hide or fake the module)."""
    global _module, _reason
    _module, _reason = None, ""


class CudnnConvolutions:
    """Built cuDNN graphs by problem, run on CuPy arrays; tf32: allow TF32 engines."""

    def __init__(self, xp: Any, tf32: bool = False) -> None:
        cudnn = _load()
        if cudnn is None:
            raise RuntimeError(_reason)
        self.cudnn = cudnn
        self.xp = xp
        self.tf32 = tf32
        self.handle = cudnn.create_handle()
        self._graphs: dict[tuple[Any, ...], Any] = {}  # None: cuDNN refused that problem
        self._workspace: Any = None

    # ---- layouts: cnndsl is NHWC with HWIO kernels; cuDNN takes NCHW dims with strides ----

    @staticmethod
    def _nhwc(shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
        n, h, w, c = shape
        return [n, c, h, w], [h * w * c, 1, w * c, c]

    @staticmethod
    def _krsc(kernel_shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
        r, s, c, k = kernel_shape
        return [k, c, r, s], [r * s * c, 1, s * c, c]

    def _conv_args(self, geo: Geometry) -> dict[str, Any]:
        (top, bottom), (left, right) = geo.pads
        return {
            "pre_padding": [top, left],
            "post_padding": [bottom, right],
            "stride": list(geo.stride),
            "dilation": list(geo.dilation),
        }

    def _graph(self, key: tuple[Any, ...], build: Callable[[Any], Any]) -> Any:
        """The built graph for `key` (built on first use), or None where cuDNN has no engine."""
        if key not in self._graphs:
            cudnn = self.cudnn
            graph = cudnn.pygraph(
                io_data_type=cudnn.data_type.FLOAT,
                intermediate_data_type=cudnn.data_type.FLOAT,
                compute_data_type=cudnn.data_type.FLOAT,
                handle=self.handle,
            )
            tensors = build(graph)
            try:
                graph.validate()
                graph.build_operation_graph()
                graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
                if not self.tf32:
                    graph.deselect_numeric_notes([cudnn.numerical_note.TENSOR_CORE])
                graph.check_support()
                graph.build_plans()
            except Exception:  # NOTE: no engine for this problem: the cuBLAS path runs it
                self._graphs[key] = None
                return None
            self._graphs[key] = (graph, tensors)
        return self._graphs[key]

    def _run(self, built: Any, arrays: list[Any]) -> None:
        graph, tensors = built
        size = graph.get_workspace_size()
        if self._workspace is None or self._workspace.size < size:
            self._workspace = self.xp.empty(max(size, 1), dtype=self.xp.uint8)
        cuda = getattr(self.xp, "cuda", None)  # NOTE: None with NumPy standing in (tests)
        if cuda is not None:
            self.cudnn.set_stream(handle=self.handle, stream=cuda.get_current_stream().ptr)
        pack = dict(zip(tensors, arrays, strict=True))
        graph.execute(pack, self._workspace, handle=self.handle)

    def forward(self, x: Any, kernel: Any, geo: Geometry) -> Any | None:
        """z = x ⋆ kernel as an (N, oh, ow, f) array, or None where cuDNN has no engine."""
        n = x.shape[0]
        f = kernel.shape[3]
        out_shape = (n, *geo.out, f)
        key = ("fprop", x.shape, kernel.shape, geo.pads, geo.stride, geo.dilation, x.dtype.str)

        def build(graph: Any) -> list[Any]:
            dims, strides = self._nhwc(x.shape)
            xt = graph.tensor(
                name="X", dim=dims, stride=strides, data_type=self.cudnn.data_type.FLOAT
            )
            kd, ks = self._krsc(kernel.shape)
            wt = graph.tensor(name="W", dim=kd, stride=ks, data_type=self.cudnn.data_type.FLOAT)
            yt = graph.conv_fprop(image=xt, weight=wt, name="fprop", **self._conv_args(geo))
            yd, ys = self._nhwc(out_shape)
            yt.set_output(True).set_dim(yd).set_stride(ys)
            return [xt, wt, yt]

        built = self._graph(key, build)
        if built is None:
            return None
        z = self.xp.empty(out_shape, dtype=x.dtype)
        krsc = self.xp.ascontiguousarray(kernel.transpose(3, 0, 1, 2))
        self._run(built, [self.xp.ascontiguousarray(x), krsc, z])
        return z

    def input_grad(self, dz: Any, kernel: Any, geo: Geometry, x_shape: tuple[int, ...]) -> Any:
        """dx of shape x_shape from dz, or None where cuDNN has no engine."""
        key = ("dgrad", dz.shape, kernel.shape, x_shape, geo.pads, geo.stride, geo.dilation)

        def build(graph: Any) -> list[Any]:
            dd, ds = self._nhwc(dz.shape)
            dyt = graph.tensor(name="DY", dim=dd, stride=ds, data_type=self.cudnn.data_type.FLOAT)
            kd, ks = self._krsc(kernel.shape)
            wt = graph.tensor(name="W", dim=kd, stride=ks, data_type=self.cudnn.data_type.FLOAT)
            dxt = graph.conv_dgrad(loss=dyt, filter=wt, name="dgrad", **self._conv_args(geo))
            xd, xs = self._nhwc(x_shape)
            dxt.set_output(True).set_dim(xd).set_stride(xs)
            return [dyt, wt, dxt]

        built = self._graph(key, build)
        if built is None:
            return None
        dx = self.xp.empty(x_shape, dtype=dz.dtype)
        krsc = self.xp.ascontiguousarray(kernel.transpose(3, 0, 1, 2))
        self._run(built, [self.xp.ascontiguousarray(dz), krsc, dx])
        return dx

    def kernel_grad(self, x: Any, dz: Any, geo: Geometry, kernel_shape: tuple[int, ...]) -> Any:
        """dW in cnndsl's HWIO layout, or None where cuDNN has no engine."""
        key = ("wgrad", x.shape, dz.shape, kernel_shape, geo.pads, geo.stride, geo.dilation)
        kd, ks = self._krsc(kernel_shape)

        def build(graph: Any) -> list[Any]:
            xd, xs = self._nhwc(x.shape)
            xt = graph.tensor(name="X", dim=xd, stride=xs, data_type=self.cudnn.data_type.FLOAT)
            dd, ds = self._nhwc(dz.shape)
            dyt = graph.tensor(name="DY", dim=dd, stride=ds, data_type=self.cudnn.data_type.FLOAT)
            dwt = graph.conv_wgrad(image=xt, loss=dyt, name="wgrad", **self._conv_args(geo))
            dwt.set_output(True).set_dim(kd).set_stride(ks)
            return [xt, dyt, dwt]

        built = self._graph(key, build)
        if built is None:
            return None
        r, s, c, k = kernel_shape
        dk = self.xp.empty((k, r, s, c), dtype=x.dtype)
        self._run(built, [self.xp.ascontiguousarray(x), self.xp.ascontiguousarray(dz), dk])
        return self.xp.ascontiguousarray(dk.transpose(1, 2, 3, 0))

    # ---- the kernels conv runs (ctx.overrides) ----

    def overrides(self) -> dict[str, Callable[..., Any]]:
        """conv2d_forward and conv2d_backward: cuDNN where the step chose it, else generic."""
        return {"conv2d_forward": self.conv2d_forward, "conv2d_backward": self.conv2d_backward}

    def conv2d_forward(
        self,
        xp: Any,
        x: Any,
        kernel: Any,
        bias: Any,
        geo: Geometry,
        relu: bool,
        workers: Any,
        method: str | None = None,
        keep: Any = None,
    ) -> Any:
        """conv_kernels.conv2d_forward, by cuDNN where method is "cudnn"."""
        z = self.forward(x, kernel, geo) if method == "cudnn" else None
        if z is None:
            fallback = (
                cublas_methods(geo, kernel.shape[3])["forward"] if method == "cudnn" else method
            )
            return conv_kernels.conv2d_forward(
                xp, x, kernel, bias, geo, relu, workers, fallback, keep
            )
        if bias is not None:
            z += bias
        if relu:
            xp.maximum(z, 0, out=z)
        return z

    def conv2d_backward(
        self,
        xp: Any,
        x: Any,
        dy: Any,
        kernel: Any,
        geo: Geometry,
        *,
        want_dx: bool,
        want_db: bool,
        method: str,
        relu_out: Any,
        workers: Any,
        kernel_method: str | None = None,
        kept: Any = None,
    ) -> tuple[Any, Any, Any]:
        """conv_kernels.conv2d_backward, by cuDNN where the step chose it."""
        if method != "cudnn" and kernel_method != "cudnn":
            return conv_kernels.conv2d_backward(
                xp,
                x,
                dy,
                kernel,
                geo,
                want_dx=want_dx,
                want_db=want_db,
                method=method,
                relu_out=relu_out,
                workers=workers,
                kernel_method=kernel_method,
                kept=kept,
            )
        dz = dy if relu_out is None else dy * (relu_out > 0)
        dk = self.kernel_grad(x, dz, geo, kernel.shape) if kernel_method == "cudnn" else None
        dx = None
        if want_dx and method == "cudnn":
            dx = self.input_grad(dz, kernel, geo, x.shape)
        needs_generic = dk is None or (want_dx and dx is None)
        if needs_generic:  # a method that is not cuDNN's, or a problem cuDNN refused
            fallback = cublas_methods(geo, kernel.shape[3])
            gdx, gdk, _ = conv_kernels.conv2d_backward(
                xp,
                x,
                dy,
                kernel,
                geo,
                want_dx=want_dx and dx is None,
                want_db=False,
                method=fallback["input_grad"] if method == "cudnn" else method,
                relu_out=relu_out,
                workers=workers,
                kernel_method=fallback["kernel_grad"]
                if kernel_method == "cudnn"
                else kernel_method,
                kept=kept,
            )
            dx = gdx if dx is None else dx
            dk = gdk if dk is None else dk
        db = None
        if want_db:
            db = xp.sum(dz.reshape(-1, dz.shape[-1]), axis=0, dtype=xp.float64).astype(dz.dtype)
        return dx, dk, db


def cublas_methods(geo: Geometry, filters: int) -> dict[str, str]:
    """The non-cuDNN, non-Winograd kernels for a conv: what a refused cuDNN step runs."""
    forward = conv_kernels.forward_method(geo, filters)
    input_grad = conv_kernels.input_grad_method(geo, filters)
    kernel_grad = conv_kernels.kernel_grad_method(geo, filters)
    return {
        "forward": "im2col" if forward == "winograd" else forward,
        "input_grad": "full" if input_grad == "winograd" else input_grad,
        "kernel_grad": "im2col" if kernel_grad == "winograd" else kernel_grad,
    }
