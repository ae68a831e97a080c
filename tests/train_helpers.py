"""Helpers shared by the training tests: smooth training images."""

from __future__ import annotations

import numpy as np
from PIL import Image


def make_images(folder, n=4, size=72):
    """``n`` smooth, distinct colour images (structure the model can learn quickly)."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.stack([np.sin(6.28 * x * (i + 1) + i), np.cos(6.28 * y * (i + 2)), x * y], -1)
        Image.fromarray(((img * 0.5 + 0.5) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder
