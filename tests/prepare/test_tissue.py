"""Tissue mask: against drawn ground truth, against scikit-image, and on the real H&E slide."""

from __future__ import annotations

import numpy as np
import pytest
from prepare_helpers import synthetic_slide
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from deref.prepare.tissue import (
    TissueParams,
    fill_small_holes,
    hue,
    otsu_threshold,
    remove_small_components,
    saturation_value,
    tissue_mask,
)


@pytest.fixture(scope="module")
def small_synthetic():
    return synthetic_slide(height=384, width=576, seed=3)


def test_hsv_matches_scikit_image():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    h, (sat, val) = hue(rgb), saturation_value(rgb)
    ref = rgb2hsv(rgb)
    assert np.allclose(sat / 255.0, ref[..., 1], atol=1e-5)
    assert np.allclose(val, ref[..., 2], atol=1e-6)
    d = np.abs(h / 360.0 - ref[..., 0])
    assert np.all(np.minimum(d, 1 - d)[ref[..., 1] > 0] < 1e-4)


def test_otsu_matches_scikit_image():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(5, 2, 5000), rng.normal(90, 15, 3000)]).clip(0, 255)
    assert abs(otsu_threshold(values) - threshold_otsu(values)) <= 2.0


def test_mask_matches_drawn_tissue_and_excludes_pen_and_holes(small_synthetic):
    img, truth = small_synthetic
    tm = tissue_mask(img, mpp=8.0)
    inter = (tm.mask & truth).sum()
    union = (tm.mask | truth).sum()
    assert inter / union > 0.9
    assert tm.pen_fraction > 0.005  # the pen strokes were seen ...
    h, w = truth.shape
    yy, xx = np.mgrid[0:h, 0:w]
    hole = ((yy - 0.45 * h) / (0.07 * h)) ** 2 + ((xx - 0.3 * w) / (0.05 * w)) ** 2 <= 0.5
    assert not tm.mask[hole].any()  # ... the lumen stays out,
    pen_or_marker = (~truth) & (np.abs(img.astype(int) - img.mean(axis=-1, keepdims=True)).max(-1) > 40)
    assert tm.mask[pen_or_marker].mean() < 0.02  # and so do ink and marker
    without_filter = tissue_mask(img, mpp=8.0, params=TissueParams(pen_filter=False))
    assert without_filter.mask[pen_or_marker].mean() > 0.5  # the filter is what removes them


def test_area_rules():
    mask = np.zeros((60, 60), bool)
    mask[5:45, 5:45] = True
    mask[20:23, 20:23] = False  # 9-pixel hole
    mask[30:38, 30:38] = False  # 64-pixel hole
    mask[50:52, 50:52] = True  # 4-pixel speck
    out = remove_small_components(mask, 10)
    assert not out[50:52, 50:52].any() and out[5:45, 5:45].sum() == mask[5:45, 5:45].sum()
    out = fill_small_holes(out, 20)
    assert out[20:23, 20:23].all() and not out[30:38, 30:38].any()


def test_real_slide_mask_covers_tissue_not_background(slides_dir):
    import openslide

    from deref.prepare.tile import read_downsampled

    slide = openslide.OpenSlide(str(slides_dir / "cmu-1-small-region.svs"))
    rgb = read_downsampled(slide, 16.0)  # ~8 um/px
    tm = tissue_mask(rgb, mpp=0.499 * 16)
    sat, val = saturation_value(rgb)
    clear_tissue = sat > 80
    clear_glass = (sat < 8) & (val > 0.9)
    assert 0.2 < tm.fraction < 0.5
    assert tm.mask[clear_tissue].mean() > 0.9
    assert tm.mask[clear_glass].mean() < 0.08
    # The slide's left third is glass with a thin strand; the right-centre holds the tissue.
    h, w = tm.mask.shape
    assert tm.mask[: h // 4, : w // 4].mean() < 0.02
    assert tm.mask[h // 2 :, w // 3 : 2 * w // 3].mean() > 0.9
