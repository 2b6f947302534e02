"""Missing modalities: an error by default (naming patient and sequence or slide); with
``allow_missing`` the input is masked in training (no gradient, the running mean token in its
place), prediction uses the training fold's mean token, and the patient is flagged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from deref.cli.main import main as cli
from deref.data.bags import write_bag_h5
from deref.data.splits import make_folds
from deref.errors import DataError
from deref.inference import Predictor
from deref.model import ModelConfig, build_model
from deref.model.config import tiny_mri_config
from deref.runs import RunDir
from deref.runs.fit import load_run_cohort
from deref.training import TrainConfig, train_cross_validation
from tests.mri_helpers import (
    SEQUENCES,
    WSI_DIM,
    load_cube_cohort,
    load_mri_cohort,
    write_cube_cohort,
    write_mri_cohort,
)

NO_T2, NO_SLIDE = "LC-003", "LC-007"


def _knock_out(root, vectors: bool = True) -> None:
    """LC-003 loses its t2 vector (or cube), LC-007 its slide's bag."""
    import h5py

    folder = root / ("mri_features" if vectors else "mri_cubes")
    path = folder / f"{NO_T2}.h5"
    with h5py.File(path) as f:
        data = f["features" if vectors else "cubes"][()]
        attrs = dict(f.attrs)
        inside = None if vectors else f["inside"][()]
    keep = [i for i, s in enumerate(SEQUENCES) if s != "t2"]
    attrs["sequences"] = json.dumps([SEQUENCES[i] for i in keep])
    path.unlink()
    if vectors:
        write_bag_h5(path, data[keep], None, attrs)
    else:
        with h5py.File(path, "w") as f:
            f["cubes"], f["inside"] = data[keep], inside
            for k, v in attrs.items():
                f.attrs[k] = v
    (root / "bags" / f"{NO_SLIDE}-HE.h5").unlink()


def _config(co, **kw) -> ModelConfig:
    """The tiny DeReF of the tests on this cohort's frozen vectors."""
    names = tuple(f.name for f in co.families)
    return tiny_mri_config(
        names, mri_encoder="vectors", m1_sizes=co.m1_sizes, wsi_dim=WSI_DIM, snn_hidden=32, landmarks=8, **kw
    )


def test_missing_inputs_are_errors_by_default(tmp_path):
    write_mri_cohort(tmp_path, n=30)
    _knock_out(tmp_path)
    with pytest.raises(DataError, match=r"patient LC-003: no vector for sequence\(s\) \['t2'\]"):
        load_mri_cohort(tmp_path)
    # a slide without a bag is an error for a model that reads slides
    import dataclasses

    co_strict = dataclasses.replace(load_mri_cohort(tmp_path, allow_missing=True), allow_missing=False)
    with pytest.raises(DataError, match=r"LC-007 \(LC-007-HE.svs\).*--allow-missing"):
        train_cross_validation(
            co_strict,
            make_folds(co_strict.patients, k=3, seed=0),
            _config(co_strict),
            TrainConfig(epochs=1),
            tmp_path / "r",
        )


@pytest.fixture(scope="module")
def missing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing")
    write_mri_cohort(root, n=45)
    _knock_out(root)
    co = load_mri_cohort(root, allow_missing=True)
    res = train_cross_validation(
        co,
        make_folds(co.patients, k=3, seed=0),
        _config(co),
        TrainConfig(epochs=2, batch_size=5),
        root / "run",
    )
    return root, co, res


def test_the_cohort_flags_missing_inputs(missing_run):
    _, co, _ = missing_run
    assert co.missing_inputs(NO_T2) == ["t2"] and co.missing_inputs(NO_SLIDE) == ["wsi"]
    assert int(co.missing.to_numpy().sum()) == 2
    assert co.genomic.loc[NO_T2, [c for c in co.genomic.columns if c.startswith("t2:")]].isna().all()
    assert np.isnan(co.patient_bag(NO_SLIDE, expected_dim=WSI_DIM).features).all()


