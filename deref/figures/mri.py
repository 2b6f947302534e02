"""Figures of the MRI viewer (plotly): three orthogonal slices through a point of one MRI
sequence, with window/level, the tumour mask's contour, a crosshair and a voxel-attribution
heat layer; and the per-sequence attribution bars of one decoupled feature.

Every builder takes plain arrays in canonical RAS+ voxel order (what
``nibabel.as_closest_canonical`` gives): voxel axis 0 (``i``) increases towards the patient's
Right, axis 1 (``j``) towards Anterior, axis 2 (``k``) towards Superior.

Screen conventions (radiological):

=========  ==============  ==========  ===========  ================================
panel      slice           screen x    screen y     sides (left, right / top, bottom)
=========  ==============  ==========  ===========  ================================
axial      ``v[:, :, k]``  ``i``       ``j``        R, L / A, P  (seen from the feet)
coronal    ``v[:, j, :]``  ``i``       ``k``        R, L / S, I  (seen from the front)
sagittal   ``v[i, :, :]``  ``j``       ``k``        A, P / S, I  (face to the left)
=========  ==============  ==========  ===========  ================================

The patient's Right is on the screen's left in the axial and coronal panels (their x axes run
from high ``i`` to low ``i``). Axis units are voxel indices, so a click's ``(x, y)`` is a voxel
position; each panel's aspect comes from the spacing (``yaxis.scaleratio``).

The figure's contract with its click handler: traces 0, 1 and 2 are invisible markers on a
voxel grid of the axial, coronal and sagittal panels (name and ``meta["view"]`` say which), the
only traces that take hover and clicks, so a plotly selection event's ``curve_number`` names the
panel and :func:`clicked_voxel` / :func:`point_from_click` map the click back to a voxel.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import plotly.graph_objects as go

from deref.errors import ConfigError, DataError
from deref.figures.patient import signed_colors
from deref.figures.style import FONT_FAMILY, OKABE_ITO, caption_text, mpl_figure

__all__ = [
    "MRI_VIEWS",
    "MriView",
    "window_presets",
    "apply_window",
    "mask_contours",
    "tumour_center",
    "point_from_click",
    "clicked_voxel",
    "orthogonal_slices_figure",
    "orthogonal_slices_matplotlib",
    "sequence_attribution_bar",
]

#: The three panels, in trace (curve number) and screen order.
MRI_VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

# view -> (fixed voxel axis, screen-x voxel axis, screen-y voxel axis, x reversed, side labels
# (left, right, top, bottom))
_GEOMETRY: dict[str, tuple[int, int, int, bool, tuple[str, str, str, str]]] = {
    "axial": (2, 0, 1, True, ("R", "L", "A", "P")),
    "coronal": (1, 0, 2, True, ("R", "L", "S", "I")),
    "sagittal": (0, 1, 2, True, ("A", "P", "S", "I")),
}
_MASK_COLOR = OKABE_ITO["sky_blue"]
_CROSS_COLOR = OKABE_ITO["orange"]
_GREY = [[0.0, "#000000"], [1.0, "#ffffff"]]  # 0 (window bottom) black
_DIVERGING = [[0.0, OKABE_ITO["blue"]], [0.5, "#f7f7f7"], [1.0, OKABE_ITO["vermillion"]]]


@dataclass(frozen=True, eq=False)
class MriView:
    """One MRI sequence of one patient as the viewer draws it (canonical RAS+ voxel order).

    Parameters
    ----------
    volume
        ``(X, Y, Z)`` intensities, float; NaN is refused.
    spacing
        ``(3,)`` voxel size in mm along ``i``, ``j``, ``k`` (all > 0).
    mask
        ``(X, Y, Z)`` bool tumour mask, or None.
    overlay
        ``(X, Y, Z)`` float voxel attribution (of one decoupled feature), or None.
    sequence
        The sequence name (``"T2"``, ``"arterial"``, ...), for titles and error messages.
    case_id
        The patient, for error messages (optional).

    Raises
    ------
    DataError
        A volume that is not 3D or holds NaN/inf, a bad spacing, or a mask / overlay whose
        shape differs from the volume's.
    """

    volume: np.ndarray
    spacing: tuple[float, float, float]
    mask: np.ndarray | None = None
    overlay: np.ndarray | None = None
    sequence: str = ""
    case_id: str = ""

    def __post_init__(self) -> None:
        who = f"patient {self.case_id or '?'}, sequence {self.sequence or '?'}"
        vol = np.asarray(self.volume)
        if vol.ndim != 3 or min(vol.shape) < 1:
            raise DataError(f"MRI viewer ({who}): expected a 3D volume (X, Y, Z), got shape {vol.shape}")
        vol = vol.astype(np.float32, copy=False)
        if not np.isfinite(vol).all():
            raise DataError(
                f"MRI viewer ({who}): the volume holds {int((~np.isfinite(vol)).sum())} NaN/inf voxels"
            )
        sp = tuple(float(s) for s in np.asarray(self.spacing, dtype=float).reshape(-1))
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise DataError(f"MRI viewer ({who}): expected 3 positive voxel sizes in mm, got {self.spacing}")
        object.__setattr__(self, "volume", vol)
        object.__setattr__(self, "spacing", sp)
        for name in ("mask", "overlay"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.shape != vol.shape:
                raise DataError(
                    f"MRI viewer ({who}): the {name} has shape {arr.shape}, expected the volume's {vol.shape}"
                )
            if name == "mask":
                arr = arr.astype(bool, copy=False)
            else:
                arr = arr.astype(np.float32, copy=False)
                if not np.isfinite(arr).all():
                    raise DataError(f"MRI viewer ({who}): the overlay holds NaN/inf voxels")
            object.__setattr__(self, name, arr)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``."""
        return tuple(int(n) for n in self.volume.shape)  # type: ignore[return-value]

    @cached_property
    def presets(self) -> dict[str, tuple[float, float]]:
        """:func:`window_presets` of the volume and mask, computed once per view."""
        return window_presets(self.volume, self.mask)

    @cached_property
    def overlay_max(self) -> float:
        """``max |overlay|`` over the whole volume (0 without an overlay): the heat layer's scale,
        the same on every slice."""
        return 0.0 if self.overlay is None else float(np.abs(self.overlay).max())

    @cached_property
    def overlay_signed(self) -> bool:
        """Whether the overlay has negative values (then it is drawn on a diverging scale)."""
        return self.overlay is not None and bool((self.overlay < 0).any())


