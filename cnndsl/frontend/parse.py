"""Parsing: .cnn text -> AST (cnndsl.frontend.syntax).

Lark parses with LALR and keeps positions (`grammar`); `ToAst` runs after
`parse()` with `@v_args(meta=True)` so every AST node gets a Span. Syntax
errors become a CnnError with one diagnostic from `syntax_errors`.
"""

from __future__ import annotations

from typing import Any

from lark import Token, Transformer, UnexpectedInput, v_args
from lark.exceptions import VisitError

from cnndsl.frontend import syntax as ast
from cnndsl.frontend.grammar import parser, token_span
from cnndsl.frontend.syntax_errors import syntax_diagnostic
from cnndsl.source import CnnError, Diagnostic, Span


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse spec text into a Module, or raise CnnError with one syntax diagnostic."""
    try:
        tree = parser().parse(text)
        return ToAst(file).transform(tree)
    except UnexpectedInput as exc:
        raise CnnError([syntax_diagnostic(text, file, exc)], {file: text}) from None
    except RecursionError:
        raise CnnError(
            [
                Diagnostic(
                    "error",
                    "E092",
                    "the spec nests too deeply to parse (brackets or operators inside one another)",
                    Span(file, 1, 1, 1, 1),
                )
            ],
            {file: text},
        ) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, RecursionError):
            raise CnnError(
                [
                    Diagnostic(
                        "error",
                        "E092",
                        "the spec nests too deeply to parse",
                        Span(file, 1, 1, 1, 1),
                    )
                ],
                {file: text},
            ) from None
        raise


def _num(text: str) -> str:
    return text.replace("_", "")


@v_args(meta=True, inline=True)
class ToAst(Transformer):
    """Lark tree -> syntax.Module. Method names are the grammar's rule names and aliases."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def span(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.file, 1, 1, 1, 1)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def tspan(self, tok: Token) -> Span:
        return token_span(self.file, tok)

    # ---- definitions ----
    def start(self, meta: Any, *items: Any) -> ast.Module:
        imports = tuple(i for i in items if isinstance(i, ast.Import))
        defaults = tuple(i for i in items if isinstance(i, ast.Defaults))
        defs = tuple(i for i in items if isinstance(i, ast.Definition))
        # Defaults keep their position relative to definitions via spans.
        return ast.Module(self.file, imports, defaults, defs)

    def import_(self, meta: Any, target: Any) -> ast.Import:
        if isinstance(target, Token):
            return ast.Import(_unquote(target), True, self.span(meta))
        return ast.Import(target, False, self.span(meta))

    def module(self, meta: Any, *names: Token) -> str:
        return ".".join(str(n) for n in names)

    def _definition(self, kind: str, meta: Any, name: Token, params: Any, body: Any) -> Any:
        header = Span(
            self.file,
            meta.line,
            meta.column,
            name.end_line or meta.line,
            name.end_column or meta.column,
        )
        return ast.Definition(kind, str(name), tuple(params or ()), tuple(body), header, self.file)

    def block(self, meta: Any, name: Token, params: Any, body: Any) -> ast.Definition:
        return self._definition("block", meta, name, params, body)

    def network(self, meta: Any, name: Token, params: Any, body: Any) -> ast.Definition:
        return self._definition("network", meta, name, params, body)

    def params(self, meta: Any, *params: Any) -> tuple[ast.Param, ...]:
        return tuple(p for p in params if p is not None)

    def param(self, meta: Any, name: Token, default: Any) -> ast.Param:
        return ast.Param(str(name), default, self.span(meta))

    def body(self, meta: Any, *stmts: Any) -> tuple[ast.Stmt, ...]:
        return tuple(stmts)

    # ---- statements ----
    def assign(self, meta: Any, name: Token, value: ast.Expr) -> ast.Assign:
        return ast.Assign(self.span(meta), str(name), value)

    def input_decl(self, meta: Any, name: Token, shape: ast.Expr) -> ast.InputDecl:
        return ast.InputDecl(self.span(meta), str(name), shape)

    def return_(self, meta: Any, value: ast.Expr) -> ast.Return:
        return ast.Return(self.span(meta), value)

    def if_(self, meta: Any, test: ast.Expr, body: Any, orelse: Any) -> ast.If:
        return ast.If(self.span(meta), test, tuple(body), tuple(orelse or ()))

    def orelse(self, meta: Any, value: Any) -> tuple[ast.Stmt, ...]:
        return (value,) if isinstance(value, ast.If) else tuple(value)

    def for_(self, meta: Any, var: Token, iterable: ast.Expr, body: Any) -> ast.For:
        return ast.For(self.span(meta), str(var), iterable, tuple(body))

    def assert_(self, meta: Any, test: ast.Expr, message: Any) -> ast.Assert:
        return ast.Assert(self.span(meta), test, message)

    def defaults(self, meta: Any, op: Token, args: Any) -> ast.Defaults:
        return ast.Defaults(self.span(meta), str(op), tuple(args or ()))

    def train(self, meta: Any, *settings: ast.Setting) -> ast.Train:
        return ast.Train(self.span(meta), tuple(settings))

    def setting(self, meta: Any, name: Token, value: ast.Expr) -> ast.Setting:
        return ast.Setting(str(name), value, self.span(meta))

    def budget(self, meta: Any, *limits: ast.Limit) -> ast.Budget:
        return ast.Budget(self.span(meta), tuple(limits))

    def limit(self, meta: Any, name: Token, op: Token, value: ast.Expr) -> ast.Limit:
        return ast.Limit(str(name), str(op), value, self.span(meta))

    # ---- expressions ----
    def ifexp(self, meta: Any, body: Any, test: Any, orelse: Any) -> ast.IfExp:
        return ast.IfExp(self.span(meta), test, body, orelse)

    def or_op(self, meta: Any, a: Any, b: Any) -> ast.BoolOp:
        return ast.BoolOp(self.span(meta), "or", a, b)

    def and_op(self, meta: Any, a: Any, b: Any) -> ast.BoolOp:
        return ast.BoolOp(self.span(meta), "and", a, b)

    def not_op(self, meta: Any, a: Any) -> ast.Not:
        return ast.Not(self.span(meta), a)

    def compare_op(self, meta: Any, a: Any, op: Token, b: Any) -> ast.Compare:
        return ast.Compare(self.span(meta), str(op), a, b)

    def chain(self, meta: Any, head: Any, *links: Any) -> ast.Chain:
        return ast.Chain(self.span(meta), head, links)

    def add(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "+", a, b)

    def sub(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "-", a, b)

    def mul(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "*", a, b)

    def div(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "/", a, b)

    def floordiv(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "//", a, b)

    def mod(self, meta: Any, a: Any, b: Any) -> ast.BinOp:
        return ast.BinOp(self.span(meta), "%", a, b)

    def neg(self, meta: Any, a: Any) -> ast.Neg:
        return ast.Neg(self.span(meta), a)

    def call(self, meta: Any, func: Any, args: Any) -> ast.Call:
        return ast.Call(self.span(meta), func, tuple(args or ()))

    def args(self, meta: Any, *args: Any) -> tuple[ast.Arg, ...]:
        out = []
        for a in args:
            if a is None:
                continue
            out.append(a if isinstance(a, ast.Arg) else ast.Arg(None, a, a.span))
        return tuple(out)

    def kwarg(self, meta: Any, name: Token, value: Any) -> ast.Arg:
        return ast.Arg(str(name), value, self.span(meta))

    def attribute(self, meta: Any, value: Any, name: Token) -> ast.Attribute:
        return ast.Attribute(self.span(meta), value, str(name))

    def index(self, meta: Any, value: Any, idx: Any) -> ast.Index:
        return ast.Index(self.span(meta), value, idx)

    def name(self, meta: Any, tok: Token) -> ast.Name:
        return ast.Name(self.tspan(tok), str(tok))

    def input_ref(self, meta: Any) -> ast.InputRef:
        return ast.InputRef(self.span(meta))

    def int_(self, meta: Any, tok: Token) -> ast.Literal:
        return ast.Literal(self.tspan(tok), int(_num(tok)))

    def float_(self, meta: Any, tok: Token) -> ast.Literal:
        return ast.Literal(self.tspan(tok), float(_num(tok)))

    def string(self, meta: Any, tok: Token) -> ast.Literal:
        return ast.Literal(self.tspan(tok), _unquote(tok))

    def true(self, meta: Any) -> ast.Literal:
        return ast.Literal(self.span(meta), True)

    def false(self, meta: Any) -> ast.Literal:
        return ast.Literal(self.span(meta), False)

    def tuple_(self, meta: Any, *items: Any) -> ast.TupleExpr:
        return ast.TupleExpr(self.span(meta), tuple(i for i in items if i is not None))

    def list_(self, meta: Any, *items: Any) -> ast.ListExpr:
        return ast.ListExpr(self.span(meta), tuple(i for i in items if i is not None))


def _unquote(tok: Token) -> str:
    body = str(tok)[1:-1]
    return body.replace('\\"', '"').replace("\\\\", "\\").replace("\\n", "\n")
