"""Figures and tables of a comparison of runs (``deref compare``): the forest plot of the paired
differences in C-index and the table in the paper's Table III layout (one row per run, mean ± std
over folds per metric, the best honest figure in bold) as Markdown and LaTeX.

Builders take the plain frames :class:`deref.compare.Comparison` gives (``pairs_frame()``,
``runs_frame()``) and return a figure object or text; they never write files.

The optimistic best-epoch column (the epoch chosen on the validation fold itself) is shown only
labelled so, and is never bolded: the best of a column is decided on the honest headline alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from deref.figures.style import FONT_FAMILY, OKABE_ITO, caption_text, format_p, mpl_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "COMPARISON_METRICS",
    "forest_figure_plotly",
    "forest_figure_matplotlib",
    "best_runs",
    "comparison_display_table",
    "comparison_markdown",
    "comparison_latex",
    "latex_escape",
    "fold_scores_figure",
    "km_small_multiples",
    "risk_scatter_figure",
    "clicked_case",
]

#: Table columns: metric key in ``runs_frame()`` -> (label, higher is better).
COMPARISON_METRICS: dict[str, tuple[str, bool]] = {
    "harrell": ("Harrell C", True),
    "uno": ("Uno C", True),
    "td_auc": ("td-AUC", True),
    "ibs": ("IBS", False),
}
_DIGITS = 3


# --------------------------------------------------------------------------------------------
# forest plot
# --------------------------------------------------------------------------------------------
def _pair_label(row: Mapping[str, Any]) -> str:
    return (
        f"{row['delta_c']:+.3f} [{row['delta_c_ci_low']:+.3f}, {row['delta_c_ci_high']:+.3f}]"
        f"  wins {row['reference_wins']:.0%}  Holm {format_p(row['p_holm'])}"
    )


def _forest_title(reference: str, level: float) -> str:
    return f"Pooled out-of-fold C-index: {reference} minus each run ({level:.0%} paired bootstrap CI)"


def forest_figure_plotly(
    pairs: pd.DataFrame, reference: str, *, level: float = 0.95, meta: Mapping[str, Any] | None = None
) -> go.Figure:
    """Forest plot of ``delta_c`` with its CI, one row per compared run (first run on top).

    Parameters
    ----------
    pairs : pandas.DataFrame
        ``Comparison.pairs_frame()``: ``other, delta_c, delta_c_ci_low, delta_c_ci_high,
        reference_wins, p_holm``.
    reference : str
        The reference run (positive differences: the reference is better).
    level : float
        The CI's level, for the title.
    meta : mapping, optional
        Provenance (:func:`~deref.figures.figure_meta`); shown as a caption, kept in ``layout.meta``.
    """
    names = list(pairs["other"])
    d = pairs["delta_c"].to_numpy(float)
    lo, hi = pairs["delta_c_ci_low"].to_numpy(float), pairs["delta_c_ci_high"].to_numpy(float)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=d,
            y=names,
            mode="markers",
            marker={"size": 10, "color": OKABE_ITO["blue"], "symbol": "square"},
            error_x={"type": "data", "symmetric": False, "array": hi - d, "arrayminus": d - lo},
            text=[_pair_label(r) for r in pairs.to_dict("records")],
            hovertemplate="%{y}: ΔC %{text}<extra></extra>",
            name="ΔC",
        )
    )
    fig.add_vline(x=0, line={"dash": "dash", "color": "#777777"})
    caption = caption_text(meta)
    fig.update_layout(
        template="simple_white",
        font={"family": FONT_FAMILY, "size": 13},
        title={"text": _forest_title(reference, level), "x": 0.01, "font": {"size": 14}},
        xaxis_title=f"ΔC ({reference} − run); > 0: {reference} better",
        yaxis={"autorange": "reversed", "title": None},
        showlegend=False,
        height=max(260, 80 + 46 * len(names)),
        margin={"l": 20, "r": 20, "t": 60, "b": 90 if caption else 50},
        annotations=[
            {"text": caption, "xref": "paper", "yref": "paper", "x": 0, "y": -0.32, "showarrow": False}
        ]
        if caption
        else [],
        meta=dict(meta or {}),
    )
    return fig


def forest_figure_matplotlib(
    pairs: pd.DataFrame,
    reference: str,
    *,
    level: float = 0.95,
    meta: Mapping[str, Any] | None = None,
    width: float = 7.5,
) -> Figure:
    """The forest plot of :func:`forest_figure_plotly` for files (:func:`export_figure`)."""
    n = len(pairs)
    fig = mpl_figure(figsize=(width, 1.3 + 0.42 * max(n, 1)), facecolor="white")
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(n)[::-1]
    d = pairs["delta_c"].to_numpy(float)
    lo, hi = pairs["delta_c_ci_low"].to_numpy(float), pairs["delta_c_ci_high"].to_numpy(float)
    ax.errorbar(
        d,
        y,
        xerr=[d - lo, hi - d],
        fmt="s",
        color=OKABE_ITO["blue"],
        ecolor=OKABE_ITO["blue"],
        capsize=3,
        ms=5,
    )
    ax.axvline(0, color="#777777", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(list(pairs["other"]), fontsize=9)
    ax.set_ylim(-0.7, n - 0.3)
    for yi, row in zip(y, pairs.to_dict("records")):
        ax.annotate(_pair_label(row), (1.02, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_xlabel(f"ΔC ({reference} − run); > 0: {reference} better", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(_forest_title(reference, level), fontsize=10, loc="left")
    caption = caption_text(meta)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=6.5, color="#555555", ha="left", va="bottom")
    fig.subplots_adjust(left=0.22, right=0.62, top=0.85, bottom=0.3 if n < 3 else 0.2)
    return fig


# --------------------------------------------------------------------------------------------
# the table (paper's Table III layout)
# --------------------------------------------------------------------------------------------
def best_runs(runs: pd.DataFrame) -> dict[str, set[str]]:
    """metric -> the runs with the best honest mean, compared as displayed (3 decimals): ties
    share the bold. The optimistic column has no best."""
    out = {}
    for m, (_, higher) in COMPARISON_METRICS.items():
        vals = runs[f"{m}_mean"].to_numpy(float).round(_DIGITS)
        ok = np.isfinite(vals)
        if not ok.any():
            out[m] = set()
            continue
        best = np.nanmax(vals) if higher else np.nanmin(vals)
        out[m] = {str(r) for r, v in zip(runs["run"], vals) if np.isfinite(v) and v == best}
    return out


def _pm(mean: float, std: float) -> tuple[str, str]:
    if not np.isfinite(mean):
        return "n/a", ""
    return f"{mean:.{_DIGITS}f}", f"{std:.{_DIGITS}f}" if np.isfinite(std) else "n/a"


def _has_optimistic(runs: pd.DataFrame) -> bool:
    return bool(np.isfinite(runs["optimistic_harrell_mean"].to_numpy(float)).any())


def _delta(row: Mapping[str, Any]) -> tuple[str, str, str] | None:
    if not np.isfinite(row["delta_c"]):
        return None
    return tuple(f"{row[k]:+.{_DIGITS}f}" for k in ("delta_c", "delta_c_ci_low", "delta_c_ci_high"))


def _header(runs: pd.DataFrame, reference: str) -> list[str]:
    cols = ["Run", *(label for label, _ in COMPARISON_METRICS.values()), "pooled C"]
    cols.append(f"ΔC vs {reference} [95% CI]")
    if _has_optimistic(runs):
        cols.append("Harrell C, best epoch (optimistic)")
    return cols


def comparison_display_table(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The table as plain text cells (``mean ± std``), one row per run, in the column order of
    the Markdown and LaTeX tables (no bold)."""
    rows = []
    for row in runs.to_dict("records"):
        cells = [str(row["run"])]
        for m in COMPARISON_METRICS:
            mean, std = _pm(row[f"{m}_mean"], row[f"{m}_std"])
            cells.append(f"{mean} ± {std}" if std else mean)
        cells.append(f"{row['pooled_harrell']:.{_DIGITS}f}")
        delta = _delta(row)
        cells.append("reference" if delta is None else f"{delta[0]} [{delta[1]}, {delta[2]}]")
        if _has_optimistic(runs):
            mean, std = _pm(row["optimistic_harrell_mean"], row["optimistic_harrell_std"])
            cells.append(f"{mean} ± {std}" if std else mean)
        rows.append(cells)
    return pd.DataFrame(rows, columns=_header(runs, reference))


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def comparison_markdown(runs: pd.DataFrame, reference: str) -> str:
    """The table in Markdown (GitHub pipe table): best honest mean per metric in ``**bold**``."""
    best = best_runs(runs)
    table = comparison_display_table(runs, reference)
    lines = [
        "| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
        "|" + "|".join([":---", *["---:"] * (len(table.columns) - 1)]) + "|",
    ]
    for name, cells in zip(runs["run"], table.itertuples(index=False)):
        out = [_md_escape(c) for c in cells]
        for j, m in enumerate(COMPARISON_METRICS, start=1):
            if str(name) in best[m]:
                out[j] = f"**{out[j]}**"
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_pm(mean: float, std: float) -> str:
    m, s = _pm(mean, std)
    if m == "n/a":
        return "n/a"
    return f"{m} $\\pm$ {s}" if s else m


