"""Figures of the dashboard's Attention page: the clickable slide overlay (plotly), the
gene-family attribution bars, the colour-scale strip, and the per-patch maps one can draw.

The overlay's contract with its click handler: marker ``k`` of the patch-centre trace is patch
``k`` (a plotly selection event's ``point_index``), so :func:`clicked_patch` maps a click back
to the patch under it without any geometry.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from deref.figures.patient import signed_colors

__all__ = [
    "FEATURE_TARGETS",
    "attention_maps",
    "co_attention_figure",
    "clicked_patch",
    "slide_overlay_figure",
    "family_attribution_bar",
    "colormap_strip",
]

#: Display names of the attribution targets (``deref.explain.attribution``).
FEATURE_TARGETS: dict[str, str] = {
    "risk": "risk (whole model)",
    "specific_wsi": "pathology-specific feature",
    "share": "shared feature",
    "explore": "explored (cross-modal) feature",
    "specific_genomic": "genomics-specific feature",
    "specific_mri": "MRI-specific feature",
}


def attention_maps(
    wsi_attention: np.ndarray | None,
    patch_scores: Mapping[str, np.ndarray] | None = None,
    method: str = "grad",
    *,
    attention_labels: Sequence[str] | None = None,
    co_attention: np.ndarray | None = None,
    m1_names: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Every per-patch map of one patient that can be drawn on the slide, by display name.

    Parameters
    ----------
    wsi_attention
        ``(L, N)`` class-token attention of the WSI encoder's ``L`` layers (``L >= 2``: last
        layer, first layer and their mean), or ``(N,)`` for one layer; None: no attention.
    patch_scores
        Attribution target -> ``(N,)`` patch scores. The genomics-specific feature is left out:
        no path leads from the slide to it, so its patch scores are zero by construction.
    method
        The attribution method, appended to the names (``"shared feature (grad)"``).
    attention_labels
        A name per row of ``wsi_attention`` when its rows are not Nystrom layers (a peer's
        attention branches: CLAM-MB's one per time bin); the mean of the rows is added.
    co_attention
        ``(G, N)`` co-attention of each modality-1 token over the patches (MCAT, MOTCat), drawn
        per token (``m1_names``) and as the mean over tokens.

    Returns
    -------
    dict
        Name -> ``(N,)`` scores, attention first.
    """
    out: dict[str, np.ndarray] = {}
    if wsi_attention is not None:
        a = np.asarray(wsi_attention, dtype=float)
        if attention_labels is not None:
            a = a.reshape(len(attention_labels), -1)
            for name, row in zip(attention_labels, a):
                out[str(name)] = row
            if len(a) > 1:
                out["attention, mean of the rows above"] = a.mean(axis=0)
        elif a.ndim == 2 and a.shape[0] >= 2:
            out["class-token attention, last layer"] = a[-1]
            out["class-token attention, first layer"] = a[0]
            out["class-token attention, mean of layers"] = a.mean(axis=0)
        else:
            out["class-token attention"] = a.reshape(-1)
    if co_attention is not None:
        co = np.asarray(co_attention, dtype=float)
        out["co-attention, mean over tokens"] = co.mean(axis=0)
        names = list(m1_names) if len(m1_names) == len(co) else [f"token {i + 1}" for i in range(len(co))]
        for name, row in zip(names, co):
            out[f"co-attention: {name}"] = row
    for t, s in (patch_scores or {}).items():
        if t != "specific_genomic":
            out[f"{FEATURE_TARGETS.get(t, t)} ({method})"] = np.asarray(s, dtype=float)
    return out


