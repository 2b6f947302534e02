"""Model: per-fold C-index (Harrell and Uno), time-dependent AUC, integrated Brier score,
calibration at a chosen time, training curves, gate weights, t-SNE and CKA of the decoupled
features, and the run's configuration and data provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import backend, components
from deref.figures import (
    calibration_figure,
    cka_heatmap,
    gate_by_group_figure,
    training_curve_figure,
    tsne_figure,
)
from deref.runs import RunInfo


def _curves_caption(info: RunInfo) -> str:
    """How the scored curves were made: interpolation and the folds' recalibration."""
    how = "Curves interpolated inside each time bin (constant hazard), as the Patient page draws them."
    maps = [f.recalibration for f in info.folds if f.recalibration is not None]
    if not maps:
        return (
            how + " Not recalibrated (`deref train --recalibration affine` fits a hazard map on inner data)."
        )
    kinds = sorted({m.kind for m in maps})
    return (
        f"{how} Recalibrated ({', '.join(kinds)}) in {len(maps)} of {len(info.folds)} folds, each map fitted on "
        "inner validation patients of its training fold, never on the patients scored here; the risk ranking "
        "(C-index) is the raw model's."
    )


def _null_section(src: backend.Source, info: RunInfo) -> None:
    """The survival curves against the Kaplan–Meier null, first: the curves clinicians read."""
    vs = backend.curves_vs_null(*src.key)
    if vs is None:
        st.info("The integrated Brier score is not estimable for these predictions (no survival columns).")
        return
    m = st.columns(4)
    m[0].metric(
        "IBS of the curves",
        f"{vs.ibs:.3f}",
        help="integrated Brier score, pooled out-of-fold; lower is better",
    )
    m[1].metric(
        "IBS of the KM null",
        f"{vs.ibs_null:.3f}",
        help="every patient given the training folds' Kaplan–Meier curve",
    )
    m[2].metric(
        "Curves − null",
        f"{vs.difference:+.3f}",
        help=f"95% paired bootstrap CI {vs.lower:+.3f} to {vs.upper:+.3f}; negative = better than the null",
        delta="worse than the null" if vs.worse_than_null else "better than the null",
        delta_color="inverse" if vs.worse_than_null else "normal",
    )
    p = vs.d_calibration_p
    m[3].metric(
        "D-calibration p",
        "n/a" if not np.isfinite(p) else f"{p:.3f}",
        help="Haider et al. (2020): p < 0.05 says the predicted survival probabilities are not uniform "
        "at the observed times, i.e. the curves are miscalibrated",
    )
    st.caption(_curves_caption(info))
    if vs.worse_than_null:
        st.warning(
            "This run's survival curves score worse than the population's Kaplan–Meier curve: its risk ranking "
            "may still be useful (C-index below), its curves are not."
        )


def _metrics_section(src: backend.Source, info: RunInfo) -> None:
    report, ipcw_note = backend.metrics_report(*src.key)
    show = report.to_frame()[
        [
            "fold",
            "n",
            "events",
            "harrell",
            "uno",
            "td_auc",
            "ibs",
            "ibs_null",
            "d_calibration_p",
            "tau",
            "errors",
        ]
    ].copy()
    show["fold"] = show["fold"].astype(str)
    st.dataframe(
        show,
        hide_index=True,
        key="metrics_table",
        column_config={
            "harrell": st.column_config.NumberColumn("Harrell C", format="%.3f"),
            "uno": st.column_config.NumberColumn("Uno C (IPCW)", format="%.3f"),
            "td_auc": st.column_config.NumberColumn("mean td-AUC", format="%.3f"),
            "ibs": st.column_config.NumberColumn("IBS (lower = better)", format="%.3f"),
            "ibs_null": st.column_config.NumberColumn("IBS of the KM null", format="%.3f"),
            "d_calibration_p": st.column_config.NumberColumn("D-calibration p", format="%.3f"),
            "tau": st.column_config.NumberColumn("τ (Uno)", format="%.1f"),
            "errors": st.column_config.TextColumn("not estimable because"),
        },
    )
    m = st.columns(4)
    for col, key, label in zip(
        m, ["harrell", "uno", "td_auc", "ibs"], ["Harrell C", "Uno C", "td-AUC", "IBS"]
    ):
        mean, sd, nf = report.mean.get(key), report.std.get(key), report.n_folds.get(key, 0)
        col.metric(
            label,
            "n/a" if mean is None or not np.isfinite(mean) else f"{mean:.3f}",
            help=f"mean ± sd over {nf} folds: ± {sd:.3f}"
            if sd is not None and np.isfinite(sd)
            else f"{nf} folds",
        )
    head, opt = info.metrics.headline, info.metrics.optimistic_best_epoch
    if opt is not None and np.isfinite(opt.mean):
        st.caption(
            f"Headline protocol: {head.protocol if head is not None else 'fixed last epoch'}. "
            f"For comparison only, the **optimistic** best-epoch C-index (epoch picked on the validation fold) "
            f"is {opt.mean:.3f}."
        )
    st.caption(
        "Harrell's C is optimistic under heavy censoring; Uno's C weights pairs by the inverse probability of "
        f"censoring ({ipcw_note})."
    )


