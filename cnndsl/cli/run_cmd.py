"""cnndsl run: train a network on data, evaluate it, save it, or predict images.

    cnndsl run                                   # the shipped digits CNN on digits
    cnndsl run specs/fashion_mnist.cnn --data fashion/train-images-idx3-ubyte.gz
    cnndsl run flowers.cnn --data flower_photos --freeze 'base/*' --save head.npz
    cnndsl run flowers.cnn --load head.npz --predict rose.jpg --top-k 3
    cnndsl run zoo.resnet50 --load resnet50.h5 --predict china.jpg --top-k 5   # ImageNet names
    cnndsl run flowers.cnn --data flower_photos --epochs 5 --then-unfreeze 'base/*' --then-lr 0.01
    cnndsl run specs/fashion_mnist.cnn --data fashion/ --checkpoint ckpt --checkpoint-every 500
    cnndsl run specs/fashion_mnist.cnn --data fashion/ --checkpoint ckpt --resume

The spec's train {} section supplies the defaults of every training flag
(loss, optimizer, lr, metrics, batch, epochs, validation_split, seed, data);
a flag given overrides it. Transfer learning runs in two stages: the epochs
with the spec's frozen layers (and --freeze/--unfreeze), then --then-unfreeze
GLOB and --then-epochs more at --then-lr with a fresh optimizer (docs/pretrained.md).
Progress (the bar, one line per epoch, notes) goes to stderr; results (test
metrics, predictions) to stdout.
Exit codes: 0 success, 1 spec diagnostics, bad data/weights/checkpoints, a plan
that does not fit in memory or a non-finite loss, 2 usage errors, 130 Ctrl-C
(after saving a checkpoint with --checkpoint). See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from cnndsl.cli import outputs, predict, ranges
from cnndsl.cli.common import add_spec_arguments, load_network
from cnndsl.cli.weights_cmd import DownloadBar
from cnndsl.formats.data import DataError, Dataset, check, class_names, load_data
from cnndsl.formats.data.arrays import load_output_arrays
from cnndsl.formats.data.named import NAMED
from cnndsl.ops import OPS
from cnndsl.runtime.backends import BackendError
from cnndsl.training.checkpoint import (
    CheckpointWarning,
    TrainingInterrupted,
    check_checkpoint_folder,
)
from cnndsl.training.distributed import first_rank_first, quiet_unless_first
from cnndsl.training.fit import ShortStatisticsWarning
from cnndsl.training.guards import LossExplosion, LossExplosionWarning, non_finite_weights
from cnndsl.training.history import Callback
from cnndsl.training.losses import LossError
from cnndsl.training.model import ModelError
from cnndsl.training.optimizers import OPTIMIZERS, OptimizerError
from cnndsl.training.progress import EpochLines, ProgressBar

# Errors the user can fix: reported as `error: ...` with exit code 1, never a traceback.
USER_ERRORS = (BackendError, DataError, LossError, ModelError, OptimizerError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `cnndsl run`."""
    add_spec_arguments(parser, optional=True)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        metavar="SOURCE",
        help="digits, an IDX images file (MNIST layout), a .npz with x and y, or a folder"
        " with one subfolder per class (default: the spec's data, else digits)",
    )
    data.add_argument(
        "--test-split",
        type=ranges.fraction,
        default=0.2,
        metavar="F",
        help="test fraction for data without its own test set (default 0.2)",
    )
    data.add_argument(
        "--no-augment", action="store_true", help="no random flips and crops for image folders"
    )
    train = parser.add_argument_group("training (defaults from the spec's train section)")
    train.add_argument(
        "--epochs",
        type=ranges.setting("epochs"),
        metavar="N",
        help="(default: the spec's, else 1)",
    )
    train.add_argument(
        "--batch-size",
        type=ranges.setting("batch"),
        metavar="N",
        help="(default: the spec's batch, else 32)",
    )
    train.add_argument("--loss", metavar="NAME", help="e.g. binary_crossentropy")
    train.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        help="one other than the spec's starts from its own defaults",
    )
    train.add_argument("--lr", type=ranges.setting("lr"), metavar="RATE", help="learning rate")
    train.add_argument(
        "--metrics", type=_names, metavar="A,B", help="comma-separated, e.g. accuracy,top3"
    )
    train.add_argument(
        "--validation-split",
        type=ranges.setting("validation_split"),
        metavar="F",
        help="hold out this last fraction of the training data for validation",
    )
    train.add_argument(
        "--seed",
        type=ranges.setting("seed"),
        help="weights, shuffling, dropout (default: the spec's, else 0)",
    )
    train.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="GLOB",
        help="freeze layers whose path matches, e.g. 'base/*' (repeatable)",
    )
    train.add_argument(
        "--unfreeze",
        action="append",
        default=[],
        metavar="GLOB",
        help="train layers whose path matches although the spec says trainable=false"
        " (repeatable; applied after --freeze)",
    )
    then = parser.add_argument_group(
        "fine-tuning: a second stage after the first (transfer learning)"
    )
    then.add_argument(
        "--then-unfreeze",
        action="append",
        default=[],
        metavar="GLOB",
        help="after the first stage, unfreeze layers whose path matches, e.g. 'base/*',"
        " and train again (repeatable)",
    )
    then.add_argument(
        "--then-epochs",
        type=ranges.setting("epochs"),
        metavar="N",
        help="epochs of the second stage (default: as many as the first)",
    )
    then.add_argument(
        "--then-lr",
        type=ranges.setting("lr"),
        metavar="RATE",
        help="learning rate of the second stage, with a fresh optimizer of the same kind"
        " (default: a tenth of the first stage's)",
    )
    train.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    out = parser.add_argument_group("weights and results")
    out.add_argument(
        "--load",
        metavar="PATH",
        help="start from these weights: an .npz saved by cnndsl, or a Keras (.h5, .weights.h5,"
        " .keras) or PyTorch (.safetensors, .pt, .pth) file, matched to the network by its graph",
    )
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
        type=ranges.whole(1),
        default=3,
        metavar="K",
        help="classes shown per image with --predict (default 3)",
    )
    out.add_argument(
        "--load-partial",
        action="store_true",
        help="with --load, load only the weights that fit and keep initial values for the rest"
        " (transfer learning)",
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
        "--checkpoint-every",
        type=ranges.whole(1),
        metavar="N",
        help="also checkpoint every N steps",
    )
    safe.add_argument(
        "--keep", type=ranges.whole(1), default=3, metavar="K", help="checkpoints kept (default 3)"
    )
    safe.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in --checkpoint DIR; the result equals"
        " an uninterrupted run's",
    )
    safe.add_argument(
        "--max-memory",
        type=ranges.size,
        metavar="SIZE",
        help="memory the run may plan for, e.g. 8G or 512M (default: what is free now)",
    )


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got '{text}'")
    return names


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    if (args.resume or args.checkpoint_every) and not args.checkpoint:
        flag = "--resume" if args.resume else "--checkpoint-every"
        print(f"error: {flag} needs --checkpoint DIR", file=sys.stderr)
        return 2
    if (args.then_epochs is not None or args.then_lr is not None) and not args.then_unfreeze:
        print("error: --then-epochs and --then-lr need --then-unfreeze GLOB", file=sys.stderr)
        return 2
    if args.then_unfreeze and args.checkpoint:
        print(
            "error: --checkpoint covers one stage; run the two stages as two commands"
            " (--save, then --load) to checkpoint both",
            file=sys.stderr,
        )
        return 2
    # NOTE: under mpiexec/srun every rank runs this; rank 0 alone prints and writes files.
    args.first_rank = quiet_unless_first()
    net = load_network(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always", CheckpointWarning)
        warnings.simplefilter("always", ShortStatisticsWarning)
        warnings.simplefilter("always", LossExplosionWarning)
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
    """Checkpoint and training warnings as `warning: ...` lines; the others as Python shows them."""

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (CheckpointWarning, ShortStatisticsWarning, LossExplosionWarning)):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    return show


