"""Transfer learning from a pretrained Xception (Hands-On Machine Learning, chapter 14).

    cnndsl weights fetch xception --no-top          # once: Keras' ImageNet weights
    python examples/transfer_learning/transfer.py path/to/flower_photos
    python examples/transfer_learning/transfer.py flowers/ --size 64 --weights base.npz

The image folder has one subfolder per class (tf_flowers' flower_photos
layout: daisy/, dandelion/, roses/, sunflowers/, tulips/); the number of
classes follows the folder. The recipe:

1. compile flowers.cnn: Xception without its top, declared `trainable=false`
   and preceded by its preprocessing (`preprocess(mode=tf, fit=crop)`), under
   a new head; load the ImageNet weights of the base: by default Keras'
   `xception_weights_tf_dim_ordering_tf_kernels_notop.h5` from the cache
   (`cnndsl weights fetch xception --no-top`, or pass --fetch), else the file
   given with --weights (an .npz keyed by layer path, or a Keras file). The
   head is not in the file: it keeps its initial values. Without any
   pretrained weights the script says so and trains from random weights;
2. train the new head alone: SGD with lr 0.2, momentum 0.9, decay 0.01
   (a frozen batchnorm runs on its moving statistics, as in Keras);
3. unfreeze the base and fine-tune everything with a lower learning rate:
   SGD with lr 0.01, momentum 0.9, decay 0.001;
4. report the test accuracy and save every weight, with the class names, to
   an .npz: `cnndsl run flowers.cnn --load flowers.npz --predict rose.jpg`
   then prints the names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cnndsl
from cnndsl.formats.data import DataError, class_names, load_data
from cnndsl.formats.fetch import FetchError, cache_folder, cached, fetch
from cnndsl.training.model import Callback, ModelError

SPEC = Path(__file__).resolve().parent / "flowers.cnn"


class Progress(Callback):
    """One line per epoch: its loss and metrics, training and validation."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        values = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        print(f"{self.stage} epoch {epoch + 1}: {values}  ({logs.get('seconds', 0):.1f} s)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("data", help="image folder with one subfolder per class")
    p.add_argument("--size", type=int, default=224, help="input size (default 224)")
    p.add_argument(
        "--weights",
        help="pretrained weights to load before training (default: Keras' Xception"
        " without its top, from the cache)",
    )
    p.add_argument(
        "--fetch", action="store_true", help="download Keras' Xception weights if not cached"
    )
    p.add_argument(
        "--no-pretrained", action="store_true", help="start from random weights on purpose"
    )
    p.add_argument("--head-epochs", type=int, default=5, help="epochs with the base frozen")
    p.add_argument(
        "--fine-tune-epochs", type=int, default=10, help="epochs with everything trainable"
    )
    p.add_argument("--lr", type=float, default=0.2, help="head learning rate (default 0.2)")
    p.add_argument(
        "--fine-tune-lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)"
    )
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument(
        "--test-split", type=float, default=0.2, help="fraction held out for testing (default 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--no-augment", action="store_true", help="no random flips and crops")
    p.add_argument("--out", default="flowers.npz", help="where to save the trained weights")
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    return p.parse_args(argv)


def pretrained(args: argparse.Namespace) -> Path | None:
    """The weights to start from: --weights, else the cached Keras Xception without top."""
    if args.weights:
        return Path(args.weights)
    if args.no_pretrained:
        return None
    path = cached("xception", top=False)
    if path is None and args.fetch:
        path = fetch(
            "xception", top=False, notify=lambda m: print(f"warning: {m}", file=sys.stderr)
        )
    if path is None:
        print(
            f"note: no pretrained Xception weights in {cache_folder()}; get them with"
            " `cnndsl weights fetch xception --no-top` (or run this with --fetch, or pass"
            " --weights FILE). Training from random weights now.",
            file=sys.stderr,
        )
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the final test metrics."""
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    names = class_names(args.data)
    if not names:
        raise DataError(
            f"{args.data}: expected a folder with one subfolder per class (flowers/daisy/*.jpg)"
        )
    net = cnndsl.compile(SPEC, classes=len(names), size=args.size)
    # The network declares how its images are fitted to the input (centre crop).
    fit = next(layer.attrs.fit for layer in net.layers if layer.op == "preprocess")
    shape = (args.size, args.size, 3)
    data = load_data(args.data, input_shape=shape, test_split=args.test_split, fit=fit)
    model = net.build(seed=args.seed)
    model.class_names = data.class_names  # saved with the weights, for --predict
    say(f"{data!r}\n{net!r}")
    weights = pretrained(args)
    if weights is not None:
        # NOTE: partial: the file has the base; the new head keeps its initial values.
        say(f"{weights}: {model.load(weights, strict=False).describe()}")
    augment = None if args.no_augment else data.augment
    val = (data.x_test, data.y_test)
    head_cb = [] if args.quiet else [Progress("head")]
    tune_cb = [] if args.quiet else [Progress("fine-tune")]

    # 1. The spec freezes the base: only the head trains.
    counts = model.count_params()
    say(f"training the head: {counts['trainable']:,} of {counts['total']:,} parameters")
    model.fit(
        data.x_train,
        data.y_train,
        epochs=args.head_epochs,
        batch_size=args.batch,
        validation_data=val,
        augment=augment,
        callbacks=head_cb,
        verbose=0,  # Progress prints the epochs
        optimizer={"name": "sgd", "lr": args.lr, "momentum": 0.9, "decay": 0.01},
    )

    # 2. Unfreeze the base and fine-tune everything, more gently (a fresh optimizer).
    model.unfreeze("base")
    counts = model.count_params()
    say(f"fine-tuning: {counts['trainable']:,} of {counts['total']:,} parameters")
    model.fit(
        data.x_train,
        data.y_train,
        epochs=args.fine_tune_epochs,
        batch_size=args.batch,
        validation_data=val,
        augment=augment,
        callbacks=tune_cb,
        verbose=0,
        optimizer={"name": "sgd", "lr": args.fine_tune_lr, "momentum": 0.9, "decay": 0.001},
    )

    result = model.evaluate(data.x_test, data.y_test, batch_size=args.batch)
    model.save(args.out)
    print(", ".join(f"test {k} {v:.4f}" for k, v in result.items()) + f"; saved {args.out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (DataError, FetchError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
