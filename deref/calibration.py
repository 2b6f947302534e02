"""Survival curves between the bin edges, and how well they are calibrated.

A discrete-time model predicts ``S_k``, the probability of surviving *through* bin ``k``
(``surv_k``), for ``K`` bins with edges ``e_0 < e_1 < ... < e_K``. This module turns those
``K`` numbers into a curve and measures it:

- :func:`interpolate_survival`: ``S(t)`` with a constant hazard inside each bin (pycox's
  ``interpolate(..., scheme="const_hazard")``): ``log S`` is linear between the edges, so
  the curve equals ``S_k`` at ``e_{k+1}``, falls monotonically, and is 1 up to ``e_0``.
- :func:`kaplan_meier_curve`: the Kaplan–Meier curve of a sample at given times (the
  "null" curve: the training folds' KM given to every test patient).
- :func:`brier_contributions`: each test patient's share of the integrated Brier score
  (the IBS is their mean), for paired bootstraps of IBS differences.
- :func:`d_calibration`: D-calibration (Haider et al., 2020): are the predicted
  ``S_i(t_i)`` uniform on [0, 1]?

Layer 1, beside :mod:`deref.metrics` (which imports this module, never the other way round).
numpy only at import; scipy (chi-square) and scikit-survival (censoring weights) load on
first use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deref.errors import DataError

__all__ = [
    "DCalibration",
    "interpolate_survival",
    "survival_at_own_time",
    "kaplan_meier_curve",
    "brier_contributions",
    "d_calibration",
    "bootstrap_mean_ci",
]

_MONOTONE_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# interpolated curves
# --------------------------------------------------------------------------------------------
def _curve_inputs(surv, bin_edges, horizon) -> tuple[np.ndarray, np.ndarray]:
    """``(s1 (n, K+1), edges (n, K+1))``: S at every edge (``s1[:, 0] = 1``) and finite,
    strictly increasing edges per row (an infinite last edge replaced by ``horizon``)."""
    s = np.asarray(surv, dtype=float)
    if s.ndim != 2:
        raise DataError(f"survival must be (n, K), got shape {s.shape}")
    n, k = s.shape
    if np.isnan(s).any():
        raise DataError(f"survival has {int(np.isnan(s).sum())} NaN values")
    edges = np.asarray(bin_edges, dtype=float)
    if edges.shape[-1] != k + 1:
        raise DataError(f"{k} survival columns need {k + 1} bin edges, got {edges.shape[-1]}")
    if edges.ndim == 1:
        edges = np.broadcast_to(edges, (n, k + 1))
    elif edges.shape[0] != n:
        raise DataError(f"per-patient bin edges have {edges.shape[0]} rows for {n} patients")
    edges = edges.copy()
    last_inf = np.isposinf(edges[:, -1])
    if last_inf.any():
        if horizon is None:
            raise DataError("the last bin edge is inf: pass horizon= (the largest training time)")
        h = np.broadcast_to(np.asarray(horizon, dtype=float), (n,))
        edges[last_inf, -1] = h[last_inf]
    if not np.isfinite(edges).all() or np.any(np.diff(edges, axis=1) <= 0):
        bad = np.flatnonzero(
            ~np.all(np.isfinite(edges), axis=1) | np.any(np.diff(edges, axis=1) <= 0, axis=1)
        )
        raise DataError(
            f"bin edges must be finite and increase strictly (is the horizon above the last finite edge?); "
            f"row {int(bad[0])}: {edges[bad[0]].tolist()}"
        )
    s1 = np.concatenate([np.ones((n, 1)), s], axis=1)
    if np.any(np.diff(s1, axis=1) > _MONOTONE_TOL) or s.min(initial=0.0) < -_MONOTONE_TOL:
        raise DataError("survival must lie in [0, 1] and not increase from bin to bin")
    return np.clip(s1, 0.0, 1.0), edges


def _interpolate(s1: np.ndarray, edges: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Constant-hazard curve of each row ``i`` at times ``t[i, :]`` (``t`` is (n, T))."""
    k = s1.shape[1] - 1
    # number of edges at or below t, minus one: the bin t lies in (-1 before e_0, K from e_K on)
    j = (edges[:, :, None] <= t[:, None, :]).sum(axis=1) - 1
    jb = np.clip(j, 0, k - 1)
    lo = np.take_along_axis(edges, jb, axis=1)
    hi = np.take_along_axis(edges, jb + 1, axis=1)
    s_lo = np.take_along_axis(s1, jb, axis=1)
    s_hi = np.take_along_axis(s1, jb + 1, axis=1)
    frac = np.clip((t - lo) / (hi - lo), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(s_lo > 0, np.minimum(s_hi / np.where(s_lo > 0, s_lo, 1.0), 1.0), 0.0)
    inside = s_lo * np.power(ratio, frac)  # 0 ** 0 = 1: S(e_j) = s_lo even when the bin ends at 0
    out = np.where(j < 0, 1.0, inside)
    return np.where(j >= k, s1[:, -1:], out)


def interpolate_survival(surv, bin_edges, times, *, horizon=None) -> np.ndarray:
    """Survival at any time, with a constant hazard inside each discrete bin.

    Inside bin ``k`` (``e_k <= t <= e_{k+1}``) the curve is
    ``S(t) = S_{k-1} * (S_k / S_{k-1}) ** ((t - e_k) / (e_{k+1} - e_k))`` with ``S_{-1} = 1``:
    the hazard rate is constant in the bin (``log S`` linear), as pycox's
    ``interpolate(scheme="const_hazard")``. So ``S(e_{k+1}) = S_k`` exactly (the step curve
    of :func:`deref.metrics.survival_at_times` at the edges), ``S(t) = 1`` for ``t <= e_0``
    (``S(0) = 1``), the curve never increases, and after the last edge it stays at
    ``S_{K-1}``.

    The last bin's upper edge is ``+inf`` in a run (the bins are stretched to cover every
    time). A constant hazard over an infinite bin is undefined, so the last bin ends at
    ``horizon``: the caller passes the largest training follow-up time (the largest time
    the model saw; IPCW metrics are not defined beyond it either). ``S_{K-1}`` is then
    read as survival to that time, and beyond it the curve stays flat.

    Parameters
    ----------
    surv : array-like, shape (n, K)
        ``S_k`` per patient, non-increasing along ``k``, in [0, 1].
    bin_edges : array-like, shape (K + 1,) or (n, K + 1)
        Bin edges, shared or per patient (each fold has its own bins).
    times : array-like, shape (T,)
        Times to evaluate at.
    horizon : float or array-like (n,), optional
        End of the last bin when its edge is ``inf`` (required then); per patient allowed.

    Returns
    -------
    np.ndarray
        Shape ``(n, T)``.

    Raises
    ------
    DataError
        Malformed shapes, NaN, an increasing curve, an ``inf`` last edge without horizon,
        or a horizon not above the last finite edge.
    """
    s1, edges = _curve_inputs(surv, bin_edges, horizon)
    t = np.atleast_1d(np.asarray(times, dtype=float)).ravel()
    return _interpolate(s1, edges, np.broadcast_to(t, (s1.shape[0], t.size)))


def survival_at_own_time(surv, bin_edges, time, *, horizon=None) -> np.ndarray:
    """``S_i(t_i)``: each patient's interpolated curve (:func:`interpolate_survival`) at its
    own follow-up time ``t_i``, shape ``(n,)`` (the input of :func:`d_calibration`)."""
    s1, edges = _curve_inputs(surv, bin_edges, horizon)
    t = np.asarray(time, dtype=float).reshape(-1, 1)
    if t.shape[0] != s1.shape[0]:
        raise DataError(f"{t.shape[0]} times for {s1.shape[0]} survival curves")
    return _interpolate(s1, edges, t)[:, 0]


# --------------------------------------------------------------------------------------------
# the Kaplan–Meier null curve and the Brier score per patient
# --------------------------------------------------------------------------------------------
def kaplan_meier_curve(time, event, times) -> np.ndarray:
    """Kaplan–Meier estimate ``prod_{u <= t} (1 - d_u / n_u)`` of a sample at ``times``.

    Right-continuous (a drop at ``u`` counts at ``t = u``); ``n_u`` counts patients with
    ``time >= u`` (a patient censored at ``u`` is still at risk at ``u``).

    Returns
    -------
    np.ndarray
        Shape ``(T,)``.
    """
    t = np.asarray(time, dtype=float).ravel()
    e = np.asarray(event).astype(bool).ravel()
    if t.shape != e.shape or t.size == 0:
        raise DataError(f"Kaplan–Meier: {t.size} times and {e.size} events")
    u = np.unique(t[e])
    d = np.array([np.sum(e & (t == x)) for x in u], dtype=float)
    at_risk = np.array([np.sum(t >= x) for x in u], dtype=float)
    steps = np.cumprod(1.0 - d / at_risk)
    q = np.atleast_1d(np.asarray(times, dtype=float)).ravel()
    idx = np.searchsorted(u, q, side="right")  # event times <= t
    return np.concatenate([[1.0], steps])[idx]


def brier_contributions(train_time, train_event, time, event, surv_at_times, times) -> np.ndarray:
    """Each test patient's term of the integrated Brier score (their mean is the IBS).

    ``BS(t) = mean_i w_i(t)`` with ``w_i(t) = S_i(t)^2 / G(t_i)`` for an event by ``t``,
    ``(1 - S_i(t))^2 / G(t)`` for a patient still event-free after ``t``, else 0; ``G`` is the
    censoring survival of the training sample (scikit-survival's reverse Kaplan–Meier,
    ``CensoringDistributionEstimator``, with a zero ``G`` treated as an infinite weight
    denominator as scikit-survival does). The IBS is the trapezoid integral over ``times``
    divided by ``times[-1] - times[0]``; this returns that integral per patient, so
    ``contributions.mean()`` equals ``sksurv.metrics.integrated_brier_score``.

    The caller validates and administratively censors the test sample (see
    :mod:`deref.metrics`).

    Returns
    -------
    np.ndarray
        Shape ``(n,)``.
    """
    from sksurv.nonparametric import CensoringDistributionEstimator

    tt_ = np.asarray(train_time, dtype=float)
    te_ = np.asarray(train_event).astype(bool)
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    grid = np.asarray(times, dtype=float)
    s = np.asarray(surv_at_times, dtype=float)
    if grid.size < 2 or s.shape != (t.size, grid.size):
        raise DataError(f"Brier terms: survival {s.shape} for {t.size} patients and {grid.size} times (>= 2)")
    y = np.empty(tt_.size, dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = te_, tt_
    cens = CensoringDistributionEstimator().fit(y)
    g_t = cens.predict_proba(grid)
    g_y = cens.predict_proba(t)
    g_t[g_t == 0] = np.inf
    g_y[g_y == 0] = np.inf
    case = (t[:, None] <= grid[None, :]) & e[:, None]
    control = t[:, None] > grid[None, :]
    w = np.square(s) * case / g_y[:, None] + np.square(1.0 - s) * control / g_t[None, :]
    return np.trapezoid(w, grid, axis=1) / (grid[-1] - grid[0])


def bootstrap_mean_ci(
    values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (patients resampled with replacement;
    seeded, so the same input gives the same interval). For a paired difference, pass the
    per-patient differences."""
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise DataError("bootstrap: no values")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(axis=1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# D-calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DCalibration:
    """D-calibration (Haider et al., 2020, "Effective ways to build and evaluate individual
    survival distributions", JMLR 21).

    Attributes
    ----------
    histogram : np.ndarray
        Shape ``(n_bins,)``: patients per probability bin, low -> high (bin ``b`` is
        ``[b / n_bins, (b + 1) / n_bins)``, the last one closed); censored patients count
        fractionally; sums to ``n``.
    statistic : float
        Pearson's chi-square of ``histogram`` against the uniform ``n / n_bins`` per bin.
    p_value : float
        ``P(chi2_{n_bins - 1} >= statistic)``. A small p (< 0.05) says the curves are not
        D-calibrated.
    n_bins, n, events : int
    """

    histogram: np.ndarray
    statistic: float
    p_value: float
    n_bins: int
    n: int
    events: int


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)


def d_calibration(surv_at_own_time, event, n_bins: int = 10) -> DCalibration:
    """D-calibration: is ``S_i(t_i)`` uniform on [0, 1] over the patients?

    A patient with an event at ``t_i`` adds 1 to the bin holding ``S_i(t_i)``. A patient
    censored at ``c_i`` with ``s = S_i(c_i)`` only tells us ``S_i(T_i) < s``; as in the paper,
    its unit is spread over the bins below ``s`` in proportion to their share of ``[0, s]``:
    the bin ``[lo, hi)`` holding ``s`` gets ``(s - lo) / s``, every bin entirely below it gets
    ``(1 / n_bins) / s`` (so ``s = 1`` spreads it evenly), and ``s = 0`` puts it in the
    lowest bin.

    Parameters
    ----------
    surv_at_own_time : array-like, shape (n,)
        ``S_i(t_i)`` at each patient's own event or censoring time
        (:func:`survival_at_own_time`).
    event : array-like, shape (n,)
        1 for an event, 0 for censored.
    n_bins : int, default 10
        Number of equal probability bins (the paper's 10).

    Returns
    -------
    DCalibration

    Raises
    ------
    DataError
        Malformed input, probabilities outside [0, 1], fewer than 2 bins or no patients.
    """
    from scipy.stats import chi2

    p = np.asarray(surv_at_own_time, dtype=float).ravel()
    e = np.asarray(event).astype(bool).ravel()
    if p.shape != e.shape or p.size == 0:
        raise DataError(f"D-calibration: {p.size} probabilities and {e.size} events")
    if n_bins < 2:
        raise DataError(f"D-calibration needs at least 2 bins, got {n_bins}")
    if not np.all(np.isfinite(p)) or p.min() < -_MONOTONE_TOL or p.max() > 1 + _MONOTONE_TOL:
        raise DataError("D-calibration: survival probabilities must be finite and in [0, 1]")
    p = np.clip(p, 0.0, 1.0)
    hist = np.bincount(_bin_of(p[e], n_bins), minlength=n_bins).astype(float)
    for s in p[~e]:
        b = int(_bin_of(np.array([s]), n_bins)[0])
        if s <= 0:
            hist[0] += 1.0
            continue
        hist[b] += (s - b / n_bins) / s
        hist[:b] += (1.0 / n_bins) / s
    expected = p.size / n_bins
    stat = float(np.sum((hist - expected) ** 2) / expected)
    return DCalibration(hist, stat, float(chi2.sf(stat, n_bins - 1)), int(n_bins), int(p.size), int(e.sum()))
