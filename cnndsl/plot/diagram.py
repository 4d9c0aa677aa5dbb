"""Architecture diagrams: a shaped, counted IR Graph -> Graphviz DOT -> SVG/PNG/PDF.

Input: the Graph after the pass pipeline. Output: a `Diagram` holding the
`graphviz.Digraph` and, per drawn node and cluster, the data the HTML report
shows on a click. One node per layer (op with key arguments, name, parameter
count), the output shape on every edge, block instances as labelled clusters;
`depth` collapses instances nested that deep into one node each, and merges a
run of identical consecutive instances into one `residual_unit ×3` node. The
longest path through the network is drawn as a straight spine (Graphviz
`group`), so skip connections and parallel branches bend around it as in the
papers' figures. Frozen layers are dashed and tinted.

Rendering to files lives in cnndsl.plot.rendering.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import graphviz
import networkx as nx

from cnndsl.ir import Graph, Layer, Scope
from cnndsl.ops import OPS
from cnndsl.plot.errors import PlotError
from cnndsl.summary import human, shape_note

FONT = "Helvetica,Arial,sans-serif"

# Fill colours by op family (pastels, so black text stays readable in print).
FAMILY_COLOURS = {
    "input": "#eeeeee",
    "conv": "#cfe2f3",
    "pool": "#fce5cd",
    "dense": "#d9d2e9",
    "norm": "#f3f3f3",
    "act": "#d9ead3",
    "merge": "#fff2cc",
    "shape": "#ffffff",
    "block": "#f4cccc",
}
FROZEN_FILL = "#dbe4ee"
CLUSTER_FILLS = ("#f8f8f8", "#efefef")


def family(op: str) -> str:
    """The colour family of an op (`Op.family`): conv, pool, dense, norm, act, merge, shape..."""
    return OPS[op].family if op in OPS else "shape"


def shape_text(shape: Sequence[int] | None) -> str:
    """A tensor shape as drawn on edges: '28×28×64', or '10' for a vector."""
    if shape is None:
        return "?"
    return "×".join(str(d) for d in shape)


@dataclass
class Node:
    """One drawn node: a layer, a collapsed block instance (or a run of them), or an output."""

    name: str  # Graphviz node name (a layer or block path; unique)
    dom_id: str  # the id of its <g> element in the SVG
    kind: str  # "layer", "block" or "output"
    layers: list[Layer] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)  # collapsed instances, in order
    parents: tuple[Scope, ...] = ()  # the clusters it is drawn in, outermost first


@dataclass(frozen=True)
class Edge:
    """One drawn edge: the tensor `source` (a layer path) flowing between two nodes."""

    tail: str
    head: str
    source: str
    shape: tuple[int, ...] | None


@dataclass
class Diagram:
    """What `draw()` returns: the DOT graph plus the per-element data for the report."""

    dot: graphviz.Digraph
    nodes: list[Node]
    edges: list[Edge]
    clusters: dict[str, tuple[str, Scope, list[Layer]]]  # scope path -> (dom id, scope, layers)
    data: dict[str, dict[str, Any]]  # dom id -> details shown on hover/click

    @property
    def source(self) -> str:
        """The DOT text."""
        return str(self.dot.source)


def draw(
    g: Graph, depth: int | None = None, rankdir: str = "TB", title: str | None = None
) -> Diagram:
    """Lay out g as a Graphviz digraph; blocks nested `depth` deep or more become one node."""
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise PlotError(f"rankdir must be TB, LR, BT or RL, not '{rankdir}'")
    if depth is not None and depth < 1:
        raise PlotError("--depth must be at least 1")
    nodes, owner = _nodes(g, depth)
    by_name = {node.name: node for node in nodes}
    edges = _edges(g, nodes, owner)
    spine = _spine(nodes, edges)
    on_spine = {n for pair in spine for n in pair}
    clusters = _clusters(g, nodes)
    data = _data(g, nodes, clusters)

    dot = graphviz.Digraph(name=_dot_id(g.meta.get("name", "network")))
    dot.attr(
        rankdir=rankdir,
        fontname=FONT,
        newrank="true",
        compound="true",  # lets an edge stop at a cluster's border (lhead)
        nodesep="0.3",
        ranksep="0.35",
        labelloc="t",
        fontsize="16",
    )
    if title is None:
        title = str(g.meta.get("name", "network"))
    if title:
        dot.attr(label=f"<<b>{html.escape(title)}</b>>")
    dot.attr(
        "node",
        fontname=FONT,
        fontsize="11",
        shape="box",
        style="rounded,filled",
        penwidth="1.0",
        margin="0.12,0.04",
        height="0.3",
    )
    dot.attr(
        "edge", fontname=FONT, fontsize="9", fontcolor="#555555", color="#555555", arrowsize="0.6"
    )

    # Nodes go into their innermost cluster; clusters nest as the block instances do.
    bodies: dict[str, list[tuple[str, dict[str, str]]]] = {"": []}
    for node in nodes:
        where = node.parents[-1].path if node.parents else ""
        attrs = _node_attrs(g, node, node.name in on_spine)
        bodies.setdefault(where, []).append((node.name, attrs))
    # A cluster's parent is the scope around it in the layers' scope tuples.
    parent_of: dict[str, str] = {}
    for node in nodes:
        for i, scope in enumerate(node.parents):
            parent_of.setdefault(scope.path, node.parents[i - 1].path if i else "")
    children: dict[str, list[str]] = {}
    for path in clusters:
        children.setdefault(parent_of[path], []).append(path)
        bodies.setdefault(path, [])

    def fill(target: graphviz.Digraph, where: str, level: int) -> None:
        for name, attrs in bodies.get(where, []):
            target.node(name, **attrs)
        for child in children.get(where, []):
            dom_id, scope, layers = clusters[child]
            sub = graphviz.Digraph(name=f"cluster_{dom_id}")
            sub.attr(**_cluster_attrs(scope, layers, dom_id, level))
            fill(sub, child, level + 1)
            target.subgraph(sub)

    fill(dot, "", 0)
    fan_in: dict[str, int] = {}
    for e in edges:
        fan_in[e.head] = fan_in.get(e.head, 0) + 1
    entered = _entries(nodes, clusters)
    for e in edges:
        attrs = {"label": f" {shape_text(e.shape)} "}
        # NOTE: an edge into a block's first node would run through the block's label
        # at the top of its cluster; it stops at the cluster's border instead.
        block = entered.get(e.head)
        tail_scopes = {s.path for s in by_name[e.tail].parents} if e.tail in by_name else set()
        if block is not None and block[0] not in tail_scopes:
            attrs["lhead"] = f"cluster_{block[1]}"
        # NOTE: spine edges pull 100 times harder than the rest, so the main path stays a
        # straight column and skip connections / side branches bend around it. Off the
        # spine, an edge into a join pulls less than the others, so a short branch hangs
        # from its fork (the inception module's 1×1 conv sits beside the reductions).
        if (e.tail, e.head) in spine:
            attrs["weight"] = "100"
        elif fan_in[e.head] > 1:
            attrs["weight"] = "1"
        else:
            attrs["weight"] = "2"
        dot.edge(e.tail, e.head, **attrs)
    return Diagram(dot, nodes, edges, clusters, data)


# ---- structure ----


def _nodes(g: Graph, depth: int | None) -> tuple[list[Node], dict[str, str]]:
    """Drawn nodes in topological order and the node name that shows each layer."""
    nodes: list[Node] = []
    owner: dict[str, str] = {}
    by_name: dict[str, Node] = {}
    for layer in g:
        scopes = layer.scopes
        if depth is not None and len(scopes) >= depth:
            top = scopes[depth - 1]
            node = by_name.get(top.path)
            if node is None:
                node = Node(top.path, "", "block", scopes=[top], parents=scopes[: depth - 1])
                by_name[top.path] = node
                nodes.append(node)
            node.layers.append(layer)
            owner[layer.path] = top.path
        else:
            node = Node(layer.path, "", "layer", [layer], parents=scopes)
            by_name[layer.path] = node
            nodes.append(node)
            owner[layer.path] = layer.path
    nodes = _merge_runs(g, nodes, owner)
    for i, node in enumerate(nodes):
        node.dom_id = f"node-{i}"
    for i, path in enumerate(g.outputs):
        nodes.append(Node(f"__output_{i}", f"output-{i}", "output", [g[path]]))
    return nodes, owner


def _signature(g: Graph, node: Node) -> tuple[Any, ...]:
    """What two collapsed instances must share to be drawn as one `block ×n` node."""
    index = {layer.path: i for i, layer in enumerate(node.layers)}
    return tuple(
        (
            layer.op,
            tuple(sorted((k, repr(v)) for k, v in layer.attrs.items())),
            layer.shape,
            layer.trainable,
            tuple(index.get(i, g[i].shape) for i in layer.inputs),
        )
        for layer in node.layers
    )


def _merge_runs(g: Graph, nodes: list[Node], owner: dict[str, str]) -> list[Node]:
    """Merge chains of identical collapsed instances of one block into one node."""
    out: list[Node] = []
    for node in nodes:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.kind == "block"
            and node.kind == "block"
            and prev.scopes[-1].block == node.scopes[0].block
            and prev.parents == node.parents
            and _chained(g, prev, node, owner)
            and _signature(g, Node("", "", "block", _last_instance(prev))) == _signature(g, node)
        ):
            prev.layers.extend(node.layers)
            prev.scopes.extend(node.scopes)
            for layer in node.layers:
                owner[layer.path] = prev.name
            continue
        out.append(node)
    return out


def _last_instance(node: Node) -> list[Layer]:
    last = node.scopes[-1].path
    return [layer for layer in node.layers if any(s.path == last for s in layer.scopes)]


def _chained(g: Graph, a: Node, b: Node, owner: dict[str, str]) -> bool:
    """True when b reads only a, and only b reads a: nothing enters or leaves between them."""
    a_paths = {layer.path for layer in a.layers}
    b_paths = {layer.path for layer in b.layers}
    for layer in b.layers:
        for src in layer.inputs:
            if src not in b_paths and src not in a_paths:
                return False
    outputs = set(g.outputs)
    for path in a_paths:
        if path in outputs:
            return False
        for user in g.consumers(path):
            if user not in a_paths and user not in b_paths:
                return False
    return any(src in a_paths for layer in b.layers for src in layer.inputs)


def _edges(g: Graph, nodes: list[Node], owner: dict[str, str]) -> list[Edge]:
    """One edge per (input, layer) pair; inside a collapsed node, one per tensor entering it."""
    edges: list[Edge] = []
    seen: set[tuple[Any, ...]] = set()
    for layer in g:
        head = owner[layer.path]
        for i, src in enumerate(layer.inputs):
            tail = owner[src]
            if tail == head:
                continue
            key: tuple[Any, ...] = (src, head) if head != layer.path else (src, head, i)
            if key in seen:
                continue
            seen.add(key)
            edges.append(Edge(tail, head, src, g[src].shape))
    for node in nodes:
        if node.kind == "output":
            src = node.layers[0].path
            edges.append(Edge(owner[src], node.name, src, node.layers[0].shape))
    return edges


def _entries(
    nodes: list[Node], clusters: dict[str, tuple[str, Scope, list[Layer]]]
) -> dict[str, tuple[str, str]]:
    """Node name -> (scope path, dom id) of the outermost cluster that the node opens.

    A block's first drawn node (in topological order) is where its input arrives.
    """
    first: dict[str, str] = {}
    for node in nodes:
        for scope in node.parents:
            first.setdefault(scope.path, node.name)
    out: dict[str, tuple[str, str]] = {}
    for path, name in first.items():
        if name not in out and path in clusters:
            out[name] = (path, clusters[path][0])
    return out


def _spine(nodes: list[Node], edges: list[Edge]) -> set[tuple[str, str]]:
    """Edges of the longest input-to-output path: drawn as one straight column."""
    dag = nx.DiGraph()
    dag.add_nodes_from(n.name for n in nodes)
    dag.add_edges_from((e.tail, e.head) for e in edges)
    path = nx.dag_longest_path(dag) if len(dag) else []
    return set(zip(path, path[1:], strict=False))


def _clusters(g: Graph, nodes: list[Node]) -> dict[str, tuple[str, Scope, list[Layer]]]:
    """Each block instance drawn as a cluster: path -> (dom id, scope, its layers)."""
    shown: dict[str, Scope] = {}
    for node in nodes:
        for scope in node.parents:
            shown.setdefault(scope.path, scope)
    members: dict[str, list[Layer]] = {p: [] for p in shown}
    for layer in g:
        for scope in layer.scopes:
            if scope.path in members:
                members[scope.path].append(layer)
    return {
        path: (f"cluster-{i}", scope, members[path])
        for i, (path, scope) in enumerate(shown.items())
    }


# ---- appearance ----


def _node_attrs(g: Graph, node: Node, on_spine: bool) -> dict[str, str]:
    attrs: dict[str, str] = {"id": node.dom_id}
    if on_spine:
        attrs["group"] = "spine"
    if node.kind == "output":
        attrs.update(
            label="output", shape="plaintext", style="", fontcolor="#555555", fontsize="10"
        )
        return attrs
    if node.kind == "block":
        scopes = node.scopes
        params = sum(layer.params for layer in node.layers)
        frozen = all(not layer.trainable for layer in node.layers) and params > 0
        head = scopes[0].block + (f" ×{len(scopes)}" if len(scopes) > 1 else "")
        where = scopes[0].path.rsplit("/", 1)[-1]
        if len(scopes) > 1:
            where += " … " + scopes[-1].path.rsplit("/", 1)[-1]
        lines = [f"<b>{html.escape(head)}</b>", _small(f"{where} · {len(node.layers)} layers")]
        lines.append(_small(f"{params:,} params" + (" · frozen" if frozen else "")))
        attrs.update(
            label=_html(lines),
            shape="box3d",
            style="filled",
            margin="0.15,0.08",
            fillcolor=FROZEN_FILL if frozen else FAMILY_COLOURS["block"],
        )
        if frozen:
            attrs["style"] = "filled,dashed"
        return attrs
    layer = node.layers[0]
    frozen = not layer.trainable and layer.params > 0
    text = layer.label + shape_note(g, layer)
    info = layer.name + (f" · {layer.params:,} params" if layer.params else "")
    lines = [f"<b>{html.escape(text)}</b>", _small(info)]
    if frozen:
        lines.append('<font point-size="9" color="#1c4587"><i>frozen</i></font>')
    fam = family(layer.op)
    attrs.update(label=_html(lines), fillcolor=FROZEN_FILL if frozen else FAMILY_COLOURS[fam])
    if fam == "merge":
        attrs["shape"] = "ellipse"
        attrs["style"] = "filled"
    if frozen:
        attrs["style"] = attrs.get("style", "rounded,filled") + ",dashed"
        attrs["penwidth"] = "1.4"
        attrs["color"] = "#1c4587"
    return attrs


def _cluster_attrs(scope: Scope, layers: list[Layer], dom_id: str, level: int) -> dict[str, str]:
    params = sum(layer.params for layer in layers)
    frozen = params > 0 and all(not layer.trainable for layer in layers)
    name = scope.path.rsplit("/", 1)[-1]
    detail = name + (f" · {scope.repeat}" if scope.repeat else "")
    detail += f" · {params:,} params" if params else ""
    lines = [f"<b>{html.escape(scope.block)}</b>", _small(detail)]
    if frozen:
        lines.append('<font point-size="9" color="#1c4587"><i>frozen</i></font>')
    rows = "".join(f'<tr><td align="left">{line}</td></tr>' for line in lines)
    table = f'<table border="0" cellborder="0" cellspacing="0" cellpadding="0">{rows}</table>'
    return {
        "id": dom_id,
        "label": f"<{table}>",
        "labeljust": "l",
        "style": "rounded,filled" + (",dashed" if frozen else ""),
        "fillcolor": FROZEN_FILL if frozen else CLUSTER_FILLS[level % 2],
        "color": "#1c4587" if frozen else "#999999",
        "fontname": FONT,
        "fontsize": "11",
        "margin": "10",
    }


def _small(text: str) -> str:
    return f'<font point-size="9" color="#555555">{html.escape(text)}</font>'


def _html(lines: list[str]) -> str:
    return "<" + "<br/>".join(lines) + ">"


def _dot_id(name: str) -> str:
    return re.sub(r"\W", "_", name) or "network"


# ---- data for the HTML report ----


def _data(
    g: Graph, nodes: list[Node], clusters: dict[str, tuple[str, Scope, list[Layer]]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        if node.kind == "layer":
            layer = node.layers[0]
            out[node.dom_id] = {
                "kind": "layer",
                "path": layer.path,
                "op": layer.op,
                "label": layer.label,
                "attrs": {k: _jsonable(v) for k, v in layer.attrs.items()},
                "inputs": [{"path": i, "shape": _list(g[i].shape)} for i in layer.inputs],
                "shape": _list(layer.shape),
                "params": layer.params,
                "trainable_params": layer.trainable_params,
                "non_trainable_params": layer.non_trainable_params,
                "weights": {k: list(w.shape) for k, w in layer.weights.items()},
                "macs": layer.macs,
                "receptive_field": _list(layer.receptive),
                "jump": _list(layer.jump),
                "trainable": layer.trainable,
                "blocks": [s.path for s in layer.scopes],
                "span": str(layer.span) if layer.span else None,
            }
        elif node.kind == "block":
            out[node.dom_id] = _block_data(g, node.scopes, node.layers)
    for dom_id, scope, layers in clusters.values():
        out[dom_id] = _block_data(g, [scope], layers)
    return out


def _block_data(g: Graph, scopes: list[Scope], layers: list[Layer]) -> dict[str, Any]:
    paths = {layer.path for layer in layers}
    entering = sorted({i for layer in layers for i in layer.inputs if i not in paths})
    last = layers[-1]
    span = scopes[0].span
    return {
        "kind": "block",
        "path": scopes[0].path if len(scopes) == 1 else f"{scopes[0].path} … {scopes[-1].path}",
        "block": scopes[0].block,
        "instances": [s.path for s in scopes],
        "repeat": scopes[0].repeat,
        "label": scopes[0].block + (f" ×{len(scopes)}" if len(scopes) > 1 else ""),
        "layers": len(layers),
        "inputs": [{"path": i, "shape": _list(g[i].shape)} for i in entering],
        "shape": _list(last.shape),
        "params": sum(layer.params for layer in layers),
        "trainable_params": sum(layer.trainable_params for layer in layers),
        "non_trainable_params": sum(layer.non_trainable_params for layer in layers),
        "macs": sum(layer.macs for layer in layers),
        "macs_text": human(sum(layer.macs for layer in layers)),
        "receptive_field": _list(last.receptive),
        "trainable": all(layer.trainable for layer in layers),
        "span": str(span) if span else None,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _list(v: Sequence[int] | None) -> list[int] | None:
    return list(v) if v is not None else None
