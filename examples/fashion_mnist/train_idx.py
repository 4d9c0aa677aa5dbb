"""Train the Fashion-MNIST CNN (Hands-On Machine Learning, chapter 14) from its IDX files.

    python examples/fashion_mnist/train_idx.py data/fashion/train-images-idx3-ubyte.gz

does through the Python API what this command line does:

    cnndsl run specs/fashion_mnist.cnn --data data/fashion/train-images-idx3-ubyte.gz

Pass the training images file as distributed (gzip-compressed or not) or the
folder holding it: the labels file beside it and the t10k test pair are
found by their standard names (train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); without a t10k pair
a fifth of the training set is held out for testing. The spec's `train {}`
section gives the defaults: SGD with lr 0.01, batch 32, 10 epochs. As in the
book, the last 10% of the training images are kept for validation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import cnndsl
from cnndsl.formats.data import DataError, load_data
from cnndsl.frontend.grammar import resource_path
from cnndsl.training.model import Callback

SPEC = resource_path("specs") / "fashion_mnist.cnn"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip


class Progress(Callback):
    """One line per epoch: loss and metrics, training and validation."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        values = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "seconds")
        print(f"epoch {epoch + 1}: {values}  ({logs.get('seconds', 0):.1f} s)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("images", help="train-images-idx3-ubyte[.gz], or the folder holding it")
    p.add_argument("--epochs", type=int, help="epochs (default: the spec's, 10)")
    p.add_argument("--batch", type=int, help="batch size (default: the spec's, 32)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default: the spec's, 0.01)")
    p.add_argument(
        "--limit", type=int, metavar="N", help="train on the first N images only (a quick run)"
    )
    p.add_argument(
        "--validation-split",
        type=float,
        default=0.1,
        help="fraction of the training images kept for validation (default 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--out", default="fashion_mnist.npz", help="where to save the weights")
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, evaluate on the test set and save; returns the test metrics."""
    args = parse_args(argv)
    net = cnndsl.compile(SPEC)
    data = load_data(args.images, input_shape=net.input_shape, classes=net.params["classes"])
    x_train, y_train = data.x_train, data.y_train
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    model = net.build(seed=args.seed)
    if not args.quiet:
        print(f"{data!r}\n{net!r}")
    optimizer = None
    if args.lr is not None:
        optimizer = {**net.train.get("optimizer", {"name": "sgd"}), "lr": args.lr}
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch,
        validation_split=args.validation_split,
        optimizer=optimizer,
        callbacks=[] if args.quiet else [Progress()],
        verbose=0,  # Progress prints the epochs (verbose=2 would print Keras-like lines)
    )
    result = model.evaluate(data.x_test, data.y_test)
    model.save(args.out)
    if not args.quiet:
        guesses = model.predict(data.x_test[:5]).argmax(axis=1)
        for guess, truth in zip(guesses, np.asarray(data.y_test[:5]), strict=True):
            print(f"  predicted {CLASS_NAMES[guess]:<12} true {CLASS_NAMES[truth]}")
    print(", ".join(f"test {k} {v:.4f}" for k, v in result.items()) + f"; saved {args.out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
