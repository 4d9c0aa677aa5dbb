"""Spec writing for ONNX import: imported layers -> `.cnn` text a person can read.

Input: an `ImportedGraph` (cnndsl.formats.onnx_import). Output: spec text,
then (`weights_for`) the weights keyed by the compiled spec's layer paths.

Chains are written as chains; a tensor read twice gets a name; merges are
`a + b`, `a * b` and `concat(...)`. Repeats: the cut points of the graph
(layers that every path from the input passes through) split it into
segments; a segment with branches (a residual unit, an Inception module)
gets a signature, its ops and arguments with the channel counts replaced by
parameters. A signature that occurs twice or more becomes a `block`, used as
`-> unit(64) * 2` for consecutive equal calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnndsl.formats.onnx_import import ImportedGraph, Node, OnnxImportError, read_onnx
from cnndsl.ops.attrs import REQUIRED
from cnndsl.ops.registry import OPS

CHANNEL_ATTRS = ("filters", "units")  # what becomes a block parameter
LINE = 92


def fmt(value: Any) -> str:
    """A value as the language writes it: 3 for (3, 3), (1, 7), true, 1e-05, same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        if len(value) == 2 and value[0] == value[1] and not isinstance(value[0], tuple | list):
            return fmt(value[0])
        inner = ", ".join(fmt(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def _unless_given(op: Any, attrs: dict[str, Any], name: str) -> Any:
    """The value argument `name` takes when left out (a pool's stride: its size)."""
    rest = {k: v for k, v in attrs.items() if k != name}
    return op.bind(**rest)[name]


def layer_text(node: Node, params: dict[str, str] | None = None) -> str:
    """`conv(64, 3, stride=2, padding=same)`: required arguments first, then what is not default."""
    op = OPS[node.op]
    bound = op.bind(**node.attrs)
    positional, named = [], []
    for name, (_, default) in op.attrs.items():
        value = bound[name]
        text = (params or {}).get(f"{node.id}.{name}") or fmt(value)
        if default is REQUIRED and name in op.args:
            positional.append(text)
        elif value != _unless_given(op, node.attrs, name) or f"{node.id}.{name}" in (params or {}):
            named.append(f"{name}={text}")
    args = ", ".join(positional + named)
    return f"{node.op}({args})" if args else node.op


class Writer:
    """Writes the network body, finding the blocks first."""

    def __init__(self, graph: ImportedGraph) -> None:
        self.g = graph
        self.order = [n for n in graph.nodes if n != graph.input]
        self.readers: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for node in graph.nodes.values():
            for i in node.inputs:
                self.readers[i].append(node.id)
        self.blocks: dict[tuple[Any, ...], tuple[str, list[str]]] = {}  # signature -> name, params
        self.block_text: list[str] = []

    # ---- segments between cut points ----
    def segments(self) -> list[tuple[str, list[str]]]:
        """(entry, layers) between consecutive cut points, in order."""
        ids = [self.g.input, *self.order]
        pos = {n: i for i, n in enumerate(ids)}
        out, entry, current, reach = [], ids[0], [], 0
        for i, n in enumerate(ids):
            if i and reach <= i:  # nothing before n reaches past it: a cut point
                current.append(n)
                out.append((entry, current))
                entry, current = n, []
            elif i:
                current.append(n)
            reach = max([reach, i, *(pos[r] for r in self.readers[n])])
        if current:
            out.append((entry, current))
        merged: list[tuple[str, list[str]]] = []
        for entry, layers in out:  # the activation after a merge belongs to its unit
            single = self.g.nodes[layers[0]]
            if (
                merged
                and len(layers) == 1
                and len(merged[-1][1]) > 1
                and OPS[single.op].family == "act"
                and merged[-1][1][-1] == entry
            ):
                merged[-1][1].append(layers[0])
                continue
            merged.append((entry, layers))
        return merged

    def signature(self, entry: str, layers: list[str]) -> tuple[tuple[Any, ...], list[Any]]:
        """The segment's structure with channel counts as parameter numbers, and their values."""
        local = {entry: -1, **{n: i for i, n in enumerate(layers)}}
        values: list[Any] = []
        parts = []
        for n in layers:
            node = self.g.nodes[n]
            attrs = []
            for k, v in sorted(node.attrs.items()):
                if k in CHANNEL_ATTRS:
                    if v not in values:
                        values.append(v)
                    v = ("param", values.index(v))
                attrs.append((k, repr(v)))
            parts.append((node.op, tuple(attrs), tuple(local[i] for i in node.inputs)))
        return tuple(parts), values

    # ---- text ----
    def body(self, entry_name: str, entry: str, layers: Sequence[str],
             params: dict[str, str] | None = None) -> tuple[list[str], str]:  # fmt: skip
        """Statements and the final expression of layers reading `entry`."""
        inside = set(layers)
        named = {entry: entry_name}
        statements = []
        last = layers[-1]

        def expr(n: str) -> str:
            if n in named:
                return named[n]
            node = self.g.nodes[n]
            args = [expr(i) for i in node.inputs]
            infix = OPS[node.op].infix
            if infix and len(args) == 2:
                return f"{args[0]} {infix} {args[1]}"
            if OPS[node.op].family == "merge":
                return f"{node.op}({', '.join(args)})"
            (arg,) = args
            if "+" in arg or "*" in arg.replace("* ", "*"):  # a sum: wrap before chaining on
                arg = f"({arg})"
            return f"{arg} -> {layer_text(node, params)}"

        count = 0
        for n in layers:
            readers = [r for r in self.readers[n] if r in inside]
            reused = len(readers) > 1 or any(
                OPS[self.g.nodes[r].op].family == "merge" for r in readers
            )
            if n != last and reused:
                count += 1
                text = expr(n)
                name = f"x{count}"
                statements.append(f"{name} = {text}")
                named[n] = name
        return statements, expr(last)

    def network(self) -> str:
        segments = self.segments()
        groups: dict[tuple[Any, ...], int] = {}
        sigs = []
        for entry, layers in segments:
            branchy = len(layers) > 1
            sig, values = self.signature(entry, layers) if branchy else ((), [])
            sigs.append((sig, values))
            if branchy:
                groups[sig] = groups.get(sig, 0) + 1
        lines: list[str] = []
        chain: list[str] = []
        current = self.input_name
        calls: list[tuple[str, int]] = []

        def flush_calls() -> None:
            for call, times in calls:
                chain.append(call if times == 1 else f"{call} * {times}")
            calls.clear()

        for (entry, layers), (sig, values) in zip(segments, sigs, strict=True):
            if sig and groups[sig] >= 2:
                name = self.define_block(entry, layers, sig, values)
                call = f"{name}({', '.join(fmt(v) for v in values)})"
                if calls and calls[-1][0] == call:
                    calls[-1] = (call, calls[-1][1] + 1)
                else:
                    calls.append((call, 1))
                continue
            flush_calls()
            if len(layers) == 1:
                chain.append(layer_text(self.g.nodes[layers[0]]))
                continue
            if chain:
                lines.append(wrap(f"x = {current} -> " + " -> ".join(chain)))
                current, chain = "x", []
            statements, last = self.body(current, entry, layers)
            lines += [wrap(s) for s in statements]
            lines.append(wrap(f"x = {last}"))
            current = "x"
        flush_calls()
        tail = f"{current} -> " + " -> ".join(chain) if chain else current
        lines.append(wrap(f"return {tail}"))
        return "\n".join("    " + line for line in lines)

    input_name = "image"

    def define_block(self, entry: str, layers: list[str], sig: Any, values: list[Any]) -> str:
        if sig in self.blocks:
            return self.blocks[sig][0]
        ops = [OPS[self.g.nodes[n].op] for n in layers]
        # A unit with a residual sum reads as one; other joins (concat) as a module.
        joins = {op.infix for op in ops if op.family == "merge"}
        base = "residual_unit" if "+" in joins else "module" if None in joins else "unit"
        taken = {name for name, _ in self.blocks.values()}
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        names = ["filters"] if len(values) == 1 else [f"c{i + 1}" for i in range(len(values))]
        params = {}
        for n in layers:
            for k2 in CHANNEL_ATTRS:
                if k2 in self.g.nodes[n].attrs:
                    params[f"{n}.{k2}"] = names[values.index(self.g.nodes[n].attrs[k2])]
        statements, last = self.body("input", entry, layers, params)
        text = [f"block {name}({', '.join(names)}) {{"]
        text += ["    " + wrap(s) for s in statements]
        text += ["    " + wrap(f"return {last}"), "}"]
        self.block_text.append("\n".join(text))
        self.blocks[sig] = (name, names)
        return name


def wrap(line: str) -> str:
    """Break a long chain after its arrows, one layer a line."""
    if len(line) <= LINE:
        return line
    return line.replace(" -> ", "\n        -> ")


def identifier(name: str) -> str:
    """A network name the language accepts."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name).strip("_") or "imported"
    return out if out[0].isalpha() else f"net_{out}"


def write_spec(graph: ImportedGraph, source: str = "") -> str:
    """The `.cnn` text of an imported network."""
    writer = Writer(graph)
    shape = graph.nodes[graph.input].attrs["shape"]
    body = writer.network()
    head = f"# Imported from {source} by `cnndsl import`.\n" if source else ""
    if graph.input_layout == "nchw":
        head += "# The ONNX model took NCHW input; this spec takes the same images as NHWC.\n"
    blocks = "\n\n".join(writer.block_text)
    return (
        head
        + (blocks + "\n\n" if blocks else "")
        + f"network {identifier(graph.name)}() {{\n    input image: {fmt(list(shape))}\n"
        + body
        + "\n}\n"
    )


def weights_for(graph: ImportedGraph, layers: Sequence[Any]) -> dict[str, np.ndarray]:
    """Our weights keyed 'path:weight', matching the compiled spec's layers to the import's."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    out: dict[str, np.ndarray] = {}
    for layer in layers:
        if layer.op == "input":
            mapping[layer.path] = graph.input
            continue
        inputs = [mapping.get(i) for i in layer.inputs]
        for node in graph.nodes.values():
            if node.id in used or node.op != layer.op or node.inputs != inputs:
                continue
            shapes = {k: tuple(v.shape) for k, v in node.weights.items()}
            wanted = {k: tuple(s.shape) for k, s in layer.weights.items()}
            if all(shapes.get(k, wanted[k]) == wanted[k] for k in wanted):
                break
        else:
            raise OnnxImportError(f"internal: no imported layer matches '{layer.path}'")
        used.add(node.id)
        mapping[layer.path] = node.id
        for name, array in node.weights.items():
            out[f"{layer.path}:{name}"] = array
    return out


def import_onnx(path: str) -> tuple[str, dict[str, np.ndarray], Any]:
    """(spec text, weights by 'path:weight', the compiled Network) of the ONNX model at `path`."""
    from cnndsl.compiler import compile as compile_spec

    graph = read_onnx(path)
    text = write_spec(graph, os.path.basename(path))
    net = compile_spec(text)
    return text, weights_for(graph, net.layers), net


def from_onnx(path: str | os.PathLike[str]) -> Any:
    """A Model built from the ONNX file at `path`, with its weights (see `import_onnx`)."""
    _, weights, net = import_onnx(os.fspath(path))
    model = net.build(seed=0)
    model.set_weights([weights[k] for k in model.weights])
    return model
