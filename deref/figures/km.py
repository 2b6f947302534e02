"""Figure builders for risk stratification: Kaplan–Meier plots, box plots, and their tables.

Builders return figure objects and never write files; :func:`export_figure` turns a
matplotlib figure into PNG / SVG / PDF bytes with provenance in the file's metadata. The
CLI (``deref figures``), the dashboard and the tests share these functions.

Two back ends draw the same content:

- plotly (``*_plotly``) for the interactive dashboard;
- matplotlib (``*_matplotlib``) for static export. plotly's own static export (kaleido)
  needs a Chromium that is not always installed; matplotlib needs nothing.

Style: white background, Okabe–Ito colours (distinguishable with the common colour-vision
deficiencies) ordered from blue (lowest risk) to vermillion (highest), 10–13 pt text.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from deref import __version__
from deref.stratify import GroupSummary, StratificationResult

if TYPE_CHECKING:  # matplotlib loads with the first static figure, not with this module
    from matplotlib.figure import Figure


def _mpl_figure(**kwargs: Any) -> Figure:
    """A bare matplotlib Figure with an Agg canvas (no pyplot state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


logger = logging.getLogger(__name__)

__all__ = [
    "OKABE_ITO",
    "group_colors",
    "css_rgba",
    "figure_meta",
    "caption_text",
    "format_p",
    "median_text",
    "hazard_ratio_text",
    "km_figure_plotly",
    "km_figure_matplotlib",
    "risk_boxplot_plotly",
    "risk_boxplot_matplotlib",
    "export_figure",
    "stratification_table",
]

#: Okabe & Ito (2008) colour-blind-safe palette.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

_FONT = "Arial, Helvetica, DejaVu Sans, sans-serif"
_SOFTWARE = f"DeReF Studio {__version__}"


def group_colors(n: int) -> list[str]:
    """``n`` Okabe–Ito colours ordered low -> high risk (blue ... vermillion)."""
    o = OKABE_ITO
    if n <= 2:
        return [o["blue"], o["vermillion"]][:n]
    if n == 3:
        return [o["blue"], o["orange"], o["vermillion"]]
    if n == 4:
        return [o["blue"], o["bluish_green"], o["orange"], o["vermillion"]]
    base = [
        o["blue"],
        o["sky_blue"],
        o["bluish_green"],
        o["orange"],
        o["vermillion"],
        o["reddish_purple"],
        o["black"],
    ]
    return [base[i % len(base)] for i in range(n)]


def css_rgba(hex_color: str, alpha: float) -> str:
    """A ``#rrggbb`` colour with opacity ``alpha``, as a CSS ``rgba(r,g,b,a)`` string (plotly fills)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------
def figure_meta(
    run: str | None = None,
    cohort: str | None = None,
    cutoff: str | None = None,
    date: str | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Provenance of a figure: ``run``, ``cohort``, ``cutoff`` and ``date`` (today by default).

    Extra keyword arguments are kept (as strings); None values are dropped.
    """
    meta = {"run": run, "cohort": cohort, "cutoff": cutoff, "date": date or _dt.date.today().isoformat()}
    meta.update(extra)
    return {k: str(v) for k, v in meta.items() if v is not None}


def caption_text(meta: Mapping[str, Any] | None) -> str:
    """The caption line printed on a figure, e.g. ``run: r1 | cohort: BLCA | ...``."""
    if not meta:
        return ""
    return " | ".join(f"{k}: {v}" for k, v in meta.items() if k != "title" and v is not None)


def format_p(p: float) -> str:
    """A p-value for display: ``p = 0.032``, ``p = 4.1e-06``, ``p = n/a``."""
    if p is None or not np.isfinite(p):
        return "p = n/a"
    if p < 1e-3:
        return f"p = {p:.1e}"
    return f"p = {p:.3f}"


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
# Kaplan–Meier
# --------------------------------------------------------------------------------------------
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
    names = result.group_names
    colors = group_colors(len(names))
    ticks = result.at_risk_times
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
        km = g.km
        if show_ci:
            fig.add_trace(
                go.Scatter(
                    x=km["time"],
                    y=km["ci_upper"],
                    mode="lines",
                    line={"width": 0, "shape": "hv", "color": col},
                    legendgroup=g.name,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=km["time"],
                    y=km["ci_lower"],
                    mode="lines",
                    line={"width": 0, "shape": "hv", "color": col},
                    fill="tonexty",
                    fillcolor=css_rgba(col, 0.18),
                    legendgroup=g.name,
                    showlegend=False,
                    name=f"{g.name} {int(round(100 * (1 - result.alpha)))}% CI",
                    hoverinfo="skip",
                ),
                row=1,
                col=1,
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
            row=1,
            col=1,
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
                row=1,
                col=1,
            )
    wide = result.at_risk_wide()
    for name, col in zip(names, colors):
        fig.add_trace(
            go.Scatter(
                x=ticks,
                y=[name] * len(ticks),
                mode="text",
                text=[str(int(v)) for v in wide.loc[name].to_numpy()],
                textfont={"color": col, "size": 12, "family": _FONT},
                showlegend=False,
                hoverinfo="skip",
                name=f"{name} at risk",
            ),
            row=2,
            col=1,
        )
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
        categoryarray=names[::-1],
        showline=False,
        ticks="",
        row=2,
        col=1,
        tickfont={"size": 12},
    )
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
    caption = caption_text(meta)
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
    fig.update_layout(
        template="simple_white",
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": _FONT, "size": 13, "color": "#222222"},
        title={"text": title or f"Kaplan–Meier by risk group ({result.cutoff_rule})", "x": 0.01},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0, "font": {"size": 12}},
        margin={"l": 90, "r": 20, "t": 90, "b": 80 if caption else 50},
        height=620,
        width=820,
        meta=dict(meta or {}),
        hovermode="closest",
    )
    return fig


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
    names = result.group_names
    colors = group_colors(len(names))
    ticks = result.at_risk_times
    n = len(names)
    # heights in inches: header (title, 2 stats lines, legend), curves, room for the x label, at-risk rows
    heights = [0.95 + 0.2 * n, 3.9, 0.8, 0.3 + 0.24 * n]
    top_in, bottom_in = 0.15, 0.3
    fig_h = sum(heights) + top_in + bottom_in
    fig = _mpl_figure(figsize=(width, fig_h), facecolor="white")
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
    x0, x1 = _x_range(result)
    ax.set_xlim(x0, x1)
    ax.set_ylim(0, 1.04)
    ax.set_xticks(ticks)
    ax.set_xticklabels([_tick_label(t) for t in ticks])
    ax.set_xlabel(f"Time ({result.time_unit})", fontsize=12)
    ax.set_ylabel("Survival probability", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.spines[["top", "right"]].set_visible(False)

    head.axis("off")
    head.text(
        0,
        1,
        title or f"Kaplan–Meier by risk group ({result.cutoff_rule})",
        fontsize=13,
        ha="left",
        va="top",
        transform=head.transAxes,
    )
    head.text(
        0,
        1 - 0.34 / heights[0],
        f"{_logrank_text(result)}\n{hazard_ratio_text(result)}",
        fontsize=9.5,
        ha="left",
        va="top",
        transform=head.transAxes,
    )
    head.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0, 1 - 0.8 / heights[0]),
        fontsize=9.5,
        frameon=False,
        borderaxespad=0,
        handlelength=1.8,
        labelspacing=0.25,
    )

    wide = result.at_risk_wide()
    for i, (name, col) in enumerate(zip(names, colors)):
        for tick, v in zip(ticks, wide.loc[name].to_numpy()):
            ax_r.text(tick, i, str(int(v)), ha="center", va="center", fontsize=10, color=col)
    ax_r.set_ylim(n - 0.5, -0.5)
    ax_r.set_yticks(range(n))
    ax_r.set_yticklabels(names, fontsize=10)
    for lbl, col in zip(ax_r.get_yticklabels(), colors):
        lbl.set_color(col)
    ax_r.tick_params(axis="both", length=0, labelbottom=False)
    ax_r.tick_params(axis="y", pad=10)
    for side in ("top", "right", "bottom", "left"):
        ax_r.spines[side].set_visible(False)
    ax_r.set_title("Number at risk", fontsize=10.5, loc="left", pad=2)
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
    annotations = [
        {
            "text": _ttest_text(result),
            "xref": "paper",
            "yref": "paper",
            "x": 1,
            "y": 1.02,
            "xanchor": "right",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 12},
        },
    ]
    if caption:
        annotations.append(
            {
                "text": caption,
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": -0.14,
                "xanchor": "left",
                "yanchor": "top",
                "showarrow": False,
                "font": {"size": 10, "color": "#555555"},
            }
        )
    fig.update_layout(
        template="simple_white",
        font={"family": _FONT, "size": 13},
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
    fig = _mpl_figure(figsize=figsize, facecolor="white")
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
# export
# --------------------------------------------------------------------------------------------
def _file_metadata(fmt: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    meta = {str(k): str(v) for k, v in meta.items() if v is not None}
    title = meta.get("title") or ("DeReF Studio figure" + (f" ({meta['run']})" if "run" in meta else ""))
    caption = caption_text(meta)
    keywords = [f"{k}={v}" for k, v in meta.items() if k != "title"]
    if fmt == "png":
        out = {"Title": title, "Software": _SOFTWARE, "Description": caption}
        for k, v in meta.items():
            key = k.strip().replace(" ", "_")[:79] or "key"
            out.setdefault(key[0].upper() + key[1:], v)
        return out
    if fmt == "svg":
        out = {"Title": title, "Description": caption, "Keywords": keywords, "Creator": _SOFTWARE}
        if "date" in meta:
            out["Date"] = meta["date"]
        return out
    return {"Title": title, "Subject": caption, "Keywords": "; ".join(keywords), "Creator": _SOFTWARE}


def export_figure(fig: Figure, fmt: str, meta: Mapping[str, Any] | None = None) -> bytes:
    """Render a matplotlib figure to PNG (300 dpi), SVG or PDF bytes with provenance metadata.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        From a ``*_matplotlib`` builder.
    fmt : {"png", "svg", "pdf"}
    meta : mapping, optional
        Provenance (:func:`figure_meta`): written to PNG text chunks, SVG ``<metadata>``
        (Dublin Core title/description/keywords/date), or the PDF Info dictionary
        (Title, Subject = caption, Keywords = ``key=value; ...``). The builders also print
        it as a caption line on the figure.

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        ``fig`` is not a matplotlib figure (plotly figures need a browser for static export;
        build the matplotlib version instead).
    ValueError
        Unknown ``fmt``.
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(
            f"export_figure needs a matplotlib Figure, got {type(fig).__name__}; "
            "build it with km_figure_matplotlib / risk_boxplot_matplotlib"
        )
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"unsupported figure format {fmt!r}; use png, svg or pdf")
    import matplotlib

    buf = io.BytesIO()
    rc = {
        "svg.fonttype": "none",  # text stays text: editable in Inkscape/Illustrator
        "svg.hashsalt": "deref",  # stable element ids: same figure, same bytes
        "pdf.fonttype": 42,  # TrueType, as journals ask
    }
    # the PDF backend subsets fonts with fontTools, which logs every glyph at INFO
    ft_logger = logging.getLogger("fontTools")
    ft_level = ft_logger.level
    ft_logger.setLevel(max(ft_level, logging.WARNING))
    try:
        with matplotlib.rc_context(rc):
            fig.savefig(
                buf,
                format=fmt,
                dpi=300 if fmt == "png" else 72,
                metadata=_file_metadata(fmt, meta or {}),
                facecolor="white",
                bbox_inches="tight",
                pad_inches=0.08,
            )
    finally:
        ft_logger.setLevel(ft_level)
    return buf.getvalue()


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
    rows: list[dict[str, Any]] = []
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
    for g in result.groups:
        rows.append(
            {
                "section": "group",
                "group": g.name,
                "n": g.n,
                "events": g.events,
                "median_survival": g.median_survival,
                "median_ci_lower": g.median_ci.lower,
                "median_ci_upper": g.median_ci.upper,
                "note": "median not reached" if g.median_survival is None else None,
            }
        )
    hr = result.hazard_ratio
    if hr.estimable:
        for h in hr.comparisons:
            rows.append(
                {
                    "section": "hazard_ratio",
                    "group": h.group,
                    "reference": h.reference,
                    "hr": h.hr,
                    "hr_ci_lower": h.ci_lower,
                    "hr_ci_upper": h.ci_upper,
                    "p_value": h.p_value,
                }
            )
        if hr.trend is not None:
            t = hr.trend
            rows.append(
                {
                    "section": "hr_trend",
                    "group": t.group,
                    "reference": t.reference,
                    "hr": t.hr,
                    "hr_ci_lower": t.ci_lower,
                    "hr_ci_upper": t.ci_upper,
                    "p_value": t.p_value,
                }
            )
    else:
        rows.append({"section": "hazard_ratio", "note": f"not estimable: {hr.reason}"})
    lr = result.logrank
    rows.append(
        {
            "section": "logrank",
            "statistic": lr.statistic,
            "dof": lr.dof,
            "p_value": lr.p_value,
            "note": None if lr.estimable else f"not estimable: {lr.reason}",
        }
    )
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
    for fold, thr in result.thresholds.items():
        rows.append(
            {
                "section": "cutoff",
                "group": str(fold),
                "note": f"{result.cutoff_rule} ({result.cutoff_source}): "
                + ", ".join(f"{v:.6g}" for v in np.atleast_1d(thr)),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
