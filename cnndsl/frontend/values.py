"""Compile-time values of the language and the tables that act on them.

Elaboration evaluates every expression to one of these: numbers, strings,
booleans, lists and tuples (plain Python), `Symbol` (a bare option name such
as `same`), `Tensor` (a layer's output with its shape), `LayerRef` (an op or
block configured but not yet applied), and `Config` (a call inside
`train {}`). Also here: arithmetic and comparison tables, the built-in
functions, and the conversions of `train {}` settings.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnndsl.ops.attrs import show
from cnndsl.source import Span, error

MAX_LAYERS = 100_000  # a runaway loop stops here with a clear error


class Symbol(str):
    """A bare name that is bound to nothing: an option such as `same` or `relu`."""


@dataclass(frozen=True)
class Tensor:
    """A value flowing through the network: the layer that made it, and its shape."""

    path: str
    shape: tuple[int, ...]
    span: Span | None
    origin: str  # e.g. "conv with stride=2"


@dataclass(frozen=True)
class LayerRef:
    """An op or block configured with arguments, not yet applied (`conv(64, 3)`)."""

    kind: str  # "op" | "block"
    name: str
    kwargs: tuple[tuple[str, Any], ...]
    span: Span
    repeat: int = 1
    label: str | None = None  # name= given by the user
    trainable: bool = True
    arg_spans: tuple[tuple[str, Span], ...] = ()  # where each explicit argument was written


@dataclass(frozen=True)
class Config:
    """A call to a name that is neither op nor block, inside `train {}`: `sgd(lr=0.1)`."""

    name: str
    kwargs: tuple[tuple[str, Any], ...]


def kind_of(value: Any) -> str:
    """How a value's type is named in messages."""
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, LayerRef):
        return f"layer {value.name}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Symbol):
        return f"name {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, tuple):
        return "tuple"
    return type(value).__name__


# ---- Tables ----


def is_num(v: Any) -> bool:
    """A number of the language (bool excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v: Any) -> bool:
    """A whole number of the language (bool excluded)."""
    return isinstance(v, int) and not isinstance(v, bool)


def valid_label(label: str) -> bool:
    """Whether a name= label can be a path component."""
    return bool(label) and all(c.isalnum() or c in "_-." for c in label)


def plain(value: Any) -> Any:
    """A spec value as an op argument: layer refs of bare activations become their names."""
    if isinstance(value, LayerRef) and value.kind == "op" and not value.kwargs:
        return value.name
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, list):
        return tuple(plain(v) for v in value)
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
TENSOR_ATTRS = ("height", "width", "channels", "shape")


def _range(*args: Any) -> list[int]:
    if not all(is_int(a) for a in args) or not 1 <= len(args) <= 3:
        raise TypeError("takes 1 to 3 whole numbers")
    out = range(*args)
    if len(out) > MAX_LAYERS:
        raise ValueError(f"a range of {len(out)} items exceeds the limit of {MAX_LAYERS}")
    return list(out)


def _len(value: Any) -> int:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"needs a list, not {kind_of(value)}")
    return len(value)


def _minmax(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        items = args[0] if len(args) == 1 and isinstance(args[0], list) else args
        if not items or not all(is_num(a) for a in items):
            raise TypeError("needs numbers")
        return fn(items)

    return call


def _int(value: Any) -> int:
    if not is_num(value):
        raise TypeError(f"needs a number, not {kind_of(value)}")
    return int(value)


BUILTINS: dict[str, Callable[..., Any]] = {
    "range": _range,
    "len": _len,
    "min": _minmax(min),
    "max": _minmax(max),
    "int": _int,
    "round": lambda v: int(round(v)) if is_num(v) else _int(v),
}


def _as_name(value: Any, span: Span, what: str) -> str:
    if isinstance(value, LayerRef) and not value.kwargs:
        return value.name
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Config) and not value.kwargs:
        return value.name
    raise error("E073", f"{what} must be a name, not {kind_of(value)}", span)


def _optimizer(value: Any, span: Span) -> dict[str, Any]:
    if isinstance(value, Config):
        return {"name": value.name, **{k: plain(v) for k, v in value.kwargs}}
    return {"name": _as_name(value, span, "optimizer")}


def _metrics(value: Any, span: Span) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [_as_name(v, span, "a metric") for v in items]


def _number(kind: type) -> Callable[[Any, Span], Any]:
    def convert(value: Any, span: Span) -> Any:
        if not is_num(value) or (kind is int and not is_int(value)) or value < 0:
            raise error(
                "E073",
                f"expected a {'whole ' if kind is int else ''}number >= 0, not {show(value)}",
                span,
            )
        return kind(value)

    return convert


TRAIN_SETTINGS: dict[str, Callable[[Any, Span], Any]] = {
    "loss": lambda v, s: _as_name(v, s, "loss"),
    "optimizer": _optimizer,
    "metrics": _metrics,
    "batch": _number(int),
    "epochs": _number(int),
    "lr": _number(float),
    "validation_split": _number(float),
    "seed": _number(int),
    "data": lambda v, s: _as_name(v, s, "data"),
}
BUDGET_NAMES = ("params", "trainable_params", "non_trainable_params", "macs", "layers")
