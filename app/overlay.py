"""The Attention page's clickable overlay (no page code here, so tests can import it): the
heatmap as a plotly figure with one invisible marker per patch centre, and the selection
callback that turns a click into the inspected patch."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from deref.explain.patches import top_k_indices


def clicked_patch(event: object, n: int) -> int | None:
    """The patch a click on the overlay picked, or None: the ``point_index`` of the first
    selected point of a ``st.plotly_chart`` selection event (marker ``k`` of the patch-centre
    trace is patch ``k``); points out of range (a stale event) are ignored."""
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


def patch_at_rank(scores: np.ndarray, rank: int) -> int:
    """The patch the rank box's 1-based ``rank`` names: ``top_k_indices``' order (highest score
    first, ties by the lower index), the order of the top-k gallery too."""
    return int(top_k_indices(scores, int(rank))[int(rank) - 1])


def rank_of(scores: np.ndarray, idx: int) -> int:
    """1-based rank of patch ``idx`` in the order the rank box uses (inverse of :func:`patch_at_rank`)."""
    order = top_k_indices(scores, len(scores))
    return int(np.flatnonzero(order == idx)[0]) + 1


def apply_click(state, click_key: str, scores: np.ndarray, rank_key: str = "ov_rank") -> int | None:
    """Selection callback of the overlay: the clicked patch becomes the inspected rank.
    Returns the patch index, or None when the event picked no patch (the rank is kept)."""
    picked = clicked_patch(state.get(click_key), len(scores))
    if picked is not None:
        state[rank_key] = rank_of(scores, picked)
    return picked


def overlay_figure(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray, selected: int) -> go.Figure:
    """The overlay as a plotly figure: the image (JPEG), an invisible marker at each patch's centre
    to click on (marker ``k`` is patch ``k``), and the selected patch outlined in black and white.
    Canvas pixel coordinates, y down; pan and zoom work on the thumbnail."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=85)
    h, w = img.shape[:2]
    # Integer centres and float32 scores travel as compact binary arrays (20,000 patches: ~0.2 MB);
    # a marker's point index is its patch index.
    dtype = np.uint16 if max(img.shape[:2]) < 65536 else np.int64
    cx = ((boxes[:, 0] + boxes[:, 2]) // 2).astype(dtype)
    cy = ((boxes[:, 1] + boxes[:, 3]) // 2).astype(dtype)
    fig = go.Figure()
    fig.add_trace(
        go.Image(
            source="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), hoverinfo="skip"
        )
    )
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
        fig.add_shape(
            type="rect",
            x0=x0 - 0.5,
            y0=y0 - 0.5,
            x1=x1 - 0.5,
            y1=y1 - 0.5,
            line={"color": colour, "width": width},
        )
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
    return fig
