"""deref.calibration (interpolated curves, KM null, Brier terms, D-calibration) and the IBS-vs-null
figures of deref.metrics, against hand-worked values, lifelines, scipy and scikit-survival."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from scipy.stats import chisquare
from sksurv.metrics import integrated_brier_score

from deref.calibration import (
    bootstrap_mean_ci,
    brier_contributions,
    d_calibration,
    interpolate_survival,
    kaplan_meier_curve,
    survival_at_own_time,
)
from deref.errors import DataError
from deref.metrics import (
    evaluate_predictions,
    ibs_versus_null,
    integrated_brier,
    null_ibs,
    survival_at_times,
)


def _y(event, time):
    y = np.empty(len(time), dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = np.asarray(event, bool), np.asarray(time, float)
    return y


def _const_hazard_by_np_interp(surv, edges, times):
    """An independent constant-hazard curve: the cumulative hazard -log S is linear between the
    edges (np.interp), S = exp(-H); flat after the last edge. Rows must have S > 0."""
    out = []
    for s, e in zip(surv, np.broadcast_to(edges, (len(surv), len(edges)))):
        cum_h = np.concatenate([[0.0], -np.log(s)])
        out.append(np.exp(-np.interp(times, e, cum_h)))
    return np.array(out)


def _sample(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(20 * np.exp(-0.7 * x))
    t_c = rng.uniform(2, 60, n)
    time = np.round(np.minimum(t_ev, t_c), 1) + 0.1
    event = (t_ev <= t_c).astype(int)
    h = 1 / (1 + np.exp(-(x[:, None] - 1.2 + 0.3 * np.arange(4))))
    return time, event, np.cumprod(1 - h, axis=1)


# ------------------------------------------------------------------------------ interpolation
def test_interpolated_curve_is_monotone_and_equals_the_discrete_values_at_the_edges():
    rng = np.random.default_rng(0)
    n, k = 30, 4
    surv = np.cumprod(rng.uniform(0.3, 1.0, (n, k)), axis=1)
    surv[0] = [1.0, 1.0, 0.0, 0.0]  # saturated: no drop, then everything in one bin
    edges = np.stack([[0.0, 5 + i % 3, 12.0, 20.0 + i % 5, np.inf] for i in range(n)])
    horizon = 30.0
    grid = np.linspace(0, 40, 801)
    s = interpolate_survival(surv, edges, grid, horizon=horizon)
    assert s.shape == (n, grid.size)
    assert np.all(np.diff(s, axis=1) <= 1e-12), "curves must not increase"
    np.testing.assert_array_equal(s[:, 0], 1.0)  # S(0) = 1
    finite = edges.copy()
    finite[:, -1] = horizon
    for i in range(n):
        at_edges = interpolate_survival(surv[i : i + 1], finite[i], finite[i, 1:])
        np.testing.assert_allclose(at_edges[0], surv[i], atol=1e-12)
        # the step convention agrees at every bin end
        np.testing.assert_allclose(
            at_edges[0], survival_at_times(surv[i : i + 1], finite[i], finite[i, 1:])[0]
        )
    np.testing.assert_allclose(
        s[:, grid >= horizon], np.repeat(surv[:, -1:], (grid >= horizon).sum(), axis=1)
    )
    # inside the bins it is the constant-hazard curve (an independent np.interp of -log S)
    pos = surv[1:]
    ref = np.array([_const_hazard_by_np_interp(pos[i : i + 1], finite[i + 1], grid)[0] for i in range(n - 1)])
    np.testing.assert_allclose(s[1:], ref, rtol=1e-10)
    # the saturated row: 1 through bin 1, then 0 right after its end
    np.testing.assert_allclose(s[0, grid <= finite[0, 2]], 1.0)
    assert np.all(s[0, grid > finite[0, 2]] == 0.0)


def test_interpolated_curve_integrates_to_the_hand_restricted_mean():
    surv = np.array([[0.5, 0.25]])
    # bin [0, 2]: S = 0.5 ** (t / 2); bin [2, 4]: S = 0.5 * 0.5 ** ((t - 2) / 2); flat 0.25 after 4.
    # integral of a * r ** (t / w) over [0, w] is a * w * (r - 1) / ln r, so
    #   RMST(4) = 2 * 0.5 / ln 2 + 0.5 * 2 * 0.5 / ln 2 = 1.5 / ln 2 = 2.16404...
    #   RMST(6) = RMST(4) + 2 * 0.25 = 1.5 / ln 2 + 0.5
    rmst4, rmst6 = 1.5 / np.log(2), 1.5 / np.log(2) + 0.5
    for edges, horizon in (([0.0, 2.0, 4.0], None), ([0.0, 2.0, np.inf], 4.0)):
        grid = np.linspace(0, 6, 60001)
        s = interpolate_survival(surv, edges, grid, horizon=horizon)[0]
        assert np.trapezoid(s[grid <= 4], grid[grid <= 4]) == pytest.approx(rmst4, abs=1e-7)
        assert np.trapezoid(s, grid) == pytest.approx(rmst6, abs=1e-7)
        np.testing.assert_allclose(
            interpolate_survival(surv, edges, [1.0, 3.0], horizon=horizon)[0], [0.5**0.5, 0.5 * 0.5**0.5]
        )


def test_interpolation_errors_and_own_time():
    surv = np.array([[0.9, 0.6, 0.3], [0.8, 0.5, 0.2]])
    with pytest.raises(DataError, match="horizon"):
        interpolate_survival(surv, [0.0, 1.0, 2.0, np.inf], [1.0])
    with pytest.raises(DataError, match="increase strictly"):
        interpolate_survival(surv, [0.0, 1.0, 2.0, np.inf], [1.0], horizon=1.5)
    with pytest.raises(DataError, match="not increase"):
        interpolate_survival(np.array([[0.5, 0.7, 0.3]]), [0.0, 1.0, 2.0, 3.0], [1.0])
    with pytest.raises(DataError, match="bin edges"):
        interpolate_survival(surv, [0.0, 1.0, 2.0], [1.0])
    edges = np.array([[0.0, 1.0, 2.0, np.inf], [0.0, 2.0, 3.0, np.inf]])
    t = np.array([1.5, 4.0])
    own = survival_at_own_time(surv, edges, t, horizon=np.array([5.0, 6.0]))
    full = interpolate_survival(surv, edges, t, horizon=np.array([5.0, 6.0]))
    np.testing.assert_allclose(own, np.diag(full))
    assert own[0] == pytest.approx(0.9 * (0.6 / 0.9) ** 0.5)


# ------------------------------------------------------------------------------ KM, Brier terms
@pytest.mark.parametrize("seed", range(3))
def test_kaplan_meier_curve_matches_lifelines(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 15, 60).astype(float)  # tied times
    e = (rng.random(60) < 0.6).astype(int)
    q = np.array([0.0, 0.5, 1.0, 3.0, 7.5, 14.0, 20.0])
    kmf = KaplanMeierFitter().fit(t, e)
    np.testing.assert_allclose(kaplan_meier_curve(t, e, q), kmf.predict(q).to_numpy(), atol=1e-12)


def test_brier_contributions_average_to_sksurv_ibs():
    tr_t, tr_e, _ = _sample(120, 1)
    t, e, surv = _sample(60, 2)
    t = np.minimum(t, tr_t.max() - 0.5)  # inside the training follow-up, as deref.metrics makes sure
    times = np.linspace(3, 30, 12)
    s = _const_hazard_by_np_interp(surv, [0.0, 5.0, 10.0, 20.0, 40.0], times)
    terms = brier_contributions(tr_t, tr_e, t, e, s, times)
    assert terms.shape == (60,)
    assert terms.mean() == pytest.approx(
        integrated_brier_score(_y(tr_e, tr_t), _y(e, t), s, times), abs=1e-12
    )


def test_bootstrap_ci_is_seeded():
    v = np.random.default_rng(3).normal(0.2, 1.0, 200)
    a = bootstrap_mean_ci(v, n_boot=500, seed=7)
    assert a == bootstrap_mean_ci(v, n_boot=500, seed=7)
    assert a != bootstrap_mean_ci(v, n_boot=500, seed=8)
    assert a[0] < v.mean() < a[1]


# ------------------------------------------------------------------------------ IBS vs null
def test_interpolated_ibs_and_null_ibs_against_sksurv():
    tr_t, tr_e, _ = _sample(150, 4)
    t, e, surv = _sample(70, 5)
    edges = [0.0, 6.0, 12.0, 22.0, np.inf]
    times = np.linspace(2, 35, 15)
    horizon = float(tr_t.max())
    t_adm = np.where(t >= horizon, horizon, t)  # deref.metrics' administrative censoring
    e_adm = np.where(t >= horizon, 0, e)
    got = integrated_brier(tr_t, tr_e, t, e, surv, edges, times, interpolate=True)
    ref_s = _const_hazard_by_np_interp(surv, [0.0, 6.0, 12.0, 22.0, horizon], times)
    ref = integrated_brier_score(_y(tr_e, tr_t), _y(e_adm, t_adm), ref_s, times)
    assert got.ibs == pytest.approx(ref, abs=1e-12)
    step = integrated_brier(tr_t, tr_e, t, e, surv, edges, times)
    assert step.ibs != got.ibs  # today's default (steps) is a different number
    km = KaplanMeierFitter().fit(tr_t, tr_e).predict(times).to_numpy()
    null = null_ibs(tr_t, tr_e, t, e, times)
    ref_null = integrated_brier_score(_y(tr_e, tr_t), _y(e_adm, t_adm), np.tile(km, (t.size, 1)), times)
    assert null.ibs == pytest.approx(ref_null, abs=1e-12)
    vs = ibs_versus_null(tr_t, tr_e, t, e, surv, edges, times, interpolate=True, n_boot=400, seed=1)
    assert (vs.ibs, vs.ibs_null) == pytest.approx((got.ibs, null.ibs))
    assert vs.difference == pytest.approx(got.ibs - null.ibs)
    assert vs.ci_lower <= vs.difference <= vs.ci_upper and vs.curve == "interpolated"
    again = ibs_versus_null(tr_t, tr_e, t, e, surv, edges, times, interpolate=True, n_boot=400, seed=1)
    assert (again.ci_lower, again.ci_upper) == (vs.ci_lower, vs.ci_upper)


def test_the_null_curve_scores_zero_difference_against_itself():
    tr_t, tr_e, _ = _sample(100, 6)
    t, e, _ = _sample(50, 7)
    times = np.linspace(2, 30, 10)
    # a "model" whose single bin ends after the horizon and whose curve is flat 1 scores worse than KM
    flat = np.ones((t.size, 1))
    vs = ibs_versus_null(tr_t, tr_e, t, e, flat, [0.0, 1e6], times, n_boot=300)
    assert vs.difference > 0 and vs.ci_lower > 0


# ------------------------------------------------------------------------------ D-calibration
def test_d_calibration_against_a_hand_worked_histogram():
    # 4 bins of width 0.25 (bin 0 = [0, 0.25) ... bin 3 = [0.75, 1])
    s = np.array([0.1, 0.6, 0.8, 0.4])
    e = np.array([1, 1, 0, 0])
    # event 0.1 -> bin 0; event 0.6 -> bin 2
    # censored 0.8: bin 3 gets (0.8 - 0.75) / 0.8 = 0.0625, bins 0-2 get 0.25 / 0.8 = 0.3125 each
    # censored 0.4: bin 1 gets (0.4 - 0.25) / 0.4 = 0.375, bin 0 gets 0.25 / 0.4 = 0.625
    hand = np.array([1 + 0.3125 + 0.625, 0.3125 + 0.375, 1 + 0.3125, 0.0625])
    assert hand.sum() == pytest.approx(4.0)
    res = d_calibration(s, e, n_bins=4)
    np.testing.assert_allclose(res.histogram, hand)
    # chi-square against 1 per bin: 0.9375^2 + 0.3125^2 + 0.3125^2 + 0.9375^2
    assert res.statistic == pytest.approx(1.953125)
    ref = chisquare(hand)
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert (res.n, res.events, res.n_bins) == (4, 2, 4)


def test_d_calibration_edge_cases_and_uniform_curves():
    # censored at S = 1 spreads evenly; censored at S = 0 goes to the lowest bin; S = 1 event: top bin
    res = d_calibration([1.0, 0.0, 1.0], [0, 0, 1], n_bins=5)
    np.testing.assert_allclose(res.histogram, [0.2 + 1.0, 0.2, 0.2, 0.2, 0.2 + 1.0])
    # exactly uniform S(t_i) of events gives a flat histogram and p = 1
    u = (np.arange(100) + 0.5) / 100
    flat = d_calibration(u, np.ones(100), n_bins=10)
    np.testing.assert_allclose(flat.histogram, 10.0)
    assert flat.statistic == pytest.approx(0.0) and flat.p_value == pytest.approx(1.0)
    # all events at S = 0.95: maximally miscalibrated
    assert d_calibration(np.full(100, 0.95), np.ones(100)).p_value < 1e-10
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        d_calibration([1.2], [1])
    with pytest.raises(DataError, match="2 bins"):
        d_calibration([0.5], [1], n_bins=1)


# ------------------------------------------------------------------------------ a run's report
def _run(n=180, folds=3, seed=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(30 * np.exp(-0.8 * x))
    t_c = rng.uniform(5, 100, n)
    df = pd.DataFrame(
        {
            "case_id": [f"C{i}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "time": np.round(np.minimum(t_ev, t_c), 1) + 0.1,
            "censorship": (t_ev > t_c).astype(int),
            "risk": x,
        }
    )
    surv = np.cumprod(1 - 1 / (1 + np.exp(-(x[:, None] - 1.0 + 0.1 * np.arange(4)))), axis=1)
    for j in range(4):
        df[f"surv_{j}"] = surv[:, j]
    edges, train = {}, []
    for f in range(folds):
        tr = df[df.fold != f]
        e = np.quantile(tr.time[tr.censorship == 0], np.linspace(0, 1, 5))
        e[0], e[-1] = 0.0, np.inf  # as a run's bins (deref.data.preprocess.fit_bins)
        edges[f] = e.tolist()
        train.append(pd.DataFrame({"fold": f, "case_id": tr.case_id, "risk": tr.risk}))
    return df, pd.concat(train, ignore_index=True), edges


def _d_cal_by_loops(p, e, n_bins=10):
    """An independent D-calibration histogram: per patient, per bin."""
    hist = np.zeros(n_bins)
    for s, ev in zip(p, e):
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            inside = lo <= s < hi or (b == n_bins - 1 and s == 1.0)
            if ev:
                hist[b] += inside
            elif s > 0:
                hist[b] += (s - lo) / s if inside else (hi - lo) / s if hi <= s else 0.0
            else:
                hist[b] += b == 0
    return chisquare(hist).pvalue


def test_evaluate_predictions_reports_null_ibs_difference_and_d_calibration():
    df, train, edges = _run()
    rep = evaluate_predictions(df, train, edges, n_boot=300)
    sc = [f"surv_{j}" for j in range(4)]
    for fm in rep.folds:
        test, tr = df[df.fold == fm.fold], df[df.fold != fm.fold]
        te_e, tr_e = 1 - test.censorship, 1 - tr.censorship
        model = integrated_brier(tr.time, tr_e, test.time, te_e, test[sc], edges[fm.fold])
        assert fm.ibs == pytest.approx(model.ibs) and fm.curve == "step"  # today's default number
        assert fm.ibs_null == pytest.approx(null_ibs(tr.time, tr_e, test.time, te_e).ibs)
        assert fm.ibs_minus_null == pytest.approx(fm.ibs - fm.ibs_null)
        assert fm.ibs_minus_null_lower <= fm.ibs_minus_null <= fm.ibs_minus_null_upper
        own = survival_at_own_time(test[sc], edges[fm.fold], test.time, horizon=tr.time.max())
        assert fm.d_calibration_p == pytest.approx(_d_cal_by_loops(own, te_e.to_numpy()))
    assert rep.mean["ibs_minus_null"] == pytest.approx(np.mean([f.ibs_minus_null for f in rep.folds]))
    assert np.isfinite([rep.pooled.ibs_null, rep.pooled.ibs_minus_null, rep.pooled.d_calibration_p]).all()
    frame = rep.to_frame()
    for col in (
        "ibs_null",
        "ibs_minus_null",
        "ibs_minus_null_lower",
        "ibs_minus_null_upper",
        "d_calibration_p",
    ):
        assert col in frame.columns and frame[col].iloc[: len(rep.folds) + 1].notna().all()  # folds, pooled
    mean_row = frame[frame.fold == "mean"].iloc[0]
    assert mean_row.ibs_null == pytest.approx(rep.mean["ibs_null"]) and np.isfinite(mean_row.d_calibration_p)
    interp = evaluate_predictions(df, train, edges, interpolate=True, n_boot=300)
    for fm, fi in zip(rep.folds, interp.folds):
        test, tr = df[df.fold == fm.fold], df[df.fold != fm.fold]
        ref = integrated_brier(
            tr.time,
            1 - tr.censorship,
            test.time,
            1 - test.censorship,
            test[sc],
            edges[fm.fold],
            interpolate=True,
        )
        assert fi.curve == "interpolated" and fi.ibs == pytest.approx(ref.ibs)
        assert fi.ibs_null == pytest.approx(fm.ibs_null) and fi.d_calibration_p == pytest.approx(
            fm.d_calibration_p
        )
    # deterministic: the same call gives the same CI
    again = evaluate_predictions(df, train, edges, n_boot=300)
    assert again.folds[0].ibs_minus_null_lower == rep.folds[0].ibs_minus_null_lower
