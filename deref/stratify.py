"""Risk stratification of out-of-fold predictions: cutoffs, groups, Kaplan–Meier, tests, HR.

Cutoffs
-------
A patient's group is decided by thresholds computed from the risks that *its own fold's model*
gave to *that fold's training patients* (``train_risks.csv``), never from the cohort being
shown: a cutoff taken from the test risks themselves uses the outcome-blind but test-derived
distribution and makes groups of exactly equal size by construction, which is optimistic and
not reproducible on a new patient. Risk scales differ between fold models, hence per-fold
thresholds. When no training risks exist (an external cohort), cohort-derived cutoffs must be
requested explicitly (``cutoffs_from="cohort"``) and are labelled ``cutoff_source="cohort"``.

The "optimal p-value" cutoff (the threshold minimising the log-rank p) is deliberately not
offered: its p-value is not a valid p-value and its hazard ratio is biased away from 1.

A risk equal to a threshold goes to the lower group (``risk > threshold`` means higher).

Groups are ordered low -> high risk and named ``low, high`` (2 groups),
``low, intermediate, high`` (3), ``Q1..Q4`` (4) or ``G1..Gk`` (otherwise).

Statistics (all from lifelines)
-------------------------------
- Kaplan–Meier per group with lifelines' default pointwise CI (exponential Greenwood,
  i.e. log(-log) transformed).
- Log-rank: ``multivariate_logrank_test`` over all groups (for two groups it is the usual
  log-rank test); ``pairwise_logrank_test`` for more than two groups, with Holm-adjusted p.
- Hazard ratio: ``CoxPHFitter`` (Efron ties) on group indicators. Two groups: HR of ``high``
  vs ``low``. More than two: one model with an indicator per group, each HR against the
  lowest-risk group, plus a second model on the ordinal group index (0, 1, ...) giving a
  per-step "trend" HR.
- t-test: see :class:`TTestResult`.
- Number at risk: as lifelines' ``add_at_risk_counts`` (default
  ``at_risk_count_from_start_of_period=False``): at tick ``t`` the number still under
  observation *after* ``t`` (``#{T > t}``), with cumulative censored and events up to and
  including ``t``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from deref.errors import DataError
from deref.survival import MEAN_OF_FOLDS, SurvivalFrame, risk_values, survival_frame

# lifelines and scipy (about 1 s to import) load on the first fit, not with this module: cutoffs
# and group assignment (the dashboard's Cohort page) need neither.
if TYPE_CHECKING:
    from lifelines import CoxPHFitter, KaplanMeierFitter

logger = logging.getLogger(__name__)

__all__ = [
    "CutoffRule",
    "Cutoffs",
    "Interval",
    "GroupSummary",
    "LogRankResult",
    "HazardRatio",
    "HazardRatioResult",
    "TTestResult",
    "StratificationResult",
    "group_labels",
    "training_cutoffs",
    "cohort_cutoffs",
    "compute_cutoffs",
    "assign_groups",
    "stratify",
    "kaplan_meier",
    "nice_ticks",
    "at_risk_counts",
]

ALL_FOLDS = "all"
"""Key of :class:`Cutoffs` thresholds that apply to every fold (cohort or absolute cutoffs)."""


# --------------------------------------------------------------------------------------------
# cutoff rules
# --------------------------------------------------------------------------------------------
def group_labels(n_groups: int) -> list[str]:
    """Names of ``n_groups`` risk groups, ordered low -> high risk."""
    if n_groups < 2:
        raise DataError(f"a stratification needs at least 2 groups, got {n_groups}")
    if n_groups == 2:
        return ["low", "high"]
    if n_groups == 3:
        return ["low", "intermediate", "high"]
    if n_groups == 4:
        return ["Q1", "Q2", "Q3", "Q4"]
    return [f"G{i + 1}" for i in range(n_groups)]


@dataclass(frozen=True)
class CutoffRule:
    """How risks are cut into groups.

    Attributes
    ----------
    kind : {"quantiles", "thresholds"}
        ``quantiles``: probabilities in (0, 1) applied to each fold's training risks;
        ``thresholds``: absolute risk values, the same for every fold.
    values : tuple[float, ...]
        Strictly increasing.
    name : str
        Human-readable name ("median", "tertiles", ...).
    """

    kind: Literal["quantiles", "thresholds"]
    values: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ("quantiles", "thresholds"):
            raise DataError(f"cutoff rule kind must be 'quantiles' or 'thresholds', got {self.kind!r}")
        v = np.asarray(self.values, dtype=float)
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise DataError(f"cutoff rule {self.name!r}: needs finite values, got {list(self.values)}")
        if np.any(np.diff(v) <= 0):
            raise DataError(
                f"cutoff rule {self.name!r}: values must increase strictly, got {list(self.values)}"
            )
        if self.kind == "quantiles" and (v.min() <= 0 or v.max() >= 1):
            raise DataError(
                f"cutoff rule {self.name!r}: quantiles must lie in (0, 1), got {list(self.values)}"
            )

    @property
    def n_groups(self) -> int:
        """Number of groups the rule makes."""
        return len(self.values) + 1

    @property
    def labels(self) -> list[str]:
        """Group names, low -> high."""
        return group_labels(self.n_groups)

    @property
    def slug(self) -> str:
        """A file-name-safe name (``median``, ``quantiles-0.2-0.8``, ...)."""
        if self.name in _NAMED:
            return self.name
        vals = "-".join(f"{v:g}".replace("-", "m") for v in self.values)  # m = minus
        return f"{self.kind}-{vals}".replace("/", "_")

    @classmethod
    def quantiles(cls, probs: Sequence[float], name: str | None = None) -> CutoffRule:
        """Custom quantiles of the training risks, e.g. ``[0.2, 0.8]``."""
        vals = tuple(float(p) for p in probs)
        return cls("quantiles", vals, name or "quantiles " + ",".join(f"{p:g}" for p in vals))

    @classmethod
    def thresholds(cls, values: Sequence[float], name: str | None = None) -> CutoffRule:
        """Custom absolute risk thresholds, the same for every fold."""
        vals = tuple(float(v) for v in values)
        return cls("thresholds", vals, name or "thresholds " + ",".join(f"{v:g}" for v in vals))

    @classmethod
    def parse(cls, spec: str | CutoffRule) -> CutoffRule:
        """Read ``median``, ``tertiles``, ``quartiles``, ``quantiles:0.2,0.8`` or ``thresholds:-1,0.5``."""
        if isinstance(spec, CutoffRule):
            return spec
        s = str(spec).strip().lower()
        if s in _NAMED:
            return _NAMED[s]
        kind, sep, rest = s.partition(":")
        if sep and kind in ("quantiles", "thresholds"):
            try:
                vals = [float(x) for x in rest.split(",") if x.strip()]
            except ValueError as exc:
                raise DataError(f"cutoff rule {spec!r}: values must be numbers") from exc
            return cls.quantiles(vals) if kind == "quantiles" else cls.thresholds(vals)
        raise DataError(
            f"unknown cutoff rule {spec!r}; use median, tertiles, quartiles, "
            "quantiles:P1,P2,... or thresholds:T1,T2,..."
        )


_NAMED: dict[str, CutoffRule] = {}
_NAMED["median"] = CutoffRule("quantiles", (0.5,), "median")
_NAMED["tertiles"] = CutoffRule("quantiles", (1 / 3, 2 / 3), "tertiles")
_NAMED["quartiles"] = CutoffRule("quantiles", (0.25, 0.5, 0.75), "quartiles")


@dataclass(frozen=True, eq=False)
class Cutoffs(Mapping):
    """Thresholds per fold (a read-only mapping ``fold -> np.ndarray``).

    Attributes
    ----------
    rule : CutoffRule
    source : {"training", "cohort", "absolute"}
        ``training``: quantiles of each fold's training-set risks; ``cohort``: quantiles of
        the risks of the cohort being stratified (explicitly requested); ``absolute``: fixed
        thresholds.
    thresholds : dict
        Fold -> increasing thresholds; the key ``"all"`` applies to every fold.
    pooled : ndarray or None
        ``training`` only: the rule applied to every fold's training risks together, the
        cutoff of a patient scored by the mean of the fold models (``fold`` =
        ``deref.survival.MEAN_OF_FOLDS``).
    """

    rule: CutoffRule
    source: str
    thresholds: dict[Any, np.ndarray] = field(default_factory=dict)
    pooled: np.ndarray | None = None

    def __getitem__(self, fold: Any) -> np.ndarray:
        return self.for_fold(fold)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.thresholds)

    def __len__(self) -> int:
        return len(self.thresholds)

    def for_fold(self, fold: Any) -> np.ndarray:
        """The thresholds that apply to a patient of ``fold``."""
        if fold in self.thresholds:
            return self.thresholds[fold]
        if ALL_FOLDS in self.thresholds:
            return self.thresholds[ALL_FOLDS]
        if fold == MEAN_OF_FOLDS and self.pooled is not None:
            return self.pooled
        raise DataError(
            f"no {self.rule.name} cutoff for fold {fold!r}: training risks cover folds {sorted(map(str, self.thresholds))}"
        )

    @property
    def labels(self) -> list[str]:
        """Group names, low -> high."""
        return self.rule.labels

    def describe(self) -> str:
        """One line for captions, e.g. ``median of each fold's training risks``."""
        if self.source == "training":
            return f"{self.rule.name} of each fold's training risks"
        if self.source == "cohort":
            return f"{self.rule.name} of this cohort's risks (no training risks)"
        return f"{self.rule.name} (absolute)"


