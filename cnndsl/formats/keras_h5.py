"""Keras weight files: legacy HDF5, Keras 3 `.weights.h5` and `.keras` archives.

Input: a path whose content is HDF5 or a `.keras` zip archive. Output: a
`WeightSource` of the file's layers with weights, in Keras' layer order
(`model.layers`: by depth from the output), each array already in our
layouts (Keras' own: cnndsl keeps Keras layouts and weight order).

- Legacy HDF5 (what `keras.applications` downloads, `save_weights` in
  Keras 2, `model.save("m.h5")`): a `layer_names` attribute listing the
  layers in order (at the top, or in a `model_weights` group), a group per
  layer with a `weight_names` attribute. A nested model's group holds the
  weights of all its layers; they are split by layer name.
- Keras 3 `.weights.h5`: `layers/<class>_<n>/vars/0, 1, ...`, numbered per
  class in layer order; the layer's name, where Keras records it, is the
  `name` attribute of `vars`.
- `.keras`: a zip archive with `config.json` (the model's graph) and
  `model.weights.h5` (the Keras 3 layout). The graph gives each layer the
  layers feeding it, which settles branches of equal shapes exactly.

Everything is read with h5py and json: nothing is unpickled. A damaged
file raises ModelError naming the file and what to do.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import Any

import numpy as np

from cnndsl.formats.npz import ZIP_DAMAGE
from cnndsl.formats.weight_sources import (
    Signature,
    SourceLayer,
    Target,
    WeightSource,
    natural_key,
)
from cnndsl.runtime.executor import ModelError

# Keras' weight names in the order its layers create them (our order too).
WEIGHT_ORDER = {
    "kernel": 0,
    "depthwise_kernel": 0,
    "pointwise_kernel": 1,
    "bias": 2,
    "gamma": 0,
    "beta": 1,
    "moving_mean": 2,
    "moving_variance": 3,
}
NESTED_MODELS = ("Functional", "Sequential", "Model")
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# What h5py raises for a damaged file: its errors are OSError, KeyError, ValueError, ...
H5_DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError)
# Keras stores arrays uncompressed; a file claiming far more than it holds is refused
# before anything is allocated.
CLAIM_FACTOR = 4
CLAIM_FLOOR = 64 * 1024 * 1024


class Budget:
    """Bytes of arrays a file may still claim, to refuse a file that claims terabytes."""

    def __init__(self, path: str, file_bytes: int) -> None:
        self.path = path
        self.file_bytes = file_bytes
        self.left = max(CLAIM_FACTOR * file_bytes, CLAIM_FLOOR)

    def read(self, dataset: Any) -> np.ndarray:
        """The dataset's array, if the file's size can hold what it claims."""
        claimed = int(dataset.size) * int(dataset.dtype.itemsize)
        if claimed > self.left:
            raise ModelError(
                f"{self.path}: truncated or corrupt Keras weights: its arrays claim more than"
                f" {CLAIM_FACTOR} times the file's {self.file_bytes:,} bytes; download or save"
                " the file again"
            )
        self.left -= claimed
        return np.asarray(dataset[()])


class KerasLayer(SourceLayer):
    """A Keras layer: its arrays are in our layouts already, in our order."""

    def signatures(self) -> list[Signature]:
        return [tuple(tuple(int(d) for d in a.shape) for _, a in self.weights)]

    def arrays(self, target: Target) -> list[tuple[str, np.ndarray]]:
        return list(self.weights)


def read_keras(path: str, kind: str) -> WeightSource:
    """The layers of a Keras file; kind is 'hdf5' or 'keras' (archive), from its content."""
    h5py = _h5py(path)
    if kind == "keras":
        config, raw = _archive_parts(path)
        try:
            with h5py.File(io.BytesIO(raw), "r") as f:
                layers = _keras3_layers(Budget(path, len(raw)), f, config)
        except (*H5_DAMAGE, RecursionError) as e:
            raise _damaged(path, "the archive's model.weights.h5", e) from None
        order = "layers" if config and not _has_nested(config) else "per_class"
        return WeightSource(path, ".keras archive", layers, "keras", order)
    try:
        budget = Budget(path, os.path.getsize(path))
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or _chunked(f.attrs, "layer_names"):
                fmt, layers = "Keras HDF5 weights", _legacy_layers(budget, f, None)
            elif "model_weights" in f:
                graph = _json_attr(path, f.attrs.get("model_config"))
                fmt, layers = "Keras HDF5 model", _legacy_layers(budget, f["model_weights"], graph)
            elif "layers" in f or "vars" in f:
                keras3 = WeightSource(
                    path, "Keras .weights.h5", _keras3_layers(budget, f, None), "keras"
                )
                keras3.order = "per_class"  # numbered per class; no file-wide order
                return keras3
            else:
                raise ModelError(
                    f"{path}: an HDF5 file, but not Keras weights (no layer_names attribute,"
                    " model_weights or layers group); pass a file saved by Keras"
                    " (model.save_weights, model.save) or keras.applications"
                )
    except (*H5_DAMAGE, RecursionError) as e:
        raise _damaged(path, "the HDF5 file", e) from None
    return WeightSource(path, fmt, layers, "keras")


def _h5py(path: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise ModelError(
            f"{path}: a Keras HDF5 file; reading it needs h5py: pip install h5py"
        ) from None
    return h5py


def _damaged(path: str, what: str, e: BaseException) -> ModelError:
    return ModelError(
        f"{path}: truncated or corrupt Keras weights: cannot read {what} ({e}); download or"
        " save the file again"
    )


# ---- legacy HDF5 ----


def _chunked(attrs: Any, name: str) -> list[str]:
    """A list attribute, which Keras splits into name0, name1, ... when it is large."""
    if name in attrs:
        return [_text(v) for v in attrs[name]]
    out: list[str] = []
    i = 0
    while f"{name}{i}" in attrs:
        out += [_text(v) for v in attrs[f"{name}{i}"]]
        i += 1
    return out


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _legacy_layers(budget: Budget, group: Any, config: dict[str, Any] | None) -> list[SourceLayer]:
    """Layers from `layer_names`/`weight_names`, in the file's order."""
    graph = _graph(config) if config else None
    layers: list[SourceLayer] = []
    nested = False
    for lname in _chunked(group.attrs, "layer_names"):
        g = group[lname]
        # A nested model's group holds all its layers' weights: one bucket per layer name.
        buckets: dict[str, list[tuple[str, np.ndarray]]] = {}
        for wname in _chunked(g.attrs, "weight_names"):
            owner = wname.rsplit("/", 1)[0] if "/" in wname else lname
            buckets.setdefault(owner, []).append((wname, budget.read(g[wname])))
        nested = nested or len(buckets) > 1
        for owner, weights in buckets.items():
            name = lname if len(buckets) == 1 else owner
            layers.append(KerasLayer(name, _kind_of(weights), _in_keras_order(weights)))
    return _with_graph(layers, graph, nested)


