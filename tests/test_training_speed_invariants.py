"""Training speed-ups change no number: seeded tiny runs against predictions recorded before them.

``tests/data/training_invariants.csv`` holds the validation and training-fold predictions
(risk, survival curve) and the per-epoch training losses of small seeded runs on the 40-patient
demo (fold 0, two epochs) of ``snn``, ``snn_transformer`` and ``deref``, one patient per step
(the paper's protocol) and batched, recorded with the training code as it was before the
issue-15 training speed-ups; ``training_invariants_weights.csv`` the SHA-256 of every trained
tensor's bytes (and its sum, for a readable diff). On the machine and torch build that recorded
them the runs reproduce them bit for bit (the speed-ups run the same floating-point operations in
the same order); elsewhere (another CPU's kernels round differently) to 1e-5, which a change of
arithmetic (another dropout stream, another optimizer) exceeds by orders of magnitude. The suite
runs three of the seven recorded runs (one per model); all seven with DEREF_ALL_INVARIANTS=1.

Re-recorded once since (on an AMD EPYC, torch 2.13.0, one thread), for two changes that add
the same terms in another order: the short Nystrom path
(``deref.model.nystrom._short_nystrom_attention``, genomic tokens) rewritten from the compressed
``m x m`` algebra to plain ``(t + 1) x (t + 1)`` products in an orthonormal basis (the
attention's outputs moved by <= 4e-7; against the ``nystrom-attention`` package in
tests/model/test_nystrom.py still at 2e-6), and PPEG's kernel gradient for a batch summed over
one convolution per patient (``deref.model.encoders._DepthwiseConv2d``). Two epochs of Adam
amplify rounding: the DeReF runs' gate bias left the 1e-5 band (1.4e-4). The other speed-ups
are checked against the recording as before.

Regenerate (only when a change is meant to change numbers):
``OMP_NUM_THREADS=1 .venv/bin/python tests/test_training_speed_invariants.py --record``
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

DATA = Path(__file__).resolve().parent / "data"
PRED_CSV = DATA / "training_invariants.csv"
WEIGHTS_CSV = DATA / "training_invariants_weights.csv"

#: name -> (model type, TrainConfig changes, ModelConfig changes)
RUNS: dict[str, tuple[str, dict, dict]] = {
    "snn_b1": ("snn", {}, {}),
    "snn_b4_l1": ("snn", {"batch_size": 4, "l1": 1e-4}, {}),
    "snnt_b1": ("snn_transformer", {}, {}),
    "snnt_b4": ("snn_transformer", {"batch_size": 4}, {}),
    "snnt_b1_accum2": ("snn_transformer", {"grad_accum": 2, "track_validation": False}, {}),
    "deref_b1": ("deref", {}, {"wsi_dim": None}),
    "deref_b2": ("deref", {"batch_size": 2}, {"wsi_dim": None}),
}


def _cohort(demo: Path):
    from deref.data.cohort import load_cohort

    c = demo / "cohort"
    return load_cohort(c / "cohort.csv", signatures=c / "signatures.csv", bag_dir=c / "bags")


def run_one(cohort, name: str, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train run ``name`` (fold 0 of 5, 2 epochs, seed 3) -> (predictions rows, weight rows)."""
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    torch.set_num_threads(1)
    model_type, train_changes, model_changes = RUNS[name]
    extra = {}
    if "wsi_dim" in model_changes:
        extra["wsi_dim"] = _bag_dim(cohort)
    cfg = ModelConfig(
        model_type=model_type,
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
        **extra,
    )
    folds = make_folds(cohort.patients, k=5, seed=0)
    tcfg = TrainConfig(epochs=2, seed=3, **train_changes)
    res = train_cross_validation(cohort, folds, cfg, tcfg, out / name, only_folds=[0])
    fold = res.folds[0]
    val = fold.predictions.drop(columns=["fold"]).assign(part="val")
    tr = res.folds[0].train_risks.drop(columns=["fold"]).assign(part="train")
    losses = pd.DataFrame(
        {
            "case_id": [f"epoch{h['epoch']}" for h in fold.info.history],
            "risk": [h["train_loss"] for h in fold.info.history],
            "part": "train_loss",
        }
    )
    preds = pd.concat([val, tr, losses], ignore_index=True).assign(run=name)
    state = load_file(out / name / "fold_0" / "model.safetensors")
    weights = pd.DataFrame(
        [
            {
                "run": name,
                "tensor": k,
                "sha256": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest(),
                "sum": float(v.double().sum()),
            }
            for k, v in sorted(state.items())
        ]
    )
    return preds, weights