def _training_risks(df: pd.DataFrame) -> np.ndarray:
    """The risks of ``train_risks.csv`` (a risk-only table, no survival columns), checked."""
    if "fold" not in df.columns:
        raise DataError(f"training risks: no 'fold' column; has {list(df.columns)}")
    return risk_values(df, "training risks")


def _quantile_thresholds(risk: np.ndarray, rule: CutoffRule, where: str) -> np.ndarray:
    if risk.size < rule.n_groups:
        raise DataError(f"{where}: {risk.size} risks cannot make {rule.n_groups} {rule.name} groups")
    thr = np.quantile(risk, np.asarray(rule.values))
    if np.any(np.diff(thr) <= 0):
        raise DataError(
            f"{where}: {rule.name} thresholds {thr.tolist()} are not distinct (many tied risks); "
            "use fewer groups or absolute thresholds"
        )
    return thr


def training_cutoffs(train_risks_df: pd.DataFrame, rule: str | CutoffRule) -> Cutoffs:
    """Thresholds from each fold's training-set risks.

    Parameters
    ----------
    train_risks_df : pandas.DataFrame
        ``train_risks.csv``: ``fold, case_id, risk`` — each fold model's risks on its own
        training patients.
    rule : str or CutoffRule
        ``"median"``, ``"tertiles"``, ``"quartiles"``, or a :class:`CutoffRule`.

    Returns
    -------
    Cutoffs
        ``source="training"`` with one threshold array per fold (``source="absolute"`` for a
        thresholds rule, which does not depend on the training risks).

    Raises
    ------
    DataError
        Missing columns, NaN risks, too few or heavily tied risks in a fold.
    """
    rule = CutoffRule.parse(rule)
    if rule.kind == "thresholds":
        return _absolute(rule)
    risk = _training_risks(train_risks_df)
    out = {}
    for fold, idx in train_risks_df.groupby("fold", sort=True).indices.items():
        key = fold.item() if hasattr(fold, "item") else fold
        out[key] = _quantile_thresholds(risk[idx], rule, f"training risks of fold {fold}")
    if not out:
        raise DataError("training risks: the table is empty")
    return Cutoffs(
        rule, "training", out, pooled=_quantile_thresholds(risk, rule, "training risks of all folds")
    )


