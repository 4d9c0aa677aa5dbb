"""cnndsl weights: pretrained weight files for the zoo.

    cnndsl weights fetch resnet50              # Keras' ImageNet weights, into the cache
    cnndsl weights fetch xception --no-top     # without the classifier, for transfer learning
    cnndsl weights fetch --list                # the models with files, and what is cached
    cnndsl run zoo.resnet50 --load "$(cnndsl weights fetch resnet50 -q)" --predict cat.jpg
    cnndsl weights convert resnet50.h5 --spec zoo.resnet50 -o resnet50.npz
    cnndsl weights convert resnet18.safetensors --spec my_resnet18.cnn --set classes=10 -o r18.npz

`fetch` downloads the file keras.applications uses for a zoo model, checks
the hash Keras publishes for it, keeps it in $XDG_CACHE_HOME/cnndsl/weights
(else ~/.cache/cnndsl/weights) and prints its path on stdout. Progress and
notices go to stderr. `convert` reads a Keras (.h5, .weights.h5, .keras) or
PyTorch (.safetensors, .pt, .pth) weights file, told apart by content,
matches its layers to the network of --spec by the graph, and writes our
.npz (what `--load` and Model.load read fastest); it prints where each
weight came from with -v. Exit codes: 0 success, 1 a failed fetch or a file
that does not fit, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cnndsl.cli import ranges
from cnndsl.cli.common import add_network_arguments, load_network
from cnndsl.formats import fetch as fetching
from cnndsl.runtime.executor import ModelError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `cnndsl weights`: one subparser per subcommand, each sets weights_run."""
    sub = parser.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    fetch = sub.add_parser(
        "fetch",
        help="download a zoo model's pretrained weights (Keras' ImageNet files) into the cache",
        description=(
            "Download the weights keras.applications uses for a zoo model, check the hash"
            " Keras publishes for them, keep them in the cache and print the file's path."
        ),
    )
    fetch.add_argument("name", nargs="?", metavar="NAME", help="a zoo model, e.g. resnet50")
    fetch.add_argument(
        "--no-top",
        action="store_true",
        help="the file without the classifier (Keras' include_top=False), for transfer learning",
    )
    fetch.add_argument(
        "--list", action="store_true", help="list the models there are files for, and the cache"
    )
    fetch.add_argument(
        "--cache",
        metavar="DIR",
        help="keep files here (default: $XDG_CACHE_HOME/cnndsl/weights or ~/.cache/cnndsl/weights)",
    )
    fetch.add_argument(
        "--retries",
        type=ranges.whole(0),
        default=4,
        metavar="N",
        help="tries after a failure (default 4)",
    )
    fetch.add_argument(
        "--timeout",
        type=ranges.positive,
        default=30.0,
        metavar="S",
        help="seconds without data (30)",
    )
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notices")
    fetch.set_defaults(weights_run=run_fetch)
    add_convert_arguments(
        sub.add_parser(
            "convert",
            help="convert a Keras or PyTorch weights file into our .npz for a network",
            description=(
                "Read a Keras (.h5, .weights.h5, .keras) or PyTorch (.safetensors, .pt, .pth)"
                " weights file, match its layers to the network of --spec by the graph (shapes,"
                " order, branches), and write the weights as an .npz keyed by layer path."
            ),
        )
    )


