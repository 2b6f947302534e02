"""End-to-end MRI cohorts: ROI cubes (``deref mri --cubes``) read into a cohort, a 3D ResNet
trained with DeReF from them, predictions, voxel attributions and the fit checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from deref.cli.main import main as cli
from deref.data.cohort import load_cohort
from deref.data.mri import mri_groups, read_mri_cubes, read_mri_manifest
from deref.data.splits import make_folds
from deref.errors import ConfigError, DataError
from deref.inference import Predictor
from deref.metrics import harrell_c
from deref.model import ModelConfig
from deref.model.config import tiny_mri_config
from deref.runs import RunDir
from deref.runs.fit import cohort_fit_problems, load_run_cohort
from deref.training import TrainConfig, train_cross_validation
from tests.mri_helpers import SEQUENCES, WSI_DIM, load_cube_cohort, load_mri_cohort, write_cube_cohort

GRID = 16


def _e2e_config(co, model_type="deref", **kw) -> ModelConfig:
    """The tiny end-to-end config (3D ResNet-10 of width 8) on this cohort's 16^3 cubes."""
    assert co.m1_sizes == (GRID**3,) * len(SEQUENCES)
    return tiny_mri_config(
        SEQUENCES, GRID, model_type=model_type, wsi_dim=WSI_DIM, snn_hidden=32, landmarks=8, **kw
    )


def test_cube_cohort_reads_one_cube_group_per_sequence(tmp_path):
    write_cube_cohort(tmp_path, n=12, grid=GRID)
    co = load_cube_cohort(tmp_path)
    assert co.m1_kind == "mri" and co.mri_encoder == "resnet3d" and co.genomic.shape == (12, 0)
    assert [f.name for f in co.families] == list(SEQUENCES) and co.m1_sizes == (GRID**3,) * 5
    cubes = co.mri_cubes
    assert cubes.grid == GRID and cubes.data.shape == (12, 5, GRID**3) and cubes.data.dtype == np.float32
    case = co.case_ids[3]
    with h5py.File(tmp_path / "mri_cubes" / f"{case}.h5") as f:
        raw = f["cubes"][()]
        assert f.attrs["content"] == "cubes" and f.attrs["grid"] == GRID
    cube, inside = cubes.cube(case)
    np.testing.assert_array_equal(cube, raw)
    groups = cubes.groups([case, co.case_ids[0]])
    np.testing.assert_array_equal(groups[2][0], raw[2].reshape(-1))  # C-order flattening
    all_rows = cubes.groups(co.case_ids)
    assert all(np.shares_memory(g, cubes.data) for g in all_rows)  # the cohort's order: views, no copy
    assert inside.shape == (GRID,) * 3 and inside.any()
    # a cube cohort and a vector cohort of the same manifest are different modality-1 sources
    assert co.fingerprint != load_mri_cohort(tmp_path).fingerprint


def test_bad_cube_folders_are_listed_at_once(tmp_path):
    write_cube_cohort(
        tmp_path, n=8, grid=GRID, nan_of="LC-001", vectors_of="LC-002", drop_sequence_of="LC-003"
    )
    (tmp_path / "mri_cubes" / "LC-004.h5").unlink()
    with pytest.raises(DataError) as e:
        load_cube_cohort(tmp_path)
    msg = str(e.value)
    assert "LC-001.h5" in msg and "patient LC-001: non-finite voxels in ['delay']" in msg
    assert "patient LC-002: holds vectors (`deref mri --per-sequence`)" in msg
    assert "patient LC-003: no cube for sequence(s) ['t2']" in msg
    assert "patient LC-004: no MRI cube file" in msg
    # a cube folder given as vectors, and vectors given as cubes, say which flag to use
    manifest = read_mri_manifest(tmp_path / "mri_manifest.csv")
    with pytest.raises(DataError, match=r"holds ROI cubes .*--mri-cubes"):
        mri_groups(manifest, tmp_path / "mri_cubes", ["LC-000"])
    with pytest.raises(DataError, match=r"holds vectors"):
        read_mri_cubes(manifest, tmp_path / "mri_features", ["LC-000"])
    with pytest.raises(ConfigError, match="not both"):
        load_cohort(
            tmp_path / "cohort.csv",
            mri_manifest=tmp_path / "mri_manifest.csv",
            mri_features=tmp_path / "mri_features",
            mri_cubes=tmp_path / "mri_cubes",
        )


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    """A 3-fold DeReF run with a 3D ResNet-10 trained end to end on 16^3 cubes."""
    root = tmp_path_factory.mktemp("cubes")
    write_cube_cohort(root, n=36, grid=GRID)
    co = load_cube_cohort(root)
    folds = make_folds(co.patients, k=3, seed=0)
    res = train_cross_validation(
        co, folds, _e2e_config(co), TrainConfig(epochs=2, batch_size=6, lr=1e-3), root / "run"
    )
    return root, co, folds, res