def _in_keras_order(weights: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Sort by Keras' creation order when every name is a known one; else keep the file's."""
    shorts = [_short(n) for n, _ in weights]
    if all(s in WEIGHT_ORDER for s in shorts):
        return [
            w
            for _, w in sorted(zip(shorts, weights, strict=True), key=lambda p: WEIGHT_ORDER[p[0]])
        ]
    return weights


def _short(name: str) -> str:
    return re.sub(r"(_\d+)?:\d+$", "", name.rsplit("/", 1)[-1])


def _kind_of(weights: list[tuple[str, np.ndarray]]) -> str:
    """The Keras class a layer's weight names and shapes tell (for messages)."""
    names = {_short(n) for n, _ in weights}
    if "moving_mean" in names:
        return "BatchNormalization"
    if "pointwise_kernel" in names:
        return "SeparableConv2D"
    if "depthwise_kernel" in names:
        return "DepthwiseConv2D"
    kernel = [a for n, a in weights if _short(n) == "kernel"]
    if kernel and kernel[0].ndim == 4:
        return "Conv2D"
    if kernel and kernel[0].ndim == 2:
        return "Dense"
    return "layer"


# ---- Keras 3 layout ----


def _keras3_layers(budget: Budget, f: Any, config: dict[str, Any] | None) -> list[SourceLayer]:
    """Layers of `layers/<class>_<n>/vars/<i>`, in the config's order when there is one."""
    found = list(_walk_keras3(budget, f, ""))
    if config is None or _has_nested(config):
        # Without a graph only each class's own order is known: numbered per class.
        found.sort(key=lambda item: natural_key(item[0]))
        return [layer for _, layer in found]
    by_group = {group: layer for group, layer in found}
    by_name = {layer.name: layer for _, layer in found}
    layers: list[SourceLayer] = []
    counters: dict[str, int] = {}
    for entry in _config_layers(config):
        cls = _snake(str(entry.get("class_name", "")))
        n = counters.get(cls, 0)
        counters[cls] = n + 1
        group = cls if n == 0 else f"{cls}_{n}"
        name = _layer_name(entry)
        layer = by_name.get(name) or by_group.get(group)
        if layer is not None and layer not in layers:
            layer.name, layer.kind = name, str(entry.get("class_name", layer.kind))
            layers.append(layer)
    layers += [layer for _, layer in found if layer not in layers]  # not in the config
    return _with_graph(layers, _graph(config), nested=False)


def _walk_keras3(budget: Budget, group: Any, prefix: str) -> Any:
    """(group path, layer) for every layer group with variables, nested models included."""
    if "layers" not in group:
        return
    for key in group["layers"]:
        g = group["layers"][key]
        where = f"{prefix}{key}"
        if "vars" in g and len(g["vars"]):
            variables = g["vars"]
            name = _text(variables.attrs.get("name", key))
            count = len(variables)
            weights = [(f"{name}/vars/{i}", budget.read(variables[str(i)])) for i in range(count)]
            kind = re.sub(r"_\d+$", "", key)
            yield where, KerasLayer(name, kind, weights)
        yield from _walk_keras3(budget, g, f"{where}/")


def _snake(name: str) -> str:
    """Keras' to_snake_case: 'BatchNormalization' -> 'batch_normalization', 'Conv2D' -> 'conv2d'."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# ---- .keras archives and model configs ----


def _archive_parts(path: str) -> tuple[dict[str, Any], bytes]:
    try:
        with zipfile.ZipFile(path) as z:
            if z.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise ModelError(f"{path}: config.json is larger than {MAX_CONFIG_BYTES:,} bytes")
            config = _json_attr(path, z.read("config.json"))
            claimed = z.getinfo("model.weights.h5").file_size
            if claimed > max(CLAIM_FACTOR * os.path.getsize(path), CLAIM_FLOOR):
                raise ModelError(
                    f"{path}: truncated or corrupt Keras weights: model.weights.h5 claims"
                    f" {claimed:,} bytes, more than the archive can hold; download or save the"
                    " file again"
                )
            raw = z.read("model.weights.h5")
    except ZIP_DAMAGE as e:
        raise _damaged(path, "the .keras archive", e) from None
    return config or {}, raw


def _json_attr(path: str, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(_text(raw) if isinstance(raw, bytes | np.bytes_) else raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise _damaged(path, "the model's configuration", e) from None
    return value if isinstance(value, dict) else None


def _config_layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    inner = config.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else []
    return [entry for entry in layers if isinstance(entry, dict)]


def _layer_name(entry: dict[str, Any]) -> str:
    conf = entry.get("config", {})
    return str(entry.get("name") or (conf.get("name") if isinstance(conf, dict) else "") or "")


def _has_nested(config: dict[str, Any]) -> bool:
    return any(entry.get("class_name") in NESTED_MODELS for entry in _config_layers(config))


def _graph(config: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """Layer name -> names of the layers feeding it, from a Functional or Sequential config."""
    if config is None or _has_nested(config):
        return None
    layers = _config_layers(config)
    if config.get("class_name") == "Sequential":
        names = [_layer_name(e) for e in layers]
        return {n: names[i - 1 : i] for i, n in enumerate(names)}
    return {_layer_name(e): _history(e.get("inbound_nodes", [])) for e in layers}


def _history(obj: Any) -> list[str]:
    """Names of the layers an inbound_nodes entry reads (Keras 3 and Keras 2 forms)."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            return [str(obj["keras_history"][0])]
        return [n for v in obj.values() for n in _history(v)]
    if isinstance(obj, list):
        if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
            return [obj[0]]  # Keras 2: [name, node_index, tensor_index, kwargs]
        return [n for v in obj for n in _history(v)]
    return []


def _with_graph(
    layers: list[SourceLayer], graph: dict[str, list[str]] | None, nested: bool
) -> list[SourceLayer]:
    """Give each layer the nearest weighted layers feeding it, where the graph is known."""
    if graph is None or nested:
        return layers
    weighted = {layer.name for layer in layers}
    if not weighted <= graph.keys():
        return layers  # the config names other layers: keep the order, drop the graph
    feeds: dict[str, set[str]] = {}
    for name in _topological(graph):
        feeds[name] = set()
        for p in graph.get(name, []):
            feeds[name] |= {p} if p in weighted else feeds.get(p, set())
    for layer in layers:
        layer.preds = tuple(sorted(feeds[layer.name]))
    return layers


def _topological(graph: dict[str, list[str]]) -> list[str]:
    """Every name, each after the names feeding it (iterative: graphs are deep)."""
    seen: set[str] = set()
    out: list[str] = []
    for root in graph:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(graph.get(root, [])))]
        while stack:
            node, feeding = stack[-1]
            for p in feeding:
                if p not in seen:
                    seen.add(p)
                    stack.append((p, iter(graph.get(p, []))))
                    break
            else:
                stack.pop()
                out.append(node)
    return out


__all__ = ["KerasLayer", "read_keras"]
