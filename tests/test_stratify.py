"""deref.stratify against lifelines, and the training-fold cutoff rule."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.plotting import add_at_risk_counts
from lifelines.statistics import logrank_test, multivariate_logrank_test, pairwise_logrank_test
from lifelines.utils import median_survival_times
from scipy import stats

from deref.errors import DataError
from deref.stratify import (
    CutoffRule,
    assign_groups,
    at_risk_counts,
    cohort_cutoffs,
    compute_cutoffs,
    group_labels,
    nice_ticks,
    stratify,
    training_cutoffs,
)


def _cohort(n=150, folds=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(30 * np.exp(-0.9 * x))
    t_c = rng.uniform(5, 90, n)
    time = np.round(np.minimum(t_ev, t_c), 0) + 1.0  # integer times: many ties
    df = pd.DataFrame(
        {
            "case_id": [f"P{i}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "time": time,
            "censorship": (t_ev > t_c).astype(int),
            "risk": x + rng.normal(scale=0.5, size=n),
        }
    )
    train = pd.concat(
        [
            pd.DataFrame(
                {"fold": f, "case_id": df.case_id[df.fold != f], "risk": df.risk[df.fold != f] + 0.01}
            )
            for f in range(folds)
        ],
        ignore_index=True,
    )
    return df, train


# ------------------------------------------------------------------------------ cutoff rules
def test_rules_and_labels():
    assert CutoffRule.parse("median").values == (0.5,)
    assert CutoffRule.parse("Tertiles").labels == ["low", "intermediate", "high"]
    assert CutoffRule.parse("quartiles").labels == ["Q1", "Q2", "Q3", "Q4"]
    q = CutoffRule.parse("quantiles:0.2,0.4,0.6,0.8")
    assert q.kind == "quantiles" and q.labels == ["G1", "G2", "G3", "G4", "G5"]
    t = CutoffRule.parse("thresholds:-1,0.5")
    assert t.kind == "thresholds" and t.values == (-1.0, 0.5) and "/" not in t.slug
    assert group_labels(2) == ["low", "high"]
    for bad in ("optimal", "quantiles:0.5,1.2", "quantiles:0.6,0.4", "thresholds:a"):
        with pytest.raises(DataError):
            CutoffRule.parse(bad)


def test_cutoffs_come_from_each_folds_training_risks():
    # fold 0's model scores on a low scale, fold 1's on a high one; its OOF patients too
    train = pd.DataFrame(
        {
            "fold": [0] * 5 + [1] * 5,
            "case_id": [f"T{i}" for i in range(10)],
            "risk": [-2.0, -1.0, 0.0, 1.0, 2.0, 8.0, 9.0, 10.0, 11.0, 12.0],
        }
    )
    pred = pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d", "e", "f"],
            "fold": [0, 0, 0, 1, 1, 1],
            "risk": [0.5, -0.5, 0.0, 9.5, 10.5, 10.0],
            "time": [1.0, 2, 3, 4, 5, 6],
            "censorship": [0, 0, 1, 0, 1, 0],
        }
    )
    cut = training_cutoffs(train, "median")
    assert cut.source == "training" and cut.rule.name == "median"
    np.testing.assert_allclose(cut[0], [0.0])
    np.testing.assert_allclose(cut[1], [10.0])
    groups = assign_groups(pred, cut)
    assert list(groups.cat.categories) == ["low", "high"] and groups.cat.ordered
    # patient a (risk 0.5, fold 0) is above its fold's training median 0 -> high,
    # although it is below the pooled OOF median (5.0) -> low by the cohort rule
    assert groups[0] == "high"
    cohort = cohort_cutoffs(pred, "median")
    assert cohort.source == "cohort" and assign_groups(pred, cohort)[0] == "low"
    # d (9.5 < 10) low, e high; a tie with the threshold (c: 0.0, f: 10.0) goes to the lower group
    assert list(groups) == ["high", "low", "low", "low", "high", "low"]


def test_cutoff_thresholds_equal_numpy_quantiles():
    df, train = _cohort()
    cut = training_cutoffs(train, "tertiles")
    for f in range(3):
        np.testing.assert_allclose(cut[f], np.quantile(train.risk[train.fold == f], [1 / 3, 2 / 3]))
    # a patient scored by the mean of the fold models: the rule on every fold's training risks
    np.testing.assert_allclose(cut[-1], np.quantile(train.risk, [1 / 3, 2 / 3]))
    assert -1 not in cut.thresholds  # not a fold of its own in the exported thresholds
    mean_row = df.iloc[:1].assign(fold=-1, risk=float(np.quantile(train.risk, 0.9)))
    assert assign_groups(mean_row, cut).tolist() == ["high"]
    absolute = training_cutoffs(train, CutoffRule.thresholds([0.0]))
    assert absolute.source == "absolute"
    assert (assign_groups(df, absolute) == np.where(df.risk > 0, "high", "low")).all()


def test_cutoff_errors():
    df, train = _cohort()
    with pytest.raises(DataError, match="cutoffs_from='cohort'"):
        compute_cutoffs("median", train_risks=None, pred_df=df)
    assert compute_cutoffs("median", pred_df=df, cutoffs_from="cohort").source == "cohort"
    with pytest.raises(DataError, match="fold 2"):
        assign_groups(df, training_cutoffs(train[train.fold != 2], "median"))
    bad = train.copy()
    bad.loc[5, "risk"] = np.nan
    with pytest.raises(DataError, match="NaN"):
        training_cutoffs(bad, "median")
    bad = df.copy()
    bad.loc[0, "risk"] = np.nan
    with pytest.raises(DataError, match="P0"):
        assign_groups(bad, training_cutoffs(train, "median"))


# ------------------------------------------------------------------------------ against lifelines
def test_km_logrank_hr_median_match_lifelines():
    df, train = _cohort()
    cut = training_cutoffs(train, "median")
    res = stratify(df, assign_groups(df, cut), cutoffs=cut)
    assert res.group_names == ["low", "high"] and res.cutoff_source == "training"
    e = 1 - df.censorship
    g = res.data["group"].astype(str).to_numpy()
    for name in ("low", "high"):
        sel = g == name
        kmf = KaplanMeierFitter().fit(df.time[sel], e[sel])
        s = res.group(name)
        np.testing.assert_allclose(s.km["survival"], kmf.survival_function_.iloc[:, 0])
        np.testing.assert_allclose(s.km["ci_lower"], kmf.confidence_interval_.iloc[:, 0])
        np.testing.assert_allclose(s.km["ci_upper"], kmf.confidence_interval_.iloc[:, 1])
        assert s.median_survival == kmf.median_survival_time_
        med_ci = median_survival_times(kmf.confidence_interval_)
        assert s.median_ci.lower == med_ci.iloc[0, 0]
        assert s.n == sel.sum() and s.events == e[sel].sum()
        np.testing.assert_array_equal(s.censor_times, np.sort(df.time[sel & (e == 0)]))
    lr = logrank_test(df.time[g == "low"], df.time[g == "high"], e[g == "low"], e[g == "high"])
    assert res.logrank.p_value == pytest.approx(lr.p_value) and res.logrank.dof == 1
    assert res.pairwise_logrank is None
    cph = CoxPHFitter().fit(
        pd.DataFrame({"t": df.time, "e": e, "high": (g == "high").astype(float)}), "t", "e"
    )
    hr = res.hazard_ratio.primary
    assert (hr.group, hr.reference) == ("high", "low")
    assert hr.hr == pytest.approx(cph.hazard_ratios_["high"])
    np.testing.assert_allclose([hr.ci_lower, hr.ci_upper], np.exp(cph.confidence_intervals_.loc["high"]))
    assert hr.p_value == pytest.approx(cph.summary.loc["high", "p"])
    assert hr.hr > 1 and res.logrank.p_value < 0.05
    # the t-test: Welch on event times of patients with an event, high vs low
    d = res.data
    a = d.time[(d.group == "low") & (d.event == 1)]
    b = d.time[(d.group == "high") & (d.event == 1)]
    assert res.ttest.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert res.ttest.n_a == a.size and res.ttest.mean_b < res.ttest.mean_a


def _holm_by_hand(p):
    """Holm's step-down: the k-th smallest p times (m - k + 1), made monotone, capped at 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    out, running = np.empty(p.size), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (p.size - k) * p[i]))
        out[i] = running
    return out