def _bag_dim(cohort) -> int:
    c = cohort.case_ids[0]
    return int(cohort.patient_bag(c).features.shape[1])


def record(demo: Path) -> None:
    cohort = _cohort(demo)
    preds, weights = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            p, w = run_one(cohort, name, Path(tmp))
            preds.append(p)
            weights.append(w)
    cols = ["run", "part", "case_id", "risk", "risk_std"]
    frame = pd.concat(preds, ignore_index=True)
    frame = frame[cols + [c for c in frame.columns if c.startswith("surv_")]]
    frame.to_csv(PRED_CSV, index=False, float_format="%.17g")
    pd.concat(weights, ignore_index=True).to_csv(WEIGHTS_CSV, index=False, float_format="%.17g")


@pytest.fixture(scope="module")
def cohort(small_demo):
    return _cohort(small_demo)


#: One run per model in the suite (all seven with DEREF_ALL_INVARIANTS=1).
CHECKED = (
    list(RUNS) if os.environ.get("DEREF_ALL_INVARIANTS") == "1" else ["snn_b1", "snnt_b1_accum2", "deref_b2"]
)


@pytest.mark.parametrize("name", CHECKED)
def test_seeded_run_matches_the_recorded_numbers(cohort, name, tmp_path):
    preds, weights = run_one(cohort, name, tmp_path)
    want = pd.read_csv(PRED_CSV, dtype={"case_id": str}, float_precision="round_trip")
    want = want[want["run"] == name].reset_index(drop=True)
    got = preds[want.columns].reset_index(drop=True)
    assert list(got["case_id"]) == list(want["case_id"])
    num = [c for c in want.columns if c in ("risk", "risk_std") or c.startswith("surv_")]
    # %.17g round-trips a float64 exactly, and every float32 through float64
    np.testing.assert_allclose(got[num].to_numpy(float), want[num].to_numpy(float), rtol=0, atol=1e-5)
    want_w = pd.read_csv(WEIGHTS_CSV)
    want_w = want_w[want_w["run"] == name].reset_index(drop=True)
    assert list(weights["tensor"]) == list(want_w["tensor"])
    np.testing.assert_allclose(weights["sum"].to_numpy(), want_w["sum"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_labels_from_row_arrays_equal_the_pandas_lookup():
    from deref.training import _FoldData, _labels

    ids = ["c", "a", "d", "b"]
    rows = {c: i for i, c in enumerate(ids)}
    bins = pd.Series([3, 0, 2, 1], index=["a", "b", "c", "d"])
    cens = pd.Series([1, 0, 0, 1], index=["a", "b", "c", "d"])
    data = _FoldData(pre=None, config=None, m1_all=[], rows=rows, bins=bins, cens=cens)
    for batch in (["a"], ["d", "a", "d"], ids):
        got_b, got_c = _labels(data, batch)
        np.testing.assert_array_equal(got_b, bins[batch].to_numpy())
        np.testing.assert_array_equal(got_c, cens[batch].to_numpy())
        assert got_b.dtype == bins.dtype and got_c.dtype == cens.dtype


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: test_training_speed_invariants.py --record")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import _shared_demo

    record(_shared_demo("small-40", n_patients=40, epochs=2, slide_size=(2048, 1536)))
    print(f"wrote {PRED_CSV} and {WEIGHTS_CSV}")
