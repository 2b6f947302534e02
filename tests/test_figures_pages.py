"""The dashboard's figures (deref.figures.patient / cohort / model / attention) carry the numbers
they are given: trace values, names, titles and colours, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from deref.figures import (
    OKABE_ITO,
    PatientCurve,
    attention_maps,
    calibration_figure,
    cka_heatmap,
    colormap_strip,
    decoupled_features_heatmap,
    family_attribution_bar,
    feature_contribution_bar,
    gate_by_group_figure,
    gate_groups_order,
    gate_weights_bar,
    patient_hazard_figure,
    patient_survival_figure,
    risk_histogram,
    risk_vs_time_figure,
    survival_time_grid,
    time_bin_labels,
    training_curve_figure,
    tsne_figure,
)

BLUE, VERMILLION = OKABE_ITO["blue"], OKABE_ITO["vermillion"]  # group_colors(2): low, high
EDGES = [0.0, 10.0, 20.0, 30.0, math.inf]


def _y_at(trace, x: float) -> float:
    """The drawn step function's value at ``x`` (``line.shape == "hv"``: the last point <= x)."""
    xs = np.asarray(trace.x, dtype=float)
    return float(np.asarray(trace.y, dtype=float)[np.searchsorted(xs, x, side="right") - 1])


# ------------------------------------------------------------------------------------ patient
def test_survival_figure_is_the_step_function_of_the_bins():
    curve = PatientCurve("P1", np.array([0.9, 0.7, 0.5, 0.3]), EDGES, color=VERMILLION, dash="dash")
    fig = patient_survival_figure([curve], t_max=40.0, unit="months", band=False)
    (line,) = fig.data
    assert line.name == "P1" and line.line.color == VERMILLION and line.line.dash == "dash"
    # S_k is survival through bin k: 1 before the first bin end, then S_0, S_1, S_2 (the last
    # bin never ends)
    assert [_y_at(line, x) for x in (0.0, 10.0, 20.0, 30.0, 40.0)] == [1.0, 0.9, 0.7, 0.5, 0.5]
    assert float(np.asarray(line.x)[np.asarray(line.y) == 1.0].max()) < 10.0  # the drop is at the edge
    assert sorted(s.x0 for s in fig.layout.shapes) == [10.0, 20.0, 30.0]  # the bin edges, dotted
    assert fig.layout.xaxis.title.text == "time (months)"
    assert tuple(fig.layout.yaxis.range) == (0, 1.03)


def test_survival_figure_with_a_horizon_draws_the_interpolated_curve():
    s = np.array([0.9, 0.7, 0.5, 0.3])
    curve = PatientCurve("P1", s, EDGES, horizon=50.0)
    (line,) = patient_survival_figure([curve], t_max=60.0, unit="months", band=False).data
    assert line.line.shape == "linear"
    xs, ys = np.asarray(line.x, float), np.asarray(line.y, float)
    # S_k at the end of bin k (the open last bin ends at the horizon), flat after it
    for edge, value in ((10.0, 0.9), (20.0, 0.7), (30.0, 0.5)):
        assert ys[xs == edge][0] == pytest.approx(value)
    # constant hazard inside a bin: log S is linear, e.g. half-way through bin 1
    assert curve.at([15.0])[0] == pytest.approx(0.9 * (0.7 / 0.9) ** 0.5)
    assert curve.at([40.0])[0] == pytest.approx(0.5 * (0.3 / 0.5) ** 0.5)  # 30 -> 50
    assert curve.at([55.0])[0] == pytest.approx(0.3)
    assert np.all(np.diff(ys) <= 1e-12) and ys[0] == 1.0
    # without a horizon (runs that did not record one) the steps stay
    assert PatientCurve("P1", s, EDGES).at([15.0])[0] == pytest.approx(0.9)


def test_survival_band_spans_the_segment_counts():
    per_s = np.array([[0.95, 0.8, 0.6, 0.4], [0.85, 0.6, 0.4, 0.2]])
    curve = PatientCurve(
        "P1", per_s.mean(axis=0), EDGES, color=VERMILLION, survival_per_s=per_s, segments=(2, 4)
    )
    upper, lower, line = patient_survival_figure([curve], 40.0, "months").data
    assert _y_at(upper, 15.0) == 0.95 and _y_at(lower, 15.0) == 0.85
    assert _y_at(upper, 25.0) == 0.8 and _y_at(lower, 25.0) == 0.6
    assert _y_at(line, 25.0) == pytest.approx(0.7)
    assert lower.fill == "tonexty" and lower.fillcolor == "rgba(213,94,0,0.2)"
    assert lower.name == "P1: range over segment counts s ∈ {2, 4}"
    # one segment count is no band; band=False draws none either
    single = PatientCurve("P2", per_s[0], EDGES, survival_per_s=per_s[:1], segments=(2,))
    assert len(patient_survival_figure([single], 40.0, "months").data) == 1
    assert len(patient_survival_figure([curve], 40.0, "months", band=False).data) == 1