def add_convert_arguments(convert: argparse.ArgumentParser) -> None:
    """Arguments of `cnndsl weights convert`."""
    convert.add_argument("source", metavar="SRC", help="the Keras or PyTorch weights file")
    convert.add_argument(
        "--spec", required=True, help="the network: a .cnn file, or zoo.NAME for a shipped spec"
    )
    add_network_arguments(convert, example="include_top=false")
    convert.add_argument(
        "--map",
        metavar="MAPPING.json",
        help="a JSON object naming what matching cannot tell: our weight key or layer path ->"
        ' the file\'s name, e.g. {"conv1/conv_1": "conv1_conv"}',
    )
    convert.add_argument(
        "--partial",
        action="store_true",
        help="write the weights that fit, keeping initial values for the rest (transfer"
        " learning); without it any misfit is an error",
    )
    convert.add_argument(
        "-o", "--output", required=True, metavar="OUT.npz", help="the .npz to write"
    )
    convert.add_argument(
        "-v", "--verbose", action="store_true", help="print where each weight came from"
    )
    convert.set_defaults(weights_run=run_convert)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit code."""
    handler = getattr(args, "weights_run", None)
    if handler is None:
        print(
            "usage: cnndsl weights {fetch NAME | convert SRC --spec SPEC -o OUT.npz}"
            "  (see cnndsl weights --help)",
            file=sys.stderr,
        )
        return 2
    return int(handler(args))


def run_fetch(args: argparse.Namespace) -> int:
    """`cnndsl weights fetch`: the path of a checked file on stdout."""
    if args.list:
        return _list(args)
    if not args.name:
        print("error: name a zoo model (cnndsl weights fetch --list shows them)", file=sys.stderr)
        return 2
    top = not args.no_top
    bar = DownloadBar(quiet=args.quiet)
    try:
        entry = fetching.weight_file(args.name, top)
        folder = args.cache or fetching.cache_folder()
        if not args.quiet and fetching.cached(args.name, top, folder) is None:
            print(f"downloading {entry.url}", file=sys.stderr)
        with bar:
            path = fetching.fetch(
                args.name,
                top,
                folder=folder,
                retries=max(0, args.retries),
                timeout=args.timeout,
                progress=bar.update,
                notify=bar.notice,
            )
    except fetching.FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        checked = entry.keras_algorithm
        what = f"{checked.upper()} as Keras publishes it" if checked else "no published hash"
        print(f"{entry.filename}: checked ({what})", file=sys.stderr)
    print(path)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """`cnndsl weights convert`: a Keras or PyTorch file as our .npz; -v: each weight's origin."""
    net = load_network(args)
    model = net.build(seed=0)
    try:
        report = model.load(args.source, strict=not args.partial, mapping=args.map)
        try:
            model.save(args.output)
        except OSError as e:
            raise ModelError(
                f"{args.output}: cannot write the weights ({e.strerror or e})"
            ) from None
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.verbose:
        print(report.describe_origins())
    if not report.complete:
        print(f"warning: {args.source}: {report.describe()}", file=sys.stderr)
    print(
        f"wrote {args.output}: {len(report.loaded)} of {len(model.specs)} weight arrays of"
        f" {net.name} from {args.source} ({report.source or 'cnndsl .npz'})"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    folder = args.cache or fetching.cache_folder()
    rows = [("model", "file", "hash", "cached")]
    for (model, top), entry in sorted(
        fetching.WEIGHT_FILES.items(), key=lambda i: (i[0][0], not i[0][1])
    ):
        if args.name and model != args.name.removeprefix("zoo."):
            continue
        hashed = entry.keras_algorithm.upper() if entry.keras_algorithm else "none"
        here = "yes" if fetching.cached(model, top, folder) else ""
        rows.append((model + ("" if top else " --no-top"), entry.filename, hashed, here))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3])
    print(f"cache: {folder}")
    return 0


class DownloadBar:
    """A rich download bar on stderr (shown on a terminal only), and notices above it."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> DownloadBar:
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("download", total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def update(self, done: int, total: int | None) -> None:
        """Progress callback of fetch: bytes so far and the total (None: unknown)."""
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

    def notice(self, message: str) -> None:
        """Notice callback of fetch: a retry or an unchecked file, as a warning line."""
        if self.quiet:
            return
        if self.progress is not None and self.progress.console.is_terminal:
            self.progress.console.print(
                f"warning: {message}", markup=False, highlight=False, soft_wrap=True
            )
        else:
            print(f"warning: {message}", file=sys.stderr)


__all__ = [
    "DownloadBar",
    "add_arguments",
    "add_convert_arguments",
    "run",
    "run_convert",
    "run_fetch",
]
