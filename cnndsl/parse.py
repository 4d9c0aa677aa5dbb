"""Parsing: .cnn text -> AST (cnndsl.syntax).

The grammar is grammars/cnn.lark (inside the wheel: cnndsl/grammars/). Lark
parses with LALR and keeps positions; `ToAst` runs after `parse()` with
`@v_args(meta=True)` so every AST node gets a Span. Syntax errors become a
CnnError whose diagnostic points where the user must act: an unclosed
bracket at the bracket that was opened, a token missing at the end of a line
at the end of that line, and known mistakes named by `SYNTAX_ERRORS`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedInput, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError

from cnndsl import syntax as ast
from cnndsl.source import CnnError, Diagnostic, Span

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """A data folder shipped with the package (`grammars`, `specs`).

    Inside an installed wheel it sits in the package; in a checkout (or an
    editable install) it is the top-level folder beside the package.
    """
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


@cache
def parser() -> Lark:
    """The LALR parser, built once."""
    return Lark.open(
        "cnn.lark",
        rel_to=str(resource_path("grammars") / "cnn.lark"),
        parser="lalr",
        # The basic lexer reserves keywords everywhere (the contextual one would
        # read `input` as a NAME where no keyword fits) and reports a misplaced
        # `->` as a token, not as an unknown character.
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
    )


# Known mistakes, named by example (Lark's match_examples compares parser states).
SYNTAX_ERRORS: dict[str, list[str]] = {
    "a conditional expression at statement level needs parentheses: x = (a if c else b)": [
        "network n() { x = a if c else b }",
        "block b() { return a if c else b }",
    ],
    "`return` needs a value": [
        "network n() { return }",
        "block b() { return }",
    ],
    "expected `=`: a statement starts with `NAME =` (or return, input, if, for, assert,"
    " defaults, train, budget); a bare expression does nothing, and layers in one chain are"
    " joined with `->`": [
        "network n() { x = a b }",
        "network n() { x = a conv(3) }",
        "network n() { x = a -> conv(3) relu }",
        "network n() { a -> b }",
        "network n() { conv(3) }",
    ],
    "a statement cannot start with a value: write `NAME = value` or `return value`": [
        "network n() { 3 }",
        "network n() { (a) }",
        "network n() { [a] }",
    ],
    "missing `{` to open the body": [
        "network n() x = 1 }",
        "block b() return 1 }",
        "network n() { if a x = 1 } }",
        "network n() { for i in a x = 1 } }",
    ],
    "a layer or value is missing after `->`": [
        "network n() { x = a -> }",
        "network n() { x = a -> -> b }",
        "network n() { x = a -> ) }",
    ],
    "an argument is missing after `,`": [
        "network n() { x = conv(3, , 1) }",
    ],
    "a value is missing after `=`": [
        "network n() { x = }",
        "network n() { x = conv(a=) }",
        "network n() { x = conv(a=, b=1) }",
    ],
    "keyword used as a name (keywords are reserved: network block input return if else"
    " for in assert import defaults train budget and or not true false)": [
        "network n() { train = 1 }",
        "network input() { }",
        "block for() { }",
        "network n(input) { }",
    ],
    "`input` declares a network input as `input NAME: [h, w, c]`": [
        "network n() { input: [1, 2, 3] }",
        "network n() { input x [1, 2] }",
    ],
    "only `import`, `defaults`, `block` and `network` may stand at the top of a file": [
        "x = 1",
        "return x",
        "input x: [1]",
    ],
}

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}


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


def syntax_diagnostic(text: str, file: str, exc: UnexpectedInput) -> Diagnostic:
    """Turn a Lark error into a diagnostic at the place the user must act."""
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else "?"
        where = point(file, exc.line, exc.column)
        hint = "; strings use double quotes" if ch == "'" else ""
        return Diagnostic("error", "E001", f"unexpected character {ch!r}{hint}", where)

    tokens = list(_tokens(text))
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        bad_pos = len(text)
        bad_token: Token | None = None
    else:
        assert isinstance(exc, UnexpectedToken)
        bad_token = exc.token
        bad_pos = bad_token.start_pos or 0

    before = [t for t in tokens if (t.start_pos or 0) < bad_pos]
    opened = _open_brackets(before)
    expected = _expected(exc)

    # An unclosed bracket: report it where it was opened. That is the case when
    # the file ends, a different closer comes, or the bracket's own closer is
    # expected but the next token sits on a later line than the bracket.
    if (
        bad_token is not None
        and bad_token.value in CLOSERS
        and all(o.value != CLOSERS[bad_token.value] for o in opened)
    ):
        return Diagnostic(
            "error", "E003", f"`{bad_token.value}` closes nothing", _token_span(file, bad_token)
        )
    if opened:
        opener = opened[-1]
        want = OPENERS[opener.value]
        wrong_closer = (
            bad_token is not None
            and bad_token.value in CLOSERS
            and (CLOSERS[bad_token.value] != opener.value)
        )
        moved_on = (
            bad_token is not None
            and f"`{want}`" in expected
            and (bad_token.line or 0) > (opener.line or 0)
            and want != "}"
        )
        if bad_token is None or wrong_closer or moved_on:
            at = f"{opener.line}:{opener.column}"
            note = (
                "note: the file ends before it is closed"
                if bad_token is None
                else f"note: {_describe(bad_token)} at {bad_token.line}:{bad_token.column}"
                " comes first"
            )
            return Diagnostic(
                "error",
                "E002",
                f"unclosed `{opener.value}` opened at {at}: expected `{want}`",
                _token_span(file, opener),
                (note,),
            )

    label = _match_example(exc, text)
    message = label or (
        f"unexpected {_describe(bad_token)}" + (f"; expected {expected}" if expected else "")
    )
    # A token missing at the end of a line: point at the end of that line.
    prev = before[-1] if before else None
    if prev is not None and (bad_token is None or bad_token.line != prev.end_line):
        line, col = prev.end_line or 1, prev.end_column or 1
        if not label:
            message = (
                f"expected {expected} after {_describe(prev)} at the end of the line"
                if expected
                else f"unexpected end of line after {_describe(prev)}"
            )
        return Diagnostic("error", "E004", message, Span(file, line, col, line, col + 1))
    if bad_token is None:
        line = text.count("\n") + 1
        return Diagnostic("error", "E004", message, point(file, line, 1))
    return Diagnostic(
        "error", "E005" if not label else "E006", message, _token_span(file, bad_token)
    )


def point(file: str, line: int, col: int) -> Span:
    """A one-character span."""
    return Span(file, line, col, line, col + 1)


def _token_span(file: str, tok: Token) -> Span:
    return Span(
        file,
        tok.line or 1,
        tok.column or 1,
        tok.end_line or tok.line or 1,
        tok.end_column or (tok.column or 1) + 1,
    )


def _tokens(text: str) -> Any:
    """Lex the whole text, stopping quietly at the first bad character."""
    try:
        yield from parser().lex(text)
    except UnexpectedInput:
        return


def _open_brackets(tokens: list[Token]) -> list[Token]:
    stack: list[Token] = []
    for tok in tokens:
        if tok.value in OPENERS and tok.type != "STRING":
            stack.append(tok)
        elif (
            tok.value in CLOSERS
            and tok.type != "STRING"
            and stack
            and OPENERS[stack[-1].value] == tok.value
        ):
            stack.pop()
    return stack


def _describe(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {tok.value}"
    if tok.type == "STRING":
        return f"string {tok.value}"
    return f"`{tok.value}`"


def _expected(exc: UnexpectedInput) -> str:
    names = sorted(getattr(exc, "expected", None) or getattr(exc, "accepts", None) or [])
    shown = []
    for name in names:
        try:
            pattern = parser().get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type == "str":
            shown.append(f"`{pattern.value}`")
        elif name in ("NAME", "INT", "FLOAT", "STRING"):
            shown.append(
                {"NAME": "a name", "INT": "a number", "FLOAT": "a number", "STRING": "a string"}[
                    name
                ]
            )
        elif name == "COMPARE":
            shown.append("a comparison")
    shown = sorted(set(shown))
    if not shown:
        return ""
    if len(shown) > 6:
        return "a value or an operator" if "a name" in shown else "one of " + ", ".join(shown[:6])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def _match_example(exc: UnexpectedInput, text: str) -> str | None:
    """The SYNTAX_ERRORS label whose example fails in the same parser state, if any.

    Like Lark's match_examples, but comparing only the LALR state reached
    (not the depth of the stack), so an example needs no surrounding context.
    """
    state = getattr(exc, "state", None)
    if state is None:
        return None
    fallback = None
    for label, position, token_type in _example_states():
        if position == state.position:
            if token_type == getattr(getattr(exc, "token", None), "type", None):
                return label
            fallback = fallback or label
    return fallback


@cache
def _example_states() -> tuple[tuple[str, Any, str | None], ...]:
    out = []
    for label, examples in SYNTAX_ERRORS.items():
        for example in examples:
            try:
                parser().parse(example)
            except UnexpectedInput as e:
                state = getattr(e, "state", None)
                if state is not None:
                    token = getattr(e, "token", None)
                    out.append((label, state.position, getattr(token, "type", None)))
                continue
            raise AssertionError(f"syntax error example parses: {example!r}")
    return tuple(out)


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
        return _token_span(self.file, tok)

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
