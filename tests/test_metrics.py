"""deref.metrics against lifelines, hand-computed values and (for input handling) scikit-survival."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

from deref.errors import DataError
from deref.metrics import (
    ConcordanceResult,
    calibration,
    evaluate_predictions,
    harrell_c,
    integrated_brier,
    percentile,
    survival_at_times,
    time_dependent_auc,
    uno_c,
)


def _y(event, time):
    y = np.empty(len(time), dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = np.asarray(event, bool), np.asarray(time, float)
    return y


def _cohort(n, seed, k=4, folds=3):
    """A run's predictions.csv, train_risks.csv and per-fold bin edges (risk predicts time)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(30 * np.exp(-0.8 * x))
    t_c = rng.uniform(5, 100, n)
    time = np.round(np.minimum(t_ev, t_c), 1) + 0.1
    cens = (t_ev > t_c).astype(int)
    risk = x + rng.normal(scale=0.6, size=n)
    df = pd.DataFrame(
        {
            "case_id": [f"C{i}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "time": time,
            "censorship": cens,
            "risk": risk,
        }
    )
    h = 1 / (1 + np.exp(-(risk[:, None] - 1.0 + 0.1 * np.arange(k))))
    surv = np.cumprod(1 - h, axis=1)
    for j in range(k):
        df[f"surv_{j}"] = surv[:, j]
    edges, train = {}, []
    for f in range(folds):
        tr = df[df.fold != f]
        e = np.quantile(tr.time[tr.censorship == 0], np.linspace(0, 1, k + 1))
        e[0], e[-1] = 0.0, df.time.max() + 1.0
        edges[f] = e.tolist()
        train.append(pd.DataFrame({"fold": f, "case_id": tr.case_id, "risk": tr.risk}))
    return df, pd.concat(train, ignore_index=True), edges


# ------------------------------------------------------------------------------ Harrell
@pytest.mark.parametrize("seed", range(6))
def test_harrell_matches_lifelines_with_ties_and_censoring(seed):
    rng = np.random.default_rng(seed)
    n = 80
    time = rng.integers(1, 12, n).astype(float)  # many tied times
    event = (rng.random(n) < 0.55).astype(int)
    risk = rng.integers(0, 5, n).astype(float)  # many tied risks
    res = harrell_c(time, event, risk)
    assert isinstance(res, ConcordanceResult)
    # lifelines wants "higher = longer survival": the sign flips
    assert res.cindex == pytest.approx(concordance_index(time, -risk, event), abs=1e-12)
    assert res.cindex == pytest.approx(concordance_index_censored(event.astype(bool), time, risk)[0])
    assert res.tied_risk > 0 and res.n == n and res.method == "harrell"
    assert res.cindex == pytest.approx(
        (res.concordant + 0.5 * res.tied_risk) / (res.concordant + res.discordant + res.tied_risk)
    )


def test_harrell_perfect_and_reversed():
    time = np.arange(1.0, 21.0)
    event = np.ones(20)
    assert harrell_c(time, event, -time).cindex == 1.0
    assert harrell_c(time, event, time).cindex == 0.0


def test_harrell_all_censored_raises_not_zero():
    with pytest.raises(DataError, match="not defined"):
        harrell_c([1.0, 2.0, 3.0], [0, 0, 0], [0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    ("time", "event", "risk", "match"),
    [
        ([1.0, -2.0], [1, 0], [0.1, 0.2], "negative"),
        ([1.0, 2.0], [1, 0], [0.1, np.nan], "NaN"),
        ([1.0, 2.0], [1, 2], [0.1, 0.2], "must be 0 or 1"),
        ([1.0, 2.0, 3.0], [1, 0], [0.1, 0.2, 0.3], "event has 2"),
    ],
)
def test_harrell_rejects_bad_input(time, event, risk, match):
    with pytest.raises(DataError, match=match):
        harrell_c(time, event, risk)


# ------------------------------------------------------------------------------ Uno / AUC / IBS
def test_uno_default_tau_is_the_training_followup():
    df, _, _ = _cohort(120, seed=1)
    tr, te = df.iloc[:80], df.iloc[80:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    default = uno_c(tr.time, tr_e, te.time, te_e, te.risk)
    assert default.tau == pytest.approx(tr.time.max()) and default.method == "uno"
    explicit = uno_c(tr.time, tr_e, te.time, te_e, te.risk, tau=float(tr.time.max()))
    assert default.cindex == explicit.cindex
    tau = float(np.percentile(tr.time, 80))
    shorter = uno_c(tr.time, tr_e, te.time, te_e, te.risk, tau=tau)
    assert shorter.tau == tau and shorter.cindex != default.cindex  # truncation changes the pairs


def _uno_by_hand(t, e, r, tau):
    """Uno's C when the censoring weights are all 1 (an uncensored training sample): the share
    of concordant pairs (ties in risk count half) among pairs with an event before tau."""
    num = den = 0.0
    for i in range(t.size):
        if not e[i] or t[i] >= tau:
            continue
        for j in range(t.size):
            if t[j] > t[i]:
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def test_uno_against_a_hand_computed_pair_count():
    # no censoring among the training patients: G(t) = 1, so each comparable pair weighs 1
    tr_t, tr_e = np.arange(1.0, 21.0), np.ones(20, int)
    t = np.array([2.0, 3.5, 5.0, 7.0, 8.0, 11.0, 13.0, 15.5])
    e = np.array([1, 0, 1, 1, 0, 1, 1, 0])
    r = np.array([0.9, 0.1, 0.7, 0.8, 0.3, 0.3, 0.2, 0.0])
    for tau in (20.0, 10.0):
        res = uno_c(tr_t, tr_e, t, e, r, tau=tau)
        assert res.cindex == pytest.approx(_uno_by_hand(t, e, r, tau), abs=1e-12)
    # by hand for tau = 10: events at 2, 5, 7 -> 7 + 5 + 4 = 16 pairs, of which
    # 2: all 7 concordant; 5 (0.7): 4 of 5 (7.0 has 0.8); 7 (0.8): all 4 -> 15/16
    assert uno_c(tr_t, tr_e, t, e, r, tau=10.0).cindex == pytest.approx(15 / 16)


def test_uno_with_test_patient_beyond_training_followup():
    # sksurv raises for a test event past the training follow-up unless truncated; tau does it
    tr_t, tr_e = np.array([2.0, 4.0, 6.0, 8.0, 10.0]), np.array([1, 0, 1, 0, 1])
    t, e, r = np.array([1.0, 3.0, 5.0, 12.0]), np.array([1, 1, 0, 1]), np.array([4.0, 3.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        concordance_index_ipcw(_y(tr_e, tr_t), _y(e, t), r)
    assert uno_c(tr_t, tr_e, t, e, r).cindex == pytest.approx(1.0)


def test_uno_perfect_and_reversed():
    rng = np.random.default_rng(3)
    t = rng.permutation(np.arange(1.0, 41.0))
    e = (rng.random(40) < 0.7).astype(int)
    assert uno_c(t, e, t, e, -t).cindex == pytest.approx(1.0)
    assert uno_c(t, e, t, e, t).cindex == pytest.approx(0.0)


def test_time_dependent_auc_against_a_hand_computed_example():
    # uncensored training patients: IPCW weights 1, so AUC(t) is the share of (case, control)
    # pairs ordered by risk, cases = events by t, controls = still event-free after t
    tr_t, tr_e = np.arange(1.0, 21.0), np.ones(20, int)
    t = np.array([2.0, 3.0, 5.0, 6.0, 9.0, 12.0, 14.0, 16.0])
    e = np.array([1, 0, 1, 1, 1, 0, 1, 0])
    r = np.array([0.9, 0.5, 0.4, 0.8, 0.6, 0.3, 0.7, 0.1])
    res = time_dependent_auc(tr_t, tr_e, t, e, r, [4.0, 10.0])
    # t = 4: case {2.0: 0.9}; controls 5..16 -> 0.9 beats all 6 -> 1
    # t = 10: cases {0.9, 0.4, 0.8, 0.6}; controls {12: 0.3, 14: 0.7, 16: 0.1}
    #   0.9: 3, 0.4: 2, 0.8: 3, 0.6: 2 -> 10 of 12
    np.testing.assert_allclose(res.auc, [1.0, 10 / 12])
    assert res.times.tolist() == [4.0, 10.0]
    assert min(res.auc) <= res.mean_auc <= max(res.auc)


def test_time_dependent_auc_default_times():
    df, _, _ = _cohort(150, seed=2)
    tr, te = df.iloc[:100], df.iloc[100:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    res = time_dependent_auc(tr.time, tr_e, te.time, te_e, te.risk)
    assert res.times.size >= 2 and np.all(res.times < tr.time.max())
    assert 0.5 < res.mean_auc < 1.0  # risk carries signal in the synthetic cohort


def test_survival_step_convention():
    surv = np.array([[0.9, 0.7, 0.4], [0.8, 0.5, 0.1]])
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    # S(t) = 1 before the first bin end, S_k from the end of bin k on (right-continuous)
    got = survival_at_times(surv, edges, [0.0, 9.99, 10.0, 15.0, 20.0, 29.0, 30.0, 99.0])
    np.testing.assert_allclose(got[0], [1, 1, 0.9, 0.9, 0.7, 0.7, 0.4, 0.4])
    per_patient = survival_at_times(surv, np.stack([edges, edges + 5]), [10.0, 15.0])
    np.testing.assert_allclose(per_patient, [[0.9, 0.9], [1.0, 0.8]])
    with pytest.raises(DataError, match="bin edges"):
        survival_at_times(surv, edges[:3], [1.0])


def test_integrated_brier_against_a_hand_computed_example():
    # training patients all uncensored: G(t) = 1 below their largest time (8), so
    # BS(t) = mean_i [ S_i(t)^2 if T_i <= t and an event, (1 - S_i(t))^2 if T_i > t, else 0 ]
    t = np.array([2.0, 4.0, 6.0, 8.0, 4.5])
    e = np.array([1, 1, 1, 1, 0])
    surv = np.array([[0.5, 0.2, 0.1], [0.8, 0.4, 0.2], [0.9, 0.6, 0.3], [0.9, 0.8, 0.5], [0.7, 0.5, 0.3]])
    edges = [0.0, 4.0, 6.0, 10.0]  # S(3) = 1, S(5) = surv_0, S(7) = surv_1
    res = integrated_brier(t[:4], e[:4], t, e, surv, edges, [3.0, 5.0, 7.0])
    bs3 = (1.0**2) / 5  # only patient 1 has had its event
    bs5 = (0.5**2 + 0.8**2 + 0.1**2 + 0.1**2 + 0) / 5  # patient 5 censored at 4.5: no term
    bs7 = (0.2**2 + 0.4**2 + 0.6**2 + 0.2**2 + 0) / 5
    assert (bs3, bs5, bs7) == pytest.approx((0.2, 0.182, 0.12))
    ibs = (2 * (bs3 + bs5) / 2 + 2 * (bs5 + bs7) / 2) / (7.0 - 3.0)
    assert res.ibs == pytest.approx(ibs, abs=1e-12) and res.ibs == pytest.approx(0.171)
    np.testing.assert_allclose(res.survival[:, 1], surv[:, 0])


def test_integrated_brier_oracle_and_errors():
    df, _, edges = _cohort(150, seed=4)
    tr, te = df.iloc[:100], df.iloc[100:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    sc = [f"surv_{j}" for j in range(4)]
    res = integrated_brier(tr.time, tr_e, te.time, te_e, te[sc], edges[0], np.linspace(3, 30, 10))
    assert 0 < res.ibs < 0.5
    # an oracle whose single bin ends at each patient's own event time scores 0
    t = np.arange(1.0, 31.0)
    oracle_edges = np.stack([[0.0, ti, ti + 100.0] for ti in t])
    oracle = np.tile([0.0, 0.0], (t.size, 1))
    ev = np.ones(t.size, int)
    assert integrated_brier(t, ev, t, ev, oracle, oracle_edges, [2.0, 10.0, 20.0]).ibs == pytest.approx(0.0)
    with pytest.raises(DataError, match="two evaluation times"):
        integrated_brier(tr.time, tr_e, te.time, te_e, te[sc], edges[0], [5.0])


# ------------------------------------------------------------------------------ a run
def test_evaluate_predictions_per_fold_uses_fold_training_patients():
    df, train, edges = _cohort(180, seed=5)
    rep = evaluate_predictions(df, train, edges)
    assert [f.fold for f in rep.folds] == [0, 1, 2]
    for fm in rep.folds:
        test = df[df.fold == fm.fold]
        e = 1 - test.censorship
        assert fm.harrell == pytest.approx(harrell_c(test.time, e, test.risk).cindex)
        tr = df[df.fold != fm.fold]  # the fold's training patients
        assert fm.uno == pytest.approx(uno_c(tr.time, 1 - tr.censorship, test.time, e, test.risk).cindex)
        assert fm.n == len(test) and fm.events == int(e.sum()) and not fm.errors
        assert np.isfinite([fm.td_auc, fm.ibs]).all()
    assert rep.mean["harrell"] == pytest.approx(np.mean([f.harrell for f in rep.folds]))
    assert rep.std["uno"] == pytest.approx(np.std([f.uno for f in rep.folds], ddof=1))
    assert rep.pooled.harrell == pytest.approx(harrell_c(df.time, 1 - df.censorship, df.risk).cindex)
    assert rep.pooled.harrell > 0.6  # risk carries signal in the synthetic cohort
    frame = rep.to_frame()
    assert list(frame.fold) == [0, 1, 2, "pooled", "mean", "std"]
    from deref.model import ModelConfig
    from deref.runs import FoldInfo, RunInfo

    folds = tuple(FoldInfo(index=f, bin_edges=tuple(e)) for f, e in edges.items())
    from_run = RunInfo(name="t", model=ModelConfig(), folds=folds).bin_edges()
    assert evaluate_predictions(df, train, from_run).folds[2].ibs == rep.folds[2].ibs
    # patients scored by the mean of the fold models (fold -1) use the folds' mean edges
    np.testing.assert_allclose(from_run[-1], np.mean([edges[f] for f in (0, 1, 2)], axis=0))
    mixed = df.assign(fold=np.where(df.index % 4 == 0, -1, df.fold))
    rep_mixed = evaluate_predictions(mixed, None, from_run)
    assert [f.fold for f in rep_mixed.folds] == [-1, 0, 1, 2] and np.isfinite(rep_mixed.pooled.ibs)
    # without training patients: the pooled cohort is the IPCW sample, Harrell unchanged
    rep2 = evaluate_predictions(df, None, edges)
    assert rep2.folds[0].ipcw_source == "pooled cohort"
    assert rep2.folds[0].harrell == rep.folds[0].harrell


def test_evaluate_predictions_records_reason_instead_of_zero():
    df, train, edges = _cohort(90, seed=6)
    df.loc[df.fold == 1, "censorship"] = 1  # fold 1: no events
    rep = evaluate_predictions(df, train, edges)
    f1 = rep.folds[1]
    assert np.isnan(f1.harrell) and "harrell" in f1.errors and f1.events == 0
    assert np.isnan(f1.uno) and "uno" in f1.errors
    assert rep.n_folds["harrell"] == 2
    with pytest.raises(DataError, match="fold 1"):
        evaluate_predictions(df, train, edges, strict=True)


def test_evaluate_predictions_input_errors():
    df, train, edges = _cohort(60, seed=7)
    bad = df.copy()
    bad.loc[3, "risk"] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate_predictions(bad, train, edges)
    unknown = pd.concat([train, pd.DataFrame({"fold": [0], "case_id": ["nobody"], "risk": [0.0]})])
    with pytest.raises(DataError, match="nobody"):
        evaluate_predictions(df, unknown, edges)
    with pytest.raises(DataError, match="no 'risk' column"):
        evaluate_predictions(df.drop(columns="risk"), train, edges)
    with pytest.raises(DataError, match="no 'fold' column"):
        evaluate_predictions(df.drop(columns="fold"), train, edges)


# ------------------------------------------------------------------------------ dashboard helpers
def test_percentile_hand_worked():
    cohort = np.array([1.0, 2.0, 3.0, 4.0, np.nan])  # the NaN is not part of the cohort
    got = percentile([0.5, 2.0, 2.5, 4.0, np.nan, 3.0], cohort)
    np.testing.assert_array_equal(got, [0.0, 50.0, 50.0, 100.0, np.nan, 75.0])
    # half up, not to even: 1/8 = 12.5% -> 13, 3/8 = 37.5% -> 38
    np.testing.assert_array_equal(percentile([1.0, 3.0], np.arange(1.0, 9.0)), [13.0, 38.0])
    assert np.isnan(percentile([1.0], np.array([np.nan]))).all()


def _calibration_frame():
    """80 patients in 4 blocks of 20 whose S(15) is 0.9, 0.7, 0.5, 0.3: the quantile groups of
    S(t) are exactly the blocks. Folds 0 and 1 have different bins; fold -1 (mean of the fold
    models) uses the mean edges, so S(15) is read from another column per fold."""
    rng = np.random.default_rng(11)
    n = 80
    block = np.arange(n) // 20
    value = np.array([0.9, 0.7, 0.5, 0.3])[block]
    fold = np.arange(n) % 3 - 1
    edges = {0: [0.0, 10.0, 20.0, 30.0], 1: [0.0, 5.0, 12.0, 40.0]}
    edges[-1] = list(np.mean([edges[0], edges[1]], axis=0))  # [0, 7.5, 16, 35]: S(15) = surv_0
    surv = np.where(
        (fold == 1)[:, None],
        np.stack([np.minimum(value + 0.05, 1), value, 0.5 * value], axis=1),  # S(15) = surv_1
        np.stack([value, 0.8 * value, 0.5 * value], axis=1),  # S(15) = surv_0
    )
    t_ev = rng.exponential(15 / (1.2 - value))
    t_c = rng.uniform(5, 60, n)
    df = pd.DataFrame(
        {
            "case_id": [f"K{i}" for i in range(n)],
            "fold": fold,
            "time": np.round(np.minimum(t_ev, t_c), 1) + 0.1,
            "censorship": (t_ev > t_c).astype(int),
        }
    )
    for j in range(3):
        df[f"surv_{j}"] = surv[:, j]
    return df, edges, block


def test_calibration_against_lifelines_kaplan_meier_per_group():
    df, edges, block = _calibration_frame()
    cal = calibration(df, edges, 15.0)
    assert list(cal.group) == ["Q1", "Q2", "Q3", "Q4"]  # highest predicted survival first
    np.testing.assert_allclose(cal.predicted, [0.9, 0.7, 0.5, 0.3])
    e = 1 - df.censorship.to_numpy()
    for b, row in cal.iterrows():
        sel = block == b
        kmf = KaplanMeierFitter().fit(df.time[sel], e[sel])
        ci = kmf.confidence_interval_
        band = ci[ci.index <= 15.0].iloc[-1]
        assert row.n == 20 and row.events == e[sel].sum()
        assert row.observed == pytest.approx(float(kmf.predict(15.0)))
        assert row.observed_lower == pytest.approx(band.iloc[0])
        assert row.observed_upper == pytest.approx(band.iloc[1])
    with pytest.raises(DataError, match="surv_0"):
        calibration(df.drop(columns=["surv_0", "surv_1", "surv_2"]), edges, 15.0)
    with pytest.raises(DataError, match="no bin edges for fold -1"):
        calibration(df, {0: edges[0], 1: edges[1]}, 15.0)


def test_calibration_reads_the_interpolated_curves_when_the_horizons_are_known():
    df, edges, block = _calibration_frame()
    # S(15) by hand with a constant hazard inside each fold's bin holding t = 15
    factor = {0: 0.8**0.5, 1: 0.5 ** (3 / 28), -1: 0.8 ** (7.5 / 8.5)}  # bins 10-20, 12-40, 7.5-16
    s15 = np.array([0.9, 0.7, 0.5, 0.3])[block] * df["fold"].map(factor).to_numpy()
    cal = calibration(df, edges, 15.0, horizons={0: 50.0, 1: 50.0, -1: 50.0})
    assert cal.attrs["curve"] == "interpolated"
    np.testing.assert_allclose(cal.predicted, [s15[block == b].mean() for b in range(4)])
    # a fold without a horizon: the step curves, said so
    steps = calibration(df, edges, 15.0, horizons={0: 50.0})
    assert steps.attrs["curve"] == "step"
    np.testing.assert_allclose(steps.predicted, [0.9, 0.7, 0.5, 0.3])


def test_calibration_with_tied_predictions_makes_fewer_groups_and_says_so():
    # a saturated model: 30 of 40 patients predicted S(15) = 1 exactly, 10 spread below it
    rng = np.random.default_rng(12)
    n = 40
    s15 = np.concatenate([np.ones(30), np.linspace(0.2, 0.8, 10)])
    df = pd.DataFrame(
        {
            "case_id": [f"T{i}" for i in range(n)],
            "fold": 0,
            "time": rng.uniform(1, 40, n).round(1),
            "censorship": (rng.random(n) < 0.4).astype(int),
            "surv_0": s15,
            "surv_1": s15 * 0.5,
        }
    )
    edges = {0: [0.0, 10.0, np.inf]}  # S(15) = surv_0
    cal = calibration(df, edges, 15.0, n_groups=4)  # quartiles (and tertiles) of S(15) tie at 1
    assert cal.attrs["n_groups_requested"] == 4 and cal.attrs["n_groups"] == 2
    assert "2 groups instead of 4" in cal.attrs["note"] and "11 distinct" in cal.attrs["note"]
    assert list(cal.group) == ["low", "high"] and list(cal.n) == [30, 10]
    np.testing.assert_allclose(cal.predicted, [1.0, s15[30:].mean()])
    e = 1 - df.censorship.to_numpy()
    kmf = KaplanMeierFitter().fit(df.time[30:], e[30:])
    assert cal.observed.iloc[1] == pytest.approx(float(kmf.predict(15.0)))
    assert calibration(df, edges, 15.0, n_groups=2).attrs["note"] == ""
    # every prediction tied: one group of everyone
    flat = df.assign(surv_0=0.7, surv_1=0.3)
    one = calibration(flat, edges, 15.0, n_groups=3)
    assert list(one.group) == ["all"] and one.n.iloc[0] == n and one.attrs["n_groups"] == 1
    assert "1 group instead of 3" in one.attrs["note"]
    assert one.observed.iloc[0] == pytest.approx(float(KaplanMeierFitter().fit(df.time, e).predict(15.0)))
