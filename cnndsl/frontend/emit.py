"""Elaboration, layer application: configured ops and blocks -> checked IR layers.

The bottom of the elaboration stage: cnndsl.frontend.elaborate walks statements and
cnndsl.frontend.expressions computes values, and both come here to add layers. A call
such as `conv(32, 3, padding=same)` becomes a `LayerRef` (positional
arguments named, `defaults` merged under the explicit ones, unknown arguments
refused); applying it to tensors, `n` times for `LAYER * n`, emits one
`ir.Layer` per op application, its output shape inferred at once and checked
against the size limits. Applying a block runs the block's body, which is
statement elaboration, so the Elaborator supplies that step.

Separate from the AST walk because the rules for naming, binding and shaping
a layer are the same whichever statement or expression asked for it; here
they work on values (LayerRef, Tensor) and the graph only.

Raises CnnError for unknown ops or blocks, bad or repeated arguments, a wrong
number of inputs, shape mismatches, empty axes, and layers too large to allocate.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from cnndsl.frontend import syntax as ast
from cnndsl.frontend.imports import FileScope
from cnndsl.frontend.values import LayerRef, Symbol, Tensor, plain, valid_label
from cnndsl.ir import Graph, Layer, Scope
from cnndsl.ops import OPS
from cnndsl.ops.attrs import Signature, show
from cnndsl.ops.errors import AttrError, ShapeError
from cnndsl.source import CnnError, Span, error, near_names

MAX_ELEMENTS = 2**34  # per tensor or per layer's weights: 64 GiB of float32
LAYER_OPTIONS = ("name", "trainable")  # arguments every layer call takes besides its own


def refused(exc: AttrError, span: Span | None) -> CnnError:
    """The diagnostic for a refused argument, under the code the refusal carries."""
    return error(exc.code, exc.message, span, *exc.notes)


# NOTE: Frame lives in the bottom module of the stage because statements,
# expressions and layers all read it; defined higher up, it would need a cycle.
@dataclass
class Frame:
    """One running body: bindings, defaults in force, naming counters, where it sits."""

    file: FileScope
    prefix: str  # path prefix, "" at network level, "stage2/residual_unit_1/" inside
    scopes: tuple[Scope, ...]
    trainable: bool
    block_input: Tensor | None = None
    bindings: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    in_train: bool = False

    def fresh(self, base: str) -> str:
        """The next numbered name for `base` in this body: conv_1, conv_2, ..."""
        self.counters[base] = self.counters.get(base, 0) + 1
        return f"{base}_{self.counters[base]}"


class LayerBuilder(ABC):
    """Turns layer calls into LayerRefs and applies them to tensors, adding layers to a graph."""

    def __init__(self, max_layers: int) -> None:
        self.graph = Graph()
        self.max_layers = max_layers

    # A block's body is statements, which only the Elaborator (cnndsl.frontend.elaborate)
    # can run; declaring the step here keeps this module free of that import.
    @abstractmethod
    def _apply_block(
        self,
        ref: LayerRef,
        inputs: list[Tensor],
        frame: Frame,
        span: Span,
        label: str | None,
        repeat: str,
    ) -> Tensor:
        """Run a block's body on one input tensor and return the tensor it returns."""

    # ---- binding a call's arguments ----
    def _signature(self, name: str, frame: Frame, span: Span) -> Signature:
        """How a call of op or block `name` names its arguments, name= and trainable= included."""
        if name in OPS:
            return OPS[name].signature(*LAYER_OPTIONS)
        if name in frame.file.names:
            definition, _ = frame.file.names[name]
            if definition.kind == "block":
                params = tuple(p.name for p in definition.params)
                return Signature(name, (*params, *LAYER_OPTIONS), params)
            raise error("E018", f"'{name}' is a network; only ops and blocks are layers", span)
        raise error(
            "E010",
            f"unknown op or block '{name}'" + near_names(name, [*OPS, *frame.file.names]),
            span,
        )

    def _make_ref(
        self,
        frame: Frame,
        name: str,
        positional: tuple[Any, ...],
        span: Span,
        kwargs: dict[str, Any] | None = None,
        args: tuple[ast.Arg, ...] = (),
    ) -> LayerRef:
        """Configure an op or block: positional to named, then defaults under explicit.

        `args` are the written arguments that `positional` and `kwargs` came
        from (tensor operands left out), for pointing at the one at fault.
        """
        signature = self._signature(name, frame, span)
        positional_spans = [a.span for a in args if a.name is None]
        arg_spans = [*zip(signature.positional, positional_spans, strict=False)]
        arg_spans += [(a.name, a.span) for a in args if a.name is not None]
        try:
            explicit = signature.bind(positional, kwargs)
        except AttrError as exc:
            # A name given twice points at its keyword, which comes last.
            raise refused(exc, dict(arg_spans).get(exc.attr or "", span)) from None
        label = explicit.pop("name", None)
        trainable = explicit.pop("trainable", True)
        if label is not None and not (isinstance(label, str) and valid_label(label)):
            raise error(
                "E019",
                f"name= must be a string of letters, digits, '_' or '-', not {show(label)}",
                span,
            )
        if not isinstance(trainable, bool):
            raise error("E019", f"trainable= must be true or false, not {show(trainable)}", span)
        # `defaults` statements were bound against the same signature when they ran.
        merged = {**frame.defaults.get(name, {}), **explicit}
        for option in LAYER_OPTIONS:
            merged.pop(option, None)
        kind = "op" if name in OPS else "block"
        return LayerRef(
            kind, name, tuple(merged.items()), span, 1, label, trainable, tuple(arg_spans)
        )

    # ---- applying layers ----
    def _apply(self, ref: LayerRef, inputs: list[Tensor], frame: Frame, span: Span) -> Tensor:
        if ref.repeat > 1 and len(inputs) != 1:
            raise error("E039", f"a repeated layer takes one input, got {len(inputs)}", span)
        out: Tensor | None = None
        for i in range(ref.repeat):
            label = ref.label
            if label is not None and ref.repeat > 1:
                label = f"{label}_{i + 1}"
            repeat = f"repeat {i + 1} of {ref.repeat}" if ref.repeat > 1 else ""
            args = inputs if out is None else [out]
            if ref.kind == "op":
                out = self._emit_checked(
                    ref.name,
                    dict(ref.kwargs),
                    args,
                    label,
                    frame,
                    span,
                    trainable=ref.trainable,
                    ref=ref,
                )
            else:
                out = self._apply_block(ref, args, frame, span, label, repeat)
        assert out is not None
        return out

    def _emit_checked(
        self,
        op: str,
        kwargs: dict[str, Any],
        inputs: list[Tensor],
        label: str | None,
        frame: Frame,
        span: Span,
        trainable: bool = True,
        ref: LayerRef | None = None,
    ) -> Tensor:
        spec = OPS[op]
        lo, hi = spec.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise error(
                "E027",
                f"{op} takes {want} input tensor{'s' if want != '1' else ''}, got {len(inputs)}",
                span,
            )
        try:
            attrs = spec.bind(**{k: plain(v) for k, v in kwargs.items()})
        except AttrError as exc:
            value = kwargs.get(exc.attr) if exc.attr else None
            where = dict(ref.arg_spans).get(exc.attr or "", span) if ref else span
            # A bare name the op refuses, and that is not close to one of its
            # options, was most likely meant as a variable.
            if isinstance(value, Symbol) and exc.suggestion is None:
                raise self._undefined(frame, value, where) from None
            raise refused(exc, where) from None
        return self._emit(op, attrs, inputs, label, frame, op, span, trainable)

    def _emit(
        self,
        op: str,
        attrs: Any,
        inputs: list[Tensor],
        label: str | None,
        frame: Frame,
        base: str,
        span: Span | None,
        trainable: bool = True,
    ) -> Tensor:
        """Add one layer to the graph, with its shape checked now."""
        spec = OPS[op]
        if not hasattr(attrs, "replace"):
            attrs = spec.bind(**attrs)
        if len(self.graph) >= self.max_layers:
            raise error("E090", f"the network exceeds {self.max_layers} layers", span)
        name = label or frame.fresh(base)
        path = frame.prefix + name
        if path in self.graph:
            raise error("E053", f"two layers named '{path}'", span)
        try:
            shape = tuple(spec.shape(attrs, *[t.shape for t in inputs]))
        except ShapeError as exc:
            raise self._shape_error(op, exc, inputs, span) from None
        if any(d <= 0 for d in shape):
            raise error(
                "E041",
                f"{op} output shape {list(shape)} has an empty axis",
                span,
                *self._origins(inputs),
            )
        if math.prod(shape) > MAX_ELEMENTS:
            raise error(
                "E091",
                f"{op} output {list(shape)} has {math.prod(shape):,} elements"
                f" per sample: too large to allocate (limit {MAX_ELEMENTS:,})",
                span,
            )
        weights = spec.weights(attrs, *[t.shape for t in inputs])
        count = sum(w.size for w in weights.values())
        if count > MAX_ELEMENTS:
            raise error(
                "E091",
                f"{op} would have {count:,} parameters: too many to allocate"
                f" (limit {MAX_ELEMENTS:,})",
                span,
            )
        layer = Layer(
            path,
            op,
            attrs,
            tuple(t.path for t in inputs),
            span,
            frame.trainable and trainable,
            frame.scopes,
            shape=shape,
        )
        self.graph.add(layer)
        origin = layer.label
        return Tensor(path, shape, span, origin)

    # ---- error messages ----
    def _shape_error(
        self, op: str, exc: ShapeError, inputs: list[Tensor], span: Span | None
    ) -> CnnError:
        code = "E031" if OPS[op].family == "merge" else "E041"
        notes = self._origins(inputs)
        if exc.working:
            notes = [f"working: {exc.working}", *notes]
        return error(code, exc.message, span, *notes)

    def _origins(self, inputs: list[Tensor]) -> list[str]:
        notes = []
        for t in inputs:
            where = f"line {t.span.line}" if t.span else "the input"
            notes.append(f"{t.path}: {list(t.shape)} from {where} ({t.origin})")
        return notes

    def _undefined(self, frame: Frame, name: str, span: Span) -> CnnError:
        candidates = [*frame.bindings, *OPS, *frame.file.names]
        return error("E013", f"undefined name '{name}'" + near_names(name, candidates), span)
