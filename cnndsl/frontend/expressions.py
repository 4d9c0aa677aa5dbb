"""Elaboration, expressions: AST expressions -> compile-time values.

`value_of` gives the value of any expression: numbers, strings, booleans,
lists, tuples, tensor attributes (`x.channels`), built-in function results,
and the layer values of cnndsl.frontend.values. A call without tensor arguments
configures a `LayerRef`; `->`, a call given tensors (`concat(a, b)`) and `+`
or `*` between tensors apply layers at once, through cnndsl.frontend.emit, so the
value of `x -> conv(8, 3)` is a Tensor whose shape is already known.

Separate from the statement walk (cnndsl.frontend.elaborate) because an expression
only yields a value (adding the layers it applies); binding names, control
flow and the network's settings belong to statements.

Raises CnnError for undefined names, unknown ops or blocks, operators applied
to the wrong kinds of value, division by zero, numbers past 2^62, bad indexes
and attributes, and repeats past the layer limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cnndsl.frontend import syntax as ast
from cnndsl.frontend.emit import Frame, LayerBuilder
from cnndsl.frontend.values import (
    ARITH,
    BUILTINS,
    COMPARE,
    MAX_STEPS,
    MAX_STRING,
    TENSOR_ATTRS,
    Config,
    LayerRef,
    Symbol,
    Tensor,
    is_int,
    is_num,
    kind_of,
)
from cnndsl.ops import OPS
from cnndsl.source import Span, error, near_names

# The op each tensor operator stands for (`a + b` is add): `Op.infix`.
INFIX = {op.infix: name for name, op in OPS.items() if op.infix}


class ExpressionElaborator(LayerBuilder):
    """Computes the compile-time value of an expression, applying the layers it calls."""

    def __init__(self, max_layers: int, max_steps: int = MAX_STEPS) -> None:
        super().__init__(max_layers)
        self.steps = 0  # expressions evaluated and statements run so far
        self.max_steps = max_steps
        # Values counted in leaves: a list holding one list twice holds its items
        # twice. Keyed by id, holding the value so that the id stays its own.
        self._leaves: dict[int, tuple[Any, int]] = {}

    def leaves(self, value: Any) -> int:
        """How many scalars a value holds, nested lists and tuples counted in full."""
        if not isinstance(value, (list, tuple)):
            return 1
        known = self._leaves.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        count = sum(self.leaves(v) for v in value)
        self._leaves[id(value)] = (value, count)
        return count

    def _bounded(self, value: list[Any] | tuple[Any, ...], span: Span) -> Any:
        """A list or tuple just built, charged to the work budget and held to the size limit."""
        self.count_step(span, len(value))
        count = self.leaves(value)
        if count > self.max_layers:
            raise error(
                "E090",
                f"a list holding {count:,} items (nested lists counted in full)"
                f" exceeds the limit of {self.max_layers:,}",
                span,
            )
        return value

    def count_step(self, span: Span, cost: int = 1) -> None:
        """`cost` units of elaboration work; E093 at `span` once the work budget is spent."""
        self.steps += cost
        if self.steps > self.max_steps:
            raise error(
                "E093",
                f"elaboration ran past its work budget of {self.max_steps:,} steps"
                " (expressions evaluated and statements run); a loop runs too long",
                span,
            )

    def value_of(self, frame: Frame, expr: ast.Expr) -> Any:
        """The compile-time value of an expression."""
        self.count_step(expr.span)
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
        return self._bounded(tuple(self.value_of(frame, e) for e in expr.items), expr.span)

    def _list(self, frame: Frame, expr: ast.ListExpr) -> Any:
        return self._bounded([self.value_of(frame, e) for e in expr.items], expr.span)

    def _binop(self, frame: Frame, expr: ast.BinOp) -> Any:
        a = self.value_of(frame, expr.left)
        b = self.value_of(frame, expr.right)
        self._no_symbol(frame, a, expr.left)
        self._no_symbol(frame, b, expr.right)
        if isinstance(a, Tensor) and isinstance(b, Tensor) and expr.op in INFIX:
            op = INFIX[expr.op]
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
            self._check_size(len(a) + len(b), self.max_layers, "a list of {:,} items", expr)
            return self._bounded(a + b, expr.span)
        if expr.op == "+" and isinstance(a, str) and isinstance(b, str):
            self._check_size(len(a) + len(b), MAX_STRING, "a string of {:,} characters", expr)
            self.count_step(expr.span, len(a) + len(b))
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

    def _check_size(self, size: int, limit: int, what: str, expr: ast.BinOp) -> None:
        """E090 when a value `+` would build is past its size limit (doubling in a loop)."""
        if size > limit:
            raise error("E090", f"{what.format(size)} exceeds the limit of {limit:,}", expr.span)

    def _list_times(self, items: list[Any], n: int, expr: ast.BinOp) -> list[Any]:
        if len(items) * max(n, 0) > self.max_layers:
            raise error(
                "E090",
                f"a list of {len(items) * n} items exceeds the limit of {self.max_layers}",
                expr.span,
            )
        return self._bounded(items * n, expr.span)

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
        try:
            return ARITH[op](a, b)
        except OverflowError:  # an int too large to become a float, in `/` or with a float
            raise error("E035", "number too large to compute with", expr.span) from None

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
        arguments, kwargs = self._arguments(frame, expr.args)
        # Positional tensors are a layer's inputs; the other positionals are its arguments.
        tensors = [value for value, _ in arguments if isinstance(value, Tensor)]
        layer_args = [(value, arg) for value, arg in arguments if not isinstance(value, Tensor)]
        positional = [value for value, _ in layer_args]
        if name in BUILTINS:
            return self._builtin(name, positional + tensors, kwargs, expr)
        if name not in OPS and name not in frame.file.names:
            if frame.in_train:
                return Config(name, tuple(kwargs.items()), (*positional, *tensors))
            raise error(
                "E010",
                f"unknown op or block '{name}'" + near_names(name, [*OPS, *frame.file.names]),
                expr.func.span,
            )
        written = (*(arg for _, arg in layer_args), *(a for a in expr.args if a.name is not None))
        ref = self._make_ref(frame, name, tuple(positional), expr.span, kwargs, written)
        if tensors:
            return self._apply(ref, tensors, frame, expr.span)
        return ref

    def _arguments(
        self, frame: Frame, args: tuple[ast.Arg, ...]
    ) -> tuple[list[tuple[Any, ast.Arg]], dict[str, Any]]:
        """An argument list's values: positional ones in order with their Arg, keyword ones by name.

        Refuses a positional argument after a keyword one (E015) and a keyword
        given twice (E016); matching them to parameters is `Signature.bind`'s job.
        """
        positional: list[tuple[Any, ast.Arg]] = []
        kwargs: dict[str, Any] = {}
        for arg in args:
            value = self.value_of(frame, arg.value)
            if arg.name is None:
                if kwargs:
                    raise error("E015", "a positional argument after a keyword argument", arg.span)
                positional.append((value, arg))
            else:
                if arg.name in kwargs:
                    raise error("E016", f"argument '{arg.name}' given twice", arg.span)
                kwargs[arg.name] = value
        return positional, kwargs

    def _builtin(self, name: str, args: list[Any], kwargs: dict[str, Any], expr: ast.Call) -> Any:
        if kwargs:
            raise error("E017", f"{name}() takes no keyword arguments", expr.span)
        try:
            result = BUILTINS[name](*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise error("E017", f"{name}(): {exc}", expr.span) from None
        return self._bounded(result, expr.span) if isinstance(result, list) else result

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

    # ---- checks shared with the statement walker ----
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
