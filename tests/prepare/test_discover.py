"""Slide discovery, sharding and the resolution tiling works from (opening: tests/test_slides.py)."""

from __future__ import annotations

import shutil

import pytest

from deref.errors import DataError
from deref.prepare.discover import discover_slides, parse_shard, resolve_mpp, shard, slide_stem
from deref.slides import open_slide, slide_info


def test_real_slides_resolution(slides_dir):
    cmu = open_slide(slides_dir / "cmu-1-small-region.svs")
    info = slide_info(cmu, slides_dir / "cmu-1-small-region.svs")
    assert info.vendor == "aperio" and info.dimensions == (2220, 2967)
    assert info.mpp == pytest.approx(0.499) and info.objective_power == 20
    assert resolve_mpp(info).source == "slide"

    dcm = open_slide(slides_dir / "boxes_0.dcm")
    info = slide_info(dcm, slides_dir / "boxes_0.dcm")
    assert info.vendor == "dicom" and info.mpp == pytest.approx(0.499)


def test_generic_tiff_72dpi_is_not_a_resolution(slides_dir):
    path = slides_dir / "boxes.tiff"
    info = slide_info(open_slide(path), path)
    assert info.level_count == 4 and info.mpp is None and "72 dpi" in info.mpp_note
    with pytest.raises(DataError, match="no usable resolution.*pass --mpp"):
        resolve_mpp(info)
    assert resolve_mpp(info, 0.5).source == "--mpp"


def test_objective_power_only_gives_mpp(tmp_path):
    import numpy as np

    from deref.slides import write_pyramidal_tiff

    p = write_pyramidal_tiff(
        tmp_path / "a.svs", [np.full((300, 300, 3), 200, np.uint8)], mpp=None, magnification=40
    )
    info = slide_info(open_slide(p), p)
    res = resolve_mpp(info)
    assert res.source == "objective-power" and res.mpp == pytest.approx(0.25)


def test_discovery_dedupes_dicom_series_and_rejects_name_clashes(slides_dir, tmp_path):
    found = discover_slides([slides_dir])
    names = [p.name for p in found]
    assert "boxes_0.dcm" in names and "boxes_1.dcm" not in names  # one DICOM series
    assert "cmu-1-small-region.svs" in names and "broken.svs" in names
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(slides_dir / "small.svs", tmp_path / "a" / "x.svs")
    shutil.copy(slides_dir / "small.svs", tmp_path / "b" / "x.tiff")
    with pytest.raises(DataError, match="same output name 'x'"):
        discover_slides([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DataError, match="no such file"):
        discover_slides([tmp_path / "nope"])
    assert slide_stem("a/b.ome.tiff") == "b"


def test_shard_partitions_deterministically():
    items = [f"slide{i:03d}" for i in range(23)]
    parts = [shard(items, k, 4) for k in range(1, 5)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))  # disjoint cover
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(list(reversed(items)), 2, 4) == parts[1]  # independent of listing order
    assert parse_shard("3/4") == (3, 4)
    for bad in ("0/4", "5/4", "x", "1/0", "1-4"):
        with pytest.raises(DataError, match="--shard"):
            parse_shard(bad)