def _calibration_section(src: backend.Source) -> None:
    table = backend.cohort_table(*src.key)
    unit = backend.time_unit(src.run_dir)
    t_max = float(np.quantile(table["time"], 0.9))
    t = st.slider(
        f"Calibration at time ({unit})",
        1.0,
        max(2.0, round(t_max, 1)),
        float(round(np.median(table["time"]), 1)),
        0.5,
        key="calib_t",
    )
    ng = st.select_slider(
        "Groups (quantiles of the predicted S(t))", [2, 3, 4, 5], value=4, key="calib_groups"
    )
    cal = backend.calibration(*src.key, float(t), int(ng))
    if cal.attrs.get("note"):
        st.info(cal.attrs["note"])  # tied predictions: fewer groups than asked, said so
    c1, c2 = st.columns([1, 1])
    c1.plotly_chart(calibration_figure(cal, float(t)), key="calibration")
    c2.dataframe(cal, hide_index=True, key="calibration_table")


def _training_curves(info: RunInfo) -> None:
    hist = info.history_frame()
    if hist.empty:
        st.info("run.json holds no training history.")
        return
    quantities = [
        c
        for c in ("train_loss", "train_nll", "train_dis", "train_aux", "val_cindex", "lr", "seconds")
        if c in hist
    ]
    which = st.multiselect(
        "Curves",
        quantities,
        default=[m for m in ("train_loss", "val_cindex") if m in quantities] or quantities[:1],
        key="curves",
    )
    for col, name in zip(st.columns(max(1, len(which))), which):
        col.plotly_chart(training_curve_figure(hist, name), key=f"curve_{name}")
    if "val_cindex" not in hist:
        st.caption("This run did not track a validation C-index per epoch (fixed-epoch protocol).")


def _provenance(src: backend.Source, info: RunInfo) -> None:
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(
            f"**Run** `{backend.run_link(src.run_dir)}`  \ncreated {info.created or '?'} · deref {info.package_version or '?'} · "
            f"torch {info.torch_version or '?'} · format {info.format}"
        )
        st.markdown("**Model config**")
        st.json(info.model.to_dict(), expanded=False)
        st.markdown("**Training config**")
        st.json(dict(info.train), expanded=False)
    with c2:
        st.markdown("**Data provenance**")
        st.json(info.data.provenance(), expanded=True)
        folds = pd.DataFrame(
            [
                {
                    "fold": f.index,
                    "train": f.n_train,
                    "validation": f.n_val,
                    # the kept model's: the fixed last epoch, or the epoch chosen on inner data
                    "C-index (kept model)": f.cindex_last_epoch,
                    "kept epoch": f.selected_epoch,
                    "recalibration": "none" if f.recalibration is None else f.recalibration.describe(),
                    "bin edges": ", ".join(f"{e:.1f}" for e in f.bin_edges),
                }
                for f in info.folds
            ]
        )
        st.dataframe(folds, hide_index=True, key="folds_table")


def _decoupled_sections(src: backend.Source, info) -> None:
    names = backend.feature_names(src.run_dir)
    with components.guard("Gate weights"):
        rule = st.session_state.get(components.K_RULE, "median")
        order = [str(c) for c in backend.risk_groups(*src.key, rule).cat.categories]  # low -> high risk
        st.plotly_chart(
            gate_by_group_figure(backend.gate_summary(*src.key, rule), order, rule), key="mean_gates"
        )
    c2, c3 = st.columns(2)
    with c2, components.guard("t-SNE"):
        tfold = st.selectbox(
            "t-SNE of the patients held out by fold model",
            info.fold_indices,
            key="tsne_fold",
            help="each fold model has its own feature space: one model's held-out patients keep the points comparable",
        )
        st.plotly_chart(tsne_figure(backend.tsne(*src.key, int(tfold)), names), key="tsne")
    with c3, components.guard("CKA"):
        st.plotly_chart(cka_heatmap(backend.cka(*src.key), names), key="cka")
        st.caption("Low CKA between the specific and shared features is what decoupling aims for.")


src = st.session_state.get(components.K_SOURCE)
components.page_header("Model", src)
src = components.require_source()
info = backend.run_info(src.run_dir)

st.subheader("Survival curves against the Kaplan–Meier null")
with components.guard("Curves against the null"):
    _null_section(src, info)

st.subheader("Discrimination and calibration per fold")
with components.guard("Metrics"):
    _metrics_section(src, info)
with components.guard("Calibration"):
    _calibration_section(src)

st.subheader("Training curves")
with components.guard("Training curves"):
    _training_curves(info)

st.subheader("Decoupled features: gates, t-SNE, CKA")
if not info.has_decoupled_features:
    # information, not an error: a baseline simply has none of DeReF's decoupled features
    st.info(
        f"This run's model ({info.model.model_type}) has no decoupled features or mixture-of-experts gate: "
        "they are DeReF's. Train a DeReF run (`deref train --model deref`) to see them here."
    )
else:
    _decoupled_sections(src, info)

st.subheader("Configuration and provenance")
_provenance(src, info)
