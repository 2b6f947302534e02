"""top_k_patches: order, full-resolution reads through OpenSlide (level 0 and level 1), gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from deref.errors import DataError, InputError
from deref.explain.patches import (
    PatchGeometry,
    PatchView,
    patch_gallery_image,
    patch_geometry,
    patches_at,
    top_k_indices,
    top_k_patches,
)


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


@pytest.fixture
def pyramid_tiff(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A two-level generic pyramidal TIFF (lossless), with its level-0 and level-1 pixels."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    level0 = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    level1 = level0.reshape(384, 2, 512, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    path = tmp_path / "pyramid.tiff"
    with tifffile.TiffWriter(path) as tif:
        # each level a top-level page (OpenSlide ignores SubIFDs); reduced levels subfiletype=1
        tif.write(level0, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None)
        tif.write(
            level1, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None, subfiletype=1
        )
    return path, level0, level1


def test_order_is_by_score_then_index():
    scores = [0.5, 0.9, 0.1, 0.9, 0.5]
    np.testing.assert_array_equal(top_k_indices(scores, 5), [1, 3, 0, 4, 2])
    np.testing.assert_array_equal(top_k_indices(scores, 5, largest=False), [2, 0, 4, 1, 3])
    assert top_k_indices(scores, 99).size == 5 and top_k_indices(scores, 0).size == 0
    with pytest.raises(InputError, match="k must be"):
        top_k_indices(scores, -1)


def test_without_a_slide_views_carry_scores_and_coords_only():
    coords = [[0, 0], [256, 0], [512, 0]]
    views = top_k_patches([0.2, 0.7, 0.7], coords, 2, 256)
    assert views == [PatchView(1, 0.7, 256, 0, None), PatchView(2, 0.7, 512, 0, None)]


def test_top_k_on_a_real_slide_equals_direct_openslide_reads(slides_dir):
    path = slides_dir / "cmu-1-small-region.svs"  # 2220 x 2967, one level
    rng = np.random.default_rng(3)
    coords = np.array([[x, y] for y in range(0, 2967 - 255, 256) for x in range(0, 2220 - 255, 256)])
    scores = rng.normal(size=len(coords))
    views = top_k_patches(scores, coords, 4, 256, 0, path)
    assert [v.index for v in views] == list(np.argsort(-scores)[:4])
    assert [v.score for v in views] == sorted((v.score for v in views), reverse=True)
    with openslide.OpenSlide(str(path)) as slide:
        for v in views:
            assert (v.x, v.y) == tuple(coords[v.index])
            assert v.image.mode == "RGB" and v.image.size == (256, 256)
            direct = slide.read_region((v.x, v.y), 0, (256, 256))
            white = Image.new("RGBA", direct.size, (255, 255, 255, 255))
            expected = np.asarray(Image.alpha_composite(white, direct).convert("RGB"))
            np.testing.assert_array_equal(np.asarray(v.image), expected)
    small = top_k_patches(scores, coords, 2, 256, 0, path, largest=False, out_size=64)
    assert [v.index for v in small] == list(np.argsort(scores)[:2])
    assert all(v.image.size == (64, 64) for v in small)


def test_patch_level_one_reads_level_one_with_level0_coords(pyramid_tiff):
    path, level0, level1 = pyramid_tiff
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 2 and slide.level_downsamples[1] == pytest.approx(2.0)
    # 64 px at level 1 = 128 level-0 px; coords stay level-0: (512, 256) -> level-1 (256, 128)
    coords = [[512, 256], [0, 0], [896, 640]]
    views = top_k_patches([0.9, 0.1, 0.5], coords, 3, 64, 1, path)
    assert [(v.index, v.x, v.y) for v in views] == [(0, 512, 256), (2, 896, 640), (1, 0, 0)]
    np.testing.assert_array_equal(np.asarray(views[0].image), level1[128:192, 256:320])
    np.testing.assert_array_equal(np.asarray(views[1].image), level1[320:384, 448:512])
    np.testing.assert_array_equal(np.asarray(views[2].image), level1[0:64, 0:64])
    # the same corner at level 0 reads level-0 pixels
    (v0,) = top_k_patches([1.0], [[512, 256]], 1, 64, 0, path)
    np.testing.assert_array_equal(np.asarray(v0.image), level0[256:320, 512:576])


def test_a_patch_off_the_slide_edge_is_white_there(pyramid_tiff):
    path, _, level1 = pyramid_tiff
    (v,) = top_k_patches([1.0], [[960, 0]], 1, 64, 1, path)  # level-1 x 480..543, slide ends at 512
    img = np.asarray(v.image)
    np.testing.assert_array_equal(img[:, :32], level1[0:64, 480:512])
    assert (img[:, 32:] == 255).all()


def test_slide_errors_are_specific(slides_dir, pyramid_tiff):
    with pytest.raises(DataError, match="missing.svs: slide file not found"):
        top_k_patches([1.0], [[0, 0]], 1, 8, 0, slides_dir / "missing.svs")
    with pytest.raises(DataError, match="broken.svs: not a slide format OpenSlide recognizes"):
        top_k_patches([1.0], [[0, 0]], 1, 8, 0, slides_dir / "broken.svs")
    with pytest.raises(DataError, match=r"cannot read patch 0 at level-0 \(0, 0\)"):
        top_k_patches([1.0], [[0, 0]], 1, 8, 0, slides_dir / "unreadable.svs")
    with pytest.raises(DataError, match="has 2 level"):
        top_k_patches([1.0], [[0, 0]], 1, 8, 2, pyramid_tiff[0])


def test_gallery_grid_has_one_labelled_cell_per_patch(pyramid_tiff):
    path, _, _ = pyramid_tiff
    coords = [[x, 0] for x in range(0, 640, 128)]
    views = top_k_patches(np.arange(5.0), coords, 5, 64, 1, path)
    grid = patch_gallery_image(views, ncols=3)
    assert grid.mode == "RGB"
    assert grid.width == 4 + 3 * (64 + 4)
    assert grid.height > 2 * (64 + 4)  # two rows, each with its label strip
    # the first cell holds the best patch, pixel for pixel
    np.testing.assert_array_equal(np.asarray(grid)[4 : 4 + 64, 4 : 4 + 64], np.asarray(views[0].image))
    no_images = patch_gallery_image(top_k_patches(np.arange(5.0), coords, 5, 64), ncols=5, tile_size=32)
    assert no_images.width == 4 + 5 * (32 + 4)


# ---------------------------------------------------------------------------------------------
# Patch geometry from a bag's attributes


def test_patch_geometry_rules_by_hand():
    # deref tile at 20x on a 40x scan read from level 0: 256 px patches cover 512 level-0 px
    ours = patch_geometry(
        {"patch_size": 256, "patch_level": 0, "downsample": 2.0, "read_size": 512, "level0_size": 512}
    )
    assert ours == PatchGeometry(size=256, level=0, downsample=2.0, read_size=512, extent0=512.0)
    # CLAM at level 1 of an Aperio pyramid (downsample 4, stored per axis)
    clam = patch_geometry({"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 4.0])})
    assert (clam.read_size, clam.level, clam.extent0) == (256, 1, 1024.0)
    # level > 0 without a downsample: the slide's level_downsamples, never a guess such as 2**level
    assert patch_geometry({"patch_size": 64, "patch_level": 2}, [1.0, 4.0, 16.0]).extent0 == 1024.0
    with pytest.raises(DataError, match="patch_level 2 but no downsample"):
        patch_geometry({"patch_size": 64, "patch_level": 2})
    bare = patch_geometry({})
    assert (bare.size, bare.level, bare.extent0, bare.assumed) == (
        256,
        0,
        256.0,
        ("patch_size", "patch_level"),
    )
    with pytest.raises(DataError, match="patch_size='x'"):
        patch_geometry({"patch_size": "x"})


def test_a_level_one_bag_reads_and_draws_its_own_patches(pyramid_tiff, tmp_path):
    from deref.data.bags import read_bag, write_bag_h5
    from deref.explain.heatmap import render_heatmap

    path, _, level1 = pyramid_tiff  # 1024 x 768, level 1 = downsample 2
    coords = np.array([[0, 0], [128, 0], [512, 256]])
    bag = write_bag_h5(
        tmp_path / "b.h5",
        np.zeros((3, 4), np.float32),
        coords,
        {"patch_size": 64, "patch_level": 1, "downsample": 2.0},
    )
    geom = patch_geometry(read_bag(bag).attrs)
    assert (geom.read_size, geom.level, geom.extent0) == (64, 1, 128.0)
    views = patches_at([0.0, 1.0, 2.0], coords, [2], geom.read_size, geom.level, path)
    np.testing.assert_array_equal(np.asarray(views[0].image), level1[128:192, 256:320])
    # a 1024-px canvas is level 0 at scale 1: patch 2 covers exactly level-0 x 512..639, y 256..383
    res = render_heatmap([0.0, 1.0, 2.0], coords, geom.extent0, (1024, 768), thumbnail_size=1024)
    assert res.boxes[2].tolist() == [512, 256, 640, 384]
    assert (res.patch_index[256:384, 512:640] == 2).all() and res.coverage.sum() == 3 * 128 * 128
