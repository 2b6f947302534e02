"""Figures of the dashboard's Patient page (plotly): the predicted survival curve with its
reorganization band, the hazard per time bin, the MoE gate weights, the decoupled features and
their contributions to the risk.

Every builder takes plain arrays (one patient's model output) and returns a ``go.Figure``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from deref.calibration import interpolate_survival
from deref.figures.style import OKABE_ITO, css_rgba, house_template

__all__ = [
    "PatientCurve",
    "survival_time_grid",
    "time_bin_labels",
    "patient_survival_figure",
    "patient_hazard_figure",
    "gate_weights_bar",
    "decoupled_features_heatmap",
    "signed_colors",
    "feature_contribution_bar",
]


@dataclass(frozen=True)
class PatientCurve:
    """One patient's predicted survival as the Patient page draws it.

    Parameters
    ----------
    label
        Legend text (the case id, possibly with the "what if" input).
    survival
        ``(K,)`` S_k: the probability of surviving through time bin ``k``.
    bin_edges
        ``(K + 1,)`` time-bin edges of the fold model that scored the patient (the last may be inf).
    color, dash
        Line colour (``#rrggbb``) and plotly dash style.
    hazards
        ``(K,)`` hazard per bin (for :func:`patient_hazard_figure`), or None.
    survival_per_s
        ``(S, K)`` survival for each reorganization segment count (the band), or None.
    segments
        The ``S`` segment counts behind ``survival_per_s``.
    horizon
        The fold's largest training follow-up time: with it the curve is drawn interpolated
        (constant hazard inside each bin, :func:`deref.calibration.interpolate_survival`, the
        open last bin ending there); without it (runs that did not record it) as steps.
    """

    label: str
    survival: np.ndarray
    bin_edges: Sequence[float]
    color: str = OKABE_ITO["vermillion"]
    dash: str = "solid"
    hazards: np.ndarray | None = None
    survival_per_s: np.ndarray | None = None
    segments: tuple[int, ...] = ()
    horizon: float | None = None

    def at(self, times) -> np.ndarray:
        """``S(t)`` at ``times`` as the figure draws it (interpolated, or steps without a horizon)."""
        return _survival_at(
            self.survival, self.bin_edges, np.atleast_1d(np.asarray(times, float)), self.horizon
        )[0]

    @property
    def has_band(self) -> bool:
        return self.survival_per_s is not None and len(self.segments) > 1


def survival_time_grid(bin_edges: Sequence[float], t_max: float, n: int = 240) -> np.ndarray:
    """``n`` times from 0 to ``t_max`` plus every finite bin edge up to ``t_max`` (sorted, unique),
    so the step function's drops land exactly on the edges."""
    finite = [e for e in bin_edges if np.isfinite(e) and e <= t_max]
    return np.unique(np.concatenate([np.linspace(0, t_max, n), finite]))


def time_bin_labels(edges: Sequence[float]) -> list[str]:
    """``"a–b"`` per time bin (one decimal), ``"≥ a"`` for the open last bin."""
    return [f"{a:.1f}–{b:.1f}" if np.isfinite(b) else f"≥ {a:.1f}" for a, b in zip(edges[:-1], edges[1:])]


def _survival_at(
    survival: np.ndarray, bin_edges: Sequence[float], grid: np.ndarray, horizon: float | None = None
) -> np.ndarray:
    if horizon is not None:
        return interpolate_survival(np.atleast_2d(survival), bin_edges, grid, horizon=horizon)
    # deref.metrics loads scikit-survival (seconds): only when a step curve is drawn
    from deref.metrics import survival_at_times

    return survival_at_times(np.atleast_2d(survival), bin_edges, grid)


def _shape(curve: PatientCurve) -> str:
    return "linear" if curve.horizon is not None else "hv"


def _band_traces(curve: PatientCurve, grid: np.ndarray) -> list[go.Scatter]:
    per_s = _survival_at(curve.survival_per_s, curve.bin_edges, grid, curve.horizon)  # (S, T)
    upper = go.Scatter(
        x=grid,
        y=per_s.max(axis=0),
        mode="lines",
        line={"width": 0, "shape": _shape(curve), "color": curve.color},
        showlegend=False,
        hoverinfo="skip",
    )
    lower = go.Scatter(
        x=grid,
        y=per_s.min(axis=0),
        mode="lines",
        line={"width": 0, "shape": _shape(curve), "color": curve.color},
        fill="tonexty",
        fillcolor=css_rgba(curve.color, 0.2),
        name=f"{curve.label}: range over segment counts s ∈ {{{', '.join(map(str, curve.segments))}}}",
        hoverinfo="skip",
    )
    return [upper, lower]


def patient_survival_figure(
    curves: Sequence[PatientCurve], t_max: float, unit: str, *, band: bool = True
) -> go.Figure:
    """Predicted survival S(t) of one or more patients, with the min–max band over the segment
    counts and the first curve's bin edges dotted: interpolated inside each bin (constant
    hazard) when the curve has a horizon, else a step function over the fold's bins.

    Parameters
    ----------
    curves
        The curves, drawn in order; the first one's bin edges are marked.
    t_max
        Right end of the time axis.
    unit
        Time unit for the axis title (``months``).
    band
        Draw each curve's band when it has one.
    """
    fig = go.Figure()
    for c in curves:
        grid = survival_time_grid(c.bin_edges, t_max)
        if band and c.has_band:
            fig.add_traces(_band_traces(c, grid))
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=_survival_at(c.survival, c.bin_edges, grid, c.horizon)[0],
                mode="lines",
                name=c.label,
                line={"shape": _shape(c), "color": c.color, "width": 2.4, "dash": c.dash},
                hovertemplate="t=%{x:.1f}<br>S=%{y:.3f}<extra>" + c.label + "</extra>",
            )
        )
    for e in curves[0].bin_edges[1:] if curves else ():
        if np.isfinite(e) and e <= t_max:
            fig.add_vline(x=e, line={"color": "#bbbbbb", "width": 1, "dash": "dot"})
    fig.update_layout(
        template=house_template(fig),
        height=420,
        margin={"l": 60, "r": 10, "t": 50, "b": 50},
        title="Predicted survival (dotted lines: the model's time-bin edges)",
        xaxis_title=f"time ({unit})",
        yaxis_title="survival probability",
        yaxis_range=[0, 1.03],
        legend={"orientation": "h", "y": -0.22},
    )
    return fig


