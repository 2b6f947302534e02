"""Figure builders for risk stratification: Kaplan–Meier plots, box plots, and their tables.

Builders return figure objects and never write files (:mod:`deref.figures.export` does;
:mod:`deref.figures.style` holds the palette and the caption text). The CLI (``deref
figures``), the dashboard and the tests share them, through :mod:`deref.report`.

Two back ends draw the same content:

- plotly (``*_plotly``) for the interactive dashboard;
- matplotlib (``*_matplotlib``) for static export.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from deref.figures.style import (  # noqa: F401 - OKABE_ITO, css_rgba: names other modules took from here
    FONT_FAMILY,
    OKABE_ITO,
    caption_text,
    css_rgba,
    format_p,
    group_colors,
    mpl_figure,
)
from deref.stratify import GroupSummary, StratificationResult

if TYPE_CHECKING:  # matplotlib loads with the first static figure, not with this module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "median_text",
    "hazard_ratio_text",
    "km_figure_plotly",
    "km_figure_matplotlib",
    "risk_boxplot_plotly",
    "risk_boxplot_matplotlib",
    "stratification_table",
]


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
def _fmt_time(x: float | None) -> str:
    return "NR" if x is None else f"{x:.1f}"


def median_text(g: GroupSummary, unit: str = "") -> str:
    """``median 16.9 months (95% CI 12.6–20.8)`` or ``median not reached``."""
    if g.median_survival is None:
        return "median not reached"
    unit = f" {unit}" if unit else ""
    ci = f" (95% CI {_fmt_time(g.median_ci.lower)}–{_fmt_time(g.median_ci.upper)})"
    return f"median {g.median_survival:.1f}{unit}{ci}"


def hazard_ratio_text(result: StratificationResult) -> str:
    """``HR high vs low 2.13 (95% CI 1.52–2.97), p = ...`` or ``HR not estimable: <reason>``."""
    hr = result.hazard_ratio
    level = int(round(100 * (1 - hr.alpha)))
    if not hr.estimable or hr.primary is None:
        return f"HR not estimable: {hr.reason}"
    h = hr.primary
    text = f"HR {h.group} vs {h.reference} {h.hr:.2f} ({level}% CI {h.ci_lower:.2f}–{h.ci_upper:.2f}), {format_p(h.p_value)}"
    if hr.trend is not None:
        t = hr.trend
        text += f"; trend per group step {t.hr:.2f} ({t.ci_lower:.2f}–{t.ci_upper:.2f})"
    return text


def _logrank_text(result: StratificationResult) -> str:
    lr = result.logrank
    if not lr.estimable:
        return f"Log-rank not estimable: {lr.reason}"
    return f"Log-rank {format_p(lr.p_value)}" + (f" ({lr.dof} df)" if lr.dof > 1 else "")


def _legend_label(g: GroupSummary, unit: str) -> str:
    med = "median not reached" if g.median_survival is None else f"median {g.median_survival:.1f}"
    return f"{g.name} (n={g.n}, {g.events} events; {med})"


def _x_range(result: StratificationResult) -> tuple[float, float]:
    t_max = float(max(result.data["time"].max(), result.at_risk_times.max(initial=0.0)))
    return -0.02 * t_max, 1.03 * t_max


def _tick_label(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------------------------
# Kaplan–Meier, plotly
# --------------------------------------------------------------------------------------------
def _ci_label(result: StratificationResult) -> str:
    return f"{int(round(100 * (1 - result.alpha)))}% CI"


def _plotly_group(
    fig: go.Figure, g: GroupSummary, col: str, result: StratificationResult, show_ci, show_censors
):
    """One group's CI band (two invisible bounds, filled between), step curve and censor ticks."""
    km = g.km
    on_curves = {"row": 1, "col": 1}
    if show_ci:
        bound = {"mode": "lines", "legendgroup": g.name, "showlegend": False, "hoverinfo": "skip"}
        line = {"width": 0, "shape": "hv", "color": col}
        fig.add_trace(go.Scatter(x=km["time"], y=km["ci_upper"], line=line, **bound), **on_curves)
        fig.add_trace(
            go.Scatter(
                x=km["time"],
                y=km["ci_lower"],
                line=line,
                fill="tonexty",
                fillcolor=css_rgba(col, 0.18),
                name=f"{g.name} {_ci_label(result)}",
                **bound,
            ),
            **on_curves,
        )
    fig.add_trace(
        go.Scatter(
            x=km["time"],
            y=km["survival"],
            mode="lines",
            line={"shape": "hv", "color": col, "width": 2.2},
            name=_legend_label(g, result.time_unit),
            legendgroup=g.name,
            customdata=np.stack([km["ci_lower"], km["ci_upper"]], axis=1),
            hovertemplate=f"{g.name}<br>t=%{{x:.1f}}<br>S=%{{y:.3f}} (%{{customdata[0]:.3f}}–%{{customdata[1]:.3f}})<extra></extra>",
        ),
        **on_curves,
    )
    if show_censors and g.censor_times.size:
        ct = np.unique(g.censor_times)
        fig.add_trace(
            go.Scatter(
                x=ct,
                y=g.survival_at(ct),
                mode="markers",
                legendgroup=g.name,
                showlegend=False,
                marker={
                    "symbol": "cross-thin",
                    "size": 9,
                    "color": col,
                    "line": {"width": 1.5, "color": col},
                },
                name=f"{g.name} censored",
                hovertemplate=f"{g.name} censored at %{{x:.1f}}<extra></extra>",
            ),
            **on_curves,
        )


