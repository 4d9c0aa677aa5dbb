"""Argument binding and attribute types.

`Signature` matches a call's positional and keyword arguments to names: the
one binder behind `Op.bind`, layer calls, `defaults` statements and block and
network parameters. An op's `attrs` table names one attribute type per
argument (`Int(min=1)`, `Pair()`, `Padding()`, ...); each converts a spec
value to its normal form or refuses it, and `Op.bind` calls `convert` and
reports `describe` in its messages. Refusals are AttrErrors that carry
their diagnostic code.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnndsl.ops.errors import AttrError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class AttrType:
    """Converts and checks one attribute value; `describe` names what it accepts."""

    describe = "a value"

    def convert(self, name: str, value: Any) -> Any:
        return value

    def fail(self, name: str, value: Any, options: Sequence[str] = ()) -> AttrError:
        """The refusal of `value`; a string close to one of `options` gets a did-you-mean."""
        close = closest(options, value) if isinstance(value, str) else None
        return AttrError(
            f"argument '{name}' must be {self.describe}, not {show(value)}{did_you_mean(close)}",
            name,
            suggestion=close,
        )


SHOW_CHARS = 200  # the longest value a message shows; the rest is summarised
SHOW_ITEMS = 8  # items of a list shown before "... (N items)"
SHOW_DEPTH = 4  # list nesting shown before "[...]"


def show(value: Any, limit: int = SHOW_CHARS) -> str:
    """A value as the spec would write it, for messages: at most about `limit` characters."""
    # NOTE: bounded by items, depth and characters alike: a list that holds
    # itself 60 times over has 2^60 leaves, and rendering them all never ends.
    text = _show(value, SHOW_DEPTH, limit)
    return text if len(text) <= limit + 40 else text[:limit] + "..."


def _show(value: Any, depth: int, budget: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) <= budget:
            return value
        return value[: max(budget - 30, 10)] + f"... ({len(value):,} characters)"
    if isinstance(value, (list, tuple)):
        left, right = ("[", "]") if isinstance(value, list) else ("(", ")")
        if depth == 0 and value:
            return f"{left}...{right}"
        parts: list[str] = []
        used = 0
        for item in value[:SHOW_ITEMS]:
            if used > budget:
                break
            parts.append(_show(item, depth - 1, budget - used))
            used += len(parts[-1]) + 2
        if len(parts) < len(value):
            parts.append(f"... ({len(value):,} items)")
        return left + ", ".join(parts) + right
    if isinstance(value, int) and value.bit_length() > 600:
        return f"a number of {value.bit_length():,} bits"  # Python refuses repr past 4300 digits
    return repr(value)


@dataclass(frozen=True)
class Int(AttrType):
    """A whole number at least `min`."""

    min: int | None = None

    @property
    def describe(self) -> str:  # type: ignore[override]
        return "a whole number" + (f" >= {self.min}" if self.min is not None else "")

    def convert(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise self.fail(name, value)
        if self.min is not None and value < self.min:
            raise self.fail(name, value)
        return int(value)


@dataclass(frozen=True)
class Float(AttrType):
    """A real number in [min, max]."""

    min: float | None = None
    max: float | None = None
    max_open: bool = False

    @property
    def describe(self) -> str:  # type: ignore[override]
        lo = "" if self.min is None else f" >= {self.min}"
        hi = "" if self.max is None else f" {'<' if self.max_open else '<='} {self.max}"
        return "a number" + (lo + (" and" if lo and hi else "") + hi)

    def convert(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, value)
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(name, value)
        if self.min is not None and value < self.min:
            raise self.fail(name, value)
        if self.max is not None and (value >= self.max if self.max_open else value > self.max):
            raise self.fail(name, value)
        return value


@dataclass(frozen=True)
class Bool(AttrType):
    """true or false."""

    describe = "true or false"

    def convert(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, value)
        return value


@dataclass(frozen=True)
class Pair(AttrType):
    """An int n (meaning (n, n)) or a pair (h, w) of ints >= min."""

    min: int = 1

    @property
    def describe(self) -> str:  # type: ignore[override]
        return f"a whole number >= {self.min} or a pair (h, w) of them"

    def convert(self, name: str, value: Any) -> tuple[int, int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < self.min for v in value)
        ):
            raise self.fail(name, value)
        return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Padding(AttrType):
    """`same`, `valid`, or explicit zero padding per side: n or (h, w)."""

    describe = "same, valid, a whole number >= 0 or a pair (h, w) of them"

    def convert(self, name: str, value: Any) -> str | tuple[int, int]:
        if isinstance(value, str):
            if value in ("same", "valid"):
                return value
            raise self.fail(name, value, ("same", "valid"))
        return Pair(min=0).convert(name, value)


@dataclass(frozen=True)
class Choice(AttrType):
    """One of a fixed set of names."""

    options: tuple[str, ...] = ()

    @property
    def describe(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(self.options)

    def convert(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise self.fail(name, value, self.options)
        return value


def closest(options: Sequence[str], value: str) -> str | None:
    """The option closest to a mistyped `value`, if any is close."""
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(close: str | None) -> str:
    """'; did you mean X?' for a close option, else ''."""
    return f"; did you mean '{close}'?" if close else ""


@dataclass(frozen=True)
class Anything(AttrType):
    """Any value (used by `input` for its declared shape)."""


# ---- Binding a call's arguments to names ----


@dataclass(frozen=True)
class Signature:
    """The names a call's arguments may take, and which of them positional arguments fill.

    Matching arguments to names is the same job for an op (`Op.bind`), a layer
    call, a `defaults` statement and a block's or network's parameters; each
    binds through here and adds only its own steps (converting op attributes,
    evaluating parameter defaults). Errors carry their diagnostic code.
    """

    owner: str  # the callee as messages name it: "conv", "block 'unit'"
    names: tuple[str, ...]  # every name an argument may take
    positional: tuple[str, ...] = ()  # the names positional arguments fill, in order
    noun: str = "argument"  # what messages call one: "argument" or "parameter"

    def bind(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The arguments by name: positional `args` named in order, then keyword ones.

        Raises AttrError for more positional arguments than positional names
        (E012), a name not in `names` (E011, naming the closest), and a name
        given both by position and by keyword (E016).
        """
        if len(args) > len(self.positional):
            most = len(self.positional)
            raise AttrError(
                f"{self.owner} takes at most {most} positional argument{'s' if most != 1 else ''}"
                f" ({', '.join(self.positional) or 'none'}), got {len(args)}"
            )
        values = dict(zip(self.positional, args, strict=False))
        for name, value in (kwargs or {}).items():
            if name not in self.names:
                close = closest(self.names, name)
                raise AttrError(
                    f"{self.owner} has no {self.noun} '{name}'{did_you_mean(close)}",
                    name,
                    code="E011",
                    notes=(f"note: {self.owner} takes: {', '.join(self.names) or 'nothing'}",),
                    suggestion=close,
                )
            if name in values:
                raise AttrError(
                    f"{self.noun} '{name}' given twice (also positionally)", name, code="E016"
                )
            values[name] = value
        return values

    def missing(self, name: str, wanted: str = "") -> AttrError:
        """The refusal of a call that gives no value for the required `name` (E012)."""
        return AttrError(
            f"{self.owner} needs {self.noun} '{name}'" + (f" ({wanted})" if wanted else ""), name
        )