def _window_of(lo: float, hi: float) -> tuple[float, float]:
    width = hi - lo
    return (lo + hi) / 2.0, (width if width > 0 else max(abs(lo), 1.0) * 1e-3)


def window_presets(volume: np.ndarray, mask: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Window/level presets ``name -> (center, width)`` of one volume.

    Parameters
    ----------
    volume
        ``(X, Y, Z)`` intensities.
    mask
        ``(X, Y, Z)`` bool tumour mask, or None.

    Returns
    -------
    dict
        ``"auto (1–99%)"``: the 1st to 99th percentile of the volume; ``"tumour"`` (with a
        non-empty mask): the 1st to 99th percentile of the voxels inside the mask; ``"full
        range"``: minimum to maximum. A constant range gets a small positive width.
    """
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(v, [1.0, 99.0])
    out = {"auto (1–99%)": _window_of(float(lo), float(hi))}
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != v.shape:
            raise DataError(f"window presets: the mask has shape {m.shape}, expected the volume's {v.shape}")
        if m.any():
            tlo, thi = np.percentile(v[m], [1.0, 99.0])
            out["tumour"] = _window_of(float(tlo), float(thi))
    out["full range"] = _window_of(float(v.min()), float(v.max()))
    return out


def apply_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Intensities mapped to ``[0, 1]`` by a window: ``center - width/2`` -> 0, ``center +
    width/2`` -> 1, clipped outside (float32, same shape).

    Parameters
    ----------
    x
        Intensities, any shape.
    center, width
        The window (level and width), in the intensities' unit.

    Raises
    ------
    ConfigError
        A width that is not positive and finite.
    """
    if not (math.isfinite(width) and width > 0 and math.isfinite(center)):
        raise ConfigError(f"window/level: expected a finite center and a width > 0, got ({center}, {width})")
    x = np.asarray(x, dtype=np.float32)
    return np.clip((x - np.float32(center - width / 2.0)) / np.float32(width), 0.0, 1.0)


# Marching squares on a binary image at level 0.5: cell corners (tl, tr, br, bl) -> case index
# tl*8 + tr*4 + br*2 + bl; segments between edge midpoints T, R, B, L. The saddles (5, 10) keep
# diagonal mask pixels apart, like skimage.measure.find_contours(fully_connected="low").
_EDGE_OFFSET = {"T": (0.0, 0.5), "R": (0.5, 1.0), "B": (1.0, 0.5), "L": (0.5, 0.0)}
_CASES: dict[int, tuple[tuple[str, str], ...]] = {
    1: (("L", "B"),),
    2: (("B", "R"),),
    3: (("L", "R"),),
    4: (("T", "R"),),
    5: (("T", "R"), ("L", "B")),
    6: (("T", "B"),),
    7: (("T", "L"),),
    8: (("T", "L"),),
    9: (("T", "B"),),
    10: (("T", "L"), ("B", "R")),
    11: (("T", "R"),),
    12: (("L", "R"),),
    13: (("B", "R"),),
    14: (("L", "B"),),
}


def _segments(mask2d: np.ndarray) -> np.ndarray:
    """``(S, 2, 2)`` marching-squares segments ``[[r0, c0], [r1, c1]]`` of a padded binary image."""
    m = mask2d.astype(np.uint8)
    case = m[:-1, :-1] * 8 + m[:-1, 1:] * 4 + m[1:, 1:] * 2 + m[1:, :-1]
    parts = []
    for idx, segs in _CASES.items():
        rr, cc = np.nonzero(case == idx)
        if rr.size == 0:
            continue
        base = np.stack([rr, cc], axis=1).astype(np.float64)
        for a, b in segs:
            parts.append(np.stack([base + _EDGE_OFFSET[a], base + _EDGE_OFFSET[b]], axis=1))
    return np.concatenate(parts) if parts else np.zeros((0, 2, 2))


def _chain(segs: np.ndarray) -> list[np.ndarray]:
    """Closed polylines from segments whose every end point is shared by exactly two segments."""
    keys = np.rint(segs * 2).astype(np.int64)  # end points lie on the half-integer grid
    keys = keys[..., 0] * 1_000_003 + keys[..., 1]
    at: dict[int, list[int]] = {}
    for s, (a, b) in enumerate(keys.tolist()):
        at.setdefault(a, []).append(s)
        at.setdefault(b, []).append(s)
    used = np.zeros(len(segs), dtype=bool)
    loops = []
    for start in range(len(segs)):
        if used[start]:
            continue
        used[start] = True
        pts = [segs[start, 0], segs[start, 1]]
        first, cur = int(keys[start, 0]), int(keys[start, 1])
        while cur != first:
            nxt = next((s for s in at[cur] if not used[s]), None)
            if nxt is None:  # cannot happen on a padded image; stop rather than loop
                break
            used[nxt] = True
            end = 1 if keys[nxt, 0] == cur else 0
            pts.append(segs[nxt, end])
            cur = int(keys[nxt, end])
        loops.append(np.asarray(pts))
    return loops


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """The boundary of a 2D binary mask as closed polylines (marching squares at level 0.5).

    Parameters
    ----------
    mask2d
        ``(H, W)`` bool image.

    Returns
    -------
    list of ndarray
        One ``(N, 2)`` array of ``(row, col)`` points per closed contour (first point repeated
        last), in the image's index coordinates. Every point lies half-way between a mask pixel
        and a 4-neighbour outside it (the image border counts as outside), so the contours
        enclose the mask pixels' centres (even-odd rule, holes included) and no other pixel's.
    """
    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise DataError(f"mask contour: expected a 2D slice, got shape {m.shape}")
    if not m.any():
        return []
    padded = np.pad(m, 1)
    return [loop - 1.0 for loop in _chain(_segments(padded))]


def tumour_center(mask: np.ndarray | None, shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The viewer's default crosshair: the tumour's centre of mass, rounded to a voxel.

    Parameters
    ----------
    mask
        ``(X, Y, Z)`` bool tumour mask, or None.
    shape
        The volume's shape, needed when ``mask`` is None.

    Returns
    -------
    tuple of int
        ``(i, j, k)``: the rounded centre of mass; when it falls outside the mask (a ring, a
        C shape) the mask voxel nearest to it. Without a mask, the volume's centre.

    Raises
    ------
    DataError
        An empty mask, or neither a mask nor a shape.
    """
    if mask is None:
        if shape is None or len(shape) != 3:
            raise DataError(f"tumour centre: expected a mask or a 3D volume shape, got shape {shape}")
        return tuple(int(n) // 2 for n in shape)  # type: ignore[return-value]
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise DataError(f"tumour centre: expected a 3D mask, got shape {m.shape}")
    idx = np.argwhere(m)
    if idx.size == 0:
        raise DataError("tumour centre: the mask is empty (no tumour voxel)")
    com = idx.mean(axis=0)
    c = tuple(int(v) for v in np.clip(np.rint(com), 0, np.array(m.shape) - 1))
    if m[c]:
        return c  # type: ignore[return-value]
    nearest = idx[int(np.argmin(((idx - com) ** 2).sum(axis=1)))]
    return tuple(int(v) for v in nearest)  # type: ignore[return-value]


def _check_view(view_name: str) -> None:
    if view_name not in _GEOMETRY:
        raise ConfigError(f"MRI viewer: unknown panel {view_name!r}, expected one of {', '.join(MRI_VIEWS)}")


def point_from_click(
    view_name: str, x: float, y: float, point: Sequence[int], shape: Sequence[int]
) -> tuple[int, int, int]:
    """The voxel under a click on one panel of :func:`orthogonal_slices_figure`.

    Parameters
    ----------
    view_name
        ``"axial"``, ``"coronal"`` or ``"sagittal"`` (the clicked trace's name).
    x, y
        The click's axis coordinates (voxel indices along the panel's screen axes).
    point
        The current crosshair ``(i, j, k)``: the panel's fixed coordinate is kept from it.
    shape
        The volume's ``(X, Y, Z)``; the result is clamped into it.

    Returns
    -------
    tuple of int
        The new crosshair ``(i, j, k)``.
    """
    _check_view(view_name)
    fixed, ax_x, ax_y, _, _ = _GEOMETRY[view_name]
    out = [int(p) for p in point]
    out[ax_x], out[ax_y] = int(round(float(x))), int(round(float(y)))
    return tuple(min(max(v, 0), int(n) - 1) for v, n in zip(out, shape))  # type: ignore[return-value]


def clicked_voxel(event: object, point: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The voxel a click on :func:`orthogonal_slices_figure` picked, or None.

    Parameters
    ----------
    event
        A plotly selection event as ``st.plotly_chart`` returns it (``{"selection": {"points":
        [{"curve_number": c, "x": x, "y": y, ...}]}}``); its first point on curves 0-2 (the
        click grids) counts, anything else (no point, another trace) gives None.
    point, shape
        As in :func:`point_from_click`.
    """
    try:
        points = event["selection"]["points"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        try:
            curve = int(p["curve_number"])
            x, y = float(p["x"]), float(p["y"])
        except (KeyError, TypeError, ValueError):
            continue
        if 0 <= curve < len(MRI_VIEWS):
            return point_from_click(MRI_VIEWS[curve], x, y, point, shape)
    return None


def _slice(arr: np.ndarray, view: str, point: Sequence[int]) -> np.ndarray:
    """The panel's 2D image, rows = screen-y voxel axis, columns = screen-x voxel axis."""
    fixed = _GEOMETRY[view][0]
    s = np.take(arr, int(point[fixed]), axis=fixed)  # the two remaining axes keep their order,
    return s.T  # which is (screen x, screen y) for every panel


def _image_layer(view: MriView, name: str, point, window, axes) -> go.Heatmap:
    """The grey image of one panel: the window mapped to 0-255 (uint8: a quarter of the float
    payload; the grey levels a screen shows anyway)."""
    grey = np.rint(apply_window(_slice(view.volume, name, point), *window) * 255).astype(np.uint8)
    return go.Heatmap(
        z=grey,
        zmin=0,
        zmax=255,
        colorscale=_GREY,
        showscale=False,
        hoverinfo="skip",
        name=f"{name} image",
        meta={"view": name},
        **axes,
    )


def _overlay_layer(
    view: MriView, name: str, point, threshold: float, opacity: float, colorscale, axes, first
) -> go.Heatmap:
    """The heat layer of one panel: ``|overlay| < threshold * max|overlay|`` is NaN (transparent)."""
    vals = _slice(view.overlay, name, point).astype(np.float32)
    vmax = view.overlay_max
    if vmax > 0:
        vals = np.where(np.abs(vals) < threshold * vmax, np.float32(np.nan), vals)
    else:
        vals = np.full_like(vals, np.nan)
    # only the bounding box of the visible voxels travels to the browser (x0/y0 place it)
    rows, cols = np.flatnonzero(~np.isnan(vals).all(axis=1)), np.flatnonzero(~np.isnan(vals).all(axis=0))
    r0, c0 = (int(rows[0]), int(cols[0])) if rows.size else (0, 0)
    r1, c1 = (int(rows[-1]) + 1, int(cols[-1]) + 1) if rows.size else (1, 1)
    signed = view.overlay_signed
    if colorscale == "auto":
        colorscale = _DIVERGING if signed else "Hot"
    return go.Heatmap(
        z=vals[r0:r1, c0:c1],
        x0=c0,
        dx=1,
        y0=r0,
        dy=1,
        zmin=-vmax if signed else 0.0,
        zmax=vmax if vmax > 0 else 1.0,
        colorscale=colorscale,
        opacity=opacity,
        showscale=first,
        colorbar={"title": {"text": "attribution"}, "thickness": 12, "len": 0.8, "x": 1.0},
        hoverinfo="skip",
        name=f"{name} overlay",
        meta={"view": name},
        **axes,
    )


def _contour_trace(mask2d: np.ndarray, name: str, axes) -> go.Scatter:
    xs: list[float | None] = []
    ys: list[float | None] = []
    for loop in mask_contours(mask2d):
        xs.extend(loop[:, 1].tolist() + [None])
        ys.extend(loop[:, 0].tolist() + [None])
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        line={"color": _MASK_COLOR, "width": 2},
        hoverinfo="skip",
        showlegend=False,
        name=f"{name} mask",
        meta={"view": name},
        **axes,
    )


def _click_grid(name: str, point, shape, max_side: int, axes) -> go.Scatter:
    fixed, ax_x, ax_y, _, _ = _GEOMETRY[name]
    nx, ny = shape[ax_x], shape[ax_y]
    gx = np.unique(np.linspace(0, nx - 1, min(nx, max_side)).round().astype(np.int16))
    gy = np.unique(np.linspace(0, ny - 1, min(ny, max_side)).round().astype(np.int16))
    xx, yy = np.meshgrid(gx, gy)
    labels = ("i", "j", "k")
    return go.Scatter(
        x=xx.ravel(),
        y=yy.ravel(),
        mode="markers",
        marker={"size": 8, "color": "rgba(0,0,0,0)"},
        hovertemplate=(
            f"{labels[ax_x]} %{{x}} · {labels[ax_y]} %{{y}} · {labels[fixed]} {int(point[fixed])}<extra>{name}</extra>"
        ),
        showlegend=False,
        name=name,
        meta={"view": name},
        **axes,
    )


def _panel_layout(layout: dict, n: int, name: str, view: MriView, point, domain) -> None:
    fixed, ax_x, ax_y, reverse_x, (left, right, top, bottom) = _GEOMETRY[name]
    sp, shape = view.spacing, view.shape
    sx = "" if n == 1 else str(n)
    xr = [shape[ax_x] - 0.5, -0.5] if reverse_x else [-0.5, shape[ax_x] - 0.5]
    hidden = {"showticklabels": False, "ticks": "", "showline": False, "showgrid": False, "zeroline": False}
    layout[f"xaxis{sx}"] = {
        "domain": domain,
        "range": xr,
        "anchor": f"y{sx}",
        "constrain": "domain",
        **hidden,
    }
    layout[f"yaxis{sx}"] = {
        "domain": [0.0, 0.9],
        "range": [-0.5, shape[ax_y] - 0.5],
        "anchor": f"x{sx}",
        "scaleanchor": f"x{sx}",
        "scaleratio": sp[ax_y] / sp[ax_x],
        "constrain": "domain",
        **hidden,
    }
    ref = {"xref": f"x{sx} domain", "yref": f"y{sx} domain", "showarrow": False}
    lab = {"font": {"color": "#ffffff", "size": 13}, "bgcolor": "rgba(0,0,0,0.55)", **ref}
    fixed_label = ("i", "j", "k")[fixed]
    mm = point[fixed] * sp[fixed]
    layout["annotations"] += [
        {
            "text": left,
            "x": 0.0,
            "y": 0.5,
            "xanchor": "left",
            "yanchor": "middle",
            "name": f"{name} left",
            **lab,
        },
        {
            "text": right,
            "x": 1.0,
            "y": 0.5,
            "xanchor": "right",
            "yanchor": "middle",
            "name": f"{name} right",
            **lab,
        },
        {
            "text": top,
            "x": 0.5,
            "y": 1.0,
            "xanchor": "center",
            "yanchor": "top",
            "name": f"{name} top",
            **lab,
        },
        {
            "text": bottom,
            "x": 0.5,
            "y": 0.0,
            "xanchor": "center",
            "yanchor": "bottom",
            "name": f"{name} bottom",
            **lab,
        },
        {
            "text": f"<b>{name}</b>  {fixed_label} = {int(point[fixed])} ({mm:.1f} mm)",
            "x": 0.5,
            "y": 1.02,
            "xanchor": "center",
            "yanchor": "bottom",
            "name": f"{name} title",
            "font": {"size": 12},
            **ref,
        },
    ]


def _crosshair(name: str, n: int, point) -> list[dict]:
    _, ax_x, ax_y, _, _ = _GEOMETRY[name]
    sx = "" if n == 1 else str(n)
    line = {"color": _CROSS_COLOR, "width": 1.5, "dash": "dash"}
    return [
        {"type": "line", "xref": f"x{sx}", "yref": f"y{sx} domain", "x0": point[ax_x], "x1": point[ax_x],
         "y0": 0, "y1": 1, "line": line, "name": f"{name} crosshair x"},
        {"type": "line", "xref": f"x{sx} domain", "yref": f"y{sx}", "x0": 0, "x1": 1, "y0": point[ax_y],
         "y1": point[ax_y], "line": line, "name": f"{name} crosshair y"},
    ]  # fmt: skip


@lru_cache(maxsize=1)
def _template() -> dict:
    """The parts of the house template (``simple_white``) that show on the viewer, whose axes
    are hidden: fonts, paper, hover labels, colour bars. Copying the whole template took more
    time than building the three panels."""
    import plotly.io as pio

    full = pio.templates["simple_white"].to_plotly_json()
    keep = ("autotypenumbers", "font", "hoverlabel", "paper_bgcolor", "title", "annotationdefaults")
    layout = {k: v for k, v in full["layout"].items() if k in keep}
    data = {k: v for k, v in full["data"].items() if k in ("heatmap", "scatter", "bar")}
    return {"layout": layout, "data": data}


def _domains(view: MriView, gap: float = 0.03) -> list[list[float]]:
    """Horizontal domains proportional to each panel's physical width (mm)."""
    widths = [view.shape[_GEOMETRY[v][1]] * view.spacing[_GEOMETRY[v][1]] for v in MRI_VIEWS]
    room = 0.94 - gap * (len(widths) - 1)  # the last 6% for the colour bar
    out, x0 = [], 0.0
    for w in widths:
        x1 = x0 + room * w / sum(widths)
        out.append([x0, x1])
        x0 = x1 + gap
    return out


def orthogonal_slices_figure(
    view: MriView,
    point: Sequence[int],
    *,
    window: tuple[float, float] | None = None,
    overlay_opacity: float = 0.5,
    overlay_threshold: float = 0.2,
    show_mask: bool = True,
    show_crosshair: bool = True,
    colorscale_overlay: str | list = "auto",
    click_grid: int = 64,
    height: int = 380,
) -> go.Figure:
    """Axial, coronal and sagittal slices of one sequence through ``point`` (radiological view).

    Parameters
    ----------
    view
        The sequence, its spacing, mask and overlay.
    point
        ``(i, j, k)`` voxel the three slices go through (the crosshair).
    window
        ``(center, width)`` of the grey scale; None: the ``"auto (1–99%)"`` preset
        (:attr:`MriView.presets`, computed on first use and kept with the view).
    overlay_opacity
        Opacity of the heat layer, in ``[0, 1]``.
    overlay_threshold
        Voxels with ``|overlay| < overlay_threshold * max|overlay|`` (max over the volume) are
        transparent (NaN), in ``[0, 1]``.
    show_mask, show_crosshair
        Draw the mask's contour (a line on its boundary) and the crosshair lines.
    colorscale_overlay
        A plotly colour scale for the heat layer; ``"auto"``: blue–white–vermillion centred on
        0 for a signed overlay, ``"Hot"`` otherwise. The scale is the same on every slice.
    click_grid
        At most this many invisible click markers per panel side (every voxel below it).
    height
        Figure height in px.

    Returns
    -------
    go.Figure
        Traces 0-2: the click grids (axial, coronal, sagittal); then per panel the grey image
        (uint8, the window mapped to 0-255), the overlay (only the bounding box of its visible
        voxels, placed by ``x0``/``y0``) and the mask contour (one line, contours separated by
        None), named ``"<view> image"``, ``"<view> overlay"``, ``"<view> mask"`` with
        ``meta["view"]`` set. Orientation letters (``name`` ``"<view> left"`` ...) and titles
        are annotations, the crosshair is layout shapes (``"<view> crosshair x"`` / ``y``).

    Raises
    ------
    ConfigError
        A point outside the volume, or an opacity / threshold outside ``[0, 1]``.
    """
    shape = view.shape
    pt = tuple(int(p) for p in point)
    if len(pt) != 3 or not all(0 <= p < n for p, n in zip(pt, shape)):
        raise ConfigError(f"MRI viewer ({view.sequence}): point {tuple(point)} is outside the volume {shape}")
    for label, val in (("overlay_opacity", overlay_opacity), ("overlay_threshold", overlay_threshold)):
        if not 0.0 <= float(val) <= 1.0:
            raise ConfigError(f"MRI viewer: {label} must be in [0, 1], got {val}")
    if int(click_grid) < 1:
        raise ConfigError(f"MRI viewer: click_grid must be >= 1 marker per side, got {click_grid}")
    center, width = window if window is not None else view.presets["auto (1–99%)"]
    layout: dict = {"annotations": [], "shapes": []}
    grids, panels = [], []
    for n, (name, domain) in enumerate(zip(MRI_VIEWS, _domains(view)), start=1):
        sx = "" if n == 1 else str(n)
        axes = {"xaxis": f"x{sx}", "yaxis": f"y{sx}"}
        grids.append(_click_grid(name, pt, shape, click_grid, axes))
        panels.append(_image_layer(view, name, pt, (center, width), axes))
        if view.overlay is not None:
            panels.append(
                _overlay_layer(
                    view, name, pt, overlay_threshold, overlay_opacity, colorscale_overlay, axes, n == 1
                )
            )
        if show_mask and view.mask is not None:
            panels.append(_contour_trace(_slice(view.mask, name, pt), name, axes))
        _panel_layout(layout, n, name, view, pt, domain)
        if show_crosshair:
            layout["shapes"] += _crosshair(name, n, pt)
    title = f"{view.sequence} · voxel ({pt[0]}, {pt[1]}, {pt[2]})" if view.sequence else None
    layout.update(
        template=copy.deepcopy(_template()),
        height=height,
        margin={"l": 10, "r": 10, "t": 60 if title else 40, "b": 30},
        title={"text": title} if title else None,
        font={"family": FONT_FAMILY},
        plot_bgcolor="#000000",
        showlegend=False,
        clickmode="event+select",
        hovermode="closest",
        dragmode=False,
        uirevision=view.sequence or "mri",
    )
    fig = go.Figure(data=grids + panels, layout=layout)
    return fig


def orthogonal_slices_matplotlib(
    view: MriView,
    point: Sequence[int],
    *,
    window: tuple[float, float] | None = None,
    overlay_opacity: float = 0.5,
    overlay_threshold: float = 0.2,
    title: str | None = None,
    meta=None,
    width: float = 9.0,
):
    """Static version of :func:`orthogonal_slices_figure` (for ``deref explain`` and the viewer's
    download): the same three radiological panels, window, mask contour, crosshair and heat layer
    (same threshold and symmetric scale), with orientation letters and a colour bar.

    Returns
    -------
    matplotlib.figure.Figure
        Three image axes (axial, coronal, sagittal; titles say which), a colour-bar axis when
        there is an overlay, a caption with ``meta`` (:func:`deref.figures.style.figure_meta`).
    """
    from matplotlib.colors import LinearSegmentedColormap

    shape = view.shape
    pt = tuple(int(p) for p in point)
    if len(pt) != 3 or not all(0 <= p < n for p, n in zip(pt, shape)):
        raise ConfigError(f"MRI viewer ({view.sequence}): point {tuple(point)} is outside the volume {shape}")
    center, wid = window if window is not None else view.presets["auto (1–99%)"]
    has_overlay = view.overlay is not None and view.overlay_max > 0
    fig = mpl_figure(figsize=(width, width / 3 + 0.9), facecolor="white")
    ratios = [1.0, 1.0, 1.0] + ([0.06] if has_overlay else [])
    gs = fig.add_gridspec(1, len(ratios), width_ratios=ratios, left=0.02, right=0.94, top=0.82, bottom=0.12)
    signed = view.overlay_signed
    cmap = (
        LinearSegmentedColormap.from_list("attr", [OKABE_ITO["blue"], "#f7f7f7", OKABE_ITO["vermillion"]])
        if signed
        else "hot"
    )
    vmax = view.overlay_max
    image = None
    for n, name in enumerate(MRI_VIEWS):
        ax = fig.add_subplot(gs[0, n])
        _, xa, ya, _, sides = _GEOMETRY[name]
        aspect = view.spacing[ya] / view.spacing[xa]
        grey = apply_window(_slice(view.volume, name, pt), center, wid)
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect, interpolation="nearest")
        if has_overlay:
            vals = _slice(view.overlay, name, pt).astype(np.float32)
            vals = np.ma.masked_where(np.abs(vals) < overlay_threshold * vmax, vals)
            image = ax.imshow(
                vals,
                cmap=cmap,
                vmin=-vmax if signed else 0.0,
                vmax=vmax,
                alpha=overlay_opacity,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
        if view.mask is not None:
            for loop in mask_contours(_slice(view.mask, name, pt)):
                ax.plot(loop[:, 1], loop[:, 0], color=_MASK_COLOR, lw=1.0)
        ax.axvline(pt[xa], color=_CROSS_COLOR, lw=0.6, alpha=0.8)
        ax.axhline(pt[ya], color=_CROSS_COLOR, lw=0.6, alpha=0.8)
        ax.set_xlim(shape[xa] - 0.5, -0.5)  # radiological: high i (patient's Right) on the left
        ax.set_ylim(-0.5, shape[ya] - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
        for text, (x, y, ha, va) in zip(
            sides,
            (
                (0.02, 0.5, "left", "center"),
                (0.98, 0.5, "right", "center"),
                (0.5, 0.98, "center", "top"),
                (0.5, 0.02, "center", "bottom"),
            ),
        ):
            ax.text(
                x,
                y,
                text,
                transform=ax.transAxes,
                ha=ha,
                va=va,
                color="white",
                fontsize=8,
                bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "edgecolor": "none"},
            )
    if image is not None:
        fig.colorbar(image, cax=fig.add_subplot(gs[0, 3]), label="attribution")
    head = title or (f"{view.sequence} · voxel ({pt[0]}, {pt[1]}, {pt[2]})" if view.sequence else "")
    if head:
        fig.suptitle(head, fontsize=10)
    caption = caption_text(meta)
    if caption:
        fig.text(0.02, 0.02, caption, fontsize=6.5, color="#555555")
    return fig


def sequence_attribution_bar(
    values: np.ndarray, sequences: Sequence[str], feature_name: str, *, title: str | None = None
) -> go.Figure:
    """Horizontal bars of one decoupled feature's ``(Q,)`` attribution to each MRI sequence,
    signed (:func:`~deref.figures.patient.signed_colors`: vermillion raises the feature),
    sequences top to bottom in ``sequences`` order, on an axis symmetric about 0.

    Parameters
    ----------
    values
        ``(Q,)`` attribution of the feature to each sequence (e.g. summed voxel attributions).
    sequences
        The ``Q`` sequence names.
    feature_name
        The decoupled feature's display name (``"MRI-specific feature"``), for the title.
    title
        Replaces the default title.

    Raises
    ------
    DataError
        ``values`` and ``sequences`` of different lengths.
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size != len(sequences):
        raise DataError(
            f"sequence attribution ({feature_name}): {v.size} values for {len(sequences)} sequences "
            f"({', '.join(sequences)})"
        )
    fig = go.Figure(
        go.Bar(
            x=v,
            y=list(sequences),
            orientation="h",
            text=[f"{x:+.3g}" for x in v],
            textposition="outside",
            marker_color=signed_colors(v),
            hovertemplate="%{y}: %{x:.4g}<extra></extra>",
        )
    )
    span = float(np.abs(v).max()) * 1.3 if v.size and np.abs(v).max() > 0 else 1.0
    fig.update_layout(
        template="simple_white",
        height=60 + 40 * max(len(sequences), 1),
        margin={"l": 120, "r": 30, "t": 40, "b": 30},
        title=title or f"{feature_name}: attribution per MRI sequence (+ raises it)",
        xaxis_range=[-span, span],
        yaxis={"autorange": "reversed"},
        font={"family": FONT_FAMILY},
    )
    return fig