def co_attention_figure(co_attention: np.ndarray, m1_names: Sequence[str], top: int = 30):
    """Heatmap of a patient's ``(G, N)`` co-attention on the ``top`` patches of largest mean
    co-attention (columns in that order, labelled by patch index): which token looked where."""
    co = np.asarray(co_attention, dtype=float)
    order = np.argsort(-co.mean(axis=0), kind="stable")[: min(top, co.shape[1])]
    names = list(m1_names) if len(m1_names) == len(co) else [f"token {i + 1}" for i in range(len(co))]
    fig = go.Figure(
        go.Heatmap(
            z=co[:, order],
            x=[f"#{int(i)}" for i in order],
            y=names,
            colorscale="Viridis",
            colorbar={"title": "weight"},
            hovertemplate="%{y}<br>patch %{x}<br>weight %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Co-attention over the top {len(order)} patches (each row sums to 1 over all patches)",
        xaxis_title="patch (by mean co-attention)",
        height=120 + 28 * len(names),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return fig


def clicked_patch(event: object, n: int) -> int | None:
    """The patch a click on :func:`slide_overlay_figure` picked, or None: the ``point_index`` of
    the first selected point of a plotly selection event (``{"selection": {"points": [...]}}``,
    as ``st.plotly_chart`` returns it); points out of ``range(n)`` (a stale event) are ignored."""
    try:
        points = event["selection"]["points"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        if not isinstance(p, dict):
            continue
        try:
            i = int(p.get("point_index"))
        except (TypeError, ValueError):
            continue
        if 0 <= i < n:
            return i
    return None


def _jpeg_data_url(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def slide_overlay_figure(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray, selected: int) -> go.Figure:
    """The heatmap as a clickable plotly figure.

    Parameters
    ----------
    img
        ``(H, W, 3)`` uint8 canvas (``render_heatmap``'s image), sent as a JPEG.
    boxes
        ``(N, 4)`` patch boxes ``x0, y0, x1, y1`` in canvas pixels (``HeatmapResult.boxes``).
    scores
        ``(N,)`` patch scores, shown on hover.
    selected
        The patch outlined in black and white.

    Returns
    -------
    go.Figure
        An image trace, then an invisible marker at each box's centre (marker ``k`` is patch
        ``k``); canvas pixel coordinates, y down; pan and zoom work on the canvas.
    """
    h, w = img.shape[:2]
    # Integer centres and float32 scores travel as compact binary arrays (20,000 patches: ~0.2 MB).
    dtype = np.uint16 if max(h, w) < 65536 else np.int64
    cx = ((boxes[:, 0] + boxes[:, 2]) // 2).astype(dtype)
    cy = ((boxes[:, 1] + boxes[:, 3]) // 2).astype(dtype)
    fig = go.Figure()
    fig.add_trace(go.Image(source=_jpeg_data_url(img), hoverinfo="skip"))
    fig.add_trace(
        go.Scattergl(
            x=cx,
            y=cy,
            customdata=np.asarray(scores, dtype=np.float32),
            mode="markers",
            marker={"size": 10, "color": "rgba(0,0,0,0)"},
            hovertemplate="patch %{pointNumber} · score %{customdata:.3g}<extra></extra>",
            showlegend=False,
            name="patches",
        )
    )
    x0, y0, x1, y1 = (float(v) for v in boxes[selected])
    for colour, width in (("black", 4), ("white", 2)):
        # pixel centres are integers: a box's outline runs along the pixels' outer borders
        fig.add_shape(
            type="rect",
            x0=x0 - 0.5,
            y0=y0 - 0.5,
            x1=x1 - 0.5,
            y1=y1 - 0.5,
            line={"color": colour, "width": width},
        )
    _canvas_layout(fig, h, w)
    return fig


def _canvas_layout(fig: go.Figure, h: int, w: int) -> None:
    """Axes in canvas pixels (y down, one pixel per unit), clicks select points, drag pans."""
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain")
    fig.update_layout(
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        height=int(min(760, max(240, h * 900 / max(w, 1)))),
        clickmode="event+select",
        dragmode="pan",
        hovermode="closest",
        template="simple_white",
        uirevision="overlay",
    )


def family_attribution_bar(scores: np.ndarray, family_names: Sequence[str], title: str) -> go.Figure:
    """Horizontal bars of one target's ``(G,)`` gene-family attributions, signed
    (vermillion: raises the target), families top to bottom in ``family_names`` order."""
    s = np.asarray(scores, dtype=float)
    fig = go.Figure(go.Bar(x=s, y=list(family_names), orientation="h", marker_color=signed_colors(s)))
    fig.update_layout(
        template="simple_white",
        height=300,
        margin={"l": 190, "r": 10, "t": 40, "b": 30},
        title=title,
        yaxis={"autorange": "reversed"},
    )
    return fig


def colormap_strip(cmap: str, width: int = 240, height: int = 16) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 image of a matplotlib colormap, low (left) to high."""
    import matplotlib

    row = (matplotlib.colormaps[cmap](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    return np.repeat(row[None, :, :], height, axis=0)
