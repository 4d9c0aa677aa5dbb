"""argparse types for the numeric options of every command.

Each type turns an option's text into its value or raises
argparse.ArgumentTypeError saying what is allowed, so argparse reports a bad
value as a usage error (exit code 2) before any work starts:

    cnndsl run: error: argument --batch-size: expected a whole number >= 1, not 0

Training options (--epochs, --batch-size, --lr, --validation-split, --seed)
follow the rules of the spec's train section (cnndsl.frontend.values), so a
flag and the setting it overrides accept the same values.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from cnndsl.frontend.values import TRAIN_SETTINGS
from cnndsl.source import CnnError
from cnndsl.training.guards import parse_size


def _parse(text: str, kind: type) -> float:
    """The text as a finite number of `kind` (a whole number for int)."""
    try:
        value = int(text) if kind is int else float(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, not '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, not '{text}'")
    return value


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number >= minimum."""

    def convert(text: str) -> int:
        value = int(_parse(text, int))
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, not {value}")
        return value

    convert.__name__ = f"whole number >= {minimum}"  # argparse names the type in its errors
    return convert


def positive(text: str) -> float:
    """A finite number > 0 (seconds, rates)."""
    value = _parse(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {text}")
    return value


def fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (a test split)."""
    value = _parse(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction > 0 and < 1, not {text}")
    return value


def setting(name: str) -> Callable[[str], int | float]:
    """A value of the train setting `name`, under the spec's rule for it."""
    rule = TRAIN_SETTINGS[name]

    def convert(text: str) -> int | float:
        value: Any = text  # NOTE: text that is no number is refused by the rule, which says why
        for kind in (int, float):
            try:
                value = _parse(text, kind)
                break
            except argparse.ArgumentTypeError as e:
                if "finite" in str(e):
                    raise
        try:
            return rule(value, None)  # type: ignore[no-any-return]
        except CnnError as e:
            raise argparse.ArgumentTypeError(e.diagnostics[0].message) from None

    convert.__name__ = name
    return convert


def size(text: str) -> int:
    """A memory size such as 8G, 512M or 1.5GiB, in bytes; at least one byte."""
    try:
        value = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1 byte, not '{text}'")
    return value


__all__ = ["fraction", "positive", "setting", "size", "whole"]
