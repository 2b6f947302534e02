"""deref.figures builders and export, and the ``deref figures`` command."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from deref.cli import figures as figures_cmd
from deref.cli.main import COMMANDS
from deref.errors import CheckpointError, DataError
from deref.figures import (
    OKABE_ITO,
    caption_text,
    export_figure,
    figure_meta,
    km_figure_matplotlib,
    km_figure_plotly,
    risk_boxplot_matplotlib,
    risk_boxplot_plotly,
    stratification_table,
)
from deref.model import ModelConfig
from deref.runs import DataInfo, FoldInfo, RunInfo
from deref.stratify import assign_groups, stratify, training_cutoffs

META = figure_meta(
    run="run-7f3a", cohort="TCGA-BLCA", cutoff="median of each fold's training risks", date="2025-01-31"
)


def _run_tables(n=120, folds=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t_ev = rng.exponential(30 * np.exp(-0.9 * x))
    t_c = rng.uniform(5, 90, n)
    pred = pd.DataFrame(
        {
            "case_id": [f"TCGA-{i:03d}" for i in range(n)],
            "fold": np.arange(n) % folds,
            "time": np.round(np.minimum(t_ev, t_c), 1) + 0.1,
            "censorship": (t_ev > t_c).astype(int),
            "risk": x + rng.normal(scale=0.5, size=n),
            "risk_std": 0.05,
        }
    )
    pred["event"] = 1 - pred.censorship
    for j in range(k):
        pred[f"surv_{j}"] = np.clip(1 - 0.2 * (j + 1) - 0.05 * pred.risk, 0.01, 1)
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
    return _run_tables()


@pytest.fixture(scope="module")
def results(tables):
    pred, train = tables
    out = {}
    for rule in ("median", "tertiles"):
        cut = training_cutoffs(train, rule)
        out[rule] = stratify(pred, assign_groups(pred, cut), cutoffs=cut)
    return out


def test_export_formats_magic_and_metadata(results):
    fig = km_figure_matplotlib(results["median"], meta=META)
    assert caption_text(META) in [t.get_text() for t in fig.texts]  # caption line on the figure
    png = export_figure(fig, "png", META)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert (
        img.text["Run"] == "run-7f3a"
        and img.text["Cohort"] == "TCGA-BLCA"
        and img.text["Date"] == "2025-01-31"
    )
    assert "median of each fold's training risks" in img.text["Description"]
    svg = export_figure(fig, "svg", META)
    assert b"<svg" in svg[:1000]
    assert b"<dc:description>run: run-7f3a | cohort: TCGA-BLCA" in svg and b"<dc:date>2025-01-31" in svg
    pdf = export_figure(fig, "pdf", META)
    assert pdf.startswith(b"%PDF")
    assert b"/Keywords (run=run-7f3a; cohort=TCGA-BLCA" in pdf and b"/Subject (run: run-7f3a" in pdf


def test_figure_changes_with_cutoff_rule(results):
    a = export_figure(km_figure_matplotlib(results["median"], meta=META), "svg", META)
    b = export_figure(km_figure_matplotlib(results["tertiles"], meta=META), "svg", META)
    assert len(a) != len(b) and b"intermediate" in b and b"intermediate" not in a
    again = export_figure(km_figure_matplotlib(results["median"], meta=META), "svg", META)
    assert again == a  # same figure, same bytes


def test_export_rejects_plotly_and_unknown_format(results):
    with pytest.raises(TypeError, match="km_figure_matplotlib"):
        export_figure(km_figure_plotly(results["median"]), "png", META)
    with pytest.raises(ValueError, match="jpeg"):
        export_figure(km_figure_matplotlib(results["median"]), "jpeg", META)


def test_table_at_risk_matches_stratify(results):
    res = results["tertiles"]
    table = stratification_table(res)
    ar = table[table.section == "at_risk"][["group", "time", "at_risk", "censored", "events"]].reset_index(
        drop=True
    )
    pd.testing.assert_frame_equal(
        ar.astype({c: int for c in ("at_risk", "censored", "events")}), res.at_risk, check_dtype=False
    )
    groups = table[table.section == "group"].set_index("group")
    for g in res.groups:
        assert groups.loc[g.name, "n"] == g.n and groups.loc[g.name, "events"] == g.events
    hr = table[table.section == "hazard_ratio"].set_index("group")
    assert hr.loc["high", "hr"] == pytest.approx(res.hazard_ratio.primary.hr)
    assert table[table.section == "logrank"].p_value.iloc[0] == pytest.approx(res.logrank.p_value)
    assert len(table[table.section == "pairwise_logrank"]) == 3
    assert len(table[table.section == "km"]) == sum(len(g.km) for g in res.groups)
    csv = table.to_csv(index=False)
    assert csv.splitlines()[0].startswith("section,group,reference,time,survival")


def test_plotly_km_content(results):
    res = results["median"]
    fig = km_figure_plotly(res, meta=META)
    assert isinstance(fig, go.Figure)
    traces = {t.name: t for t in fig.data if t.name}
    for g in res.groups:
        assert traces[f"{g.name} at risk"].text == tuple(str(v) for v in res.at_risk_wide().loc[g.name])
        assert list(traces[f"{g.name} at risk"].x) == list(res.at_risk_times)
        censored = traces[f"{g.name} censored"]
        assert censored.marker.symbol == "cross-thin" and len(censored.x) == np.unique(g.censor_times).size
        legend = [t.name for t in fig.data if t.legendgroup == g.name and t.showlegend is not False]
        assert any(f"n={g.n}" in name and "median" in name for name in legend)
    text = " ".join(a.text for a in fig.layout.annotations)
    assert "Log-rank p = " in text and "HR high vs low" in text and "95% CI" in text
    assert caption_text(META) in text and fig.layout.meta["run"] == "run-7f3a"
    colors = {t.line.color for t in fig.data if t.mode == "lines" and t.showlegend is not False}
    assert colors <= set(OKABE_ITO.values())
    assert any(t.fill == "tonexty" for t in fig.data)  # CI bands
    at_risk_title = next(a for a in fig.layout.annotations if a.text == "Number at risk")
    assert (at_risk_title.x, at_risk_title.xanchor) == (0, "left")  # clear of the centred time-axis title


def test_not_reached_and_not_estimable_are_spelled_out(tables):
    pred, train = tables
    pred = pred.copy()
    cut = training_cutoffs(train, "median")
    groups = assign_groups(pred, cut)
    pred.loc[(groups == "low").to_numpy(), "censorship"] = 1
    pred = pred.drop(columns="event")
    res = stratify(pred, groups, cutoffs=cut)
    fig = km_figure_plotly(res)
    assert any("median not reached" in (t.name or "") for t in fig.data)
    assert "HR not estimable: no events in group 'low'" in " ".join(a.text for a in fig.layout.annotations)
    mpl = km_figure_matplotlib(res)
    texts = [t.get_text() for ax in mpl.axes for t in ax.texts]
    assert any("HR not estimable: no events in group 'low'" in t for t in texts)
    table = stratification_table(res)
    assert table[table.section == "hazard_ratio"].note.iloc[0] == "not estimable: no events in group 'low'"


def _event_times_by_group(tables, rule="median"):
    """Survival times of the patients with an event, per risk group, from the input tables."""
    pred, train = tables
    groups = assign_groups(pred, training_cutoffs(train, rule)).to_numpy()
    ev = pred.censorship.to_numpy() == 0
    return {g: np.sort(pred.time.to_numpy()[ev & (groups == g)]) for g in ("low", "high")}


def test_boxplots_show_the_groups_numbers(results, tables):
    res = results["median"]
    want = _event_times_by_group(tables)
    fig = risk_boxplot_plotly(res, meta=META)
    assert [t.type for t in fig.data] == ["box", "box"]
    for trace, (name, vals) in zip(fig.data, want.items()):
        assert trace.name == f"{name} ({vals.size} events)"
        np.testing.assert_allclose(np.sort(trace.y), vals)
    tt = res.ttest
    assert fig.layout.annotations[0].text == (
        f"Welch t-test high vs low: t = {tt.statistic:.2f}, p = {tt.p_value:.3f}"
        if tt.p_value >= 1e-3
        else f"Welch t-test high vs low: t = {tt.statistic:.2f}, p = {tt.p_value:.1e}"
    )
    mpl = risk_boxplot_matplotlib(res, meta=META)
    ax = mpl.axes[0]
    # the median is the horizontal line as wide as its box (the caps are half as wide)
    medians = [
        ln
        for ln in ax.lines
        if len(ln.get_xdata()) == 2
        and ln.get_ydata()[0] == ln.get_ydata()[1]
        and np.ptp(ln.get_xdata()) == pytest.approx(0.55)
    ]
    assert len(medians) == len(want)
    for i, vals in enumerate(want.values()):
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        assert medians[i].get_ydata()[0] == pytest.approx(med)
        box_y = ax.patches[i].get_path().vertices[:, 1]
        assert (box_y.min(), box_y.max()) == pytest.approx((q1, q3))
        scatter = [
            ln for ln in ax.lines if ln.get_marker() == "o" and abs(np.mean(ln.get_xdata()) - (i + 1)) < 0.2
        ]
        np.testing.assert_allclose(np.sort(scatter[0].get_ydata()), vals)
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f"{n}\n({v.size} events)" for n, v in want.items()
    ]
    assert export_figure(mpl, "pdf", META).startswith(b"%PDF")


# ------------------------------------------------------------------------------ CLI
def _write_run(tmp_path, tables, with_train=True):
    pred, train = tables
    run = tmp_path / "run"
    run.mkdir()
    pred.drop(columns="event").to_csv(run / "predictions.csv", index=False)
    if with_train:
        train.to_csv(run / "train_risks.csv", index=False)
    info = RunInfo(
        name="deref-blca-s0",
        model=ModelConfig(model_type="snn"),
        folds=tuple(FoldInfo(index=f, bin_edges=(0.0, 10.0, 20.0, 30.0, 200.0)) for f in range(3)),
        data=DataInfo(table="tcga_blca_all_clean.csv.zip"),
        created="2025-01-31T10:00:00",
    )
    (run / "run.json").write_text(json.dumps(info.to_dict()))
    return run


def _cli(argv):
    """Parse and run ``deref figures`` alone (the other subcommands' imports are not ours to time)."""
    import argparse

    parser = argparse.ArgumentParser(prog="deref")
    figures_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_figures_and_prints_stats(tmp_path, tables, capsys):
    assert "figures" in COMMANDS
    run = _write_run(tmp_path, tables)
    out = tmp_path / "figs"
    assert _cli(["figures", str(run), "--out", str(out), "--rule", "tertiles", "--formats", "svg,pdf"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["km_tertiles.csv", "km_tertiles.pdf", "km_tertiles.svg", "risk_boxplot.png"]
    printed = capsys.readouterr().out
    assert "log-rank: p = " in printed and "HR high vs low" in printed and "intermediate: n=" in printed
    svg = (out / "km_tertiles.svg").read_bytes()
    assert b"deref-blca-s0" in svg and b"tcga_blca_all_clean" in svg and b"tertiles of each fold" in svg
    table = pd.read_csv(out / "km_tertiles.csv")
    assert set(table.section) >= {"km", "at_risk", "group", "hazard_ratio", "logrank", "cutoff"}


def test_cli_errors_name_the_file(tmp_path, tables):
    run = _write_run(tmp_path, tables, with_train=False)
    with pytest.raises(DataError, match="train_risks.csv.*--cutoffs-from cohort"):
        _cli(["figures", str(run), "--out", str(tmp_path / "o")])
    with pytest.raises(DataError, match="--formats"):
        _cli(["figures", str(run), "--out", str(tmp_path / "o"), "--formats", "png,gif"])
    (run / "predictions.csv").write_text("case_id,fold,time\nA,0,1.0\n")
    with pytest.raises(DataError, match=r"predictions.csv: missing column"):
        _cli(["figures", str(run), "--out", str(tmp_path / "o"), "--cutoffs-from", "cohort"])
    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"run.json: not valid JSON"):
        _cli(["figures", str(run), "--out", str(tmp_path / "o")])


def test_house_template_is_simple_white_for_the_trace_types_of_the_figure():
    """The dashboard's figures draw with ``simple_white``'s whole layout and the data defaults of
    their own trace types only (plotly.js applies a trace default to its own type alone)."""
    import plotly.graph_objects as go
    import plotly.io as pio

    from deref.figures.style import HOUSE_TEMPLATE, house_template

    full = pio.templates[HOUSE_TEMPLATE]
    fig = go.Figure([go.Scatter(x=[0, 1], y=[1, 0]), go.Bar(x=[0], y=[1]), go.Scatter(x=[1], y=[1])])
    t = house_template(fig)
    assert t.layout.to_plotly_json() == full.layout.to_plotly_json()
    assert set(t.data.to_plotly_json()) == {"scatter", "bar"}
    assert t.data.scatter == full.data.scatter and t.data.bar == full.data.bar
    assert house_template(go.Figure([go.Bar(x=[0], y=[1]), go.Scatter(x=[0], y=[0])])) is t  # cached
    # the figure as drawn: every layout default of the full template, the scatter defaults too
    fig.update_layout(template=t)
    drawn = fig.to_plotly_json()["layout"]["template"]
    assert drawn["layout"] == full.layout.to_plotly_json()
    assert drawn["data"]["scatter"] == full.to_plotly_json()["data"]["scatter"]
