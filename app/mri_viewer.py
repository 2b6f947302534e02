"""The Attention page's MRI viewer (MRI + WSI runs): three orthogonal slices of one sequence's ROI
cube through a crosshair, window/level presets, the tumour-mask contour, and the voxel attribution
of the risk or of a decoupled feature overlaid; a click on any panel moves the crosshair; the
per-sequence attribution bar beside it. Widgets and layout only: the cubes and attributions come
from ``deref.explain.mri`` (through ``backend.voxel_attribution``), the figures from
``deref.figures.mri``."""

from __future__ import annotations

import streamlit as st

from app import backend, components
from deref.figures import (
    FEATURE_TARGETS,
    clicked_voxel,
    orthogonal_slices_figure,
    sequence_attribution_bar,
    tumour_center,
)

K_POINT = "mri_point"  # session state: {case: (i, j, k)}


def _targets(src: backend.Source) -> list[str]:
    names = backend.run_info(src.run_dir).model.feature_names
    return ["risk", *[n for n in names if n != "specific_wsi"]]


@st.fragment
def _viewer(src: backend.Source, case: str, method: str) -> None:
    c = st.columns([2, 2, 2, 1, 1])
    target = c[0].selectbox(
        "Attribution of", _targets(src), format_func=lambda t: FEATURE_TARGETS.get(t, t), key="mri_target"
    )
    att = backend.voxel_attribution(*src.key, case, target, method)
    present = [s for s in att.sequences if s not in att.missing_sequences]
    sequence = c[1].selectbox("Sequence", present, key="mri_sequence")
    if att.missing_sequences:
        st.caption(
            f"No {', '.join(att.missing_sequences)} for {case} (a missing input: the fold's mean token)."
        )
    view = backend.mri_view(*src.key, case, sequence, target, method)
    preset = c[2].selectbox("Window", list(view.presets), key="mri_window")
    opacity = c[3].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="mri_opacity")
    threshold = c[4].slider("Threshold", 0.0, 1.0, 0.2, 0.05, key="mri_threshold")
    points = st.session_state.setdefault(K_POINT, {})
    point = points.get(case) or tumour_center(view.mask, view.shape)
    fig = orthogonal_slices_figure(
        view, point, window=view.presets[preset], overlay_opacity=opacity, overlay_threshold=threshold
    )
    event = st.plotly_chart(fig, key="mri_slices", on_select="rerun", selection_mode="points")
    clicked = clicked_voxel(event, point, view.shape)
    if clicked is not None and tuple(clicked) != tuple(point):
        points[case] = tuple(int(x) for x in clicked)
        st.rerun(scope="fragment")
    st.caption(
        f"Crosshair at voxel {tuple(int(x) for x in point)} of the {view.shape[0]}³ ROI cube "
        f"({att.spacing_mm:.2f} mm voxels) that `deref mri` fed the 3D backbone; click a panel to move it. "
        f"Overlay: {'gradient × input' if att.method == 'grad' else 'Integrated Gradients'} of "
        f"{FEATURE_TARGETS.get(target, target)} (fold {att.fold} model), baseline {att.baseline}."
        + (
            f" IG completeness error {att.convergence_delta:+.2e}."
            if att.convergence_delta is not None
            else ""
        )
    )
    st.plotly_chart(
        sequence_attribution_bar(att.sequence_scores, att.sequences, FEATURE_TARGETS.get(target, target)),
        key="mri_sequence_bar",
    )


def mri_section(src: backend.Source, case: str, method: str) -> None:
    """The MRI viewer of ``case`` (a guard turns a failure into one line; the rest of the page stays)."""
    with components.guard("MRI viewer", warn=True):
        _viewer(src, case, method)
