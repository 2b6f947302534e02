"""The Compare page: runs on the demo's patients and folds side by side, numbers as the library
computes them, the two-runs scatter and a refusal of runs on other folds."""

from __future__ import annotations

import pytest

from tests.app.test_app_pages import frame, problems


def test_compare_page_on_the_demo_run_and_two_baselines(make_app, app_env, small_demo, compare_root):
    from deref.compare import compare_runs

    app_env(DEREF_RUNS_ROOT=compare_root)
    at = make_app("views/compare.py")
    assert not problems(at)
    assert any("Pick two or more runs" in str(i.value) for i in at.info)
    demo = str((small_demo / "run").resolve())
    runs = [demo, str((compare_root / "snn-3").resolve()), str((compare_root / "snn-1").resolve())]
    at.multiselect(key="compare_runs").set_value(runs).run()
    assert not problems(at)
    expected = compare_runs(runs, reference=demo, n_resamples=2000, seed=0)
    table = frame(at, "Run", "pooled C")
    assert len(table) == 3
    (delta_col,) = [c for c in table.columns if c.startswith("ΔC vs")]
    shown = {p.other: p for p in expected.pairs}
    assert set(shown) <= set(table["Run"])
    for row in table.to_dict("records"):
        if row["Run"] in shown:
            assert f"{shown[row['Run']].delta_c:+.3f}" in str(row[delta_col])
    charts = {c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")}
    for key in ("compare_forest", "compare_folds", "compare_km", "compare_scatter"):
        assert any(key in c for c in charts), (key, charts)
    worst = frame(at, "gap", "pct_a", "pct_b")
    assert len(worst) == 10 and (worst["gap"].abs().diff().dropna() <= 1e-9).all()  # largest first
    assert {b.proto.label for b in at.get("download_button")} >= {
        "comparison.csv",
        "comparison.tex",
        "forest.png",
    }
    # a run on other folds is refused, naming the first patient whose fold differs
    at.multiselect(key="compare_runs").set_value(
        [demo, str((compare_root / "snn-other-folds").resolve())]
    ).run()
    assert any("fold" in e and "patient" in e for e in problems(at)), problems(at)


@pytest.mark.slow
def test_the_demo_comparison_is_built_on_first_visit(make_app, app_env, small_demo, tmp_path):
    """Without a demo comparison the page offers to train it (``deref ablate``'s code on the demo's
    folds: DeReF, three ablations, two baselines, three of the paper's peers); then it compares them,
    DeReF the reference."""
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("cohort", "run", "demo_summary.json"):
        (demo / name).symlink_to(small_demo / name)
    import os

    app_env(DEREF_DATA_ROOTS=os.pathsep.join([str(demo), str(small_demo)]))  # the links lead there

    os.environ["DEREF_DEMO_DIR"] = str(demo)
    at = make_app("views/compare.py")
    assert not problems(at)
    at.button(key="build_comparison").click().run(timeout=600)
    assert not problems(at)
    names = sorted(p.name for p in (demo / "comparison").iterdir() if (p / "run.json").exists())
    from deref.demo import DEMO_COMPARISON

    assert names == sorted(DEMO_COMPARISON) and {"clam_sb", "mcat", "motcat"} <= set(names)
    table = frame(at, "Run", "pooled C")
    assert len(table) == len(DEMO_COMPARISON) and any(c.startswith("ΔC vs demo-deref") for c in table.columns)
