"""Training-time augmentation of image batches."""

from __future__ import annotations

import numpy as np


def augment_images(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and random crop (pad by 1/8 edge-replicated, crop back)."""
    n, height, width = x.shape[:3]
    out = np.empty_like(x)
    ph, pw = max(1, height // 8), max(1, width // 8)
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")
    flips = np.asarray(rng.random(n)) < 0.5
    dy = rng.integers(0, 2 * ph + 1, n)
    dx = rng.integers(0, 2 * pw + 1, n)
    for i in range(n):  # per sample: whole-image slices, never per pixel
        crop = padded[i, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out
