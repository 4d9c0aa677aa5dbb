"""Make the segmentation data set: squares and discs on a noisy canvas, a class per pixel.

Each canvas (size×size, one channel, values in [0, 1]) holds one to three
filled shapes of random size, position and brightness over Gaussian noise;
its mask says what each pixel shows: 0 background, 1 square, 2 disc (a later
shape covers an earlier one). The .npz holds x [N, size, size, 1] float32 and
y [N, size, size] int64, the per-pixel labels examples/segmentation/unet.cnn
trains on with sparse_categorical_crossentropy:

    python examples/segmentation/make_data.py shapes.npz [--count 1000] [--size 32] [--seed 0]
    cnndsl run examples/segmentation/unet.cnn --data shapes.npz --epochs 5

(for another --size, add `--set size=N` to the run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BACKGROUND, SQUARE, DISC = 0, 1, 2
NOISE = 0.1  # standard deviation of the Gaussian noise added to every pixel


def shapes_on_canvas(
    count: int = 1000, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(canvases [count, size, size, 1] in [0, 1], per-pixel classes [count, size, size])."""
    if size < 8:
        raise SystemExit("--size must be at least 8: smaller shapes cannot be told apart")
    rng = np.random.default_rng(seed)
    x = np.zeros((count, size, size), np.float32)
    y = np.zeros((count, size, size), np.int64)
    rows, cols = np.mgrid[:size, :size]
    smallest, largest = max(4, size // 5), size // 2
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            side = int(rng.integers(smallest, largest + 1))
            top, left = rng.integers(0, size - side + 1, 2)
            if rng.random() < 0.5:
                inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
                kind = SQUARE
            else:
                # NOTE: a disc inscribed in the same box, so size alone never tells them apart.
                r = side / 2
                inside = (rows + 0.5 - top - r) ** 2 + (cols + 0.5 - left - r) ** 2 <= r * r
                kind = DISC
            x[i][inside] = rng.uniform(0.5, 1.0)
            y[i][inside] = kind
    x += rng.normal(0, NOISE, x.shape).astype(np.float32)
    return np.clip(x, 0, 1)[..., None], y


def main() -> None:
    """Write the data set as an .npz with x and y."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz to write, e.g. shapes.npz")
    parser.add_argument("--count", type=int, default=1000, help="number of canvases")
    parser.add_argument("--size", type=int, default=32, help="canvas height and width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.count < 2:
        raise SystemExit("--count must be at least 2 (a training and a test sample)")
    x, y = shapes_on_canvas(args.count, args.size, args.seed)
    np.savez(Path(args.out), x=x, y=y)
    share = np.bincount(y.reshape(-1), minlength=3) / y.size
    print(
        f"wrote {args.out}: {len(x)} canvases of {args.size}×{args.size}; pixels"
        f" {share[BACKGROUND]:.0%} background, {share[SQUARE]:.0%} square, {share[DISC]:.0%} disc"
    )


if __name__ == "__main__":
    main()
