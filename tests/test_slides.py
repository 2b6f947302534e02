"""deref.slides: one error vocabulary for every way a slide fails, metadata, region and
thumbnail reads, and the pyramidal TIFF writer checked through OpenSlide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest

from deref.errors import DataError
from deref.slides import (
    block_mean,
    open_slide,
    pyramid_levels,
    read_regions,
    read_thumbnail,
    slide_info,
    write_pyramidal_tiff,
)


@pytest.fixture(scope="module")
def slides_dir(shared_data) -> Path:
    d = shared_data / "slides"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


def _error(call, path) -> str:
    with pytest.raises(DataError) as info:
        call(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


@pytest.mark.parametrize("call", [open_slide, read_thumbnail, lambda p: read_regions(p, [(0, 0)], 0, (8, 8))])
def test_every_reader_names_the_file_and_the_problem_on_one_line(slides_dir, tmp_path, call):
    assert _error(call, tmp_path / "missing.svs").endswith("slide file not found")
    assert _error(call, tmp_path).endswith("is a folder, not a slide file")
    assert "not a slide format OpenSlide recognizes" in _error(call, slides_dir / "broken.svs")
    msg = _error(call, slides_dir / "unopenable.tiff")
    assert "OpenSlide cannot open this" in msg and "Unsupported TIFF compression: 52479" in msg


def test_undecodable_pixels_are_reported_by_what_was_being_read(slides_dir):
    path = slides_dir / "unreadable.svs"
    msg = _error(open_slide, path)
    assert "aperio file opens but its pixels cannot be decoded (level" in msg and "Bogus marker length" in msg
    assert "pixels cannot be decoded (thumbnail of at most 2048 px)" in _error(read_thumbnail, path)
    msg = _error(lambda p: read_regions(p, [(0, 0)], 0, (8, 8), names=["patch 7"]), path)
    assert "cannot read patch 7 at level-0 (0, 0), level 0, size 8 x 8: Bogus marker length" in msg


def test_real_slide_metadata(slides_dir):
    path = slides_dir / "cmu-1-small-region.svs"
    slide = open_slide(path)
    info = slide_info(slide, path)
    slide.close()
    assert info.vendor == "aperio" and info.dimensions == (2220, 2967) and info.level_count == 1
    assert info.mpp == pytest.approx(0.499) and info.objective_power == 20
    tiff = slides_dir / "boxes.tiff"  # 72 dpi resolution tags: not a scan resolution
    slide = open_slide(tiff)
    info = slide_info(slide, tiff)
    slide.close()
    assert info.mpp is None and "352.8 um/px (72 dpi" in info.mpp_note


def test_block_mean_and_pyramid_by_hand():
    img = np.array([[[0], [1], [2], [9]], [[3], [4], [6], [9]], [[5], [5], [5], [5]]], np.uint8)
    # blocks (0,1,3,4) -> 2.0, (2,9,6,9) -> 6.5 rounds half up to 7; the partial third row is dropped
    np.testing.assert_array_equal(block_mean(img, 2)[..., 0], [[2, 7]])
    levels = pyramid_levels(np.zeros((64, 40, 3), np.uint8), n_levels=5, factor=4)
    assert [lev.shape[:2] for lev in levels] == [(64, 40), (16, 10), (4, 2)]  # 2 px < factor: stop


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(
        np.uint8
    )


def test_written_tiff_is_an_aperio_slide_with_its_pixels(tmp_path):
    img = _gradient(1000, 1300)  # not a multiple of the tile: padded edge tiles
    path = write_pyramidal_tiff(
        tmp_path / "s" / "a.svs", pyramid_levels(img, 3, 4), mpp=0.25, magnification=40
    )
    assert not list(path.parent.glob(".*"))  # written under a temporary name, then renamed
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == 0.25
        assert s.properties["openslide.objective-power"] == "40"
        assert s.level_dimensions == ((1300, 1000), (325, 250), (81, 62))
        assert s.level_downsamples[1] == pytest.approx(4.0)
        got = np.asarray(s.read_region((0, 0), 0, (1300, 1000)).convert("RGB"), dtype=float)
        assert np.abs(got - img).mean() < 2.0  # JPEG Q90 on a smooth gradient
        assert "thumbnail" in s.associated_images
    again = write_pyramidal_tiff(tmp_path / "b.svs", pyramid_levels(img, 3, 4), mpp=0.25, magnification=40)
    assert again.read_bytes() == path.read_bytes()  # deterministic


def test_written_tiff_without_resolution_is_generic(tmp_path):
    img = _gradient(512, 512)
    path = write_pyramidal_tiff(tmp_path / "g.tiff", pyramid_levels(img, 2, 2), mpp=None, magnification=None)
    slide = open_slide(path)
    info = slide_info(slide, path)
    rgb = read_regions(path, [(256, 256)], 1, (64, 64))[0]
    slide.close()
    assert info.vendor == "generic-tiff" and info.mpp is None and info.objective_power is None
    assert info.level_dimensions == ((512, 512), (256, 256))
    assert np.abs(rgb.astype(float) - block_mean(img, 2)[128:192, 128:192]).mean() < 2.0


def test_reading_past_the_edge_is_white_and_a_missing_level_is_named(tmp_path):
    img = np.full((256, 256, 3), 40, np.uint8)
    path = write_pyramidal_tiff(tmp_path / "e.svs", [img])
    (rgb,) = read_regions(path, [(200, 0)], 0, (100, 10))
    assert (rgb[:, :56] < 60).all() and (rgb[:, 56:] == 255).all()
    with pytest.raises(DataError, match=r"e\.svs: has 1 level\(s\) \(0\.\.0\); level 1 was requested"):
        read_regions(path, [(0, 0)], 1, (8, 8))
    thumb, dims = read_thumbnail(path, 64)
    assert dims == (256, 256) and thumb.size == (64, 64) and thumb.mode == "RGB"
