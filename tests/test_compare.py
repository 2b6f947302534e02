"""`deref compare`: pairing refusals, the vectorized paired bootstrap against a slow loop, its
coverage where the true difference is known, Holm by hand, the LaTeX table, the CLI end to end."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from deref.cli.main import main as cli
from deref.compare import (
    PairingError,
    RunInputs,
    bootstrap_indices,
    bootstrap_p_value,
    bootstrap_weights,
    compare,
    compare_runs,
    holm,
    paired_cindex_bootstrap,
    resampled_harrell,
)
from deref.errors import DataError
from deref.figures import comparison_latex, forest_figure_plotly
from deref.metrics import harrell_c
from deref.runs import RunDir, write_run_info


# ----------------------------------------------------------------------------- tiny real runs
@pytest.fixture(scope="module")
def runs(small_demo, tmp_path_factory):
    """Three genomic SNN runs on the small demo cohort, same 5 folds, trained a few epochs."""
    import torch

    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    torch.set_num_threads(1)
    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    folds = make_folds(cohort.patients, k=5, seed=0)
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))
    out = tmp_path_factory.mktemp("compare-runs")
    paths = {}
    for name, epochs, seed in (("snn-a", 3, 0), ("snn-b", 2, 1), ("snn-c", 1, 2)):
        tc = TrainConfig(epochs=epochs, batch_size=8, seed=seed)
        train_cross_validation(cohort, folds, cfg, tc, out / name)
        paths[name] = out / name
    return paths


def _edit_run(src, dst, predictions: pd.DataFrame, folds: dict[int, list[str]] | None = None, **data):
    """A copy of run ``src`` with other predictions and (optionally) other validation folds."""
    shutil.copytree(src, dst)
    predictions.to_csv(dst / "predictions.csv", index=False)
    info = RunDir(dst).info
    new_folds = tuple(
        dataclasses.replace(f, val_ids=tuple(folds[f.index])) if folds is not None else f for f in info.folds
    )
    write_run_info(
        dst,
        dataclasses.replace(
            info, name=dst.name, folds=new_folds, data=dataclasses.replace(info.data, **data)
        ),
    )
    return dst


# ----------------------------------------------------------------------------- pairing
def test_runs_on_different_patients_are_refused(runs, tmp_path):
    pred = RunDir(runs["snn-b"]).predictions()
    dropped = sorted(pred["case_id"])[3]
    folds = {k: sorted(g["case_id"]) for k, g in pred[pred["case_id"] != dropped].groupby("fold")}
    other = _edit_run(
        runs["snn-b"], tmp_path / "fewer", pred[pred["case_id"] != dropped], folds, fingerprint="0" * 64
    )
    with pytest.raises(PairingError, match=rf"patient {dropped} is in 'snn-a' but not in 'fewer'") as exc:
        compare_runs([runs["snn-a"], other], n_resamples=10)
    assert "1 differ" in str(exc.value) and "the table fingerprint differs" in str(exc.value)
    # the CLI refuses too, with the same one-line reason and exit status 1
    assert cli(["compare", str(runs["snn-a"]), str(other), "--out", str(tmp_path / "out")]) == 1


def test_runs_on_different_folds_are_refused(runs, tmp_path):
    pred = RunDir(runs["snn-b"]).predictions()
    by_fold = {k: sorted(g["case_id"]) for k, g in pred.groupby("fold")}
    a, b = by_fold[0][0], by_fold[1][0]  # swap one patient of fold 0 with one of fold 1
    by_fold[0][0], by_fold[1][0] = b, a
    moved = pred.assign(fold=pred["case_id"].map({a: 1, b: 0}).fillna(pred["fold"]).astype(int))
    other = _edit_run(runs["snn-b"], tmp_path / "refolded", moved, by_fold)
    first = min(a, b)
    fold_a = 0 if first == a else 1
    with pytest.raises(
        PairingError,
        match=rf"patient {first} is held out in fold {fold_a} in 'snn-a' but {1 - fold_a} in 'refolded'.*"
        r"2 differ; the table fingerprint is the same",
    ):
        compare_runs([runs["snn-a"], other], n_resamples=10)
    # a run whose predictions disagree with its own run.json is refused as well
    broken = _edit_run(runs["snn-b"], tmp_path / "broken", moved)
    with pytest.raises(PairingError, match=rf"patient {first} is predicted in fold {1 - fold_a}"):
        compare_runs([runs["snn-a"], broken], n_resamples=10)


# ----------------------------------------------------------------------------- the bootstrap
def _small_case(n=36, seed=3):
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(10, n))  # rounded: tied times
    event = rng.random(n) < 0.6
    risks = np.stack([np.round(-time + rng.normal(0, 6, n)), -time + rng.normal(0, 9, n), rng.normal(size=n)])
    return time, event, risks


def _slow_harrell(time, event, risks, idx):
    """The reference: a plain loop, scikit-survival's Harrell C on each resample's arrays."""
    out = np.full((risks.shape[0], idx.shape[0]), np.nan)
    for k in range(risks.shape[0]):
        for b in range(idx.shape[0]):
            try:
                out[k, b] = harrell_c(time[idx[b]], event[idx[b]], risks[k, idx[b]]).cindex
            except DataError:  # no comparable pair in this resample
                pass
    return out


def test_vectorized_bootstrap_equals_a_slow_loop_exactly():
    time, event, risks = _small_case()
    n_res, seed = 300, 11
    idx = bootstrap_indices(time.size, n_res, seed)
    slow = _slow_harrell(time, event, risks, idx)
    fast = resampled_harrell(time, event, risks, bootstrap_weights(time.size, n_res, seed))
    np.testing.assert_array_equal(fast, slow)
    # the CI, win share and p-value of compare() are those of the slow resamples
    ids = [f"P{i:03d}" for i in range(time.size)]
    folds = {c: i % 3 for i, c in enumerate(ids)}
    inputs = [
        RunInputs(
            name=name,
            path=name,
            predictions=pd.DataFrame(
                {
                    "case_id": ids,
                    "fold": [folds[c] for c in ids],
                    "time": time,
                    "event": event.astype(int),
                    "risk": r,
                }
            ),
            train_risks=None,
            folds=folds,
            bin_edges={},
        )
        for name, r in zip(("ref", "x", "y"), risks)
    ]
    res = compare(inputs, n_resamples=n_res, seed=seed)
    assert [p.other for p in res.pairs] == ["x", "y"]
    for k, pair in zip((1, 2), res.pairs):
        d = slow[0] - slow[k]
        d_ok = d[np.isfinite(d)]
        assert (
            pair.delta_c == harrell_c(time, event, risks[0]).cindex - harrell_c(time, event, risks[k]).cindex
        )
        assert (pair.delta_c_ci_low, pair.delta_c_ci_high) == tuple(np.quantile(d_ok, [0.025, 0.975]))
        assert pair.reference_wins == np.mean(d_ok > 0)
        assert pair.p_value == bootstrap_p_value(d)
        assert pair.seed == seed and pair.n_resamples == n_res
    assert compare(inputs, n_resamples=n_res, seed=seed).pairs == res.pairs  # same seed, same numbers
    assert (
        compare(inputs, n_resamples=n_res, seed=seed + 1).pairs[0].delta_c_ci_low
        != res.pairs[0].delta_c_ci_low
    )


def test_paired_bootstrap_ci_covers_the_true_difference_at_its_nominal_level():
    """No censoring, (-log T, risk) bivariate normal: C = 1/2 + arcsin(rho) / pi exactly, so the
    population difference of two risks is known; the 95% CI must cover it 90-99% of the time."""
    rho_a, rho_b, n, n_res, n_sim = 0.6, 0.35, 150, 400, 300
    truth = (np.arcsin(rho_a) - np.arcsin(rho_b)) / np.pi
    rng = np.random.default_rng(2024)
    covered = 0
    for s in range(n_sim):
        z = rng.normal(size=n)  # z = -log T: a higher risk means an earlier event
        shared = rng.normal(size=n)  # the two runs' errors are correlated, as two models' are
        noise = np.stack([shared + rng.normal(size=n), shared + rng.normal(size=n)]) / np.sqrt(2)
        risks = np.stack([rho * z + np.sqrt(1 - rho**2) * eps for rho, eps in zip((rho_a, rho_b), noise)])
        bd = paired_cindex_bootstrap(np.exp(-z), np.ones(n, bool), risks, n_resamples=n_res, seed=s)[1]
        covered += bd.ci_low <= truth <= bd.ci_high
    assert 0.90 <= covered / n_sim <= 0.99, covered / n_sim


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # capped at 1, NaN kept and not counted: m = 3
    np.testing.assert_allclose(holm([0.5, 0.2, np.nan, 0.9]), [1.0, 0.6, np.nan, 1.0])
    assert holm([0.04]).tolist() == [0.04]


def test_bootstrap_p_value_by_hand():
    # 10 resamples, 1 at or below 0 and 9 at or above: p = 2 * (1 + 1) / 11
    assert bootstrap_p_value([-0.1, *[0.2] * 9]) == pytest.approx(4 / 11)
    assert bootstrap_p_value([0.1] * 50) == pytest.approx(2 / 51)
    assert bootstrap_p_value(np.r_[np.linspace(-1, 1, 11), np.nan]) == 1.0


# ----------------------------------------------------------------------------- the table
def _runs_frame() -> pd.DataFrame:
    rows = []
    for name, c, ibs, opt in (
        ("DeReF_full & co", 0.71, 0.17, 0.74),
        ("SNN", 0.65, 0.16, 0.80),
        ("ABMIL", 0.69, 0.19, 0.70),
    ):
        rows.append(
            {
                "run": name,
                "harrell_mean": c,
                "harrell_std": 0.03,
                "uno_mean": c - 0.01,
                "uno_std": 0.04,
                "td_auc_mean": c + 0.02 if name != "ABMIL" else 0.9,
                "td_auc_std": 0.05,
                "ibs_mean": ibs,
                "ibs_std": 0.01,
                "pooled_harrell": c - 0.02,
                "optimistic_harrell_mean": opt,
                "optimistic_harrell_std": 0.02,
                "delta_c": np.nan if name.startswith("DeReF") else 0.71 - c,
                "delta_c_ci_low": np.nan if name.startswith("DeReF") else 0.71 - c - 0.03,
                "delta_c_ci_high": np.nan if name.startswith("DeReF") else 0.71 - c + 0.03,
            }
        )
    return pd.DataFrame(rows)


def _braces_balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_table_compiles_as_text():
    runs = _runs_frame()
    tex = comparison_latex(runs, "DeReF_full & co")
    assert _braces_balanced(tex)
    assert re.findall(r"\\begin\{(\w+)\}", tex) == ["table", "tabular"]
    assert re.findall(r"\\end\{(\w+)\}", tex) == ["tabular", "table"]
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == len(runs) and all(line.endswith(r"\\") for line in body)
    header = tex.split("\\toprule\n")[1].split("\\midrule")[0]
    n_cols = len(re.findall(r"(?<!\\)&", header)) + 1
    assert n_cols == 8 and all(len(re.findall(r"(?<!\\)&", line)) + 1 == n_cols for line in body)
    assert body[0].startswith(r"DeReF\_full \& co")
    # bold: the best honest mean of each metric (C, Uno, td-AUC high; IBS low), never the
    # optimistic column, although SNN's optimistic 0.80 is the largest number in the table
    cells = [re.split(r"(?<!\\)&", line.removesuffix(r"\\")) for line in body]
    bold = {(i, j) for i, row in enumerate(cells) for j, cell in enumerate(row) if r"\textbf" in cell}
    assert bold == {(0, 1), (0, 2), (2, 3), (1, 4)}
    assert tex.count(r"\textbf") == 4
    assert "optimistic" in header and r"\textbf" not in "".join(row[-1] for row in cells)


def test_forest_figure_carries_the_differences():
    runs = _runs_frame()
    pairs = runs.iloc[1:].rename(columns={"run": "other"}).assign(reference_wins=0.9, p_holm=0.01)
    fig = forest_figure_plotly(pairs, "DeReF", meta={"run": "DeReF"})
    np.testing.assert_allclose(fig.data[0].x, pairs["delta_c"])
    np.testing.assert_allclose(fig.data[0].error_x.array, pairs["delta_c_ci_high"] - pairs["delta_c"])
    assert list(fig.data[0].y) == ["SNN", "ABMIL"]


# ----------------------------------------------------------------------------- CLI end to end
def test_cli_compare_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [str(runs[n]) for n in ("snn-a", "snn-b", "snn-c")]
    assert cli(["compare", *args, "--out", str(out), "--resamples", "400", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    for name in (
        "comparison.csv",
        "comparison.md",
        "comparison.tex",
        "forest.png",
        "forest.svg",
        "forest.pdf",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "forest.pdf").read_bytes()[:5] == b"%PDF-"
    res = json.loads((out / "comparison.json").read_text())
    assert res["reference"] == "snn-a" and res["bootstrap"]["seed"] == 5
    assert res["bootstrap"]["n_resamples"] == 400
    preds = {n: RunDir(runs[n]).predictions() for n in runs}
    pooled = {n: harrell_c(p["time"], p["event"], p["risk"]).cindex for n, p in preds.items()}
    assert [p["other"] for p in res["pairs"]] == ["snn-b", "snn-c"]
    for pair in res["pairs"]:
        assert pair["delta_c"] == pytest.approx(pooled["snn-a"] - pooled[pair["other"]], abs=1e-12)
        assert pair["delta_c_ci_low"] <= pair["delta_c_ci_high"]
        assert pair["seed"] == 5 and 0 <= pair["reference_wins"] <= 1
        assert pair["p_value"] <= pair["p_holm"] <= 1
        assert len(pair["fold_deltas"]) == 5
    # the headline is the kept model's held-out C of each fold, as training recorded it
    for r in res["runs"]:
        info = RunDir(r["path"]).info
        assert r["per_fold"]["harrell"] == pytest.approx([f.cindex_last_epoch for f in info.folds], abs=1e-12)
        assert r["optimistic_best_epoch"]["label"].startswith("optimistic")
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv["run"]) == ["snn-a", "snn-b", "snn-c"] and "optimistic_harrell_mean" in csv
    md = (out / "comparison.md").read_text()
    assert md.count("\n") == 2 + 3 and "optimistic" in md
    assert "snn-b" in printed and "ΔC" in printed and "seed 5" in printed
    # same seed, same numbers; another reference by its folder
    again = tmp_path / "again"
    assert cli(["compare", *args, "--out", str(again), "--resamples", "400", "--seed", "5"]) == 0
    assert json.loads((again / "comparison.json").read_text())["pairs"] == res["pairs"]
    other_ref = tmp_path / "ref-c"
    assert cli(["compare", *args, "--out", str(other_ref), "--reference", args[2], "--resamples", "50"]) == 0
    flipped = json.loads((other_ref / "comparison.json").read_text())
    assert flipped["reference"] == "snn-c"
    assert flipped["pairs"][0]["delta_c"] == pytest.approx(-res["pairs"][1]["delta_c"], abs=1e-12)


def test_every_run_records_a_reproducibility_manifest_and_compare_lists_differences(runs):
    import dataclasses as dc

    from deref.compare import environment_differences, run_inputs
    from deref.fileio import file_sha256

    info = RunDir(runs["snn-a"]).info
    env = info.environment
    assert env["code"]["package_version"] and env["dependencies"]["torch"] == __import__("torch").__version__
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["seeds"] == {str(f.index): f.seed for f in info.folds}
    split = runs["snn-a"] / "splits" / "splits_0.csv"
    assert env["splits"]["splits_0.csv"] == file_sha256(split)
    assert env["features"]["table"] == info.data.fingerprint
    a, b = run_inputs(runs["snn-a"]), run_inputs(runs["snn-b"])
    assert environment_differences([a, b]) == {}  # same code, folds and data; seeds differ by design
    b = dc.replace(b, environment={**b.environment, "dtype": "bfloat16 autocast"})
    assert environment_differences([a, b]) == {"dtype": {"snn-a": "float32", "snn-b": "bfloat16 autocast"}}
    old = dc.replace(b, environment={})  # a run written before the manifest existed: left out
    assert environment_differences([a, old]) == {}


def test_a_click_on_the_risk_scatter_names_its_patient():
    from deref.figures import clicked_case

    assert (
        clicked_case({"selection": {"points": [{"curve_number": 2, "customdata": "DEMO-0005"}]}})
        == "DEMO-0005"
    )
    assert clicked_case({"selection": {"points": []}}) is None
    assert clicked_case(None) is None
