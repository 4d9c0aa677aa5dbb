"""`cnndsl plot`: draw a network, its feature maps, its filters, or its training curves.

cnndsl plot SPEC -o net.svg                     architecture diagram (.svg .png .pdf .dot)
cnndsl plot SPEC -o report.html [--history H]   one self-contained HTML page
cnndsl plot SPEC --feature-maps IMG --layer PATH -o maps.png
cnndsl plot SPEC --filters PATH -o filters.png
cnndsl plot HISTORY.json -o curves.png          loss and metrics per epoch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cnndsl.cli import ranges
from cnndsl.cli.common import add_spec_arguments, compile_from_args, report
from cnndsl.compiler import Network
from cnndsl.source import CnnError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cnndsl plot`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_spec_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write; the format follows the name: .svg .png .pdf"
        " .dot for diagrams, .html for the report, .png .svg .pdf for"
        " pictures (default: NAME.svg, or a .png beside the history)",
    )
    group = parser.add_argument_group("diagram and report")
    group.add_argument(
        "--depth",
        type=ranges.whole(1),
        default=None,
        metavar="N",
        help="draw block instances nested N deep or more as single nodes",
    )
    group.add_argument(
        "--rankdir",
        choices=("TB", "LR"),
        default="TB",
        help="layout direction: TB top to bottom (default) or LR left to right",
    )
    group.add_argument(
        "--dpi",
        type=ranges.whole(1),
        default=96,
        metavar="N",
        help="resolution of PNG output (default 96)",
    )
    group.add_argument(
        "--history", metavar="JSON", help="training history to add to an HTML report as curves"
    )
    group = parser.add_argument_group("feature maps and filters")
    group.add_argument(
        "--feature-maps",
        metavar="IMAGE",
        help="run IMAGE (.png/.jpg/..., or .npy) through the network and draw"
        " every channel of --layer",
    )
    group.add_argument("--layer", metavar="PATH", help="layer path for --feature-maps")
    group.add_argument("--filters", metavar="PATH", help="draw the kernels of this conv layer")
    group.add_argument(
        "--load",
        metavar="WEIGHTS",
        help="weights to use (.npz written by Model.save, or a Keras or PyTorch file);"
        " default: the initialiser",
    )
    group.add_argument(
        "--seed",
        type=ranges.setting("seed"),
        default=0,
        help="initialiser seed when no --load is given (default 0)",
    )
    group.add_argument("--cmap", default="gray", help="matplotlib colour map for feature maps")
    group.add_argument(
        "--max-channels",
        type=ranges.whole(1),
        default=None,
        metavar="N",
        help="draw only the first N channels",
    )


def run(args: argparse.Namespace) -> int:
    """Draw what the arguments ask for; 0 on success, 1 on bad input, 2 on misuse."""
    from cnndsl.formats.files import UnwritableOutput
    from cnndsl.plot.errors import PlotError

    try:
        return _run(args)
    except (PlotError, UnwritableOutput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CnnError as exc:
        report(exc)
        return 1


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_cmap(name: str) -> None:
    """Refuse an unknown colour map before any work, naming close ones."""
    import matplotlib

    from cnndsl.plot.errors import PlotError
    from cnndsl.source import near_names

    if name not in matplotlib.colormaps:
        raise PlotError(
            f"unknown colour map '{name}'"
            + near_names(name, list(matplotlib.colormaps))
            + "; e.g. gray, viridis, magma (matplotlib's colour maps)"
        )


def _run(args: argparse.Namespace) -> int:
    from cnndsl.formats.files import check_output_path

    if args.output:
        check_output_path(args.output)  # a missing folder or a folder named -o: before any work
    if args.feature_maps:
        _check_cmap(args.cmap)
    spec = str(args.spec)
    if spec.lower().endswith(".json"):
        if args.feature_maps or args.filters or args.history:
            return _usage(
                "a history JSON takes only -o; --feature-maps, --filters and --history need a SPEC"
            )
        return _curves(spec, args.output or str(Path(spec).with_suffix(".png")))
    if args.feature_maps and args.filters:
        return _usage("choose one of --feature-maps and --filters")
    if args.layer and not args.feature_maps:
        return _usage("--layer goes with --feature-maps (use --filters PATH for kernels)")
    if args.feature_maps and not args.layer:
        return _usage(
            "--feature-maps needs --layer PATH (`cnndsl compile SPEC` lists the layer paths)"
        )
    if args.dpi < 1:
        return _usage("--dpi must be at least 1")
    if args.max_channels is not None and args.max_channels < 1:
        return _usage("--max-channels must be at least 1")
    # NOTE: spec warnings (unread pixels...) are `cnndsl compile`'s business; a picture
    # request stays quiet unless it fails.
    net = compile_from_args(args)
    if args.feature_maps:
        return _feature_maps(net, args)
    if args.filters:
        return _filters(net, args)
    out = args.output or f"{net.name}.svg"
    check_output_path(out)
    if Path(out).suffix.lower() in (".html", ".htm"):
        return _report(net, args, out)
    from cnndsl.plot.diagram import draw
    from cnndsl.plot.rendering import output_format, render

    output_format(out)  # refuse an unknown suffix before any work
    render(draw(net.graph, depth=args.depth, rankdir=args.rankdir), out, dpi=args.dpi)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _picture_path(out: str) -> str:
    from cnndsl.plot.errors import PlotError

    if Path(out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise PlotError(
            f"cannot tell the format of '{out}': use a name ending in .png, .svg or .pdf"
        )
    return out


def _model(net: Network, args: argparse.Namespace) -> Any:
    from cnndsl.plot.errors import PlotError
    from cnndsl.training.model import ModelError

    model = net.build(seed=args.seed)
    if args.load:
        try:
            loaded = model.load(args.load)
        except ModelError as exc:
            raise PlotError(str(exc)) from None
        if not loaded.loaded:
            raise PlotError(f"{args.load} holds no weights of this network:\n" + loaded.describe())
        if not loaded.complete:
            print(f"warning: {args.load}: {loaded.describe()}", file=sys.stderr)
    return model


def _feature_maps(net: Network, args: argparse.Namespace) -> int:
    from cnndsl.plot import maps

    layer = maps.find_layer(net.graph, args.layer)
    out = _picture_path(args.output or f"{net.name}_{layer.name}_maps.png")
    image = maps.load_image(args.feature_maps, net.input_shape)
    model = _model(net, args)
    fmap = maps.feature_maps(model, image, layer.path)
    fig = maps.draw_feature_maps(
        fmap,
        f"{Path(args.feature_maps).name} → {maps.layer_title(layer)}",
        cmap=args.cmap,
        max_channels=args.max_channels,
    )
    maps.save(fig, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _filters(net: Network, args: argparse.Namespace) -> int:
    from cnndsl.plot import maps

    layer = maps.find_layer(net.graph, args.filters)
    maps.require_kernel(layer)  # before building the model: fail fast
    out = _picture_path(args.output or f"{net.name}_{layer.name}_filters.png")
    model = _model(net, args)
    kernel = maps.conv_kernel(layer, model.layer_weights(layer.path))
    fig = maps.draw_filters(kernel, maps.layer_title(layer), max_filters=args.max_channels or 64)
    maps.save(fig, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _curves(history: str, out: str) -> int:
    from cnndsl.plot import curves, maps

    found = curves.load_history(history)
    # The network's name where the run recorded it, else the file's.
    title = found.network or Path(history).stem
    fig = curves.draw_history(found.series, found.epochs, title=title)
    maps.save(fig, _picture_path(out))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _report(net: Network, args: argparse.Namespace, out: str) -> int:
    from cnndsl.formats.files import write_atomic
    from cnndsl.plot import curves
    from cnndsl.plot.errors import PlotError
    from cnndsl.plot.report import report_html

    png = None
    if args.history:
        found = curves.load_history(args.history)
        png = curves.png_bytes(curves.draw_history(found.series, found.epochs))
    text = report_html(net.graph, depth=args.depth, rankdir=args.rankdir, curves_png=png)
    try:
        write_atomic(out, text)
    except OSError as exc:
        raise PlotError(f"cannot write '{out}': {exc.strerror}") from None
    print(f"wrote {out}", file=sys.stderr)
    return 0
