"""ONNX export: a Model (graph + weights) -> a standard ONNX file.

Input: a built `Model` (or a compiled `Network`, exported with fresh weights).
Output: an `onnx.ModelProto` that passes `onnx.checker.check_model(...,
full_check=True)` and strict shape inference, with a dynamic batch axis
named `batch`, written by `export_onnx`.

Each layer lowers itself: `Op.onnx` (in the op's own file) calls the small
helpers of `OnnxBuilder` here, which names nodes and initializers by the
layer's path (`stage2/unit_1/conv_1`, `stage2/unit_1/conv_1:kernel`), holds
the layer's weights, and keeps the layout.

Layout: our feature maps are NHWC, ONNX's Conv and pools are NCHW. Inside the
graph every [h, w, c] map is NCHW; a vector is (N, n). With layout="nhwc"
(the default) the graph takes the spec's NHWC input, transposes it once, and
transposes [h, w, c] outputs back; `flatten` transposes its input to NHWC
before flattening, so the flattened order, and so every dense kernel, is
exactly ours. layout="nchw" takes and returns NCHW maps instead.

Errors: an op without an ONNX form, an opset out of range or the `onnx`
package missing raise `OnnxExportError` (a ModelError) that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnndsl.ir import Graph, Layer
from cnndsl.ops.registry import ACTIVATIONS, OPS, Shape
from cnndsl.ops.window import Geometry
from cnndsl.runtime.executor import ModelError

if TYPE_CHECKING:
    from cnndsl.compiler import Network
    from cnndsl.training.model import Model

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax over one axis, Clip/Pad/Resize with tensor inputs
LAYOUTS = ("nhwc", "nchw")
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]


class OnnxExportError(ModelError):
    """The network cannot be written as ONNX (an op without an ONNX form, a bad option)."""


def require_onnx() -> Any:
    """The `onnx` module, or OnnxExportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxExportError(
            "ONNX export and import need the 'onnx' package: pip install 'cnndsl[onnx]'"
        ) from None
    return onnx


