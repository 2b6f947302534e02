"""Every peer of the paper through the product: `deref train --model NAME`, `deref predict`
(which reproduces training's out-of-fold predictions from the run directory alone),
`deref evaluate`, `deref compare` against DeReF, and the dashboard's Attention page (which
shows the peer's own attention or co-attention instead of decoupled-feature attributions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.cli.main import main as cli
from deref.model.config import MODEL_MODALITIES, MODEL_NAMES
from deref.model.peers import PEERS
from deref.runs import RunDir

#: Small widths so that one epoch on the 40-patient demo takes seconds; each peer's own
#: sizes stay at their defaults unless they follow c1.
SMALL = [
    f"--set={kv}"
    for kv in (
        "c1=32",
        "landmarks=16",
        "snn_hidden=32",
        "clam_hidden=32",
        "clam_attn_dim=16",
        "mome_dim=32",
        "mome_omic_hidden=(32,32)",
        "mome_landmarks=16",
        "pibd_dim=32",
        "pibd_club_hidden=32",
    )
]


def _train(demo, model: str, out, epochs: int = 1) -> None:
    c = demo / "cohort"
    args = ["train", str(c / "cohort.csv"), "--signatures", str(c / "signatures.csv")]
    if "wsi" in MODEL_MODALITIES[model]:
        args += ["--bags", str(c / "bags")]
    args += ["--splits", str(demo / "run" / "splits"), "--epochs", str(epochs)]
    args += ["--model", model, "--batch-size", "8", "--no-track-validation", *SMALL, "--out", str(out)]
    assert cli(args) == 0


@pytest.fixture(scope="module")
def peer_runs(small_demo, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("peer-runs")
    for model in ("deref", *PEERS):
        _train(small_demo, model, root / model)
    return root


def test_every_model_type_is_a_train_choice():
    from deref.cli.train import MODELS

    assert set(PEERS) <= set(MODELS) and set(MODEL_NAMES) == set(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(PEERS))
def test_peer_trains_predicts_and_evaluates(peer_runs, model, tmp_path):
    run = RunDir(peer_runs / model)
    assert run.info.model.model_type == model
    oof = run.predictions()
    assert np.isfinite(oof["risk"]).all() and len(oof) == len(set(oof["case_id"]))
    hist = run.info.folds[0].history
    assert all(np.isfinite(h["train_loss"]) for h in hist)
    # the run directory alone reproduces training's held-out predictions
    preds = tmp_path / "p.csv"
    assert cli(["predict", str(run.path), "--out", str(preds)]) == 0
    again = pd.read_csv(preds).set_index("case_id").loc[oof["case_id"]]
    np.testing.assert_allclose(again["risk"].to_numpy(), oof["risk"].to_numpy(), rtol=1e-4, atol=1e-5)
    out = tmp_path / "m.json"
    assert cli(["evaluate", str(run.path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["metrics"]
    assert len(rows) >= len(run.info.folds)
    assert all(0.0 <= r["harrell"] <= 1.0 for r in rows.values() if r.get("harrell") is not None)


@pytest.mark.slow
def test_compare_lists_every_peer_beside_deref(peer_runs, tmp_path):
    runs = [str(peer_runs / m) for m in ("deref", *PEERS)]
    out = tmp_path / "cmp"
    assert cli(["compare", *runs, "--out", str(out), "--resamples", "200"]) == 0
    res = json.loads((out / "comparison.json").read_text())
    assert res["reference"] == "deref"
    assert [p["other"] for p in res["pairs"]] == list(PEERS)
    for p in res["pairs"]:
        assert p["delta_c_ci_low"] <= p["delta_c"] <= p["delta_c_ci_high"]


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(PEERS))
def test_peer_run_opens_in_the_dashboard(peer_runs, model, small_demo, monkeypatch):
    """Patient and Attention pages of every peer's run: no error; a page that needs decoupled
    features says the model has none and shows the peer's own maps instead."""
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[1]
    for var in [v for v in os.environ if v.startswith("DEREF_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DEREF_RUN", str(peer_runs / model))
    monkeypatch.setenv("DEREF_DEMO_DIR", str(small_demo))
    monkeypatch.setenv("DEREF_SLIDE_DIR", str(small_demo / "cohort" / "slides"))
    monkeypatch.setenv("DEREF_NO_PREWARM", "1")
    monkeypatch.setenv("DEREF_AUDIT_LOG", str(peer_runs / f"{model}-audit.jsonl"))
    at = AppTest.from_file(str(repo / "app" / "main.py"), default_timeout=180).run()
    for page in ("views/patient.py", "views/attention.py"):
        at.switch_page(page).run()
        errors = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
        assert not errors, (model, page, errors)
    infos = " ".join(str(i.value) for i in at.info)
    assert f"({MODEL_NAMES[model]}) has no decoupled features" in infos
    targets = at.selectbox(key="att_target").options
    assert targets and not any("shared feature" in t for t in targets)
