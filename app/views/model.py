"""Model: per-fold C-index (Harrell and Uno), time-dependent AUC, integrated Brier score,
calibration at a chosen time, training curves, gate weights, t-SNE and CKA of the decoupled
features, and the run's configuration and data provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import backend, components
from deref.figures import OKABE_ITO, group_colors

src = st.session_state.get(components.K_SOURCE)
components.page_header("Model", src)
src = components.require_source()
info = backend.run_info(src.run_dir)

# ------------------------------------------------------------------------------ metrics
st.subheader("Discrimination and calibration per fold")
with components.guard("Metrics"):
    report, ipcw_note = backend.metrics_report(*src.key)
    frame = report.to_frame()
    show = frame[["fold", "n", "events", "harrell", "uno", "td_auc", "ibs", "tau", "errors"]].copy()
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
    head = info.get("metrics") or {}
    opt = head.get("optimistic_best_epoch") or {}
    if opt.get("cindex_mean") is not None:
        st.caption(
            f"Headline protocol: {(head.get('headline') or {}).get('protocol', 'fixed last epoch')}. "
            f"For comparison only, the **optimistic** best-epoch C-index (epoch picked on the validation fold) "
            f"is {opt['cindex_mean']:.3f}."
        )
    st.caption(
        "Harrell's C is optimistic under heavy censoring; Uno's C weights pairs by the inverse probability of "
        f"censoring ({ipcw_note})."
    )

with components.guard("Calibration"):
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
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, name="ideal")
    )
    fig.add_trace(
        go.Scatter(
            x=cal["predicted"],
            y=cal["observed"],
            mode="markers+lines",
            name="observed (Kaplan–Meier, 95% CI)",
            marker={"size": 10, "color": OKABE_ITO["vermillion"]},
            text=cal["group"],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": cal["observed_upper"] - cal["observed"],
                "arrayminus": cal["observed"] - cal["observed_lower"],
            },
        )
    )
    fig.update_layout(
        template="simple_white",
        height=380,
        width=480,
        xaxis_title=f"predicted S({t:g})",
        yaxis_title=f"observed S({t:g})",
        xaxis_range=[0, 1.02],
        yaxis_range=[0, 1.02],
        margin={"l": 60, "r": 10, "t": 30, "b": 50},
        legend={"orientation": "h", "y": -0.25},
    )
    c1, c2 = st.columns([1, 1])
    c1.plotly_chart(fig, key="calibration")
    c2.dataframe(cal, hide_index=True, key="calibration_table")

# ------------------------------------------------------------------------------ training
st.subheader("Training curves")
with components.guard("Training curves"):
    rows = []
    for f in info.get("folds", []):
        for h in f.get("history", []) or []:
            rows.append({"fold": int(f["index"]), **h})
    hist = pd.DataFrame(rows)
    if hist.empty:
        st.info("run.json holds no training history.")
    else:
        metrics = [
            c for c in ("train_loss", "train_nll", "train_dis", "val_cindex", "lr", "seconds") if c in hist
        ]
        which = st.multiselect(
            "Curves",
            metrics,
            default=[m for m in ("train_loss", "val_cindex") if m in metrics] or metrics[:1],
            key="curves",
        )
        cols = st.columns(max(1, len(which)))
        colors = group_colors(max(2, hist["fold"].nunique()))
        for col, name in zip(cols, which):
            fig = go.Figure()
            for (fold, sub), color in zip(hist.groupby("fold"), colors):
                if sub[name].notna().any():
                    fig.add_trace(
                        go.Scatter(
                            x=sub["epoch"],
                            y=sub[name],
                            mode="lines+markers",
                            name=f"fold {fold}",
                            line={"color": color},
                        )
                    )
            fig.update_layout(
                template="simple_white",
                height=300,
                title=name,
                xaxis_title="epoch",
                margin={"l": 50, "r": 10, "t": 40, "b": 40},
            )
            col.plotly_chart(fig, key=f"curve_{name}")
        if "val_cindex" not in hist:
            st.caption("This run did not track a validation C-index per epoch (fixed-epoch protocol).")

# ------------------------------------------------------------------------------ features
st.subheader("Decoupled features: gates, t-SNE, CKA")
names = backend.feature_names(src.run_dir)
with components.guard("Gate weights"):
    rule = st.session_state.get(components.K_RULE, "median")
    gs = backend.gate_summary(*src.key, rule)
    fig = go.Figure()
    # low -> high risk, coloured like the Kaplan–Meier curves ("all" in grey first)
    order = [str(c) for c in backend.risk_groups(*src.key, rule).cat.categories]
    present = list(dict.fromkeys(gs["group"]))
    groups = (
        ["all"] + [g for g in order if g in present] + [g for g in present if g not in order and g != "all"]
    )
    colors = ["#666666"] + group_colors(max(2, len(order))) + ["#999999"] * len(present)
    for grp, col in zip(groups, colors):
        sub = gs[gs["group"] == grp]
        fig.add_trace(
            go.Bar(
                x=sub["expert"],
                y=sub["mean"],
                name=f"{grp} (n={int(sub['n'].iloc[0])})",
                marker_color=col,
                error_y={"type": "data", "array": sub["sem"].fillna(0)},
            )
        )
    fig.update_layout(
        template="simple_white",
        height=340,
        barmode="group",
        margin={"l": 50, "r": 10, "t": 40, "b": 60},
        title=f"Mean gate weight by risk group ({rule}; ± sem; held-out patients)",
        legend={"orientation": "h", "y": -0.2},
    )
    st.plotly_chart(fig, key="mean_gates")
c2, c3 = st.columns(2)
with c2, components.guard("t-SNE"):
    folds = [int(f["index"]) for f in info.get("folds", [])]
    tfold = st.selectbox(
        "t-SNE of the patients held out by fold model",
        folds,
        key="tsne_fold",
        help="each fold model has its own feature space: one model's held-out patients keep the points comparable",
    )
    emb = backend.tsne(*src.key, int(tfold))
    fig = go.Figure()
    for name, col in zip(names, group_colors(max(2, len(names)))):
        sub = emb[emb["feature"] == name]
        fig.add_trace(
            go.Scattergl(
                x=sub["x"],
                y=sub["y"],
                mode="markers",
                name=name,
                text=sub["case_id"],
                marker={"color": col, "size": 6},
                hovertemplate="%{text}<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        template="simple_white",
        height=380,
        title="t-SNE of the decoupled features",
        margin={"l": 30, "r": 10, "t": 40, "b": 30},
        legend={"orientation": "h", "y": -0.12},
    )
    st.plotly_chart(fig, key="tsne")
with c3, components.guard("CKA"):
    mat = backend.cka(*src.key)
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=list(names),
            y=list(names),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=np.round(mat, 2),
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        template="simple_white",
        height=420,
        title="Linear CKA between the features (within each fold model)",
        margin={"l": 120, "r": 10, "t": 40, "b": 100},
        yaxis={"autorange": "reversed"},
    )
    st.plotly_chart(fig, key="cka")
    st.caption("Low CKA between the specific and shared features is what decoupling aims for.")

# ------------------------------------------------------------------------------ provenance
st.subheader("Configuration and provenance")
c1, c2 = st.columns(2)
with c1:
    st.markdown(
        f"**Run** `{src.run_dir}`  \ncreated {info.get('created', '?')} · deref {info.get('package_version', '?')} · "
        f"torch {info.get('torch_version', '?')} · format {info.get('format', '?')}"
    )
    st.markdown("**Model config**")
    st.json(info.get("model", {}), expanded=False)
    st.markdown("**Training config**")
    st.json(info.get("train", {}), expanded=False)
with c2:
    data = dict(info.get("data", {}) or {})
    if "m1_columns" in data:
        data["m1_columns"] = (
            f"{sum(len(g) for g in data['m1_columns'])} columns in {len(data['m1_columns'])} groups"
        )
    st.markdown("**Data provenance**")
    st.json(data, expanded=True)
    folds = pd.DataFrame(
        [
            {
                "fold": f.get("index"),
                "train": len(f.get("train_ids", [])),
                "validation": len(f.get("val_ids", [])),
                "C-index (last epoch)": (f.get("metrics") or {}).get("cindex_last_epoch"),
                "bin edges": ", ".join(f"{float(e):.1f}" for e in f.get("bin_edges", [])),
            }
            for f in info.get("folds", [])
        ]
    )
    st.dataframe(folds, hide_index=True, key="folds_table")