class OnnxBuilder:
    """Collects the nodes and initializers of one graph; what `Op.onnx` calls."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx = onnx
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.path = ""  # the layer being lowered
        self.arrays: Mapping[str, np.ndarray] = {}  # its weights by name
        self._taken: set[str] = set()

    # ---- naming ----
    def fresh(self, name: str) -> str:
        """`name`, or `name_2`, `name_3`, ... where it is taken."""
        candidate, n = name, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{name}_{n}"
        self._taken.add(candidate)
        return candidate

    def begin(self, path: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Start lowering the layer at `path`, whose weights are `arrays`."""
        self.path = path
        self.arrays = arrays

    # ---- what ops call ----
    def node(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        """Add one node; its name and output are the layer's path (then path/OpType)."""
        name = self.fresh(self.path if self.path not in self._taken else f"{self.path}/{op_type}")
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [name], name, **attrs))
        return name

    def w(self, name: str) -> np.ndarray:
        """The layer's weight `name` as a host array."""
        return np.asarray(self.arrays[name])

    def weight(self, name: str, array: Any) -> str:
        """A float32 initializer named 'path:name' (our weight key)."""
        return self._initializer(f"{self.path}:{name}", np.asarray(array, np.float32))

    def const(self, name: str, array: Any) -> str:
        """A constant initializer named 'path/name' (shapes, pads, scalars), dtype kept."""
        return self._initializer(f"{self.path}/{name}", np.asarray(array))

    def _initializer(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.initializers.append(tensor)
        return name

    @staticmethod
    def axis(axis: int, rank: int) -> int:
        """The ONNX axis (batch first, maps NCHW) of our axis `axis` (no batch) of rank `rank`."""
        axis = axis % rank
        if rank == 3:  # (h, w, c) -> N, C, H, W
            return (2, 3, 1)[axis]
        return axis + 1

    @staticmethod
    def window_attrs(geo: Geometry) -> dict[str, Any]:
        """kernel_shape, strides, pads (begin, begin, end, end) and dilations of a window op."""
        (t, b), (l, r) = geo.pads
        return {
            "kernel_shape": list(geo.kernel),
            "strides": list(geo.stride),
            "pads": [t, l, b, r],
            "dilations": list(geo.dilation),
        }

    def activate(self, name: str, x: str, y: Shape) -> str:
        """Apply activation `name` ('none': nothing) to x of shape y, as the activation op does."""
        if name in (None, "none"):
            return x
        op = ACTIVATIONS[name]  # identity's own ONNX form is its input
        return op.onnx(op.bind(), self, [x], (y,), y)

    def unsupported(self, op: str, why: str = "") -> OnnxExportError:
        """The error for a layer that has no ONNX form."""
        detail = f": {why}" if why else ""
        return OnnxExportError(
            f"layer '{self.path}' ({op}) has no ONNX form{detail}; see docs/onnx.md for"
            " the ops that export"
        )


def spec_hash(sources: Mapping[str, str]) -> str:
    """sha256 of the spec's source files (names and text), in name order."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return digest.hexdigest()


def _value_info(onnx: Any, name: str, shape: Shape, layout: str) -> Any:
    dims: list[Any] = ["batch", *shape]
    if len(shape) == 3 and layout == "nchw":
        dims = ["batch", shape[2], shape[0], shape[1]]
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def _preprocessing(graph: Graph) -> dict[str, str]:
    """What the first layer with a say declares about preparing the input (metadata)."""
    for layer in graph:
        said = OPS[layer.op].input_preparation(layer.attrs)
        if said:
            return said
    return {}


def to_onnx(
    graph: Graph,
    weights: Mapping[str, np.ndarray],
    *,
    opset: int = DEFAULT_OPSET,
    layout: str = "nhwc",
    sources: Mapping[str, str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Any:
    """The checked ONNX ModelProto of `graph` with `weights` ('path:weight' keys)."""
    onnx = require_onnx()
    if layout not in LAYOUTS:
        raise OnnxExportError(f"layout must be nhwc or nchw, not {layout!r}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise OnnxExportError(
            f"opset {opset} is out of range: use {MIN_OPSET} to {newest} (default {DEFAULT_OPSET})"
        )
    b = OnnxBuilder(onnx, opset)
    tensors: dict[str, str] = {}
    inputs, outputs = [], []
    for path in graph.inputs:
        layer = graph[path]
        shape = layer.shape or ()
        inputs.append(_value_info(onnx, b.fresh(path), shape, layout))
        tensors[path] = path
        if len(shape) == 3 and layout == "nhwc":
            b.begin(f"{path}/nchw", {})
            tensors[path] = b.node("Transpose", [path], perm=TO_NCHW)
    for layer in graph:
        if layer.op == "input":
            continue
        tensors[layer.path] = _lower_layer(b, graph, layer, tensors, weights)
    for i, path in enumerate(graph.outputs):
        shape = graph[path].shape or ()
        name = "output" if len(graph.outputs) == 1 else f"output_{i + 1}"
        b.begin(name, {})
        if len(shape) == 3 and layout == "nhwc":
            b.nodes.append(
                onnx.helper.make_node("Transpose", [tensors[path]], [name], name, perm=TO_NHWC)
            )
        else:
            b.nodes.append(onnx.helper.make_node("Identity", [tensors[path]], [name], name))
        outputs.append(_value_info(onnx, name, shape, layout))
    name = str(graph.meta.get("name", "network"))
    model = onnx.helper.make_model(
        onnx.helper.make_graph(b.nodes, name, inputs, outputs, b.initializers),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="cnndsl",
        producer_version=_version(),
    )
    props = {"name": name, "layout": layout, **_preprocessing(graph)}
    if sources:
        props["spec_sha256"] = spec_hash(sources)
    if class_names:
        props["class_names"] = json.dumps(list(class_names))
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _lower_layer(
    b: OnnxBuilder,
    graph: Graph,
    layer: Layer,
    tensors: Mapping[str, str],
    weights: Mapping[str, np.ndarray],
) -> str:
    prefix = f"{layer.path}:"
    arrays = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    b.begin(layer.path, arrays)
    xs = [graph[i].shape or () for i in layer.inputs]
    return OPS[layer.op].onnx(
        layer.attrs, b, [tensors[i] for i in layer.inputs], xs, layer.shape or ()
    )


def _version() -> str:
    from cnndsl import __version__

    return __version__


def model_to_onnx(
    model: Model | Network, *, opset: int = DEFAULT_OPSET, layout: str = "nhwc"
) -> Any:
    """The ONNX ModelProto of a Model (its weights) or a Network (fresh weights, seed 0)."""
    built = model.build(seed=0) if hasattr(model, "build") else model
    graph: Graph = built.graph
    sources = getattr(model, "sources", None) or graph.meta.get("sources")
    return to_onnx(
        graph,
        built.weights,
        opset=opset,
        layout=layout,
        sources=sources,
        class_names=getattr(built, "class_names", None),
    )


def export_onnx(
    model: Model | Network,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    layout: str = "nhwc",
) -> None:
    """Write `model` as a checked ONNX file at `path` (see the module docstring)."""
    proto = model_to_onnx(model, opset=opset, layout=layout)
    try:
        with open(path, "wb") as handle:
            handle.write(proto.SerializeToString())
    except OSError as exc:
        raise OnnxExportError(f"cannot write '{os.fspath(path)}': {exc.strerror}") from None
