"""MRI + WSI cohorts: the manifest, the per-sequence vectors as modality-1 groups, training,
prediction, the run's reload and `deref validate` on them."""

from __future__ import annotations

import numpy as np
import pytest
from mri_helpers import DIM, SEQUENCES, WSI_DIM, load_mri_cohort, write_mri_cohort

from deref.cli.main import main as cli
from deref.data.cohort import load_cohort
from deref.data.mri import mri_column, read_mri_manifest
from deref.data.splits import make_folds
from deref.errors import ConfigError, DataError
from deref.inference import Predictor
from deref.metrics import harrell_c
from deref.model import ModelConfig
from deref.runs import RunDir
from deref.runs.fit import load_run_cohort
from deref.training import TrainConfig, train_cross_validation


def test_mri_cohort_reads_one_group_per_sequence(tmp_path):
    table, _ = write_mri_cohort(tmp_path, n=10)
    co = load_mri_cohort(tmp_path)
    assert co.m1_kind == "mri" and co.m1_label == "MRI sequence"
    assert [f.name for f in co.families] == list(SEQUENCES) and {f.size for f in co.families} == {DIM}
    assert co.m1.shape == (10, len(SEQUENCES) * DIM)
    assert co.families[2].columns[0] == mri_column("hepatobiliary", 0) == "hepatobiliary:0"
    import h5py

    with h5py.File(tmp_path / "mri_features" / "LC-003.h5") as f:
        want = f["features"][()]
    np.testing.assert_array_equal(co.m1.loc["LC-003"].to_numpy().reshape(len(SEQUENCES), DIM), want)
    assert co.modalities["mri"].all() and co.modalities["wsi"].all() and "genomic" not in co.modalities
    m = read_mri_manifest(tmp_path / "mri_manifest.csv")
    assert m.sequences == SEQUENCES and m.masks["LC-000"] == tmp_path / "mri" / "LC-000" / "mask.nii.gz"
    # the manifest and its features are part of the cohort's identity, not only the table
    from deref.fileio import file_sha256

    assert co.fingerprint != file_sha256(tmp_path / "cohort.csv")


def test_mri_cohort_errors_name_patient_sequence_and_file(tmp_path):
    write_mri_cohort(tmp_path, n=8, drop_feature_of="LC-002", one_row_for="LC-005")
    with pytest.raises(DataError) as exc:
        load_mri_cohort(tmp_path)
    msg = str(exc.value)
    assert "LC-002" in msg and "no MRI feature file" in msg
    assert "LC-005" in msg and "--per-sequence" in msg
    with pytest.raises(ConfigError, match="both"):
        load_cohort(tmp_path / "cohort.csv", mri_manifest=tmp_path / "mri_manifest.csv")
    with pytest.raises(DataError, match="no genomic column"):  # a genomic cohort still needs them
        load_cohort(tmp_path / "cohort.csv")
    bad = tmp_path / "bad_manifest.csv"
    bad.write_text("case_id,t1,mask\nA,a.nii,\n,b.nii,\nA,c.nii,\nB,,m.nii\n")
    with pytest.raises(DataError) as exc:
        read_mri_manifest(bad)
    msg = str(exc.value)
    assert ":3: case_id: blank patient id" in msg and "patient A listed twice" in msg
    assert ":5: t1: patient B: blank sequence path" in msg


def test_train_predict_and_reload_an_mri_wsi_run(tmp_path):
    _, risk = write_mri_cohort(tmp_path, n=60)
    co = load_mri_cohort(tmp_path)
    folds = make_folds(co.patients, k=3, seed=0)
    sizes = tuple(f.size for f in co.families)
    names = tuple(f.name for f in co.families)
    snn = ModelConfig(model_type="snn", m1_kind="mri", m1_sizes=sizes, m1_names=names)
    res = train_cross_validation(co, folds, snn, TrainConfig(epochs=6, batch_size=8), tmp_path / "snn")
    p = res.predictions
    # the planted hepatobiliary signal is learned from the MRI tokens
    assert harrell_c(p["time"], p["event"], p["risk"]).cindex > 0.7
    deref_cfg = ModelConfig(
        model_type="deref",
        m1_kind="mri",
        m1_sizes=sizes,
        m1_names=names,
        wsi_dim=WSI_DIM,
        snn_hidden=32,
        landmarks=8,
    )
    run = train_cross_validation(
        co, folds, deref_cfg, TrainConfig(epochs=1, batch_size=8), tmp_path / "deref"
    )
    info = RunDir(tmp_path / "deref").info
    assert info.m1_kind == "mri" and info.modalities == ("mri", "wsi") and info.m1_label == "MRI sequence"
    assert info.model.feature_names[0] == "specific_mri"
    again = load_run_cohort(info)  # the run reloads its MRI cohort from what it recorded
    assert again.m1_kind == "mri" and again.fingerprint == co.fingerprint
    pred = Predictor.from_run(tmp_path / "deref", device="cpu").predict(again, fold="oof")
    saved = run.predictions.set_index("case_id").loc[pred["case_id"]]
    np.testing.assert_allclose(pred["risk"].to_numpy(), saved["risk"].to_numpy(), atol=1e-5)


def test_cli_train_and_validate_anwrite_mri_cohort(tmp_path, capsys):
    write_mri_cohort(tmp_path, n=30)
    mri = [
        "--mri-manifest",
        str(tmp_path / "mri_manifest.csv"),
        "--mri-features",
        str(tmp_path / "mri_features"),
    ]
    assert cli(["validate", str(tmp_path / "cohort.csv"), "--bags", str(tmp_path / "bags"), *mri]) == 0
    out = capsys.readouterr().out
    assert "MRI sequences: arterial 16, delay 16, hepatobiliary 16, t1 16, t2 16" in out
    args = ["train", str(tmp_path / "cohort.csv"), *mri, "--model", "snn", "--epochs", "1", "--folds", "3"]
    assert cli([*args, "--batch-size", "8", "--out", str(tmp_path / "run")]) == 0
    info = RunDir(tmp_path / "run").info
    assert info.m1_kind == "mri" and info.data.m1_names == SEQUENCES
    assert cli(["validate", str(tmp_path / "cohort.csv"), *mri, "--run", str(tmp_path / "run")]) == 0
    (tmp_path / "mri_features" / "LC-004.h5").unlink()
    capsys.readouterr()
    assert cli(["validate", str(tmp_path / "cohort.csv"), *mri]) == 1
    out = capsys.readouterr().out
    assert "LC-004.h5" in out and "patient LC-004: no MRI feature file" in out
