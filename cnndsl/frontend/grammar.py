"""The grammar: grammars/cnn.lark loaded once as an LALR parser, and token positions.

Inside an installed wheel the grammar sits in the package (cnndsl/grammars/);
in a checkout it is the top-level folder beside the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lark import Lark, Token

from cnndsl.source import Span

PACKAGE_DIR = Path(__file__).resolve().parent.parent


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


def point(file: str, line: int, col: int) -> Span:
    """A one-character span."""
    return Span(file, line, col, line, col + 1)


def token_span(file: str, tok: Token) -> Span:
    return Span(
        file,
        tok.line or 1,
        tok.column or 1,
        tok.end_line or tok.line or 1,
        tok.end_column or (tok.column or 1) + 1,
    )
