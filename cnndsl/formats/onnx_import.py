"""ONNX import: an ONNX CNN -> a readable `.cnn` spec and its weights (.npz).

Input: an ONNX file (ours, PyTorch's `torch.onnx.export`, Keras' tf2onnx, ...).
Output: `Imported`: the spec text (cnndsl.formats.onnx_spec writes it, with
repeated subgraphs as blocks) and the weights keyed 'layer/path:weight' as
our .npz files are, found by compiling the spec and matching its layers to
the ONNX nodes.

How each ONNX tensor maps to one of our layers and its axes (ONNX CNNs are
NCHW, our specs NHWC): cnndsl.formats.onnx_reader.

Errors: an op the language lacks, or one used in a way it cannot express,
raises `OnnxImportError` naming the node, its op type and what is supported.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnndsl.formats.onnx_export import require_onnx
from cnndsl.formats.onnx_reader import (
    SUPPORTED,
    GraphReader,
    ImportedGraph,
    Node,
    OnnxImportError,
    Value,
)
from cnndsl.ops import ACTIVATIONS, OPS


class Importer(GraphReader):
    """Walks an ONNX graph node by node: one `op_<OnnxType>` reader per supported op."""

    # ---- the walk ----
    def run(self) -> ImportedGraph:
        graph = self.model.graph
        real_inputs = [i for i in graph.input if i.name not in self.consts]
        if len(real_inputs) != 1 or len(graph.output) != 1:
            raise OnnxImportError(
                f"the model has {len(real_inputs)} inputs and {len(graph.output)} outputs;"
                " import reads networks with one input and one output"
            )
        inp = real_inputs[0]
        shape = self.shapes[inp.name][1:]
        if any(d < 1 for d in shape):
            raise OnnxImportError(f"input '{inp.name}' needs a fixed size, got {list(shape)}")
        readers = [n for n in graph.node if inp.name in n.input]
        nhwc = (
            len(shape) == 3
            and readers
            and all(
                n.op_type == "Transpose" and list(self._perm(n)) == [0, 3, 1, 2] for n in readers
            )
        )
        ours: tuple[int, ...]
        if len(shape) == 3 and not nhwc:
            ours, layout = (shape[1], shape[2], shape[0]), "nchw"
        else:
            ours, layout = tuple(shape), ("nhwc" if len(shape) == 3 else "vec")
        input_id = self.add("input", [], {"shape": list(ours)})
        self.nodes[input_id].shape = ours
        self.values[inp.name] = Value(input_id, layout)
        for node in graph.node:
            self.onnx_node = node
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise self.fail("the language has no such op")
            handler(node)
        out = self.values.get(graph.output[0].name)
        if out is None:
            raise OnnxImportError(f"output '{graph.output[0].name}' is not computed by the graph")
        folded = fold_activations(self.nodes, self.readers_of())
        return ImportedGraph(
            self.nodes, input_id, "nhwc" if nhwc or len(shape) != 3 else "nchw",
            folded.get(out.node, out.node), out.layout, graph.name or "imported",
        )  # fmt: skip

    # ---- ops ----
    def op_Constant(self, node: Any) -> None:
        self.consts[node.output[0]] = self.onnx.numpy_helper.to_array(self.attr("value"))

    def op_Identity(self, node: Any) -> None:
        if node.input[0] in self.consts:
            self.consts[node.output[0]] = self.consts[node.input[0]]
        else:
            self.alias(node, self.value(node.input[0]))

    op_Dropout = op_Identity

    def op_Transpose(self, node: Any) -> None:
        x = self.value(node.input[0])
        perm = self._perm(node)
        if x.layout == "nhwc" and perm == [0, 3, 1, 2]:
            self.alias(node, Value(x.node, "nchw"))
        elif x.layout == "nchw" and perm == [0, 2, 3, 1]:
            self.alias(node, Value(x.node, "nhwc"))
        else:
            raise self.fail(f"Transpose {perm} of a {x.layout} tensor has no counterpart")

    def op_Conv(self, node: Any) -> None:
        x = self.value(node.input[0])
        w = self.const(node.input[1], "the kernel")
        bias = {"bias": self.const(node.input[2], "the bias")} if len(node.input) > 2 else {}
        if w.ndim != 4:
            raise self.fail("only 2-D convolutions are supported")
        out_c, in_per_group, kh, kw = w.shape
        group = int(self.attr("group", 1))
        stride = tuple(self.attr("strides", [1, 1]))
        dilation = tuple(self.attr("dilations", [1, 1]))
        if x.layout == "vec11" and (kh, kw) == (1, 1) and group == 1:  # 1×1 conv on [c]: dense
            units = {"units": out_c, "bias": bool(bias)}
            kernel = w[:, :, 0, 0].T
            self.emit(node, "dense", [x], units, "vec11", kernel=kernel, **bias)
            return
        h, wd, c = self.feature_map(x)
        padding, zeros = self.padding((h, wd), (kh, kw), stride, dilation)  # type: ignore[arg-type]
        if zeros is not None:
            x = Value(self.add("zeropad", [x.node], {"padding": zeros}), "nchw")
        attrs: dict[str, Any] = {"kernel": (kh, kw), "stride": stride, "padding": padding}
        attrs.update(dilation=dilation, bias=bool(bias))
        if group == 1:
            kernel = w.transpose(2, 3, 1, 0)
            self.emit(node, "conv", [x], {"filters": out_c, **attrs}, "nchw", kernel=kernel, **bias)
        elif group == c and in_per_group == 1:
            m = out_c // c
            kernel = w[:, 0].reshape(c, m, kh, kw).transpose(2, 3, 0, 1)
            attrs["depth_multiplier"] = m
            self.emit(node, "depthwise_conv", [x], attrs, "nchw", kernel=kernel, **bias)
        else:
            kernel = w.transpose(2, 3, 1, 0)
            attrs.update(filters=out_c, groups=group)
            self.emit(node, "conv", [x], attrs, "nchw", kernel=kernel, **bias)

    def op_BatchNormalization(self, node: Any) -> None:
        x = self.value(node.input[0])
        gamma, beta, mean, var = (self.const(n, "the statistics") for n in node.input[1:5])
        attrs = {"epsilon": float(self.attr("epsilon", 1e-5))}
        weights = {"gamma": gamma, "beta": beta, "moving_mean": mean, "moving_variance": var}
        self.emit(node, "batchnorm", [x], attrs, x.layout, **weights)

    def activation(self, node: Any, op: str, attrs: dict[str, Any] | None = None) -> None:
        x = self.value(node.input[0])
        self.emit(node, op, [x], attrs or {}, x.layout)

    def op_Relu(self, node: Any) -> None:
        self.activation(node, "relu")

    def op_Sigmoid(self, node: Any) -> None:
        self.activation(node, "sigmoid")

    def op_Tanh(self, node: Any) -> None:
        self.activation(node, "tanh")

    def op_LeakyRelu(self, node: Any) -> None:
        self.activation(node, "leaky_relu", {"alpha": float(self.attr("alpha", 0.01))})

    def op_Elu(self, node: Any) -> None:
        self.activation(node, "elu", {"alpha": float(self.attr("alpha", 1.0))})

    def op_Clip(self, node: Any) -> None:
        low = (
            float(self.const(node.input[1], "min"))
            if len(node.input) > 1 and node.input[1]
            else self.attr("min", None)
        )  # noqa: E501
        high = (
            float(self.const(node.input[2], "max"))
            if len(node.input) > 2 and node.input[2]
            else self.attr("max", None)
        )  # noqa: E501
        if low == 0 and high == 6:
            self.activation(node, "relu6")
        elif low == 0 and high is None:
            self.activation(node, "relu")
        else:
            raise self.fail(f"Clip to [{low}, {high}]: only relu ([0, ∞)) and relu6 ([0, 6])")

    def op_Softmax(self, node: Any) -> None:
        x = self.value(node.input[0])
        axis = int(self.attr("axis", -1))
        if not (x.layout in ("vec", "nchw") and axis in (1, -1 if x.layout == "vec" else 1)):
            raise self.fail(f"Softmax over axis {axis} of a {x.layout} tensor")
        self.activation(node, "softmax")

    def pool(self, node: Any, op: str, averages: bool = False) -> None:
        x = self.value(node.input[0])
        h, w, _ = self.feature_map(x)
        if self.attr("ceil_mode", 0) or any(d != 1 for d in self.attr("dilations", [1, 1])):
            raise self.fail("ceil_mode and dilated pools are not supported")
        size = tuple(self.attr("kernel_shape"))
        stride = tuple(self.attr("strides", [1, 1]))
        padding, zeros = self.padding((h, w), size, stride, (1, 1))  # type: ignore[arg-type]
        counts = int(self.attr("count_include_pad", 0))
        if averages and padding != "valid" and (padding == "same") == bool(counts):
            raise self.fail("AveragePool: padding that counts must be symmetric, Keras' same not")
        if zeros is not None:
            raise self.fail("asymmetric pool padding other than Keras' same")
        attrs = {"size": size, "stride": stride, "padding": padding}
        self.emit(node, op, [x], attrs, "nchw")

    def op_MaxPool(self, node: Any) -> None:
        self.pool(node, "maxpool")

    def op_AveragePool(self, node: Any) -> None:
        self.pool(node, "avgpool", averages=True)

    def op_GlobalAveragePool(self, node: Any) -> None:
        self.feature_map(self.value(node.input[0]))
        self.emit(node, "global_avgpool", [self.value(node.input[0])], {}, "vec11")

    def op_GlobalMaxPool(self, node: Any) -> None:
        self.feature_map(self.value(node.input[0]))
        self.emit(node, "global_maxpool", [self.value(node.input[0])], {}, "vec11")

    def merge(self, node: Any, op: str, broadcasts: bool = False) -> None:
        values = [self.value(n) for n in node.input]
        layouts = {v.layout for v in values}
        if broadcasts and layouts == {"nchw", "vec11"}:  # a [c] gate times a map (SE)
            values.sort(key=lambda v: v.layout != "nchw")
            layouts = {"nchw"}
        if len(layouts) != 1 or layouts & {"chw"}:
            raise self.fail(f"cannot combine tensors laid out as {sorted(layouts)}")
        self.emit(node, op, values, {}, layouts.pop())

    def op_Add(self, node: Any) -> None:
        bias = [n for n in node.input if n in self.consts]
        if bias:  # MatMul + Add: the dense layer's bias
            x = self.value(next(n for n in node.input if n not in self.consts))
            dense = self.nodes[x.node]
            if x.node not in self.biasless_matmuls or x.layout != "vec":
                raise self.fail("adding a constant is supported only as a MatMul's bias")
            self.biasless_matmuls.discard(x.node)
            dense.attrs["bias"] = True
            dense.weights["bias"] = np.asarray(self.consts[bias[0]], np.float32).reshape(-1)
            self.alias(node, x)
            return
        self.merge(node, "add")

    op_Sum = op_Add

    def op_Mul(self, node: Any) -> None:
        if any(n in self.consts for n in node.input):
            raise self.fail("multiplying by a constant has no layer in the language")
        self.merge(node, "multiply", broadcasts=True)

    def op_Concat(self, node: Any) -> None:
        values = [self.value(n) for n in node.input]
        axis = int(self.attr("axis"))
        layout = values[0].layout
        if {v.layout for v in values} != {layout} or axis not in (1, -1 if layout == "vec" else 1):
            raise self.fail(f"Concat on axis {axis} of {layout} tensors: only channels")
        self.emit(node, "concat", values, {}, layout)

    def flatten(self, node: Any) -> None:
        x = self.value(node.input[0])
        if x.layout in ("vec", "vec11"):
            self.alias(node, Value(x.node, "vec"))
        elif x.layout == "nhwc":
            self.emit(node, "flatten", [x], {}, "vec")
        elif x.layout == "nchw":
            h, w, c = self.feature_map(x)
            layout = "vec" if (h, w) == (1, 1) else "chw"
            self.alias(node, Value(self.add("flatten", [x.node], {}), layout, (c, h, w)))
        else:
            raise self.fail(f"flattening a {x.layout} tensor")

    def op_Flatten(self, node: Any) -> None:
        if int(self.attr("axis", 1)) != 1:
            raise self.fail("only Flatten(axis=1) keeps the batch axis")
        self.flatten(node)

    def op_Reshape(self, node: Any) -> None:
        x = self.value(node.input[0])
        target = [int(d) for d in self.const(node.input[1], "the target shape")]
        if len(target) == 2:
            self.flatten(node)
        elif x.layout == "vec" and len(target) == 4 and target[2:] == [1, 1]:
            self.alias(node, Value(x.node, "vec11"))
        else:
            raise self.fail(f"Reshape to {target}: only flattening and [N, C, 1, 1]")

    op_Unsqueeze = op_Squeeze = None  # set below

    def unsqueeze(self, node: Any) -> None:
        x = self.value(node.input[0])
        if x.layout == "vec" and self.shapes.get(node.output[0], ())[2:] == (1, 1):
            self.alias(node, Value(x.node, "vec11"))
        elif x.layout == "vec11":
            self.alias(node, Value(x.node, "vec"))
        else:
            raise self.fail(f"{node.op_type} of a {x.layout} tensor")

    def op_Gemm(self, node: Any) -> None:
        x = self.value(node.input[0])
        w = self.const(node.input[1], "the weight")
        if self.attr("transA", 0) or self.attr("alpha", 1.0) != 1 or self.attr("beta", 1.0) != 1:
            raise self.fail("only Gemm with transA=0, alpha=1 and beta=1")
        kernel = w.T if self.attr("transB", 0) else w
        bias = {"bias": self.const(node.input[2], "the bias")} if len(node.input) > 2 else {}
        self.dense(node, x, kernel, bias)

    def op_MatMul(self, node: Any) -> None:
        self.dense(node, self.value(node.input[0]), self.const(node.input[1], "the weight"), {})

    def dense(self, node: Any, x: Value, kernel: np.ndarray, bias: dict[str, Any]) -> None:
        if x.layout == "chw":  # rows in ONNX's (c, h, w) order -> ours (h, w, c)
            c, h, w = x.dims
            kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
        elif x.layout != "vec":
            raise self.fail(f"a dense layer needs a vector, got a {x.layout} tensor")
        attrs = {"units": kernel.shape[1], "bias": bool(bias)}
        self.emit(node, "dense", [x], attrs, "vec", kernel=kernel, **bias)
        if not bias:
            self.biasless_matmuls.add(self.values[node.output[0]].node)

    def op_Pad(self, node: Any) -> None:
        x = self.value(node.input[0])
        mode = self.attr("mode", b"constant")
        pads = self.const(node.input[1], "pads") if len(node.input) > 1 else self.attr("pads")
        value = self.consts.get(node.input[2], 0) if len(node.input) > 2 and node.input[2] else 0
        pads = [int(p) for p in pads]
        if mode not in (b"constant", "constant") or float(value) != 0 or x.layout != "nchw":
            raise self.fail("only zero padding of a feature map")
        if len(pads) != 8 or pads[:2] != [0, 0] or pads[4:6] != [0, 0]:
            raise self.fail("only padding of the spatial axes")
        padding = ((pads[2], pads[6]), (pads[3], pads[7]))
        self.emit(node, "zeropad", [x], {"padding": padding}, "nchw")

    def op_LRN(self, node: Any) -> None:
        size = int(self.attr("size"))
        if size % 2 == 0:
            raise self.fail("LRN with an even size has no symmetric radius")
        attrs = {
            "radius": size // 2,
            "alpha": float(self.attr("alpha", 1e-4)) / size,
            "beta": float(self.attr("beta", 0.75)),
            "bias": float(self.attr("bias", 1.0)),
        }
        self.activation(node, "lrn", attrs)


Importer.op_Unsqueeze = Importer.unsqueeze  # type: ignore[assignment]
Importer.op_Squeeze = Importer.unsqueeze  # type: ignore[assignment]


def fold_activations(nodes: dict[str, Node], readers: dict[str, int]) -> dict[str, str]:
    """conv -> relu becomes conv(..., activation=relu) where the conv has no other reader.

    Returns the removed activations' ids -> the layer that now applies them.
    """
    folded: dict[str, str] = {}
    for node in list(nodes.values()):
        if node.op not in ACTIVATIONS or node.attrs:
            continue
        (src,) = node.inputs
        producer = nodes[src]
        # Layers that take `activation=` apply any registered activation themselves.
        if "activation" not in OPS[producer.op].attrs or readers.get(src) != 1:
            continue
        if producer.attrs.get("activation", "none") != "none":
            continue
        producer.attrs["activation"] = node.op
        for other in nodes.values():
            other.inputs = [src if i == node.id else i for i in other.inputs]
        del nodes[node.id]
        readers[src] = readers.pop(node.id, 0)
        folded[node.id] = src
    return folded


def read_onnx(path: str | os.PathLike[str]) -> ImportedGraph:
    """The layers of the ONNX model at `path`."""
    onnx = require_onnx()
    try:
        model = onnx.load(os.fspath(path))
    except FileNotFoundError:
        raise OnnxImportError(f"no such file: '{os.fspath(path)}'") from None
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise OnnxImportError(
            f"'{os.fspath(path)}' is not an ONNX model ({type(exc).__name__}); export one with"
            " torch.onnx.export, tf2onnx or `cnndsl export`"
        ) from None
    return Importer(onnx, model).run()


__all__ = [
    "SUPPORTED",
    "ImportedGraph",
    "Importer",
    "Node",
    "OnnxImportError",
    "Value",
    "read_onnx",
]