def test_deref_trains_end_to_end_on_cubes_and_reloads(e2e_run):
    root, co, _, res = e2e_run
    info = RunDir(root / "run").info
    assert info.model.mri_encoder == "resnet3d" and info.model.mri_grid == GRID
    assert info.modalities == ("mri", "wsi") and info.data.m1_columns == ()
    assert info.data.extra["mri_cubes"] == str((root / "mri_cubes").resolve())
    pre = json.loads((root / "run" / "fold_0" / "preprocessing.json").read_text())
    assert pre["cube_grid"] == GRID and pre["standardizer"] is None  # cubes: z-scored by `deref mri`
    assert (root / "run" / "run.json").stat().st_size < 100_000  # no per-voxel column names anywhere
    again = load_run_cohort(info)
    assert again.mri_cubes is not None and again.fingerprint == co.fingerprint
    pred = Predictor.from_run(root / "run", device="cpu")
    out = pred.predict(again, fold="oof")
    saved = res.predictions.set_index("case_id").loc[out["case_id"]]
    np.testing.assert_allclose(out["risk"].to_numpy(), saved["risk"].to_numpy(), atol=1e-5)
    # the 3D ResNet is part of the trained model (in the checkpoint, trained by the survival loss):
    # the loss of a batch sends a gradient into every one of its weights, none is frozen
    model = pred.fold(0).model
    backbone = model.m1_encoder.cube_tokens.backbone
    assert any(k.startswith("m1_encoder.cube_tokens.backbone.") for k in model.state_dict())
    x = pred.inputs(again, list(again.case_ids[:4]), 0)
    model.train()
    model(x.m1, x.wsi, x.mask).risk.sum().backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()


def test_a_cube_run_refuses_vectors_and_other_grids(e2e_run, tmp_path):
    root, co, _, _ = e2e_run
    info = RunDir(root / "run").info
    vectors = load_mri_cohort(root)
    (problem,) = cohort_fit_problems(info, vectors, run_json="run.json")
    assert "frozen MRI vectors" in problem.problem and "16^3 ROI cubes" in problem.expected
    write_cube_cohort(tmp_path, n=36, grid=24)
    (problem,) = cohort_fit_problems(info, load_cube_cohort(tmp_path), run_json="run.json")
    assert "24^3 cubes" in problem.problem and "16^3 cubes" in problem.expected
    with pytest.raises(DataError, match="cannot be scored"):
        Predictor.from_run(root / "run", device="cpu").predict(load_cube_cohort(tmp_path))


