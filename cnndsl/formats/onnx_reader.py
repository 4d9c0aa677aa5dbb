"""Reading an ONNX graph: the tensors it holds as our layers, and how their axes relate.

ONNX CNNs are NCHW, our specs NHWC. Each ONNX tensor is tracked as one of
our layers plus how its axes relate: `nchw` (a feature map, channels
on axis 1), `nhwc` (ours exactly: the Transposes exporters leave around a
graph cancel out), `vec` (N, n), `vec11` (N, C, 1, 1) of our [c] (after a
global pool), or `chw` (NCHW flattened: the next dense layer's kernel rows
are permuted to our [h, w, c] order). An NCHW model becomes an NHWC spec
with the same outputs (transposed the same way).

Errors: an op the language lacks, or one used in a way it cannot express,
raises `OnnxImportError` naming the node, its op type and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnndsl.ops.window import pads as window_pads
from cnndsl.runtime.executor import ModelError

SUPPORTED = (
    "Conv, BatchNormalization, Relu, Clip, LeakyRelu, Elu, Sigmoid, Tanh, Softmax, MaxPool,"
    " AveragePool, GlobalAveragePool, GlobalMaxPool, Add, Sum, Mul, Concat, Flatten, Reshape,"
    " Gemm, MatMul, Pad, LRN, Dropout, Identity, Transpose, Constant"
)


class OnnxImportError(ModelError):
    """The ONNX file cannot be written as a spec."""


@dataclass
class Node:
    """One layer of the imported network: our op, its arguments, inputs and Keras-layout weights."""

    id: str
    op: str
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = ()  # ours, without the batch axis


@dataclass(frozen=True)
class Value:
    """An ONNX tensor as one of our layers' outputs and how its axes relate (see the docstring)."""

    node: str
    layout: str
    dims: tuple[int, ...] = ()  # chw: (c, h, w) before flattening


@dataclass
class ImportedGraph:
    """The imported layers in order, the input's name and layout, the output."""

    nodes: dict[str, Node]
    input: str
    input_layout: str  # nhwc or nchw: what the ONNX model takes
    output: str
    output_layout: str
    name: str


class GraphReader:
    """What every node reader needs: the constants, shapes, values and layers built so far."""

    """Walks the ONNX graph in order, turning nodes into our layers."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        self.model = model
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer
        }
        self.shapes: dict[str, tuple[int, ...]] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        for info in [*inferred.graph.value_info, *graph.input, *graph.output]:
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = tuple(d.dim_value if d.dim_value else -1 for d in dims)
        self.values: dict[str, Value] = {}
        self.nodes: dict[str, Node] = {}
        self.readers: dict[str, int] = {}
        self.biasless_matmuls: set[str] = set()  # dense layers a following Add may give a bias
        for node in graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        self.onnx_node: Any = None

    # ---- helpers ----
    def fail(self, why: str) -> OnnxImportError:
        node = self.onnx_node
        return OnnxImportError(
            f"ONNX node '{node.name or node.output[0]}' ({node.op_type}): {why}."
            f" Supported: {SUPPORTED}"
        )

    def add(self, op: str, inputs: list[str], attrs: dict[str, Any], **weights: Any) -> str:
        node_id = f"n{len(self.nodes)}"
        self.nodes[node_id] = Node(
            node_id, op, attrs, inputs, {k: np.asarray(v, np.float32) for k, v in weights.items()}
        )
        return node_id

    def value(self, name: str) -> Value:
        if name not in self.values:
            raise self.fail(f"input '{name}' is a constant or unknown where a tensor is needed")
        return self.values[name]

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.fail(f"{what} must be a constant (an initializer)")
        return self.consts[name]

    def attr(self, name: str, default: Any = None) -> Any:
        for a in self.onnx_node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                # ONNX stores float32: 1e-5 reads back as 9.999999747378752e-06
                return float(str(np.float32(value))) if isinstance(value, float) else value
        return default

    def feature_map(self, value: Value) -> tuple[int, int, int]:
        """(h, w, c) of the NCHW tensor read by the current node."""
        if value.layout != "nchw":
            raise self.fail(f"needs an NCHW feature map, got a {value.layout} tensor")
        shape = self.shapes.get(self.onnx_node.input[0], ())
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise self.fail("needs a 4-D input of known size")
        return shape[2], shape[3], shape[1]

    def padding(self, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[Any, Any]:  # fmt: skip
        """(padding attr, zeropad pads or None) for the node's pads / auto_pad."""
        eff = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        same = window_pads("same", size, eff, stride)
        auto = self.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER",):
            return "same", None
        if auto == "VALID":
            return "valid", None
        if auto not in ("NOTSET", ""):
            raise self.fail(f"auto_pad {auto} is not supported")
        t, left, b, r = self.attr("pads", [0, 0, 0, 0])
        pads = ((t, b), (left, r))
        if pads == ((0, 0), (0, 0)):
            return "valid", None
        if pads == same:
            return "same", None
        if t == b and left == r:
            return (t, left), None
        return "valid", pads

    def readers_of(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes.values():
            for i in n.inputs:
                counts[i] = counts.get(i, 0) + 1
        return counts

    def _perm(self, node: Any) -> list[int]:
        self.onnx_node = node
        return list(self.attr("perm", []))

    def alias(self, node: Any, value: Value) -> None:
        self.values[node.output[0]] = value

    def emit(self, node: Any, op: str, inputs: list[Value], attrs: dict[str, Any],
             layout: str, **weights: Any) -> None:  # fmt: skip
        self.alias(node, Value(self.add(op, [v.node for v in inputs], attrs, **weights), layout))
