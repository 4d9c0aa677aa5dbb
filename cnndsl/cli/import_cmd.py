"""`cnndsl import model.onnx -o model.cnn`: an ONNX CNN as a readable spec and its weights.

Writes the spec (chains, named branches, repeated units as blocks) and the
weights beside it (`model.npz`, keyed by layer path), ready for `cnndsl run
model.cnn --load model.npz`. Needs the `onnx` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnndsl.formats.onnx_spec import import_onnx
from cnndsl.formats.weights import write_npz
from cnndsl.runtime.executor import ModelError
from cnndsl.source import CnnError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnndsl import`."""
    parser.add_argument("model", help="the .onnx file to read")
    parser.add_argument("-o", "--output", required=True, help="the .cnn file to write")


def run(args: argparse.Namespace) -> int:
    """Read the ONNX file, write SPEC and SPEC.npz; 1 with a message on any problem."""
    out = Path(args.output)
    weights_path = out.with_suffix(".npz")
    try:
        text, weights, net = import_onnx(args.model)
        out.write_text(text, encoding="utf-8")
        write_npz(weights_path, weights)
    except (ModelError, CnnError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {out} or {weights_path}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {weights_path}: {net.name}, {net.total_params:,} parameters")
    return 0