def _plotly_at_risk(fig: go.Figure, result: StratificationResult, colors: list[str]) -> None:
    """Row 2: the number at risk of each group, as text at the x ticks."""
    ticks = result.at_risk_times
    wide = result.at_risk_wide()
    for name, col in zip(result.group_names, colors):
        fig.add_trace(
            go.Scatter(
                x=ticks,
                y=[name] * len(ticks),
                mode="text",
                text=[str(int(v)) for v in wide.loc[name].to_numpy()],
                textfont={"color": col, "size": 12, "family": FONT_FAMILY},
                showlegend=False,
                hoverinfo="skip",
                name=f"{name} at risk",
            ),
            row=2,
            col=1,
        )


def _plotly_axes(fig: go.Figure, result: StratificationResult) -> None:
    ticks = result.at_risk_times
    x0, x1 = _x_range(result)
    tick_text = [_tick_label(t) for t in ticks]
    fig.update_xaxes(range=[x0, x1], tickvals=ticks, ticktext=tick_text, showline=True, ticks="outside")
    fig.update_xaxes(title_text=f"Time ({result.time_unit})", showticklabels=True, row=1, col=1)
    fig.update_xaxes(showticklabels=False, showline=False, ticks="", row=2, col=1)
    fig.update_yaxes(
        title_text="Survival probability", range=[0, 1.04], row=1, col=1, showline=True, ticks="outside"
    )
    fig.update_yaxes(
        categoryorder="array",
        categoryarray=result.group_names[::-1],
        showline=False,
        ticks="",
        row=2,
        col=1,
        tickfont={"size": 12},
    )


def _plotly_text(fig: go.Figure, result: StratificationResult, caption: str) -> None:
    """The statistics box in the curves' corner and the provenance caption below."""
    fig.add_annotation(
        text=f"{_logrank_text(result)}<br>{hazard_ratio_text(result)}",
        xref="x domain",
        yref="y domain",
        x=0.99,
        y=0.99,
        xanchor="right",
        yanchor="top",
        showarrow=False,
        align="right",
        font={"size": 12},
        bgcolor="rgba(255,255,255,0.85)",
    )
    if caption:
        fig.add_annotation(
            text=caption,
            xref="paper",
            yref="paper",
            x=0,
            y=-0.08,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            font={"size": 10, "color": "#555555"},
        )


def km_figure_plotly(
    result: StratificationResult,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    show_ci: bool = True,
    show_censors: bool = True,
) -> go.Figure:
    """Interactive Kaplan–Meier figure with at-risk table.

    Parameters
    ----------
    result : StratificationResult
    title : str, optional
    meta : mapping, optional
        Provenance (:func:`figure_meta`); shown as a caption and stored in ``layout.meta``.
    show_ci, show_censors : bool
        Draw the CI bands and the censor ticks.

    Returns
    -------
    plotly.graph_objects.Figure
        Row 1: KM step curves, CI bands, censor ``+`` ticks, statistics annotation.
        Row 2: number at risk per group at the x ticks.
    """
    colors = group_colors(len(result.groups))
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.76, 0.24],
        vertical_spacing=0.1,
        subplot_titles=("", "Number at risk"),
    )
    # the at-risk table's title sits left, clear of the time axis title centred above it
    fig.for_each_annotation(lambda a: a.update(x=0, xanchor="left") if a.text == "Number at risk" else None)
    for g, col in zip(result.groups, colors):
        _plotly_group(fig, g, col, result, show_ci, show_censors)
    _plotly_at_risk(fig, result, colors)
    _plotly_axes(fig, result)
    caption = caption_text(meta)
    _plotly_text(fig, result, caption)
    fig.update_layout(
        template="simple_white",
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": FONT_FAMILY, "size": 13, "color": "#222222"},
        title={"text": title or _default_title(result), "x": 0.01},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0, "font": {"size": 12}},
        margin={"l": 90, "r": 20, "t": 90, "b": 80 if caption else 50},
        height=620,
        width=820,
        meta=dict(meta or {}),
        hovermode="closest",
    )
    return fig


def _default_title(result: StratificationResult) -> str:
    return f"Kaplan–Meier by risk group ({result.cutoff_rule})"


# --------------------------------------------------------------------------------------------
# Kaplan–Meier, matplotlib
# --------------------------------------------------------------------------------------------
def _mpl_curves(ax: Axes, result: StratificationResult, colors: list[str], show_ci, show_censors) -> list:
    """Step curves, CI bands and ``+`` censor ticks; returns the curves (legend handles)."""
    handles = []
    for g, col in zip(result.groups, colors):
        km = g.km
        t = km["time"].to_numpy()
        (line,) = ax.step(
            t, km["survival"], where="post", color=col, lw=2, label=_legend_label(g, result.time_unit)
        )
        handles.append(line)
        if show_ci:
            ax.fill_between(t, km["ci_lower"], km["ci_upper"], step="post", color=col, alpha=0.18, lw=0)
        if show_censors and g.censor_times.size:
            ct = np.unique(g.censor_times)
            ax.plot(ct, g.survival_at(ct), linestyle="none", marker="+", ms=8, mew=1.3, color=col)
    ticks = result.at_risk_times
    ax.set_xlim(*_x_range(result))
    ax.set_ylim(0, 1.04)
    ax.set_xticks(ticks)
    ax.set_xticklabels([_tick_label(t) for t in ticks])
    ax.set_xlabel(f"Time ({result.time_unit})", fontsize=12)
    ax.set_ylabel("Survival probability", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return handles


def _mpl_header(head: Axes, result: StratificationResult, title: str, handles: list, height: float) -> None:
    """Title, the two statistics lines and the legend, top to bottom (``height`` in inches)."""
    head.axis("off")
    head.text(0, 1, title, fontsize=13, ha="left", va="top", transform=head.transAxes)
    head.text(
        0,
        1 - 0.34 / height,
        f"{_logrank_text(result)}\n{hazard_ratio_text(result)}",
        fontsize=9.5,
        ha="left",
        va="top",
        transform=head.transAxes,
    )
    head.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, 1 - 0.8 / height),
        fontsize=9.5,
        frameon=False,
        borderaxespad=0,
        handlelength=1.8,
        labelspacing=0.25,
    )


def _mpl_at_risk(ax_r: Axes, result: StratificationResult, colors: list[str]) -> None:
    """The number at risk per group, aligned with the curves' x ticks, in the group's colour."""
    names = result.group_names
    wide = result.at_risk_wide()
    for i, (name, col) in enumerate(zip(names, colors)):
        for tick, v in zip(result.at_risk_times, wide.loc[name].to_numpy()):
            ax_r.text(tick, i, str(int(v)), ha="center", va="center", fontsize=10, color=col)
    ax_r.set_ylim(len(names) - 0.5, -0.5)
    ax_r.set_yticks(range(len(names)))
    ax_r.set_yticklabels(names, fontsize=10)
    for lbl, col in zip(ax_r.get_yticklabels(), colors):
        lbl.set_color(col)
    ax_r.tick_params(axis="both", length=0, labelbottom=False)
    ax_r.tick_params(axis="y", pad=10)
    for side in ("top", "right", "bottom", "left"):
        ax_r.spines[side].set_visible(False)
    ax_r.set_title("Number at risk", fontsize=10.5, loc="left", pad=2)


def km_figure_matplotlib(
    result: StratificationResult,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    width: float = 7.5,
    show_ci: bool = True,
    show_censors: bool = True,
) -> Figure:
    """Static Kaplan–Meier figure (same content as :func:`km_figure_plotly`).

    Built on a bare :class:`matplotlib.figure.Figure` (no pyplot state, no display needed).
    The height follows the number of groups.

    Returns
    -------
    matplotlib.figure.Figure
        From the top: title, statistics (log-rank p, HR with CI), legend with n, events and
        median per group; KM curves with CI bands and ``+`` censor ticks; the number at risk
        aligned with the x ticks; a caption line with ``meta``.
    """
    colors = group_colors(len(result.groups))
    n = len(result.groups)
    # heights in inches: header (title, 2 stats lines, legend), curves, room for the x label, at-risk rows
    heights = [0.95 + 0.2 * n, 3.9, 0.8, 0.3 + 0.24 * n]
    top_in, bottom_in = 0.15, 0.3
    fig_h = sum(heights) + top_in + bottom_in
    fig = mpl_figure(figsize=(width, fig_h), facecolor="white")
    gs = fig.add_gridspec(
        4,
        1,
        height_ratios=heights,
        hspace=0.0,
        left=0.16,
        right=0.97,
        top=1 - top_in / fig_h,
        bottom=bottom_in / fig_h,
    )
    head = fig.add_subplot(gs[0])
    ax = fig.add_subplot(gs[1])
    ax_r = fig.add_subplot(gs[3], sharex=ax)
    handles = _mpl_curves(ax, result, colors, show_ci, show_censors)
    _mpl_header(head, result, title or _default_title(result), handles, heights[0])
    _mpl_at_risk(ax_r, result, colors)
    caption = caption_text(meta)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, color="#555555", ha="left", va="bottom")
    return fig


# --------------------------------------------------------------------------------------------
# box plot of the t-test
# --------------------------------------------------------------------------------------------
def _box_values(result: StratificationResult) -> tuple[str, dict[str, np.ndarray]]:
    d = result.data
    if result.ttest.quantity.startswith("predicted risk"):
        return "Predicted risk", {
            n: d.loc[d["group"] == n, "risk"].to_numpy(float) for n in result.group_names
        }
    ev = d["event"].astype(bool)
    label = f"Survival time of patients with an event ({result.time_unit})"
    return label, {n: d.loc[ev & (d["group"] == n), "time"].to_numpy(float) for n in result.group_names}


def _ttest_text(result: StratificationResult) -> str:
    tt = result.ttest
    if not tt.estimable:
        return f"t-test not estimable: {tt.reason}"
    return f"Welch t-test {tt.group_b} vs {tt.group_a}: t = {tt.statistic:.2f}, {format_p(tt.p_value)}"


