"""The command line: `cnndsl compile | run | plot | zoo`. The only place that prints.

Exit codes: 0 success, 1 diagnostics or bad input, 2 usage errors (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

COMMANDS = {
    "compile": ("compile_cmd", "show a network's layers, shapes, parameters, MACs and memory"),
    "run": ("run_cmd", "train, evaluate or predict with a network"),
    "plot": ("plot_cmd", "draw a network, its feature maps, filters or training curves"),
    "zoo": ("zoo_cmd", "list the shipped model specs"),
    "weights": (
        "weights_cmd",
        "fetch pretrained weights for zoo models; convert Keras and PyTorch files to .npz",
    ),
    "export": ("export_cmd", "write a network and its weights as an ONNX file"),
    "import": ("import_cmd", "turn an ONNX CNN into a .cnn spec and its weights"),
}

EPILOG = """examples:
  cnndsl compile specs/fashion_mnist.cnn
  cnndsl compile zoo.resnet34 --set size=64 --depth 1
  cnndsl run specs/digits.cnn --epochs 10
  cnndsl plot zoo.resnet34 -o resnet34.svg
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per available command."""
    parser = argparse.ArgumentParser(
        prog="cnndsl",
        description="Compile, train and draw convolutional networks written in the .cnn language.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="cnndsl 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"cnndsl.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cnndsl.cli.{module}":
                raise
            continue
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(handler=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cnndsl` console script; returns the exit code."""
    # NOTE: importing the commands (NumPy, the compiler) takes most of a second, and
    # a KeyboardInterrupt raised inside an import can be swallowed by importlib's
    # callbacks: while they run, Ctrl-C only sets a flag, read once they are done.
    # `import cnndsl` itself imports nothing heavy, so little comes before this.
    interrupted: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if interrupted:
            raise KeyboardInterrupt
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