def patient_hazard_figure(curves: Sequence[PatientCurve], unit: str) -> go.Figure:
    """Grouped bars: each curve's hazard per time bin (P(event in bin | alive at its start))."""
    fig = go.Figure()
    for c in curves:
        fig.add_trace(
            go.Bar(
                x=time_bin_labels(c.bin_edges),
                y=np.asarray(c.hazards, dtype=float),
                name=c.label,
                marker_color=c.color,
                hovertemplate="%{x}: h=%{y:.3f}<extra>" + c.label + "</extra>",
            )
        )
    fig.update_layout(
        template=house_template(fig),
        height=320,
        barmode="group",
        margin={"l": 60, "r": 10, "t": 50, "b": 50},
        title="Hazard per time bin (P(event in bin | alive at its start))",
        xaxis_title=f"time bin ({unit})",
        yaxis_title="hazard",
        yaxis_range=[0, 1],
        legend={"orientation": "h", "y": -0.3},
    )
    return fig


def gate_weights_bar(gate: np.ndarray, labels: Sequence[str]) -> go.Figure:
    """Horizontal bars of one patient's ``(N,)`` MoE gate weights, one per expert ``labels[i]``."""
    g = np.asarray(gate, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=g,
            y=list(labels),
            orientation="h",
            marker_color=OKABE_ITO["bluish_green"],
            text=[f"{x:.2f}" for x in g],
            textposition="outside",
        )
    )
    fig.update_layout(
        template=house_template(fig),
        height=300,
        margin={"l": 140, "r": 30, "t": 50, "b": 40},
        title="Gate weights (sum to 1): each expert's share of the fusion",
        xaxis_range=[0, max(1.0, float(g.max()) * 1.15) if g.size else 1.0],
        yaxis={"autorange": "reversed"},
    )
    return fig


def decoupled_features_heatmap(features: np.ndarray, feature_names: Sequence[str]) -> go.Figure:
    """Heatmap of one patient's ``(F, C2)`` decoupled features (rows ``feature_names``), centred at 0."""
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(features, dtype=float),
            y=list(feature_names),
            colorscale="RdBu_r",
            zmid=0,
            colorbar={"title": "value"},
        )
    )
    fig.update_layout(
        template=house_template(fig),
        height=300,
        margin={"l": 140, "r": 10, "t": 50, "b": 40},
        title="The four decoupled features (C2 channels each)",
        xaxis_title="channel",
    )
    return fig


def signed_colors(values: np.ndarray) -> list[str]:
    """Vermillion for a positive value (raises the risk), blue otherwise."""
    return [OKABE_ITO["vermillion"] if x > 0 else OKABE_ITO["blue"] for x in np.asarray(values, float)]


def feature_contribution_bar(values: np.ndarray, names: Sequence[str]) -> go.Figure:
    """Horizontal bars of each decoupled feature's ``(F,)`` contribution to the risk, signed
    (:func:`signed_colors`), on an axis symmetric about 0."""
    v = np.asarray(values, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=v,
            y=list(names),
            orientation="h",
            text=[f"{x:+.3f}" for x in v],
            textposition="outside",
            marker_color=signed_colors(v),
        )
    )
    span = float(np.abs(v).max()) * 1.3 if v.size else 1.0
    fig.update_layout(
        template=house_template(fig),
        height=300,
        margin={"l": 140, "r": 30, "t": 50, "b": 40},
        title="Each feature's contribution to the risk (+ raises it)",
        xaxis_range=[-span, span],
        yaxis={"autorange": "reversed"},
    )
    return fig