def _absolute(rule: CutoffRule) -> Cutoffs:
    return Cutoffs(rule, "absolute", {ALL_FOLDS: np.asarray(rule.values, dtype=float)})


def cohort_cutoffs(pred_df: pd.DataFrame | SurvivalFrame, rule: str | CutoffRule) -> Cutoffs:
    """Thresholds from the risks of the cohort itself (for a cohort with no training risks).

    The result is labelled ``source="cohort"``; prefer :func:`training_cutoffs`.
    ``pred_df`` is validated by :func:`deref.survival.survival_frame` (a ``risk`` column required).
    """
    rule = CutoffRule.parse(rule)
    if rule.kind == "thresholds":
        return _absolute(rule)
    risk = survival_frame(pred_df, require_risk=True).risk
    logger.info("risk groups use cutoffs from the cohort's own risks (%s)", rule.name)
    return Cutoffs(rule, "cohort", {ALL_FOLDS: _quantile_thresholds(risk, rule, "cohort risks")})


def compute_cutoffs(
    rule: str | CutoffRule,
    *,
    train_risks: pd.DataFrame | None = None,
    pred_df: pd.DataFrame | SurvivalFrame | None = None,
    cutoffs_from: Literal["training", "cohort"] = "training",
) -> Cutoffs:
    """Cutoffs from the training folds (default) or, when asked explicitly, from the cohort.

    Raises
    ------
    DataError
        ``cutoffs_from="training"`` without training risks (names the way out).
    """
    rule = CutoffRule.parse(rule)
    if cutoffs_from == "training":
        if train_risks is None:
            if rule.kind == "thresholds":
                return _absolute(rule)
            raise DataError(
                "no training risks (train_risks.csv) to take the cutoffs from; pass "
                "cutoffs_from='cohort' to cut at the cohort's own risk quantiles"
            )
        return training_cutoffs(train_risks, rule)
    if cutoffs_from == "cohort":
        if pred_df is None:
            raise DataError("cutoffs_from='cohort' needs the cohort's predictions")
        return cohort_cutoffs(pred_df, rule)
    raise DataError(f"cutoffs_from must be 'training' or 'cohort', got {cutoffs_from!r}")


