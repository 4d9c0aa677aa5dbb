"""Attribute types: each converts a spec value to its normal form or refuses it.

An op's `attrs` table names one of these per argument (`Int(min=1)`,
`Pair()`, `Padding()`, ...); `Op.bind` calls `convert` and reports
`describe` in its messages.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
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

    def fail(self, name: str, value: Any) -> AttrError:
        return AttrError(f"argument '{name}' must be {self.describe}, not {show(value)}", name)


def show(value: Any) -> str:
    """A value as the spec would write it, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        inner = ", ".join(show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
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
            raise AttrError(
                f"argument '{name}' must be {self.describe}, not {value}"
                + near(["same", "valid"], value),
                name,
            )
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
            text = self.fail(name, value).message
            if isinstance(value, str):
                text += near(self.options, value)
            raise AttrError(text, name)
        return value


def near(options: Sequence[str], value: str) -> str:
    """'; did you mean X?' for a close option, else ''."""
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Anything(AttrType):
    """Any value (used by `input` for its declared shape)."""
