"""cnndsl run: train a network on data, evaluate it, save it, or predict images.

    cnndsl run                                   # the shipped digits CNN on digits
    cnndsl run specs/fashion_mnist.cnn --data fashion/train-images-idx3-ubyte.gz
    cnndsl run flowers.cnn --data flower_photos --freeze 'base/*' --save head.npz
    cnndsl run flowers.cnn --load head.npz --predict rose.jpg --top-k 3
    cnndsl run specs/fashion_mnist.cnn --data fashion/ --checkpoint ckpt --checkpoint-every 500
    cnndsl run specs/fashion_mnist.cnn --data fashion/ --checkpoint ckpt --resume

The spec's train {} section supplies the defaults (loss, optimizer, metrics,
batch, epochs); flags override it. Progress goes to stderr, results to stdout.
Exit codes: 0 success, 1 spec diagnostics, bad data/weights/checkpoints, a plan
that does not fit in memory or a non-finite loss, 2 usage errors, 130 Ctrl-C
(after saving a checkpoint with --checkpoint). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cnndsl.cli.common import add_spec_arguments, load_network
from cnndsl.formats.data import DataError, class_names, load_data, load_images
from cnndsl.runtime.backends import BackendError
from cnndsl.training.checkpoint import CheckpointWarning, TrainingInterrupted
from cnndsl.training.guards import parse_size
from cnndsl.training.history import Callback
from cnndsl.training.losses import LossError
from cnndsl.training.model import ModelError
from cnndsl.training.optimizers import OptimizerError, get_optimizer

# Errors the user can fix: reported as `error: ...` with exit code 1, never a traceback.
USER_ERRORS = (BackendError, DataError, LossError, ModelError, OptimizerError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `cnndsl run`."""
    add_spec_arguments(parser, optional=True)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="digits",
        metavar="SOURCE",
        help="digits (default), an IDX images file (MNIST layout), a .npz with x and y,"
        " or a folder with one subfolder per class",
    )
    data.add_argument(
        "--test-split",
        type=float,
        default=0.2,
        metavar="F",
        help="test fraction for data without its own test set (default 0.2)",
    )
    data.add_argument(
        "--no-augment", action="store_true", help="no random flips and crops for image folders"
    )
    train = parser.add_argument_group("training (defaults from the spec's train section)")
    train.add_argument("--epochs", type=int, metavar="N")
    train.add_argument("--batch-size", type=int, metavar="N")
    train.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"])
    train.add_argument("--lr", type=float, metavar="RATE", help="learning rate")
    train.add_argument(
        "--validation-split",
        type=float,
        metavar="F",
        help="hold out this last fraction of the training data for validation",
    )
    train.add_argument("--seed", type=int, default=0, help="weights, shuffling, dropout (0)")
    train.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="GLOB",
        help="freeze layers whose path matches, e.g. 'base/*' (repeatable)",
    )
    train.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    out = parser.add_argument_group("weights and results")
    out.add_argument("--load", metavar="PATH", help="start from the weights in this .npz")
    out.add_argument("--save", metavar="PATH", help="save the trained weights (.npz)")
    out.add_argument("--history", metavar="PATH", help="write per-epoch metrics as JSON")
    out.add_argument(
        "--predict",
        nargs="+",
        metavar="IMAGE",
        help="print the top classes of these images, after training (with --load and no"
        " --epochs: straight from the loaded weights)",
    )
    out.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="classes shown per image with --predict (default 3)",
    )
    out.add_argument(
        "--load-partial",
        action="store_true",
        help="with --load, load only the weights whose name and shape fit (transfer learning)",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    safe = parser.add_argument_group("checkpoints and limits")
    safe.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save the run to this folder at each epoch end (and every --checkpoint-every"
        " steps), atomically, so --resume can continue it",
    )
    safe.add_argument(
        "--checkpoint-every", type=_positive, metavar="N", help="also checkpoint every N steps"
    )
    safe.add_argument(
        "--keep", type=_positive, default=3, metavar="K", help="checkpoints kept (default 3)"
    )
    safe.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in --checkpoint DIR; the result equals"
        " an uninterrupted run's",
    )
    safe.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="memory the run may plan for, e.g. 8G or 512M (default: what is free now)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    if (args.resume or args.checkpoint_every) and not args.checkpoint:
        flag = "--resume" if args.resume else "--checkpoint-every"
        print(f"error: {flag} needs --checkpoint DIR", file=sys.stderr)
        return 2
    net = load_network(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always", CheckpointWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            return _run(args, net)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except TrainingInterrupted as e:
            print(str(e), file=sys.stderr)
            return 130


def _show_warning(default: Any) -> Any:
    """Checkpoint warnings as `warning: ...` lines; the others as Python shows them."""

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, CheckpointWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    return show


def _run(args: argparse.Namespace, net: Any) -> int:
    model = net.build(backend=args.backend, seed=args.seed)
    model.max_memory = args.max_memory
    if args.load:
        report = model.load(args.load, strict=not args.load_partial)
        print(f"{args.load}: {report.describe()}", file=sys.stderr)
    for pattern in args.freeze:
        model.freeze(pattern)
    train = net.train
    optimizer: Any = train.get("optimizer", model.optimizer.config)
    if isinstance(optimizer, str):
        optimizer = {"name": optimizer}
    if args.optimizer and args.optimizer != optimizer.get("name"):
        optimizer = {"name": args.optimizer}  # the spec's settings belong to another optimizer
    model.compile(optimizer=get_optimizer(optimizer, lr=args.lr))
    classes = _classes(net)

    if args.predict and args.load and args.epochs is None:
        return _predict(args, model, net, classes)

    data = load_data(args.data, net.input_shape, classes, test_split=args.test_split)
    epochs = args.epochs if args.epochs is not None else model.epochs
    batch = args.batch_size or model.batch_size
    split = args.validation_split
    if split is None:
        split = float(train.get("validation_split", 0.0))
    counts = model.count_params()
    print(
        f"{net.name}: {counts['total']:,} parameters ({counts['trainable']:,} trainable);"
        f" data {data.name}: {len(data.y_train)} training, {len(data.y_test)} test samples;"
        f" {model.loss.name}, {model.optimizer!r}, batch {batch}, {epochs} epochs",
        file=sys.stderr,
    )
    callbacks: list[Callback] = [EpochLines(epochs)]
    if not args.quiet:
        callbacks.insert(0, ProgressBar(epochs))
    history = model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch,
        validation_split=split or 0.0,
        callbacks=callbacks,
        augment=None if args.no_augment else data.augment,
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        resume=args.resume,
    )
    result = model.evaluate(data.x_test, data.y_test, batch)
    print("test " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    if args.history:
        payload = {**history.to_json(), "test": result, "spec": net.name, "data": data.name}
        _write_text(args.history, json.dumps(payload, indent=2) + "\n")
    if args.save:
        try:
            model.save(args.save)
        except OSError as e:
            raise ModelError(f"{args.save}: cannot write the weights ({e.strerror or e})") from None
        print(f"saved weights to {args.save}", file=sys.stderr)
    if args.predict:
        return _predict(args, model, net, classes, data.class_names)
    return 0


def _classes(net: Any) -> int | None:
    """Number of classes the network predicts (2 for a single sigmoid unit)."""
    shape = net.output_shape
    if len(shape) != 1:
        return None
    return 2 if shape[0] == 1 else shape[0]


def _predict(
    args: argparse.Namespace,
    model: Any,
    net: Any,
    classes: int | None,
    names: list[str] | None = None,
) -> int:
    names = names or class_names(args.data)
    x = load_images(args.predict, net.input_shape)
    probs = model.predict(x)
    k = max(1, args.top_k)
    for path, p in zip(args.predict, probs, strict=True):
        p = p.reshape(-1)
        if p.shape[0] == 1:  # one sigmoid unit: P(class 1)
            p = np.array([1 - p[0], p[0]])
        top = p.argsort()[::-1][:k]
        shown = ", ".join(
            f"{names[i] if names and i < len(names) else i} ({p[i]:.3f})" for i in top
        )
        print(f"{path}: {shown}")
    return 0


def _write_text(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise ModelError(f"{path}: cannot write ({e.strerror})") from None


# ---- progress ----


class EpochLines(Callback):
    """One line per epoch on stdout: loss, metrics, validation, time and throughput."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.samples = 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if "resumed_from" in logs:
            print(f"resuming from {logs['resumed_from']}", file=sys.stderr, flush=True)

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self.samples = int(logs["samples"])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        seconds = logs.get("seconds", 0.0)
        values = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        rate = self.samples / seconds if seconds > 0 else math.inf
        width = len(str(self.epochs))
        print(
            f"epoch {epoch + 1:>{width}}/{self.epochs}  {values}  ({seconds:.1f} s,"
            f" {rate:,.0f} samples/s)",
            flush=True,
        )


class ProgressBar(Callback):
    """A rich progress bar per epoch on stderr: loss, accuracy, samples/s, ETA."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.progress: Any = None
        self.task: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=None, metrics="", rate="")
        self.start = time.perf_counter()

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        if self.progress is None:
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        shown = "  ".join(
            f"{k} {v:.4f}" for k, v in logs.items() if k not in ("samples", "total", "seconds")
        )
        self.progress.update(
            self.task,
            completed=logs["samples"],
            total=logs["total"],
            metrics=shown,
            rate=f"{logs['samples'] / seconds:,.0f} samples/s",
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self.on_epoch_end(0, logs)


__all__ = ["EpochLines", "ProgressBar", "add_arguments", "run"]
