"""Voxel attributions of an MRI + WSI run through the frozen 3D backbone (deref.explain.mri)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from deref.data.cohort import load_cohort
from deref.data.splits import make_folds
from deref.data.synthetic_mri import make_mri_demo_cohort
from deref.errors import DataError
from deref.explain.mri import _m1_from_cubes, _target, explain_voxels, mri_inputs
from deref.inference import Predictor
from deref.model import ModelConfig
from deref.prepare.mri import MriConfig, build_mri_backbone, cases_from_table, process_cases
from deref.training import TrainConfig, train_cross_validation

pytestmark = pytest.mark.slow  # a 3D ResNet-50 over 12 patients x 5 sequences, and a trained run


@pytest.fixture(scope="module")
def mri_run(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("mri-voxels")
    demo = make_mri_demo_cohort(
        root / "cohort",
        12,
        3,
        shape=(24, 24, 20),
        spacing_mm=(2.0, 2.0, 2.5),
        slide_size=(1024, 1024),
        wsi_dim=8,
        workers=1,
    )
    rows = process_cases(
        cases_from_table(demo.manifest),
        root / "feats",
        build_mri_backbone(1, random_weights=True),
        MriConfig(grid=16, per_sequence=True, device="cpu"),
    )
    assert all(r.status == "ok" for r in rows), [r.message for r in rows]
    cohort = load_cohort(
        demo.table, bag_dir=demo.bags_dir, mri_manifest=demo.manifest, mri_features=root / "feats"
    )
    cfg = ModelConfig(
        m1_kind="mri",
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
        wsi_dim=8,
        c1=32,
        c2=64,
        snn_hidden=32,
        landmarks=8,
        expert_hidden=16,
    )
    folds = make_folds(cohort.patients, k=3, seed=0)
    train_cross_validation(cohort, folds, cfg, TrainConfig(epochs=1, batch_size=4), root / "run")
    return root / "run", cohort


def test_voxel_gradient_matches_a_finite_difference_and_the_pathology_feature_is_zero(mri_run):
    run, cohort = mri_run
    pred = Predictor.from_run(run, device="cpu")
    case = cohort.case_ids[0]
    att = explain_voxels(pred, cohort, case, "risk", "grad")
    g = att.cubes.shape[-1]
    assert att.scores.shape == (5, g, g, g) == att.cubes.shape and att.inside.shape == (g, g, g)
    np.testing.assert_allclose(att.sequence_scores, att.scores.reshape(5, -1).sum(axis=1), rtol=1e-5)
    # the risk is the model's own prediction for the patient
    want = pred.predict(cohort, [case], fold=att.fold)["risk"].iloc[0]
    assert att.target_value == pytest.approx(float(want), abs=1e-4)
    # gradient x input summed over the voxels is the derivative of the target along the input
    # itself: a central finite difference of the whole pipeline (cube -> backbone -> model) at
    # (1 +- eps) x, for the MRI-specific feature's target
    mri_att = explain_voxels(pred, cohort, case, "specific_mri", "grad")
    k, mri = att.fold, mri_inputs(cohort, case)
    model, pre = pred.fold(k).model, pred.fold(k).preprocessing
    inputs = pred.inputs(cohort, [case], k)
    x = torch.from_numpy(mri.cubes)
    eps = 0.005

    with torch.no_grad():  # the risk direction g at the patient's own features, held fixed
        g = _target(model, _m1_from_cubes(x, mri.backbone, pre, mri.sequences), inputs, "specific_mri")[1]

    def t(c):
        with torch.no_grad():
            m1 = _m1_from_cubes(c, mri.backbone, pre, mri.sequences)
            return float(_target(model, m1, inputs, "specific_mri", g)[0])

    fd = (t(x * (1 + eps)) - t(x * (1 - eps))) / (2 * eps)
    assert abs(fd) > 1e-4 and float(mri_att.scores.sum()) == pytest.approx(fd, rel=0.05)
    # the pathology-specific feature has no path from the MRI: exact zeros everywhere
    wsi = explain_voxels(pred, cohort, case, "specific_wsi", "grad")
    assert np.all(wsi.scores == 0) and np.all(wsi.sequence_scores == 0)


def test_integrated_gradients_are_complete(mri_run):
    run, cohort = mri_run
    pred = Predictor.from_run(run, device="cpu")
    att = explain_voxels(pred, cohort, cohort.case_ids[1], "specific_mri", "ig", steps=16)
    span = abs(att.scores.sum() - att.convergence_delta)  # = |T(x) - T(baseline)|
    assert span > 0 and abs(att.convergence_delta) <= 0.1 * span  # 16 Gauss-Legendre points


def test_a_changed_volume_is_an_error_not_a_silent_mismatch(mri_run, tmp_path):
    run, cohort = mri_run
    case = cohort.case_ids[2]
    path = cohort.mri.files[case]["t2"]
    img = nib.load(str(path))
    backup = tmp_path / "t2.nii.gz"
    backup.write_bytes(Path(path).read_bytes())
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(data[::-1].copy() * 3 + 1, img.affine), str(path))
        with pytest.raises(DataError, match=f"patient {case}: the MRI vectors recomputed"):
            mri_inputs(cohort, case)
    finally:
        Path(path).write_bytes(backup.read_bytes())