def comparison_latex(
    runs: pd.DataFrame, reference: str, *, caption: str | None = None, label: str = "tab:comparison"
) -> str:
    """The table in LaTeX (``booktabs``), one row per run, mean ± std; the best honest mean per
    metric in ``\\textbf`` (never the optimistic column)."""
    best = best_runs(runs)
    opt = _has_optimistic(runs)
    head = [latex_escape(c) for c in _header(runs, reference)]
    head = [h.replace("ΔC", "$\\Delta C$") for h in head]
    body = []
    for row in runs.to_dict("records"):
        cells = [latex_escape(row["run"])]
        for m in COMPARISON_METRICS:
            cell = _latex_pm(row[f"{m}_mean"], row[f"{m}_std"])
            cells.append(f"\\textbf{{{cell}}}" if str(row["run"]) in best[m] else cell)
        cells.append(f"{row['pooled_harrell']:.{_DIGITS}f}")
        delta = _delta(row)
        cells.append("reference" if delta is None else f"${delta[0]}$ [${delta[1]}$, ${delta[2]}$]")
        if opt:
            cells.append(_latex_pm(row["optimistic_harrell_mean"], row["optimistic_harrell_std"]))
        body.append(" & ".join(cells) + r" \\")
    cap = caption or (
        "Out-of-fold metrics, mean $\\pm$ std over folds (best honest figure in bold); "
        f"$\\Delta C$: pooled out-of-fold Harrell C of {latex_escape(reference)} minus the run's, "
        "with its paired bootstrap 95\\% CI."
    )
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            f"\\caption{{{cap}}}",
            f"\\label{{{label}}}",
            f"\\begin{{tabular}}{{l{'c' * (len(head) - 1)}}}",
            r"\toprule",
            " & ".join(head) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------
