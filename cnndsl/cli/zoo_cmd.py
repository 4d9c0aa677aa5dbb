"""`cnndsl zoo`: the shipped model specs, with input shape, parameters and MACs.

Every specs/NAME.cnn that defines a network is listed (import it in a spec
with `import zoo.NAME`, compile it with `cnndsl compile zoo.NAME`); files
that only define blocks are named under the table as block libraries.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnndsl.compiler import compile, load
from cnndsl.frontend.grammar import resource_path
from cnndsl.source import CnnError
from cnndsl.summary import human

SCHEMA = "cnndsl.zoo/1"
TITLE_WIDTH = 48


@dataclass
class Entry:
    """One shipped network, compiled with its default parameters."""

    name: str
    title: str
    spec: str
    file: str
    input_shape: list[int] = field(default_factory=list)
    output_shape: list[int] = field(default_factory=list)
    params: int = 0
    trainable_params: int = 0
    non_trainable_params: int = 0
    macs: int = 0
    layers: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnndsl zoo`."""
    parser.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="list only models whose name matches this glob, e.g. 'resnet*'",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or json (schema cnndsl.zoo/1)",
    )


def title_of(text: str) -> str:
    """A spec's title: its first comment line up to the first colon ('ResNet-50')."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("#"):
            return ""
        return line.lstrip("#").strip().split(":", 1)[0].strip()
    return ""


def scan(folder: Path | None = None, pattern: str = "*") -> tuple[list[Entry], list[str]]:
    """Compile every network of every spec in the folder; (entries, block-only specs).

    Only networks whose name or spec file matches the glob `pattern` are compiled.
    """
    folder = folder or resource_path("specs")
    entries: list[Entry] = []
    libraries: list[str] = []
    for path in sorted(folder.glob("*.cnn"), key=natural):
        spec = f"zoo.{path.stem}"
        try:
            text = path.read_text(encoding="utf-8")
            _, scope = load(path)
        except (OSError, UnicodeDecodeError, CnnError) as exc:
            if fnmatch.fnmatchcase(path.stem, pattern):
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                entries.append(Entry(path.stem, "", spec, str(path), error=message))
            continue
        networks = [d.name for d in scope.module.definitions if d.kind == "network"]
        if not networks:
            if fnmatch.fnmatchcase(path.stem, pattern):
                libraries.append(path.stem)
            continue
        for name in networks:
            if not (fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(path.stem, pattern)):
                continue
            entry = Entry(name, title_of(text), spec, str(path))
            try:
                net = compile(path, name if len(networks) > 1 else None)
            except CnnError as exc:
                entry.error = str(exc).splitlines()[0]
            else:
                totals = net.totals
                entry.input_shape = list(net.input_shape)
                entry.output_shape = list(net.output_shape)
                entry.params = totals["params"]
                entry.trainable_params = totals["trainable_params"]
                entry.non_trainable_params = totals["non_trainable_params"]
                entry.macs = totals["macs"]
                entry.layers = totals["layers"]
                entry.parameters = {k: _plain(v) for k, v in net.params.items()}
            entries.append(entry)
    return entries, libraries


def natural(path: Path) -> list[Any]:
    """Sort key that puts resnet18 before resnet50 before resnet101."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.stem)]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


def render(entries: list[Entry], libraries: list[str]) -> str:
    """The listing as a text table (just the libraries when no network is listed)."""
    if not entries:
        return "block libraries: " + ", ".join(f"zoo.{n}" for n in libraries)
    head = ("Model", "Spec", "Input", "Params", "Trainable", "MACs", "Title")
    rows = [head]
    for e in entries:
        if e.error:
            rows.append((e.name, e.spec, "-", "-", "-", "-", f"error: {e.error}"))
            continue
        rows.append(
            (
                e.name,
                e.spec,
                "[" + ", ".join(map(str, e.input_shape)) + "]",
                f"{e.params:,}",
                f"{e.trainable_params:,}",
                human(e.macs),
                e.title if len(e.title) <= TITLE_WIDTH else e.title[: TITLE_WIDTH - 1] + "…",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    right = {3, 4, 5}

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    body = [fmt(r) for r in rows]
    rule = "─" * max(len(line) for line in body)
    lines = [body[0], rule, *body[1:], rule]
    shown = sum(1 for e in entries if not e.error)
    lines.append(
        f"{shown} model{'s' if shown != 1 else ''}; compile one with"
        " `cnndsl compile zoo.NAME`, import it in a spec with `import zoo.NAME`"
    )
    if libraries:
        lines.append("block libraries: " + ", ".join(f"zoo.{n}" for n in libraries))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List the zoo; 0 on success, 1 if a shipped spec fails to compile."""
    pattern = args.pattern or "*"
    entries, libraries = scan(pattern=pattern)
    if not entries and not libraries:
        print(f"error: no shipped model matches '{pattern}'", file=sys.stderr)
        return 1
    if args.format == "json":
        doc = {
            "schema": SCHEMA,
            "models": [asdict(e) for e in entries],
            "libraries": [f"zoo.{n}" for n in libraries],
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(render(entries, libraries))
    return 1 if any(e.error for e in entries) else 0
