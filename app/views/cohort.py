"""Cohort: every patient with survival, predicted risk, risk group, fold, modalities and clinical
columns; filters and search; the risk distribution; click a row to open the patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import audit_trail, backend, components
from deref.errors import DeRefError
from deref.figures import risk_histogram, risk_vs_time_figure

NOT_PREDICTED = "not predicted"


def _filters(table: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    c1, c2, c3, c4 = st.columns([2, 2, 1.2, 1.5])
    query = c1.text_input("Search", placeholder="case id or any text in the row", key="cohort_search")
    names = [str(n) for n in groups.cat.categories]
    if (table["risk_group"] == NOT_PREDICTED).any():
        names.append(NOT_PREDICTED)
    chosen = c2.multiselect("Risk group", names, default=names, key="cohort_groups")
    status = c3.selectbox("Outcome", ["all", "events", "censored"], key="cohort_outcome")
    folds = sorted(table["fold"].dropna().unique().tolist())
    fold_sel = c4.multiselect(
        "Fold",
        folds,
        default=folds,
        key="cohort_folds",
        format_func=lambda f: "mean of folds" if f == -1 else f"fold {f}",
    )
    keep = table["risk_group"].astype(str).isin(chosen) & (
        table["fold"].isin(fold_sel) | table["fold"].isna()
    )
    if status != "all":
        keep &= table["event"] == (1 if status == "events" else 0)
    if query.strip():
        q = query.strip().lower()
        text = table.reset_index().astype(str).agg(" ".join, axis=1).str.lower()
        keep &= text.str.contains(q, regex=False).to_numpy()
    return table[keep]


def _c_index_metric(col, src: backend.Source) -> None:
    head = backend.run_info(src.run_dir).metrics.headline
    if src.own_cohort and head is not None and np.isfinite(head.mean):
        sd = head.std if np.isfinite(head.std) else 0.0
        col.metric(
            "C-index (out-of-fold)",
            f"{head.mean:.3f} ± {sd:.3f}",
            help=f"Harrell's C, mean ± sd over folds; {head.protocol}",
        )
    else:
        col.metric(
            "C-index", "—", help="available for the run's own cohort (see the Model page for any cohort)"
        )


src = st.session_state.get(components.K_SOURCE)
components.page_header("Cohort", src)
src = components.require_source()

with components.guard("Cohort"):
    table = backend.cohort_table(*src.key)
    rule = st.session_state.get(components.K_RULE, "median")
    try:
        groups = backend.risk_groups(*src.key, rule)
    except DeRefError as exc:  # a bad custom rule: the Stratification page says why
        st.warning(
            f"Risk groups with the rule {rule!r}: {components.explain_error(exc)}; using the median split."
        )
        rule = "median"
        groups = backend.risk_groups(*src.key, rule)
    table = table.assign(
        risk_group=groups.reindex(table.index).astype(object).fillna(NOT_PREDICTED).to_numpy()
    )
    m = st.columns(5)
    m[0].metric("Patients", len(table))
    m[1].metric(
        "Events", int(table["event"].sum()), help="observed deaths / progressions (the rest are censored)"
    )
    m[2].metric("Slides", int(table["n_slides"].sum()))
    _c_index_metric(m[3], src)
    m[4].metric(
        "Risk groups",
        f"{len(groups.cat.categories)} ({rule})",
        help="rule of the Stratification page; cutoffs from the training folds",
    )

    shown = _filters(table, groups)
    st.caption(f"{len(shown)} of {len(table)} patients · click a row to open the patient")
    columns = ["time", "event", "risk", "percentile", "risk_group", "fold", "modalities"] + [
        c
        for c in table.columns
        if c not in ("time", "event", "risk", "risk_std", "percentile", "risk_group", "fold", "modalities")
    ]
    view = shown[columns].reset_index()
    event = st.dataframe(
        view,
        key="cohort_table",
        hide_index=True,
        on_select="rerun",
        selection_mode="single-row",
        height=420,
        column_config={
            "case_id": st.column_config.TextColumn("case id"),
            "time": st.column_config.NumberColumn(f"time ({backend.time_unit(src.run_dir)})", format="%.1f"),
            "event": st.column_config.CheckboxColumn("event"),
            "risk": st.column_config.NumberColumn("risk", format="%.3f"),
            "percentile": st.column_config.ProgressColumn(
                "percentile", min_value=0, max_value=100, format="%.0f"
            ),
            "risk_group": st.column_config.TextColumn("risk group"),
            "fold": st.column_config.NumberColumn(
                "fold", help="-1: mean of the fold models (patient in no validation fold)"
            ),
        },
    )
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    if rows:
        components.open_patient(str(view.iloc[rows[0]]["case_id"]))

    c1, c2 = st.columns(2)
    names = [str(n) for n in groups.cat.categories]
    c1.plotly_chart(risk_histogram(table, names), key="risk_hist")
    c2.plotly_chart(risk_vs_time_figure(table, names, backend.time_unit(src.run_dir)), key="risk_time")
    st.download_button(
        "Download the table (CSV)",
        audit_trail.exported(
            lambda: shown.reset_index().to_csv(index=False).encode(),
            src.run_dir,
            "cohort table csv",
            f"{backend.run_name(src.run_dir)}_cohort.csv",
        ),
        file_name=f"{backend.run_name(src.run_dir)}_cohort.csv",
        mime="text/csv",
        on_click="ignore",
    )
