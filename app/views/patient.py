"""Patient: risk and its percentile, hazard per time bin, the survival curve with its
reorganization uncertainty band, the decoupled features and MoE gate weights, the modality
"what if", a second patient for comparison, and links to the attention views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import audit_trail, backend, components
from deref.errors import DeRefError
from deref.explain.cohort_views import expert_labels
from deref.figures import (
    OKABE_ITO,
    PatientCurve,
    decoupled_features_heatmap,
    feature_contribution_bar,
    gate_weights_bar,
    patient_hazard_figure,
    patient_survival_figure,
)
from deref.metrics import percentile

DROP_LABELS = {None: "both modalities", "m1": "without genomics", "wsi": "without the slide(s)"}


def _drop_label(src: backend.Source, drop: str | None) -> str:
    """The "what if" label in the run's own modalities (an MRI run: "without the MRI")."""
    if drop == "m1" and backend.run_info(src.run_dir).m1_kind == "mri":
        return "without the MRI"
    return DROP_LABELS[drop]


def _curve(label: str, v: backend.PatientView, color: str, dash: str = "solid") -> PatientCurve:
    return PatientCurve(
        label=label,
        survival=v.survival,
        bin_edges=v.bin_edges,
        color=color,
        dash=dash,
        hazards=v.hazards,
        survival_per_s=v.survival_per_s,
        segments=v.segments,
        horizon=v.horizon,
    )


def _survival_at(v: backend.PatientView, t: float) -> float:
    """The patient's S(t), read off the curve as drawn (interpolated inside the fold's bins)."""
    return float(_curve("", v, "#000000").at([t])[0])


def _null_warning(src: backend.Source) -> None:
    """A visible warning when the run's curves score worse than the population's Kaplan–Meier
    curve (the curve is still drawn: the risk ranking may be sound while the curves are not)."""
    vs = backend.curves_vs_null(*src.key)
    if vs is not None and vs.worse_than_null:
        st.warning(
            f"**These survival curves are worse than no model at all:** this run's integrated Brier score is "
            f"{vs.ibs:.3f} against {vs.ibs_null:.3f} for giving every patient the training folds' "
            f"Kaplan–Meier curve (difference {vs.difference:+.3f}, 95% CI {vs.lower:+.3f} to {vs.upper:+.3f}). "
            "Read the curve below as the model's, not as a calibrated prognosis; the Model page has the details.",
            icon=":material/warning:",
        )


def _drops(src: backend.Source) -> list[str | None]:
    """The "what if" inputs this run has: a model that reads no slide offers no "without the slide"."""
    needs_wsi = backend.run_info(src.run_dir).needs_wsi
    return [d for d in DROP_LABELS if d != "wsi" or needs_wsi]


def _what_if_rows(
    src: backend.Source, case: str, v: backend.PatientView, row: pd.Series, table: pd.DataFrame, what
) -> tuple[list[dict], PatientCurve | None]:
    """The "what if" table (the model run again without each modality) and the curve of the
    input chosen in ``what`` (None: both modalities)."""
    rows, chosen = [], None
    cohort_risks = table["risk"].to_numpy(float)
    t_median = float(np.median(table["time"]))
    for drop in _drops(src):
        try:
            dv = v if drop is None else backend.patient_view(*src.key, case, drop)
        except DeRefError as exc:
            st.warning(f"{_drop_label(src, drop)}: {components.explain_error(exc)}")
            continue
        pct = row["percentile"] if drop is None else float(percentile([dv.risk], cohort_risks)[0])
        rows.append(
            {
                "input": _drop_label(src, drop),
                "risk": dv.risk,
                "change": dv.risk - v.risk,
                "percentile": pct,
                "S(median time)": _survival_at(dv, t_median),
            }
        )
        if drop is not None and drop == what:
            chosen = _curve(f"{case} {_drop_label(src, drop)}", dv, OKABE_ITO["vermillion"], "dash")
    return rows, chosen


def _metrics_row(v: backend.PatientView, row: pd.Series, group: str, rule: str, unit: str) -> None:
    m = st.columns(6)
    m[0].metric(
        "Risk", f"{v.risk:.4f}", help="−Σ S_k: higher = worse. Mean over the reorganization segment counts."
    )
    m[1].metric(
        "Percentile in the cohort",
        f"{row['percentile']:.0f}",
        help="share of the cohort at or below this risk",
    )
    m[2].metric("Risk group", group, help=f"{rule} cutoffs from the training folds (Stratification page)")
    m[3].metric(
        "Spread over segment counts",
        f"± {v.risk_std:.3f}",
        help="sd of the risk over s ∈ " + str(list(v.segments)),
    )
    m[4].metric(
        f"Observed ({unit})",
        f"{row['time']:.1f}",
        "event" if row["event"] else "censored",
        delta_color="off",
        delta_arrow="off",
    )
    m[5].metric("Scored by", f"fold {v.fold}", help="the fold model that held this patient out (out-of-fold)")


