"""`cnndsl export SPEC [--load WEIGHTS] -o model.onnx [--opset N] [--layout nhwc|nchw]`.

Writes the network as a standard ONNX file (cnndsl.formats.onnx_export):
checked with onnx's full checker, dynamic batch, NHWC input by default.
Without --load the weights are fresh (seed 0). Needs the `onnx` extra.
"""

from __future__ import annotations

import argparse
import sys

from cnndsl.cli import ranges
from cnndsl.cli.common import add_spec_arguments, load_network
from cnndsl.formats.onnx_export import DEFAULT_OPSET, LAYOUTS, MIN_OPSET, export_onnx
from cnndsl.runtime.executor import ModelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnndsl export`."""
    add_spec_arguments(parser)
    parser.add_argument(
        "--load", metavar="WEIGHTS", help="weights to export (.npz, Keras, PyTorch)"
    )
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--opset",
        type=ranges.whole(MIN_OPSET),
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} or newer (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="nhwc", help="input layout (default nhwc, as the spec)"
    )


def run(args: argparse.Namespace) -> int:
    """Compile, load weights, write the ONNX file; 1 with a message on any problem."""
    net = load_network(args)
    try:
        model = net.build(seed=0)
        if args.load:
            model.load(args.load, strict=True)
        export_onnx(model, args.output, opset=args.opset, layout=args.layout)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {net.name}, {net.total_params:,} parameters, opset {args.opset}")
    return 0
