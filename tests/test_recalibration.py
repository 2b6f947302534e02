"""deref.recalibration: the hazard maps recover planted miscalibration, fall back to the
Kaplan–Meier curve when the model carries no signal, and agree with independent fits."""

from __future__ import annotations

import numpy as np
import pytest

from deref.errors import ConfigError, DataError
from deref.recalibration import (
    Recalibration,
    discrete_nll,
    fit_recalibration,
    hazards_from_survival,
    person_bins,
    survival_from_hazards,
)
from deref.training import survival_nll


def _simulate(n: int, k: int, a: float, b: np.ndarray, seed: int = 0):
    """Model logits z (n, K) and outcomes drawn from the true hazards sigmoid(a z + b_k):
    returns the model's (miscalibrated) hazards sigmoid(z), the bins and the censorship."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, 1)) + rng.normal(0.0, 0.5, (n, k))
    true_h = 1 / (1 + np.exp(-(a * z + b)))
    event_bin = np.full(n, k)  # k = survived every bin
    for i in range(n):
        hits = np.flatnonzero(rng.random(k) < true_h[i])
        if hits.size:
            event_bin[i] = hits[0]
    # independent censoring: a censoring bin drawn uniformly, applied when before the event
    cens_bin = rng.integers(0, k + 1, n)
    censored = (cens_bin < event_bin) | (event_bin == k)
    bins = np.where(censored, np.minimum(cens_bin, k - 1), event_bin)
    return 1 / (1 + np.exp(-z)), bins, censored.astype(int)


def test_person_bins_by_hand():
    rows, cols, y = person_bins([2, 0, 1], [0, 1, 1], 3)
    assert rows.tolist() == [0, 0, 0, 1, 2, 2]
    assert cols.tolist() == [0, 1, 2, 0, 0, 1]
    assert y.tolist() == [0, 0, 1, 0, 0, 0]  # only the event of patient 0 in its bin 2
    with pytest.raises(DataError, match="0..2"):
        person_bins([3], [0], 3)


def test_discrete_nll_matches_the_training_loss_on_curves():
    rng = np.random.default_rng(1)
    h = rng.uniform(0.05, 0.9, (50, 4))
    bins, cens = rng.integers(0, 4, 50), rng.integers(0, 2, 50)
    surv = survival_from_hazards(h)
    assert discrete_nll(h, bins, cens) == pytest.approx(survival_nll(surv, bins, cens), rel=1e-9)
    np.testing.assert_allclose(hazards_from_survival(surv), h, atol=1e-12)


@pytest.mark.parametrize("kind", ["temperature", "affine"])
def test_parametric_maps_recover_planted_miscalibration(kind):
    b = np.array([-1.0, -0.5, 0.0, 0.5]) if kind == "affine" else np.zeros(4)
    h, bins, cens = _simulate(6000, 4, a=0.4, b=b, seed=2)
    r = fit_recalibration(kind, h, bins, cens, ridge=1e-3)
    assert r.params["scale"] == pytest.approx(0.4, abs=0.05)
    assert r.temperature == pytest.approx(2.5, rel=0.15)
    if kind == "affine":
        np.testing.assert_allclose(r.params["shift"], b, atol=0.15)
    assert r.nll_after < r.nll_before
    assert r.n_patients == 6000 and r.n_events == int((cens == 0).sum())


def test_an_identity_map_changes_nothing_and_a_calibrated_model_is_left_near_identity():
    h, bins, cens = _simulate(6000, 4, a=1.0, b=np.zeros(4), seed=3)
    r = fit_recalibration("affine", h, bins, cens)
    assert r.params["scale"] == pytest.approx(1.0, abs=0.06)
    np.testing.assert_allclose(r.params["shift"], 0.0, atol=0.2)
    ident = Recalibration("affine", {"scale": 1.0, "shift": [0.0] * 4})
    surv = survival_from_hazards(h[:20])
    np.testing.assert_allclose(ident.apply_survival(surv), surv, atol=1e-5)


def test_affine_map_of_a_model_without_signal_falls_back_to_the_kaplan_meier_curve():
    # outcomes independent of the model's (wildly confident) hazards
    rng = np.random.default_rng(4)
    _, bins, cens = _simulate(4000, 4, a=0.0, b=np.array([-1.5, -1.2, -1.0, -0.8]), seed=4)
    noise = 1 / (1 + np.exp(-rng.normal(0, 4, (4000, 4))))
    r = fit_recalibration("affine", noise, bins, cens)
    assert r.params["scale"] < 0.05
    # discrete Kaplan-Meier of the sample, by hand: prod over bins of (1 - events / at risk)
    at_risk = np.array([(bins >= j).sum() for j in range(4)])
    events = np.array([((bins == j) & (cens == 0)).sum() for j in range(4)])
    km = np.cumprod(1 - events / at_risk)
    curves = r.apply_survival(survival_from_hazards(noise))
    np.testing.assert_allclose(curves.mean(axis=0), km, atol=0.02)
    assert curves.std(axis=0).max() < 0.05  # everyone gets nearly the same curve


def test_isotonic_map_matches_scikit_learn():
    from sklearn.isotonic import IsotonicRegression

    h, bins, cens = _simulate(1500, 4, a=0.5, b=np.array([-0.5, 0.0, 0.0, 0.5]), seed=5)
    r = fit_recalibration("isotonic", h, bins, cens)
    x = np.asarray(r.params["x"])
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(r.params["y"]) >= -1e-12)
    rows, cols, y = person_bins(bins, cens, 4)
    sk = IsotonicRegression(out_of_bounds="clip").fit(h[rows, cols], y)
    probe = np.random.default_rng(6).uniform(0, 1, 500)
    np.testing.assert_allclose(r.apply_hazards(probe), sk.predict(probe), atol=1e-9)
    assert r.nll_after <= r.nll_before


def test_round_trip_errors_and_description():
    r = fit_recalibration("affine", np.full((10, 2), 0.3), [0, 1] * 5, [0, 1] * 5, source="inner part")
    again = Recalibration.from_dict(r.to_dict())
    assert again == r
    assert "affine recalibration" in r.describe() and "inner part" in r.describe()
    with pytest.raises(ConfigError, match="expected one of"):
        fit_recalibration("platt", np.full((2, 2), 0.3), [0, 1], [0, 0])
    with pytest.raises(ConfigError, match="expected one of"):
        Recalibration.from_dict({"kind": "none"})
    with pytest.raises(DataError, match="hazards"):
        fit_recalibration("affine", np.full((3, 2), 0.3), [0, 1], [0, 0])
    with pytest.raises(DataError, match="bin shifts"):
        Recalibration("affine", {"scale": 1.0, "shift": [0.0]}).apply_hazards(np.full((2, 3), 0.2))
