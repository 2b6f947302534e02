"""The Attention page's clickable overlay: a click names the patch under it, the rank box follows,
and the figure's markers and outline sit on the heatmap's own patch boxes."""

from __future__ import annotations

import numpy as np
import pytest

from app.overlay import apply_click, patch_at_rank, rank_of
from deref.errors import InputError
from deref.explain.heatmap import pixel_to_patch, render_heatmap
from deref.explain.patches import PatchView, patches_at, top_k_patches
from deref.figures import clicked_patch, slide_overlay_figure


def _event(*points: dict) -> dict:
    return {"selection": {"points": list(points), "point_indices": [], "box": [], "lasso": []}}


def test_clicked_patch_is_the_point_index():
    # what Streamlit hands back for a click (seen in the browser test): customdata is the score
    click = {"curve_number": 1, "point_number": 6, "point_index": 6, "x": 240, "y": 240, "customdata": 0.06}
    assert clicked_patch(_event(click), 10) == 6
    assert clicked_patch(_event({"point_index": 3}), 10) == 3
    # out of range (a stale event from another slide) and points without an index are ignored
    assert clicked_patch(_event({"point_index": 12}), 10) is None
    assert clicked_patch(_event({"point_index": None}, {"point_index": 5}), 10) == 5
    assert clicked_patch(_event("junk", {"point_index": "4"}), 10) == 4
    for nothing in (None, {}, {"selection": {}}, _event(), "junk"):
        assert clicked_patch(nothing, 10) is None


def test_rank_of_matches_the_rank_box_order():
    scores = np.array([0.2, 0.9, 0.5, 0.9, -1.0])
    # highest score first, ties by the lower index: 0.9 (#1), 0.9 (#3), 0.5, 0.2, -1.0
    assert [rank_of(scores, i) for i in range(5)] == [4, 1, 3, 2, 5]
    assert [rank_of(scores, i) for i in (1, 3)] == [1, 2]  # ties: lower index first
    # the rank box's rank r names the patch rank_of maps back to r, the gallery's r-th patch
    assert [patch_at_rank(scores, r) for r in range(1, 6)] == [1, 3, 2, 0, 4]
    assert [v.index for v in top_k_patches(scores, np.zeros((5, 2)), 5, 256)] == [1, 3, 2, 0, 4]


def test_the_inspected_patch_is_read_alone(tmp_path, monkeypatch):
    """The page reads only the inspected patch, the same pixels as the top-k gallery's r-th."""
    tifffile = pytest.importorskip("tifffile")
    openslide = pytest.importorskip("openslide")
    rng = np.random.default_rng(0)
    path = tmp_path / "slide.tiff"
    tifffile.imwrite(
        path,
        rng.integers(0, 256, (512, 768, 3), dtype=np.uint8),
        tile=(256, 256),
        photometric="rgb",
        compression="zlib",
        metadata=None,
    )
    xs, ys = np.meshgrid(np.arange(6) * 128, np.arange(4) * 128)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    scores = rng.normal(size=len(coords))
    rank = 17
    idx = patch_at_rank(scores, rank)
    gallery = top_k_patches(scores, coords, rank, 128, 0, path)[-1]
    reads = []
    real = openslide.OpenSlide.read_region
    monkeypatch.setattr(
        openslide.OpenSlide, "read_region", lambda self, *a: reads.append(a) or real(self, *a)
    )
    (view,) = patches_at(scores, coords, [idx], 128, 0, path)
    assert len(reads) == 1 and view.index == gallery.index == idx
    assert (view.x, view.y, view.score) == (gallery.x, gallery.y, gallery.score)
    np.testing.assert_array_equal(np.asarray(view.image), np.asarray(gallery.image))
    assert patches_at(scores, coords, [idx], 128) == [PatchView(idx, view.score, view.x, view.y, None)]
    with pytest.raises(InputError, match="patch indices"):
        patches_at(scores, coords, [len(scores)], 128)


def test_apply_click_sets_the_rank_and_keeps_it_without_a_patch():
    scores = np.array([0.1, 0.3, 0.2])
    state = {"ov_click_a": _event({"point_index": 2}), "ov_rank": 1}
    assert apply_click(state, "ov_click_a", scores) == 2
    assert state["ov_rank"] == 2  # 0.3 > 0.2 > 0.1
    state["ov_click_a"] = _event()  # a click on the background clears the selection
    assert apply_click(state, "ov_click_a", scores) is None
    assert state["ov_rank"] == 2


def test_figure_markers_and_outline_sit_on_the_heatmap_boxes():
    # level-0 size not a multiple of the canvas; a 4 x 3 grid of 256-px patches, no overlap
    xs, ys = np.meshgrid(np.arange(4) * 256 + 100, np.arange(3) * 256 + 40)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    scores = np.linspace(0, 1, len(coords))
    res = render_heatmap(scores, coords, 256, (1337, 901), None, thumbnail_size=400)
    img = res.rgba[..., :3]
    fig = slide_overlay_figure(img, res.boxes, scores, selected=5)
    marks = next(t for t in fig.data if t.type == "scattergl")
    assert len(marks.x) == len(marks.y) == len(coords)  # marker k is patch k (point_index)
    assert np.allclose(marks.customdata, scores, atol=1e-6)  # the score shown on hover
    for i, (x, y) in enumerate(zip(marks.x, marks.y)):
        x0, y0, x1, y1 = res.boxes[i]
        assert x0 <= x < x1 and y0 <= y < y1
        assert pixel_to_patch(res, x, y) == i  # the clicked marker is the patch under that pixel
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    x0, y0, x1, y1 = res.boxes[5]
    assert all(
        (r.x0, r.y0, r.x1, r.y1) == pytest.approx((x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5)) for r in rects
    )
    h, w = img.shape[:2]
    assert tuple(fig.layout.xaxis.range) == (-0.5, w - 0.5)
    assert tuple(fig.layout.yaxis.range) == (h - 0.5, -0.5)  # y down, like the image
    image = next(t for t in fig.data if t.type == "image")
    assert image.source.startswith("data:image/jpeg;base64,")
