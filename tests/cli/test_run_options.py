"""Numeric options of every command: a bad value is a usage error (exit 2) before any work."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from cnndsl.cli import build_parser, main

# (command, option, a bad value, what the message says is allowed)
BAD_VALUES = [
    ("run", "--batch-size", "0", "a whole number >= 1"),
    ("run", "--batch-size", "-5", "a whole number >= 1"),
    ("run", "--batch-size", "2.5", "a whole number >= 1"),
    ("run", "--epochs", "-1", "a whole number >= 0"),
    ("run", "--epochs", "two", "a whole number"),
    ("run", "--lr", "0", "a number > 0"),
    ("run", "--lr", "nan", "a finite number"),
    ("run", "--lr", "inf", "a finite number"),
    ("run", "--validation-split", "1", "a fraction >= 0 and < 1"),
    ("run", "--validation-split", "-0.1", "a fraction >= 0 and < 1"),
    ("run", "--test-split", "0", "a fraction > 0 and < 1"),
    ("run", "--test-split", "1.5", "a fraction > 0 and < 1"),
    ("run", "--seed", "-1", "a whole number >= 0"),
    ("run", "--seed", "1.5", "a whole number >= 0"),
    ("run", "--then-epochs", "-2", "a whole number >= 0"),
    ("run", "--then-lr", "-0.01", "a number > 0"),
    ("run", "--top-k", "0", "a whole number >= 1"),
    ("run", "--keep", "0", "a whole number >= 1"),
    ("run", "--checkpoint-every", "-3", "a whole number >= 1"),
    ("run", "--max-memory", "0", "at least 1 byte"),
    ("run", "--max-memory", "-1G", "is not a size"),
    ("compile", "--batch", "0", "a whole number >= 1"),
    ("compile", "--depth", "-1", "a whole number >= 1"),
    ("plot", "--depth", "0", "a whole number >= 1"),
    ("compile", "--max-layers", "0", "a whole number >= 1"),
    ("plot", "--dpi", "0", "a whole number >= 1"),
    ("plot", "--seed", "-4", "a whole number >= 0"),
    ("plot", "--max-channels", "0", "a whole number >= 1"),
    ("weights fetch", "--retries", "-1", "a whole number >= 0"),
    ("weights fetch", "--timeout", "0", "a number > 0"),
]


@pytest.mark.parametrize(("command", "option", "value", "allowed"), BAD_VALUES)
def test_a_bad_number_is_a_usage_error_before_any_work(
    command: str, option: str, value: str, allowed: str, capsys: Any
) -> None:
    argv = [*command.split(), *(["specs/digits.cnn"] if command in ("compile", "plot") else [])]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"{option}={value}"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f"argument {option}: " in captured.err and allowed in captured.err
    assert "Traceback" not in captured.err
    # Nothing ran: no run header, no table, no results.
    assert captured.out == "" and "parameters" not in captured.err


@pytest.mark.parametrize(
    ("argv", "option", "expected"),
    [
        (["run", "--batch-size", "1"], "batch_size", 1),
        (["run", "--epochs", "0"], "epochs", 0),
        (["run", "--lr", "1e-3"], "lr", 0.001),
        (["run", "--validation-split", "0"], "validation_split", 0.0),
        (["run", "--test-split", "0.25"], "test_split", 0.25),
        (["run", "--seed", "0"], "seed", 0),
        (["run", "--max-memory", "512M"], "max_memory", 512 * 2**20),
        (["compile", "x.cnn", "--depth", "1"], "depth", 1),
        (["weights", "fetch", "--retries", "0"], "retries", 0),
    ],
)
def test_a_good_number_is_taken(argv: list[str], option: str, expected: float) -> None:
    args = build_parser().parse_args(argv)
    assert getattr(args, option) == expected
    assert type(getattr(args, option)) is type(expected)


def _numeric_actions(parser: argparse.ArgumentParser, prefix: str = "") -> list[Any]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _numeric_actions(sub, f"{prefix}{name} ")
        elif action.type in (int, float):
            found.append(f"{prefix}{action.option_strings}")
    return found


def test_no_numeric_option_takes_any_int_or_float() -> None:
    # NOTE: a bare type=int takes 0 and -5; each numeric option needs a type that says
    # what it allows (cnndsl.cli.ranges). This catches an option added without one.
    leftovers = _numeric_actions(build_parser())
    assert leftovers == [], leftovers


def test_every_option_in_the_table_exists() -> None:
    parser = build_parser()
    for command, option, _, _ in BAD_VALUES:
        args = command.split()
        sub = parser
        for word in args:
            subparsers = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
            sub = subparsers.choices[word]
        assert option in sub._option_string_actions, (command, option)
