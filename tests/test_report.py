"""deref.report: the one stratification report behind the app's exports, ``deref figures`` and
``deref evaluate``."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from matplotlib.figure import Figure
from PIL import Image

import deref.survival
from deref.errors import DataError
from deref.figures import stratification_table
from deref.report import stratification_report
from deref.stratify import assign_groups, stratify, training_cutoffs


def _tables(n=90, folds=3, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(30 * np.exp(-0.9 * x))
    t_c = rng.uniform(5, 90, n)
    pred = pd.DataFrame(
        {
            "case_id": [f"R{i:03d}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "time": np.round(np.minimum(t_ev, t_c), 1) + 0.1,
            "censorship": (t_ev > t_c).astype(int),
            "risk": x + rng.normal(scale=0.5, size=n),
        }
    )
    train = pd.concat(
        [
            pd.DataFrame(
                {"fold": f, "case_id": pred.case_id[pred.fold != f], "risk": pred.risk[pred.fold != f]}
            )
            for f in range(folds)
        ],
        ignore_index=True,
    )
    return pred, train


@pytest.fixture(scope="module")
def tables():
    return _tables()


@pytest.fixture(scope="module")
def report(tables):
    pred, train = tables
    return stratification_report(
        pred,
        rule="tertiles",
        train_risks=train,
        run_name="run-42",
        cohort_name="BLCA",
        run_created="2025-01-31T10:00:00",
        date="2025-02-01",
    )


def test_report_is_the_stratification_of_training_cutoffs(report, tables):
    pred, train = tables
    cut = training_cutoffs(train, "tertiles")
    direct = stratify(pred, assign_groups(pred, cut), cutoffs=cut)
    assert list(report.groups) == list(assign_groups(pred, cut))
    for k in cut:
        np.testing.assert_array_equal(report.cutoffs[k], cut[k])
    assert report.result.logrank.p_value == pytest.approx(direct.logrank.p_value)
    assert report.result.hazard_ratio.primary.hr == pytest.approx(direct.hazard_ratio.primary.hr)
    assert report.meta == {
        "run": "run-42",
        "cohort": "BLCA",
        "cutoff": "tertiles of each fold's training risks",
        "date": "2025-02-01",
        "run_created": "2025-01-31T10:00:00",
    }


def test_title_and_file_names(report):
    assert report.title == "run-42: tertiles split"
    assert report.file_meta("km")["title"] == "Kaplan–Meier, run-42: tertiles split"
    assert report.file_meta("box")["title"] == "Box plot, run-42: tertiles split"
    assert report.file_stem("km") == "run-42_km_tertiles"
    assert report.file_stem("box") == "run-42_box_tertiles"
    assert report.file_stem("km", run_prefix=False) == "km_tertiles"
    assert report.file_stem("box", run_prefix=False) == "risk_boxplot"
    with pytest.raises(DataError, match="unknown figure 'violin'"):
        report.file_stem("violin")


def test_figures_carry_the_title(report):
    km = report.km_figure()
    assert isinstance(km, Figure)
    assert "run-42: tertiles split" in [t.get_text() for ax in km.axes for t in ax.texts]
    km_app = report.km_figure("plotly")
    assert isinstance(km_app, go.Figure) and km_app.layout.title.text == "run-42: tertiles split"
    assert report.box_figure("plotly").layout.title.text == "run-42: tertiles split: risk groups"
    assert report.box_figure().axes[0].get_title(loc="left") == "run-42: tertiles split: risk groups"
    with pytest.raises(DataError, match="backend"):
        report.km_figure("bokeh")


def test_export(report):
    png = report.export("png")
    img = Image.open(io.BytesIO(png))
    assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert img.text["Title"] == "Kaplan–Meier, run-42: tertiles split" and img.text["Run"] == "run-42"
    assert b"Box plot, run-42: tertiles split" in report.export("pdf", what="box")
    csv = report.export("csv").decode()
    assert csv == stratification_table(report.result).to_csv(index=False)


def test_summary_lines_print_the_results_numbers(report):
    res = report.result
    lines = report.summary_lines()
    assert lines[0] == "risk groups: tertiles, cutoffs from tertiles of each fold's training risks"
    p = res.logrank.p_value
    assert lines[1] == (f"log-rank: p = {p:.3f}" if p >= 1e-3 else f"log-rank: p = {p:.1e}")
    hr = res.hazard_ratio.primary
    assert lines[2].startswith(f"HR high vs low {hr.hr:.2f} (95% CI {hr.ci_lower:.2f}–{hr.ci_upper:.2f})")
    for g, line in zip(res.groups, lines[3:6]):
        assert line.startswith(f"  {g.name}: n={g.n}, events={g.events}, ")
        if g.median_survival is not None:
            assert f"median {g.median_survival:.1f} months" in line
    assert sum(g.n for g in res.groups) == 90


def test_cohort_cutoffs_and_missing_training_risks(tables):
    pred, _ = tables
    with pytest.raises(DataError, match="cutoffs_from='cohort'"):
        stratification_report(pred, rule="median", run_name="r")
    rep = stratification_report(pred, rule="median", run_name="r", cutoffs_from="cohort")
    assert rep.cutoffs.source == "cohort"
    assert (
        rep.summary_lines()[0]
        == "risk groups: median, cutoffs from median of this cohort's risks (no training risks)"
    )
    assert (rep.groups == "high").sum() == 45  # the cohort's own median halves it


def test_predictions_are_validated_once(tables, monkeypatch):
    pred, train = tables
    calls = []
    real = deref.survival.event_of

    def counting(df, what="predictions"):
        calls.append(what)
        return real(df, what)

    monkeypatch.setattr(deref.survival, "event_of", counting)
    stratification_report(pred, rule="median", train_risks=train, run_name="r")
    assert calls == ["predictions"]  # cutoffs, groups and the stratification share one frame
    calls.clear()
    stratify(pred, assign_groups(pred, training_cutoffs(train, "median")))
    assert len(calls) == 2  # assign_groups, stratify: each validates its input once
