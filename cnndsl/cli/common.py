"""Arguments and error reporting shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cnndsl.compiler import Network, compile, compile_block
from cnndsl.frontend.grammar import resource_path
from cnndsl.source import CnnError

DEFAULT_SPEC = "digits.cnn"


def add_spec_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """SPEC, --network, --set k=v (and --block/--input-shape for block-only files)."""
    if optional:
        parser.add_argument(
            "spec",
            nargs="?",
            default=None,
            help="a .cnn file, or zoo.NAME for a shipped spec (default: the shipped digits CNN)",
        )
    else:
        parser.add_argument("spec", help="a .cnn file, or zoo.NAME for a shipped spec")
    add_network_arguments(parser)
    parser.add_argument(
        "--block",
        metavar="NAME",
        help="compile one block instead of a network (needs --input-shape)",
    )
    parser.add_argument(
        "--input-shape", metavar="H,W,C", help="input shape for --block, e.g. 28,28,192"
    )


def add_network_arguments(parser: argparse.ArgumentParser, example: str = "size=64") -> None:
    """--network NAME and --set k=v: which network of the spec, with which parameters."""
    parser.add_argument(
        "--network", metavar="NAME", help="which network to compile when the file has several"
    )
    parser.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="K=V",
        help=f"override a network parameter, e.g. --set {example} (repeatable; also --set a=1 b=2)",
        nargs="+",
    )


def spec_path(spec: str | None) -> str | Path:
    """A SPEC argument as a path: zoo.NAME names a shipped spec.

    NOTE: a Path, so that cnndsl.compile reads any file named on the command
    line (spec.txt, /dev/null) rather than taking a name without .cnn for spec text.
    """
    if spec is None:
        return resource_path("specs") / DEFAULT_SPEC
    return spec if spec.startswith("zoo.") else Path(spec)  # compile reads zoo.NAME itself


def parse_value(text: str) -> Any:
    """A --set value: int, float, true/false, a list/tuple of those, else a name."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text.replace("_", ""))
        except ValueError:
            pass
    if text[:1] in "[(" and text[-1:] in "])":
        items = [parse_value(t) for t in text[1:-1].split(",") if t.strip()]
        return items if text[0] == "[" else tuple(items)
    return text


def parse_params(pairs: list[Any]) -> dict[str, Any]:
    """--set k=v pairs to a dict; SystemExit(2) on malformed ones."""
    flat = [p for group in pairs for p in (group if isinstance(group, list) else [group])]
    out: dict[str, Any] = {}
    for pair in flat:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            print(f"error: --set expects NAME=VALUE, got '{pair}'", file=sys.stderr)
            raise SystemExit(2)
        out[key] = parse_value(value)
    return out


def report(exc: CnnError, stream: Any = None) -> None:
    """Print every diagnostic of an error with source lines and carets."""
    stream = stream or sys.stderr
    print(str(exc), file=stream)
    errors = sum(1 for d in exc.diagnostics if d.severity == "error")
    print(f"{errors} error{'s' if errors != 1 else ''}", file=stream)


def load_network(args: argparse.Namespace) -> Network:
    """Compile the spec named by the arguments; print diagnostics and exit 1 on errors."""
    try:
        return compile_from_args(args)
    except CnnError as exc:
        report(exc)
        raise SystemExit(1) from None


def compile_from_args(args: argparse.Namespace) -> Network:
    """Compile per SPEC/--network/--set/--block; raises CnnError."""
    path = spec_path(getattr(args, "spec", None))
    params = parse_params(getattr(args, "params", []) or [])
    block = getattr(args, "block", None)
    if block:
        shape_text = getattr(args, "input_shape", None)
        if not shape_text:
            print("error: --block needs --input-shape H,W,C", file=sys.stderr)
            raise SystemExit(2)
        try:
            shape = tuple(int(s) for s in shape_text.split(","))
        except ValueError:
            print(
                f"error: --input-shape expects numbers like 28,28,3, got '{shape_text}'",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        return compile_block(path, block, shape, **params)
    return compile(path, getattr(args, "network", None), **params)