def assign_groups(pred_df: pd.DataFrame | SurvivalFrame, cutoffs: Cutoffs) -> pd.Series:
    """Group each out-of-fold patient by its own fold's thresholds.

    Parameters
    ----------
    pred_df : pandas.DataFrame or SurvivalFrame
        Predictions with ``risk`` and (for training cutoffs) ``fold`` columns, validated by
        :func:`deref.survival.survival_frame`.
    cutoffs : Cutoffs

    Returns
    -------
    pandas.Series
        Ordered categorical named ``risk_group`` (categories low -> high), on ``pred_df``'s
        index (a fresh ``RangeIndex`` for a SurvivalFrame). ``risk > threshold`` goes above
        it; a tie goes below.
    """
    sf = survival_frame(pred_df, require_risk=True)
    risk = sf.risk
    codes = np.empty(risk.size, dtype=int)
    if set(cutoffs.thresholds) == {ALL_FOLDS}:
        codes[:] = np.searchsorted(cutoffs.for_fold(ALL_FOLDS), risk, side="left")
    else:
        if not sf.has_folds:
            raise DataError("predictions: per-fold cutoffs need a 'fold' column")
        for fold, idx in sf.df.groupby("fold", sort=True).indices.items():
            codes[idx] = np.searchsorted(cutoffs.for_fold(int(fold)), risk[idx], side="left")
    cat = pd.Categorical.from_codes(codes, categories=cutoffs.labels, ordered=True)
    index = pred_df.index if isinstance(pred_df, pd.DataFrame) else sf.df.index
    return pd.Series(cat, index=index, name="risk_group")


# --------------------------------------------------------------------------------------------
# result objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A confidence interval; a bound of None was not reached (infinite)."""

    lower: float | None
    upper: float | None