# the Compare page: per-fold scores, risk groups of every run, two runs' risks
# --------------------------------------------------------------------------------------------
def fold_scores_figure(folds: pd.DataFrame, reference: str, metric_label: str = "Harrell C") -> go.Figure:
    """Per-fold scores of every run, one line per fold across the runs (the folds are paired: a
    line that falls from the reference to another run is a fold that run lost), the reference
    first. ``folds``: ``Comparison.fold_frame()`` (``run, fold, value``)."""
    runs = [reference, *[r for r in dict.fromkeys(folds["run"]) if r != reference]]
    fig = go.Figure()
    palette = list(OKABE_ITO.values())
    for i, (k, part) in enumerate(folds.groupby("fold", sort=True)):
        part = part.set_index("run").reindex(runs)
        fig.add_trace(
            go.Scatter(
                x=runs,
                y=part["value"].to_numpy(float),
                mode="lines+markers",
                name=f"fold {k}",
                line={"color": palette[i % len(palette)], "width": 1.5},
                marker={"size": 8},
                hovertemplate=f"fold {k} · %{{x}}: %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        template="simple_white",
        font={"family": FONT_FAMILY, "size": 13},
        title={"text": f"{metric_label} per outer fold (held-out patients)", "x": 0.01, "font": {"size": 14}},
        yaxis_title=metric_label,
        height=360,
        margin={"l": 20, "r": 20, "t": 50, "b": 40},
    )
    return fig


def km_small_multiples(
    results: Mapping[str, Any], *, columns: int = 3, time_unit: str = "months"
) -> go.Figure:
    """Kaplan–Meier curves of each run's risk groups (``deref.stratify.StratificationResult`` per
    run name), one panel per run, shared axes, the log-rank p-value in each panel's title."""
    from plotly.subplots import make_subplots

    from deref.figures.style import group_colors

    names = list(results)
    cols = max(1, min(columns, len(names)))
    rows = max(1, -(-len(names) // cols))
    titles = [f"{n} · log-rank {format_p(results[n].logrank.p_value)}" for n in names]
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, shared_yaxes=True, subplot_titles=titles)
    for i, name in enumerate(names):
        res = results[name]
        colors = group_colors(len(res.groups))
        for g, color in zip(res.groups, colors):
            fig.add_trace(
                go.Scatter(
                    x=g.km["time"],
                    y=g.km["survival"],
                    mode="lines",
                    line={"shape": "hv", "color": color},
                    name=g.name,
                    legendgroup=g.name,
                    showlegend=i == 0,
                    hovertemplate=f"{name} · {g.name} (n={g.n}): %{{y:.2f}} at %{{x:.1f}} {time_unit}<extra></extra>",
                ),
                row=i // cols + 1,
                col=i % cols + 1,
            )
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(
        template="simple_white",
        font={"family": FONT_FAMILY, "size": 12},
        height=280 * rows + 60,
        margin={"l": 20, "r": 20, "t": 60, "b": 40},
        title={
            "text": f"Risk groups of each run (Kaplan–Meier, time in {time_unit})",
            "x": 0.01,
            "font": {"size": 14},
        },
    )
    return fig


def risk_scatter_figure(risks: pd.DataFrame, a: str, b: str, highlight: list[str] | None = None) -> go.Figure:
    """Risk percentiles of two runs, one point per patient (held-out risks; events filled,
    censored open), the patients in ``highlight`` (where they disagree most) marked and labelled.
    Points carry their case id in ``customdata`` (a click opens that patient)."""
    pa = risks[a].rank(pct=True).to_numpy() * 100
    pb = risks[b].rank(pct=True).to_numpy() * 100
    ids = risks["case_id"].astype(str).to_numpy()
    event = risks["event"].to_numpy(bool)
    hot = np.isin(ids, list(highlight or []))
    fig = go.Figure()
    for mask, name, symbol, color in (
        (event & ~hot, "event", "circle", OKABE_ITO["blue"]),
        (~event & ~hot, "censored", "circle-open", OKABE_ITO["blue"]),
        (hot, "largest disagreement", "diamond", OKABE_ITO["vermillion"]),
    ):
        fig.add_trace(
            go.Scatter(
                x=pa[mask],
                y=pb[mask],
                mode="markers+text" if name == "largest disagreement" else "markers",
                text=ids[mask] if name == "largest disagreement" else None,
                textposition="top center",
                customdata=ids[mask],
                marker={"symbol": symbol, "size": 9 if name == "largest disagreement" else 7, "color": color},
                name=name,
                hovertemplate=f"%{{customdata}}: {a} %{{x:.0f}}th, {b} %{{y:.0f}}th percentile<extra></extra>",
            )
        )
    fig.add_shape(type="line", x0=0, y0=0, x1=100, y1=100, line={"dash": "dot", "color": "#999999"})
    fig.update_layout(
        template="simple_white",
        font={"family": FONT_FAMILY, "size": 13},
        title={"text": f"Held-out risk percentile: {a} vs {b}", "x": 0.01, "font": {"size": 14}},
        xaxis={"title": f"{a} (percentile)", "range": [-2, 102]},
        yaxis={"title": f"{b} (percentile)", "range": [-2, 102]},
        height=480,
        clickmode="event+select",
        margin={"l": 20, "r": 20, "t": 50, "b": 40},
    )
    return fig


def clicked_case(event: object) -> str | None:
    """The case id a click on :func:`risk_scatter_figure` picked (its points carry the case id as
    ``customdata``), from a selection event as ``st.plotly_chart`` returns it; None without one."""
    try:
        points = event["selection"]["points"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        case = p.get("customdata") if isinstance(p, dict) else None
        if case:
            return str(case)
    return None