def test_time_grid_and_bin_labels():
    grid = survival_time_grid(EDGES, 25.0, n=6)  # 0, 5, ..., 25 plus the edges 10 and 20
    np.testing.assert_allclose(grid, [0, 5, 10, 15, 20, 25])
    assert time_bin_labels(EDGES) == ["0.0–10.0", "10.0–20.0", "20.0–30.0", "≥ 30.0"]


def test_hazard_figure_bars_per_bin():
    a = PatientCurve("A", np.ones(4), EDGES, color=VERMILLION, hazards=np.array([0.1, 0.2, 0.3, 1.0]))
    b = PatientCurve("B", np.ones(4), EDGES, color=BLUE, hazards=np.array([0.05, 0.1, 0.15, 1.0]))
    fig = patient_hazard_figure([a, b], "days")
    assert [t.name for t in fig.data] == ["A", "B"]
    assert list(fig.data[0].x) == ["0.0–10.0", "10.0–20.0", "20.0–30.0", "≥ 30.0"]
    np.testing.assert_allclose(fig.data[1].y, [0.05, 0.1, 0.15, 1.0])
    assert [t.marker.color for t in fig.data] == [VERMILLION, BLUE]
    assert fig.layout.barmode == "group" and fig.layout.xaxis.title.text == "time bin (days)"


def test_gate_features_and_contribution_figures():
    gate = np.array([0.5, 0.3, 0.2])
    fig = gate_weights_bar(gate, ["e1", "e2", "e3"])
    np.testing.assert_allclose(fig.data[0].x, gate)
    assert list(fig.data[0].y) == ["e1", "e2", "e3"] and list(fig.data[0].text) == ["0.50", "0.30", "0.20"]
    assert tuple(fig.layout.xaxis.range) == (0, 1.0)
    assert tuple(gate_weights_bar(np.array([2.0]), ["e"]).layout.xaxis.range) == pytest.approx((0, 2.3))

    feats = np.arange(8.0).reshape(2, 4) - 3
    heat = decoupled_features_heatmap(feats, ["share", "explore"])
    np.testing.assert_array_equal(np.asarray(heat.data[0].z), feats)
    assert list(heat.data[0].y) == ["share", "explore"] and heat.data[0].zmid == 0

    contrib = feature_contribution_bar(np.array([0.2, -0.1]), ["share", "explore"])
    bar = contrib.data[0]
    assert list(bar.marker.color) == [VERMILLION, BLUE]  # + raises the risk
    assert list(bar.text) == ["+0.200", "-0.100"]
    assert tuple(contrib.layout.xaxis.range) == pytest.approx((-0.26, 0.26))


# ------------------------------------------------------------------------------------ cohort
def _cohort_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": [5.0, 7.0, 9.0, 11.0, 13.0, 15.0],
            "event": [1, 0, 1, 1, 0, 1],
            "risk": [0.0, 1.0, np.nan, 2.0, 3.0, 4.0],
            "risk_group": ["low", "low", "not predicted", "high", "high", "high"],
        },
        index=pd.Index([f"P{i}" for i in range(6)], name="case_id"),
    )


def test_risk_histogram_stacks_the_groups_on_shared_bins():
    fig = risk_histogram(_cohort_table(), ["low", "high"], bins=4)
    assert [t.name for t in fig.data] == ["low (n=2)", "high (n=3)"]  # the NaN risk is left out
    np.testing.assert_allclose(fig.data[0].x, [0.0, 1.0])
    np.testing.assert_allclose(fig.data[1].x, [2.0, 3.0, 4.0])
    assert [t.marker.color for t in fig.data] == [BLUE, VERMILLION]
    # risks 0..4 in 4 bins: edges 0, 1, 2, 3, 4
    assert (fig.data[0].xbins.start, fig.data[0].xbins.end, fig.data[0].xbins.size) == (0.0, 4.0, 1.0)
    assert fig.layout.barmode == "stack"


def test_risk_vs_time_splits_events_and_censored_per_group():
    fig = risk_vs_time_figure(_cohort_table(), ["low", "high"], "months")
    by_name = {t.name: t for t in fig.data}
    assert list(by_name) == ["low · event", "low · censored", "high · event", "high · censored"]
    assert list(by_name["high · event"].x) == [11.0, 15.0] and list(by_name["high · event"].y) == [2.0, 4.0]
    assert list(by_name["low · censored"].text) == ["P1"]
    assert by_name["high · censored"].marker.symbol == "cross-thin-open"
    assert by_name["low · event"].marker.color == BLUE and by_name["high · event"].marker.color == VERMILLION
    assert fig.layout.xaxis.title.text == "time (months)"


