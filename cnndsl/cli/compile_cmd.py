"""cnndsl compile: check a spec and show its layers, shapes, parameters, MACs and memory.

    cnndsl compile specs/fashion_mnist.cnn            # the summary table
    cnndsl compile zoo.resnet50 --depth 1              # one row per top-level block
    cnndsl compile zoo.resnet34 --set size=64 classes=5 --batch 32
    cnndsl compile spec.cnn --format json              # schema: docs/json.md
    cnndsl compile blocks.cnn --block inception --input-shape 28,28,192 --set c1=64 ...

Errors are printed as file:line:col: error[CODE]: message, with the source
line and a caret (codes in docs/diagnostics.md); the summary up to the failing
layer is printed first. Exit codes: 0 compiled, 1 diagnostics, 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys

from cnndsl.cli import ranges
from cnndsl.cli.common import add_spec_arguments, compile_from_args, report
from cnndsl.compiler import MAX_BATCH
from cnndsl.ir import dump
from cnndsl.passes import count_macs, count_params, receptive_fields
from cnndsl.source import CnnError
from cnndsl.summary import render_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnndsl compile`."""
    add_spec_arguments(parser)
    parser.add_argument(
        "--batch",
        type=_batch,
        default=1,
        metavar="B",
        help=f"batch size for the memory estimate (default 1, at most {MAX_BATCH:,})",
    )
    parser.add_argument(
        "--depth",
        type=ranges.whole(1),
        default=None,
        metavar="N",
        help="collapse block instances nested N deep or more into one row",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "ir"),
        default="table",
        help="table (default), json (schema in docs/json.md) or ir (one line per layer)",
    )
    parser.add_argument(
        "--max-layers",
        type=ranges.whole(1),
        default=None,
        metavar="N",
        help="refuse networks with more than N layers (default 100000)",
    )


def _batch(text: str) -> int:
    """--batch: bounded before any work, since memory plans grow with the batch."""
    value = ranges.whole(1)(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(
            f"expected a batch of at most {MAX_BATCH:,} (memory plans grow with it), not {value}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    """Compile and print; 0 on success, 1 on diagnostics."""
    try:
        net = compile_from_args(args)
    except CnnError as exc:
        if exc.partial is not None and len(exc.partial) and args.format == "table":
            partial = receptive_fields(count_macs(count_params(exc.partial)))
            where = exc.diagnostics[0].span
            print(
                render_table(
                    partial,
                    depth=args.depth,
                    batch=args.batch,
                    failed_at=str(where) if where else "unknown place",
                )
            )
            print()
        report(exc)
        return 1
    for warning in net.warnings:
        print(warning.render(net.sources), file=sys.stderr)
    if args.format == "json":
        json.dump(net.to_json(depth=args.depth, batch=args.batch), sys.stdout, indent=1)
        print()
    elif args.format == "ir":
        print(dump(net.graph))
    else:
        print(net.summary(depth=args.depth, batch=args.batch))
    return 0
