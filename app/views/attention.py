"""Attention: a slide's thumbnail (OpenSlide) with the WSI encoder's class-token attention, or a
decoupled feature's patch attribution, overlaid (opacity / colormap / normalization / threshold /
smoothing in a fragment, so only the image reruns; a click on the slide inspects that patch); the top-k patches read at full resolution;
and the gene-family (MRI-sequence) attribution of each decoupled feature; on an MRI run, the MRI
viewer (``app.mri_viewer``) with the voxel attribution."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import audit_trail, backend, components
from app.overlay import apply_click, patch_at_rank
from deref.figures import (
    FEATURE_TARGETS,
    attention_maps,
    co_attention_figure,
    colormap_strip,
    family_attribution_bar,
    slide_overlay_figure,
)

CMAPS = ["jet", "viridis", "inferno", "magma", "coolwarm", "RdYlBu_r", "cividis"]
NORMS = {"percentile": "rank (percentile)", "clip": "clip to percentiles", "raw": "raw (min–max)"}


def _colour_bar(cmap: str, lo_text: str, hi_text: str) -> None:
    st.image(colormap_strip(cmap), caption=f"{lo_text} → {hi_text}", width="stretch")


def _overlay_controls() -> dict:
    """The heatmap's settings (``backend.overlay_image`` keyword arguments)."""
    c = st.columns(5)
    opacity = c[0].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="ov_opacity")
    cmap = c[1].selectbox("Colormap", CMAPS, key="ov_cmap")
    norm = c[2].selectbox(
        "Normalization",
        list(NORMS),
        format_func=NORMS.get,
        key="ov_norm",
        help="attention is sparse: a rank scale shows its structure, raw maps look 'all blue'",
    )
    threshold = c[3].slider("Hide below (normalized)", 0.0, 1.0, 0.0, 0.05, key="ov_threshold")
    sigma = c[4].slider("Smoothing σ (px)", 0.0, 8.0, 0.0, 0.5, key="ov_sigma")
    clip = (1.0, 99.0)
    if norm == "clip":
        clip = st.slider("Clip percentiles", 0.0, 100.0, (1.0, 99.0), 0.5, key="ov_clip")
    return {
        "opacity": opacity,
        "cmap": cmap,
        "normalization": norm,
        "clip": clip,
        "threshold": threshold if threshold > 0 else None,
        "smooth_sigma": sigma,
    }


def _inspected_patch(
    scores: np.ndarray, coords: np.ndarray, attrs: dict, path: str | None, run_dir: str | None = None
) -> int:
    """The rank box and the patch it names, read alone at full resolution; returns its index."""
    rank = st.number_input(
        "Inspect the patch ranked",
        1,
        len(scores),
        1,
        key="ov_rank",
        help="1 = highest score; the patch is outlined on the slide",
    )
    idx = patch_at_rank(scores, int(rank))
    geo = backend.patch_geometry(attrs)
    view = backend.patch_view(path, scores, coords, idx, geo.read_size, geo.level, run_dir)
    if view.image is not None:
        st.image(
            view.image,
            caption=f"patch {idx} · score {scores[idx]:.3g} · ({view.x}, {view.y}) · full resolution",
        )
    else:
        st.caption(
            f"patch {idx} · score {scores[idx]:.3g} · level-0 ({view.x}, {view.y}); no slide file to read it from"
        )
    return idx


@st.fragment
def overlay(
    scores: np.ndarray,
    coords: np.ndarray,
    attrs: dict,
    thumb: backend.Thumbnail,
    path: str | None,
    label: str,
    run_dir: str | None = None,
) -> None:
    """Only this part reruns when a control moves."""
    settings = _overlay_controls()
    # A click on the slide picks that patch: the callback makes it the inspected rank.
    click_key = f"ov_click_{label}_{len(scores)}_{int(coords[:, 0].sum())}_{int(coords[:, 1].sum())}"
    with components.guard("Heatmap"):
        img, res = backend.overlay_image(scores, coords, attrs, thumb, **settings)
        left, right = st.columns([4, 1])
        with right:
            idx = _inspected_patch(scores, coords, attrs, path if thumb.error is None else None, run_dir)
            lo, hi = res.norm_range
            if settings["normalization"] == "percentile":
                _colour_bar(settings["cmap"], "lowest rank", "highest rank")
            else:
                _colour_bar(settings["cmap"], f"{lo:.3g}", f"{hi:.3g}")
        with left:
            st.plotly_chart(
                slide_overlay_figure(img, res.boxes, scores, idx),
                key=click_key,
                on_select=lambda: apply_click(st.session_state, click_key, scores),
                selection_mode="points",
                config={"displaylogo": False, "scrollZoom": True},
            )
            st.caption(
                f"{label} · {len(scores)} patches · canvas {img.shape[1]}×{img.shape[0]} px (thumbnail, never "
                "level 0) · click a patch to inspect it; scroll to zoom, drag to pan"
            )


