"""deref.metrics against lifelines and direct scikit-survival calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)

from deref.errors import DataError
from deref.metrics import (
    ConcordanceResult,
    evaluate_predictions,
    harrell_c,
    integrated_brier,
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
        ([1.0, 2.0], [1, 2], [0.1, 0.2], "0/1"),
        ([1.0, 2.0, 3.0], [1, 0], [0.1, 0.2, 0.3], "event has 2"),
    ],
)
def test_harrell_rejects_bad_input(time, event, risk, match):
    with pytest.raises(DataError, match=match):
        harrell_c(time, event, risk)


# ------------------------------------------------------------------------------ Uno / AUC / IBS
def test_uno_matches_sksurv_and_default_tau():
    df, _, _ = _cohort(120, seed=1)
    tr, te = df.iloc[:80], df.iloc[80:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    tau = float(np.percentile(tr.time, 80))
    res = uno_c(tr.time, tr_e, te.time, te_e, te.risk, tau=tau)
    ref = concordance_index_ipcw(_y(tr_e, tr.time), _y(te_e, te.time), te.risk.to_numpy(), tau=tau)
    assert res.cindex == pytest.approx(ref[0]) and res.concordant == ref[1] and res.tau == tau
    default = uno_c(tr.time, tr_e, te.time, te_e, te.risk)
    assert default.tau == pytest.approx(tr.time.max())
    ref = concordance_index_ipcw(_y(tr_e, tr.time), _y(te_e, te.time), te.risk.to_numpy(), tau=tr.time.max())
    assert default.cindex == pytest.approx(ref[0]) and default.method == "uno"


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


def test_time_dependent_auc_matches_sksurv():
    df, _, _ = _cohort(150, seed=2)
    tr, te = df.iloc[:100], df.iloc[100:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    times = np.array([5.0, 10.0, 20.0])
    assert te.time.max() < tr.time.max()  # no truncation needed: compare to sksurv directly
    res = time_dependent_auc(tr.time, tr_e, te.time, te_e, te.risk, times)
    auc, mean_auc = cumulative_dynamic_auc(_y(tr_e, tr.time), _y(te_e, te.time), te.risk.to_numpy(), times)
    np.testing.assert_allclose(res.auc, auc)
    assert res.mean_auc == pytest.approx(mean_auc)
    assert time_dependent_auc(tr.time, tr_e, te.time, te_e, te.risk).times.size >= 2  # default times


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


def test_integrated_brier_matches_sksurv():
    df, _, edges = _cohort(150, seed=4)
    tr, te = df.iloc[:100], df.iloc[100:]
    tr_e, te_e = 1 - tr.censorship.to_numpy(), 1 - te.censorship.to_numpy()
    sc = [f"surv_{j}" for j in range(4)]
    times = np.linspace(3, 30, 10)
    res = integrated_brier(tr.time, tr_e, te.time, te_e, te[sc], edges[0], times)
    manual = survival_at_times(te[sc].to_numpy(), edges[0], times)
    ref = integrated_brier_score(_y(tr_e, tr.time), _y(te_e, te.time), manual, times)
    assert res.ibs == pytest.approx(ref)
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
    with pytest.raises(DataError, match="missing column"):
        evaluate_predictions(df.drop(columns="risk"), train, edges)
