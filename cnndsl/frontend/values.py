"""Compile-time values of the language and the tables that act on them.

Elaboration evaluates every expression to one of these: numbers, strings,
booleans, lists and tuples (plain Python), `Symbol` (a bare option name such
as `same`), `Tensor` (a layer's output with its shape), `LayerRef` (an op or
block configured but not yet applied), and `Config` (a call inside
`train {}`). Also here: arithmetic and comparison tables, the built-in
functions, and the checks of the `train {}` section.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnndsl.frontend import syntax as ast
from cnndsl.ops.attrs import show
from cnndsl.source import Span, error, near_names

MAX_LAYERS = 100_000  # a runaway loop stops here with a clear error; also the list size limit
MAX_STRING = 100_000  # characters in a string built at compile time (`+` in a loop)
MAX_STEPS = 10_000_000  # elaboration's work budget: expressions evaluated and statements run


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
    positional: tuple[Any, ...] = ()  # refused by the setting that reads it: they have no name


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
    try:
        size = len(out)
    except OverflowError:  # more items than a machine word counts
        raise ValueError(
            f"a range of more than 2^63 items exceeds the limit of {MAX_LAYERS}"
        ) from None
    if size > MAX_LAYERS:
        raise ValueError(f"a range of {size} items exceeds the limit of {MAX_LAYERS}")
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
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{show(value)} has no whole-number value")
    if abs(value) > 2**62:
        raise ValueError(f"{show(value)} is too large (more than 2^62)")
    return int(value)


def _round(value: Any) -> int:
    if is_num(value) and isinstance(value, float) and math.isfinite(value):
        return int(round(value))
    return _int(value)


BUILTINS: dict[str, Callable[..., Any]] = {
    "range": _range,
    "len": _len,
    "min": _minmax(min),
    "max": _minmax(max),
    "int": _int,
    "round": _round,
}


def _as_name(value: Any, span: Span | None, what: str) -> str:
    if isinstance(value, LayerRef) and not value.kwargs:
        return value.name
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Config) and not value.kwargs and not value.positional:
        return value.name
    raise error("E073", f"{what} must be a name, not {kind_of(value)}", span)


def _optimizer(value: Any, span: Span | None) -> dict[str, Any]:
    if isinstance(value, Config):
        if value.positional:
            raise error(
                "E073",
                f"optimizer settings are named: {value.name}(lr=0.1), not {value.name}(0.1)",
                span,
            )
        return {"name": value.name, **{k: plain(v) for k, v in value.kwargs}}
    return {"name": _as_name(value, span, "optimizer")}


def _loss(value: Any, span: Span | None) -> str | list[str]:
    # NOTE: a list gives one loss per output, in the order the network returns them.
    if isinstance(value, (list, tuple)):
        if not value:
            raise error("E073", "loss must name a loss, or one per output: [a, b]", span)
        return [_as_name(v, span, "each loss") for v in value]
    return _as_name(value, span, "loss")


def _loss_weights(value: Any, span: Span | None) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(is_num(v) and v >= 0 for v in items):
        raise error(
            "E073",
            f"loss_weights must be numbers >= 0, one per output: [1, 0.3], not {show(value)}",
            span,
        )
    return [float(v) for v in items]


def _metrics(value: Any, span: Span | None) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [_as_name(v, span, "a metric") for v in items]


def _data(value: Any, span: Span | None) -> str:
    source = _as_name(value, span, "data")
    # NOTE: a path is read relative to the spec that names it, as `import` paths are.
    if source == "digits" or span is None or span.file.startswith("<"):
        return source
    path = Path(source).expanduser()
    return source if path.is_absolute() else str(Path(span.file).parent / path)


def _number(
    kind: type, allowed: Callable[[Any], bool], what: str
) -> Callable[[Any, Span | None], Any]:
    def convert(value: Any, span: Span | None) -> Any:
        if not is_num(value) or (kind is int and not is_int(value)) or not allowed(value):
            raise error("E073", f"expected {what}, not {show(value)}", span)
        return kind(value)

    return convert


# NOTE: the section is checked here, where its spans are; cnndsl.training.settings
# turns the checked dict into the typed TrainSettings with one field per entry here.
TRAIN_SETTINGS: dict[str, Callable[[Any, Span | None], Any]] = {
    "loss": _loss,
    "loss_weights": _loss_weights,
    "optimizer": _optimizer,
    "metrics": _metrics,
    "batch": _number(int, lambda v: v >= 1, "a whole number >= 1"),
    "epochs": _number(int, lambda v: v >= 0, "a whole number >= 0"),
    "lr": _number(float, lambda v: v > 0, "a number > 0"),
    "validation_split": _number(float, lambda v: 0 <= v < 1, "a fraction >= 0 and < 1"),
    "seed": _number(int, lambda v: v >= 0, "a whole number >= 0"),
    "data": _data,
}
LR_NAMES = ("lr", "learning_rate")  # how an optimizer's own learning rate may be written


def train_section(
    settings: Sequence[ast.Setting], value_of: Callable[[ast.Expr], Any]
) -> dict[str, Any]:
    """The checked `train {}` section as {name: value}; CnnError at the setting that is wrong.

    Names must be known (E071, checked before the value is computed); each value
    must convert (E073); a setting is given once, and `lr` not next to an
    optimizer that states its own learning rate (E073).
    """
    section: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for s in settings:
        if s.name not in TRAIN_SETTINGS:
            raise error(
                "E071",
                f"unknown train setting '{s.name}'" + near_names(s.name, TRAIN_SETTINGS),
                s.span,
                "note: settings: " + ", ".join(sorted(TRAIN_SETTINGS)),
            )
        if s.name in spans:
            raise error(
                "E073",
                f"train setting '{s.name}' is given twice",
                s.span,
                f"note: first given at {spans[s.name]}",
            )
        section[s.name] = TRAIN_SETTINGS[s.name](value_of(s.value), s.span)
        spans[s.name] = s.span
    stated = [k for k in LR_NAMES if k in section.get("optimizer", {})]
    if "lr" in section and stated:
        raise error(
            "E073",
            f"the learning rate is given twice, as `lr` and as the optimizer's {stated[0]}=",
            spans["lr"],
            f"note: the optimizer is set at {spans['optimizer']}; keep one",
        )
    return section


BUDGET_NAMES = ("params", "trainable_params", "non_trainable_params", "macs", "layers")