def _box_annotations(result: StratificationResult, caption: str) -> list[dict[str, Any]]:
    """The t-test line above the plot and the provenance caption below it."""
    paper = {"xref": "paper", "yref": "paper", "showarrow": False}
    out = [
        {
            "text": _ttest_text(result),
            "x": 1,
            "y": 1.02,
            "xanchor": "right",
            "yanchor": "bottom",
            "font": {"size": 12},
            **paper,
        }
    ]
    if caption:
        out.append(
            {
                "text": caption,
                "x": 0,
                "y": -0.14,
                "xanchor": "left",
                "yanchor": "top",
                "font": {"size": 10, "color": "#555555"},
                **paper,
            }
        )
    return out


def risk_boxplot_plotly(
    result: StratificationResult, *, title: str | None = None, meta: Mapping[str, Any] | None = None
) -> go.Figure:
    """Box plot (with points) of the t-test's quantity per group, and the t-test result."""
    ylabel, values = _box_values(result)
    unit = "events" if result.ttest.quantity.startswith("survival") else "patients"
    fig = go.Figure()
    for (name, vals), col in zip(values.items(), group_colors(len(values))):
        fig.add_trace(
            go.Box(
                y=vals,
                name=f"{name} ({vals.size} {unit})",
                marker_color=col,
                boxpoints="all",
                jitter=0.35,
                pointpos=0,
                line={"width": 1.6},
                fillcolor=css_rgba(col, 0.2),
            )
        )
    caption = caption_text(meta)
    annotations = _box_annotations(result, caption)
    fig.update_layout(
        template="simple_white",
        font={"family": FONT_FAMILY, "size": 13},
        title={"text": title or "Risk groups", "x": 0.01},
        yaxis_title=ylabel,
        showlegend=False,
        annotations=annotations,
        margin={"l": 80, "r": 20, "t": 80, "b": 90 if caption else 50},
        height=480,
        width=640,
        meta=dict(meta or {}),
    )
    return fig


def risk_boxplot_matplotlib(
    result: StratificationResult,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    figsize: tuple[float, float] = (5.5, 5.0),
) -> Figure:
    """Static box plot (with jittered points) of the t-test's quantity per group."""
    ylabel, values = _box_values(result)
    colors = group_colors(len(values))
    fig = mpl_figure(figsize=figsize, facecolor="white")
    ax = fig.add_subplot(1, 1, 1)
    data = [v for v in values.values()]
    bp = ax.boxplot(data, patch_artist=True, widths=0.55, showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # fixed jitter: the same figure for the same data
    for i, (vals, col) in enumerate(zip(data, colors), start=1):
        bp["boxes"][i - 1].set(facecolor=col, alpha=0.3, edgecolor=col)
        ax.plot(i + rng.uniform(-0.15, 0.15, vals.size), vals, "o", ms=3.5, color=col, alpha=0.8)
    ax.set_xticks(range(1, len(values) + 1))
    unit = "events" if result.ttest.quantity.startswith("survival") else "patients"
    ax.set_xticklabels([f"{n}\n({v.size} {unit})" for n, v in values.items()], fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title or "Risk groups", fontsize=13, loc="left", pad=20)
    ax.text(0.0, 1.01, _ttest_text(result), transform=ax.transAxes, ha="left", va="bottom", fontsize=9)
    caption = caption_text(meta)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=6.5, color="#555555", ha="left", va="bottom")
    fig.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.16)
    return fig


# --------------------------------------------------------------------------------------------
# the numbers behind the plot
# --------------------------------------------------------------------------------------------
TABLE_COLUMNS = [
    "section",
    "group",
    "reference",
    "time",
    "survival",
    "ci_lower",
    "ci_upper",
    "at_risk",
    "censored",
    "events",
    "n",
    "median_survival",
    "median_ci_lower",
    "median_ci_upper",
    "hr",
    "hr_ci_lower",
    "hr_ci_upper",
    "statistic",
    "dof",
    "p_value",
    "p_holm",
    "note",
]