def test_holm_hand_worked_example():
    from deref.stratify import _holm

    # sorted 0.01, 0.03, 0.04 -> x3 = 0.03, x2 = 0.06, x1 = 0.04 -> raised to 0.06 (monotone)
    np.testing.assert_allclose(_holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(_holm(np.array([0.5, 0.2, 0.01, 0.3])), [0.6, 0.6, 0.04, 0.6])
    np.testing.assert_allclose(_holm(np.array([0.6, 0.9])), [1.0, 1.0])  # capped at 1


def test_three_groups_pairwise_and_hr_against_lowest():
    df, train = _cohort(seed=1)
    cut = training_cutoffs(train, "tertiles")
    res = stratify(df, assign_groups(df, cut), cutoffs=cut)
    g = res.data["group"].astype(str).to_numpy()
    e = 1 - df.censorship.to_numpy()
    mv = multivariate_logrank_test(df.time, g, e)
    assert res.logrank.statistic == pytest.approx(mv.test_statistic) and res.logrank.dof == 2
    pw = pairwise_logrank_test(df.time, g, e).summary
    row = res.pairwise_logrank.set_index(["group_a", "group_b"]).loc[("low", "high")]
    assert row.p_value == pytest.approx(pw.loc[("high", "low"), "p"])
    assert len(res.pairwise_logrank) == 3
    np.testing.assert_allclose(res.pairwise_logrank.p_holm, _holm_by_hand(res.pairwise_logrank.p_value))
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    np.testing.assert_allclose(
        res.pairwise_logrank.p_holm, multipletests(res.pairwise_logrank.p_value, method="holm")[1]
    )
    X = pd.DataFrame({"t": df.time, "e": e, "i": (g == "intermediate") * 1.0, "h": (g == "high") * 1.0})
    cph = CoxPHFitter().fit(X, "t", "e")
    comps = {c.group: c for c in res.hazard_ratio.comparisons}
    assert comps["high"].hr == pytest.approx(cph.hazard_ratios_["h"])
    assert comps["intermediate"].hr == pytest.approx(cph.hazard_ratios_["i"])
    assert res.hazard_ratio.primary.group == "high"
    idx = pd.DataFrame(
        {"t": df.time, "e": e, "k": pd.Categorical(g, ["low", "intermediate", "high"]).codes * 1.0}
    )
    assert res.hazard_ratio.trend.hr == pytest.approx(CoxPHFitter().fit(idx, "t", "e").hazard_ratios_["k"])


def _lifelines_at_risk_labels(fitters, ticks):
    """Numbers at risk as lifelines' add_at_risk_counts prints them under the axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        for f in fitters:
            f.plot_survival_function(ax=ax)
        ax.set_xlim(-1, max(ticks) + 1)
        add_at_risk_counts(*fitters, ax=ax, xticks=list(ticks), rows_to_show=["At risk"])
        ax2 = [a for a in fig.axes if a is not ax][0]
        labels = [t.get_text() for t in ax2.get_xticklabels()]
    finally:
        plt.close(fig)
    out = []
    for lbl in labels:
        nums = [int(m) for m in re.findall(r"(?m)(\d+)\s*$", lbl)]
        out.append(nums[-len(fitters) :])
    return np.array(out).T  # (groups, ticks)


def test_at_risk_counts_match_lifelines():
    df, train = _cohort(seed=2)
    df.loc[:4, "time"] = 0.0  # events and censoring at time 0 and exactly at ticks
    df.loc[5:9, "time"] = 20.0
    cut = training_cutoffs(train, "median")
    ticks = np.array([0.0, 10.0, 20.0, 40.0, 60.0, 200.0])
    res = stratify(df, assign_groups(df, cut), cutoffs=cut, at_risk_times=ticks)
    g = res.data["group"].astype(str).to_numpy()
    e = 1 - df.censorship
    fitters = [KaplanMeierFitter(label=n).fit(df.time[g == n], e[g == n]) for n in res.group_names]
    expected = _lifelines_at_risk_labels(fitters, ticks)
    np.testing.assert_array_equal(res.at_risk_wide().to_numpy(), expected)
    # the convention in words: still followed after t, i.e. #{T > t}
    low_t = df.time[g == "low"].to_numpy()
    assert list(res.at_risk_wide().loc["low"]) == [int((low_t > t).sum()) for t in ticks]
    # events and censored are cumulative up to and including t
    ar = at_risk_counts(fitters[0], [20.0])
    assert ar.events[0] == int(((low_t <= 20) & (e[g == "low"] == 1)).sum())


def test_nice_ticks():
    np.testing.assert_allclose(nice_ticks(120.0), [0, 25, 50, 75, 100])
    np.testing.assert_allclose(nice_ticks(10.0), [0, 2, 4, 6, 8, 10])
    assert nice_ticks(0.0).tolist() == [0.0]


# ------------------------------------------------------------------------------ edge cases
def test_group_without_events_is_reported_not_crashed():
    df, train = _cohort(seed=3)
    cut = training_cutoffs(train, "median")
    groups = assign_groups(df, cut)
    df.loc[(groups == "low").to_numpy(), "censorship"] = 1
    res = stratify(df, groups, cutoffs=cut)
    low = res.group("low")
    assert low.events == 0 and (low.km["survival"] == 1.0).all() and low.median_survival is None
    assert low.median_ci.upper is None
    assert not res.hazard_ratio.estimable
    assert res.hazard_ratio.reason == "no events in group 'low'"
    assert res.logrank.estimable and res.logrank.p_value < 0.05  # the log-rank test stays valid
    assert "no events in group 'low'" in res.notes


def test_no_events_at_all_marks_logrank_not_estimable():
    df, train = _cohort(seed=4)
    df["censorship"] = 1
    cut = training_cutoffs(train, "median")
    res = stratify(df, assign_groups(df, cut), cutoffs=cut)
    assert not res.logrank.estimable and res.logrank.reason == "no events in the cohort"
    assert np.isnan(res.logrank.p_value) and not res.ttest.estimable


def test_stratify_input_errors():
    df, train = _cohort(seed=5)
    cut = training_cutoffs(train, "median")
    groups = assign_groups(df, cut)
    bad = df.copy()
    bad.loc[7, "time"] = -1.0
    with pytest.raises(DataError, match="negative survival time.*P7"):
        stratify(bad, groups, cutoffs=cut)
    with pytest.raises(DataError, match=r"\['high'\] have no patients"):
        stratify(
            df, pd.Series(pd.Categorical(["low"] * len(df), ["low", "high"], ordered=True), index=df.index)
        )
    bad = df.copy()
    bad.loc[3, "risk"] = np.nan
    with pytest.raises(DataError, match="NaN"):
        stratify(bad, groups)
    with pytest.raises(DataError, match="censorship"):
        stratify(df.drop(columns="censorship"), groups)
