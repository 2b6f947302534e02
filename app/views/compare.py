"""Compare: runs on the same patients and folds side by side — the table (mean ± std over outer
folds, the honest headline; best in bold in the exports), the paired-bootstrap forest plot of the
pooled out-of-fold ΔC, per-fold scores, each run's risk groups, and two runs' risks patient by
patient (click a patient to open it); exports as ``deref compare`` writes them."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import audit_trail, backend, components
from deref.figures import (
    clicked_case,
    comparison_display_table,
    fold_scores_figure,
    forest_figure_plotly,
    km_small_multiples,
    risk_scatter_figure,
)

MIME = {
    "csv": "text/csv",
    "md": "text/markdown",
    "tex": "application/x-tex",
    "png": "image/png",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
    "json": "application/json",
}


def _label(run_dir: str) -> str:
    return f"{backend.run_name(run_dir)} ({Path(run_dir).parent.name}/{Path(run_dir).name})"


def _pick_runs(src) -> tuple[list[str], str | None]:
    demo = backend.comparison_runs()
    options = list(dict.fromkeys([src.run_dir, *demo, *backend.discover_runs()]))
    on_demo = Path(src.run_dir).resolve() == (backend.demo_dir() / "run").resolve()
    default = demo if demo and on_demo else [src.run_dir]  # the demo comparison is the demo's
    if st.session_state.pop("compare_pick_demo", False) and demo:
        st.session_state["compare_runs"] = demo
    runs = st.multiselect("Runs", options, default=default, format_func=_label, key="compare_runs")
    if len(runs) < 2:
        st.info(
            "Pick two or more runs trained on the same patients and folds (`deref ablate` trains such a set; "
            "`deref train --splits` with the same split files does too)."
        )
        components.demo_comparison_button()
        return runs, None
    c1, c2 = st.columns([3, 1])
    # the full model is the natural reference: the grid's "deref" run, else the run being shown
    first = next((i for i, r in enumerate(runs) if Path(r).name == "deref"), None)
    first = first if first is not None else (runs.index(src.run_dir) if src.run_dir in runs else 0)
    reference = c1.selectbox("Reference run", runs, index=first, format_func=_label, key="compare_reference")
    resamples = c2.select_slider("Bootstrap resamples", [200, 500, 1000, 2000, 5000], 2000, key="compare_B")
    st.session_state["compare_resamples"] = resamples
    return runs, reference


def _downloads(runs: tuple[str, ...], reference: str, resamples: int) -> None:
    files = backend.comparison_files(runs, reference, resamples)
    cols = st.columns(len(files))
    for col, (name, data) in zip(cols, files.items()):
        col.download_button(
            name,
            data=audit_trail.exported(data, reference, f"comparison {name}", name),
            file_name=name,
            mime=MIME.get(name.rsplit(".", 1)[-1], "application/octet-stream"),
            on_click="ignore",
            key=f"compare_export_{name}",
        )


def _two_runs(comp, runs: list[str]) -> None:
    names = [r.name for r in comp.runs]
    c1, c2, c3 = st.columns([2, 2, 1])
    a = c1.selectbox("Run A", names, index=0, key="compare_a")
    b = c2.selectbox("Run B", names, index=min(1, len(names) - 1), key="compare_b")
    k = c3.number_input("Patients listed", 1, 50, 10, key="compare_k")
    worst = comp.disagreements(a, b, int(k))
    event = st.plotly_chart(
        risk_scatter_figure(comp.risks_frame(), a, b, list(worst["case_id"])),
        key="compare_scatter",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption(
        f"The {len(worst)} patients where {a} and {b} disagree most (risk percentile gap); click a point to open "
        f"that patient in {a}."
    )
    st.dataframe(worst, hide_index=True, key="compare_disagree")
    case = clicked_case(event)
    if case is not None:
        st.switch_page("views/patient.py", query_params={"patient": case, "run": runs[names.index(a)]})


src = st.session_state.get(components.K_SOURCE)
components.page_header("Compare runs", src)
src = components.require_source()

with components.guard("Compare"):
    runs, reference = _pick_runs(src)
    if reference is None:
        st.stop()
    resamples = int(st.session_state.get("compare_resamples", 2000))
    key = tuple(runs)
    comp = backend.comparison(key, reference, resamples)
    st.caption(
        f"{comp.n_patients} patients ({comp.n_events} events), paired by patient and fold; every figure is each "
        f"outer fold scored by the model chosen without looking at it. ΔC: the reference's pooled out-of-fold "
        f"Harrell C minus each run's, {comp.level:.0%} paired bootstrap CI ({comp.n_resamples} resamples of "
        f"patients, seed {comp.seed}), Holm-corrected p-values."
    )
    for note in comp.notes:
        st.warning(note)
    runs_df = comp.runs_frame()
    st.dataframe(comparison_display_table(runs_df, comp.reference), hide_index=True, key="compare_table")
    left, right = st.columns(2)
    if comp.pairs:
        left.plotly_chart(
            forest_figure_plotly(comp.pairs_frame(), comp.reference, level=comp.level, meta=comp.meta()),
            key="compare_forest",
        )
    right.plotly_chart(fold_scores_figure(comp.fold_frame(), comp.reference), key="compare_folds")
    rule = st.session_state.get(components.K_RULE, "median")
    reports = {r.name: backend.report(d, None, None, rule).result for r, d in zip(comp.runs, runs)}
    st.plotly_chart(
        km_small_multiples(reports, time_unit=backend.time_unit(runs[0])), key="compare_km", theme=None
    )
    st.caption(f"Risk groups by the {rule!r} rule, cutoffs from each run's own training folds.")
    st.subheader("Two runs, patient by patient")
    _two_runs(comp, runs)
    st.subheader("Export")
    _downloads(key, reference, resamples)
