"""deref.figures.mri: the MRI viewer's figures (orientation, window/level, contours, clicks)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from deref.errors import ConfigError, DataError
from deref.figures.mri import (
    MRI_VIEWS,
    MriView,
    apply_window,
    clicked_voxel,
    mask_contours,
    orthogonal_slices_figure,
    point_from_click,
    sequence_attribution_bar,
    tumour_center,
    window_presets,
)
from deref.figures.style import OKABE_ITO

SIDES = ("left", "right", "top", "bottom")


def _trace(fig, name):
    (t,) = [d for d in fig.data if d.name == name]
    return t


def _axes(fig, view):
    n = MRI_VIEWS.index(view) + 1
    sx = "" if n == 1 else str(n)
    return fig.layout[f"xaxis{sx}"], fig.layout[f"yaxis{sx}"]


def _labels(fig, view):
    return {a.name.split()[1]: a for a in fig.layout.annotations if a.name and a.name.startswith(view + " ")}


def _screen_fraction(value, rng):
    """Where an axis value lands on screen: 0 = left/bottom edge, 1 = right/top edge."""
    return (value - rng[0]) / (rng[1] - rng[0])


def _grid(z):
    z = np.asarray(z)
    return np.arange(z.shape[1]), np.arange(z.shape[0])


def _polygons(trace):
    xs, ys = list(trace.x), list(trace.y)
    out, cur = [], []
    for x, y in zip(xs + [None], ys + [None]):
        if x is None:
            if cur:
                out.append(np.asarray(cur, float))
            cur = []
        else:
            cur.append((x, y))
    return out


def _inside_even_odd(polys, pts):
    count = np.zeros(len(pts), int)
    for p in polys:
        count += MplPath(p).contains_points(pts)
    return count % 2 == 1


def _marker_view():
    """An LAS image (like the shared anatomical.nii) with a marker voxel in the patient's right,
    anterior, superior corner, made canonical (RAS+) by nibabel."""
    nib = pytest.importorskip("nibabel")
    from nibabel.orientations import aff2axcodes

    data = np.zeros((20, 24, 16), np.float32)
    # LAS: axis 0 increases towards the Left, so the patient's Right is at low index 0
    data[3, 19, 12] = 100.0
    img = nib.Nifti1Image(data, np.diag([-2.0, 2.0, 3.0, 1.0]))
    assert aff2axcodes(img.affine) == ("L", "A", "S")
    can = nib.as_closest_canonical(img)
    assert aff2axcodes(can.affine) == ("R", "A", "S")
    vol = np.asarray(can.dataobj, np.float32)
    point = tuple(int(v) for v in np.argwhere(vol == 100.0)[0])
    return MriView(vol, tuple(float(z) for z in can.header.get_zooms()), sequence="T1"), point


def test_radiological_orientation_of_a_marker_voxel_at_a_known_ras_position():
    view, point = _marker_view()
    assert point == (16, 19, 12)  # right (high i), anterior (high j), superior (high k)
    fig = orthogonal_slices_figure(view, point, window=(50.0, 100.0))
    # horizontal axis letter, vertical axis letter of where the marker (R, A, S) must appear
    expected = {"axial": ("R", "A"), "coronal": ("R", "S"), "sagittal": ("A", "S")}
    for name in MRI_VIEWS:
        z = np.asarray(_trace(fig, f"{name} image").z)
        r, c = np.unravel_index(int(np.argmax(z)), z.shape)
        xa, ya = _axes(fig, name)
        fx, fy = _screen_fraction(c, xa.range), _screen_fraction(r, ya.range)
        labels = _labels(fig, name)
        assert {k: labels[k].x for k in ("left", "right")} == {"left": 0.0, "right": 1.0}
        assert {k: labels[k].y for k in ("top", "bottom")} == {"top": 1.0, "bottom": 0.0}
        h_side = "left" if fx < 0.5 else "right"
        v_side = "top" if fy > 0.5 else "bottom"
        assert (labels[h_side].text, labels[v_side].text) == expected[name], name
        opposite = {"R": "L", "A": "P", "S": "I"}
        other_h = "right" if h_side == "left" else "left"
        other_v = "bottom" if v_side == "top" else "top"
        assert labels[other_h].text == opposite[expected[name][0]]
        assert labels[other_v].text == opposite[expected[name][1]]
    for name in MRI_VIEWS:  # grey scale: the window's bottom black, its top white
        t = _trace(fig, f"{name} image")
        assert (t.zmin, t.zmax) == (0, 255)
        assert [tuple(c) for c in t.colorscale] == [(0.0, "#000000"), (1.0, "#ffffff")]
    # patient Right on the screen's LEFT in axial and coronal; anterior up in axial
    z = np.asarray(_trace(fig, "axial image").z)
    xa, ya = _axes(fig, "axial")
    r, c = np.unravel_index(int(np.argmax(z)), z.shape)
    assert _screen_fraction(c, xa.range) < 0.25 and _screen_fraction(r, ya.range) > 0.75


def _screen_image(fig, name):
    """The panel as seen: rows top to bottom, columns left to right."""
    z = np.asarray(_trace(fig, f"{name} image").z)
    xa, ya = _axes(fig, name)
    if xa.range[0] > xa.range[1]:
        z = z[:, ::-1]
    if ya.range[0] < ya.range[1]:
        z = z[::-1, :]
    return z


def test_each_panel_shows_the_expected_flipped_slice():
    x, y, zn = 5, 6, 7
    vol = np.arange(x * y * zn, dtype=np.float32).reshape(x, y, zn)
    view = MriView(vol, (1.0, 1.0, 1.0))
    i, j, k = 1, 4, 2
    fig = orthogonal_slices_figure(view, (i, j, k), window=(vol.max() / 2, vol.max()))
    grey = np.rint(apply_window(vol, vol.max() / 2, vol.max()) * 255).astype(np.uint8)
    ax = _screen_image(fig, "axial")
    co = _screen_image(fig, "coronal")
    sa = _screen_image(fig, "sagittal")
    assert ax.shape == (y, x) and co.shape == (zn, x) and sa.shape == (zn, y)
    for row in range(y):
        for col in range(x):  # top row = most anterior, left column = most right
            assert ax[row, col] == grey[x - 1 - col, y - 1 - row, k]
    for row in range(zn):
        for col in range(x):  # top row = most superior
            assert co[row, col] == grey[x - 1 - col, j, zn - 1 - row]
        for col in range(y):  # left column = most anterior
            assert sa[row, col] == grey[i, y - 1 - col, zn - 1 - row]


def test_click_round_trip_maps_every_drawn_voxel_back_to_itself():
    shape = (5, 6, 7)  # 210 voxels: distinct grey levels under the full-range window
    vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    view = MriView(vol, (0.7, 1.1, 2.5))
    point = (2, 3, 4)
    c, w = window_presets(vol)["full range"]
    grey = np.rint(apply_window(vol, c, w) * 255).astype(np.uint8)
    assert len(np.unique(grey)) == grey.size
    fig = orthogonal_slices_figure(view, point, window=(c, w))
    fixed = {"axial": 2, "coronal": 1, "sagittal": 0}
    for name in MRI_VIEWS:
        z = np.asarray(_trace(fig, f"{name} image").z)
        xs, ys = _grid(z)
        for r, yv in enumerate(ys):
            for col, xv in enumerate(xs):
                vox = point_from_click(name, xv, yv, point, shape)
                assert grey[vox] == z[r, col], (name, r, col, vox)
                assert vox[fixed[name]] == point[fixed[name]]


def test_click_grids_are_traces_0_to_2_and_clicked_voxel_reads_the_event():
    shape = (30, 40, 20)
    view = MriView(np.random.default_rng(0).normal(size=shape), (1.0, 1.0, 2.0))
    point = (10, 20, 5)
    fig = orthogonal_slices_figure(view, point, click_grid=16)
    for n, name in enumerate(MRI_VIEWS):
        grid = fig.data[n]
        assert grid.name == name and grid.meta["view"] == name and grid.hoverinfo != "skip"
        gx, gy = np.asarray(grid.x), np.asarray(grid.y)
        assert len(np.unique(gx)) <= 16 and len(np.unique(gy)) <= 16
        xa, ya = _axes(fig, name)
        assert gx.min() == 0 and gx.max() == max(xa.range) - 0.5
        assert gy.min() == 0 and gy.max() == max(ya.range) - 0.5
    for d in fig.data[3:]:
        assert d.hoverinfo == "skip"  # only the grids take clicks
    ev = {"selection": {"points": [{"curve_number": 1, "point_index": 3, "x": 7, "y": 12}]}}
    assert clicked_voxel(ev, point, shape) == (7, 20, 12)
    ev = {"selection": {"points": [{"curve_number": 2, "x": 33, "y": 2.4}]}}
    assert clicked_voxel(ev, point, shape) == (10, 33, 2)
    assert (
        clicked_voxel({"selection": {"points": [{"curve_number": 5, "x": 1, "y": 1}]}}, point, shape) is None
    )
    assert clicked_voxel({"selection": {"points": []}}, point, shape) is None
    assert clicked_voxel(None, point, shape) is None
    with pytest.raises(ConfigError, match="click_grid"):
        orthogonal_slices_figure(view, point, click_grid=0)


def test_point_from_click_clamps_into_the_volume():
    shape = (10, 12, 8)
    assert point_from_click("axial", -3.7, 1e6, (4, 5, 6), shape) == (0, 11, 6)
    assert point_from_click("coronal", 9.6, -0.4, (4, 5, 6), shape) == (9, 5, 0)
    assert point_from_click("sagittal", 11.49, 7.51, (4, 5, 6), shape) == (4, 11, 7)
    assert point_from_click("sagittal", 3.2, 2.8, (99, 5, 6), shape) == (9, 3, 3)
    with pytest.raises(ConfigError, match="unknown panel"):
        point_from_click("transverse", 1, 1, (0, 0, 0), shape)


def _blob_masks():
    rng = np.random.default_rng(3)
    yield np.ones((4, 5), bool)  # touches every border
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:8, 5:7] = False  # a hole
    yield ring
    diag = np.zeros((6, 6), bool)
    diag[1, 1] = diag[2, 2] = diag[3, 4] = diag[4, 3] = True  # diagonal neighbours (saddles)
    yield diag
    for _ in range(4):
        yield rng.random((15, 13)) < 0.45


def test_mask_contours_enclose_the_mask_and_lie_on_its_boundary():
    for m in _blob_masks():
        loops = mask_contours(m)
        assert loops
        rr, cc = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
        pts = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(float)
        np.testing.assert_array_equal(_inside_even_odd(loops, pts).reshape(m.shape), m)
        padded = np.pad(m, 1)
        for loop in loops:
            np.testing.assert_array_equal(loop[0], loop[-1])  # closed
            for r, c in loop:
                frac = (r % 1, c % 1)
                assert sorted(frac) == [0.0, 0.5]  # the midpoint between two 4-neighbours
                a = (int(np.floor(r)) + 1, int(np.floor(c)) + 1)
                b = (int(np.ceil(r)) + 1, int(np.ceil(c)) + 1)
                assert padded[a] != padded[b]  # one inside the mask, one outside
    assert mask_contours(np.zeros((3, 3), bool)) == []


def test_mask_contour_vertices_match_skimage():
    measure = pytest.importorskip("skimage.measure")
    for m in _blob_masks():
        ours = {tuple(p) for loop in mask_contours(m) for p in np.round(loop, 6)}
        ref = measure.find_contours(np.pad(m, 1).astype(float), 0.5)
        theirs = {tuple(p) for c in ref for p in np.round(c - 1.0, 6)}
        assert ours == theirs


def test_figure_mask_contour_encloses_the_slice_voxels():
    shape = (24, 20, 10)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    mask = ((ii - 12) / 6.0) ** 2 + ((jj - 9) / 4.0) ** 2 + ((kk - 5) / 3.0) ** 2 <= 1
    view = MriView(np.random.default_rng(1).normal(size=shape), (1.0, 1.5, 3.0), mask=mask)
    point = tumour_center(mask)
    fig = orthogonal_slices_figure(view, point)
    slices = {
        "axial": mask[:, :, point[2]],  # (i, j) = (x, y)
        "coronal": mask[:, point[1], :],  # (i, k)
        "sagittal": mask[point[0], :, :],  # (j, k)
    }
    for name, m in slices.items():
        polys = _polygons(_trace(fig, f"{name} mask"))
        assert polys
        a, b = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
        pts = np.stack([a.ravel(), b.ravel()], axis=1).astype(float)  # (screen x, screen y)
        np.testing.assert_array_equal(_inside_even_odd(polys, pts).reshape(m.shape), m, err_msg=name)
    off = orthogonal_slices_figure(view, point, show_mask=False, show_crosshair=False)
    assert not [d for d in off.data if d.name.endswith(" mask")] and not off.layout.shapes


def test_window_presets_against_numpy_percentiles():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 100.0, size=(20, 22, 9)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[5:12, 6:15, 2:6] = True
    vol[mask] += 400
    p = window_presets(vol, mask)
    assert set(p) == {"auto (1–99%)", "tumour", "full range"}
    lo, hi = np.percentile(vol, [1, 99])
    np.testing.assert_allclose(p["auto (1–99%)"], ((lo + hi) / 2, hi - lo), rtol=1e-5)
    tlo, thi = np.percentile(vol[mask], [1, 99])
    np.testing.assert_allclose(p["tumour"], ((tlo + thi) / 2, thi - tlo), rtol=1e-5)
    np.testing.assert_allclose(
        p["full range"], ((vol.min() + vol.max()) / 2, vol.max() - vol.min()), rtol=1e-5
    )
    assert "tumour" not in window_presets(vol) and "tumour" not in window_presets(vol, np.zeros_like(mask))
    const = window_presets(np.full((3, 3, 3), 7.0))
    assert all(w > 0 and c == 7.0 for c, w in const.values())
    with pytest.raises(DataError, match="shape"):
        window_presets(vol, mask[:-1])
    view = MriView(vol, (1.0, 1.0, 1.0), mask=mask)
    assert view.presets == p
    default = orthogonal_slices_figure(view, (8, 10, 4))  # no window: the auto preset
    explicit = orthogonal_slices_figure(view, (8, 10, 4), window=p["auto (1–99%)"])
    np.testing.assert_array_equal(_trace(default, "axial image").z, _trace(explicit, "axial image").z)
    tumour = orthogonal_slices_figure(view, (8, 10, 4), window=p["tumour"])
    assert not np.array_equal(_trace(tumour, "axial image").z, _trace(explicit, "axial image").z)


def test_apply_window_maps_the_window_to_unit_range():
    x = np.array([-10.0, 0.0, 50.0, 100.0, 150.0, 300.0])
    np.testing.assert_allclose(apply_window(x, 75.0, 100.0), [0, 0, 0.25, 0.75, 1, 1])
    v = np.linspace(-5, 5, 101)
    out = apply_window(v, 1.0, 4.0)
    assert out.min() == 0 and out.max() == 1 and np.all(np.diff(out) >= 0)
    np.testing.assert_allclose(out[(v > -1) & (v < 3)], (v[(v > -1) & (v < 3)] + 1) / 4, rtol=1e-6)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="width"):
            apply_window(x, 0.0, bad)


def _uncrop(trace, shape):
    """A heat layer's values on the panel's full grid (NaN outside the sent bounding box)."""
    z = np.asarray(trace.z, float)
    assert (trace.dx, trace.dy) == (1, 1)
    full = np.full(shape, np.nan)
    full[trace.y0 : trace.y0 + z.shape[0], trace.x0 : trace.x0 + z.shape[1]] = z
    return full


def test_overlay_below_threshold_is_transparent_and_scale_is_fixed():
    shape = (16, 18, 12)
    rng = np.random.default_rng(2)
    overlay = rng.normal(size=shape).astype(np.float32)
    view = MriView(rng.normal(size=shape), (1.0, 1.0, 1.0), overlay=overlay)
    vmax = float(np.abs(overlay).max())
    point = (4, 9, 7)
    fig = orthogonal_slices_figure(view, point, overlay_threshold=0.3, overlay_opacity=0.4)
    ref = {"axial": overlay[:, :, 7].T, "coronal": overlay[:, 9, :].T, "sagittal": overlay[4, :, :].T}
    for name, expected in ref.items():
        t = _trace(fig, f"{name} overlay")
        z = _uncrop(t, expected.shape)
        low = np.abs(expected) < 0.3 * vmax
        assert low.any() and (~low).any()
        assert np.isnan(z[low]).all()
        np.testing.assert_allclose(z[~low], expected[~low], rtol=1e-6)
        assert t.opacity == 0.4 and (t.zmin, t.zmax) == pytest.approx((-vmax, vmax))
    assert [d.showscale for d in fig.data if d.name.endswith(" overlay")] == [True, False, False]
    pos = MriView(view.volume, view.spacing, overlay=np.abs(overlay))
    t = _trace(orthogonal_slices_figure(pos, point, overlay_threshold=0.0), "axial overlay")
    assert (t.zmin, t.zmax) == pytest.approx((0.0, vmax)) and not np.isnan(_uncrop(t, (18, 16))).any()
    # a local attribution: only its bounding box is sent, at its place on the panel
    local = np.zeros(shape, np.float32)
    local[5:8, 10:14, 7] = 1.0
    t = _trace(
        orthogonal_slices_figure(MriView(view.volume, view.spacing, overlay=local), point), "axial overlay"
    )
    assert np.asarray(t.z).shape == (4, 3) and (t.x0, t.y0) == (5, 10)
    np.testing.assert_array_equal(_uncrop(t, (18, 16)) == 1.0, local[:, :, 7].T == 1.0)
    empty = _trace(
        orthogonal_slices_figure(MriView(view.volume, view.spacing, overlay=local), (4, 9, 2)),
        "axial overlay",
    )
    assert np.isnan(np.asarray(empty.z, float)).all()
    with pytest.raises(ConfigError, match="overlay_threshold"):
        orthogonal_slices_figure(view, point, overlay_threshold=1.5)


def test_panel_aspect_ratios_equal_the_spacing_ratios():
    shape, sp = (40, 30, 12), (0.8, 1.2, 4.0)
    view = MriView(np.zeros(shape), sp)
    fig = orthogonal_slices_figure(view, (20, 15, 6))
    # (screen-x voxel axis, screen-y voxel axis) per panel
    axes = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}
    widths = []
    for name, (ax, ay) in axes.items():
        xa, ya = _axes(fig, name)
        assert ya.scaleanchor == xa.plotly_name.replace("axis", "")
        assert ya.scaleratio == pytest.approx(sp[ay] / sp[ax])
        assert sorted(xa.range) == [-0.5, shape[ax] - 0.5] and list(ya.range) == [-0.5, shape[ay] - 0.5]
        widths.append((xa.domain[1] - xa.domain[0], shape[ax] * sp[ax]))
    # panel widths proportional to their physical widths (mm)
    np.testing.assert_allclose([w / mm for w, mm in widths], widths[0][0] / widths[0][1])


def test_crosshair_passes_through_the_point():
    view = MriView(np.zeros((10, 12, 8)), (1.0, 1.0, 1.0))
    fig = orthogonal_slices_figure(view, (3, 7, 5))
    expected = {"axial": (3, 7), "coronal": (3, 5), "sagittal": (7, 5)}
    for n, (name, (cx, cy)) in enumerate(expected.items(), start=1):
        sx = "" if n == 1 else str(n)
        vx = [s for s in fig.layout.shapes if s.name == f"{name} crosshair x"][0]
        hy = [s for s in fig.layout.shapes if s.name == f"{name} crosshair y"][0]
        assert (vx.xref, vx.x0, vx.x1) == (f"x{sx}", cx, cx)
        assert (hy.yref, hy.y0, hy.y1) == (f"y{sx}", cy, cy)
    with pytest.raises(ConfigError, match="outside the volume"):
        orthogonal_slices_figure(view, (10, 0, 0))


def test_tumour_center_is_the_rounded_centre_of_mass_inside_the_mask():
    m = np.zeros((20, 20, 20), bool)
    m[4:9, 10:17, 2:5] = True
    assert tumour_center(m) == (6, 13, 3)
    idx = np.argwhere(m)
    np.testing.assert_array_equal(tumour_center(m), np.rint(idx.mean(axis=0)))
    ring = np.zeros((21, 21, 5), bool)
    ii, jj = np.mgrid[0:21, 0:21]
    ring[..., 2] = np.abs(np.hypot(ii - 10, jj - 10) - 7) < 1.0
    c = tumour_center(ring)
    assert ring[c]  # the centre of mass (10, 10, 2) is in the hole: the nearest mask voxel instead
    assert np.hypot(c[0] - 10, c[1] - 10) == pytest.approx(np.hypot(*(np.argwhere(ring)[:, :2] - 10).T).min())
    assert tumour_center(None, (9, 10, 11)) == (4, 5, 5)
    with pytest.raises(DataError, match="empty"):
        tumour_center(np.zeros((3, 3, 3), bool))
    with pytest.raises(DataError, match="shape"):
        tumour_center(None)


def test_mri_view_refuses_bad_input_with_one_clear_line():
    vol = np.zeros((4, 5, 6))
    cases = [
        (dict(volume=np.zeros((4, 5))), "3D volume"),
        (dict(volume=np.where(np.eye(4, 5)[..., None] > 0, np.nan, vol)), "NaN"),
        (dict(spacing=(1.0, 0.0, 1.0)), "positive voxel sizes"),
        (dict(spacing=(1.0, 1.0)), "positive voxel sizes"),
        (
            dict(mask=np.zeros((4, 5, 5), bool)),
            r"mask has shape \(4, 5, 5\), expected the volume's \(4, 5, 6\)",
        ),
        (dict(overlay=np.zeros((5, 5, 6))), "overlay has shape"),
    ]
    for kw, msg in cases:
        args = {"volume": vol, "spacing": (1.0, 1.0, 1.0), "sequence": "T2", "case_id": "P-007", **kw}
        with pytest.raises(DataError, match=msg) as err:
            MriView(**args)
        assert "patient P-007, sequence T2" in str(err.value) and "\n" not in str(err.value)
    v = MriView(vol.astype(np.int16), [2, 2, 3], mask=np.ones(vol.shape, np.uint8))
    assert v.volume.dtype == np.float32 and v.mask.dtype == bool and v.spacing == (2.0, 2.0, 3.0)


def test_sequence_attribution_bar_is_signed_and_ordered():
    seqs = ["arterial", "delay", "hepatobiliary", "T1", "T2"]
    vals = np.array([0.3, -0.1, 0.0, 0.05, -0.4])
    fig = sequence_attribution_bar(vals, seqs, "MRI-specific feature")
    (bar,) = fig.data
    assert list(bar.y) == seqs and bar.orientation == "h"
    np.testing.assert_allclose(bar.x, vals)
    v, b = OKABE_ITO["vermillion"], OKABE_ITO["blue"]
    assert list(bar.marker.color) == [v, b, b, v, b]
    assert fig.layout.xaxis.range == pytest.approx((-0.52, 0.52))
    assert fig.layout.yaxis.autorange == "reversed" and "MRI-specific feature" in fig.layout.title.text
    with pytest.raises(DataError, match="4 values for 5 sequences"):
        sequence_attribution_bar(vals[:4], seqs, "shared")


def test_real_nifti_in_the_viewer(shared_data):
    nib = pytest.importorskip("nibabel")
    path = shared_data / "mri" / "anatomical.nii"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    img = nib.as_closest_canonical(nib.load(path))
    vol = np.asarray(img.dataobj, np.float32)
    view = MriView(vol, tuple(float(z) for z in img.header.get_zooms()[:3]), sequence="T1")
    point = tumour_center(None, vol.shape)
    fig = orthogonal_slices_figure(view, point, window=window_presets(vol)["auto (1–99%)"])
    x, y, z = vol.shape
    assert np.asarray(_trace(fig, "axial image").z).shape == (y, x)
    assert np.asarray(_trace(fig, "coronal image").z).shape == (z, x)
    assert np.asarray(_trace(fig, "sagittal image").z).shape == (z, y)
    grey = np.asarray(_trace(fig, "axial image").z)
    assert grey.min() == 0 and grey.max() == 255  # the auto window clips both tails
    fig.to_json()  # serializable as st.plotly_chart sends it


def test_module_stays_light():
    code = (
        "import sys; import deref.figures.mri; "
        "print(sorted(m for m in ('torch', 'nibabel', 'skimage', 'streamlit', 'deref.data') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_static_slices_show_the_same_panels_and_overlay_as_the_viewer():
    """``orthogonal_slices_matplotlib`` (``deref explain``'s PNG): three panels with the viewer's
    slices (same flips), the overlay thresholded at the same level on the same symmetric scale, a
    colour bar, and a PNG export; a point outside the volume is refused."""
    from deref.figures import export_figure
    from deref.figures.mri import orthogonal_slices_matplotlib

    shape = (16, 18, 12)
    rng = np.random.default_rng(3)
    overlay = rng.normal(size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[5:10, 6:12, 3:8] = True
    view = MriView(rng.normal(size=shape), (1.0, 1.0, 2.0), mask=mask, overlay=overlay, sequence="t2")
    point = (4, 9, 7)
    fig = orthogonal_slices_matplotlib(view, point, overlay_threshold=0.3)
    panels = [ax for ax in fig.axes if ax.get_title() in ("axial", "coronal", "sagittal")]
    assert [ax.get_title() for ax in panels] == ["axial", "coronal", "sagittal"] and len(fig.axes) == 4
    ref = {"axial": overlay[:, :, 7].T, "coronal": overlay[:, 9, :].T, "sagittal": overlay[4, :, :].T}
    vmax = float(np.abs(overlay).max())
    for ax in panels:
        heat = ax.get_images()[1]
        np.testing.assert_allclose(heat.get_clim(), (-vmax, vmax), rtol=1e-6)
        shown = np.ma.getmaskarray(heat.get_array())
        np.testing.assert_array_equal(shown, np.abs(ref[ax.get_title()]) < 0.3 * vmax)
        assert ax.get_xlim()[0] > ax.get_xlim()[1]  # radiological: the patient's right on the left
    axial = panels[0]
    assert axial.get_images()[0].get_array().shape == (18, 16)
    assert len(axial.lines) >= 3  # mask contour + crosshair
    assert export_figure(fig, "png", {"case": "x"})[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="outside the volume"):
        orthogonal_slices_matplotlib(view, (16, 0, 0))