def _run(args: argparse.Namespace, net: Any) -> int:
    outputs.check_outputs(args)  # before any work: a run is not thrown away for a bad output path
    if args.checkpoint:  # a folder that cannot take checkpoints is refused before any work
        check_checkpoint_folder(args.checkpoint)
    model = net.build(backend=args.backend, seed=args.seed)
    model.max_memory = args.max_memory
    if args.load:
        report = model.load(args.load, strict=not args.load_partial)
        print(f"{args.load}: {report.describe()}", file=sys.stderr)
    for pattern in args.freeze:
        model.freeze(pattern)
    for pattern in args.unfreeze:
        model.unfreeze(pattern)
    # NOTE: --optimizer naming the spec's optimizer keeps the spec's settings of it.
    optimizer = None if args.optimizer == model.settings.optimizer["name"] else args.optimizer
    model.compile(loss=args.loss, optimizer=optimizer, metrics=args.metrics, lr=args.lr)
    settings = model.settings.overridden(
        data=args.data,
        epochs=args.epochs,
        batch=args.batch_size,
        validation_split=args.validation_split,
    )
    classes = predict.classes_of(net)

    if args.predict and args.load and args.epochs is None:
        return predict.predict(args, model, net, classes, class_names(settings.data))

    if len(model.output_names) > 1:
        data: Any = _output_arrays(args, net, model, settings.data)
    else:
        data = _one_output_data(args, net, classes, settings.data)
    model.class_names = data.class_names  # saved with the weights, for --predict
    epochs, batch = settings.epochs, settings.batch
    counts = model.count_params()
    # NOTE: a line each for the network and data, the training, the optimizer: as one
    # line it ran past any terminal's width.
    print(
        f"{net.name}: {counts['total']:,} parameters ({counts['trainable']:,} trainable);"
        f" data {data.name}: {len(data.x_train)} training, {len(data.x_test)} test samples\n"
        f"training: {_losses(model)}, batch {batch}, {_count(epochs, 'epoch')}\n"
        f"optimizer: {model.optimizer!r}",
        file=sys.stderr,
    )
    callbacks: list[Callback] = [EpochLines(epochs)]
    callbacks.append(LossExplosion(data.x_train[:32], _first(data.y_train, 32)))  # warns once
    if not args.quiet:
        callbacks.insert(0, ProgressBar(epochs))
    history = model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch,
        validation_split=settings.validation_split,
        callbacks=callbacks,
        augment=loader_augmentation(args, net.layers, data),
        checkpoint_dir=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        keep=args.keep,
        resume=args.resume,
        verbose=0,  # the callbacks above draw the progress
    )
    second = _second_stage(args, model, data, epochs, batch, settings.validation_split)
    diverged = non_finite_weights(model)
    if diverged:
        # NOTE: the last step's update (or batchnorm's moving statistics) can turn
        # non-finite after its loss was checked: no later step would notice.
        kept = (
            f"; the checkpoints in {args.checkpoint} hold only finite weights"
            if args.checkpoint
            else ""
        )
        raise ModelError(
            "training diverged: after the last step the weights hold NaN or infinite values"
            f" ({', '.join(diverged[:3])}{', ...' if len(diverged) > 3 else ''});"
            f" nothing was saved{kept}; lower the learning rate"
        )
    result = model.evaluate(data.x_test, data.y_test, batch)
    print("test " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    # NOTE: the weights first: they are the run's work; a history can be made again.
    if args.save and getattr(args, "first_rank", True):
        outputs.save_weights(model, args.save, args.checkpoint)
        print(f"saved weights to {args.save}", file=sys.stderr)
    if args.history and getattr(args, "first_rank", True):
        payload = {**history.to_json(), "test": result, "spec": net.name, "data": data.name}
        if second is not None:
            payload["then"] = {**second.to_json(), "unfreeze": args.then_unfreeze}
        outputs.write_text(args.history, json.dumps(payload, indent=2) + "\n")
    if args.predict and getattr(args, "first_rank", True):
        return predict.predict(args, model, net, classes, data.class_names)
    return 0


def _one_output_data(args: argparse.Namespace, net: Any, classes: int | None, source: str) -> Any:
    """The Dataset that --data names, checked against the network's input and classes."""
    label_shape: tuple[int, ...] = ()
    shape = tuple(net.output_shape)
    if len(shape) > 1:
        # NOTE: an output [h, w, C] classifies each position: labels [N, h, w], C classes.
        label_shape, classes = shape[:-1], (2 if shape[-1] == 1 else shape[-1])

    # A named set's first use downloads it: a bar on a terminal; under several ranks,
    # rank 0 alone downloads, and the others then read its cache.
    def load() -> Any:
        with DownloadBar(quiet=args.quiet or source not in NAMED) as bar:
            return load_data(
                source,
                net.input_shape,
                classes,
                test_split=args.test_split,
                fit=predict.image_fit(net),
                size_params=size_params(net),
                progress=bar.update,
                notify=bar.notice,
                label_shape=label_shape,
            )

    return first_rank_first(load) if source in NAMED else load()


def _output_arrays(args: argparse.Namespace, net: Any, model: Any, source: str) -> Any:
    """A .npz with one label array per output, for a network with several outputs."""
    data = load_output_arrays(source, model.output_names, args.test_split)
    # NOTE: the images go through the same shape checks as one output's data; the
    # labels stand in as sample numbers, and the model checks the real ones.
    shaped = check(
        Dataset(
            data.name,
            data.x_train,
            np.arange(len(data.x_train)),
            data.x_test,
            np.arange(len(data.x_test)),
        ),
        net.input_shape,
        None,
        size_params(net),
    )
    data.x_train, data.x_test = shaped.x_train, shaped.x_test
    for which, x, y in (
        ("training", data.x_train, data.y_train),
        ("test", data.x_test, data.y_test),
    ):
        try:
            model._checked_labels(y, len(x))
        except (LossError, ModelError) as e:
            raise DataError(f"{data.name}: {which} labels: {e}") from None
    return data


def _losses(model: Any) -> str:
    """The loss that trains, or each output's with its weight: 'cls mse, box mse × 0.3'."""
    if len(model.output_names) == 1:
        return str(model.loss.name)
    return ", ".join(
        f"{name} {lf.name}" + (f" × {w:g}" if w != 1 else "")
        for name, lf, w in zip(model.output_names, model.losses, model.loss_weights, strict=True)
    )


def loader_augmentation(args: argparse.Namespace, layers: Iterable[Any], data: Any) -> Any:
    """The loader's own flip-and-crop, unless --no-augment or the spec augments itself."""
    if args.no_augment or any(OPS[layer.op].augments for layer in layers):
        return None
    return data.augment


def _first(y: Any, n: int) -> Any:
    """The first n labels: of one array, or of each output's."""
    return {k: v[:n] for k, v in y.items()} if isinstance(y, dict) else y[:n]


def _second_stage(
    args: argparse.Namespace, model: Any, data: Any, epochs: int, batch: int, split: float
) -> Any:
    """Fine-tuning: unfreeze --then-unfreeze, train --then-epochs at --then-lr; its History."""
    if not args.then_unfreeze:
        return None
    for pattern in args.then_unfreeze:
        model.unfreeze(pattern)
    lr = args.then_lr if args.then_lr is not None else model.optimizer.lr / 10
    # NOTE: a fresh optimizer (no momentum carried over), as Keras' recompile in the book.
    model.compile(optimizer=model.optimizer, lr=lr)
    then_epochs = args.then_epochs if args.then_epochs is not None else epochs
    counts = model.count_params()
    print(
        f"fine-tuning: {counts['trainable']:,} of {counts['total']:,} parameters trainable;"
        f" {model.optimizer!r}, {then_epochs} epochs",
        file=sys.stderr,
    )
    callbacks: list[Callback] = [EpochLines(then_epochs, "fine-tune ")]
    if not args.quiet:
        callbacks.insert(0, ProgressBar(then_epochs, "fine-tune "))
    return model.fit(
        data.x_train,
        data.y_train,
        epochs=then_epochs,
        batch_size=batch,
        validation_split=split,
        callbacks=callbacks,
        augment=loader_augmentation(args, model.graph, data),
        verbose=0,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def size_params(net: Any) -> list[str]:
    """The network's whole-number parameters whose value is its input's height or width.

    What `--set NAME=...` resizes the input with, for a data-shape error to suggest;
    a guess by value (`size=224` for a [224, 224, 3] input), never a name it lacks.
    """
    spatial = tuple(net.input_shape[:2])
    return [
        name
        for name, value in net.params.items()
        if isinstance(value, int) and not isinstance(value, bool) and value in spatial
    ]


__all__ = ["EpochLines", "ProgressBar", "add_arguments", "run", "size_params"]