def _curve_rows(result: StratificationResult) -> list[dict[str, Any]]:
    rows = []
    for g in result.groups:
        for r in g.km.itertuples(index=False):
            rows.append(
                {
                    "section": "km",
                    "group": g.name,
                    "time": r.time,
                    "survival": r.survival,
                    "ci_lower": r.ci_lower,
                    "ci_upper": r.ci_upper,
                }
            )
    for r in result.at_risk.itertuples(index=False):
        rows.append(
            {
                "section": "at_risk",
                "group": r.group,
                "time": r.time,
                "at_risk": r.at_risk,
                "censored": r.censored,
                "events": r.events,
            }
        )
    return rows


def _group_rows(result: StratificationResult) -> list[dict[str, Any]]:
    rows = result.summary_frame().astype(object).to_dict("records")
    return [
        {"section": "group", **row, "note": "median not reached" if g.median_survival is None else None}
        for row, g in zip(rows, result.groups)
    ]


def _hazard_ratio_rows(result: StratificationResult) -> list[dict[str, Any]]:
    hr = result.hazard_ratio
    if not hr.estimable:
        return [{"section": "hazard_ratio", "note": f"not estimable: {hr.reason}"}]
    labelled = [("hazard_ratio", h) for h in hr.comparisons]
    if hr.trend is not None:
        labelled.append(("hr_trend", hr.trend))
    return [
        {
            "section": section,
            "group": h.group,
            "reference": h.reference,
            "hr": h.hr,
            "hr_ci_lower": h.ci_lower,
            "hr_ci_upper": h.ci_upper,
            "p_value": h.p_value,
        }
        for section, h in labelled
    ]


def _test_rows(result: StratificationResult) -> list[dict[str, Any]]:
    """Log-rank (overall, then pairwise with Holm's p) and the t-test."""
    lr = result.logrank
    rows = [
        {
            "section": "logrank",
            "statistic": lr.statistic,
            "dof": lr.dof,
            "p_value": lr.p_value,
            "note": None if lr.estimable else f"not estimable: {lr.reason}",
        }
    ]
    if result.pairwise_logrank is not None:
        for r in result.pairwise_logrank.itertuples(index=False):
            rows.append(
                {
                    "section": "pairwise_logrank",
                    "group": r.group_b,
                    "reference": r.group_a,
                    "statistic": r.statistic,
                    "p_value": r.p_value,
                    "p_holm": r.p_holm,
                }
            )
    tt = result.ttest
    rows.append(
        {
            "section": "ttest",
            "group": tt.group_b,
            "reference": tt.group_a,
            "statistic": tt.statistic,
            "p_value": tt.p_value,
            "note": tt.quantity if tt.estimable else f"not estimable: {tt.reason}",
        }
    )
    return rows


def _cutoff_rows(result: StratificationResult) -> list[dict[str, Any]]:
    return [
        {
            "section": "cutoff",
            "group": str(fold),
            "note": f"{result.cutoff_rule} ({result.cutoff_source}): "
            + ", ".join(f"{v:.6g}" for v in np.atleast_1d(thr)),
        }
        for fold, thr in result.thresholds.items()
    ]


def stratification_table(result: StratificationResult) -> pd.DataFrame:
    """Every number behind a KM figure in one long table (for CSV export).

    ``section`` says what a row is:

    - ``km``: ``group, time, survival, ci_lower, ci_upper`` (every step of each curve);
    - ``at_risk``: ``group, time, at_risk, censored, events`` at the figure's ticks;
    - ``group``: ``group, n, events, median_survival, median_ci_lower, median_ci_upper``
      (empty median = not reached, ``note`` says so);
    - ``hazard_ratio`` / ``hr_trend``: ``group, reference, hr, hr_ci_lower, hr_ci_upper,
      p_value`` (or a ``note`` why not estimable);
    - ``logrank``: ``statistic, dof, p_value``; ``pairwise_logrank``: ``group, reference,
      statistic, p_value, p_holm``; ``ttest``: ``group, reference, statistic, p_value``;
    - ``cutoff``: ``group`` = fold, ``note`` = thresholds, rule and source.
    """
    rows = [
        *_curve_rows(result),
        *_group_rows(result),
        *_hazard_ratio_rows(result),
        *_test_rows(result),
        *_cutoff_rows(result),
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
