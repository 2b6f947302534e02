"""The typed run.json (deref.runs.info) and the one run <-> cohort <-> bags fit check."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from deref.data.cohort import load_cohort
from deref.errors import CheckpointError
from deref.runs import MEAN_OF_FOLDS, RunDir, RunInfo, write_run_info
from deref.runs.fit import cohort_fit_problems, load_run_cohort, run_fit_problems


def _raw(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_run_json_round_trips_through_the_typed_model(small_demo, tmp_path):
    raw = _raw(small_demo / "run")
    # runs written before data.time_col was recorded read as the default column
    raw["data"].setdefault("time_col", "survival_months")
    # runs written before the reproducibility manifest read with an empty one
    raw.setdefault("environment", {})
    # model config fields added since the run was written read as their defaults (today's model)
    from deref.model import ModelConfig

    for key, value in ModelConfig().to_dict().items():
        if key not in raw["model"]:
            # the MRI encoder, missing inputs, and the peers' own blocks (prefixed by their names)
            from deref.model.peers import PEERS

            peer_prefixes = tuple(f"{m.split('_')[0]}_" for m in PEERS)
            assert key.startswith(peer_prefixes) or key in (
                "mri_encoder",
                "resnet3d_depth",
                "resnet3d_width",
                "resnet3d_shared",
                "mri_grid",
                "allow_missing",
            ), key
            raw["model"][key] = value
    info = RunInfo.from_dict(raw)
    assert info.to_dict() == raw  # nothing lost, nothing added
    write_run_info(tmp_path, info)
    assert json.loads((tmp_path / "run.json").read_text()) == raw
    assert RunDir(tmp_path).info == info


def test_derived_facts_match_the_raw_file(small_demo):
    raw = _raw(small_demo / "run")
    info = RunDir(small_demo / "run").info
    assert info.fold_indices == [f["index"] for f in raw["folds"]] == [0, 1, 2, 3, 4]
    assert info.needs_wsi and info.modalities == ("genomics", "wsi") and info.time_unit == "months"
    edges = info.bin_edges()
    for f in raw["folds"]:
        want = [math.inf if e == "inf" else e for e in f["bin_edges"]]
        assert edges[f["index"]] == want
    np.testing.assert_allclose(
        edges[MEAN_OF_FOLDS][:-1], np.mean([e[:-1] for k, e in edges.items() if k >= 0], 0)
    )
    val = info.validation_folds()
    assert sorted(val) == sorted(c for f in raw["folds"] for c in f["val_ids"])
    assert all(c in raw["folds"][k]["val_ids"] for c, k in val.items())
    assert info.fold(2).train_ids == tuple(raw["folds"][2]["train_ids"])
    head = raw["metrics"]["headline"]
    assert (
        info.metrics.headline.folds == tuple(head["cindex_folds"])
        and info.metrics.headline.mean == head["cindex_mean"]
    )
    with pytest.raises(CheckpointError, match="no fold 7; folds are"):
        info.fold(7)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other/9"), "format 'other/9'; expected 'deref-run/1'"),
        (lambda d: d.pop("folds"), "no 'folds' list"),
        (lambda d: d["folds"][1].pop("bin_edges"), "folds[1] needs 'index' and 'bin_edges'"),
        (lambda d: d["model"].update(n_bins="four"), "bad model config"),
        (lambda d: d["data"].update(m1_columns=[["a"], "b"]), "data.m1_columns: malformed"),
    ],
)
def test_a_malformed_run_json_names_what_is_wrong(small_demo, tmp_path, edit, message):
    run = tmp_path / "run"
    shutil.copytree(small_demo / "run", run, ignore=shutil.ignore_patterns("explanations"))
    raw = _raw(run)
    edit(raw)
    (run / "run.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as err:
        RunDir(run)
    assert str(err.value).startswith(f"{run / 'run.json'}: ") and message in str(err.value)


def test_the_runs_own_cohort_fits(small_demo):
    info = RunDir(small_demo / "run").info
    cohort = load_run_cohort(info)
    assert cohort.case_ids and cohort_fit_problems(info, cohort, run_json="run.json") == []


def test_fit_problems_name_the_missing_columns_the_bags_and_the_bins(small_demo, tmp_path):
    info = RunDir(small_demo / "run").info
    cohort = load_run_cohort(info)
    cols = list(cohort.genomic.columns)
    gone = list(info.data.m1_columns[0][:2])
    probs = run_fit_problems(
        info,
        run_json="R/run.json",
        table="T.csv",
        genomic_columns=[c for c in cols if c not in gone],
        check_bags=False,
    )
    assert len(probs) == 1
    p = probs[0]
    assert (p.file, p.row, p.column) == ("T.csv", 1, gone[0])
    assert (
        f"2 column(s) of the run's gene family {info.data.m1_names[0]!r}" in p.problem
        and gone[1] in p.problem
    )
    # a model that reads slides needs a bag folder
    (p,) = run_fit_problems(info, run_json="R/run.json", table="T.csv")
    assert "reads slides; no bag folder was given" in p.problem
    # bags of another width
    narrow = dataclasses.replace(info, data=dataclasses.replace(info.data, wsi_dim=32))
    probs = run_fit_problems(
        narrow, run_json="R/run.json", table="T.csv", bag_dir=cohort.bag_dir, slides=cohort.slides
    )
    assert (
        len(probs) == 1
        and "D = 64 features per patch" in probs[0].problem
        and "wsi_dim = 32" in probs[0].expected
    )
    # an empty bag folder
    (tmp_path / "empty").mkdir()
    (p,) = run_fit_problems(
        info, run_json="R/run.json", table="T.csv", bag_dir=tmp_path / "empty", slides=cohort.slides
    )
    assert "no patient's slide has a bag file here" in p.problem
    # a run whose folds disagree with its own config
    bins = dataclasses.replace(info, model=dataclasses.replace(info.model, n_bins=info.model.n_bins + 1))
    (p,) = run_fit_problems(bins, run_json="R/run.json", table="T.csv", check_bags=False)
    assert (p.file, p.column) == ("R/run.json", "folds[0].bin_edges") and "time bins" in p.problem


def test_family_mismatch_is_named(small_demo):
    info = RunDir(small_demo / "run").info
    fams = load_run_cohort(info).families
    (p,) = run_fit_problems(info, run_json="R/run.json", table="T.csv", families=fams[:-1], check_bags=False)
    assert (
        f"the run has {len(fams)} gene families" in p.problem
        and f"the cohort maps {len(fams) - 1}" in p.problem
    )
    swapped = [dataclasses.replace(fams[0], columns=list(reversed(fams[0].columns))), *fams[1:]]
    (p,) = run_fit_problems(info, run_json="R/run.json", table="T.csv", families=swapped, check_bags=False)
    assert "same columns in another order" in p.problem


def test_another_table_is_read_with_the_runs_families(small_demo, tmp_path):
    info = RunDir(small_demo / "run").info
    c = small_demo / "cohort"
    other = load_run_cohort(info, table=c / "cohort.csv", bag_dir=c / "bags")
    direct = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv", bag_dir=c / "bags")
    assert [f.columns for f in other.families] == [f.columns for f in direct.families]
