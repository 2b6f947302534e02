"""Figures of the dashboard's Cohort page (plotly): the risk distribution by risk group and the
risk against the observed time.

Both take the cohort table the page shows: one row per patient (index: case id) with ``risk``,
``risk_group`` (group names as text) and, for :func:`risk_vs_time_figure`, ``time`` and
``event``; groups are coloured low -> high risk (:func:`~deref.figures.km.group_colors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from deref.figures.style import group_colors, house_template

__all__ = ["risk_histogram", "risk_vs_time_figure"]

_LEGEND_TOP = {"orientation": "h", "y": 1.12}


def risk_histogram(table: pd.DataFrame, groups: Sequence[str], bins: int = 30) -> go.Figure:
    """Stacked histogram of the finite risks, one trace per group in ``groups`` (low -> high),
    on ``bins`` shared bins over the whole cohort's range.

    Parameters
    ----------
    table
        ``risk`` and ``risk_group`` per patient; patients of no listed group are left out.
    groups
        Group names in risk order; trace ``i`` is ``groups[i]``, named ``"<group> (n=<count>)"``.
    """
    colors = group_colors(len(groups))
    risk = table["risk"].to_numpy(float)
    table = table[np.isfinite(risk)]
    edges = np.histogram_bin_edges(table["risk"].to_numpy(float), bins=bins)
    fig = go.Figure()
    for name, col in zip(groups, colors):
        sub = table[table["risk_group"].astype(str) == name]
        fig.add_trace(
            go.Histogram(
                x=sub["risk"],
                name=f"{name} (n={len(sub)})",
                marker_color=col,
                opacity=0.85,
                xbins={"start": edges[0], "end": edges[-1], "size": edges[1] - edges[0]},
            )
        )
    fig.update_layout(
        barmode="stack",
        template=house_template(fig),
        height=320,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        title="Risk distribution by group",
        xaxis_title="predicted risk (higher = worse)",
        yaxis_title="patients",
        legend=_LEGEND_TOP,
    )
    return fig


def risk_vs_time_figure(table: pd.DataFrame, groups: Sequence[str], unit: str) -> go.Figure:
    """Scatter of risk against observed time: per group (colour) a trace of events (dots) and one
    of censored patients (crosses), named ``"<group> · event"`` / ``"<group> · censored"``.

    Parameters
    ----------
    table
        ``time``, ``event`` (0/1), ``risk`` and ``risk_group`` per patient (index: case id,
        shown on hover); patients of no listed group are left out.
    groups
        Group names in risk order.
    unit
        Time unit for the axis title.
    """
    colors = dict(zip(groups, group_colors(len(groups))))
    in_group = table["risk_group"].astype(str)
    fig = go.Figure()
    for name in groups:
        for event, symbol, label in ((1, "circle", "event"), (0, "cross-thin-open", "censored")):
            sub = table[(table["event"] == event) & (in_group == name)]
            fig.add_trace(
                go.Scatter(
                    x=sub["time"],
                    y=sub["risk"],
                    mode="markers",
                    name=f"{name} · {label}",
                    text=sub.index,
                    marker={
                        "symbol": symbol,
                        "size": 8,
                        "color": colors[name],
                        "line": {"width": 1.5, "color": colors[name]},
                    },
                    hovertemplate="%{text}<br>time %{x:.1f}<br>risk %{y:.3f}<extra>"
                    + f"{name} · {label}</extra>",
                )
            )
    fig.update_layout(
        template=house_template(fig),
        height=320,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        title="Risk against observed time",
        xaxis_title=f"time ({unit})",
        yaxis_title="risk",
        legend=_LEGEND_TOP,
    )
    return fig