def _gallery(
    path: str | None,
    thumb: backend.Thumbnail,
    scores: np.ndarray,
    coords: np.ndarray,
    attrs: dict,
    run_dir: str | None = None,
) -> None:
    c1, c2 = st.columns([2, 1])
    k = c1.slider("Top-k patches", 1, min(24, len(scores)), min(8, len(scores)), key="topk_k")
    largest = c2.radio("Order", ["highest", "lowest"], horizontal=True, key="topk_order") == "highest"
    geo = backend.patch_geometry(attrs)
    order_scores = scores if largest else -scores
    views = backend.top_patches(
        path if path and thumb.error is None else None,
        order_scores,
        coords,
        k,
        geo.read_size,
        geo.level,
        run_dir,
    )
    if views and views[0].image is None:
        st.info("The slide file is not available: the top patches are listed by coordinates only.")
        st.dataframe(
            pd.DataFrame(
                [
                    {"rank": i + 1, "patch": pv.index, "score": scores[pv.index], "x": pv.x, "y": pv.y}
                    for i, pv in enumerate(views)
                ]
            ),
            hide_index=True,
            key="topk_table",
        )
        return
    ncol = 6
    for start in range(0, len(views), ncol):
        cols = st.columns(ncol)
        for col, (i, pv) in zip(cols, enumerate(views[start : start + ncol], start=start)):
            col.image(pv.image, caption=f"#{i + 1} · {scores[pv.index]:.3g} · ({pv.x}, {pv.y})")
    st.caption(f"Read at full resolution through OpenSlide: {geo.read_size} px at level {geo.level}.")


def _family_bars(att: backend.AttributionView, m1_label: str) -> None:
    order = ("specific_genomic", "specific_mri", "share", "explore", "specific_wsi", "risk")
    targets = [t for t in order if t in att.family_scores]
    names = att.family_names or [
        f"family {i + 1}" for i in range(len(next(iter(att.family_scores.values()))))
    ]
    cols = st.columns(min(3, len(targets)) or 1)
    for i, t in enumerate(targets):
        fig = family_attribution_bar(att.family_scores[t], names, FEATURE_TARGETS.get(t, t))
        cols[i % len(cols)].plotly_chart(fig, key=f"family_{t}")
    words = {"grad": "gradient × (input − baseline)", "ig": "Integrated Gradients"}.get(
        att.method, att.method
    )
    text = f"Method: {words}, fold {att.fold} model; baseline: {att.baseline}."
    if att.method == "grad" and m1_label == "gene family":
        text += (
            " A first-order approximation: rank gene families with Integrated Gradients (on the demo, gradient ×"
            " input puts the two planted families on top for about 3 in 10 patients, IG for 3 in 4)."
        )
    if att.convergence_delta:
        d = np.abs(np.asarray(list(att.convergence_delta.values()), dtype=float))
        text += f" Convergence delta (completeness error of IG): max |δ| = {np.nanmax(d):.2e}."
    st.caption(
        text
        + f" The pathology-specific feature has no path from the {m1_label}s: its bars are zero by construction."
    )


def _peer_note(v: backend.PatientView) -> str:
    """What a model without decoupled features shows here instead."""
    from deref.model.config import MODEL_NAMES

    has = []
    if v.co_attention is not None:
        has.append("its co-attention of each token over the patches")
    if v.wsi_attention is not None:
        has.append("its attention over the patches")
    shown = " and ".join(has) if has else "nothing per patch"
    return (
        f"This run's model ({MODEL_NAMES.get(v.model_type, v.model_type)}) has no decoupled features, so there are "
        f"no per-feature attributions; the page shows what the model itself has: {shown}."
    )


