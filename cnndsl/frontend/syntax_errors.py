"""Syntax diagnostics: a Lark error turned into a message at the place the user must act.

An unclosed bracket is reported at the bracket that was opened, a token
missing at the end of a line at the end of that line, and known mistakes are
named by example (`SYNTAX_ERRORS`, matched with Lark's `match_examples`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from lark import Token, UnexpectedInput
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

from cnndsl.frontend.grammar import parser, point, token_span
from cnndsl.source import Diagnostic, Span

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
            "error", "E003", f"`{bad_token.value}` closes nothing", token_span(file, bad_token)
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
                token_span(file, opener),
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
        "error", "E005" if not label else "E006", message, token_span(file, bad_token)
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