@dataclass
class GroupSummary:
    """One risk group.

    Attributes
    ----------
    name : str
    n, events : int
    km : pandas.DataFrame
        Columns ``time, survival, ci_lower, ci_upper``, from time 0 (lifelines' timeline).
    censor_times : np.ndarray
        Sorted times of the censored patients (with repeats).
    median_survival : float or None
        None means "not reached".
    median_ci : Interval
        CI of the median (from the KM bands); a None bound was not reached.
    """

    name: str
    n: int
    events: int
    km: pd.DataFrame
    censor_times: np.ndarray
    median_survival: float | None
    median_ci: Interval

    def survival_at(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """KM estimate at ``times`` (right-continuous step; 1 before time 0 is not defined)."""
        t = np.atleast_1d(np.asarray(times, dtype=float))
        idx = np.searchsorted(self.km["time"].to_numpy(), t, side="right") - 1
        surv = self.km["survival"].to_numpy()
        return np.where(idx >= 0, surv[np.clip(idx, 0, None)], 1.0)


@dataclass(frozen=True)
class LogRankResult:
    """Log-rank test over all groups.

    ``estimable`` is False (and the numbers NaN) when the test cannot be computed;
    ``reason`` says why.
    """

    statistic: float
    p_value: float
    dof: int
    estimable: bool = True
    reason: str | None = None


@dataclass(frozen=True)
class HazardRatio:
    """Hazard ratio of ``group`` against ``reference`` with its CI and Wald p-value."""

    group: str
    reference: str
    hr: float
    ci_lower: float
    ci_upper: float
    p_value: float


@dataclass(frozen=True)
class HazardRatioResult:
    """Cox proportional-hazards fit on the group indicator(s).

    Attributes
    ----------
    comparisons : list[HazardRatio]
        Each non-lowest group against the lowest (``high`` vs ``low`` for two groups).
    trend : HazardRatio or None
        For more than two groups: HR per one-group step of the ordinal group index
        (``group="per group step"``); None for two groups.
    estimable : bool
    reason : str or None
        Why not estimable (e.g. "no events in group 'low'").
    notes : list[str]
        Convergence warnings, if any.
    alpha : float
        CI level is ``1 - alpha``.
    """

    comparisons: list[HazardRatio]
    trend: HazardRatio | None
    estimable: bool
    reason: str | None = None
    notes: tuple[str, ...] = ()
    alpha: float = 0.05

    @property
    def primary(self) -> HazardRatio | None:
        """The headline HR: the highest-risk group against the lowest."""
        return self.comparisons[-1] if self.comparisons else None


@dataclass(frozen=True)
class TTestResult:
    """Welch's t-test between the lowest- and highest-risk groups.

    What it compares (``quantity``):

    - ``"event_time"`` (default): the observed survival times of the patients *with an
      event* in each group. It answers "do high-risk patients who die, die sooner?". It
      ignores censored patients, so it is a descriptive companion of the box plot, not a
      replacement for the log-rank test.
    - ``"risk"``: the predicted risks of the two groups, as some papers plot. The groups are
      defined by risk, so this difference is largely by construction; shown for comparison
      with such figures only.
    """

    quantity: str
    group_a: str
    group_b: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    statistic: float
    p_value: float
    estimable: bool = True
    reason: str | None = None
    equal_var: bool = False


@dataclass
class StratificationResult:
    """Everything a Kaplan–Meier stratification page or figure shows.

    Attributes
    ----------
    groups : list[GroupSummary]
        Ordered low -> high risk.
    logrank : LogRankResult
    pairwise_logrank : pandas.DataFrame or None
        ``group_a, group_b, statistic, p_value, p_holm`` for more than two groups.
    hazard_ratio : HazardRatioResult
    ttest : TTestResult
    at_risk : pandas.DataFrame
        Long table ``group, time, at_risk, censored, events`` at ``at_risk_times``.
    at_risk_times : np.ndarray
        Tick times of the at-risk table (figures use them as x ticks).
    cutoff_rule, cutoff_source : str
    thresholds : dict
        Fold -> thresholds (``"all"`` for every fold).
    data : pandas.DataFrame
        Per patient ``case_id, fold, time, event, risk, group`` (columns present in the input).
    alpha : float
    time_unit : str
    notes : list[str]
        Anything a reader should know (zero-event groups, convergence warnings).
    """

    groups: list[GroupSummary]
    logrank: LogRankResult
    pairwise_logrank: pd.DataFrame | None
    hazard_ratio: HazardRatioResult
    ttest: TTestResult
    at_risk: pd.DataFrame
    at_risk_times: np.ndarray
    cutoff_rule: str
    cutoff_source: str
    thresholds: dict[Any, np.ndarray]
    data: pd.DataFrame
    alpha: float = 0.05
    time_unit: str = "months"
    notes: list[str] = field(default_factory=list)

    @property
    def group_names(self) -> list[str]:
        """Group names, low -> high."""
        return [g.name for g in self.groups]

    def group(self, name: str) -> GroupSummary:
        """The summary of the group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups are {self.group_names}")

    def at_risk_wide(self, column: str = "at_risk") -> pd.DataFrame:
        """At-risk table as groups x times (``column`` in at_risk, censored, events)."""
        wide = self.at_risk.pivot(index="group", columns="time", values=column)
        return wide.loc[self.group_names]

    def summary_frame(self) -> pd.DataFrame:
        """Per group: ``n, events, median_survival, median_ci_lower, median_ci_upper``."""
        return pd.DataFrame(
            [
                {
                    "group": g.name,
                    "n": g.n,
                    "events": g.events,
                    "median_survival": g.median_survival,
                    "median_ci_lower": g.median_ci.lower,
                    "median_ci_upper": g.median_ci.upper,
                }
                for g in self.groups
            ]
        )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def nice_ticks(t_max: float, target: int = 6) -> np.ndarray:
    """Round tick times ``0, step, 2*step, ... <= t_max`` with about ``target`` ticks."""
    if not np.isfinite(t_max) or t_max <= 0:
        return np.array([0.0])
    raw = t_max / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-12))
    n = int(math.floor(t_max / step + 1e-9))
    return np.round(np.arange(n + 1) * step, 10)


def at_risk_counts(kmf: KaplanMeierFitter, times: Sequence[float] | np.ndarray) -> pd.DataFrame:
    """Number at risk, censored and events at ``times``, as lifelines' ``add_at_risk_counts``.

    At tick ``t``: ``at_risk`` is ``at_risk - removed`` of the last event-table row at or
    before ``t`` (patients still followed after ``t``); ``censored`` and ``events`` are summed
    over rows up to and including ``t``. A tick before the first row gives zeros.

    Returns
    -------
    pandas.DataFrame
        Columns ``time, at_risk, censored, events`` (ints).
    """
    et = kmf.event_table
    idx = et.index.to_numpy(dtype=float)
    after = (et["at_risk"] - et["removed"]).to_numpy()
    cens = np.cumsum(et["censored"].to_numpy())
    obs = np.cumsum(et["observed"].to_numpy())
    rows = []
    for t in np.asarray(times, dtype=float):
        pos = int(np.searchsorted(idx, t, side="right")) - 1
        if pos < 0:
            rows.append((t, 0, 0, 0))
        else:
            rows.append((t, int(after[pos]), int(cens[pos]), int(obs[pos])))
    return pd.DataFrame(rows, columns=["time", "at_risk", "censored", "events"])


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def kaplan_meier(
    time: np.ndarray, event: np.ndarray, *, name: str = "all", alpha: float = 0.05
) -> GroupSummary:
    """Kaplan–Meier estimate of one group, with lifelines' default pointwise CI.

    Parameters
    ----------
    time : np.ndarray, shape (n,)
        Validated follow-up times (see :func:`deref.survival.survival_arrays`), ``n >= 1``.
    event : np.ndarray of bool, shape (n,)
        True for an observed event.
    name : str
        The group's name.
    alpha : float, default 0.05
        CI level ``1 - alpha``.

    Returns
    -------
    GroupSummary
    """
    return _fit_group(name, time, event, alpha)[0]


def _fit_group(
    name: str, t: np.ndarray, e: np.ndarray, alpha: float
) -> tuple[GroupSummary, KaplanMeierFitter]:
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    kmf = KaplanMeierFitter(label=name, alpha=alpha).fit(t, e)
    ci = kmf.confidence_interval_survival_function_
    km = pd.DataFrame(
        {
            "time": kmf.survival_function_.index.to_numpy(dtype=float),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(),
            "ci_lower": ci.iloc[:, 0].to_numpy(),
            "ci_upper": ci.iloc[:, 1].to_numpy(),
        }
    )
    med_ci = median_survival_times(ci)
    summary = GroupSummary(
        name=name,
        n=int(t.size),
        events=int(e.sum()),
        km=km,
        censor_times=np.sort(t[~e]),
        median_survival=_finite_or_none(kmf.median_survival_time_),
        median_ci=Interval(_finite_or_none(med_ci.iloc[0, 0]), _finite_or_none(med_ci.iloc[0, 1])),
    )
    return summary, kmf


def _logrank(t, e, g, names: list[str]) -> tuple[LogRankResult, pd.DataFrame | None]:
    if not e.any():
        reason = "no events in the cohort"
        return LogRankResult(float("nan"), float("nan"), len(names) - 1, False, reason), None
    from lifelines.statistics import multivariate_logrank_test, pairwise_logrank_test

    res = multivariate_logrank_test(t, g, e)
    lr = LogRankResult(float(res.test_statistic), float(res.p_value), int(res.degrees_of_freedom))
    if len(names) <= 2:
        return lr, None
    pw = pairwise_logrank_test(t, g, e).summary.reset_index()
    pw.columns = ["group_a", "group_b", *pw.columns[2:]]
    order = {n: i for i, n in enumerate(names)}
    pw = pw.assign(statistic=pw["test_statistic"].astype(float), p_value=pw["p"].astype(float))
    pw = pw[["group_a", "group_b", "statistic", "p_value"]]
    a, b = pw["group_a"].map(order), pw["group_b"].map(order)
    # lifelines orders each pair by name; the table reads better lower-risk group first
    pw = pw.assign(group_a=[names[i] for i in np.minimum(a, b)], group_b=[names[i] for i in np.maximum(a, b)])
    pw = pw.assign(_a=np.minimum(a, b), _b=np.maximum(a, b)).sort_values(["_a", "_b"])
    pw = pw.drop(columns=["_a", "_b"]).reset_index(drop=True)
    pw["p_holm"] = _holm(pw["p_value"].to_numpy())
    return lr, pw


def _holm(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def _cox(df: pd.DataFrame, covariates: list[str], alpha: float) -> tuple[CoxPHFitter, list[str]]:
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceWarning

    cph = CoxPHFitter(alpha=alpha)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        cph.fit(df[["time", "event", *covariates]], duration_col="time", event_col="event")
    notes = []
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            notes.append(str(w.message).splitlines()[0])
        else:  # not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cph, notes


def _hr_row(cph: CoxPHFitter, cov: str, group: str, reference: str) -> HazardRatio:
    lo, hi = np.exp(cph.confidence_intervals_.loc[cov].to_numpy(dtype=float))
    return HazardRatio(
        group,
        reference,
        float(cph.hazard_ratios_[cov]),
        float(lo),
        float(hi),
        float(cph.summary.loc[cov, "p"]),
    )


def _hazard_ratio(
    t, e, codes, names: list[str], summaries: list[GroupSummary], alpha: float
) -> HazardRatioResult:
    empty = [s.name for s in summaries if s.events == 0]
    if empty:
        reason = "no events in group " + ", ".join(f"'{n}'" for n in empty)
        return HazardRatioResult([], None, False, reason, alpha=alpha)
    from lifelines.exceptions import ConvergenceError

    df = pd.DataFrame({"time": t, "event": e.astype(int)})
    covs = []
    for k in range(1, len(names)):
        col = f"g{k}"
        df[col] = (codes == k).astype(float)
        covs.append(col)
    try:
        cph, notes = _cox(df, covs, alpha)
        comparisons = [_hr_row(cph, c, names[k], names[0]) for k, c in enumerate(covs, start=1)]
        trend = None
        if len(names) > 2:
            df["group_index"] = codes.astype(float)
            cph_t, notes_t = _cox(df, ["group_index"], alpha)
            trend = _hr_row(cph_t, "group_index", "per group step", names[0])
            notes += notes_t
    except ConvergenceError as exc:
        return HazardRatioResult(
            [], None, False, f"Cox fit did not converge: {str(exc).splitlines()[0]}", alpha=alpha
        )
    return HazardRatioResult(comparisons, trend, True, None, tuple(notes), alpha)


def _ttest(data: pd.DataFrame, names: list[str], quantity: str) -> TTestResult:
    lo, hi = names[0], names[-1]
    if quantity == "event_time":
        sel = data["event"].astype(bool)
        a = data.loc[sel & (data["group"] == lo), "time"].to_numpy(float)
        b = data.loc[sel & (data["group"] == hi), "time"].to_numpy(float)
        label = "survival time of patients with an event"
    elif quantity == "risk":
        if "risk" not in data.columns:
            raise DataError("t-test on risk needs a 'risk' column")
        a = data.loc[data["group"] == lo, "risk"].to_numpy(float)
        b = data.loc[data["group"] == hi, "risk"].to_numpy(float)
        label = "predicted risk"
    else:
        raise DataError(f"ttest_on must be 'event_time' or 'risk', got {quantity!r}")
    mean_a = float(a.mean()) if a.size else float("nan")
    mean_b = float(b.mean()) if b.size else float("nan")
    if a.size < 2 or b.size < 2:
        reason = f"needs at least 2 values per group, got {a.size} in '{lo}' and {b.size} in '{hi}'"
        return TTestResult(
            label, lo, hi, int(a.size), int(b.size), mean_a, mean_b, float("nan"), float("nan"), False, reason
        )
    from scipy import stats

    res = stats.ttest_ind(b, a, equal_var=False)
    return TTestResult(
        label, lo, hi, int(a.size), int(b.size), mean_a, mean_b, float(res.statistic), float(res.pvalue)
    )


# --------------------------------------------------------------------------------------------
# the stratification
# --------------------------------------------------------------------------------------------
def stratify(
    pred_df: pd.DataFrame | SurvivalFrame,
    groups: pd.Series | Sequence[str],
    *,
    cutoffs: Cutoffs | None = None,
    at_risk_times: Sequence[float] | np.ndarray | None = None,
    alpha: float = 0.05,
    ttest_on: Literal["event_time", "risk"] = "event_time",
    time_unit: str = "months",
) -> StratificationResult:
    """Kaplan–Meier curves, log-rank tests, hazard ratios and at-risk table of risk groups.

    Parameters
    ----------
    pred_df : pandas.DataFrame or SurvivalFrame
        ``time`` and ``censorship`` (1 = censored) or ``event`` columns; ``case_id``,
        ``fold`` and ``risk`` are carried into ``result.data`` when present. Validated once
        by :func:`deref.survival.survival_frame` (pass a SurvivalFrame to skip even that).
    groups : pandas.Series or sequence of str
        Group of each row (e.g. :func:`assign_groups`); an ordered categorical gives the
        low -> high order, otherwise the order of ``cutoffs.labels`` or sorted names.
    cutoffs : Cutoffs, optional
        Recorded in the result (rule, source, thresholds).
    at_risk_times : array-like, optional
        Tick times for the at-risk table; default :func:`nice_ticks` up to the largest time.
    alpha : float, default 0.05
        CI level ``1 - alpha`` for KM bands, medians and HRs.
    ttest_on : {"event_time", "risk"}
        What the t-test compares (see :class:`TTestResult`).
    time_unit : str
        Unit of ``time``, for labels.

    Returns
    -------
    StratificationResult

    Raises
    ------
    DataError
        Missing columns, negative or missing times, a group without patients, fewer than two
        groups. A group without *events* is not an error: its KM is returned and the HR is
        marked not estimable with the reason.
    """
    aligned = _aligned_groups(pred_df, groups)
    sf = survival_frame(pred_df)
    t, e = sf.time, sf.event
    names, codes = _group_codes(aligned, sf.case_ids, cutoffs)
    summaries, fitters = [], []
    for k, name in enumerate(names):
        s, kmf = _fit_group(name, t[codes == k], e[codes == k], alpha)
        summaries.append(s)
        fitters.append(kmf)
    at_risk_times = np.asarray(
        nice_ticks(float(t.max())) if at_risk_times is None else at_risk_times, dtype=float
    )
    data = _patient_table(sf, codes, names)
    logrank, pairwise = _logrank(t, e, data["group"].astype(str).to_numpy(), names)
    hr = _hazard_ratio(t, e, codes, names, summaries, alpha)
    return StratificationResult(
        groups=summaries,
        logrank=logrank,
        pairwise_logrank=pairwise,
        hazard_ratio=hr,
        ttest=_ttest(data, names, ttest_on),
        at_risk=_at_risk_table(fitters, names, at_risk_times),
        at_risk_times=at_risk_times,
        cutoff_rule=cutoffs.rule.name if cutoffs is not None else "unspecified",
        cutoff_source=cutoffs.source if cutoffs is not None else "unspecified",
        thresholds=dict(cutoffs.thresholds) if cutoffs is not None else {},
        data=data,
        alpha=alpha,
        time_unit=time_unit,
        notes=_notes(summaries, logrank, hr),
    )


def _notes(summaries: list[GroupSummary], logrank: LogRankResult, hr: HazardRatioResult) -> list[str]:
    """What a reader should know: zero-event groups, tests not estimable, convergence warnings."""
    notes = [f"no events in group '{s.name}'" for s in summaries if s.events == 0]
    if not logrank.estimable:
        notes.append(f"log-rank not estimable: {logrank.reason}")
    if not hr.estimable:
        notes.append(f"HR not estimable: {hr.reason}")
    return notes + list(hr.notes)


def _aligned_groups(pred_df: pd.DataFrame | SurvivalFrame, groups: pd.Series | Sequence[str]) -> pd.Series:
    """``groups`` in the row order of ``pred_df``, on a fresh ``RangeIndex``."""
    index = pred_df.index if isinstance(pred_df, pd.DataFrame) else pred_df.df.index
    if isinstance(groups, pd.Series):
        g = groups if groups.index.equals(index) else groups.reindex(index)
    else:
        g = pd.Series(groups)
    if len(g) != len(index):
        raise DataError(f"groups has {len(g)} entries for {len(index)} patients")
    return g.reset_index(drop=True)


def _group_codes(g: pd.Series, ids: np.ndarray, cutoffs: Cutoffs | None) -> tuple[list[str], np.ndarray]:
    """Group names low -> high and each patient's group index; every group must have patients."""
    if g.isna().any():
        raise DataError(f"no risk group for case(s) {ids[g.isna().to_numpy()][:5].tolist()}")
    if isinstance(g.dtype, pd.CategoricalDtype):
        names = [str(c) for c in g.cat.categories]
    elif cutoffs is not None:
        names = cutoffs.labels
    else:
        names = sorted(map(str, pd.unique(g)))
    g_arr = g.astype(str).to_numpy()
    unknown = sorted(set(g_arr) - set(names))
    if unknown:
        raise DataError(f"groups {unknown} are not among the expected {names}")
    if len(names) < 2:
        raise DataError(f"a stratification needs at least 2 groups, got {names}")
    empty = [n for n in names if not (g_arr == n).any()]
    if empty:
        thr = ""
        if cutoffs is not None:
            rounded = {k: np.round(v, 4).tolist() for k, v in cutoffs.thresholds.items()}
            thr = f" (thresholds {rounded})"
        raise DataError(f"risk group(s) {empty} have no patients{thr}; use fewer groups or other cutoffs")
    lookup = {n: i for i, n in enumerate(names)}
    return names, np.array([lookup[x] for x in g_arr], dtype=int)


def _at_risk_table(fitters: list[KaplanMeierFitter], names: list[str], times: np.ndarray) -> pd.DataFrame:
    """Long at-risk table ``group, time, at_risk, censored, events`` at ``times``."""
    return pd.concat(
        [at_risk_counts(kmf, times).assign(group=name) for name, kmf in zip(names, fitters)],
        ignore_index=True,
    )[["group", "time", "at_risk", "censored", "events"]]


def _patient_table(sf: SurvivalFrame, codes: np.ndarray, names: list[str]) -> pd.DataFrame:
    """``case_id, [fold,] time, event, [risk,] group`` per patient."""
    cols: dict[str, Any] = {"case_id": sf.case_ids}
    if sf.has_folds:
        cols["fold"] = sf.df["fold"].to_numpy()
    cols.update(time=sf.time, event=sf.event.astype(int))
    if sf.has_risk:
        cols["risk"] = sf.risk
    cols["group"] = pd.Categorical.from_codes(codes, categories=names, ordered=True)
    return pd.DataFrame(cols)