def test_voxel_attribution_through_the_trained_3d_resnet(e2e_run):
    from deref.explain.mri import explain_voxels

    root, co, _, _ = e2e_run
    pred = Predictor.from_run(root / "run", device="cpu")
    case = co.case_ids[5]
    risk = explain_voxels(pred, co, case, "risk", "grad")
    assert risk.scores.shape == (5, GRID, GRID, GRID) and np.abs(risk.scores).max() > 0
    np.testing.assert_array_equal(risk.cubes, co.mri_cubes.cube(case)[0])
    np.testing.assert_allclose(risk.sequence_scores, risk.scores.reshape(5, -1).sum(1), rtol=1e-5)
    wsi = explain_voxels(pred, co, case, "specific_wsi", "grad")
    assert not wsi.scores.any() and not wsi.sequence_scores.any()  # no path from the MRI: exactly zero
    ig = explain_voxels(pred, co, case, "risk", "ig", steps=32)
    assert abs(ig.convergence_delta) < 0.05 * max(abs(ig.scores.sum()), 1e-3)


def test_the_resnet3d_baseline_learns_the_planted_blob(e2e_run):
    """Table II's MRI-only row: a 3D ResNet on the five cubes as channels, trained from scratch,
    finds the planted hepatobiliary blob (out-of-fold C well above chance)."""
    root, co, folds, _ = e2e_run
    cfg = _e2e_config(co, "resnet3d")
    res = train_cross_validation(co, folds, cfg, TrainConfig(epochs=20, batch_size=6, lr=1e-3), root / "r3d")
    p = res.predictions
    assert RunDir(root / "r3d").info.modalities == ("mri",)
    assert harrell_c(p["time"], p["event"], p["risk"]).cindex > 0.65


def test_cli_mri_cubes_train_validate_and_explain(tmp_path, capsys):
    write_cube_cohort(tmp_path, n=15, grid=GRID)
    mri = ["--mri-manifest", str(tmp_path / "mri_manifest.csv"), "--mri-cubes", str(tmp_path / "mri_cubes")]
    table, bags = str(tmp_path / "cohort.csv"), ["--bags", str(tmp_path / "bags")]
    assert cli(["validate", table, *bags, *mri]) == 0
    assert "MRI sequences: arterial 4096, delay 4096" in capsys.readouterr().out
    small = ["--set", "c1=32", "--set", "c2=16", "--set", "heads=4", "--set", "segments=2,4,8"]
    small += ["--set", "fixed_segments=4", "--set", "resnet3d_width=8", "--set", "landmarks=8"]
    args = ["train", table, *bags, *mri, "--epochs", "1", "--folds", "3", "--batch-size", "5", *small]
    assert cli([*args, "--out", str(tmp_path / "run")]) == 0
    info = RunDir(tmp_path / "run").info
    assert info.model.mri_encoder == "resnet3d" and info.model.mri_grid == GRID
    assert cli(["validate", table, *bags, *mri, "--run", str(tmp_path / "run")]) == 0
    vec = [
        "--mri-manifest",
        str(tmp_path / "mri_manifest.csv"),
        "--mri-features",
        str(tmp_path / "mri_features"),
    ]
    capsys.readouterr()
    assert cli(["validate", table, *bags, *vec, "--run", str(tmp_path / "run")]) == 1
    assert "the run's 3D ResNet reads (--mri-cubes" in capsys.readouterr().out
    capsys.readouterr()
    assert cli(["explain", str(tmp_path / "run"), "LC-004", "--out", str(tmp_path / "ex"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "top sequences:" in out and "voxels specific_wsi: arterial +0, delay +0" in out
    with np.load(tmp_path / "ex" / "LC-004__grad__voxels.npz") as z:
        assert z["scores__risk"].shape == (5, GRID, GRID, GRID) and list(z["sequences"]) == list(SEQUENCES)
        assert not z["scores__specific_wsi"].any()
    assert (tmp_path / "ex" / "LC-004__grad__risk__mri.png").read_bytes()[:4] == b"\x89PNG"
    # a cube cohort cannot be read as frozen vectors
    assert cli([*args, "--set", "mri_encoder=vectors", "--out", str(tmp_path / "bad")]) == 1
    assert "--mri-cubes gives 16^3 ROI cubes" in capsys.readouterr().err
