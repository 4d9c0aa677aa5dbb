"""The HTML report: one self-contained page with the diagram, the summary and the curves.

Input: a shaped, counted Graph (and optionally a training history). Output:
HTML text that needs no network access: the Graphviz diagram as inline SVG,
per-node data as JSON in a `<script type="application/json">`, a small
script that shows a node's path, arguments, shapes, parameters, MACs and
receptive field on hover or click, the summary table, and the training
curves as an inline PNG. The SVG element ids (`node-3`, `cluster-1`) are the
keys of the JSON. `#node=PATH` in the URL selects a node on load (it
dispatches a real click on it), so links to a layer can be shared.
Raises PlotError without Graphviz's `dot`.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import PurePath
from typing import Any

from cnndsl.ir import Graph
from cnndsl.passes import estimate_memory, totals
from cnndsl.plot.diagram import draw
from cnndsl.plot.rendering import pipe
from cnndsl.summary import human, rows

CSS = """
:root { --fg: #222; --muted: #666; --line: #ddd; --accent: #cc0000; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial,
       sans-serif; color: var(--fg); background: #fff; }
header { padding: 14px 20px 8px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .facts { color: var(--muted); }
header .facts b { color: var(--fg); font-weight: 600; }
main { display: grid; grid-template-columns: minmax(0, 1fr) 360px; gap: 0;
       align-items: start; }
#diagram { overflow: auto; max-height: calc(100vh - 90px); padding: 10px;
           border-right: 1px solid var(--line); }
#diagram svg { display: block; margin: 0 auto; }
#diagram.fit svg { width: 100%; height: auto; }
#diagram g.node, #diagram g.cluster { cursor: pointer; }
#diagram g.node:hover > polygon, #diagram g.node:hover > path,
#diagram g.node:hover > ellipse, #diagram g.cluster:hover > path,
#diagram g.cluster:hover > polygon { stroke-width: 2.5; }
#diagram g.selected > polygon, #diagram g.selected > path,
#diagram g.selected > ellipse { stroke: var(--accent); stroke-width: 3; }
aside { position: sticky; top: 0; padding: 12px 16px; max-height: 100vh; overflow: auto; }
aside h2 { font-size: 15px; margin: 0 0 6px; word-break: break-all; }
aside .hint { color: var(--muted); }
aside table { border-collapse: collapse; width: 100%; }
aside th { text-align: left; vertical-align: top; color: var(--muted); font-weight: normal;
           padding: 2px 8px 2px 0; white-space: nowrap; }
aside td { padding: 2px 0; word-break: break-word; font-variant-numeric: tabular-nums; }
.tools { margin-bottom: 8px; }
.tools button { font: inherit; padding: 2px 10px; }
section { padding: 12px 20px; border-top: 1px solid var(--line); }
section h2 { font-size: 16px; margin: 0 0 8px; }
table.summary { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 2px 10px; border-bottom: 1px solid #eee;
                                     text-align: left; white-space: nowrap; }
table.summary td.num, table.summary th.num { text-align: right; }
table.summary tr.block td { font-weight: 600; background: #fafafa; }
table.summary tr[data-path] { cursor: pointer; }
table.summary tr[data-path]:hover td { background: #f0f6ff; }
table.totals td { padding: 1px 10px 1px 0; }
img.curves { max-width: 100%; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("cnndsl-data").textContent);
  var data = payload.nodes, owner = payload.owner;
  var panel = document.getElementById("details");
  var selected = null;

  function num(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function shape(s) { return s ? "[" + s.join(", ") + "]" : "?"; }
  function value(v) {
    if (Array.isArray(v)) return "(" + v.map(value).join(", ") + ")";
    if (v === true) return "true";
    if (v === false) return "false";
    return v === null ? "none" : String(v);
  }
  function rowsOf(d) {
    var out = [["path", d.path]];
    if (d.kind === "layer") {
      out.push(["op", d.op]);
      var args = Object.keys(d.attrs).map(function (k) { return k + "=" + value(d.attrs[k]); });
      out.push(["arguments", args.join(", ") || "none"]);
    } else {
      out.push(["block", d.block + (d.repeat ? " (" + d.repeat + ")" : "")]);
      if (d.instances.length > 1) out.push(["instances", d.instances.join(", ")]);
      out.push(["layers", num(d.layers)]);
    }
    out.push(["inputs", d.inputs.map(function (i) { return i.path + " " + shape(i.shape); })
      .join("; ") || "none"]);
    out.push(["output shape", shape(d.shape)]);
    out.push(["params", num(d.params) + (d.non_trainable_params ?
      " (" + num(d.trainable_params) + " trainable, " + num(d.non_trainable_params) +
      " non-trainable)" : "")]);
    if (d.weights && Object.keys(d.weights).length) {
      out.push(["weights", Object.keys(d.weights).map(function (k) {
        return k + " " + shape(d.weights[k]); }).join("; ")]);
    }
    out.push(["MACs", num(d.macs)]);
    out.push(["receptive field", d.receptive_field ?
      d.receptive_field.join("×") + " pixels" : "n/a"]);
    if (d.jump) out.push(["jump", d.jump.join("×") + " pixels"]);
    out.push(["trainable", d.trainable ? "yes" : "no (frozen)"]);
    if (d.blocks && d.blocks.length) out.push(["in blocks", d.blocks.join(" › ")]);
    if (d.span) out.push(["defined at", d.span]);
    return out;
  }
  function show(id) {
    panel.textContent = "";
    var d = id && data[id];
    if (!d) {
      var p = document.createElement("p");
      p.className = "hint";
      p.textContent = "Hover over or click a layer or block to see its details.";
      panel.appendChild(p);
      return;
    }
    var h = document.createElement("h2");
    h.textContent = d.label;
    panel.appendChild(h);
    var table = document.createElement("table");
    rowsOf(d).forEach(function (r) {
      var tr = document.createElement("tr");
      var th = document.createElement("th"), td = document.createElement("td");
      th.textContent = r[0];
      td.textContent = r[1];
      td.className = "v-" + r[0].replace(/\W+/g, "-");
      tr.appendChild(th);
      tr.appendChild(td);
      table.appendChild(tr);
    });
    panel.appendChild(table);
  }
  function select(id) {
    if (selected) {
      var old = document.getElementById(selected);
      if (old) old.classList.remove("selected");
    }
    selected = id;
    var el = document.getElementById(id);
    if (el) el.classList.add("selected");
    panel.setAttribute("data-selected", data[id] ? data[id].path : "");
    show(id);
    try { history.replaceState(null, "", "#node=" + encodeURIComponent(data[id].path)); }
    catch (e) { /* some file:// setups refuse; the selection still works */ }
  }
  function click(id) {
    var el = document.getElementById(id);
    if (el) el.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
  }
  Object.keys(data).forEach(function (id) {
    var el = document.getElementById(id);
    if (!el) return;
    el.addEventListener("click", function (ev) { ev.stopPropagation(); select(id); });
    el.addEventListener("mouseenter", function () { show(id); });
    el.addEventListener("mouseleave", function () { show(selected); });
  });
  document.querySelectorAll("table.summary tr[data-path]").forEach(function (tr) {
    tr.addEventListener("click", function () {
      var id = owner[tr.getAttribute("data-path")];
      if (id) {
        click(id);
        var el = document.getElementById(id);
        if (el && el.scrollIntoView) el.scrollIntoView({block: "center", inline: "center"});
      }
    });
  });
  var fit = document.getElementById("fit");
  fit.addEventListener("click", function () {
    var pane = document.getElementById("diagram");
    pane.classList.toggle("fit");
    fit.textContent = pane.classList.contains("fit") ? "Actual size" : "Fit width";
  });
  function fromHash() {
    var m = /^#node=(.*)$/.exec(location.hash);
    if (!m) return;
    var path = decodeURIComponent(m[1]);
    var id = owner[path];
    if (!id) {
      Object.keys(data).forEach(function (k) { if (data[k].path === path) id = k; });
    }
    if (id && id !== selected) click(id);
  }
  window.addEventListener("hashchange", fromHash);
  show(null);
  fromHash();
  document.body.setAttribute("data-ready", "1");
})();
"""


def inline_svg(svg: str) -> str:
    """Graphviz SVG made fit to inline in HTML: no XML prolog, doctype or comments."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r"<!DOCTYPE[^>]*>", "", svg, flags=re.S)
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    return svg.strip()


def _json_for_script(value: Any) -> str:
    # NOTE: "<" only occurs inside JSON strings, where \u003c means the same; this keeps
    # "</script>" and "<!--" in a layer name from ending the script element early.
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c")


def _shape(shape: Any) -> str:
    return "?" if shape is None else "[" + ", ".join(map(str, shape)) + "]"


def summary_html(g: Graph, depth: int | None = None) -> str:
    """The summary table (as `cnndsl compile` prints it) as an HTML table."""
    out = [
        '<table class="summary"><thead><tr><th>Layer</th><th>Op</th><th>Output shape</th>'
        '<th class="num">Params</th><th class="num">MACs</th><th class="num">RF</th></tr>'
        "</thead><tbody>"
    ]
    for r in rows(g, depth):
        name = r.path.rsplit("/", 1)[-1] if r.level else r.path
        what = r.what + (" (collapsed)" if r.collapsed else " total" if r.is_block else "")
        rf = (
            ""
            if r.receptive is None
            else (
                str(r.receptive[0])
                if r.receptive[0] == r.receptive[1]
                else f"{r.receptive[0]}×{r.receptive[1]}"
            )
        )
        cls = ' class="block"' if r.is_block else ""
        out.append(
            f'<tr{cls} data-path="{html.escape(r.path)}">'
            f'<td style="padding-left:{10 + 16 * r.level}px">{html.escape(name)}'
            f"{'/' if r.is_block else ''}</td><td>{html.escape(what)}</td>"
            f'<td>{_shape(r.shape)}</td><td class="num">{r.params:,}</td>'
            f'<td class="num">{r.macs:,}</td><td class="num">{rf}</td></tr>'
        )
    out.append("</tbody></table>")
    t = totals(g)
    mem = estimate_memory(g, 1)
    facts = [
        ("Total params", f"{t['params']:,} ({human(t['params'] * 4, 'B')})"),
        ("Trainable params", f"{t['trainable_params']:,}"),
        ("Non-trainable params", f"{t['non_trainable_params']:,}"),
        ("MACs per image", f"{t['macs']:,} ({human(t['macs'])})"),
        (
            "Memory (batch 1, float32)",
            f"inference {human(mem.inference_peak, 'B')}, training {human(mem.training, 'B')}",
        ),
    ]
    out.append(
        '<table class="totals">'
        + "".join(f"<tr><td>{k}</td><td><b>{html.escape(v)}</b></td></tr>" for k, v in facts)
        + "</table>"
    )
    return "\n".join(out)


def _file_name_only(span: str | None) -> str | None:
    """'/home/me/specs/net.cnn:3:5' as 'net.cnn:3:5': a shared page keeps its folders private."""
    return PurePath(span).name if span else span


def report_html(
    g: Graph,
    depth: int | None = None,
    rankdir: str = "TB",
    curves_png: bytes | None = None,
    title: str | None = None,
) -> str:
    """The whole self-contained page as text; PlotError without Graphviz's `dot`."""
    d = draw(g, depth=depth, rankdir=rankdir, title="")
    svg = inline_svg(pipe(d, "svg").decode("utf-8"))
    owner: dict[str, str] = {}
    for node in d.nodes:
        if node.kind == "output":
            continue
        for layer in node.layers:
            owner[layer.path] = node.dom_id
        for scope in node.scopes:
            owner[scope.path] = node.dom_id
    for path, (dom_id, _, _) in d.clusters.items():
        owner[path] = dom_id
    nodes = {
        key: {**node, "span": _file_name_only(node.get("span"))} for key, node in d.data.items()
    }
    payload = {"network": g.meta.get("name"), "nodes": nodes, "owner": owner}
    name = str(title or g.meta.get("name", "network"))
    t = totals(g)
    ins = [_shape(g[p].shape) for p in g.inputs]
    outs = [_shape(g[p].shape) for p in g.outputs]
    facts = (
        f"<b>{len(g)}</b> layers · input {', '.join(ins)} → output {', '.join(outs)} ·"
        f" <b>{t['params']:,}</b> params ({t['trainable_params']:,} trainable) ·"
        f" <b>{human(t['macs'])}</b> MACs per image"
    )
    if g.meta.get("file"):
        # The file's name only: a report is shared, and a full path tells where it was made.
        facts += f" · from <code>{html.escape(PurePath(str(g.meta['file'])).name)}</code>"
    curves = ""
    if curves_png is not None:
        uri = "data:image/png;base64," + base64.b64encode(curves_png).decode("ascii")
        curves = (
            '<section id="curves"><h2>Training</h2>'
            f'<img class="curves" alt="training curves" src="{uri}"></section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(name)} · cnndsl</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header><h1>{html.escape(name)}</h1><div class="facts">{facts}</div></header>
<main>
<div id="diagram">{svg}</div>
<aside><div class="tools"><button id="fit" type="button">Fit width</button></div>
<div id="details" data-selected=""></div></aside>
</main>
<section id="summary"><h2>Summary</h2>
{summary_html(g, depth)}
</section>
{curves}
<script type="application/json" id="cnndsl-data">{_json_for_script(payload)}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""
