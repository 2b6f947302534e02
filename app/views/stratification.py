"""Stratification: Kaplan–Meier curves of the risk groups (cutoffs from the training folds),
95% CI, censor ticks, number at risk, log-rank (pairwise for > 2 groups), hazard ratio from a Cox
fit, median survival, the t-test / box plot, and the exports (PNG 300 dpi, SVG, PDF, CSV)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import audit_trail, backend, components
from deref.errors import DeRefError
from deref.figures import format_p, hazard_ratio_text, median_text

MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "csv": "text/csv"}

src = st.session_state.get(components.K_SOURCE)
components.page_header("Risk stratification", src)
src = components.require_source()

with components.guard("Stratification"):
    c1, c2 = st.columns([3, 1.3])
    with c1:
        rule = components.rule_picker()
    with c2:
        source_choice = st.radio(
            "Cutoffs from",
            ["training", "cohort"],
            key="cutoffs_from",
            format_func=lambda s: (
                "each fold's training risks" if s == "training" else "this cohort's own risks (optimistic)"
            ),
            help="Cutoffs are taken from the training folds' risks, never from the cohort shown: cutting at the shown "
            "cohort's own quantiles (or searching for the 'best' cutoff) makes the split look better than it is.",
        )
    if source_choice == "cohort":
        st.warning(
            "Cutoffs from the cohort being shown are **optimistic**: the groups are defined on the very patients they are tested on."
        )
    try:
        rep = backend.report(*src.key, rule, source_choice)
    except DeRefError as exc:  # a bad custom rule: say why, keep the controls
        st.error(f"**Cutoff rule {rule!r}:** {components.explain_error(exc)}")
        st.stop()

    result, cut = rep.result, rep.cutoffs
    st.plotly_chart(rep.km_figure(backend="plotly"), key="km_plot", theme=None)
    for note in result.notes:
        st.warning(note)

    s1, s2, s3 = st.columns(3)
    lr = result.logrank
    s1.metric(
        "Log-rank",
        format_p(lr.p_value) if lr.estimable else "not estimable",
        help=(f"χ² = {lr.statistic:.2f}, {lr.dof} dof" if lr.estimable else str(lr.reason)),
    )
    hr = result.hazard_ratio
    prim = hr.primary
    if hr.estimable and prim is not None:
        s2.metric(
            f"Hazard ratio {prim.group} vs {prim.reference}",
            f"{prim.hr:.2f}",
            help=f"95% CI {prim.ci_lower:.2f}–{prim.ci_upper:.2f}, Cox fit on the group indicator",
        )
    else:
        s2.metric("Hazard ratio", "not estimable", help=str(hr.reason))
    s3.metric(
        "Patients / events", f"{sum(g.n for g in result.groups)} / {sum(g.events for g in result.groups)}"
    )
    st.markdown(f"**{hazard_ratio_text(result)}** · cutoffs: {cut.describe()}")

    summary = result.summary_frame()
    summary["median survival"] = [median_text(g, result.time_unit) for g in result.groups]
    st.dataframe(summary[["group", "n", "events", "median survival"]], hide_index=True, key="group_table")
    if result.pairwise_logrank is not None:
        st.markdown("**Pairwise log-rank** (Holm-adjusted)")
        st.dataframe(result.pairwise_logrank, hide_index=True, key="pairwise_table")
    if hr.estimable and (len(hr.comparisons) > 1 or hr.trend is not None):
        hr_rows = [
            {
                "group": h.group,
                "reference": h.reference,
                "HR": h.hr,
                "CI lower": h.ci_lower,
                "CI upper": h.ci_upper,
                "p": h.p_value,
            }
            for h in [*hr.comparisons, *([hr.trend] if hr.trend is not None else [])]
        ]
        st.markdown("**Hazard ratios** (Cox, 95% CI)")
        st.dataframe(pd.DataFrame(hr_rows), hide_index=True, key="hr_table")
    with st.expander("Number at risk"):
        st.dataframe(result.at_risk_wide(), key="at_risk_table")
    with st.expander("Thresholds per fold"):
        st.dataframe(
            pd.DataFrame({str(k): list(v) for k, v in cut.thresholds.items()}).T.rename_axis("fold"),
            key="thresholds",
        )

    st.subheader("Risk groups: box plot and t-test")
    b1, b2 = st.columns([3, 2])
    b1.plotly_chart(rep.box_figure(backend="plotly"), key="box_plot", theme=None)
    tt = result.ttest
    if tt.estimable:
        b2.markdown(f"**Welch t-test**, {tt.quantity}: {tt.group_b} vs {tt.group_a}")
        b2.dataframe(
            pd.DataFrame(
                {"group": [tt.group_a, tt.group_b], "n": [tt.n_a, tt.n_b], "mean": [tt.mean_a, tt.mean_b]}
            ),
            hide_index=True,
            key="ttest_table",
        )
        b2.markdown(f"t = {tt.statistic:.2f}, {format_p(tt.p_value)}")
    else:
        b2.info(f"t-test not estimable: {tt.reason}")
    b2.caption(
        "The t-test compares the observed times of the patients with an event: a descriptive companion of the "
        "box plot, not a replacement for the log-rank test."
    )

    st.subheader("Export")
    st.caption(
        "Static figures are drawn with matplotlib (no browser needed) and carry the run, cohort, cutoff rule and "
        "date in their metadata and caption; the CSV holds every number behind the plot."
    )
    cols = st.columns(5)
    for col, fmt in zip(cols, ["png", "svg", "pdf", "csv"]):
        col.download_button(
            f"Kaplan–Meier {fmt.upper()}" + (" (300 dpi)" if fmt == "png" else ""),
            data=audit_trail.exported(
                lambda fmt=fmt: backend.km_export(*src.key, rule, source_choice, fmt),
                src.run_dir,
                f"kaplan-meier {fmt}",
                f"{rep.file_stem('km')}.{fmt}",
            ),
            file_name=f"{rep.file_stem('km')}.{fmt}",
            mime=MIME[fmt],
            on_click="ignore",
            key=f"export_{fmt}",
        )
    cols[4].download_button(
        "Box plot PNG",
        data=audit_trail.exported(
            lambda: backend.km_export(*src.key, rule, source_choice, "png", "box"),
            src.run_dir,
            "box plot png",
            f"{rep.file_stem('box')}.png",
        ),
        file_name=f"{rep.file_stem('box')}.png",
        mime=MIME["png"],
        on_click="ignore",
        key="export_box",
    )
