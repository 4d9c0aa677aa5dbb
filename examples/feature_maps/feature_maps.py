"""Hands-On ML's feature-map figure, with cnndsl: two hand-set line filters on two photos.

Runs scikit-learn's sample images (china.jpg, flower.jpg) through the
7×7 convolution of lines.cnn whose two filters are set by hand (vertical
line: column 3 of the kernel is 1; horizontal line: row 3 is 1), and draws
each image beside its two feature maps. Also writes the weights to
lines.npz, so the same maps come from the command line:

    python examples/feature_maps/feature_maps.py --out /tmp/maps
    cnndsl plot examples/feature_maps/lines.cnn --load /tmp/maps/lines.npz \\
        --feature-maps /tmp/maps/china.png --layer lines -o /tmp/maps/china_lines.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import cnndsl  # noqa: E402
from cnndsl.plot.maps import feature_maps  # noqa: E402

HERE = Path(__file__).resolve().parent
SPEC = HERE / "lines.cnn"


def line_filters(size: int = 7, channels: int = 3) -> np.ndarray:
    """The book's two filters, Keras layout [fh, fw, in, out]: vertical, then horizontal."""
    kernel = np.zeros((size, size, channels, 2), np.float32)
    kernel[:, size // 2, :, 0] = 1  # vertical line: the middle column (column 3 of 7)
    kernel[size // 2, :, :, 1] = 1  # horizontal line: the middle row
    return kernel


def sample_images() -> dict[str, np.ndarray]:
    """scikit-learn's two sample photos by name, as float arrays in [0, 1]."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    names = [Path(f).stem for f in data.filenames]
    return {n: img.astype(np.float32) / 255 for n, img in zip(names, data.images, strict=True)}


def line_model(height: int, width: int) -> cnndsl.Network:
    """lines.cnn compiled for one image size."""
    return cnndsl.compile(SPEC, height=height, width=width)


def main(argv: list[str] | None = None) -> int:
    """Write feature_maps.png (the figure), lines.npz (weights) and the photos as PNGs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    images = sample_images()
    rows = []
    for name, image in images.items():
        net = line_model(*image.shape[:2])
        model = net.build(seed=0)
        model.set_weights([line_filters()])
        if not (args.out / "lines.npz").exists():
            model.save(args.out / "lines.npz")
        Image.fromarray((image * 255).round().astype(np.uint8)).save(args.out / f"{name}.png")
        rows.append((name, image, feature_maps(model, image, "lines")))

    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.2 * len(rows)), layout="constrained")
    for (name, image, maps), ax in zip(rows, axes, strict=True):
        ax[0].imshow(image)
        ax[0].set_title(f"{name}.jpg")
        for i, what in enumerate(("vertical line filter", "horizontal line filter")):
            ax[i + 1].imshow(maps[:, :, i], cmap="gray")
            ax[i + 1].set_title(f"feature map {i + 1}: {what}")
        for a in ax:
            a.set_axis_off()
    fig.savefig(args.out / "feature_maps.png", dpi=100)
    plt.close(fig)
    print(f"wrote {args.out / 'feature_maps.png'}, {args.out / 'lines.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
