"""Elaboration: AST -> IR.

Runs a network's body at compile time: binds parameters, evaluates numbers,
lists and conditions, expands `block` calls, `for` loops and `LAYER * n`
repeats, applies `defaults`, and emits one IR layer per op application into
an ir.Graph. Shapes are inferred as layers are emitted, because the language
can read them (`x.channels`); every layer keeps the Span that produced it
and the block instances around it.

The stage spans three modules, each building on the one below it:
cnndsl.frontend.emit turns layer calls into checked IR layers, cnndsl.frontend.expressions
computes the values of expressions, and this module, the entry point, walks
statements (assignments, `input`, `if`, `for`, `assert`, `defaults`, `train`,
`budget`, `return`) and expands block calls, since a block's body is statements.

Raises CnnError for unknown names or ops, bad arguments, shape mismatches,
failed assertions, recursion, import problems; the error carries the graph
built so far (`partial`), so a summary can show where it went wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cnndsl.frontend import syntax as ast
from cnndsl.frontend.emit import MAX_ELEMENTS, Frame, refused
from cnndsl.frontend.expressions import ExpressionElaborator
from cnndsl.frontend.imports import FileScope, Loader
from cnndsl.frontend.values import (
    BUDGET_NAMES,
    MAX_LAYERS,
    LayerRef,
    Tensor,
    kind_of,
    train_section,
)
from cnndsl.ir import Graph, Scope
from cnndsl.ops.attrs import Signature, show
from cnndsl.ops.errors import AttrError
from cnndsl.source import CnnError, Span, error, near_names

MAX_DEPTH = 64  # nested block calls


# ---- The elaborator ----


class Returned(Exception):
    """Control flow: a `return` statement ran."""

    def __init__(self, value: Any, span: Span) -> None:
        self.value = value
        self.span = span


class Elaborator(ExpressionElaborator):
    """Builds the IR of one network (or one block on a given input)."""

    def __init__(self, loader: Loader, max_layers: int = MAX_LAYERS) -> None:
        super().__init__(max_layers)
        self.loader = loader
        self.stack: list[str] = []  # block call stack, for recursion errors
        self.returned_span: Span | None = None

    # ---- entry points ----
    def network(
        self, scope: FileScope, definition: ast.Definition, overrides: dict[str, Any]
    ) -> Graph:
        """Elaborate a network with some parameters overridden."""
        frame = Frame(scope, "", (), True)
        frame.defaults = self._file_defaults(scope)
        self._bind_params(frame, definition, dict(overrides), None, definition.span)
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
        self.count_step(stmt.span)
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
            raise error("E040", f"assertion failed: {show(message)}", stmt.test.span)

    def _defaults(self, frame: Frame, stmt: ast.Defaults) -> None:
        frame.defaults = {**frame.defaults}
        values = self._defaults_values(frame, stmt)
        frame.defaults[stmt.op] = {**frame.defaults.get(stmt.op, {}), **values}

    def _train(self, frame: Frame, stmt: ast.Train) -> None:
        if frame.prefix or frame.block_input is not None:
            raise error("E070", "`train {}` belongs in a network, not a block", stmt.span)
        if self.graph.meta.get("train"):
            raise error("E070", "a network has one `train {}` section; this is a second", stmt.span)
        train_frame = Frame(frame.file, "", (), True, bindings=frame.bindings, in_train=True)
        self.graph.meta["train"] = train_section(
            stmt.settings, lambda expr: self.value_of(train_frame, expr)
        )

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

    # ---- defaults and blocks ----
    def _defaults_values(self, frame: Frame, stmt: ast.Defaults) -> dict[str, Any]:
        """The arguments of a `defaults` statement by name, bound as a call of its op or block."""
        signature = self._signature(stmt.op, frame, stmt.span)
        positional, kwargs = self._arguments(frame, stmt.args)
        try:
            return signature.bind([value for value, _ in positional], kwargs)
        except AttrError as exc:
            raise refused(exc, stmt.span) from None

    def _file_defaults(self, scope: FileScope) -> dict[str, dict[str, Any]]:
        frame = Frame(scope, "", (), True)
        for stmt in scope.module.defaults:
            self._defaults(frame, stmt)
        return frame.defaults

    # NOTE: applying a block means running its body, so block expansion lives
    # with the statements; cnndsl.frontend.emit calls it for the block kind of LayerRef.
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
        self._bind_params(inner, definition, dict(ref.kwargs), frame, span)
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
    ) -> None:
        """Bind a block's or network's parameters in `frame`: given values, else defaults.

        A default is an expression, evaluated in order, so it may read the
        parameters before it. A missing one is reported at the call, or at the
        parameter when a network is compiled without it.
        """
        # NOTE: no keyword check here: the parser reserves keywords, so no parameter is one.
        names = tuple(p.name for p in definition.params)
        signature = Signature(f"{definition.kind} '{definition.name}'", names, noun="parameter")
        try:
            values = signature.bind((), given)
        except AttrError as exc:
            raise refused(exc, span) from None
        for p in definition.params:
            if p.name in values:
                frame.bindings[p.name] = values[p.name]
            elif p.default is not None:
                frame.bindings[p.name] = self.value_of(frame, p.default)
            else:
                raise refused(signature.missing(p.name), span if caller else p.span)


def with_partial(exc: CnnError, graph: Graph, sources: dict[str, str]) -> CnnError:
    """Attach the graph built so far and the source texts to an error."""
    exc.partial = graph
    exc.sources = {**sources, **exc.sources}
    return exc


__all__ = [
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "Elaborator",
    "Frame",
    "Returned",
    "with_partial",
]
