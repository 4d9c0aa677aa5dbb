"""The AST of a .cnn file: frozen dataclasses, each with the `span` it came from.

Built by cnndsl.frontend.parse from the Lark tree; read by cnndsl.frontend.elaborate. Class
names are the grammar's rule names in CamelCase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnndsl.source import Span

# ---- Expressions ----


@dataclass(frozen=True)
class Expr:
    span: Span


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class InputRef(Expr):
    """`input` inside a block: the tensor the block is applied to."""


@dataclass(frozen=True)
class Literal(Expr):
    value: Any  # int | float | str | bool


@dataclass(frozen=True)
class TupleExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # + - * / // %
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Chain(Expr):
    """`head -> link -> link`: apply each layer in turn, starting from the tensor `head`."""

    head: Expr
    links: tuple[Expr, ...]


@dataclass(frozen=True)
class Compare(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class BoolOp(Expr):
    op: str  # and | or
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Not(Expr):
    value: Expr


@dataclass(frozen=True)
class Neg(Expr):
    value: Expr


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for positional
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call(Expr):
    func: Expr
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Attribute(Expr):
    value: Expr
    attr: str


@dataclass(frozen=True)
class Index(Expr):
    value: Expr
    index: Expr


@dataclass(frozen=True)
class IfExp(Expr):
    test: Expr
    body: Expr
    orelse: Expr


# ---- Statements ----


@dataclass(frozen=True)
class Stmt:
    span: Span


@dataclass(frozen=True)
class Assign(Stmt):
    name: str
    value: Expr


@dataclass(frozen=True)
class InputDecl(Stmt):
    name: str
    shape: Expr


@dataclass(frozen=True)
class Return(Stmt):
    value: Expr


@dataclass(frozen=True)
class If(Stmt):
    test: Expr
    body: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@dataclass(frozen=True)
class For(Stmt):
    var: str
    iterable: Expr
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Assert(Stmt):
    test: Expr
    message: Expr | None


@dataclass(frozen=True)
class Defaults(Stmt):
    op: str
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Setting:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Train(Stmt):
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Limit:
    name: str
    op: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Budget(Stmt):
    limits: tuple[Limit, ...]


# ---- Definitions ----


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Definition:
    """A `block` or a `network`."""

    kind: str  # "block" | "network"
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span  # the header: keyword through name
    file: str


@dataclass(frozen=True)
class Import:
    target: str  # a path ("blocks.cnn") or a module ("zoo.xception")
    is_path: bool
    span: Span


@dataclass(frozen=True)
class Module:
    """One parsed file."""

    file: str
    imports: tuple[Import, ...]
    defaults: tuple[Defaults, ...]
    definitions: tuple[Definition, ...]
