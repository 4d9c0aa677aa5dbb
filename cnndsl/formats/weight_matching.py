"""Matching another framework's layers to ours, by the graph.

Input: a `WeightSource` (the file's weighted layers, in its framework's
order) and a built Model. Output: a `Matching`: for each of our weighted
layers the source layer that fills it, and what is left over on either side.

The frameworks' names are not our layer paths, and the order they list
layers in differs at branches (Keras lists layers by depth from the output,
so a ResNet's shortcut conv comes between the main branch's convs; a
PyTorch model lists its `downsample` last). So layers are matched by what
does not depend on naming:

1. shapes: a source layer can fill one of ours only if its arrays, converted
   to our layouts, have exactly our shapes (which also tells conv, dense,
   batchnorm and separable layers apart);
2. the graph: a source layer is matched, in the file's order, to one of our
   layers whose own inputs are already matched ("ready"); when the file
   records its graph (`.keras`, Keras model files), to the one whose inputs
   were matched to the source layer's inputs;
3. for ties between ready layers of equal shapes on parallel branches, the
   framework's convention: for Keras files, the order Keras itself would
   list our graph in (depth from the output, then first visit from the
   output); for PyTorch, the branch that continues the last matched layer.

A mapping (our weight key or layer path -> the file's name) settles what
matching cannot; mapped layers take no part in the automatic matching.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cnndsl.formats.weight_sources import SourceLayer, Target, WeightSource
from cnndsl.runtime.executor import ModelError

if TYPE_CHECKING:
    from cnndsl.runtime.lower import Plan
    from cnndsl.training.model import Model


@dataclass
class Matching:
    """Our weight key -> (origin in the file, array in our layout); and what did not fit."""

    arrays: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    layers: dict[str, SourceLayer] = field(default_factory=dict)  # our path -> source layer
    missing: list[Target] = field(default_factory=list)  # ours, with nothing in the file
    unused: list[SourceLayer] = field(default_factory=list)  # the file's, fitting nothing
    unused_weights: list[str] = field(default_factory=list)  # single weights left by a mapping
    missing_keys: list[str] = field(default_factory=list)  # single weights a mapping left out


# ---- our side ----


def targets_of(model: Model) -> list[Target]:
    """Our layers with weights, in plan order, with their graph neighbours and Keras rank."""
    plan = model.plan
    weighted = [s for s in plan.steps if s.weights]
    rank = {i: r for r, i in enumerate(i for i in keras_order(plan) if plan.steps[i].weights)}
    feeds: list[tuple[str, ...]] = []
    for step in plan.steps:
        found: dict[str, None] = {}
        for j in step.inputs:
            source = plan.steps[j]
            for p in (source.path,) if source.weights else feeds[j]:
                found[p] = None
        feeds.append(tuple(found))
    return [
        Target(
            path=step.path,
            op=step.op,
            names=tuple(step.weights),
            shapes=tuple(model.specs[k].shape for k in step.weight_keys),
            preds=feeds[step.output],
            index=n,
            keras_rank=rank[step.output],
            flattened=_flattened_input(plan, step.output),
        )
        for n, step in enumerate(weighted)
    ]


def keras_order(plan: Plan) -> list[int]:
    """Step indices in the order Keras lists a Functional model's layers.

    Keras (`map_graph`) sorts layers by depth, the longest path to an output,
    deepest first; equal depths in the order a depth-first walk from the
    outputs, inputs in argument order, first reaches them.
    """
    depth = [0] * len(plan.steps)
    for i in reversed(range(len(plan.steps))):
        readers = plan.consumers[i]
        depth[i] = max((depth[c] + 1 for c in readers), default=0)
    first_visit: dict[int, int] = {}
    stack = list(reversed(plan.outputs))
    while stack:
        i = stack.pop()
        if i in first_visit:
            continue
        first_visit[i] = len(first_visit)
        stack += reversed(plan.steps[i].inputs)
    unreached = len(plan.steps)
    return sorted(range(len(plan.steps)), key=lambda i: (-depth[i], first_visit.get(i, unreached)))


def _flattened_input(plan: Plan, index: int) -> tuple[int, ...] | None:
    """The [H, W, C] map a layer reads through a flatten (and shape-keeping layers), if any."""
    step = plan.steps[index]
    if len(step.inputs) != 1:
        return None
    j = step.inputs[0]
    shape = plan.steps[j].shape
    if shape is None or len(shape) != 1:
        return None
    while len(plan.steps[j].inputs) == 1:
        before = plan.steps[plan.steps[j].inputs[0]].shape
        if before is None:
            return None
        if len(before) == 3 and before[0] * before[1] * before[2] == shape[0]:
            return before
        if before != shape:
            return None
        j = plan.steps[j].inputs[0]
    return None


# ---- matching ----


def match(
    source: WeightSource, targets: list[Target], mapping: dict[str, str] | None = None
) -> Matching:
    """Which source layer fills each of our layers; see the module docstring."""
    result = Matching()
    pending = list(source.layers)
    free = {t.path: t for t in targets}
    if mapping:
        _apply_mapping(source, targets, mapping, result, pending, free)
    by_shapes: dict[tuple[tuple[int, ...], ...], list[Target]] = defaultdict(list)
    for t in targets:
        if t.path in free:
            by_shapes[t.shapes].append(t)
    source_name = {path: layer.name for path, layer in result.layers.items()}
    matched_at: dict[str, int] = {p: -1 for p in result.layers}
    per_class = source.order == "per_class"

    def candidates(layer: SourceLayer) -> list[Target]:
        found = {
            t.path: t
            for sig in layer.signatures()
            for t in by_shapes.get(sig, ())
            if t.path in free
        }
        return list(found.values())

    while pending:
        chosen: tuple[SourceLayer, list[Target]] | None = None
        fallback: tuple[SourceLayer, list[Target]] | None = None
        for layer in list(pending):
            fits = candidates(layer)
            if not fits:
                pending.remove(layer)  # fits none of ours now, nor later: ours only get taken
                result.unused.append(layer)
                continue
            # NOTE: with only each class's order known, readiness would let a layer take a
            # branch that became ready early; the Keras rank alone orders such files.
            ready = [t for t in fits if per_class or all(p in matched_at for p in t.preds)]
            if ready:
                chosen = (layer, ready)
                break
            fallback = fallback or (layer, fits)
        # NOTE: nothing ready means the file's graph differs from ours; shapes still decide.
        chosen = chosen or fallback
        if chosen is None:
            break
        layer, fits = chosen
        target = _pick(source.convention, layer, fits, source_name, matched_at)
        pending.remove(layer)
        del free[target.path]
        matched_at[target.path] = len(matched_at)
        source_name[target.path] = layer.name
        _assign(result, target, layer)
    result.missing = [t for t in targets if t.path in free]
    return result


def _assign(result: Matching, target: Target, layer: SourceLayer) -> None:
    result.layers[target.path] = layer
    for name, (origin, array) in zip(target.names, layer.arrays(target), strict=True):
        result.arrays[f"{target.path}:{name}"] = (origin, array)


def _pick(
    convention: str,
    layer: SourceLayer,
    fits: list[Target],
    source_name: dict[str, str],
    matched_at: dict[str, int],
) -> Target:
    """The one of our layers (all of the right shapes) that this source layer fills."""
    if len(fits) > 1 and layer.preds is not None:
        wanted = set(layer.preds)
        same = [t for t in fits if {source_name.get(p) for p in t.preds} == wanted]
        fits = same or fits
    if convention == "keras":
        return min(fits, key=lambda t: t.keras_rank)
    # PyTorch: the branch that continues the most recently matched layer.
    return min(fits, key=lambda t: (-max((matched_at[p] for p in t.preds), default=-2), t.index))


def _apply_mapping(
    source: WeightSource,
    targets: list[Target],
    mapping: dict[str, str],
    result: Matching,
    pending: list[SourceLayer],
    free: dict[str, Target],
) -> None:
    """Assign what the mapping names; those layers leave the automatic matching."""
    by_path = {t.path: t for t in targets}
    layer_named = {layer.name: layer for layer in source.layers}
    weight_named = {n: (layer, a) for layer in source.layers for n, a in layer.weights}
    used: dict[str, SourceLayer] = {}
    for ours, theirs in mapping.items():
        path, _, weight = ours.partition(":")
        target = by_path.get(path)
        if target is None or (weight and weight not in target.names):
            keys = [f"{t.path}:{n}" for t in targets for n in t.names] + list(by_path)
            raise ModelError(
                f"mapping: '{ours}' is not a weight or layer of this network{_near(ours, keys)}"
            )
        if not weight:
            layer = layer_named.get(theirs)
            if layer is None:
                raise ModelError(
                    f"mapping: '{ours}' -> '{theirs}': the file has no layer '{theirs}'"
                    f"{_near(theirs, list(layer_named))}"
                )
            if target.shapes not in layer.signatures():
                raise ModelError(
                    f"mapping: {layer.describe()} cannot fill {target.describe()}; map a layer"
                    " of the same shapes"
                )
            _assign(result, target, layer)
            used[layer.name] = layer
        else:
            if theirs not in weight_named:
                raise ModelError(
                    f"mapping: '{ours}' -> '{theirs}': the file has no weight '{theirs}'"
                    f"{_near(theirs, list(weight_named))}"
                )
            layer, raw = weight_named[theirs]
            result.arrays[ours] = (theirs, _mapped_weight(ours, theirs, layer, raw, target))
            result.layers.setdefault(path, layer)
            used[layer.name] = layer
        free.pop(path, None)
    taken = {_file_name(origin) for origin, _ in result.arrays.values()}
    for layer in used.values():
        pending.remove(layer)
        result.unused_weights += [n for n in layer.names if n not in taken]
    for path in {k.partition(":")[0] for k in mapping}:
        target = by_path[path]
        result.missing_keys += [
            f"{path}:{n}" for n in target.names if f"{path}:{n}" not in result.arrays
        ]


def _mapped_weight(
    ours: str, theirs: str, layer: SourceLayer, raw: np.ndarray, target: Target
) -> np.ndarray:
    """One mapped weight: converted as its layer would be for ours, else as it is."""
    name = ours.partition(":")[2]
    shape = target.shapes[target.names.index(name)]
    if target.shapes in layer.signatures():
        for origin, array in layer.arrays(target):
            if _file_name(origin) == theirs and array.shape == shape:
                return array
    if raw.shape == shape:
        return raw
    raise ModelError(
        f"mapping: '{theirs}' has shape {list(raw.shape)} in the file; '{ours}' needs {list(shape)}"
    )


# ---- explaining what did not fit ----

SHOWN = 3  # misfits named per side


def misfits(source: WeightSource, targets: list[Target], found: Matching) -> list[str]:
    """Lines naming the first layers that do not fit, on both sides, and a likely cause."""
    lines = []
    if found.unused:
        lines.append(
            "in the file, fitting no layer of the network: "
            + _first([layer.describe() for layer in found.unused])
        )
    if found.missing:
        lines.append(
            "in the network, with no weights in the file: "
            + _first([t.describe() for t in found.missing])
        )
    if found.unused_weights:
        lines.append("in the file, left by the mapping: " + _first(found.unused_weights))
    if found.missing_keys:
        lines.append("in the network, left out by the mapping: " + _first(found.missing_keys))
    hint = _cause(source, targets, found)
    return lines + ([hint] if hint else [])


def _first(items: list[str]) -> str:
    more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _cause(source: WeightSource, targets: list[Target], found: Matching) -> str:
    """A classifier for another class count, a file without its top, or one with a top."""
    last = max((t.index for t in targets), default=-1)
    top = [t for t in found.missing if t.index == last]
    for t in top:
        for layer in found.unused:
            for sig in layer.signatures():
                if (
                    len(sig) == len(t.shapes)
                    and sig != t.shapes
                    and all(a[:-1] == b[:-1] for a, b in zip(sig, t.shapes, strict=True))
                ):
                    return (
                        f"the file's {layer.name} has {sig[0][-1]} outputs where this network's"
                        f" {t.path} has {t.shapes[0][-1]}: a top for {sig[0][-1]} classes?"
                        f" compile the network with them (--set classes={sig[0][-1]}), or load"
                        " the rest with --load-partial and train a new top"
                    )
    matched = [t.index for t in targets if t.path in found.layers]
    if (
        found.missing
        and not found.unused
        and matched
        and min(t.index for t in found.missing) > max(matched)
    ):
        return (
            "the file has nothing for the network's last layers: saved without its top"
            " (Keras' include_top=False)? compile the network without it (zoo models: --set"
            " include_top=false), or load the rest with --load-partial and train the top"
        )
    position = {id(layer): i for i, layer in enumerate(source.layers)}
    used = [position[id(layer)] for layer in found.layers.values()]
    if (
        found.unused
        and not found.missing
        and source.order == "layers"
        and used
        and min(position[id(layer)] for layer in found.unused) > max(used)
    ):
        return (
            "the file has layers past this network's end: saved with its top (classifier)?"
            " compile the network with it (zoo models: --set include_top=true), or load with"
            " --load-partial"
        )
    return ""


def _file_name(origin: str) -> str:
    """The file's name in an origin 'conv1.weight (OIHW -> HWIO)'."""
    return origin.split(" (", 1)[0]


def _near(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


__all__ = ["Matching", "keras_order", "match", "misfits", "targets_of"]
