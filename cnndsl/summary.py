"""Reports of a shaped, counted graph: the summary table and its JSON form.

Reads the IR after the pass pipeline. `render_table` gives the Keras-like
text table (layer path, op with key arguments, output shape, params, MACs,
receptive field), with a subtotal row per block instance and the channel sum
at each concat; `depth` collapses block instances nested deeper. `to_json`
gives the stable machine-readable form (schema "cnndsl.summary/1",
documented in docs/json.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnndsl.ir import Graph, Layer, Scope
from cnndsl.ops import OPS
from cnndsl.passes import estimate_memory, totals

SCHEMA = "cnndsl.summary/1"


@dataclass(frozen=True)
class Row:
    """One line of the summary: a layer, or a block instance (collapsed or a header)."""

    path: str
    what: str
    shape: tuple[int, ...] | None
    params: int
    macs: int
    receptive: tuple[int, int] | None
    level: int
    is_block: bool = False
    collapsed: bool = False
    trainable: bool = True


def rows(g: Graph, depth: int | None = None) -> list[Row]:
    """Summary rows in topological order; blocks deeper than `depth` become one row."""
    layers = [layer for layer in g]
    members: dict[str, list[Layer]] = {}
    scopes: dict[str, Scope] = {}
    for layer in layers:
        for s in layer.scopes:
            members.setdefault(s.path, []).append(layer)
            scopes[s.path] = s
    out: list[Row] = []
    opened: set[str] = set()
    for layer in layers:
        hidden = False
        for level, s in enumerate(layer.scopes):
            if depth is not None and level >= depth:
                hidden = True
                break
            if s.path in opened:
                if depth is not None and level == depth - 1:
                    hidden = True
                    break
                continue
            opened.add(s.path)
            inner = members[s.path]
            collapsed = depth is not None and level == depth - 1
            what = f"{s.block}" + (f" ({s.repeat})" if s.repeat else "")
            out.append(
                Row(
                    s.path,
                    what,
                    inner[-1].shape,
                    sum(m.params for m in inner),
                    sum(m.macs for m in inner),
                    inner[-1].receptive,
                    level,
                    True,
                    collapsed,
                    all(m.trainable for m in inner),
                )
            )
            if collapsed:
                hidden = True
                break
        if hidden:
            continue
        out.append(
            Row(
                layer.path,
                describe(g, layer),
                layer.shape,
                layer.params,
                layer.macs,
                layer.receptive,
                len(layer.scopes),
                trainable=layer.trainable,
            )
        )
    return out


def describe(g: Graph, layer: Layer) -> str:
    """The op column: label plus, for a channel concat, the channel sum."""
    text = layer.label + shape_note(g, layer)
    if not layer.trainable and layer.params:
        text += " (frozen)"
    return text


def shape_note(g: Graph, layer: Layer) -> str:
    """What the shapes add to a layer's label (`Op.shape_note`), e.g. ' 64+32=96' for a concat."""
    xs = [g[i].shape for i in layer.inputs]
    if layer.shape is None or any(x is None for x in xs):
        return ""
    return OPS[layer.op].shape_note(layer.attrs, xs, layer.shape)  # type: ignore[arg-type]


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def _rf(rf: tuple[int, int] | None) -> str:
    if rf is None:
        return ""
    return str(rf[0]) if rf[0] == rf[1] else f"{rf[0]}×{rf[1]}"


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'; bytes with unit='B' -> '1.18 MiB'."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or suffix == "TiB":
                return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.2f} {suffix}"
            n /= 1024
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}" if suffix == "" else f"{n:.2f} {suffix}"
        n /= 1000
    return str(n)


def render_table(
    g: Graph, depth: int | None = None, batch: int = 1, failed_at: str | None = None
) -> str:
    """The summary as text: a table and the totals under it."""
    table = [("Layer", "Op", "Output shape", "Params", "MACs", "RF")]
    for r in rows(g, depth):
        indent = "  " * r.level
        path = r.path.rsplit("/", 1)[-1] if r.level else r.path
        if r.is_block:
            name = f"{indent}{path}/" + ("" if r.collapsed else "")
            what = f"{r.what} {'(collapsed)' if r.collapsed else 'total'}"
        else:
            name = f"{indent}{path}"
            what = r.what
        table.append(
            (name, what, _shape(r.shape), f"{r.params:,}", f"{r.macs:,}", _rf(r.receptive))
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {3, 4, 5}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "─" * len(fmt(table[0]))
    name = g.meta.get("name", "network")
    lines = [f'Network "{name}"', rule, fmt(table[0]), rule]
    lines.extend(fmt(row) for row in table[1:])
    if failed_at:
        lines.append(f"  ✗ compilation stopped here: {failed_at}")
    lines.append(rule)
    t = totals(g)
    mem = estimate_memory(g, batch)
    lines += [
        f"Total params: {t['params']:,} ({human(t['params'] * 4, 'B')})",
        f"Trainable params: {t['trainable_params']:,}",
        f"Non-trainable params: {t['non_trainable_params']:,}",
        f"MACs per image: {t['macs']:,} ({human(t['macs'])})",
        f"Memory (batch {batch}, float32): inference {human(mem.inference_peak, 'B')},"
        f" training {human(mem.training, 'B')}",
    ]
    return "\n".join(lines)


def to_json(g: Graph, depth: int | None = None, batch: int = 1) -> dict[str, Any]:
    """The summary as plain data (schema cnndsl.summary/1)."""
    layers = []
    for layer in g:
        layers.append(
            {
                "path": layer.path,
                "op": layer.op,
                "label": layer.label,
                "attrs": {k: _jsonable(v) for k, v in layer.attrs.items()},
                "inputs": list(layer.inputs),
                "shape": list(layer.shape) if layer.shape else None,
                "params": layer.params,
                "trainable_params": layer.trainable_params,
                "non_trainable_params": layer.non_trainable_params,
                "weights": {k: list(w.shape) for k, w in layer.weights.items()},
                "macs": layer.macs,
                "receptive_field": list(layer.receptive) if layer.receptive else None,
                "jump": list(layer.jump) if layer.jump else None,
                "trainable": layer.trainable,
                "blocks": [{"path": s.path, "block": s.block} for s in layer.scopes],
                "span": _span(layer.span),
            }
        )
    edges = [
        {"from": src, "to": layer.path, "index": i}
        for layer in g
        for i, src in enumerate(layer.inputs)
    ]
    return {
        "schema": SCHEMA,
        "network": g.meta.get("name"),
        "file": g.meta.get("file"),
        "parameters": {k: _jsonable(v) for k, v in g.meta.get("params", {}).items()},
        "inputs": g.inputs,
        "outputs": g.outputs,
        "layers": layers,
        "edges": edges,
        "summary": [
            {
                "path": r.path,
                "what": r.what,
                "shape": list(r.shape) if r.shape else None,
                "params": r.params,
                "macs": r.macs,
                "level": r.level,
                "block": r.is_block,
            }
            for r in rows(g, depth)
        ],
        "totals": totals(g),
        "memory": estimate_memory(g, batch).as_dict(),
        "train": {k: _jsonable(v) for k, v in g.meta.get("train", {}).items()},
    }


def _span(span: Any) -> dict[str, Any] | None:
    if span is None:
        return None
    return {
        "file": span.file,
        "line": span.line,
        "col": span.col,
        "end_line": span.end_line,
        "end_col": span.end_col,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
