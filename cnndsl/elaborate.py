"""Elaboration: AST -> IR.

Runs a network's body at compile time: binds parameters, evaluates numbers,
lists and conditions, expands `block` calls, `for` loops and `LAYER * n`
repeats, applies `defaults`, and emits one IR layer per op application into
an ir.Graph. Shapes are inferred as layers are emitted, because the language
can read them (`x.channels`); every layer keeps the Span that produced it
and the block instances around it.

Raises CnnError for unknown names or ops, bad arguments, shape mismatches,
failed assertions, recursion, import problems; the error carries the graph
built so far (`partial`), so a summary can show where it went wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnndsl import syntax as ast
from cnndsl.imports import FileScope, Loader
from cnndsl.ir import Graph, Layer, Scope
from cnndsl.ops import OPS
from cnndsl.ops.registry import AttrError, ShapeError, show
from cnndsl.source import CnnError, Span, error, near_names
from cnndsl.values import (
    ARITH,
    BUDGET_NAMES,
    BUILTINS,
    COMPARE,
    MAX_LAYERS,
    TENSOR_ATTRS,
    TRAIN_SETTINGS,
    Config,
    LayerRef,
    Symbol,
    Tensor,
    is_int,
    is_num,
    kind_of,
    plain,
    valid_label,
)

KEYWORDS = frozenset(
    [
        "network",
        "block",
        "input",
        "return",
        "if",
        "else",
        "for",
        "in",
        "assert",
        "import",
        "defaults",
        "train",
        "budget",
        "and",
        "or",
        "not",
        "true",
        "false",
    ]
)
MAX_DEPTH = 64  # nested block calls
MAX_ELEMENTS = 2**34  # per tensor or per layer's weights: 64 GiB of float32


# ---- The elaborator ----


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


class Returned(Exception):
    """Control flow: a `return` statement ran."""

    def __init__(self, value: Any, span: Span) -> None:
        self.value = value
        self.span = span


class Elaborator:
    """Builds the IR of one network (or one block on a given input)."""

    def __init__(self, loader: Loader, max_layers: int = MAX_LAYERS) -> None:
        self.loader = loader
        self.graph = Graph()
        self.max_layers = max_layers
        self.stack: list[str] = []  # block call stack, for recursion errors
        self.returned_span: Span | None = None

    # ---- entry points ----
    def network(
        self, scope: FileScope, definition: ast.Definition, overrides: dict[str, Any]
    ) -> Graph:
        """Elaborate a network with some parameters overridden."""
        frame = Frame(scope, "", (), True)
        frame.defaults = self._file_defaults(scope)
        self._bind_params(
            frame, definition, dict(overrides), None, definition.span, overridable=True
        )
        meta = self.graph.meta
        meta.update(
            name=definition.name,
            file=definition.file,
            inputs=[],
            train={},
            budgets=(),
            params=dict(frame.bindings),
            span=definition.span,
        )
        result = self._run_body(frame, definition, require_return=True)
        meta["outputs"] = [t.path for t in self._tensors_of(result, self.returned_span)]
        if not meta["inputs"]:
            raise error(
                "E020",
                f"network '{definition.name}' declares no input: add `input image: [h, w, c]`",
                definition.span,
            )
        return self.graph

    def block(
        self,
        scope: FileScope,
        definition: ast.Definition,
        input_shape: tuple[int, ...],
        params: dict[str, Any],
    ) -> Graph:
        """Elaborate a block applied to an input of the given shape."""
        image = self._emit(
            "input",
            {"shape": input_shape},
            [],
            None,
            Frame(scope, "", (), True),
            "input",
            definition.span,
        )
        self.graph.meta.update(
            name=definition.name,
            file=definition.file,
            inputs=[image.path],
            train={},
            budgets=(),
            params=dict(params),
            span=definition.span,
        )
        ref = LayerRef("block", definition.name, tuple(params.items()), definition.span)
        frame = Frame(scope, "", (), True)
        out = self._apply(ref, [image], frame, definition.span)
        self.graph.meta["outputs"] = [out.path]
        return self.graph

    # ---- statements ----
    def _run_body(self, frame: Frame, definition: ast.Definition, require_return: bool) -> Any:
        try:
            self._exec_all(frame, definition.body)
        except Returned as ret:
            self.returned_span = ret.span
            return ret.value
        if require_return:
            raise error(
                "E021", f"{definition.kind} '{definition.name}' has no `return`", definition.span
            )
        return None

    def _exec_all(self, frame: Frame, stmts: tuple[ast.Stmt, ...]) -> None:
        for stmt in stmts:
            self._exec(frame, stmt)

    def _exec(self, frame: Frame, stmt: ast.Stmt) -> None:
        handler = self.STATEMENTS[type(stmt)]
        handler(self, frame, stmt)

    def _assign(self, frame: Frame, stmt: ast.Assign) -> None:
        frame.bindings[stmt.name] = self.value_of(frame, stmt.value)

    def _input_decl(self, frame: Frame, stmt: ast.InputDecl) -> None:
        if frame.block_input is not None or frame.prefix:
            raise error(
                "E022",
                "`input NAME: shape` declares a network input; inside a block,"
                " `input` is the block's input tensor",
                stmt.span,
            )
        shape = self.value_of(frame, stmt.shape)
        if not (
            isinstance(shape, (list, tuple))
            and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise error(
                "E023",
                f"input shape must be a list of positive whole numbers like"
                f" [28, 28, 1], not {show(shape)}",
                stmt.shape.span,
            )
        if stmt.name in frame.bindings:
            raise error("E024", f"'{stmt.name}' is already bound", stmt.span)
        tensor = self._emit(
            "input", {"shape": tuple(shape)}, [], stmt.name, frame, "input", stmt.span
        )
        self.graph.meta["inputs"].append(tensor.path)
        frame.bindings[stmt.name] = tensor

    def _return(self, frame: Frame, stmt: ast.Return) -> None:
        raise Returned(self.value_of(frame, stmt.value), stmt.value.span)

    def _if(self, frame: Frame, stmt: ast.If) -> None:
        test = self.value_of(frame, stmt.test)
        self._no_symbol(frame, test, stmt.test)
        if self._truth(test, stmt.test.span):
            self._exec_all(frame, stmt.body)
        else:
            self._exec_all(frame, stmt.orelse)

    def _for(self, frame: Frame, stmt: ast.For) -> None:
        items = self.value_of(frame, stmt.iterable)
        if not isinstance(items, (list, tuple)):
            raise error("E030", f"`for` needs a list, not {kind_of(items)}", stmt.iterable.span)
        for item in items:
            frame.bindings[stmt.var] = item
            self._exec_all(frame, stmt.body)

    def _assert(self, frame: Frame, stmt: ast.Assert) -> None:
        if not self._truth(self.value_of(frame, stmt.test), stmt.test.span):
            message = self.value_of(frame, stmt.message) if stmt.message else "assertion failed"
            raise error("E040", f"assertion failed: {message}", stmt.test.span)

    def _defaults(self, frame: Frame, stmt: ast.Defaults) -> None:
        frame.defaults = {**frame.defaults}
        values = self._defaults_values(frame, stmt)
        frame.defaults[stmt.op] = {**frame.defaults.get(stmt.op, {}), **values}

    def _defaults_values(self, frame: Frame, stmt: ast.Defaults) -> dict[str, Any]:
        positional_names = self._arg_names(stmt.op, frame, stmt.span)
        values: dict[str, Any] = {}
        for i, arg in enumerate(stmt.args):
            value = self.value_of(frame, arg.value)
            if arg.name is None:
                if i >= len(positional_names):
                    raise error("E012", f"too many positional defaults for {stmt.op}", arg.span)
                values[positional_names[i]] = value
            else:
                values[arg.name] = value
        accepted = self._accepted_args(stmt.op, frame)
        for name in values:
            if name not in accepted:
                raise error(
                    "E011",
                    f"{stmt.op} has no argument '{name}'" + near_names(name, accepted),
                    stmt.span,
                )
        return values

    def _train(self, frame: Frame, stmt: ast.Train) -> None:
        if frame.prefix or frame.block_input is not None:
            raise error("E070", "`train {}` belongs in a network, not a block", stmt.span)
        settings: dict[str, Any] = {}
        train_frame = Frame(frame.file, "", (), True, bindings=frame.bindings, in_train=True)
        for s in stmt.settings:
            if s.name not in TRAIN_SETTINGS:
                raise error(
                    "E071",
                    f"unknown train setting '{s.name}'" + near_names(s.name, TRAIN_SETTINGS),
                    s.span,
                    "note: settings: " + ", ".join(sorted(TRAIN_SETTINGS)),
                )
            settings[s.name] = TRAIN_SETTINGS[s.name](self.value_of(train_frame, s.value), s.span)
        self.graph.meta["train"] = settings

    def _budget(self, frame: Frame, stmt: ast.Budget) -> None:
        limits = []
        for lim in stmt.limits:
            if lim.name not in BUDGET_NAMES:
                raise error(
                    "E072",
                    f"unknown budget '{lim.name}'" + near_names(lim.name, BUDGET_NAMES),
                    lim.span,
                    "note: budgets: " + ", ".join(BUDGET_NAMES),
                )
            value = self.value_of(frame, lim.value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise error(
                    "E072", f"a budget limit must be a number, not {kind_of(value)}", lim.value.span
                )
            limits.append((lim.name, lim.op, value, lim.span))
        self.graph.meta["budgets"] = (*self.graph.meta.get("budgets", ()), *limits)

    STATEMENTS: dict[type, Callable[..., None]] = {
        ast.Assign: _assign,
        ast.InputDecl: _input_decl,
        ast.Return: _return,
        ast.If: _if,
        ast.For: _for,
        ast.Assert: _assert,
        ast.Defaults: _defaults,
        ast.Train: _train,
        ast.Budget: _budget,
    }

    # ---- expressions ----
    def value_of(self, frame: Frame, expr: ast.Expr) -> Any:
        """The compile-time value of an expression."""
        return self.EXPRESSIONS[type(expr)](self, frame, expr)

    def _name(self, frame: Frame, expr: ast.Name) -> Any:
        name = expr.id
        if name in frame.bindings:
            return frame.bindings[name]
        if name in OPS or name in frame.file.names:
            return self._make_ref(frame, name, (), expr.span)
        if name in BUILTINS:
            raise error("E013", f"'{name}' is a function: call it as {name}(...)", expr.span)
        return Symbol(name)

    def _input_ref(self, frame: Frame, expr: ast.InputRef) -> Any:
        if frame.block_input is None:
            raise error(
                "E025",
                "`input` refers to a block's input; in a network, use the name"
                " given in `input NAME: shape`",
                expr.span,
            )
        return frame.block_input

    def _literal(self, frame: Frame, expr: ast.Literal) -> Any:
        return expr.value

    def _tuple(self, frame: Frame, expr: ast.TupleExpr) -> Any:
        return tuple(self.value_of(frame, e) for e in expr.items)

    def _list(self, frame: Frame, expr: ast.ListExpr) -> Any:
        return [self.value_of(frame, e) for e in expr.items]

    def _binop(self, frame: Frame, expr: ast.BinOp) -> Any:
        a = self.value_of(frame, expr.left)
        b = self.value_of(frame, expr.right)
        self._no_symbol(frame, a, expr.left)
        self._no_symbol(frame, b, expr.right)
        if isinstance(a, Tensor) and isinstance(b, Tensor) and expr.op in ("+", "*"):
            op = "add" if expr.op == "+" else "multiply"
            return self._emit_checked(op, {}, [a, b], None, frame, expr.span)
        if expr.op == "*" and isinstance(a, LayerRef) and is_int(b):
            return self._repeat(a, b, expr)
        if expr.op == "*" and isinstance(b, LayerRef) and is_int(a):
            return self._repeat(b, a, expr)
        if expr.op == "*" and isinstance(a, list) and is_int(b):
            return self._list_times(a, b, expr)
        if expr.op == "*" and isinstance(b, list) and is_int(a):
            return self._list_times(b, a, expr)
        if expr.op == "+" and isinstance(a, list) and isinstance(b, list):
            return a + b
        if expr.op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if is_num(a) and is_num(b):
            return self._arith(expr.op, a, b, expr)
        raise error("E032", f"cannot apply `{expr.op}` to {kind_of(a)} and {kind_of(b)}", expr.span)

    def _repeat(self, ref: LayerRef, n: int, expr: ast.BinOp) -> LayerRef:
        if n < 1:
            raise error("E033", f"a layer repeated {n} times: the count must be >= 1", expr.span)
        if ref.repeat * n > self.max_layers:
            raise error(
                "E090",
                f"repeating {ref.repeat * n} times exceeds the limit of {self.max_layers} layers",
                expr.span,
            )
        return LayerRef(
            ref.kind,
            ref.name,
            ref.kwargs,
            ref.span,
            ref.repeat * n,
            ref.label,
            ref.trainable,
            ref.arg_spans,
        )

    def _list_times(self, items: list[Any], n: int, expr: ast.BinOp) -> list[Any]:
        if len(items) * max(n, 0) > self.max_layers:
            raise error(
                "E090",
                f"a list of {len(items) * n} items exceeds the limit of {self.max_layers}",
                expr.span,
            )
        return items * n

    def _arith(self, op: str, a: Any, b: Any, expr: ast.BinOp) -> Any:
        if op in ("/", "//", "%") and b == 0:
            raise error("E034", "division by zero", expr.span)
        if (
            op == "*"
            and is_int(a)
            and is_int(b)
            and abs(a) > 1
            and abs(b) > 1
            and (math.log2(abs(a)) + math.log2(abs(b)) > 62)
        ):
            raise error("E035", "number too large (more than 2^62)", expr.span)
        return ARITH[op](a, b)

    def _chain(self, frame: Frame, expr: ast.Chain) -> Any:
        value = self.value_of(frame, expr.head)
        self._no_symbol(frame, value, expr.head)
        inputs = self._tensors_of(value, expr.head.span, what="`->` needs a tensor on its left")
        for link in expr.links:
            ref = self.value_of(frame, link)
            if not isinstance(ref, LayerRef):
                if isinstance(ref, Symbol):
                    raise self._undefined(frame, ref, link.span)
                raise error(
                    "E036", f"`->` needs a layer on its right, not {kind_of(ref)}", link.span
                )
            inputs = [self._apply(ref, inputs, frame, link.span)]
        return inputs[0]

    def _compare(self, frame: Frame, expr: ast.Compare) -> Any:
        a = self.value_of(frame, expr.left)
        b = self.value_of(frame, expr.right)
        self._no_symbol(frame, a, expr.left)
        self._no_symbol(frame, b, expr.right)
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if expr.op in ("==", "!="):
            return (a == b) == (expr.op == "==")
        if not (is_num(a) and is_num(b)):
            raise error(
                "E032", f"cannot compare {kind_of(a)} and {kind_of(b)} with `{expr.op}`", expr.span
            )
        return COMPARE[expr.op](a, b)

    def _boolop(self, frame: Frame, expr: ast.BoolOp) -> Any:
        left = self._truth(self.value_of(frame, expr.left), expr.left.span)
        if expr.op == "and" and not left:
            return False
        if expr.op == "or" and left:
            return True
        return self._truth(self.value_of(frame, expr.right), expr.right.span)

    def _not(self, frame: Frame, expr: ast.Not) -> Any:
        return not self._truth(self.value_of(frame, expr.value), expr.value.span)

    def _neg(self, frame: Frame, expr: ast.Neg) -> Any:
        value = self.value_of(frame, expr.value)
        if not is_num(value):
            raise error("E032", f"cannot negate {kind_of(value)}", expr.span)
        return -value

    def _ifexp(self, frame: Frame, expr: ast.IfExp) -> Any:
        if self._truth(self.value_of(frame, expr.test), expr.test.span):
            return self.value_of(frame, expr.body)
        return self.value_of(frame, expr.orelse)

    def _attribute(self, frame: Frame, expr: ast.Attribute) -> Any:
        value = self.value_of(frame, expr.value)
        if not isinstance(value, Tensor):
            if isinstance(value, Symbol):
                raise self._undefined(frame, value, expr.value.span)
            raise error("E037", f"{kind_of(value)} has no attribute '{expr.attr}'", expr.span)
        shape = value.shape
        if expr.attr == "shape":
            return list(shape)
        if expr.attr == "channels":
            return shape[-1]
        if expr.attr in ("height", "width"):
            if len(shape) != 3:
                raise error(
                    "E037",
                    f"a tensor of shape {list(shape)} has no {expr.attr}"
                    " (only feature maps [h, w, c] do)",
                    expr.span,
                )
            return shape[0] if expr.attr == "height" else shape[1]
        raise error(
            "E037",
            f"tensors have no attribute '{expr.attr}'"
            + near_names(expr.attr, TENSOR_ATTRS)
            + " (they have .height, .width, .channels, .shape)",
            expr.span,
        )

    def _index(self, frame: Frame, expr: ast.Index) -> Any:
        value = self.value_of(frame, expr.value)
        idx = self.value_of(frame, expr.index)
        if not isinstance(value, (list, tuple)):
            raise error("E038", f"cannot index {kind_of(value)}", expr.value.span)
        if not is_int(idx):
            raise error(
                "E038", f"an index must be a whole number, not {kind_of(idx)}", expr.index.span
            )
        if not -len(value) <= idx < len(value):
            raise error(
                "E038", f"index {idx} out of range for a list of {len(value)}", expr.index.span
            )
        return value[idx]

    def _call(self, frame: Frame, expr: ast.Call) -> Any:
        if not isinstance(expr.func, ast.Name):
            raise error("E014", "only ops, blocks and functions can be called", expr.func.span)
        name = expr.func.id
        if name in frame.bindings:
            raise error(
                "E014",
                f"'{name}' is a value ({kind_of(frame.bindings[name])}), not an op or block",
                expr.func.span,
            )
        positional: list[Any] = []
        tensors: list[Tensor] = []
        kwargs: dict[str, Any] = {}
        for arg in expr.args:
            value = self.value_of(frame, arg.value)
            if arg.name is None:
                if kwargs:
                    raise error("E015", "a positional argument after a keyword argument", arg.span)
                (tensors if isinstance(value, Tensor) else positional).append(value)
            else:
                if arg.name in kwargs:
                    raise error("E016", f"argument '{arg.name}' given twice", arg.span)
                kwargs[arg.name] = value
        if name in BUILTINS:
            return self._builtin(name, positional + tensors, kwargs, expr)
        if name not in OPS and name not in frame.file.names:
            if frame.in_train:
                return Config(name, tuple(kwargs.items()))
            raise error(
                "E010",
                f"unknown op or block '{name}'" + near_names(name, [*OPS, *frame.file.names]),
                expr.func.span,
            )
        ref = self._make_ref(frame, name, tuple(positional), expr.span, kwargs, expr.args)
        if tensors:
            return self._apply(ref, tensors, frame, expr.span)
        return ref

    def _builtin(self, name: str, args: list[Any], kwargs: dict[str, Any], expr: ast.Call) -> Any:
        if kwargs:
            raise error("E017", f"{name}() takes no keyword arguments", expr.span)
        try:
            return BUILTINS[name](*args)
        except (TypeError, ValueError) as exc:
            raise error("E017", f"{name}(): {exc}", expr.span) from None

    EXPRESSIONS: dict[type, Callable[..., Any]] = {
        ast.Name: _name,
        ast.InputRef: _input_ref,
        ast.Literal: _literal,
        ast.TupleExpr: _tuple,
        ast.ListExpr: _list,
        ast.BinOp: _binop,
        ast.Chain: _chain,
        ast.Compare: _compare,
        ast.BoolOp: _boolop,
        ast.Not: _not,
        ast.Neg: _neg,
        ast.IfExp: _ifexp,
        ast.Attribute: _attribute,
        ast.Index: _index,
        ast.Call: _call,
    }

    # ---- layers ----
    def _arg_names(self, name: str, frame: Frame, span: Span) -> tuple[str, ...]:
        if name in OPS:
            return OPS[name].args
        if name in frame.file.names:
            definition, _ = frame.file.names[name]
            if definition.kind == "block":
                return tuple(p.name for p in definition.params)
            raise error("E018", f"'{name}' is a network; only ops and blocks are layers", span)
        raise error(
            "E010",
            f"unknown op or block '{name}'" + near_names(name, [*OPS, *frame.file.names]),
            span,
        )

    def _accepted_args(self, name: str, frame: Frame) -> list[str]:
        if name in OPS:
            return [*OPS[name].attrs, "name", "trainable"]
        definition, _ = frame.file.names[name]
        return [*(p.name for p in definition.params), "name", "trainable"]

    def _make_ref(
        self,
        frame: Frame,
        name: str,
        positional: tuple[Any, ...],
        span: Span,
        kwargs: dict[str, Any] | None = None,
        args: tuple[ast.Arg, ...] = (),
    ) -> LayerRef:
        """Configure an op or block: positional to named, then defaults under explicit."""
        names = self._arg_names(name, frame, span)
        kind = "op" if name in OPS else "block"
        if len(positional) > len(names):
            raise error(
                "E012",
                f"{name} takes at most {len(names)} positional argument"
                f"{'s' if len(names) != 1 else ''} ({', '.join(names) or 'none'}),"
                f" got {len(positional)}",
                span,
            )
        explicit = dict(zip(names, positional, strict=False))
        for key, value in (kwargs or {}).items():
            if key in explicit:
                arg_span = next((a.span for a in args if a.name == key), span)
                raise error("E016", f"argument '{key}' given twice (also positionally)", arg_span)
            explicit[key] = value
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
        merged = {**frame.defaults.get(name, {}), **explicit}
        merged.pop("name", None)
        merged.pop("trainable", None)
        accepted = self._accepted_args(name, frame)
        for key in merged:
            if key not in accepted:
                arg_span = next((a.span for a in args if a.name == key), span)
                raise error(
                    "E011",
                    f"{name} has no argument '{key}'" + near_names(key, accepted),
                    arg_span,
                    f"note: {name} takes: {', '.join(accepted)}",
                )
        arg_spans = [
            (n, a.span) for n, a in zip(names, [a for a in args if a.name is None], strict=False)
        ]
        arg_spans += [(a.name, a.span) for a in args if a.name is not None]
        return LayerRef(
            kind, name, tuple(merged.items()), span, 1, label, trainable, tuple(arg_spans)
        )

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

    def _apply_block(
        self,
        ref: LayerRef,
        inputs: list[Tensor],
        frame: Frame,
        span: Span,
        label: str | None,
        repeat: str,
    ) -> Tensor:
        definition, owner = frame.file.names[ref.name]
        if len(inputs) != 1:
            raise error(
                "E039", f"block '{ref.name}' takes one input tensor, got {len(inputs)}", span
            )
        if ref.name in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(ref.name) :], ref.name])
            raise error("E052", f"block '{ref.name}' calls itself: {chain}", span)
        if len(self.stack) >= MAX_DEPTH:
            raise error("E052", f"blocks nested more than {MAX_DEPTH} deep", span)
        instance = label or frame.fresh(ref.name)
        path = frame.prefix + instance
        if path in self.graph:
            raise error("E053", f"two layers named '{path}'", span)
        inner = Frame(
            owner,
            path + "/",
            (*frame.scopes, Scope(path, ref.name, span, repeat)),
            frame.trainable and ref.trainable,
            inputs[0],
        )
        inner.defaults = self._file_defaults(owner)
        self._bind_params(inner, definition, dict(ref.kwargs), frame, span, overridable=False)
        self.stack.append(ref.name)
        try:
            result = self._run_body(inner, definition, require_return=True)
        finally:
            self.stack.pop()
        if not isinstance(result, Tensor):
            raise error(
                "E026",
                f"block '{ref.name}' must return a tensor, not {kind_of(result)}",
                self.returned_span,
            )
        return result

    def _bind_params(
        self,
        frame: Frame,
        definition: ast.Definition,
        given: dict[str, Any],
        caller: Frame | None,
        span: Span,
        overridable: bool,
    ) -> None:
        names = [p.name for p in definition.params]
        for key in given:
            if key not in names:
                what = "network" if overridable else "block"
                raise error(
                    "E011",
                    f"{what} '{definition.name}' has no parameter '{key}'" + near_names(key, names),
                    span,
                    f"note: parameters: {', '.join(names) or 'none'}",
                )
        for p in definition.params:
            if p.name in KEYWORDS:
                raise error("E054", f"'{p.name}' is a keyword", p.span)
            if p.name in given:
                frame.bindings[p.name] = given[p.name]
            elif p.default is not None:
                frame.bindings[p.name] = self.value_of(frame, p.default)
            else:
                raise error(
                    "E012",
                    f"{definition.kind} '{definition.name}' needs parameter '{p.name}'",
                    span if caller else p.span,
                )

    def _file_defaults(self, scope: FileScope) -> dict[str, dict[str, Any]]:
        frame = Frame(scope, "", (), True)
        for stmt in scope.module.defaults:
            self._defaults(frame, stmt)
        return frame.defaults

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
            if isinstance(value, Symbol) and "did you mean" not in exc.message:
                raise self._undefined(frame, value, where) from None
            raise error(
                "E011" if "has no argument" in exc.message else "E012", exc.message, where
            ) from None
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

    def _shape_error(
        self, op: str, exc: ShapeError, inputs: list[Tensor], span: Span | None
    ) -> CnnError:
        code = "E031" if op in ("add", "multiply", "concat") else "E041"
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

    # ---- helpers ----
    def _tensors_of(
        self, value: Any, span: Span | None, what: str = "a network returns tensors"
    ) -> list[Tensor]:
        if isinstance(value, Tensor):
            return [value]
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
            return list(value)
        if isinstance(value, Symbol):
            raise error("E013", f"undefined name '{value}'", span)
        raise error("E028", f"{what}, not {kind_of(value)}", span)

    def _truth(self, value: Any, span: Span) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, Symbol):
            return value != 0
        if isinstance(value, Symbol):
            raise error("E013", f"undefined name '{value}'", span)
        raise error("E029", f"a condition must be true or false, not {kind_of(value)}", span)

    def _no_symbol(self, frame: Frame, value: Any, expr: ast.Expr) -> None:
        if isinstance(value, Symbol):
            raise self._undefined(frame, value, expr.span)

    def _undefined(self, frame: Frame, name: str, span: Span) -> CnnError:
        candidates = [*frame.bindings, *OPS, *frame.file.names]
        return error("E013", f"undefined name '{name}'" + near_names(name, candidates), span)


def with_partial(exc: CnnError, graph: Graph, sources: dict[str, str]) -> CnnError:
    """Attach the graph built so far and the source texts to an error."""
    exc.partial = graph
    exc.sources = {**sources, **exc.sources}
    return exc
