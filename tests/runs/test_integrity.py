"""Every checkpoint's SHA-256 is recorded in run.json when training writes it and checked when it
loads: a swapped (valid but other), edited or truncated weight file is refused, naming it."""

from __future__ import annotations

import shutil

import pytest

from deref.errors import CheckpointError
from deref.fileio import file_sha256
from deref.runs import RunDir


@pytest.fixture(scope="module")
def run(small_demo, tmp_path_factory):
    import torch

    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    torch.set_num_threads(1)
    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))
    out = tmp_path_factory.mktemp("integrity") / "run"
    train_cross_validation(cohort, make_folds(cohort.patients, k=3, seed=0), cfg, TrainConfig(epochs=1), out)
    return out


def test_training_records_each_fold_weights_digest(run):
    info = RunDir(run).info
    for f in info.folds:
        assert f.weights_sha256 == file_sha256(run / f"fold_{f.index}" / "model.safetensors")
    assert len({f.weights_sha256 for f in info.folds}) == len(info.folds)  # three different models


@pytest.mark.parametrize("damage", ["swapped", "truncated", "one byte"])
def test_a_damaged_weight_file_is_refused_by_name(run, tmp_path, damage):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "fold_0" / "model.safetensors"
    if damage == "swapped":  # a valid safetensors file of the same architecture: loads fine otherwise
        shutil.copy(copy / "fold_1" / "model.safetensors", weights)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0x01
        weights.write_bytes(bytes(data))
    rd = RunDir(copy)
    with pytest.raises(CheckpointError, match=r"fold_0/model.safetensors: SHA-256 .* differs .* refusing"):
        rd.load_fold(0)
    rd.load_fold(1)  # the other folds still load


def test_a_run_without_digests_still_loads(run, tmp_path):
    """Runs written before the digest was recorded load unchecked (nothing to compare with)."""
    import json

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = json.loads((copy / "run.json").read_text())
    for f in data["folds"]:
        f.pop("weights_sha256")
    (copy / "run.json").write_text(json.dumps(data))
    assert RunDir(copy).info.folds[0].weights_sha256 is None
    RunDir(copy).load_fold(0)
