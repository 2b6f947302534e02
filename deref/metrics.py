"""Survival metrics of out-of-fold predictions: Harrell's and Uno's C, time-dependent AUC, IBS
beside the Kaplan–Meier null IBS, D-calibration.

Every number comes from scikit-survival (``sksurv.metrics``); each public function validates
its inputs once, at its entry, through :mod:`deref.survival` (``survival_arrays`` /
``survival_frame``), and the private cores below them trust what they get. The module states
the conventions that scikit-survival leaves to the caller.

Conventions
-----------
- ``event`` is 1 for an observed event (death/progression) and 0 for a censored patient;
  a run's ``predictions.csv`` stores ``censorship`` (1 = censored), so ``event = 1 - censorship``.
- ``risk``: higher means worse (earlier event), as scikit-survival expects. lifelines'
  ``concordance_index`` expects the opposite sign: pass ``-risk`` there.
- IPCW (Uno's C, time-dependent AUC, Brier score) estimates the censoring distribution
  ``G(t) = P(C > t)`` by a reverse Kaplan–Meier on a *training* sample. ``G`` is only defined
  below the training sample's largest follow-up time (``horizon``): test patients followed
  past it are administratively censored at ``horizon`` before the call. For any evaluation
  time ``t < horizon`` this changes nothing (such a patient is event-free at ``t`` either way)
  and it keeps scikit-survival from raising on a test patient who outlived every training
  patient, which happens by chance in about one fold in five.
- Discrete-time survival curves: :func:`survival_at_times` (steps at the bin ends, today's
  default for the IBS) or, with ``interpolate=True``, :func:`deref.calibration.interpolate_survival`
  (a constant hazard inside each bin; its last bin, open-ended in a run, ends at the IPCW
  sample's largest follow-up time). D-calibration always uses the interpolated curve: on
  steps every ``S_i(t_i)`` is one of ``K + 1`` values and the histogram cannot be uniform.
- The null curve: every test patient gets the Kaplan–Meier curve of the fold's IPCW sample
  (its training patients when known), scored at the same times as the model
  (:func:`null_ibs`, :func:`ibs_versus_null`).

Nothing here turns an error into a number: an undefined metric raises
:class:`~deref.errors.DataError`; :func:`evaluate_predictions` records it as NaN together with
the reason, and re-raises with ``strict=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from deref.calibration import (
    bootstrap_mean_ci,
    brier_contributions,
    d_calibration,
    interpolate_survival,
    kaplan_meier_curve,
    survival_at_own_time,
)
from deref.errors import DataError
from deref.survival import SurvivalFrame, survival_arrays, survival_frame

logger = logging.getLogger(__name__)

__all__ = [
    "ConcordanceResult",
    "TimeDependentAUC",
    "BrierResult",
    "FoldMetrics",
    "MetricsReport",
    "harrell_c",
    "uno_c",
    "time_dependent_auc",
    "integrated_brier",
    "NullComparison",
    "null_ibs",
    "ibs_versus_null",
    "survival_at_times",
    "default_eval_times",
    "evaluate_predictions",
    "evaluate_run_predictions",
    "percentile",
    "calibration",
]


# --------------------------------------------------------------------------------------------
# result objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConcordanceResult:
    """A concordance index and the pair counts behind it.

    Attributes
    ----------
    cindex : float
        ``(concordant + 0.5 * tied_risk) / (concordant + discordant + tied_risk)``
        (IPCW-weighted for Uno's C).
    concordant, discordant, tied_risk, tied_time : int
        Comparable pairs by outcome; ``tied_time`` pairs are not comparable and not counted.
    n : int
        Patients evaluated (before any truncation at ``tau``).
    method : str
        ``"harrell"`` or ``"uno"``.
    tau : float or None
        Truncation time of Uno's C (only patients with ``time < tau`` count as events).
    """

    cindex: float
    concordant: int
    discordant: int
    tied_risk: int
    tied_time: int
    n: int
    method: str = "harrell"
    tau: float | None = None


@dataclass(frozen=True)
class TimeDependentAUC:
    """Cumulative/dynamic AUC at several times.

    Attributes
    ----------
    times : np.ndarray
        Evaluation times, shape ``(T,)``, sorted and unique.
    auc : np.ndarray
        AUC at each time, shape ``(T,)``.
    mean_auc : float
        scikit-survival's mean AUC over ``[times[0], times[-1]]``, weighted by the
        Kaplan–Meier estimate of the event distribution (equals ``auc[0]`` when ``T == 1``).
    """

    times: np.ndarray
    auc: np.ndarray
    mean_auc: float


@dataclass(frozen=True)
class NullComparison:
    """The model's IBS beside the Kaplan–Meier null IBS on the same patients and times.

    Attributes
    ----------
    ibs, ibs_null : float
        IBS of the model's curves and of the null curve (the IPCW sample's KM for everyone).
    difference : float
        ``ibs - ibs_null``; negative when the model's curves beat the null.
    ci_lower, ci_upper : float
        Percentile CI of ``difference`` from a paired bootstrap over test patients (each
        patient's model and null Brier terms resampled together; censoring weights fixed).
    level : float
        Confidence level of the CI.
    n_boot, seed : int
        Bootstrap replicates and seed (the same input gives the same CI).
    times : np.ndarray
        Evaluation times, shape ``(T,)``.
    curve : str
        ``"step"`` or ``"interpolated"``: which model curves were scored.
    """

    ibs: float
    ibs_null: float
    difference: float
    ci_lower: float
    ci_upper: float
    level: float
    n_boot: int
    seed: int
    times: np.ndarray
    curve: str


@dataclass(frozen=True)
class BrierResult:
    """Integrated Brier score of discrete-time survival predictions.

    Attributes
    ----------
    ibs : float
        ``trapz(brier, times) / (times[-1] - times[0])`` (scikit-survival's definition).
    times : np.ndarray
        Evaluation times, shape ``(T,)``.
    survival : np.ndarray
        The predicted ``S_i(t)`` that was scored, shape ``(n, T)``.
    """

    ibs: float
    times: np.ndarray
    survival: np.ndarray


@dataclass
class FoldMetrics:
    """All metrics of one fold (or of the pooled cohort).

    A metric that could not be estimated is NaN and ``errors[name]`` says why.

    Attributes
    ----------
    fold : int or str
        Fold index, or ``"pooled"``.
    n, events : int
        Patients and observed events.
    harrell, uno, td_auc, ibs : float
        Harrell's C, Uno's C, mean time-dependent AUC, integrated Brier score.
    ibs_null : float
        IBS of the null curve (the IPCW sample's Kaplan–Meier curve for every patient) on the
        same patients and times as ``ibs``.
    ibs_minus_null, ibs_minus_null_lower, ibs_minus_null_upper : float
        ``ibs - ibs_null`` (negative: the model's curves beat the null) and its 95% paired
        bootstrap CI over patients (seeded).
    d_calibration_p : float
        D-calibration p-value (Haider et al., 2020) of the interpolated curves, 10 bins.
    curve : str
        Which curves ``ibs`` scored: ``"step"`` or ``"interpolated"``.
    tau : float or None
        Truncation time used for Uno's C.
    ipcw_source : str
        Which sample estimated the censoring distribution.
    errors : dict[str, str]
        Reason per metric that is NaN.
    """

    fold: int | str
    n: int
    events: int
    harrell: float = float("nan")
    uno: float = float("nan")
    td_auc: float = float("nan")
    ibs: float = float("nan")
    ibs_null: float = float("nan")
    ibs_minus_null: float = float("nan")
    ibs_minus_null_lower: float = float("nan")
    ibs_minus_null_upper: float = float("nan")
    d_calibration_p: float = float("nan")
    curve: str = "step"
    tau: float | None = None
    ipcw_source: str = ""
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class MetricsReport:
    """Per-fold and overall metrics of a cross-validated run.

    Attributes
    ----------
    folds : list[FoldMetrics]
        One entry per fold, in fold order.
    pooled : FoldMetrics
        Metrics of all out-of-fold predictions pooled (risks of different fold models
        compared with each other: a looser figure than the per-fold mean).
    mean, std : dict[str, float]
        Mean and sample standard deviation (``ddof=1``) over folds of each of ``METRICS``
        (``harrell``, ``uno``, ``td_auc``, ``ibs``, ``ibs_null``, ``ibs_minus_null``,
        ``d_calibration_p``), ignoring NaN folds (``n_folds`` says how many counted).
    n_folds : dict[str, int]
        Number of folds with a finite value, per metric.
    """

    folds: list[FoldMetrics]
    pooled: FoldMetrics
    mean: dict[str, float]
    std: dict[str, float]
    n_folds: dict[str, int]

    METRICS: ClassVar[tuple[str, ...]] = (
        "harrell",
        "uno",
        "td_auc",
        "ibs",
        "ibs_null",
        "ibs_minus_null",
        "d_calibration_p",
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per fold, then ``pooled``, ``mean`` and ``std`` rows."""
        rows = []
        for fm in [*self.folds, self.pooled]:
            d = asdict(fm)
            d["errors"] = "; ".join(f"{k}: {v}" for k, v in fm.errors.items())
            rows.append(d)
        for name, stats in (("mean", self.mean), ("std", self.std)):
            rows.append({"fold": name, **stats})
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# sksurv calls (inputs validated by the public functions, at the edge)
# --------------------------------------------------------------------------------------------
def _structured(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    y = np.empty(time.shape[0], dtype=[("event", bool), ("time", float)])
    y["event"] = event
    y["time"] = time
    return y


def _administrative_censor(
    time: np.ndarray, event: np.ndarray, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Censor at ``horizon`` every patient followed up to or past it (see module notes)."""
    over = time >= horizon
    if over.any():
        logger.debug("censoring %d test patients at the training follow-up horizon %.4g", over.sum(), horizon)
    return np.where(over, horizon, time), np.where(over, False, event)


def _sksurv(name: str):
    """A scikit-survival metric, imported on first use (``sksurv`` costs ~1 s to import: the
    dashboard's first page needs only :func:`percentile`)."""
    import sksurv.metrics

    return getattr(sksurv.metrics, name)


def _sksurv_call(name: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as exc:  # sksurv reports undefined metrics (all censored, ...) this way
        raise DataError(f"{name} is not defined for this sample: {exc}") from exc


# --------------------------------------------------------------------------------------------
# concordance
# --------------------------------------------------------------------------------------------
def harrell_c(time, event, risk) -> ConcordanceResult:
    """Harrell's concordance index (higher ``risk`` = earlier event).

    Parameters
    ----------
    time : array-like, shape (n,)
        Follow-up times (event or censoring), non-negative.
    event : array-like, shape (n,)
        1 for an observed event, 0 for censored.
    risk : array-like, shape (n,)
        Predicted risk; higher means worse.

    Returns
    -------
    ConcordanceResult

    Raises
    ------
    DataError
        Malformed input, or no comparable pair (e.g. every patient censored).
    """
    return _harrell(*survival_arrays(time, event, risk))


def _harrell(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> ConcordanceResult:
    c, con, dis, tr, tt = _sksurv_call("Harrell's C", _sksurv("concordance_index_censored"), e, t, r)
    if con + dis + tr == 0:
        raise DataError("Harrell's C is not defined: no comparable pair of patients")
    return ConcordanceResult(float(c), int(con), int(dis), int(tr), int(tt), int(t.size), "harrell", None)


def uno_c(train_time, train_event, time, event, risk, tau: float | None = None) -> ConcordanceResult:
    """Uno's IPCW concordance index, truncated at ``tau``.

    Parameters
    ----------
    train_time, train_event : array-like, shape (m,)
        Training sample whose censoring distribution weights the test pairs.
    time, event, risk : array-like, shape (n,)
        Test sample; higher ``risk`` = worse.
    tau : float, optional
        Truncation time: only test events with ``time < tau`` count. Default: the training
        sample's largest follow-up time, the largest value for which ``G`` is defined
        everywhere below it (the reverse Kaplan–Meier can only reach 0 at that last time).
        A ``tau`` above it is lowered to it, with a warning.

    Returns
    -------
    ConcordanceResult
        With ``method="uno"`` and the ``tau`` used.

    Raises
    ------
    DataError
        Malformed input, or no event before ``tau``.
    """
    tt_, te_, _ = survival_arrays(train_time, train_event, what="train")
    return _uno(tt_, te_, *survival_arrays(time, event, risk), tau=tau)


def _uno(tt_, te_, t, e, r, *, tau: float | None = None) -> ConcordanceResult:
    horizon = float(tt_.max())
    if tau is None:
        tau = horizon
    elif tau > horizon:
        logger.warning("tau=%.4g exceeds the training follow-up %.4g; using %.4g", tau, horizon, horizon)
        tau = horizon
    if not (e & (t < tau)).any():
        raise DataError(f"Uno's C is not defined: no test event before tau={tau:.4g}")
    c, con, dis, tr, tt = _sksurv_call(
        "Uno's C", _sksurv("concordance_index_ipcw"), _structured(te_, tt_), _structured(e, t), r, tau=tau
    )
    return ConcordanceResult(float(c), int(con), int(dis), int(tr), int(tt), int(t.size), "uno", float(tau))


# --------------------------------------------------------------------------------------------
# evaluation times and discrete survival curves
# --------------------------------------------------------------------------------------------
def default_eval_times(time, event, *, horizon: float | None = None) -> np.ndarray:
    """Evaluation times for AUC / Brier: the 10th..90th percentiles of the event times.

    Kept only inside the valid range ``[min(time), min(max(time), horizon))`` that
    scikit-survival requires, and made unique.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        Test sample.
    horizon : float, optional
        Training follow-up limit (times must lie strictly below it).

    Returns
    -------
    np.ndarray
        Sorted unique times; may be empty or a single time on tiny samples.
    """
    t, e, _ = survival_arrays(time, event)
    return _eval_times(t, e, horizon)


def _eval_times(t: np.ndarray, e: np.ndarray, horizon: float | None) -> np.ndarray:
    if not e.any():
        return np.empty(0)
    cand = np.unique(np.percentile(t[e], np.arange(10, 100, 10)))
    upper = t.max() if horizon is None else min(t.max(), horizon)
    return cand[(cand >= t.min()) & (cand < upper)]


def survival_at_times(surv_at_bins, bin_edges, times) -> np.ndarray:
    """Evaluate discrete-time survival predictions at arbitrary times.

    Convention: the model's ``S_k`` (``surv_k``) is the probability of surviving *through*
    bin ``k``, i.e. past its upper edge ``e_{k+1}``. The continuous-time curve is the
    right-continuous step function that drops only at bin ends::

        S(t) = 1                   for t < e_1
        S(t) = S_k                 for e_{k+1} <= t < e_{k+2}   (k = 0 .. K-2)
        S(t) = S_{K-1}             for t >= e_K

    equivalently ``S(t) = prod(1 - h_j for bins j whose upper edge <= t)``. The lower outer
    edge ``e_0`` is not used. This never credits the model with a drop before the end of the
    bin it predicts it in (no interpolation is assumed).

    Parameters
    ----------
    surv_at_bins : array-like, shape (n, K)
        ``S_k`` per patient.
    bin_edges : array-like, shape (K + 1,) or (n, K + 1)
        Bin edges, shared or per patient (folds have their own bins).
    times : array-like, shape (T,)
        Times to evaluate at.

    Returns
    -------
    np.ndarray
        Shape ``(n, T)``.
    """
    s = np.asarray(surv_at_bins, dtype=float)
    if s.ndim != 2:
        raise DataError(f"surv_at_bins must be (n, K), got shape {s.shape}")
    edges = np.asarray(bin_edges, dtype=float)
    n, k = s.shape
    if edges.shape[-1] != k + 1:
        raise DataError(f"{k} survival columns need {k + 1} bin edges, got {edges.shape[-1]}")
    if np.isnan(s).any():
        raise DataError(f"surv_at_bins has {int(np.isnan(s).sum())} NaN values")
    t = np.atleast_1d(np.asarray(times, dtype=float))
    s1 = np.concatenate([np.ones((n, 1)), s], axis=1)  # s1[:, m] = survival after m bin ends
    if edges.ndim == 1:
        if np.any(np.diff(edges) <= 0):
            raise DataError(f"bin edges must increase strictly, got {edges.tolist()}")
        passed = np.searchsorted(edges[1:], t, side="right")  # bin ends <= t, per time
        return s1[:, passed]
    if edges.shape[0] != n:
        raise DataError(f"per-patient bin edges have {edges.shape[0]} rows for {n} patients")
    passed = (edges[:, 1:, None] <= t[None, None, :]).sum(axis=1)  # (n, T)
    return np.take_along_axis(s1, passed, axis=1)


# --------------------------------------------------------------------------------------------
# time-dependent metrics
# --------------------------------------------------------------------------------------------
def time_dependent_auc(train_time, train_event, time, event, risk, times=None) -> TimeDependentAUC:
    """Cumulative/dynamic AUC of a risk score at several times.

    Parameters
    ----------
    train_time, train_event : array-like, shape (m,)
        Training sample for the censoring distribution.
    time, event, risk : array-like, shape (n,)
        Test sample; ``risk`` is one score per patient (higher = worse), used at every time.
    times : array-like, optional
        Evaluation times; default :func:`default_eval_times`. Each must lie in
        ``[min(time), min(max(time), max(train_time)))``.

    Returns
    -------
    TimeDependentAUC

    Raises
    ------
    DataError
        No valid evaluation time, or scikit-survival finds the AUC undefined.
    """
    tt_, te_, _ = survival_arrays(train_time, train_event, what="train")
    return _td_auc(tt_, te_, *survival_arrays(time, event, risk), times)


def _td_auc(tt_, te_, t, e, r, times) -> TimeDependentAUC:
    horizon = float(tt_.max())
    if times is None:
        times = _eval_times(t, e, horizon)
    times = np.unique(np.asarray(times, dtype=float))
    if times.size == 0:
        raise DataError("time-dependent AUC: no evaluation time inside the follow-up (too few events?)")
    if times.max() >= horizon:
        raise DataError(f"time-dependent AUC: times must be below the training follow-up {horizon:.4g}")
    t2, e2 = _administrative_censor(t, e, horizon)
    auc, mean_auc = _sksurv_call(
        "time-dependent AUC",
        _sksurv("cumulative_dynamic_auc"),
        _structured(te_, tt_),
        _structured(e2, t2),
        r,
        times,
    )
    auc = np.atleast_1d(np.asarray(auc, dtype=float))
    if np.isnan(auc).any():
        raise DataError(
            f"time-dependent AUC undefined at times {times[np.isnan(auc)].tolist()} (no cases or controls)"
        )
    return TimeDependentAUC(np.asarray(times), auc, float(mean_auc))


def integrated_brier(
    train_time, train_event, time, event, surv_at_bins, bin_edges, times=None, *, interpolate: bool = False
) -> BrierResult:
    """Integrated Brier score of discrete-time survival predictions.

    Parameters
    ----------
    train_time, train_event : array-like, shape (m,)
        Training sample for the censoring distribution.
    time, event : array-like, shape (n,)
        Test sample.
    surv_at_bins : array-like, shape (n, K)
        Predicted survival at the end of each bin (``surv_k``).
    bin_edges : array-like, shape (K + 1,) or (n, K + 1)
        Bin edges; converted to a step curve as in :func:`survival_at_times`, or with
        ``interpolate=True`` to :func:`deref.calibration.interpolate_survival`'s curve (an
        ``inf`` last edge then ends at the training sample's largest time).
    times : array-like, optional
        At least two evaluation times; default :func:`default_eval_times`.
    interpolate : bool, default False
        Score the constant-hazard curves instead of the steps.

    Returns
    -------
    BrierResult

    Raises
    ------
    DataError
        Fewer than two valid times, or scikit-survival finds the score undefined.
    """
    tt_, te_, _ = survival_arrays(train_time, train_event, what="train")
    t, e, _ = survival_arrays(time, event)
    return _ibs(tt_, te_, t, e, surv_at_bins, bin_edges, times, interpolate=interpolate)


def _brier_times(tt_, t, e, times) -> np.ndarray:
    horizon = float(tt_.max())
    if times is None:
        times = _eval_times(t, e, horizon)
    times = np.unique(np.asarray(times, dtype=float))
    if times.size < 2:
        raise DataError(f"integrated Brier score needs at least two evaluation times, got {times.tolist()}")
    if times.max() >= horizon:
        raise DataError(f"integrated Brier score: times must be below the training follow-up {horizon:.4g}")
    return times


def _sksurv_ibs(tt_, te_, t, e, surv: np.ndarray, times: np.ndarray) -> float:
    if surv.shape[0] != t.size:
        raise DataError(f"surv_at_bins has {surv.shape[0]} rows for {t.size} patients")
    t2, e2 = _administrative_censor(t, e, float(tt_.max()))
    ibs = _sksurv_call(
        "integrated Brier score",
        _sksurv("integrated_brier_score"),
        _structured(te_, tt_),
        _structured(e2, t2),
        surv,
        times,
    )
    return float(ibs)


def _ibs(
    tt_, te_, t, e, surv_at_bins, bin_edges, times, *, interpolate: bool = False, horizon=None
) -> BrierResult:
    times = _brier_times(tt_, t, e, times)
    if interpolate:
        h = float(tt_.max()) if horizon is None else horizon
        surv = interpolate_survival(surv_at_bins, bin_edges, times, horizon=h)
    else:
        surv = survival_at_times(surv_at_bins, bin_edges, times)
    return BrierResult(_sksurv_ibs(tt_, te_, t, e, surv, times), times, surv)


def null_ibs(train_time, train_event, time, event, times=None) -> BrierResult:
    """IBS of the null curve: the training sample's Kaplan–Meier curve given to every test patient.

    Same censoring weights and default times as :func:`integrated_brier` on the same
    arguments, so the two are comparable. A model whose IBS is not below this one predicts
    survival curves no better than "everyone gets the cohort's curve".

    Returns
    -------
    BrierResult
        ``survival`` holds the KM curve, one identical row per test patient.
    """
    tt_, te_, _ = survival_arrays(train_time, train_event, what="train")
    t, e, _ = survival_arrays(time, event)
    times = _brier_times(tt_, t, e, times)
    surv = np.tile(kaplan_meier_curve(tt_, te_, times), (t.size, 1))
    return BrierResult(_sksurv_ibs(tt_, te_, t, e, surv, times), times, surv)


def _versus_null(
    tt_, te_, t, e, model: BrierResult, null_surv: np.ndarray, *, curve: str, n_boot: int, seed: int
) -> NullComparison:
    """The model's IBS against a null curve on the same patients and times, with a paired
    bootstrap CI of the difference (per-patient Brier terms, censoring weights fixed)."""
    times = model.times
    ibs_null = _sksurv_ibs(tt_, te_, t, e, null_surv, times)
    t2, e2 = _administrative_censor(t, e, float(tt_.max()))
    diff = brier_contributions(tt_, te_, t2, e2, model.survival, times) - brier_contributions(
        tt_, te_, t2, e2, null_surv, times
    )
    lo, hi = bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed, level=0.95)
    return NullComparison(model.ibs, ibs_null, model.ibs - ibs_null, lo, hi, 0.95, n_boot, seed, times, curve)


def ibs_versus_null(
    train_time,
    train_event,
    time,
    event,
    surv_at_bins,
    bin_edges,
    times=None,
    *,
    interpolate: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> NullComparison:
    """:func:`integrated_brier` beside :func:`null_ibs` on the same patients and times, and
    their difference ``model - null`` with a 95% paired bootstrap CI (seeded, deterministic).

    Parameters are those of :func:`integrated_brier`; ``n_boot`` bootstrap replicates of the
    test patients, drawn with ``numpy.random.default_rng(seed)``.

    Returns
    -------
    NullComparison
    """
    tt_, te_, _ = survival_arrays(train_time, train_event, what="train")
    t, e, _ = survival_arrays(time, event)
    model = _ibs(tt_, te_, t, e, surv_at_bins, bin_edges, times, interpolate=interpolate)
    null = np.tile(kaplan_meier_curve(tt_, te_, model.times), (t.size, 1))
    curve = "interpolated" if interpolate else "step"
    return _versus_null(tt_, te_, t, e, model, null, curve=curve, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------------------------
# a run's predictions
# --------------------------------------------------------------------------------------------
def _edges_for(bin_edges, fold) -> np.ndarray:
    if isinstance(bin_edges, Mapping):
        if fold not in bin_edges:
            raise DataError(f"no bin edges for fold {fold}; have folds {sorted(bin_edges)}")
        return np.asarray(bin_edges[fold], dtype=float)
    return np.asarray(bin_edges, dtype=float)


@dataclass(frozen=True)
class _Calib:
    """How a fold's curves are scored against the null: the null curve of each test row (its
    IPCW sample's Kaplan–Meier, a function of the times), each row's horizon (where an open
    last bin ends), whether the IBS scores interpolated curves, and the bootstrap."""

    null: Callable[[np.ndarray], np.ndarray]
    horizon: float | np.ndarray
    interpolate: bool = False
    n_boot: int = 2000
    seed: int = 0


def _curve_metrics(
    fm: FoldMetrics, attempt, test: SurvivalFrame, train_t, train_e, edges, cal: _Calib
) -> None:
    """IBS, null IBS, their difference with its CI, and D-calibration p into ``fm``."""
    t, e = test.time, test.event
    kind = "interpolated" if cal.interpolate else "step"
    fm.curve = kind
    dcal = attempt(
        "d_calibration",
        lambda: d_calibration(survival_at_own_time(test.surv, edges, t, horizon=cal.horizon), e),
    )
    if dcal is not None:
        fm.d_calibration_p = dcal.p_value
    res = attempt(
        "ibs",
        lambda: _ibs(
            train_t, train_e, t, e, test.surv, edges, None, interpolate=cal.interpolate, horizon=cal.horizon
        ),
    )
    if res is None:
        return
    fm.ibs = res.ibs
    model = res
    vs = attempt(
        "ibs_null",
        lambda: _versus_null(
            train_t, train_e, t, e, model, cal.null(model.times), curve=kind, n_boot=cal.n_boot, seed=cal.seed
        ),
    )
    if vs is not None:
        fm.ibs_null, fm.ibs_minus_null = vs.ibs_null, vs.difference
        fm.ibs_minus_null_lower, fm.ibs_minus_null_upper = vs.ci_lower, vs.ci_upper


def _fold_metrics(
    label, test: SurvivalFrame, train_t, train_e, edges, ipcw_source: str, strict: bool, cal: _Calib
) -> FoldMetrics:
    t, e, r = test.time, test.event, test.risk
    fm = FoldMetrics(fold=label, n=int(t.size), events=int(np.sum(e)), ipcw_source=ipcw_source)

    def attempt(name, fn):
        try:
            return fn()
        except DataError as exc:
            if strict:
                raise DataError(f"fold {label}: {exc}") from exc
            logger.warning("fold %s: %s not estimable: %s", label, name, exc)
            fm.errors[name] = str(exc)
            return None

    res = attempt("harrell", lambda: _harrell(t, e, r))
    if res is not None:
        fm.harrell = res.cindex
    res = attempt("uno", lambda: _uno(train_t, train_e, t, e, r))
    if res is not None:
        fm.uno, fm.tau = res.cindex, res.tau
    res = attempt("td_auc", lambda: _td_auc(train_t, train_e, t, e, r, None))
    if res is not None:
        fm.td_auc = res.mean_auc
    if test.surv_columns:
        _curve_metrics(fm, attempt, test, train_t, train_e, edges, cal)
    else:
        fm.errors["ibs"] = "no surv_* columns in the predictions"
    return fm


def _training_outcomes(train_df: pd.DataFrame, sf: SurvivalFrame) -> pd.DataFrame:
    """``fold, time, event`` of each fold's training patients: from ``train_df`` when it has
    ``time``, else looked up by ``case_id`` among the predictions."""
    missing = [c for c in ("fold", "case_id") if c not in train_df.columns]
    if missing:
        raise DataError(f"training risks: missing column(s) {missing}; has {list(train_df.columns)}")
    if "time" in train_df.columns:
        tr = survival_frame(train_df, what="training risks")
        return pd.DataFrame({"fold": tr.df["fold"], "time": tr.time, "event": tr.event})
    lookup = sf.df.drop_duplicates("case_id").set_index("case_id")
    ids = train_df["case_id"].astype(str)
    unknown = ~ids.isin(lookup.index)
    if unknown.any():
        raise DataError(
            f"training risks: {int(unknown.sum())} case ids have no survival time in the predictions "
            f"(e.g. {ids[unknown].unique()[:5].tolist()}); add time/censorship columns or pass train_df=None"
        )
    return pd.DataFrame(
        {
            "fold": pd.to_numeric(train_df["fold"]).to_numpy(),
            "time": ids.map(lookup["time"]).to_numpy(dtype=float),
            "event": ids.map(lookup["event"]).to_numpy().astype(bool),
        }
    )


def _ipcw_sample(train: pd.DataFrame | None, sf: SurvivalFrame, fold) -> tuple[np.ndarray, np.ndarray, str]:
    """``(time, event, source)`` of the sample that estimates fold ``fold``'s censoring."""
    if train is None:
        return sf.time, sf.event, "pooled cohort"
    sub = train[train["fold"] == fold]
    if sub.empty:
        raise DataError(f"training risks: no training patients for fold {fold}")
    return sub["time"].to_numpy(float), sub["event"].to_numpy(bool), f"training patients of fold {fold}"


def _over_folds(fold_results: list[FoldMetrics]) -> tuple[dict, dict, dict]:
    """Mean, sample std (``ddof=1``) and count of the finite per-fold values of each metric."""
    mean, std, count = {}, {}, {}
    for m in MetricsReport.METRICS:
        vals = np.array([getattr(fm, m) for fm in fold_results], dtype=float)
        vals = vals[np.isfinite(vals)]
        count[m] = int(vals.size)
        mean[m] = float(vals.mean()) if vals.size else float("nan")
        std[m] = float(vals.std(ddof=1)) if vals.size > 1 else float("nan")
    return mean, std, count


def _tiled_null(tt_: np.ndarray, te_: np.ndarray, n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda times: np.tile(kaplan_meier_curve(tt_, te_, times), (n, 1))


def _pooled_calib(train: pd.DataFrame | None, sf: SurvivalFrame, **opts) -> _Calib:
    """The pooled entry's null curves and horizons: each patient's from its own fold's IPCW
    sample (so the pooled null is the same null curve each fold was compared with)."""
    folds = sf.df["fold"].to_numpy()
    samples = {f: _ipcw_sample(train, sf, f)[:2] for f in np.unique(folds).tolist()}
    horizon = np.array([samples[f][0].max() for f in folds.tolist()], dtype=float)

    def null(times: np.ndarray) -> np.ndarray:
        out = np.empty((folds.size, np.size(times)))
        for f, (tt_, te_) in samples.items():
            out[folds == f] = kaplan_meier_curve(tt_, te_, times)
        return out

    return _Calib(null, horizon, **opts)


def evaluate_predictions(
    pred_df: pd.DataFrame | SurvivalFrame,
    train_df: pd.DataFrame | None,
    bin_edges: Sequence[float] | np.ndarray | Mapping[int, Sequence[float]],
    *,
    strict: bool = False,
    interpolate: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> MetricsReport:
    """Metrics of a run's out-of-fold predictions, per fold and overall.

    Parameters
    ----------
    pred_df : pandas.DataFrame or SurvivalFrame
        ``predictions.csv``: ``case_id, fold, time, censorship`` (or ``event``), ``risk`` and
        optionally ``surv_0 .. surv_{K-1}``; validated once by
        :func:`deref.survival.survival_frame`.
    train_df : pandas.DataFrame or None
        Training patients of each fold (``train_risks.csv``: ``fold, case_id`` [, ``risk``]),
        used as the IPCW sample of that fold and as the sample of its Kaplan–Meier null curve.
        Their ``time``/``censorship`` are taken from ``train_df`` when present, otherwise looked
        up by ``case_id`` in ``pred_df`` (in cross-validation every training patient is some
        other fold's test patient). When None, every fold's censoring distribution and null
        curve are estimated on the pooled cohort.
    bin_edges : array-like (K + 1,) or mapping fold -> array-like
        Time-bin edges (``RunInfo.bin_edges()``), for the IBS and D-calibration.
    strict : bool, default False
        Re-raise the first metric that cannot be estimated instead of recording NaN + reason.
    interpolate : bool, default False
        Score the IBS on the constant-hazard curves (:func:`deref.calibration.interpolate_survival`,
        the last bin ending at the fold's largest training time) instead of today's steps.
        D-calibration always uses the interpolated curves.
    n_boot, seed : int
        Paired bootstrap of ``ibs - ibs_null`` (seeded: the same input gives the same CI).

    Returns
    -------
    MetricsReport
        The pooled entry uses the pooled cohort as its own IPCW sample; its null curve is each
        patient's own fold's.

    Raises
    ------
    DataError
        Missing columns, NaN risks, negative times, unknown training case ids.
    """
    sf = survival_frame(pred_df, require_risk=True)
    if not sf.has_folds:
        raise DataError(f"predictions: no 'fold' column; has {list(sf.df.columns)}")
    train = None if train_df is None else _training_outcomes(train_df, sf)
    with_surv = bool(sf.surv_columns)
    opts = {"interpolate": interpolate, "n_boot": n_boot, "seed": seed}
    fold_results = []
    for f in sorted(sf.df["fold"].unique().tolist()):
        train_t, train_e, source = _ipcw_sample(train, sf, f)
        edges = _edges_for(bin_edges, f) if with_surv else None
        test = sf.subset(sf.df["fold"] == f)
        cal = _Calib(_tiled_null(train_t, train_e, len(test)), float(train_t.max()), **opts)
        fold_results.append(_fold_metrics(f, test, train_t, train_e, edges, source, strict, cal))
    pooled_edges = _row_edges(sf, bin_edges) if with_surv else None
    cal = _pooled_calib(train, sf, **opts)
    pooled = _fold_metrics("pooled", sf, sf.time, sf.event, pooled_edges, "pooled cohort", strict, cal)
    return MetricsReport(fold_results, pooled, *_over_folds(fold_results))


def evaluate_run_predictions(
    pred_df: pd.DataFrame, train_df: pd.DataFrame | None, bin_edges, *, interpolate: bool = True
) -> tuple[MetricsReport, str]:
    """:func:`evaluate_predictions` with each fold's training patients as the IPCW sample when
    ``train_df`` is given and their outcomes are known (a run's own out-of-fold table: every
    training patient is another fold's test patient), else the pooled cohort. Returns the
    report and a note saying which sample weighted the censoring (and why not the folds').
    The IBS scores the curves as the dashboard draws them (interpolated, constant hazard in
    each bin) unless ``interpolate=False`` (the step curves)."""
    if train_df is not None:
        try:
            return evaluate_predictions(
                pred_df, train_df, bin_edges, interpolate=interpolate
            ), "censoring weights from each fold's training patients"
        except DataError as exc:  # e.g. a run of some folds only: training outcomes not all known
            return evaluate_predictions(
                pred_df, None, bin_edges, interpolate=interpolate
            ), f"censoring weights from the pooled cohort ({exc})"
    return evaluate_predictions(
        pred_df, None, bin_edges, interpolate=interpolate
    ), "censoring weights from the pooled cohort"


# --------------------------------------------------------------------------------------------
# percentiles and calibration (the dashboard's Patient and Model pages)
# --------------------------------------------------------------------------------------------
def percentile(values, cohort_risks) -> np.ndarray:
    """Whole-number percentile of each value in the cohort: the share of the cohort at or below it.

    Rounded half up, so every page shows the same number; NaN cohort risks are ignored and a
    NaN value gives NaN.

    Parameters
    ----------
    values : array-like, shape (m,)
        Risks to place.
    cohort_risks : array-like, shape (n,)
        The cohort's risks.

    Returns
    -------
    np.ndarray
        Shape ``(m,)``, floats in ``[0, 100]`` (all NaN when the cohort has no finite risk).
    """
    cohort = np.asarray(cohort_risks, dtype=float)
    finite = np.sort(cohort[np.isfinite(cohort)])
    v = np.atleast_1d(np.asarray(values, dtype=float))
    if finite.size == 0:
        return np.full(v.shape, np.nan)
    share = np.searchsorted(finite, v, side="right") / finite.size * 100
    return np.where(np.isfinite(v), np.floor(share + 0.5), np.nan)


def _row_edges(sf: SurvivalFrame, bin_edges) -> np.ndarray:
    """Bin edges per patient ``(n, K + 1)`` (its fold's) or shared ``(K + 1,)``."""
    if isinstance(bin_edges, Mapping):
        if not sf.has_folds:
            raise DataError("predictions: per-fold bin edges need a 'fold' column")
        return np.stack([_edges_for(bin_edges, int(f)) for f in sf.df["fold"]])
    return np.asarray(bin_edges, dtype=float)


def _calibration_groups(frame: SurvivalFrame, n_groups: int) -> tuple[pd.Series, int]:
    """Quantile groups of ``-S(t)`` (``frame.risk``): ``n_groups`` when the predictions allow,
    else the largest smaller number whose quantile thresholds are distinct and whose groups
    are all non-empty (tied predictions), down to one group of everyone."""
    from deref.stratify import assign_groups, cohort_cutoffs

    for g in range(int(n_groups), 1, -1):
        probs = ",".join(f"{q:.6g}" for q in np.arange(1, g) / g)
        try:
            groups = assign_groups(frame, cohort_cutoffs(frame, f"quantiles:{probs}"))
        except DataError:  # thresholds not distinct, or too few patients for g groups
            continue
        if groups.value_counts().min() > 0:
            return groups, g
    cat = pd.Categorical(["all"] * len(frame), categories=["all"], ordered=True)
    return pd.Series(cat, name="risk_group"), 1


def _row_horizons(sf: SurvivalFrame, horizons) -> np.ndarray | None:
    """Each row's horizon (its fold's largest training time), or None when one is unknown."""
    if horizons is None:
        return None
    if not isinstance(horizons, Mapping):
        return np.full(len(sf), float(horizons))
    if not sf.has_folds:
        return None
    folds = sf.df["fold"].tolist()
    if any(f not in horizons for f in folds):
        return None
    return np.array([float(horizons[f]) for f in folds])


def calibration(pred, bin_edges, t: float, n_groups: int = 4, *, horizons=None) -> pd.DataFrame:
    """Predicted vs observed (Kaplan–Meier) survival at time ``t`` in quantile groups of S(t).

    Each patient's predicted ``S(t)`` comes from its fold's curve: interpolated inside the bins
    (:func:`deref.calibration.interpolate_survival`) when ``horizons`` gives every row's fold
    its horizon (``RunInfo.horizons()``), else the step curve of :func:`survival_at_times`;
    patients are cut into ``n_groups`` groups at the cohort's quantiles of ``S(t)`` (``Q1`` /
    ``G1``: the highest predicted survival, as a risk ``-S(t)`` cut by
    :func:`deref.stratify.cohort_cutoffs`), and each group's observed survival at ``t`` is its
    Kaplan–Meier estimate with the pointwise 95% CI.

    Tied predictions (a saturated model gives many patients the same ``S(t)``) may not make
    ``n_groups`` distinct, non-empty quantile groups: then the largest number of groups that
    works is used (down to one group, ``"all"``), and the frame says so in its ``attrs``.

    Parameters
    ----------
    pred : pandas.DataFrame or SurvivalFrame
        Predictions with ``time``, ``event``/``censorship``, ``fold`` (for per-fold edges) and
        ``surv_0 .. surv_{K-1}``.
    bin_edges : array-like (K + 1,) or mapping fold -> array-like
        ``RunInfo.bin_edges()`` (it holds ``MEAN_OF_FOLDS`` for mean-of-folds predictions).
    t : float
        The time to compare at.
    n_groups : int, default 4
        Number of quantile groups asked for.
    horizons : float or mapping fold -> float, optional
        Where each fold's open last bin ends (its largest training time); without it (or with
        a fold missing) the step curves are used, and ``attrs["curve"]`` says which.

    Returns
    -------
    pandas.DataFrame
        One row per group, low -> high risk: ``group, n, events, predicted`` (mean predicted
        S(t)), ``observed, observed_lower, observed_upper`` (KM at ``t`` and its CI).
        ``attrs``: ``n_groups_requested``, ``n_groups`` (used) and ``note`` (``""`` when
        ``n_groups`` groups were made, else why fewer).

    Raises
    ------
    DataError
        Malformed predictions, no survival columns, or bin edges missing for a fold.
    """
    from deref.stratify import kaplan_meier

    sf = survival_frame(pred, require_surv=True)
    edges, h = _row_edges(sf, bin_edges), _row_horizons(sf, horizons)
    if h is None:
        s_t = survival_at_times(sf.surv, edges, [t]).reshape(-1)
    else:
        s_t = interpolate_survival(sf.surv, edges, [t], horizon=h).reshape(-1)
    frame = survival_frame(sf.df[["case_id", "time", "event"]].assign(risk=-s_t))
    groups, used = _calibration_groups(frame, n_groups)
    rows = []
    for name in groups.cat.categories:
        sel = (groups == name).to_numpy()
        g = kaplan_meier(sf.time[sel], sf.event[sel], name=str(name))
        band = g.km[g.km["time"] <= t].iloc[-1]
        rows.append(
            {
                "group": g.name,
                "n": g.n,
                "events": g.events,
                "predicted": float(s_t[sel].mean()),
                "observed": float(g.survival_at([t])[0]),
                "observed_lower": float(band["ci_lower"]),
                "observed_upper": float(band["ci_upper"]),
            }
        )
    out = pd.DataFrame(rows)
    out.attrs["n_groups_requested"] = int(n_groups)
    out.attrs["n_groups"] = int(used)
    out.attrs["curve"] = "step" if h is None else "interpolated"
    out.attrs["note"] = (
        ""
        if used == n_groups
        else f"{used} group{'s' if used > 1 else ''} instead of {n_groups}: the predicted S({t:g}) has "
        f"{np.unique(s_t).size} distinct value(s) among {s_t.size} patients (tied predictions)"
    )
    return out
