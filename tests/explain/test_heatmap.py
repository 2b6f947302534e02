"""render_heatmap geometry, normalization, blending and the pixel -> patch map; read_thumbnail."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from deref.errors import DataError, InputError
from deref.explain.heatmap import (
    canvas_size,
    normalize_scores,
    pixel_to_patch,
    render_heatmap,
)
from deref.slides import read_thumbnail


@pytest.fixture
def slides_dir(request) -> Path:
    """``../shared/data/slides`` beside the repository, or skip with the reason."""
    try:
        data = request.getfixturevalue("shared_data")
    except pytest.FixtureLookupError:
        data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if data is None or not (Path(data) / "slides").is_dir():
        pytest.skip(f"shared test data not found: no slides/ folder under {data}")
    return Path(data) / "slides"


def _covered_rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) half-open bounding box of a boolean mask, checking it is a full rectangle."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert mask[r0:r1, c0:c1].all() and mask.sum() == (r1 - r0) * (c1 - c0)
    return int(r0), int(r1), int(c0), int(c1)


# ---------------------------------------------------------------------------------------------
# Geometry


def test_single_patch_lands_on_hand_computed_pixels_when_sizes_do_not_divide():
    # Level 0 is 1000 x 750; a 333-px canvas keeps the aspect: 750 * 0.333 = 249.75 -> 250 rows.
    # sx = 333 / 1000 = 0.333 and sy = 250 / 750 = 1/3 differ: the scale is per axis.
    # Patch at (100, 200), 256 level-0 px. A pixel belongs to it when its centre is inside:
    #   column i centre at (i + 0.5) / 0.333 -> col 32: 97.6 (out), col 33: 100.6 (in),
    #   col 118: 355.9 (in), col 119: 358.9 (out, >= 356)            -> columns 33..118
    #   row j centre at (j + 0.5) * 3      -> row 66: 199.5 (out), row 67: 202.5 (in),
    #   row 151: 454.5 (in), row 152: 457.5 (out, >= 456)               -> rows 67..151
    res = render_heatmap([1.0], [[100, 200]], 256, (1000, 750), thumbnail_size=333)
    assert res.rgba.shape == (250, 333, 4) and res.rgba.dtype == np.uint8
    assert res.scale == pytest.approx((0.333, 1 / 3))
    assert _covered_rect(np.isfinite(res.overlay)) == (67, 152, 33, 119)
    assert _covered_rect(res.coverage == 1) == (67, 152, 33, 119)
    assert _covered_rect(res.patch_index == 0) == (67, 152, 33, 119)
    assert res.boxes.tolist() == [[33, 67, 119, 152]]
    coloured = (res.rgba[..., :3] != 255).any(axis=2)  # blank canvas is white
    assert _covered_rect(coloured) == (67, 152, 33, 119)
    assert (res.rgba[..., 3] == 255).all()


def test_single_patch_on_a_thumbnail_with_its_own_rounding():
    # A thumbnail of 333 x 249 (OpenSlide may round the other way): sy = 249 / 750 = 0.332.
    #   row 65 centre 65.5 / 0.332 = 197.3 (out), row 66: 200.3 (in),
    #   row 150: 453.3 (in), row 151: 456.3 (out)                      -> rows 66..150
    thumb = Image.new("RGB", (333, 249), (200, 180, 190))
    res = render_heatmap([1.0], [[100, 200]], 256, (1000, 750), thumb, opacity=1.0)
    assert res.rgba.shape == (249, 333, 4)
    assert res.scale == pytest.approx((0.333, 0.332))
    assert _covered_rect(res.patch_index == 0) == (66, 151, 33, 119)
    changed = (res.rgba[..., :3] != np.array([200, 180, 190])).any(axis=2)
    assert _covered_rect(changed) == (66, 151, 33, 119)


def _naive_boxes(coords, size, level0, canvas):
    """Independent reference: test every pixel centre against every patch (loops, small inputs).

    Centre of pixel i is at level-0 (i + 1/2) * W0 / W; compared exactly as
    (2 i + 1) * W0 >= 2 x W (integers), so centres lying exactly on an edge are decided exactly.
    """
    (w0, h0), (cw, ch) = level0, canvas
    twice_cx = (2 * np.arange(cw) + 1) * w0  # 2 * W * centre
    twice_cy = (2 * np.arange(ch) + 1) * h0
    masks = []
    for x, y in coords:
        cols = (twice_cx >= 2 * x * cw) & (twice_cx < 2 * (x + size) * cw)
        rows = (twice_cy >= 2 * y * ch) & (twice_cy < 2 * (y + size) * ch)
        masks.append(rows[:, None] & cols[None, :])
    return masks


def test_random_overlapping_patches_match_a_naive_per_patch_loop():
    rng = np.random.default_rng(7)
    level0, size = (5000, 3700), 300  # canvas 311 x 230: 9.3 canvas px per patch
    coords = np.stack([rng.integers(0, 4800, 150), rng.integers(0, 3500, 150)], axis=1)
    scores = rng.normal(size=150)
    res = render_heatmap(scores, coords, size, level0, thumbnail_size=311, normalization="raw")
    assert res.rgba.shape[:2] == (230, 311)
    masks = _naive_boxes(coords, size, level0, (311, 230))
    values = (scores - scores.min()) / (scores.max() - scores.min())
    total = np.zeros((230, 311))
    count = np.zeros((230, 311), dtype=int)
    last = np.full((230, 311), -1)
    for i, m in enumerate(masks):
        total[m] += values[i]
        count[m] += 1
        last[m] = i
    np.testing.assert_array_equal(res.coverage, count)
    np.testing.assert_array_equal(res.patch_index, last)
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(res.overlay, expected, rtol=0, atol=1e-6, equal_nan=True)
    # highest score wins instead of highest index
    res = render_heatmap(scores, coords, size, level0, thumbnail_size=311, index_priority="score")
    best = np.full((230, 311), -1)
    for i in np.lexsort((np.arange(150), scores)):  # ascending score, ties by index
        best[masks[i]] = i
    np.testing.assert_array_equal(res.patch_index, best)


def test_fractional_coordinates_follow_the_same_pixel_centre_rule():
    # Non-integer inputs (e.g. a downsample of 4.0001) take the float path; same rule.
    rng = np.random.default_rng(11)
    coords = np.stack([rng.integers(0, 4800, 60), rng.integers(0, 3500, 60)], axis=1) + 0.25
    res = render_heatmap(np.ones(60), coords, 300, (5000, 3700), thumbnail_size=311)
    for i, m in enumerate(_naive_boxes(coords, 300, (5000, 3700), (311, 230))):
        assert _covered_rect(m) == (res.boxes[i, 1], res.boxes[i, 3], res.boxes[i, 0], res.boxes[i, 2])


def test_full_grid_covers_every_canvas_pixel_exactly_once():
    # 50-px patches tile 1000 x 750 (20 x 15); 333 / 1000 is not a divisor of anything.
    gx, gy = np.meshgrid(np.arange(0, 1000, 50), np.arange(0, 750, 50))
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    res = render_heatmap(np.arange(len(coords)), coords, 50, (1000, 750), thumbnail_size=333)
    assert (res.coverage == 1).all()
    counts = np.bincount(res.patch_index.ravel(), minlength=len(coords))
    assert counts.sum() == 333 * 250 and (counts > 0).all()
    # Edge patches hanging off the slide (CLAM keeps them): 128-px grid over 1000 x 750.
    gx, gy = np.meshgrid(np.arange(0, 1000, 128), np.arange(0, 750, 128))
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    res = render_heatmap(np.ones(len(coords)), coords, 128, (1000, 750), thumbnail_size=333)
    assert (res.coverage == 1).all()


def test_sub_pixel_patches_each_land_on_the_pixel_holding_their_centre():
    # 20-px patches on a 10000 x 7500 slide drawn 333 px wide: 0.67 canvas px each.
    gx, gy = np.meshgrid(np.arange(0, 10000, 20), np.arange(0, 7500, 20))
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    res = render_heatmap(np.ones(len(coords)), coords, 20, (10000, 7500), thumbnail_size=333)
    assert res.coverage.sum() == len(coords)  # every patch drawn once
    assert (res.coverage >= 1).all()  # and no hole
    x0, y0, x1, y1 = res.boxes.T
    assert ((x1 - x0) == 1).all() and ((y1 - y0) == 1).all()
    np.testing.assert_array_equal(x0, np.floor((coords[:, 0] + 10) * 333 / 10000).astype(int))


def test_patch_level_and_downsample_give_the_level0_extent():
    coords = [[0, 0], [4096, 2048]]
    a = render_heatmap([0.2, 0.9], coords, 1024, (8192, 6144), thumbnail_size=512)
    b = render_heatmap(
        [0.2, 0.9], coords, 256, (8192, 6144), thumbnail_size=512, patch_level=1, downsample=4.0
    )
    np.testing.assert_array_equal(a.rgba, b.rgba)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    with pytest.raises(InputError, match="downsample"):
        render_heatmap([0.2, 0.9], coords, 256, (8192, 6144), patch_level=1)


def test_level0_dims_inferred_from_the_patches_when_unknown():
    res = render_heatmap([1.0, 2.0], [[0, 0], [300, 100]], 100, None, thumbnail_size=100)
    assert res.rgba.shape[:2] == (50, 100)  # extent 400 x 200
    assert res.scale == pytest.approx((0.25, 0.25))


# ---------------------------------------------------------------------------------------------
# Values


def test_overlapping_patches_are_averaged():
    # Scale 1: canvas = level 0 = 200 x 100. Patch 0 on columns 0..99, patch 1 on 50..149.
    res = render_heatmap([0.0, 1.0], [[0, 0], [50, 0]], 100, (200, 100), normalization="raw")
    ov = res.overlay
    np.testing.assert_allclose(ov[:, :50], 0.0, atol=1e-9)
    np.testing.assert_allclose(ov[:, 50:100], 0.5, atol=1e-9)
    np.testing.assert_allclose(ov[:, 100:150], 1.0, atol=1e-9)
    assert np.isnan(ov[:, 150:]).all()
    assert (res.coverage[:, 50:100] == 2).all()
    assert (res.patch_index[:, 50:100] == 1).all()  # "last": the higher index
    res = render_heatmap([1.0, 0.0], [[0, 0], [50, 0]], 100, (200, 100), index_priority="score")
    assert (res.patch_index[:, 50:100] == 0).all()  # "score": the higher score


def test_percentile_normalization_is_the_rank():
    scores = [10.0, 0.1, 5.0, 5.0, 7.0]
    coords = [[i * 100, 0] for i in range(5)]
    res = render_heatmap(scores, coords, 100, (500, 100))
    # ranks 5, 1, 2.5 (tie), 2.5, 4 -> (r - 1) / 4
    expected = [1.0, 0.0, 0.375, 0.375, 0.75]
    np.testing.assert_allclose(res.values, expected)
    np.testing.assert_allclose(res.overlay[50, [50, 150, 250, 350, 450]], expected, atol=1e-9)
    assert res.norm_range == (0.1, 10.0)
    # a monotone transform of the scores changes nothing
    res2 = render_heatmap(np.exp(scores), coords, 100, (500, 100))
    np.testing.assert_array_equal(res.rgba, res2.rgba)


def test_percentile_ranks_match_scipy_rankdata_with_ties():
    from scipy.stats import rankdata

    s = np.random.default_rng(5).integers(0, 30, 500).astype(float)  # many ties
    np.testing.assert_allclose(normalize_scores(s)[0], (rankdata(s) - 1) / 499)


def test_raw_and_clip_normalization():
    s = np.arange(101, dtype=float)  # 0..100
    v, rng = normalize_scores(s, "raw")
    np.testing.assert_allclose(v, s / 100)
    assert rng == (0.0, 100.0)
    v, rng = normalize_scores(s, "clip", clip=(10, 90))
    assert rng == pytest.approx((10.0, 90.0))
    np.testing.assert_allclose(v[[5, 10, 50, 90, 95]], [0.0, 0.0, 0.5, 1.0, 1.0])
    # degenerate ranges map to the middle of the colormap
    np.testing.assert_allclose(normalize_scores(np.full(4, 3.0), "raw")[0], 0.5)
    np.testing.assert_allclose(normalize_scores(np.full(4, 3.0), "percentile")[0], 0.5)
    sparse = np.r_[np.zeros(300), 1.0, 2.0]  # 1st and 99th percentiles both 0: zeros -> 0
    np.testing.assert_allclose(normalize_scores(sparse, "clip")[0], np.r_[np.zeros(300), 1.0, 1.0])
    dense_top = np.r_[-1.0, np.ones(300)]  # both percentiles 1, nothing above: ones -> 1
    np.testing.assert_allclose(normalize_scores(dense_top, "clip")[0], np.r_[0.0, np.ones(300)])
    with pytest.raises(InputError, match="normalization"):
        normalize_scores(s, "zscore")


def test_threshold_hides_values_below_it():
    thumb = np.full((100, 200, 3), 120, dtype=np.uint8)
    res = render_heatmap(
        [0.0, 0.4, 1.0],
        [[0, 0], [70, 0], [140, 0]],
        60,
        (200, 100),
        thumb,
        normalization="raw",
        threshold=0.5,
    )
    assert not res.shown[:, :60].any() and not res.shown[:, 70:130].any()
    assert res.shown[:60, 140:200].all()
    np.testing.assert_array_equal(res.rgba[:, :130, :3], thumb[:, :130])
    assert (res.rgba[:60, 140:200, :3] != 120).any(axis=2).all()
    assert np.isfinite(res.overlay[:60, 70:130]).all()  # the map keeps the hidden values


def test_blank_canvas_colours_only_patches_with_the_exact_colormap():
    res = render_heatmap(
        [0.0, 1.0],
        [[0, 0], [1000, 500]],
        500,
        (2000, 1000),
        thumbnail_size=400,
        normalization="raw",
        cmap="viridis",
        opacity=1.0,
        blank_color=(10, 20, 30),
    )
    assert res.rgba.shape == (200, 400, 4)
    lut = np.rint(matplotlib.colormaps["viridis"]([0.0, 1.0])[:, :3] * 255).astype(int)
    np.testing.assert_array_equal(res.rgba[:100, :100, :3].reshape(-1, 3), np.tile(lut[0], (100 * 100, 1)))
    np.testing.assert_array_equal(res.rgba[100:, 200:300, :3].reshape(-1, 3), np.tile(lut[1], (100 * 100, 1)))
    uncovered = res.coverage == 0
    assert uncovered.sum() == 400 * 200 - 2 * 100 * 100
    assert (res.rgba[uncovered][:, :3] == [10, 20, 30]).all()


def test_opacity_blends_colour_and_thumbnail():
    rng = np.random.default_rng(1)
    thumb = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    res = render_heatmap([1.0], [[0, 0]], 80, (80, 50), thumb, opacity=0.4, cmap="jet")
    colour = np.rint(np.asarray(matplotlib.colormaps["jet"](0.5))[:3] * 255)  # single patch -> 0.5
    a = round(0.4 * 255) / 255
    expected = thumb * (1 - a) + colour * a
    assert np.abs(res.rgba[..., :3].astype(float) - expected).max() <= 1.0
    res0 = render_heatmap([1.0], [[0, 0]], 80, (80, 50), thumb, opacity=0.0)
    np.testing.assert_array_equal(res0.rgba[..., :3], thumb)


def test_smoothing_is_a_normalized_convolution_over_the_tissue():
    # A constant map stays constant up to the tissue's edge, and the background stays empty.
    coords = [[x, y] for x in range(100, 400, 50) for y in range(100, 300, 50)]
    res = render_heatmap(np.ones(len(coords)), coords, 50, (500, 400), smooth_sigma=6)
    covered = res.coverage > 0
    np.testing.assert_allclose(res.overlay[covered], 0.5, atol=1e-5)
    assert np.isnan(res.overlay[~covered]).all() and not res.shown[~covered].any()
    # A step 0 | 1 becomes a monotone ramp across the boundary (x = 250).
    scores = [0.0 if x < 250 else 1.0 for x, _ in coords]
    res = render_heatmap(scores, coords, 50, (500, 400), normalization="raw", smooth_sigma=6)
    row = res.overlay[200, 100:400]
    assert (np.diff(row) >= -1e-6).all() and row[0] < 0.01 and row[-1] > 0.99 and 0.3 < row[150] < 0.7
    # tissue_only=False colours the background too (as value 0, blurred like the rest)
    res = render_heatmap(
        scores, coords, 50, (500, 400), normalization="raw", smooth_sigma=6, tissue_only=False
    )
    assert res.shown.all() and np.isnan(res.overlay[~covered]).all()


def test_click_maps_back_to_the_patch():
    coords = [[0, 0], [500, 0], [0, 500], [700, 700]]
    res = render_heatmap([1, 2, 3, 4], coords, 200, (1000, 1000), thumbnail_size=100)
    for i, (x, y) in enumerate(coords):
        x0, y0, x1, y1 = res.boxes[i]
        assert pixel_to_patch(res, (x0 + x1) / 2, (y0 + y1) / 2) == i
        assert pixel_to_patch(res, x0 + 0.99, y1 - 0.01) == i  # fractional event coordinates
        # the level-0 centre of the patch, scaled, is the same pixel
        assert pixel_to_patch(res, (x + 100) * res.scale[0], (y + 100) * res.scale[1]) == i
    assert pixel_to_patch(res, 30, 30) is None  # between patches
    assert pixel_to_patch(res, -1, 5) is None and pixel_to_patch(res, 100, 5) is None
    assert pixel_to_patch(res, float("nan"), 5) is None


def test_twenty_thousand_patches_render_without_a_loop():
    rng = np.random.default_rng(0)
    w0, h0, ps = 120_000, 80_000, 512
    gx, gy = np.meshgrid(np.arange(0, w0, ps), np.arange(0, h0, ps))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    coords = grid[rng.choice(len(grid), 20_000, replace=False)]
    res = render_heatmap(rng.gamma(0.3, size=20_000), coords, ps, (w0, h0), smooth_sigma=2)
    assert res.rgba.shape == (1365, 2048, 4)
    x0, y0, x1, y1 = res.boxes.T.astype(np.int64)
    assert res.coverage.sum() == ((x1 - x0) * (y1 - y0)).sum()
    assert res.coverage.max() == 1
    assert set(np.unique(res.patch_index)) == set(range(20_000)) | {-1}


def test_empty_bag_returns_the_thumbnail():
    thumb = np.full((30, 40, 3), 77, dtype=np.uint8)
    res = render_heatmap(np.zeros(0), np.zeros((0, 2)), 10, (400, 300), thumb)
    np.testing.assert_array_equal(res.rgba[..., :3], thumb)
    assert np.isnan(res.overlay).all() and (res.patch_index == -1).all()


def test_transparent_thumbnail_goes_onto_white():
    thumb = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent black
    res = render_heatmap([1.0], [[0, 0]], 5, (20, 20), thumb)
    assert (res.rgba[10:, 10:, :3] == 255).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [1.0, 2.0]}, "2 entries but coords has 1"),
        ({"scores": [np.nan]}, "non-finite"),
        ({"coords": [[5000, 0]]}, "outside the slide"),
        ({"cmap": "no-such-map"}, "colormap"),
        ({"opacity": 1.5}, "opacity"),
        ({"threshold": 2.0}, "threshold"),
        ({"clip": (50, 10)}, "clip"),
        ({"level0_dims": (0, 10)}, "level0_dims"),
        ({"thumbnail": np.zeros((4, 4, 3), dtype=np.float32)}, "uint8"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    args = {"scores": [1.0], "coords": [[0, 0]], "patch_size": 10, "level0_dims": (100, 100)} | kwargs
    with pytest.raises(InputError, match=message):
        render_heatmap(**args)


def test_canvas_size_keeps_aspect_and_never_upscales():
    assert canvas_size((1000, 750), 333) == (333, 250)
    assert canvas_size((750, 1000), 2048) == (750, 1000)
    assert canvas_size((100_000, 10), 2048) == (2048, 1)


# ---------------------------------------------------------------------------------------------
# Thumbnails through OpenSlide


def test_read_thumbnail_of_a_real_slide_and_draw_on_it(slides_dir):
    thumb, dims = read_thumbnail(slides_dir / "cmu-1-small-region.svs", max_size=512)
    assert dims == (2220, 2967)
    assert thumb.mode == "RGB" and max(thumb.size) == 512
    coords = [[x, y] for x in range(0, 2220, 256) for y in range(0, 2967, 256)]
    res = render_heatmap(np.arange(len(coords)), coords, 256, dims, thumb)
    assert res.rgba.shape == (thumb.size[1], thumb.size[0], 4)
    assert res.scale == pytest.approx((thumb.size[0] / 2220, thumb.size[1] / 2967))
    assert (res.coverage >= 1).all()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-slide.svs", "no-such-slide.svs: slide file not found"),
        ("broken.svs", "broken.svs: not a slide format OpenSlide recognizes"),
        ("unopenable.tiff", "unopenable.tiff: OpenSlide cannot open this .*Unsupported TIFF compression"),
        ("unreadable.svs", "unreadable.svs: aperio file opens but its pixels cannot be decoded"),
    ],
)
def test_read_thumbnail_errors_are_one_line_and_specific(slides_dir, name, message):
    with pytest.raises(DataError, match=message) as info:
        read_thumbnail(slides_dir / name)
    assert "\n" not in str(info.value) and name in str(info.value)