def _features_section(src: backend.Source, case: str, v: backend.PatientView) -> None:
    if v.gate is None and v.features is None:
        st.info("This model has no decoupled features or gate (a baseline).")
        return
    if v.gate_labels is not None:  # a peer's own gate (MoME's router), not DeReF's experts
        from deref.model.config import MODEL_NAMES

        st.info(
            f"This model ({MODEL_NAMES.get(v.model_type, v.model_type)}) has no decoupled features; its router "
            "chose among these fusion experts for this patient:"
        )
        st.plotly_chart(gate_weights_bar(v.gate, v.gate_labels), key="gate")
        return
    g1, g2 = st.columns(2)
    if v.gate is not None:
        g1.plotly_chart(gate_weights_bar(v.gate, expert_labels(len(v.gate), v.feature_names)), key="gate")
    if v.features is not None:
        g2.plotly_chart(decoupled_features_heatmap(v.features, v.feature_names), key="features")
        norms = np.linalg.norm(v.features, axis=1)
        g2.caption("Norms: " + ", ".join(f"{n} {x:.2f}" for n, x in zip(v.feature_names, norms)))
    with components.guard("Contributions of the decoupled features", warn=True):
        att = backend.patient_attribution(*src.key, case, "grad", v.fold, src.slide_dir)
        feats = [t for t in v.feature_names if t in att.target_values]
        vals = np.array([att.target_values[t] for t in feats])
        st.plotly_chart(feature_contribution_bar(vals, feats), key="feature_contrib")
        st.caption(
            "First-order contribution ⟨∂risk/∂V_f, V_f⟩ of each decoupled feature V_f through the fusion head "
            f"(`deref.explain.attribution`); the {backend.run_info(src.run_dir).m1_label}s and patches behind each "
            "one are on the Attention page."
        )


src = st.session_state.get(components.K_SOURCE)
components.page_header("Patient", src)
src = components.require_source()

with components.guard("Patient"):
    table = backend.cohort_table(*src.key)
    unit = backend.time_unit(src.run_dir)
    c1, c2 = st.columns([3, 2])
    with c1:
        case = components.patient_picker(src)
    with c2:
        other = components.patient_picker(
            src,
            label="Compare with (optional)",
            key="compare_select",
            state_key=components.K_COMPARE,
            allow_none=True,
        )
    if case is None:
        st.info("The cohort has no patient.")
        st.stop()
    audit_trail.record("view_patient", run_dir=src.run_dir, case_id=case, page="patient")
    if other is not None:
        audit_trail.record("view_patient", run_dir=src.run_dir, case_id=other, page="patient (compared)")
    row = table.loc[case]
    if "missing" in row and row["missing"]:
        st.warning(
            f"{case} has no {row['missing']}: the model put the training fold's mean token in its place "
            "(`--allow-missing`); this prediction rests on the other inputs.",
            icon=":material/report:",
        )
    rule = st.session_state.get(components.K_RULE, "median")
    try:
        group = str(backend.risk_groups(*src.key, rule).get(case))
    except DeRefError:  # a bad custom rule is reported on the Stratification page
        group = "—"
    v = backend.patient_view(*src.key, case)
    _metrics_row(v, row, group, rule, unit)

    curves = [_curve(case, v, OKABE_ITO["vermillion"])]
    if other is not None and other != case:
        curves.append(_curve(other, backend.patient_view(*src.key, other), OKABE_ITO["blue"]))

    st.subheader("What if a modality were missing?")
    st.caption(
        f"The held-out fold model is run again with every {backend.run_info(src.run_dir).m1_label} token at the "
        "training patients' mean token, "
        "or the slides replaced by the "
        "training fold's mean patch embedding (`Predictor.predict_patient(drop=…)`)."
    )
    what = st.radio(
        "Show the survival curve",
        _drops(src),
        format_func=lambda d: _drop_label(src, d),
        horizontal=True,
        key="whatif",
    )
    rows, what_curve = _what_if_rows(src, case, v, row, table, what)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="whatif_table",
        column_config={
            "risk": st.column_config.NumberColumn(format="%.4f"),
            "change": st.column_config.NumberColumn("Δ risk", format="%+.4f"),
            "percentile": st.column_config.NumberColumn(format="%.0f"),
            "S(median time)": st.column_config.NumberColumn(
                f"S at the cohort's median time ({np.median(table['time']):.1f} {unit})", format="%.3f"
            ),
        },
    )

    t_max = float(np.nanmax(table["time"])) if len(table) else 60.0
    _null_warning(src)
    band = st.toggle("Uncertainty band over the reorganization segment counts", value=True, key="band")
    drawn = curves[:1] + ([what_curve] if what_curve is not None else []) + curves[1:]
    left, right = st.columns([3, 2])
    left.plotly_chart(patient_survival_figure(drawn, t_max, unit, band=band), key="survival_curve")
    right.plotly_chart(patient_hazard_figure(curves, unit), key="hazards")
    recal = backend.run_info(src.run_dir).fold(v.fold).recalibration
    left.caption(
        ("Interpolated inside each time bin (constant hazard). " if v.horizon is not None else "")
        + (f"Fold {v.fold}'s curves are recalibrated: {recal.describe()}." if recal is not None else "")
    )

    st.subheader("Decoupled features and the mixture-of-experts gate")
    _features_section(src, case, v)

    st.subheader("Where the model looked")
    a1, a2 = st.columns(2)
    a1.page_link(
        "views/attention.py",
        label=f"Attention over the slide(s) of {case}",
        icon=":material/biotech:",
        query_params={"patient": case},
    )
    a2.page_link("views/stratification.py", label="The cohort's risk groups", icon=":material/monitoring:")
