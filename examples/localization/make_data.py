"""Make the classification-and-localisation data set: digits placed on a larger canvas.

Each of scikit-learn's 1,797 8×8 digits is placed at a random position on a
blank size×size canvas; its labels are the digit (y_classes) and its box
(y_box: top, left, bottom, right as fractions of the canvas, float32), the
arrays that examples/localization/localization.cnn's two outputs train on.

    python examples/localization/make_data.py [OUT.npz] [--size 24] [--copies 2] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = "digits_on_canvas.npz"


def digits_on_canvas(
    size: int = 24, copies: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvases [N, size, size, 1] in [0, 1], digit classes [N], boxes [N, 4] in [0, 1])."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values 0..16
    side = images.shape[1]
    if size < side:
        raise SystemExit(f"--size must be at least {side}, the digits' own size")
    rng = np.random.default_rng(seed)
    n = len(images) * copies
    x = np.zeros((n, size, size, 1), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    tops = rng.integers(0, size - side + 1, n)
    lefts = rng.integers(0, size - side + 1, n)
    for i in range(n):
        top, left = int(tops[i]), int(lefts[i])
        x[i, top : top + side, left : left + side, 0] = images[i % len(images)]
        boxes[i] = (top, left, top + side, left + side)
    return x, np.tile(digits.target, copies).astype(np.int64), boxes / size


def main() -> None:
    """Write the data set as an .npz with x, y_classes and y_box."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # NOTE: beside the spec by default, where its train section's `data` looks.
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name(OUT)))
    parser.add_argument("--size", type=int, default=24, help="canvas height and width")
    parser.add_argument("--copies", type=int, default=2, help="placements of each digit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, classes, boxes = digits_on_canvas(args.size, args.copies, args.seed)
    np.savez(Path(args.out), x=x, y_classes=classes, y_box=boxes)
    print(f"wrote {args.out}: {len(x)} canvases of {args.size}×{args.size}")


if __name__ == "__main__":
    main()