def test_predictions_flag_and_use_the_folds_mean_tokens(missing_run):
    root, co, res = missing_run
    info = RunDir(root / "run").info
    assert info.model.allow_missing
    saved = pd.read_csv(root / "run" / "predictions.csv", dtype={"case_id": str}, keep_default_na=False)
    flags = saved.set_index("case_id")["missing"]
    assert flags[NO_T2] == "t2" and flags[NO_SLIDE] == "wsi" and (flags.drop([NO_T2, NO_SLIDE]) == "").all()
    pred = Predictor.from_run(root / "run", device="cpu")
    again = load_run_cohort(info)
    out = pred.predict(again, fold="oof").set_index("case_id")
    np.testing.assert_allclose(out["risk"], saved.set_index("case_id").loc[out.index, "risk"], atol=1e-5)
    assert out.loc[NO_T2, "missing"] == "t2"
    # the fold's mean token is the mean of its training patients' own tokens (eval mode) ...
    k = pred.fold_for(NO_T2)
    model = pred.fold(k).model
    train_ids = [c for c in info.folds[k].train_ids if c != NO_T2]
    x = pred.inputs(again, train_ids, k)
    with torch.no_grad():
        tokens, missing = model.m1_encoder.raw_tokens(x.m1)
    assert not missing.any()
    np.testing.assert_allclose(
        model.m1_encoder.mean_token.value.numpy(), tokens.mean(dim=0).numpy(), rtol=1e-4, atol=1e-5
    )
    # ... and the missing patient's prediction is the model with that token set to it explicitly
    x = pred.inputs(again, [NO_T2], k)
    with torch.no_grad():
        tokens, _ = model.m1_encoder.raw_tokens(x.m1)
        tokens[0, SEQUENCES.index("t2")] = model.m1_encoder.mean_token.value[SEQUENCES.index("t2")]
        explicit = model(x.m1, x.wsi, x.mask, m1_tokens=tokens).risk
    assert float(explicit) == pytest.approx(out.loc[NO_T2, "risk"], abs=1e-5)


def test_training_sends_no_gradient_into_a_missing_input(missing_run):
    _, co, _ = missing_run
    from deref.data.preprocess import fit_preprocessing
    from deref.inference import BagStore, assemble, m1_matrix

    cfg = _config(co, allow_missing=True)
    model = build_model(cfg)
    model.train()
    pre = fit_preprocessing(co, co.case_ids, wsi_dim=WSI_DIM)
    m1 = m1_matrix(co, pre, co.case_ids)
    bags = BagStore(co, WSI_DIM)
    x = assemble([NO_T2, NO_SLIDE], m1, {c: i for i, c in enumerate(co.case_ids)}, bags, True)
    out = model(x.m1, x.wsi, x.mask)
    out.risk.sum().backward()
    t2 = model.m1_encoder.token_nets[SEQUENCES.index("t2")]
    # only LC-007 has a t2 vector and it is in the batch: its gradient flows; LC-003's does not
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t2.parameters())
    model.zero_grad()
    before = model.m1_encoder.mean_token.value.clone()
    out = model([g[:1] for g in x.m1], x.wsi[:1], x.mask[:1])  # LC-003 alone: no t2
    out.risk.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in t2.parameters())
    assert torch.isfinite(
        torch.stack([p.grad.abs().sum() for p in model.parameters() if p.grad is not None])
    ).all()
    # the running mean token moved for the present groups only (a batch of LC-003: t2 unchanged)
    after, t = model.m1_encoder.mean_token.value, SEQUENCES.index("t2")
    assert torch.equal(after[t], before[t])
    assert all(not torch.equal(after[g], before[g]) for g in range(len(SEQUENCES)) if g != t)


def test_end_to_end_cubes_with_a_missing_sequence_and_slide(tmp_path, capsys):
    write_cube_cohort(tmp_path, n=15, grid=16)
    _knock_out(tmp_path, vectors=False)
    with pytest.raises(DataError, match=r"patient LC-003: no cube for sequence\(s\) \['t2'\]"):
        load_cube_cohort(tmp_path)
    co = load_cube_cohort(tmp_path, allow_missing=True)
    assert co.missing_inputs(NO_T2) == ["t2"] and np.isnan(co.mri_cubes.cube(NO_T2)[0][4]).all()
    mri = ["--mri-manifest", str(tmp_path / "mri_manifest.csv"), "--mri-cubes", str(tmp_path / "mri_cubes")]
    small = ["--set", "c1=32", "--set", "c2=16", "--set", "heads=4", "--set", "segments=2,4,8"]
    small += ["--set", "fixed_segments=4", "--set", "resnet3d_width=8", "--set", "landmarks=8"]
    args = ["train", str(tmp_path / "cohort.csv"), "--bags", str(tmp_path / "bags"), *mri, *small]
    args += ["--epochs", "1", "--folds", "3", "--batch-size", "5", "--out", str(tmp_path / "run")]
    assert cli(args) == 1  # strict by default
    assert "no cube for sequence(s) ['t2']" in capsys.readouterr().err
    assert cli([*args, "--allow-missing"]) == 0
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"case_id": str}, keep_default_na=False)
    assert saved.set_index("case_id").loc[[NO_T2, NO_SLIDE], "missing"].tolist() == ["t2", "wsi"]
    assert np.isfinite(saved["risk"]).all()
