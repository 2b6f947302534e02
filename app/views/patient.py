"""Patient: risk and its percentile, hazard per time bin, the survival curve with its
reorganization uncertainty band, the decoupled features and MoE gate weights, the modality
"what if", a second patient for comparison, and links to the attention views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import backend, components
from deref.explain.cohort_views import expert_labels
from deref.figures import OKABE_ITO, css_rgba
from deref.metrics import survival_at_times

DROP_LABELS = {None: "both modalities", "m1": "without genomics", "wsi": "without the slide(s)"}


def _grid(view: backend.PatientView, t_max: float) -> np.ndarray:
    finite = [e for e in view.bin_edges if np.isfinite(e)]
    return np.unique(np.concatenate([np.linspace(0, t_max, 240), [e for e in finite if e <= t_max]]))


def _curve(surv_bins: np.ndarray, view: backend.PatientView, grid: np.ndarray) -> np.ndarray:
    """Survival at the grid times: the library's step function over the fold's time bins."""
    return survival_at_times(np.atleast_2d(surv_bins), view.bin_edges, grid)


def _survival_figure(
    views: list[tuple[str, backend.PatientView, str, str]], t_max: float, unit: str, band: bool
) -> go.Figure:
    fig = go.Figure()
    for label, v, color, dash in views:
        grid = _grid(v, t_max)
        if band and v.survival_per_s is not None and len(v.segments) > 1:
            per_s = _curve(v.survival_per_s, v, grid)  # (S, T)
            fig.add_trace(
                go.Scatter(
                    x=grid,
                    y=per_s.max(axis=0),
                    mode="lines",
                    line={"width": 0, "shape": "hv", "color": color},
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=grid,
                    y=per_s.min(axis=0),
                    mode="lines",
                    line={"width": 0, "shape": "hv", "color": color},
                    fill="tonexty",
                    fillcolor=css_rgba(color, 0.2),
                    name=f"{label}: range over segment counts s ∈ {{{', '.join(map(str, v.segments))}}}",
                    hoverinfo="skip",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=_curve(v.survival, v, grid)[0],
                mode="lines",
                name=label,
                line={"shape": "hv", "color": color, "width": 2.4, "dash": dash},
                hovertemplate="t=%{x:.1f}<br>S=%{y:.3f}<extra>" + label + "</extra>",
            )
        )
    for e in views[0][1].bin_edges[1:]:
        if np.isfinite(e) and e <= t_max:
            fig.add_vline(x=e, line={"color": "#bbbbbb", "width": 1, "dash": "dot"})
    fig.update_layout(
        template="simple_white",
        height=420,
        margin={"l": 60, "r": 10, "t": 50, "b": 50},
        title="Predicted survival (dotted lines: the model's time-bin edges)",
        xaxis_title=f"time ({unit})",
        yaxis_title="survival probability",
        yaxis_range=[0, 1.03],
        legend={"orientation": "h", "y": -0.22},
    )
    return fig


def _bin_labels(edges: list[float]) -> list[str]:
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        out.append(f"{a:.1f}–{b:.1f}" if np.isfinite(b) else f"≥ {a:.1f}")
    return out


def _hazard_figure(views: list[tuple[str, backend.PatientView, str, str]], unit: str) -> go.Figure:
    fig = go.Figure()
    for label, v, color, _ in views:
        fig.add_trace(
            go.Bar(
                x=_bin_labels(v.bin_edges),
                y=v.hazards,
                name=label,
                marker_color=color,
                hovertemplate="%{x}: h=%{y:.3f}<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(
        template="simple_white",
        height=320,
        barmode="group",
        margin={"l": 60, "r": 10, "t": 50, "b": 50},
        title="Hazard per time bin (P(event in bin | alive at its start))",
        xaxis_title=f"time bin ({unit})",
        yaxis_title="hazard",
        yaxis_range=[0, 1],
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def _percentile(risk: float, cohort_risks: np.ndarray) -> float:
    return float(backend.percentile(np.array([risk]), cohort_risks)[0])


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
    row = table.loc[case]
    rule = st.session_state.get(components.K_RULE, "median")
    try:
        group = str(backend.risk_groups(*src.key, rule).get(case))
    except Exception:  # noqa: BLE001 - a bad custom rule is reported on the Stratification page
        group = "—"
    v = backend.patient_view(*src.key, case)
    cohort_risks = table["risk"].to_numpy(float)

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

    views = [(case, v, OKABE_ITO["vermillion"], "solid")]
    if other is not None and other != case:
        views.append((other, backend.patient_view(*src.key, other), OKABE_ITO["blue"], "solid"))

    st.subheader("What if a modality were missing?")
    st.caption(
        "The held-out fold model is run again with every gene-family token at the training patients' mean token, "
        "or the slides replaced by the "
        "training fold's mean patch embedding (`Predictor.predict_patient(drop=…)`)."
    )
    what = st.radio(
        "Show the survival curve",
        list(DROP_LABELS),
        format_func=lambda d: DROP_LABELS[d],
        horizontal=True,
        key="whatif",
    )
    rows = []
    for drop in DROP_LABELS:
        try:
            dv = v if drop is None else backend.patient_view(*src.key, case, drop)
            rows.append(
                {
                    "input": DROP_LABELS[drop],
                    "risk": dv.risk,
                    "change": dv.risk - v.risk,
                    "percentile": row["percentile"] if drop is None else _percentile(dv.risk, cohort_risks),
                    "S(median time)": float(_curve(dv.survival, dv, [float(np.median(table["time"]))])[0, 0]),
                }
            )
            if drop is not None and drop == what:
                views.insert(1, (f"{case} {DROP_LABELS[drop]}", dv, OKABE_ITO["vermillion"], "dash"))
        except Exception as exc:  # noqa: BLE001
            st.warning(f"{DROP_LABELS[drop]}: {components.explain_error(exc)}")
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
    band = st.toggle("Uncertainty band over the reorganization segment counts", value=True, key="band")
    left, right = st.columns([3, 2])
    left.plotly_chart(_survival_figure(views, t_max, unit, band), key="survival_curve")
    right.plotly_chart(_hazard_figure([x for x in views if x[3] == "solid"], unit), key="hazards")

    st.subheader("Decoupled features and the mixture-of-experts gate")
    if v.gate is None and v.features is None:
        st.info("This model has no decoupled features or gate (a baseline).")
    else:
        g1, g2 = st.columns(2)
        if v.gate is not None:
            labels = expert_labels(len(v.gate), v.feature_names)
            fig = go.Figure(
                go.Bar(
                    x=v.gate,
                    y=labels,
                    orientation="h",
                    marker_color=OKABE_ITO["bluish_green"],
                    text=[f"{x:.2f}" for x in v.gate],
                    textposition="outside",
                )
            )
            fig.update_layout(
                template="simple_white",
                height=300,
                margin={"l": 140, "r": 30, "t": 50, "b": 40},
                title="Gate weights (sum to 1): each expert's share of the fusion",
                xaxis_range=[0, max(1.0, float(v.gate.max()) * 1.15)],
                yaxis={"autorange": "reversed"},
            )
            g1.plotly_chart(fig, key="gate")
        if v.features is not None:
            norms = np.linalg.norm(v.features, axis=1)
            fig = go.Figure(
                go.Heatmap(
                    z=v.features,
                    y=list(v.feature_names),
                    colorscale="RdBu_r",
                    zmid=0,
                    colorbar={"title": "value"},
                )
            )
            fig.update_layout(
                template="simple_white",
                height=300,
                margin={"l": 140, "r": 10, "t": 50, "b": 40},
                title="The four decoupled features (C2 channels each)",
                xaxis_title="channel",
            )
            g2.plotly_chart(fig, key="features")
            g2.caption("Norms: " + ", ".join(f"{n} {x:.2f}" for n, x in zip(v.feature_names, norms)))
        with components.guard("Contributions of the decoupled features", warn=True):
            att = backend.patient_attribution(*src.key, case, "grad", v.fold, src.slide_dir)
            feats = [t for t in v.feature_names if t in att.target_values]
            vals = np.array([att.target_values[t] for t in feats])
            fig = go.Figure(
                go.Bar(
                    x=vals,
                    y=feats,
                    orientation="h",
                    text=[f"{x:+.3f}" for x in vals],
                    textposition="outside",
                    marker_color=[OKABE_ITO["vermillion"] if x > 0 else OKABE_ITO["blue"] for x in vals],
                )
            )
            span = float(np.abs(vals).max()) * 1.3 if vals.size else 1.0
            fig.update_layout(
                template="simple_white",
                height=300,
                margin={"l": 140, "r": 30, "t": 50, "b": 40},
                title="Each feature's contribution to the risk (+ raises it)",
                xaxis_range=[-span, span],
                yaxis={"autorange": "reversed"},
            )
            st.plotly_chart(fig, key="feature_contrib")
            st.caption(
                "First-order contribution ⟨∂risk/∂V_f, V_f⟩ of each decoupled feature V_f through the fusion head "
                "(`deref.explain.attribution`); the gene families and patches behind each one are on the Attention page."
            )

    st.subheader("Where the model looked")
    a1, a2 = st.columns(2)
    a1.page_link(
        "views/attention.py",
        label=f"Attention over the slide(s) of {case}",
        icon=":material/biotech:",
        query_params={"patient": case},
    )
    a2.page_link("views/stratification.py", label="The cohort's risk groups", icon=":material/monitoring:")