src = st.session_state.get(components.K_SOURCE)
components.page_header("Attention", src)
src = components.require_source()

with components.guard("Attention"):
    case = components.patient_picker(src)
    if case is None:
        st.stop()
    audit_trail.record("view_patient", run_dir=src.run_dir, case_id=case, page="attention")
    v = backend.patient_view(*src.key, case)
    if v.coords is None:
        st.info("This model or patient has no slide input (no bag with coordinates): nothing to draw.")
        if backend.run_info(src.run_dir).m1_kind == "mri":
            from app.mri_viewer import mri_section

            st.subheader("MRI: where the model looked in the tumour")
            mri_section(src, case, "grad")
        st.stop()

    att = None
    info = backend.run_info(src.run_dir)
    method = "grad"
    if info.has_decoupled_features:
        method = st.radio(
            "Attribution method",
            ["grad", "ig"],
            horizontal=True,
            key="att_method",
            format_func=lambda m: {"grad": "gradient × input (fast)", "ig": "Integrated Gradients"}[m],
        )
        with components.guard("Attributions", warn=True):
            att = backend.patient_attribution(*src.key, case, method, v.fold, src.slide_dir)
    else:
        st.info(_peer_note(v))

    targets = attention_maps(
        v.wsi_attention,
        att.patch_scores if att is not None else None,
        att.method if att is not None else "grad",
        attention_labels=v.attention_labels,
        co_attention=v.co_attention,
        m1_names=v.m1_names,
    )
    if not targets:
        st.info("This model gives no per-patch map for this patient: nothing to draw on the slide.")
        st.stop()
    c1, c2 = st.columns([2, 3])
    slide_names = v.slide_ids or ["slide"]
    si = c1.selectbox("Slide", range(len(slide_names)), format_func=lambda i: slide_names[i], key="att_slide")
    target = c2.selectbox("What to draw", list(targets), key="att_target")
    scores_all = np.asarray(targets[target], dtype=float)
    sel = np.ones(len(scores_all), bool) if v.slide_index is None else (v.slide_index == si)
    scores, coords = scores_all[sel], v.coords[sel]
    attrs = v.patch_attrs[si] if si < len(v.patch_attrs) else (v.patch_attrs[0] if v.patch_attrs else {})

    audit_trail.record("view_slide", run_dir=src.run_dir, case_id=case, slide=slide_names[si])
    path = backend.slide_path(src, slide_names[si])
    thumb = backend.thumbnail(str(path) if path else None, run_dir=src.run_dir)
    if thumb.error:
        st.warning(
            f"**Slide not available** ({thumb.error}). The scores are drawn on a blank canvas from the patch "
            "coordinates alone."
        )
    overlay(scores, coords, attrs, thumb, str(path) if path else None, target, src.run_dir)

    st.subheader("Top patches")
    _gallery(str(path) if path else None, thumb, scores, coords, attrs, src.run_dir)

    m1_label = backend.run_info(src.run_dir).m1_label
    if backend.run_info(src.run_dir).m1_kind == "mri":
        from app.mri_viewer import mri_section

        st.subheader("MRI: where the model looked in the tumour")
        mri_section(src, case, method)
    if not info.has_decoupled_features:
        if v.co_attention is not None:
            st.subheader(f"Where each {m1_label} looked: co-attention")
            st.plotly_chart(co_attention_figure(v.co_attention, v.m1_names), key="co_attention")
            st.caption(
                f"The model's own {m1_label}-guided co-attention: each row is one {m1_label}'s weights over "
                "this patient's patches (fold model that held the patient out); pick a row above to draw it."
            )
        st.stop()
    st.subheader(f"{m1_label[0].upper()}{m1_label[1:]}s per decoupled feature")
    if att is not None:
        _family_bars(att, m1_label)
    else:
        st.info(f"No {m1_label} attributions: computing them failed (the warning above says why).")
