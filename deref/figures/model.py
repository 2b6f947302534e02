"""Figures of the dashboard's Model page (plotly): calibration at a time, training curves, mean
gate weights by risk group, t-SNE and CKA of the decoupled features.

Each builder takes the table or matrix the library computed (``deref.metrics.calibration``,
the run's training history, ``deref.explain.cohort_views.gate_summary`` / ``tsne_embedding`` /
``cka_matrix``) and returns a ``go.Figure``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from deref.figures.style import OKABE_ITO, group_colors

__all__ = [
    "calibration_figure",
    "training_curve_figure",
    "gate_groups_order",
    "gate_by_group_figure",
    "tsne_figure",
    "cka_heatmap",
]

#: Colour of the whole cohort's bars ("all") and of groups outside the risk order.
ALL_COLOR, OTHER_COLOR = "#666666", "#999999"


def calibration_figure(cal: pd.DataFrame, t: float) -> go.Figure:
    """Predicted against observed survival at time ``t``, with the diagonal of ideal calibration.

    Parameters
    ----------
    cal
        One row per group of predicted S(t): ``group``, ``predicted``, ``observed``,
        ``observed_lower``, ``observed_upper`` (Kaplan–Meier with its 95% CI).
    t
        The time, for the axis titles.
    """
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, name="ideal")
    )
    obs = cal["observed"].to_numpy(float)
    fig.add_trace(
        go.Scatter(
            x=cal["predicted"].to_numpy(float),
            y=obs,
            mode="markers+lines",
            name="observed (Kaplan–Meier, 95% CI)",
            marker={"size": 10, "color": OKABE_ITO["vermillion"]},
            text=list(cal["group"]),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": cal["observed_upper"].to_numpy(float) - obs,
                "arrayminus": obs - cal["observed_lower"].to_numpy(float),
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
    return fig


def training_curve_figure(history: pd.DataFrame, quantity: str) -> go.Figure:
    """One training quantity (``train_loss``, ``val_cindex``, ...) against the epoch, one line
    per fold (``"fold <k>"``); folds that never recorded it are left out.

    Parameters
    ----------
    history
        One row per (fold, epoch): ``fold``, ``epoch`` and the quantity's column.
    """
    fig = go.Figure()
    colors = group_colors(max(2, history["fold"].nunique()))
    for (fold, sub), color in zip(history.groupby("fold"), colors):
        if sub[quantity].notna().any():
            fig.add_trace(
                go.Scatter(
                    x=sub["epoch"],
                    y=sub[quantity],
                    mode="lines+markers",
                    name=f"fold {fold}",
                    line={"color": color},
                )
            )
    fig.update_layout(
        template="simple_white",
        height=300,
        title=quantity,
        xaxis_title="epoch",
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
    )
    return fig


def gate_groups_order(present: Sequence[str], risk_order: Sequence[str]) -> list[tuple[str, str]]:
    """``(group, colour)`` in drawing order: ``"all"`` (grey) first, then the risk groups low ->
    high coloured like the Kaplan–Meier curves, then any other group present (light grey)."""
    colors = group_colors(max(2, len(risk_order)))
    out = [("all", ALL_COLOR)] if "all" in present else []
    out += [(g, colors[i]) for i, g in enumerate(risk_order) if g in present]
    out += [(g, OTHER_COLOR) for g in dict.fromkeys(present) if g not in risk_order and g != "all"]
    return out


def gate_by_group_figure(summary: pd.DataFrame, risk_order: Sequence[str], rule: str) -> go.Figure:
    """Grouped bars of the mean held-out gate weight per expert, overall and by risk group (± sem).

    Parameters
    ----------
    summary
        ``group, expert, mean, sem, n`` rows (``deref.explain.cohort_views.gate_summary``).
    risk_order
        The risk groups low -> high (colours as in :func:`gate_groups_order`).
    rule
        The cutoff rule, for the title.
    """
    fig = go.Figure()
    for grp, col in gate_groups_order(list(summary["group"].astype(str)), risk_order):
        sub = summary[summary["group"].astype(str) == grp]
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
    return fig


def tsne_figure(embedding: pd.DataFrame, feature_names: Sequence[str]) -> go.Figure:
    """The t-SNE of the decoupled features: one trace per feature (in ``feature_names`` order).

    Parameters
    ----------
    embedding
        ``x, y, feature, case_id`` rows (``deref.explain.cohort_views.tsne_embedding``).
    """
    fig = go.Figure()
    for name, col in zip(feature_names, group_colors(max(2, len(feature_names)))):
        sub = embedding[embedding["feature"] == name]
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
    return fig


def cka_heatmap(matrix: np.ndarray, feature_names: Sequence[str]) -> go.Figure:
    """The ``(F, F)`` linear CKA between the decoupled features, on a fixed 0–1 scale, each cell
    labelled with its value (2 decimals)."""
    mat = np.asarray(matrix, dtype=float)
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=list(feature_names),
            y=list(feature_names),
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
    return fig
