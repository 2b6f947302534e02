"""Runs side by side: per-run metrics over folds and paired differences with honest uncertainty.

:func:`compare_runs` loads runs (``RunDir``), checks that they were trained on the same patients
with the same fold for every patient (:func:`pair_runs`; :class:`PairingError` otherwise), scores
each run's held-out predictions (``predictions.csv``: the kept model of each outer fold, the
honest headline) with :func:`deref.metrics.evaluate_run_predictions`, and compares a reference
run with every other one:

- ``delta_c``: the pooled out-of-fold Harrell C of the reference minus the other's (all
  patients' held-out predictions together);
- its **paired bootstrap** percentile CI over patients: every resample draws patients with
  replacement once and scores *both* runs on it (:func:`bootstrap_weights`; seed recorded);
- the share of resamples in which the reference wins, a two-sided bootstrap p-value
  (:func:`bootstrap_p_value`) and Holm-corrected p-values over the pairs (:func:`holm`);
- the fold-wise differences of Harrell's C.

The resampled concordance is vectorized (:func:`resampled_harrell`): a resample is a
multiplicity vector ``w`` over patients, and Harrell's C of the resample is the ratio of
weighted pair counts ``w^T S w / w^T A w``, where ``A`` marks comparable pairs and ``S`` scores
them (1 concordant, 1/2 tied risk); both are built once per block of patients and every
resample is counted by one matrix product. The counts are integers held exactly in float64, so
a resample's C is bit-identical to :func:`deref.metrics.harrell_c` on the resampled arrays.

Torch-free and Streamlit-free (a light module, like :mod:`deref.report`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deref.errors import DataError
from deref.metrics import evaluate_run_predictions
from deref.runs import RunDir
from deref.survival import survival_frame

__all__ = [
    "METRICS",
    "HIGHER_IS_BETTER",
    "PairingError",
    "RunInputs",
    "PairedCohort",
    "RunScores",
    "PairComparison",
    "Comparison",
    "run_inputs",
    "environment_differences",
    "pair_runs",
    "score_run",
    "bootstrap_indices",
    "bootstrap_weights",
    "resampled_harrell",
    "BootstrapDelta",
    "paired_cindex_bootstrap",
    "bootstrap_p_value",
    "holm",
    "compare",
    "compare_runs",
]

#: The per-fold metrics of the table, in its column order.
METRICS: tuple[str, ...] = ("harrell", "uno", "td_auc", "ibs")
#: Which direction is better, per metric (the IBS is an error: lower is better).
HIGHER_IS_BETTER: dict[str, bool] = {"harrell": True, "uno": True, "td_auc": True, "ibs": False}

#: sksurv's tolerance for tied risks in Harrell's C (``concordance_index_censored(tied_tol=1e-8)``).
TIED_TOL = 1e-8
#: Pair-matrix entries built at once (anchors x patients): bounds the memory of a large cohort.
_BLOCK_ENTRIES = 2_000_000


class PairingError(DataError):
    """Two runs cannot be paired: different patients, folds or outcomes."""


# --------------------------------------------------------------------------------------------
# inputs and pairing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInputs:
    """What a comparison reads from one run directory.

    Attributes
    ----------
    name, path : str
        The run's label in tables and its directory.
    predictions : pandas.DataFrame
        ``predictions.csv``: the kept model's held-out predictions (the honest headline).
    train_risks : pandas.DataFrame or None
        ``train_risks.csv`` (the IPCW samples of Uno's C, the td-AUC and the IBS).
    folds : dict[str, int]
        case_id -> the fold that held the patient out (``RunInfo.validation_folds()``).
    bin_edges : dict[int, list[float]]
        ``RunInfo.bin_edges()``.
    fingerprint : str or None
        The cohort table's fingerprint recorded by training.
    protocol : str
        The headline's protocol (``fixed last epoch (20)``...), ``""`` when not recorded.
    optimistic : dict[int, float]
        fold -> the best-epoch validation C (optimistic: the epoch was chosen on that fold);
        empty when not tracked.
    """

    name: str
    path: str
    predictions: pd.DataFrame
    train_risks: pd.DataFrame | None
    folds: dict[str, int]
    bin_edges: dict[int, list[float]]
    fingerprint: str | None = None
    protocol: str = ""
    optimistic: dict[int, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


#: Manifest entries that differ between runs by nature (not a reproducibility difference).
_EXPECTED_TO_DIFFER = ("seeds.",)


def environment_differences(runs: Sequence[RunInputs]) -> dict[str, dict[str, Any]]:
    """Where the runs' reproducibility manifests (``RunInfo.environment``) differ: ``{entry:
    {run: value}}`` for every entry (``code.git_commit``, ``dependencies.torch``, ``device``,
    ``dtype``, ``splits.splits_0.csv``, ``features.bags``, ...) whose value is not the same in all
    runs that record a manifest (a run written before the manifest existed is left out: the
    comparison's notes name it)."""
    flat = {r.name: _flatten(r.environment) for r in runs if r.environment}
    keys = sorted({k for f in flat.values() for k in f})
    out = {}
    for k in keys:
        if k.startswith(_EXPECTED_TO_DIFFER):
            continue
        values = {name: f.get(k) for name, f in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[k] = values
    return out


def run_inputs(run: RunDir | str | os.PathLike, name: str | None = None) -> RunInputs:
    """Read a run directory's predictions, training risks, folds and provenance."""
    rd = run if isinstance(run, RunDir) else RunDir(run)
    info = rd.info
    head = info.metrics.headline
    optimistic = {
        f.index: float(f.optimistic_best_epoch_cindex)
        for f in info.folds
        if f.optimistic_best_epoch_cindex is not None
    }
    return RunInputs(
        name=name or rd.name,
        path=str(rd.path),
        predictions=rd.predictions(),
        train_risks=rd.train_risks() if rd.has_file("train_risks.csv") else None,
        folds=info.validation_folds(),
        bin_edges=info.bin_edges(),
        fingerprint=info.data.fingerprint,
        protocol=head.protocol if head is not None else "",
        optimistic=optimistic,
        environment=dict(info.environment),
    )


@dataclass(frozen=True)
class PairedCohort:
    """The patients every run was scored on, aligned: row ``j`` is patient ``case_ids[j]``.

    Attributes
    ----------
    case_ids : tuple[str, ...]
        Sorted case ids, shape ``(n,)``.
    folds, time, event : np.ndarray
        Shape ``(n,)``: each patient's held-out fold, follow-up time and event (bool).
    risks : np.ndarray
        Shape ``(R, n)``: each run's held-out risk of each patient.
    names : tuple[str, ...]
        The runs, in the row order of ``risks``.
    """

    case_ids: tuple[str, ...]
    folds: np.ndarray
    time: np.ndarray
    event: np.ndarray
    risks: np.ndarray
    names: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.case_ids)


def _aligned(run: RunInputs) -> pd.DataFrame:
    """``fold, time, event, risk`` of one run indexed by sorted case id; every patient of the
    run's folds must have exactly one held-out prediction, in the fold ``run.json`` names."""
    sf = survival_frame(run.predictions, what=f"{run.name}: predictions", require_risk=True)
    df = pd.DataFrame(
        {"time": sf.time, "event": sf.event, "risk": sf.risk}, index=pd.Index(sf.case_ids, name="case_id")
    )
    dup = df.index[df.index.duplicated()]
    if len(dup):
        raise PairingError(f"{run.name}: patient {dup[0]} has {int((df.index == dup[0]).sum())} predictions")
    folds = pd.Series(run.folds, dtype="int64")
    missing = folds.index.difference(df.index)
    if len(missing):
        raise PairingError(
            f"{run.name}: patient {sorted(missing)[0]} is in the run's folds but not predicted"
        )
    extra = df.index.difference(folds.index)
    if len(extra):
        raise PairingError(f"{run.name}: patient {sorted(extra)[0]} is predicted but in no validation fold")
    if sf.has_folds:
        written = pd.Series(pd.to_numeric(sf.df["fold"]).to_numpy(), index=df.index)
        off = written.index[written.to_numpy() != folds.reindex(written.index).to_numpy()]
        if len(off):
            raise PairingError(
                f"{run.name}: patient {sorted(off)[0]} is predicted in fold {int(written[sorted(off)[0]])} "
                f"but held out by fold {int(folds[sorted(off)[0]])} in run.json"
            )
    return df.assign(fold=folds.reindex(df.index).to_numpy()).sort_index()


def _fingerprint_note(ref: RunInputs, other: RunInputs) -> str:
    a, b = ref.fingerprint, other.fingerprint
    if a is None or b is None:
        return "table fingerprint not recorded by both runs"
    if a == b:
        return "the table fingerprint is the same"
    return f"the table fingerprint differs ({a[:12]} vs {b[:12]})"


def _check_pair(ref: RunInputs, a: pd.DataFrame, other: RunInputs, b: pd.DataFrame) -> None:
    """Raise :class:`PairingError` naming the first patient where ``b`` differs from ``a``."""
    where = f"runs {ref.name!r} and {other.name!r} cannot be paired"
    note = _fingerprint_note(ref, other)
    if not a.index.equals(b.index):
        only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
        first = min([*only_a[:1], *only_b[:1]])
        side = (
            f"in {ref.name!r} but not in {other.name!r}"
            if first in only_a
            else (f"in {other.name!r} but not in {ref.name!r}")
        )
        n = len(only_a) + len(only_b)
        raise PairingError(f"{where}: not the same patients: patient {first} is {side} ({n} differ; {note})")
    for col, what in (("fold", "held out in fold"), ("time", "followed up to"), ("event", "event")):
        diff = a.index[a[col].to_numpy() != b[col].to_numpy()]
        if len(diff):
            p = diff[0]
            raise PairingError(
                f"{where}: not the same folds/outcomes: patient {p} is {what} {a.at[p, col]} in {ref.name!r} "
                f"but {b.at[p, col]} in {other.name!r} ({len(diff)} differ; {note})"
            )


def pair_runs(runs: Sequence[RunInputs], reference: int = 0) -> PairedCohort:
    """Align the runs' held-out predictions by patient, checking that each can be paired with
    ``runs[reference]``.

    Raises
    ------
    PairingError
        A run has duplicate or fold-less predictions, or a run differs from the reference in
        its patients, in the fold of a patient or in a patient's outcome; the message names
        the first differing patient (in sorted case-id order) and says whether the table
        fingerprint differs.
    """
    if not runs:
        raise DataError("compare: no run given")
    frames = [_aligned(r) for r in runs]
    ref = frames[reference]
    for i, (r, f) in enumerate(zip(runs, frames)):
        if i != reference:
            _check_pair(runs[reference], ref, r, f)
    return PairedCohort(
        case_ids=tuple(ref.index),
        folds=ref["fold"].to_numpy(int),
        time=ref["time"].to_numpy(float),
        event=ref["event"].to_numpy(bool),
        risks=np.stack([f["risk"].to_numpy(float) for f in frames]),
        names=tuple(r.name for r in runs),
    )


# --------------------------------------------------------------------------------------------
# the paired bootstrap of Harrell's C
# --------------------------------------------------------------------------------------------
def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The patients drawn by each resample: ``(n_resamples, n)`` indices into ``range(n)``
    (``numpy.random.default_rng(seed).integers``); the same for every run of a comparison."""
    return np.random.default_rng(seed).integers(0, n, size=(int(n_resamples), int(n)))


def bootstrap_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """:func:`bootstrap_indices` as multiplicities: ``(n_resamples, n)`` float64 counts, row
    ``b`` saying how often resample ``b`` drew each patient (each row sums to ``n``)."""
    idx = bootstrap_indices(n, n_resamples, seed)
    flat = idx + (np.arange(idx.shape[0])[:, None] * n)
    return np.bincount(flat.ravel(), minlength=idx.size).reshape(idx.shape).astype(np.float64)


def _comparable(t: np.ndarray, e: np.ndarray, rows: slice) -> np.ndarray:
    """``A[i, j]`` for anchors ``i`` in ``rows``: patient ``i`` had the event and ``j`` was
    known event-free after it (later time, or censored at the same time), as sksurv counts."""
    ti, ei = t[rows, None], e[rows, None]
    return ei & ((ti < t[None, :]) | ((ti == t[None, :]) & ~e[None, :]))


def resampled_harrell(time, event, risks, weights) -> np.ndarray:
    """Harrell's C of every run on every resample, vectorized over resamples.

    Parameters
    ----------
    time, event : array-like, shape (n,)
        Follow-up times and events (1 = event) of the patients.
    risks : array-like, shape (R, n) or (n,)
        Each run's risk per patient (higher = worse).
    weights : array-like, shape (B, n)
        Multiplicity of each patient in each resample (:func:`bootstrap_weights`); a row of
        ones is the original sample.

    Returns
    -------
    np.ndarray
        Shape ``(R, B)`` (``(B,)`` for 1-D ``risks``): ``(concordant + tied / 2) / comparable``
        over weighted pairs, NaN for a resample without a comparable pair. Equals
        :func:`deref.metrics.harrell_c` on the resampled arrays exactly.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    r = np.atleast_2d(np.asarray(risks, dtype=float))
    w = np.asarray(weights, dtype=np.float64)
    n = t.size
    den = np.zeros(w.shape[0])
    num = np.zeros((r.shape[0], w.shape[0]))
    step = max(1, _BLOCK_ENTRIES // max(n, 1))
    for start in range(0, n, step):  # blocks of anchor patients, not resamples
        rows = slice(start, min(n, start + step))
        a = _comparable(t, e, rows)
        wa = w[:, rows]
        den += np.einsum("bi,bi->b", wa, w @ a.T.astype(np.float64))
        for k in range(r.shape[0]):
            diff = r[k, rows, None] - r[k, None, :]
            tied = np.abs(diff) <= TIED_TOL
            score = np.where(tied, 1.0, np.where(diff > 0, 2.0, 0.0)) * a  # twice the pair's score
            num[k] += np.einsum("bi,bi->b", wa, w @ score.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, (num / 2.0) / np.where(den > 0, den, 1.0), np.nan)
    return c[0] if np.ndim(risks) == 1 else c


def bootstrap_p_value(deltas) -> float:
    """Two-sided bootstrap p-value of ``delta = 0``: twice the smaller tail share of the
    resampled differences at or beyond zero, each counted as ``(1 + k) / (1 + B)`` (never 0),
    capped at 1. NaN resamples are ignored."""
    d = np.asarray(deltas, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    low = (1 + np.count_nonzero(d <= 0)) / (1 + d.size)
    high = (1 + np.count_nonzero(d >= 0)) / (1 + d.size)
    return float(min(1.0, 2 * min(low, high)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaN stays
    NaN and does not count in ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunScores:
    """One run's metrics over its outer folds (the honest headline), and its pooled C.

    Attributes
    ----------
    name, path : str
    protocol : str
        How each fold's model was chosen (``fixed last epoch (20)``...).
    folds : tuple[int, ...]
        The fold indices, in order.
    per_fold : dict[str, tuple[float, ...]]
        metric (:data:`METRICS`) -> its value per fold.
    mean, std : dict[str, float]
        Mean and sample std (``ddof=1``) over the folds with a finite value.
    pooled_harrell : float
        Harrell's C of all patients' held-out predictions together.
    optimistic_folds : tuple[float, ...]
        The best-epoch validation C per fold (chosen on the fold itself: optimistic, never the
        headline); empty when not tracked.
    optimistic_mean, optimistic_std : float
    ipcw_note : str
        Which sample weighted the censoring.
    fingerprint : str or None
    """

    name: str
    path: str
    protocol: str
    folds: tuple[int, ...]
    per_fold: dict[str, tuple[float, ...]]
    mean: dict[str, float]
    std: dict[str, float]
    pooled_harrell: float
    optimistic_folds: tuple[float, ...] = ()
    optimistic_mean: float = float("nan")
    optimistic_std: float = float("nan")
    ipcw_note: str = ""
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "protocol": self.protocol,
            "folds": list(self.folds),
            "per_fold": {m: list(v) for m, v in self.per_fold.items()},
            "mean": dict(self.mean),
            "std": dict(self.std),
            "pooled_harrell": self.pooled_harrell,
            "optimistic_best_epoch": {
                "label": "optimistic: best epoch chosen on the validation fold",
                "folds": list(self.optimistic_folds),
                "mean": self.optimistic_mean,
                "std": self.optimistic_std,
            },
            "ipcw_note": self.ipcw_note,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class PairComparison:
    """The reference run against one other run, paired by patient.

    Attributes
    ----------
    reference, other : str
    reference_c, other_c : float
        Pooled out-of-fold Harrell C of each.
    delta_c : float
        ``reference_c - other_c``.
    delta_c_ci_low, delta_c_ci_high : float
        Percentile CI of ``delta_c`` at ``level`` from the paired bootstrap over patients.
    fold_deltas : dict[int, float]
        fold -> the reference's Harrell C on that fold minus the other's.
    reference_wins : float
        Share of resamples with ``delta > 0``.
    p_value, p_holm : float
        Two-sided bootstrap p-value (:func:`bootstrap_p_value`) and its Holm adjustment over
        all pairs of the comparison.
    n_resamples, n_valid : int
        Resamples drawn, and those with a comparable pair (the CI is over these).
    seed : int
    level : float
    """

    reference: str
    other: str
    reference_c: float
    other_c: float
    delta_c: float
    delta_c_ci_low: float
    delta_c_ci_high: float
    fold_deltas: dict[int, float]
    reference_wins: float
    p_value: float
    p_holm: float
    n_resamples: int
    n_valid: int
    seed: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["fold_deltas"] = {str(k): v for k, v in self.fold_deltas.items()}
        return d


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: their scores, and the reference against each other run.

    Attributes
    ----------
    runs : tuple[RunScores, ...]
        In the order given (the reference among them).
    pairs : tuple[PairComparison, ...]
        The reference against every other run, in run order.
    reference : str
    n_patients, n_events : int
    n_resamples, seed : int
    level : float
    notes : tuple[str, ...]
        Facts a reader should know (fingerprints, IPCW samples, resamples without pairs).
    """

    runs: tuple[RunScores, ...]
    pairs: tuple[PairComparison, ...]
    reference: str
    n_patients: int
    n_events: int
    n_resamples: int
    seed: int
    level: float
    notes: tuple[str, ...] = ()
    paired: PairedCohort | None = None

    def fold_frame(self, metric: str = "harrell") -> pd.DataFrame:
        """Long table ``run, fold, value`` of one metric (:data:`METRICS`) per run and fold."""
        rows = [
            {"run": r.name, "fold": int(k), "value": float(v)}
            for r in self.runs
            for k, v in zip(r.folds, r.per_fold[metric])
        ]
        return pd.DataFrame(rows, columns=["run", "fold", "value"])

    def risks_frame(self) -> pd.DataFrame:
        """One row per patient: ``case_id, fold, time, event`` and each run's held-out risk (a
        column per run name); empty without the paired cohort."""
        if self.paired is None:
            return pd.DataFrame()
        p = self.paired
        out = pd.DataFrame({"case_id": list(p.case_ids), "fold": p.folds, "time": p.time, "event": p.event})
        for name, risk in zip(p.names, p.risks):
            out[name] = risk
        return out

    def disagreements(self, a: str, b: str, k: int = 10) -> pd.DataFrame:
        """The ``k`` patients on whom runs ``a`` and ``b`` disagree most: ``case_id, fold, time,
        event, risk_a, risk_b, pct_a, pct_b, gap`` where ``pct`` is the risk's percentile among
        the cohort's held-out risks of that run (0-100, ties averaged) and ``gap = pct_a - pct_b``;
        sorted by ``|gap|``, largest first."""
        df = self.risks_frame()
        for name in (a, b):
            if name not in df.columns:
                raise DataError(
                    f"compare: no run {name!r} in this comparison (runs: {[r.name for r in self.runs]})"
                )
        out = df[["case_id", "fold", "time", "event"]].copy()
        out["risk_a"], out["risk_b"] = df[a].to_numpy(), df[b].to_numpy()
        out["pct_a"] = df[a].rank(pct=True).to_numpy() * 100
        out["pct_b"] = df[b].rank(pct=True).to_numpy() * 100
        out["gap"] = out["pct_a"] - out["pct_b"]
        order = np.argsort(-np.abs(out["gap"].to_numpy()), kind="stable")
        return out.iloc[order[: max(int(k), 0)]].reset_index(drop=True)

    @property
    def has_optimistic(self) -> bool:
        """Whether any run tracked the optimistic best-epoch figure."""
        return any(r.optimistic_folds for r in self.runs)

    def runs_frame(self) -> pd.DataFrame:
        """One row per run: ``run, protocol, n_folds``, ``<metric>_mean/_std`` per metric,
        ``pooled_harrell``, ``optimistic_harrell_mean/_std``, and for the other runs the pair's
        ``delta_c, delta_c_ci_low, delta_c_ci_high, reference_wins, p_value, p_holm``."""
        pairs = {p.other: p for p in self.pairs}
        rows = []
        for r in self.runs:
            row: dict[str, Any] = {"run": r.name, "protocol": r.protocol, "n_folds": len(r.folds)}
            for m in METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = r.mean[m], r.std[m]
            row["pooled_harrell"] = r.pooled_harrell
            row["optimistic_harrell_mean"], row["optimistic_harrell_std"] = (
                r.optimistic_mean,
                r.optimistic_std,
            )
            p = pairs.get(r.name)
            for k in ("delta_c", "delta_c_ci_low", "delta_c_ci_high", "reference_wins", "p_value", "p_holm"):
                row[k] = getattr(p, k) if p is not None else float("nan")
            row["reference"] = r.name == self.reference
            rows.append(row)
        return pd.DataFrame(rows)

    def pairs_frame(self) -> pd.DataFrame:
        """One row per pair: ``reference, other, delta_c, delta_c_ci_low, delta_c_ci_high,
        reference_wins, p_value, p_holm`` and ``fold_<k>`` (the fold-wise differences)."""
        rows = []
        for p in self.pairs:
            d = p.to_dict()
            fold = d.pop("fold_deltas")
            rows.append({**d, **{f"fold_{k}": v for k, v in fold.items()}})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN becomes None when written by ``deref.runs.write_json``)."""
        return {
            "reference": self.reference,
            "n_patients": self.n_patients,
            "n_events": self.n_events,
            "bootstrap": {
                "n_resamples": self.n_resamples,
                "seed": self.seed,
                "level": self.level,
                "unit": "patient (paired: the same resample for both runs)",
                "statistic": "pooled out-of-fold Harrell C, reference minus other",
                "p_value": "two-sided bootstrap, (1 + k) / (1 + B); Holm over the pairs",
            },
            "runs": [r.to_dict() for r in self.runs],
            "pairs": [p.to_dict() for p in self.pairs],
            "notes": list(self.notes),
        }

    def meta(self, **extra: Any) -> dict[str, str]:
        """Provenance of the comparison's figure and files (:func:`deref.figures.figure_meta`)."""
        from deref.figures import figure_meta

        return figure_meta(
            run=self.reference,
            compared=", ".join(r.name for r in self.runs if r.name != self.reference),
            bootstrap=f"{self.n_resamples} paired resamples of patients, seed {self.seed}",
            **extra,
        )

    def forest_figure(self, backend: str = "matplotlib", meta: dict[str, str] | None = None):
        """The forest plot of the pairs' ``delta_c`` and CIs (matplotlib for files, plotly for the app)."""
        from deref.figures import forest_figure_matplotlib, forest_figure_plotly

        if backend not in ("matplotlib", "plotly"):
            raise DataError(f"unknown figure backend {backend!r}; use 'matplotlib' or 'plotly'")
        build = forest_figure_plotly if backend == "plotly" else forest_figure_matplotlib
        return build(
            self.pairs_frame(), self.reference, level=self.level, meta=self.meta() if meta is None else meta
        )

    def table(self, fmt: str) -> str:
        """The table: ``csv`` (every number of :meth:`runs_frame`), ``md`` or ``tex`` (the paper's
        Table III layout, mean ± std, the best honest figure in bold)."""
        from deref.figures import comparison_latex, comparison_markdown

        runs = self.runs_frame()
        if fmt == "csv":
            return runs.to_csv(index=False)
        if fmt == "md":
            return comparison_markdown(runs, self.reference)
        if fmt == "tex":
            return comparison_latex(runs, self.reference)
        raise DataError(f"unknown table format {fmt!r}; use csv, md or tex")

    def files(self, meta: dict[str, str] | None = None) -> dict[str, bytes]:
        """What ``deref compare`` writes besides the JSON: ``comparison.csv/.md/.tex`` and
        ``forest.png/.svg/.pdf`` (with provenance in the files' metadata)."""
        from deref.figures import FIGURE_FORMATS, export_figure

        meta = self.meta() if meta is None else meta
        out = {f"comparison.{fmt}": self.table(fmt).encode() for fmt in ("csv", "md", "tex")}
        if self.pairs:
            fig = self.forest_figure("matplotlib", meta)
            file_meta = {**meta, "title": f"Forest plot, C-index differences to {self.reference}"}
            out.update({f"forest.{fmt}": export_figure(fig, fmt, file_meta) for fmt in FIGURE_FORMATS})
        return out

    def summary_lines(self) -> list[str]:
        """The short table the CLI prints."""
        lines = [
            f"{self.n_patients} patients ({self.n_events} events); reference: {self.reference}; "
            f"paired bootstrap: {self.n_resamples} resamples, seed {self.seed}"
        ]
        width = max(len(r.name) for r in self.runs)
        pairs = {p.other: p for p in self.pairs}
        for r in self.runs:
            head = f"  {r.name:<{width}}  C {r.mean['harrell']:.3f} ± {r.std['harrell']:.3f}  pooled {r.pooled_harrell:.3f}"
            p = pairs.get(r.name)
            if p is None:
                head += "  (reference)"
            else:
                head += (
                    f"  ΔC {p.delta_c:+.3f} [{p.delta_c_ci_low:+.3f}, {p.delta_c_ci_high:+.3f}]"
                    f"  wins {p.reference_wins:.0%}  p_holm {p.p_holm:.3g}"
                )
            lines.append(head)
        lines += [f"note: {n}" for n in self.notes]
        return lines


# --------------------------------------------------------------------------------------------
# scoring and comparing
# --------------------------------------------------------------------------------------------
def _finite_stats(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if v.size else float("nan")
    return mean, float(v.std(ddof=1)) if v.size > 1 else float("nan")


def score_run(run: RunInputs) -> RunScores:
    """Per-fold Harrell and Uno C, td-AUC and IBS of a run's held-out predictions
    (:func:`deref.metrics.evaluate_run_predictions`), mean ± std over folds, the pooled C,
    and the optimistic best-epoch C kept apart."""
    report, note = evaluate_run_predictions(run.predictions, run.train_risks, run.bin_edges)
    folds = tuple(int(f.fold) for f in report.folds)
    per_fold = {m: tuple(float(getattr(f, m)) for f in report.folds) for m in METRICS}
    opt = tuple(run.optimistic[k] for k in folds if k in run.optimistic)
    o_mean, o_std = _finite_stats(opt)
    return RunScores(
        name=run.name,
        path=run.path,
        protocol=run.protocol,
        folds=folds,
        per_fold=per_fold,
        mean={m: _finite_stats(per_fold[m])[0] for m in METRICS},
        std={m: _finite_stats(per_fold[m])[1] for m in METRICS},
        pooled_harrell=float(report.pooled.harrell),
        optimistic_folds=opt if len(opt) == len(folds) else (),
        optimistic_mean=o_mean if len(opt) == len(folds) else float("nan"),
        optimistic_std=o_std if len(opt) == len(folds) else float("nan"),
        ipcw_note=note,
        fingerprint=run.fingerprint,
    )


def _quantiles(d: np.ndarray, level: float) -> tuple[float, float]:
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    a = round((1 - level) / 2, 12)  # 0.025, not 0.025000000000000022
    lo, hi = np.quantile(d, [a, 1 - a])
    return float(lo), float(hi)


@dataclass(frozen=True)
class BootstrapDelta:
    """The paired bootstrap of one difference of Harrell's C (reference minus other).

    Attributes
    ----------
    reference_c, other_c, delta : float
        The point estimates on the original sample.
    ci_low, ci_high : float
        Percentile CI of ``delta`` at ``level`` over the resamples with a comparable pair.
    reference_wins : float
        Share of those resamples with ``delta > 0``.
    p_value : float
        :func:`bootstrap_p_value` of the resampled differences.
    deltas : np.ndarray
        The resampled differences, shape ``(n_resamples,)`` (NaN: no comparable pair).
    level : float
    """

    reference_c: float
    other_c: float
    delta: float
    ci_low: float
    ci_high: float
    reference_wins: float
    p_value: float
    deltas: np.ndarray
    level: float

    @property
    def n_valid(self) -> int:
        return int(np.isfinite(self.deltas).sum())


def paired_cindex_bootstrap(
    time, event, risks, *, reference: int = 0, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[int, BootstrapDelta]:
    """Paired bootstrap over patients of Harrell's C of ``risks[reference]`` minus each other row.

    Every resample (:func:`bootstrap_weights`, seeded) draws patients with replacement once and
    scores every run on it (:func:`resampled_harrell`), so the differences are paired.

    Parameters
    ----------
    time, event : array-like, shape (n,)
    risks : array-like, shape (R, n)
        Each run's risk per patient (higher = worse).
    reference : int
        Row of the reference run.
    n_resamples, seed, level
        Resamples, their seed, and the CI's level.

    Returns
    -------
    dict[int, BootstrapDelta]
        Row -> its comparison with the reference, for every row but ``reference``.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event).astype(bool)
    r = np.atleast_2d(np.asarray(risks, dtype=float))
    point = resampled_harrell(t, e, r, np.ones((1, t.size)))[:, 0]  # = harrell_c, exactly
    if np.isnan(point).any():
        raise DataError("Harrell's C is not defined: no comparable pair of patients")
    boot = resampled_harrell(t, e, r, bootstrap_weights(t.size, n_resamples, seed))
    out = {}
    for k in range(r.shape[0]):
        if k == reference:
            continue
        d = boot[reference] - boot[k]
        valid = d[np.isfinite(d)]
        lo, hi = _quantiles(d, level)
        out[k] = BootstrapDelta(
            reference_c=float(point[reference]),
            other_c=float(point[k]),
            delta=float(point[reference] - point[k]),
            ci_low=lo,
            ci_high=hi,
            reference_wins=float(np.mean(valid > 0)) if valid.size else float("nan"),
            p_value=bootstrap_p_value(d),
            deltas=d,
            level=float(level),
        )
    return out


def _pairs(
    cohort: PairedCohort, scores: Sequence[RunScores], ref: int, n_resamples: int, seed: int, level: float
) -> list[PairComparison]:
    boot = paired_cindex_bootstrap(
        cohort.time,
        cohort.event,
        cohort.risks,
        reference=ref,
        n_resamples=n_resamples,
        seed=seed,
        level=level,
    )
    out = []
    for k, bd in boot.items():
        a, b = scores[ref], scores[k]
        fold_deltas = {
            f: a.per_fold["harrell"][a.folds.index(f)] - b.per_fold["harrell"][b.folds.index(f)]
            for f in a.folds
            if f in b.folds
        }
        out.append(
            PairComparison(
                reference=a.name,
                other=b.name,
                reference_c=bd.reference_c,
                other_c=bd.other_c,
                delta_c=bd.delta,
                delta_c_ci_low=bd.ci_low,
                delta_c_ci_high=bd.ci_high,
                fold_deltas=fold_deltas,
                reference_wins=bd.reference_wins,
                p_value=bd.p_value,
                p_holm=float("nan"),
                n_resamples=int(bd.deltas.size),
                n_valid=bd.n_valid,
                seed=int(seed),
                level=float(level),
            )
        )
    adjusted = holm([p.p_value for p in out])
    return [_with_holm(p, q) for p, q in zip(out, adjusted)]


def _with_holm(p: PairComparison, q: float) -> PairComparison:
    return replace(p, p_holm=float(q))


def _notes(
    runs: Sequence[RunInputs], scores: Sequence[RunScores], pairs: Sequence[PairComparison]
) -> list[str]:
    notes = []
    prints = {r.fingerprint for r in runs}
    if len(prints) > 1:
        notes.append(
            "the runs record different table fingerprints (same patients, folds and outcomes were checked): "
            + ", ".join(f"{r.name}={(r.fingerprint or 'none')[:12]}" for r in runs)
        )
    for s in scores:
        if "pooled cohort" in s.ipcw_note:
            notes.append(f"{s.name}: {s.ipcw_note}")
    bare = [r.name for r in runs if not r.environment]
    if bare and len(bare) < len(runs):
        notes.append(f"no reproducibility manifest in {', '.join(bare)} (written before runs recorded one)")
    for key, values in environment_differences(runs).items():
        notes.append(f"the runs differ in {key}: " + ", ".join(f"{n}={v}" for n, v in values.items()))
    for p in pairs:
        if p.n_valid < p.n_resamples:
            notes.append(
                f"{p.other}: {p.n_resamples - p.n_valid} resamples had no comparable pair (left out)"
            )
    return notes


def _reference_index(runs: Sequence[RunInputs], reference: str | os.PathLike | None) -> int:
    if reference is None:
        return 0
    ref = str(reference)
    for i, r in enumerate(runs):
        if ref == r.name or Path(ref).resolve() == Path(r.path).resolve():
            return i
    raise DataError(f"compare: reference {ref!r} is none of the runs {[r.name for r in runs]}")


def compare(
    runs: Sequence[RunInputs],
    *,
    reference: str | os.PathLike | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Compare runs already read (:func:`run_inputs`); see :func:`compare_runs`."""
    if n_resamples < 1:
        raise DataError(f"compare: n_resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise DataError(f"compare: level must be in (0, 1), got {level}")
    ref = _reference_index(runs, reference)
    cohort = pair_runs(runs, ref)
    scores = [score_run(r) for r in runs]
    pairs = _pairs(cohort, scores, ref, n_resamples, seed, level)
    return Comparison(
        runs=tuple(scores),
        pairs=tuple(pairs),
        reference=runs[ref].name,
        n_patients=cohort.n,
        n_events=int(cohort.event.sum()),
        n_resamples=int(n_resamples),
        seed=int(seed),
        level=float(level),
        notes=tuple(_notes(runs, scores, pairs)),
        paired=cohort,
    )


def _unique_names(dirs: Sequence[RunDir]) -> list[str]:
    """Run names, made unique where they clash: with the directory's name when it differs from
    the run's, then with a counter."""
    names = [d.name for d in dirs]
    seen: dict[str, int] = {}
    out = []
    for d, name in zip(dirs, names):
        if names.count(name) > 1 and d.path.name != name:
            name = f"{name} ({d.path.name})"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def compare_runs(
    runs: Sequence[RunDir | str | os.PathLike],
    *,
    reference: str | os.PathLike | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Runs side by side, with the paired bootstrap of their pooled out-of-fold C-index.

    Parameters
    ----------
    runs : sequence of RunDir or path
        Two or more run directories trained on the same patients and folds (one is allowed:
        its scores only).
    reference : str or path, optional
        The run every other is compared with: its name or its directory (default: the first).
    n_resamples : int, default 2000
        Bootstrap resamples of patients (the same for every run).
    seed : int, default 0
        Seed of the resamples (recorded).
    level : float, default 0.95
        Confidence level of the percentile CIs.

    Returns
    -------
    Comparison

    Raises
    ------
    PairingError
        The runs are not on the same patients, folds and outcomes (the first differing patient
        is named).
    CheckpointError, DataError
        A run directory or its tables are missing or malformed; an unknown reference.
    """
    dirs = [r if isinstance(r, RunDir) else RunDir(r) for r in runs]
    inputs = [run_inputs(d, name) for d, name in zip(dirs, _unique_names(dirs))]
    return compare(inputs, reference=reference, n_resamples=n_resamples, seed=seed, level=level)
