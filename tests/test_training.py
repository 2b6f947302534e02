"""Training runs end to end: run directory, checkpoints, reproducibility, bad inputs, CLI."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from deref.cli.main import main as cli
from deref.data.cohort import load_cohort
from deref.data.splits import inner_splits, make_folds
from deref.errors import CheckpointError, ConfigError, DataError
from deref.inference import Predictor
from deref.metrics import harrell_c
from deref.model import ModelConfig
from deref.runs import RunDir
from deref.training import (
    CohortTrainer,
    TrainConfig,
    class_weights,
    epoch_batches,
    l1_target,
    mean_curve,
    select_epoch,
    survival_nll,
    train_cross_validation,
)


@pytest.fixture(scope="module")
def demo_cohort(small_demo):
    c = small_demo / "cohort"
    return load_cohort(c / "cohort.csv", signatures=c / "signatures.csv", bag_dir=c / "bags")


def test_run_directory_layout_and_headline(small_demo):
    run = RunDir(small_demo / "run")
    info = run.info
    assert info.format == "deref-run/1"
    assert info.fold_indices == [0, 1, 2, 3, 4]
    assert info.metrics.headline.protocol == "fixed last epoch (2)"  # the small demo trains 2 epochs
    preds = run.predictions()
    assert sorted(preds["case_id"]) == sorted(set(preds["case_id"]))  # each patient once, out of fold
    for f in info.folds:
        assert (run.fold_dir(f.index) / "model.safetensors").exists()
        assert set(f.train_ids).isdisjoint(f.val_ids)
        fold_preds = preds[preds["fold"] == f.index]
        assert sorted(fold_preds["case_id"]) == sorted(f.val_ids)
    tr = run.train_risks()
    assert set(tr.columns) == {"fold", "case_id", "risk"}
    assert np.all(np.diff(preds[["surv_0", "surv_1", "surv_2", "surv_3"]].to_numpy(), axis=1) <= 1e-6)


def test_bins_come_from_training_fold_only(small_demo, demo_cohort):
    run = RunDir(small_demo / "run")
    for f in run.info.folds:
        pts = demo_cohort.patients.loc[list(f.train_ids)]
        unc = pts.loc[pts["censorship"] == 0, "time"].to_numpy()
        inner = np.quantile(unc, [0.25, 0.5, 0.75])
        np.testing.assert_allclose(f.bin_edges[1:-1], inner, rtol=1e-9)


def test_predictor_reproduces_run_predictions_and_never_unpickles(small_demo, demo_cohort, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    pred = Predictor.from_run(small_demo / "run", device="cpu")
    again = pred.predict(demo_cohort, fold="oof")
    saved = RunDir(small_demo / "run").predictions().set_index("case_id").loc[again["case_id"]]
    np.testing.assert_allclose(again["risk"].to_numpy(), saved["risk"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(again["surv_2"].to_numpy(), saved["surv_2"].to_numpy(), atol=1e-6)
    assert (again["fold"].to_numpy() == saved["fold"].to_numpy()).all()


def test_checkpoint_round_trip_is_bit_exact(small_demo, tmp_path):
    run = RunDir(small_demo / "run")
    fold = run.load_fold(0)
    saved = load_file(str(run.fold_dir(0) / "model.safetensors"))
    for k, v in fold.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # save again and reload: identical tensors
    from deref.runs import load_weights, save_checkpoint

    save_checkpoint(tmp_path / "f", fold.model, fold.preprocessing)
    from deref.model import build_model

    again = load_weights(build_model(run.config), tmp_path / "f" / "model.safetensors")
    for k, v in again.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_checkpoint_from_another_config_is_refused(small_demo, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(small_demo / "run", bad)
    info = json.loads((bad / "run.json").read_text())
    info["model"]["n_experts"] = 8
    (bad / "run.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not fit this model config|expects"):
        RunDir(bad).load_fold(0)


def test_cohort_missing_run_columns_is_a_clear_error(small_demo, tmp_path):
    c = small_demo / "cohort"
    table = pd.read_csv(c / "cohort.csv")
    dropped = [col for col in table.columns if col.endswith("_rnaseq")][0]
    table.drop(columns=[dropped]).to_csv(tmp_path / "t.csv", index=False)
    pred = Predictor.from_run(small_demo / "run", device="cpu")
    cohort = load_cohort(
        tmp_path / "t.csv", bag_dir=c / "bags", families_json=None, signatures=c / "signatures.csv"
    )
    # the one run <-> cohort fit check names the table, the column and the gene family
    with pytest.raises(DataError, match=rf"t\.csv:1: {dropped}: 1 column\(s\) of the run's gene family"):
        pred.predict(cohort)
    with pytest.raises(DataError, match="are not genomic columns of the table"):
        pred.predict_patient(cohort, cohort.case_ids[0])


def test_training_refuses_bags_of_another_dimension(demo_cohort, tmp_path):
    folds = make_folds(demo_cohort.patients, k=5, seed=0)
    cfg = ModelConfig(
        m1_sizes=tuple(f.size for f in demo_cohort.families), wsi_dim=128, landmarks=16, snn_hidden=32
    )
    with pytest.raises((ConfigError, DataError), match="64"):
        train_cross_validation(demo_cohort, folds, cfg, TrainConfig(epochs=1), tmp_path / "r", only_folds=[0])


def test_incomplete_folds_are_refused(demo_cohort, tmp_path):
    folds = make_folds(demo_cohort.patients, k=5, seed=0)[:4]
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in demo_cohort.families))
    with pytest.raises(DataError, match="in no validation fold"):
        train_cross_validation(demo_cohort, folds, cfg, TrainConfig(epochs=1), tmp_path / "r")


def test_sampler_weights_and_buckets():
    bins = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    cens = np.array([0, 0, 1, 0, 0, 0, 1, 1])
    w = class_weights(bins, cens)
    # a class's total weight is the same for every class
    classes = bins * 2 + cens
    totals = {c: w[classes == c].sum() for c in np.unique(classes)}
    assert np.allclose(list(totals.values()), list(totals.values())[0])
    ids = [f"p{i}" for i in range(40)]
    sizes = {c: i * 10 for i, c in enumerate(ids)}
    batches = epoch_batches(ids, None, 4, sizes.get, np.random.default_rng(0))
    assert sorted(c for b in batches for c in b) == sorted(ids)
    spans = [max(sizes[c] for c in b) - min(sizes[c] for c in b) for b in batches]
    assert max(spans) <= 40 * 10  # bucketed within chunks of 8 batches
    assert np.mean(spans) < 150


def test_genomic_baseline_same_code_path(demo_cohort, tmp_path):
    folds = make_folds(demo_cohort.patients, k=5, seed=0)
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in demo_cohort.families))
    res = train_cross_validation(demo_cohort, folds, cfg, TrainConfig(epochs=3), tmp_path / "snn")
    assert len(res.predictions) == len(demo_cohort.case_ids)
    # the headline is the mean and sample std of the folds' last-epoch C-indices, each of
    # which is Harrell's C of that fold's own predictions
    by_fold = []
    for f in res.info.folds:
        p = res.predictions[res.predictions["fold"] == f.index]
        by_fold.append(harrell_c(p["time"], p["event"], p["risk"]).cindex)
        assert f.cindex_last_epoch == pytest.approx(by_fold[-1], abs=1e-12)
    head = res.info.metrics.headline
    assert head.folds == pytest.approx(by_fold, abs=1e-12)
    assert head.mean == pytest.approx(np.mean(by_fold), abs=1e-12)
    assert head.std == pytest.approx(np.std(by_fold, ddof=1), abs=1e-12)
    p = res.predictions
    pooled = harrell_c(p["time"], p["event"], p["risk"]).cindex
    assert res.info.metrics.pooled_oof_cindex == pytest.approx(pooled, abs=1e-12)
    # every epoch validated: the last epoch's is the headline, the best one the optimistic figure
    history = res.info.history_frame()
    for f in res.info.folds:
        curve = history.loc[history["fold"] == f.index, "val_cindex"].to_numpy()
        assert len(curve) == 3 and curve[-1] == f.cindex_last_epoch
        assert f.optimistic_best_epoch == int(np.argmax(curve)) + 1
        assert f.optimistic_best_epoch_cindex == curve.max()
    assert RunDir(tmp_path / "snn").info == res.info  # what was written is what was returned
    # same seed, same numbers
    res2 = train_cross_validation(demo_cohort, folds, cfg, TrainConfig(epochs=3), tmp_path / "snn2")
    np.testing.assert_array_equal(res.predictions["risk"].to_numpy(), res2.predictions["risk"].to_numpy())


def test_cli_predict_evaluate_figures_validate(small_demo, tmp_path, capsys):
    run = small_demo / "run"
    c = small_demo / "cohort"
    assert cli(["predict", str(run), "--out", str(tmp_path / "p.csv")]) == 0
    p = pd.read_csv(tmp_path / "p.csv")
    assert len(p) == 40 and {"risk", "risk_std", "surv_0"} <= set(p.columns)
    assert cli(["evaluate", str(run), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "log-rank" in out and "harrell" in out.lower()
    # Uno's C / td-AUC / IBS weigh censoring by each fold's training patients, not the pooled cohort
    assert "training patients of fold 0" in out
    from deref.metrics import evaluate_predictions
    from deref.runs import RunDir

    rd = RunDir(run)
    edges = rd.info.bin_edges()
    # the CLI scores the curves as drawn (interpolated); --step the step curves
    lib = evaluate_predictions(rd.predictions(), rd.train_risks(), edges, interpolate=True).to_frame()
    pooled = evaluate_predictions(rd.predictions(), None, edges, interpolate=True).to_frame()
    step = evaluate_predictions(rd.predictions(), rd.train_risks(), edges).to_frame()
    saved = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert cli(["evaluate", str(run), "--step", "--json", str(tmp_path / "s.json")]) == 0
    saved_step = json.loads((tmp_path / "s.json").read_text())["metrics"]
    for i in range(len(lib)):
        for m in ("harrell", "uno", "ibs"):
            for frame, js in ((lib, saved), (step, saved_step)):
                want, got = frame.iloc[i][m], js[str(i)][m]
                assert (np.isnan(want) and got is None) or got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert saved["0"]["curve"] == "interpolated" and saved_step["0"]["curve"] == "step"
    assert saved["0"]["ibs"] != pytest.approx(saved_step["0"]["ibs"])
    assert not np.allclose(
        lib["ibs"].iloc[:-3].astype(float), pooled["ibs"].iloc[:-3].astype(float), equal_nan=True
    )
    assert cli(["figures", str(run), "--out", str(tmp_path / "fig"), "--formats", "png"]) == 0
    assert (tmp_path / "fig" / "km_median.png").stat().st_size > 10_000
    args = [
        "validate",
        str(c / "cohort.csv"),
        "--signatures",
        str(c / "signatures.csv"),
        "--bags",
        str(c / "bags"),
        "--run",
        str(run),
    ]
    assert cli(args) == 0
    assert cli(["predict", str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")]) == 1
    assert "run directory not found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_end_to_end(small_demo, tmp_path):
    c = small_demo / "cohort"
    cmd = [
        sys.executable,
        "-m",
        "deref.cli.main",
        "train",
        str(c / "cohort.csv"),
        "--signatures",
        str(c / "signatures.csv"),
        "--bags",
        str(c / "bags"),
        "--folds",
        "5",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "landmarks=16",
        "--set",
        "snn_hidden=32",
        "--no-track-validation",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "C-index, fixed last epoch (1)" in done.stdout
    assert RunDir(tmp_path / "run").config.wsi_dim == 64  # read from the bags
    out_at = cmd.index("--out")
    bad_cmd = cmd[:out_at] + ["--out", str(tmp_path / "r2"), "--set", "rca_mode=nonsense"]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "rca_mode" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_demo_learns_the_planted_signal_but_not_beyond_the_oracle(full_demo):
    summary = json.loads((full_demo / "demo_summary.json").read_text())
    assert 0.75 <= summary["oracle_cindex"] <= 0.85
    assert summary["model_oof_cindex"] >= 0.70
    assert summary["model_oof_cindex"] < summary["oracle_cindex"]


def test_a_demo_folder_counts_as_built_only_for_the_current_recipe(tmp_path):
    from deref.demo import build_recipe, demo_is_built

    (tmp_path / "run").mkdir()
    (tmp_path / "cohort").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    (tmp_path / "cohort" / "demo.json").write_text("{}")
    summary = tmp_path / "demo_summary.json"
    assert not demo_is_built(tmp_path)  # no summary
    summary.write_text(json.dumps({"recipe": build_recipe()}))
    assert demo_is_built(tmp_path)
    older = build_recipe()
    older["train"]["epochs"] += 1
    summary.write_text(json.dumps({"recipe": older}))
    assert not demo_is_built(tmp_path)
    summary.write_text("not json")
    assert not demo_is_built(tmp_path)


def test_a_run_reloads_its_cohort_with_its_own_survival_columns(small_demo, tmp_path):
    """`deref train --time-col/--censorship-col`: the run records both, and reloading its
    cohort (Predictor, dashboard) reads those columns, not the defaults."""
    import pandas as pd

    from deref.cli.main import main
    from deref.inference import Predictor
    from deref.runs.fit import load_run_cohort

    c = small_demo / "cohort"
    table = pd.read_csv(c / "cohort.csv").rename(
        columns={"survival_months": "os_days", "censorship": "censored"}
    )
    table.to_csv(tmp_path / "renamed.csv", index=False)
    argv = ["train", str(tmp_path / "renamed.csv"), "--signatures", str(c / "signatures.csv"), "--folds", "2"]
    argv += ["--time-col", "os_days", "--censorship-col", "censored", "--model", "snn", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    info = RunDir(tmp_path / "run").info
    assert (info.data.time_col, info.data.extra["censorship_col"], info.time_unit) == (
        "os_days",
        "censored",
        "days",
    )
    cohort = load_run_cohort(info)
    expected = table.drop_duplicates("case_id").set_index("case_id")
    np.testing.assert_array_equal(cohort.patients["censorship"], expected.loc[cohort.case_ids, "censored"])
    preds = Predictor(RunDir(tmp_path / "run")).predict(cohort, fold="oof").set_index("case_id")
    written = RunDir(tmp_path / "run").predictions().set_index("case_id")
    np.testing.assert_allclose(preds.loc[written.index, "risk"], written["risk"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- honest model selection
def test_selected_epoch_is_the_inner_argmax_of_a_recorded_history():
    # two inner folds of one candidate: the mean curve, an epoch one inner run never reached is missing
    assert mean_curve([[0.5, 0.7, 0.6], [0.7, 0.5]], 3) == pytest.approx([0.6, 0.6, np.nan], nan_ok=True)
    # candidates x epochs: the highest mean inner score, NaN ignored
    curves = [[0.55, 0.61, np.nan], [0.58, 0.60, 0.62], [0.62, 0.5, 0.4]]
    assert select_epoch(curves) == (1, 3)
    assert select_epoch([[0.6, 0.6, 0.59], [0.6, 0.6, 0.6]]) == (
        0,
        1,
    )  # ties: first candidate, earliest epoch
    assert select_epoch([[np.nan, np.nan]]) is None


def test_survival_nll_and_l1_by_hand():
    surv = np.array([[0.8, 0.4], [0.8, 0.4], [0.5, 0.5]])
    # event in bin 1: -log(0.8 - 0.4); censored in bin 0: -log 0.8; event in bin 0: -log(1 - 0.5)
    got = survival_nll(surv, np.array([1, 0, 0]), np.array([0, 1, 0]))
    assert got == pytest.approx(-(np.log(0.4) + np.log(0.8) + np.log(0.5)) / 3)
    from deref.losses import l1_penalty

    assert float(l1_penalty([torch.tensor([1.0, -2.0]), torch.tensor([[0.5], [-0.25]])])) == 3.75
    assert float(l1_penalty([])) == 0.0


def test_train_config_selection_settings_are_checked():
    assert TrainConfig().selection == "last"  # the paper's protocol stays the default
    with pytest.raises(ConfigError, match="selection"):
        TrainConfig(selection="best")
    with pytest.raises(ConfigError, match="needs selection = 'inner'"):
        TrainConfig(grid={"weight_decay": [1e-5, 1e-3]})
    with pytest.raises(ConfigError, match="grid key 'epochs'"):
        TrainConfig(selection="inner", grid={"epochs": [3]})
    cfg = TrainConfig(selection="inner", grid={"weight_decay": [0.0, 1e-3], "snn_dropout": [0.1]})
    assert cfg.candidates() == [
        {"weight_decay": 0.0, "snn_dropout": 0.1},
        {"weight_decay": 1e-3, "snn_dropout": 0.1},
    ]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def _snn(cohort):
    return ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))


def test_inner_selection_records_the_rule_and_keeps_the_chosen_epoch(demo_cohort, tmp_path):
    folds = make_folds(demo_cohort.patients, k=5, seed=0)
    cfg = TrainConfig(epochs=4, batch_size=8, selection="inner", grid={"weight_decay": [1e-5, 1e-2]})
    res = train_cross_validation(
        demo_cohort, folds, _snn(demo_cohort), cfg, tmp_path / "inner", only_folds=[0, 1]
    )
    last = train_cross_validation(
        demo_cohort,
        folds,
        _snn(demo_cohort),
        TrainConfig(epochs=4, batch_size=8),
        tmp_path / "last",
        only_folds=[0, 1],
    )
    assert res.info.metrics.headline.protocol.startswith("epoch count chosen on an inner split")
    for f, g in zip(res.info.folds, last.info.folds):
        sel = f.selection
        assert sel["rule"] == "inner" and sel["metric"] == "cindex" and len(sel["candidates"]) == 2
        curves = [[np.nan if v is None else v for v in c["curve"]] for c in sel["candidates"]]
        which, epoch = select_epoch(curves)
        assert (f.selected_epoch, sel["epoch"]) == (epoch, epoch)
        assert sel["params"] == sel["candidates"][which]["params"]
        # the headline is the kept (chosen-epoch) model's C-index on the outer fold ...
        p = res.predictions[res.predictions["fold"] == f.index]
        assert f.cindex_last_epoch == pytest.approx(harrell_c(p["time"], p["event"], p["risk"]).cindex)
        assert f.cindex_last_epoch == f.history[epoch - 1]["val_cindex"]
        # ... and the fixed last epoch is recorded beside it
        assert f.cindex_fixed_last_epoch == f.history[-1]["val_cindex"]
        if sel["params"] == {"weight_decay": 1e-5}:  # the default: the retrain is the "last" run
            assert f.cindex_fixed_last_epoch == g.cindex_last_epoch
        assert g.selection == {"rule": "last", "epoch": 4} and g.selected_epoch == 4
    # the kept weights are the ones written: the Predictor reproduces the predictions
    again = Predictor.from_run(tmp_path / "inner", device="cpu").predict(demo_cohort, fold="oof")
    again = again[again["case_id"].isin(res.predictions["case_id"])]
    assert len(again) == len(res.predictions)
    saved = res.predictions.set_index("case_id").loc[again["case_id"]]
    np.testing.assert_allclose(again["risk"].to_numpy(), saved["risk"].to_numpy(), atol=1e-6)


def test_selection_never_reads_outer_validation_labels(demo_cohort, tmp_path):
    fold = make_folds(demo_cohort.patients, k=5, seed=0)[2]
    rng = np.random.default_rng(7)
    poisoned = demo_cohort.patients.copy()
    poisoned.loc[fold.val, "time"] = rng.uniform(0.1, 500, len(fold.val))
    poisoned.loc[fold.val, "censorship"] = 1 - poisoned.loc[fold.val, "censorship"]
    poisoned["event"] = 1 - poisoned["censorship"]
    bad = dataclasses.replace(demo_cohort, patients=poisoned)
    out = {}
    for selection, recal in (("inner", "affine"), ("last", "isotonic")):
        cfg = TrainConfig(epochs=3, selection=selection, selection_metric="nll", l1=1e-4, recalibration=recal)
        for name, cohort in (("clean", demo_cohort), ("poisoned", bad)):
            trainer = CohortTrainer(cohort, _snn(cohort), cfg)
            r = trainer.train_fold(fold, tmp_path / selection / name)
            weights = load_file(str(tmp_path / selection / name / "model.safetensors"))
            surv = r.predictions.filter(like="surv_").to_numpy()
            out[selection, name] = (r.info.metrics["selection"], r.info.recalibration, weights, surv)
        clean, poisoned = out[selection, "clean"], out[selection, "poisoned"]
        assert clean[0] == poisoned[0]  # same inner curves, same chosen epoch
        assert clean[1] is not None and clean[1] == poisoned[1]  # the same map, fitted on inner data
        assert clean[1].kind == recal
        if selection == "inner":
            assert clean[1].n_patients == sum(clean[0]["n_inner_val"])
        for k, v in clean[2].items():
            assert torch.equal(v, poisoned[2][k]), k
        np.testing.assert_array_equal(clean[3], poisoned[3])  # the outer fold's curves too


def test_l1_on_the_genomic_encoder_changes_training(demo_cohort):
    fold = make_folds(demo_cohort.patients, k=5, seed=0)[0]
    weights = {}
    for l1 in (0.0, 1e-3):
        r = CohortTrainer(demo_cohort, _snn(demo_cohort), TrainConfig(epochs=2, l1=l1)).train_fold(fold)
        weights[l1] = r.train_risks["risk"].to_numpy()
    assert not np.allclose(weights[0.0], weights[1e-3])
    from deref.model import build_model

    model = build_model(_snn(demo_cohort))
    assert {id(p) for p in l1_target(model)} == {id(p) for p in model.snn.parameters()}


def test_cli_train_inner_selection_prints_and_records_the_rule(small_demo, tmp_path, capsys):
    c = small_demo / "cohort"
    args = ["train", str(c / "cohort.csv"), "--signatures", str(c / "signatures.csv"), "--model", "snn"]
    args += [
        "--folds",
        "5",
        "--epochs",
        "2",
        "--only-folds",
        "1",
        "--selection",
        "inner",
        "--inner-folds",
        "2",
    ]
    args += ["--grid", "weight_decay=1e-5,1e-3", "--l1", "1e-5", "--set", "snn_dropout=0.1"]
    assert cli(args + ["--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "selection inner (2-fold, by cindex, grid {'weight_decay': [1e-05, 0.001]})" in out
    assert "at inner-selected epoch" in out and "C-index, fixed last epoch (for comparison)" in out
    info = RunDir(tmp_path / "r").info
    assert info.train["selection"] == "inner" and info.train["l1"] == 1e-5
    assert info.model.snn_dropout == 0.1
    (f,) = info.folds
    assert f.selection["inner_folds"] == 2 and len(f.selection["n_inner_val"]) == 2
    assert f.selected_epoch in (1, 2)


def test_recalibration_is_fitted_on_inner_patients_and_applied_by_the_predictor(demo_cohort, tmp_path):
    folds = make_folds(demo_cohort.patients, k=5, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=8, recalibration="affine", inner_fraction=0.25)
    res = train_cross_validation(demo_cohort, folds, _snn(demo_cohort), cfg, tmp_path / "r", only_folds=[1])
    f = res.info.folds[0]
    assert f.selection == {"rule": "last", "epoch": 3}  # the paper's epoch; only the curves change
    inner = inner_splits(folds[1], demo_cohort.patients, fraction=0.25, seed=cfg.seed + 1, n_bins=4)
    assert f.recalibration.n_patients == len(inner[0].val)
    assert f.recalibration.n_events == int(demo_cohort.patients.loc[list(inner[0].val), "event"].sum())
    assert f.horizon == pytest.approx(demo_cohort.patients.loc[list(folds[1].train), "time"].max())
    info = RunDir(tmp_path / "r").info  # written and read back
    assert info.folds[0].recalibration == f.recalibration and info.recalibrated
    ids = list(folds[1].val)
    cols = [f"surv_{k}" for k in range(4)]
    pred = Predictor.from_run(tmp_path / "r", device="cpu").predict(demo_cohort, ids, fold=1)
    raw = Predictor.from_run(tmp_path / "r", device="cpu", recalibrate=False).predict(
        demo_cohort, ids, fold=1
    )
    saved = res.predictions.set_index("case_id").loc[ids]
    np.testing.assert_allclose(pred[cols].to_numpy(), saved[cols].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(
        pred[cols].to_numpy(), f.recalibration.apply_survival(raw[cols].to_numpy()), atol=1e-5
    )
    assert not np.allclose(pred[cols].to_numpy(), raw[cols].to_numpy(), atol=1e-3)
    np.testing.assert_array_equal(
        pred["risk"].to_numpy(), raw["risk"].to_numpy()
    )  # the ranking is the model's
    np.testing.assert_allclose(pred["risk"].to_numpy(), saved["risk"].to_numpy(), atol=1e-6)
