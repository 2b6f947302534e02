"""Helpers of the preparation tests (a module with a unique name, so that test files can
import it whatever other ``conftest`` modules the suite holds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

TISSUE_PINK = np.array([226, 150, 190], np.float32)
TISSUE_PURPLE = np.array([120, 70, 160], np.float32)
BACKGROUND = np.array([243, 243, 241], np.float32)
PEN_BLUE = np.array([30, 70, 200], np.float32)
PEN_GREEN = np.array([40, 160, 90], np.float32)


def synthetic_slide(height: int = 2048, width: int = 3072, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB image (H, W, 3) uint8 and its true tissue mask (H, W) bool.

    Two tissue blobs (pink stroma with purple nuclei), one with a large hole (a lumen), a
    blue pen stroke and a green pen circle on the glass, a black marker dot.
    """
    rng = np.random.default_rng(seed)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]

    def ellipse(cy, cx, ry, rx):
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0

    tissue = ellipse(0.45 * height, 0.3 * width, 0.3 * height, 0.2 * width)
    tissue |= ellipse(0.55 * height, 0.68 * width, 0.28 * height, 0.15 * width)
    hole = ellipse(0.45 * height, 0.3 * width, 0.07 * height, 0.05 * width)
    tissue &= ~hole
    img = np.broadcast_to(BACKGROUND, (height, width, 3)).copy()
    mix = rng.random((height // 8, width // 8)).repeat(8, 0).repeat(8, 1)[:height, :width, None]
    tissue_rgb = TISSUE_PINK * (1 - 0.6 * mix) + TISSUE_PURPLE * 0.6 * mix
    img[tissue] = tissue_rgb[tissue]
    nuclei = (rng.random((height, width)) < 0.01) & tissue
    img[nuclei] = TISSUE_PURPLE * 0.7
    # Pen marks on the glass: a thick blue line and a green ring; a black marker dot.
    blue = (
        (np.abs((yy - 0.9 * height) - 0.05 * (xx - 0.1 * width)) < 14)
        & (xx < 0.9 * width)
        & (xx > 0.1 * width)
    )
    ring = np.abs(np.sqrt((yy - 0.15 * height) ** 2 + (xx - 0.9 * width) ** 2) - 0.08 * height) < 10
    blue &= ~tissue
    ring &= ~tissue
    img[blue] = PEN_BLUE
    img[ring] = PEN_GREEN
    img[ellipse(0.1 * height, 0.08 * width, 40, 40)] = (15, 15, 20)
    img += rng.integers(-5, 6, img.shape, dtype=np.int8)
    return img.clip(0, 255).astype(np.uint8), tissue