# ------------------------------------------------------------------------------------ model
def test_calibration_figure_error_bars_are_the_ci():
    cal = pd.DataFrame(
        {
            "group": ["Q1", "Q2"],
            "predicted": [0.8, 0.4],
            "observed": [0.75, 0.5],
            "observed_lower": [0.6, 0.3],
            "observed_upper": [0.85, 0.7],
        }
    )
    ideal, obs = calibration_figure(cal, 24.0).data
    assert list(ideal.x) == [0, 1] and list(ideal.y) == [0, 1]
    np.testing.assert_allclose(obs.x, [0.8, 0.4])
    np.testing.assert_allclose(obs.y, [0.75, 0.5])
    np.testing.assert_allclose(obs.error_y.array, [0.1, 0.2])
    np.testing.assert_allclose(obs.error_y.arrayminus, [0.15, 0.2])
    assert list(obs.text) == ["Q1", "Q2"]
    assert calibration_figure(cal, 24.0).layout.xaxis.title.text == "predicted S(24)"


def test_training_curves_one_line_per_fold_that_recorded_it():
    hist = pd.DataFrame(
        {
            "fold": [0, 0, 1, 1],
            "epoch": [1, 2, 1, 2],
            "train_loss": [1.0, 0.8, 1.1, 0.9],
            "val_cindex": [0.6, 0.65, np.nan, np.nan],
        }
    )
    loss = training_curve_figure(hist, "train_loss")
    assert [t.name for t in loss.data] == ["fold 0", "fold 1"]
    np.testing.assert_allclose(loss.data[1].y, [1.1, 0.9])
    assert loss.layout.title.text == "train_loss"
    assert [t.name for t in training_curve_figure(hist, "val_cindex").data] == ["fold 0"]


def test_gate_figure_order_colours_and_numbers():
    assert gate_groups_order(["all", "high", "low", "not predicted"], ["low", "high"]) == [
        ("all", "#666666"),
        ("low", BLUE),
        ("high", VERMILLION),
        ("not predicted", "#999999"),
    ]
    summary = pd.DataFrame(
        {
            "group": ["all", "all", "high", "high", "low", "low"],
            "expert": ["e1", "e2"] * 3,
            "mean": [0.5, 0.5, 0.7, 0.3, 0.2, 0.8],
            "sem": [0.01, 0.01, 0.05, 0.05, np.nan, 0.04],
            "n": [10, 10, 4, 4, 6, 6],
        }
    )
    fig = gate_by_group_figure(summary, ["low", "high"], "median")
    assert [t.name for t in fig.data] == ["all (n=10)", "low (n=6)", "high (n=4)"]
    np.testing.assert_allclose(fig.data[1].y, [0.2, 0.8])
    np.testing.assert_allclose(fig.data[1].error_y.array, [0.0, 0.04])  # NaN sem drawn as 0
    assert fig.data[2].marker.color == VERMILLION
    assert "median" in fig.layout.title.text


def test_tsne_and_cka_figures():
    emb = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0],
            "y": [4.0, 5.0, 6.0],
            "feature": ["a", "b", "a"],
            "case_id": ["P0", "P0", "P1"],
        }
    )
    fig = tsne_figure(emb, ["a", "b"])
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].x) == [1.0, 3.0] and list(fig.data[0].text) == ["P0", "P1"]
    mat = np.array([[1.0, 0.123], [0.123, 1.0]])
    cka = cka_heatmap(mat, ["a", "b"]).data[0]
    np.testing.assert_array_equal(np.asarray(cka.z), mat)
    np.testing.assert_array_equal(np.asarray(cka.text), [[1.0, 0.12], [0.12, 1.0]])
    assert (cka.zmin, cka.zmax) == (0, 1)


# ------------------------------------------------------------------------------------ attention
def test_attention_maps_layers_and_attributions():
    att = np.array([[0.1, 0.3, 0.6], [0.5, 0.3, 0.2]])  # (layers, patches)
    maps = attention_maps(
        att, {"share": np.array([1.0, 2.0, 3.0]), "specific_genomic": np.zeros(3)}, method="ig"
    )
    assert list(maps) == [
        "class-token attention, last layer",
        "class-token attention, first layer",
        "class-token attention, mean of layers",
        "shared feature (ig)",
    ]  # no genomics-specific map: no path from the slide to it
    np.testing.assert_allclose(maps["class-token attention, last layer"], [0.5, 0.3, 0.2])
    np.testing.assert_allclose(maps["class-token attention, first layer"], [0.1, 0.3, 0.6])
    np.testing.assert_allclose(maps["class-token attention, mean of layers"], [0.3, 0.3, 0.4])
    assert list(attention_maps(np.array([0.2, 0.8]))) == ["class-token attention"]
    assert attention_maps(None) == {}


def test_family_bars_and_colour_strip():
    fig = family_attribution_bar(np.array([-0.5, 0.25]), ["immune", "onco"], "shared feature")
    assert list(fig.data[0].y) == ["immune", "onco"]
    assert list(fig.data[0].marker.color) == [BLUE, VERMILLION]
    assert fig.layout.title.text == "shared feature"
    strip = colormap_strip("viridis", width=100, height=3)
    assert strip.shape == (3, 100, 3) and strip.dtype == np.uint8
    # viridis runs from dark purple (0.267, 0.005, 0.329) to yellow (0.993, 0.906, 0.144)
    assert tuple(strip[0, 0]) == (68, 1, 84) and tuple(strip[2, -1]) == (253, 231, 36)
