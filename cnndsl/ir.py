"""The graph IR: one node per layer, wrapping a networkx DiGraph.

Elaboration builds it; passes (cnndsl.passes) return annotated copies;
lowering (cnndsl.runtime.lower) turns it into an executor plan. Node ids are layer
paths (`stage2/residual_unit_1/conv_2`). Each node holds one frozen `Layer`
under the attribute "layer"; argument order lives in `Layer.inputs` (edges
are for traversal only, so `concat(x, x)` and `x + x` keep both operands).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from cnndsl.ops.registry import OPS, Attrs, Shape, WeightSpec
from cnndsl.ops.window import Window
from cnndsl.source import Span


@dataclass(frozen=True)
class Scope:
    """One block instance a layer sits in: its path, the block's name, the call's span."""

    path: str
    block: str
    span: Span | None = None
    repeat: str = ""  # e.g. "repeat 2 of 3" for LAYER * n


@dataclass(frozen=True)
class Layer:
    """One node of the IR. Elaboration fills the first group; passes fill the rest."""

    path: str
    op: str
    attrs: Attrs
    inputs: tuple[str, ...] = ()
    span: Span | None = None
    trainable: bool = True
    scopes: tuple[Scope, ...] = ()
    # Filled by passes:
    shape: Shape | None = None
    weights: dict[str, WeightSpec] = field(default_factory=dict, compare=False, hash=False)
    macs: int = 0
    receptive: tuple[int, int] | None = None  # receptive field (h, w) in input pixels
    jump: tuple[int, int] | None = None  # distance in input pixels between outputs
    window: Window | None = None

    @property
    def params(self) -> int:
        return sum(w.size for w in self.weights.values())

    @property
    def trainable_params(self) -> int:
        if not self.trainable:
            return 0
        return sum(w.size for w in self.weights.values() if w.trainable)

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    @property
    def label(self) -> str:
        """Op with its key arguments, e.g. 'conv 3×3, 64'."""
        return OPS[self.op].describe(self.attrs)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Graph:
    """A network: layers in a DiGraph plus metadata (name, params, train section)."""

    def __init__(self, g: nx.DiGraph | None = None) -> None:
        self.g = g if g is not None else nx.DiGraph()
        self._order: list[str] | None = None

    # ---- building ----
    def add(self, layer: Layer) -> None:
        """Add a layer; its inputs must already be present."""
        assert layer.path not in self.g, f"duplicate layer path {layer.path}"
        self.g.add_node(layer.path, layer=layer)
        for src in layer.inputs:
            assert src in self.g, f"{layer.path}: unknown input {src}"
            self.g.add_edge(src, layer.path)
        self._order = None

    def replace(self, layer: Layer) -> None:
        """Swap in a new version of an existing layer (same inputs)."""
        self.g.nodes[layer.path]["layer"] = layer

    def copy(self) -> Graph:
        """An independent copy; layers are immutable, so sharing them is safe."""
        return Graph(self.g.copy())

    # ---- reading ----
    @property
    def meta(self) -> dict[str, Any]:
        """Network-level data: name, params, inputs, outputs, train, budgets, file."""
        return self.g.graph

    def __getitem__(self, path: str) -> Layer:
        return self.g.nodes[path]["layer"]

    def __contains__(self, path: object) -> bool:
        return path in self.g

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def __iter__(self) -> Iterator[Layer]:
        """Layers in a deterministic topological order (insertion order breaks ties)."""
        if self._order is None:
            index = {n: i for i, n in enumerate(self.g.nodes)}
            self._order = list(nx.lexicographical_topological_sort(self.g, key=index.__getitem__))
        return (self[p] for p in self._order)

    @property
    def inputs(self) -> list[str]:
        return list(self.meta.get("inputs", [l.path for l in self if l.op == "input"]))

    @property
    def outputs(self) -> list[str]:
        return list(self.meta.get("outputs", [p for p in self.g if self.g.out_degree(p) == 0]))

    def consumers(self, path: str) -> list[str]:
        """Layers that read `path`."""
        return list(self.g.successors(path))


def map_layers(g: Graph, fn: Any) -> Graph:
    """A copy of g with every layer replaced by fn(layer, input_layers), in topo order."""
    out = g.copy()
    for layer in g:
        ins = [out[i] for i in layer.inputs]
        out.replace(fn(layer, ins))
    return out


def shapes_of(layers: list[Layer]) -> list[Shape]:
    """The output shapes of layers that infer_shapes (or elaboration) has shaped."""
    out = []
    for layer in layers:
        assert layer.shape is not None, f"{layer.path} has no shape yet"
        out.append(layer.shape)
    return out


def verify(g: Graph) -> None:
    """Check invariants: acyclic, inputs exist and match edges, ops registered."""
    assert nx.is_directed_acyclic_graph(g.g), "graph has a cycle"
    for path in g.g:
        layer = g[path]
        assert layer.path == path, f"node {path} holds layer {layer.path}"
        assert layer.op in OPS, f"{path}: unregistered op {layer.op}"
        for src in layer.inputs:
            assert src in g.g and g.g.has_edge(src, path), f"{path}: input {src} not wired"
        assert set(g.g.predecessors(path)) == set(layer.inputs), f"{path}: stray edge"


def dump(g: Graph) -> str:
    """One FX-style line per layer: `%path : [shape] = op[attrs](%in)  # file:line params=N`."""
    lines = []
    for layer in g:
        shape = list(layer.shape) if layer.shape is not None else "?"
        attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in layer.attrs.items())
        ins = ", ".join(f"%{i}" for i in layer.inputs)
        where = f"{layer.span}" if layer.span else ""
        lines.append(
            f"%{layer.path} : {shape} = {layer.op}[{attrs}]({ins})   # {where}"
            f" params={layer.params}"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


__all__ = ["Graph", "Layer", "Scope", "dump", "map_layers", "replace", "shapes_of", "verify"]
