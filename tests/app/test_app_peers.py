"""A peer's run opens in every page; pages that need DeReF's decoupled features say so politely
and show what the peer has: MCAT's co-attention of each gene family over the patches, CLAM-MB's
attention branch per time bin."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.app.test_app_pages import problems

PAGES = ("views/cohort.py", "views/patient.py", "views/stratification.py", "views/model.py")

#: The peers' own widths, small (as tests/test_peers_e2e.py): the pages, not the fit, are tested.
SMALL_PEERS = dict(
    clam_hidden=32,
    clam_attn_dim=16,
    mome_dim=32,
    mome_omic_hidden=(32, 32),
    mome_landmarks=16,
)


@pytest.fixture(scope="module")
def peer_run_dirs(small_demo, tmp_path_factory) -> dict[str, Path]:
    import torch

    from deref.data.cohort import load_cohort
    from deref.data.splits import read_mcat_splits
    from deref.demo import DEMO_MODEL
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    torch.set_num_threads(1)
    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv", bag_dir=c / "bags")
    folds = read_mcat_splits(small_demo / "run" / "splits")
    root = tmp_path_factory.mktemp("peer-app-runs")
    out = {}
    for model in ("mcat", "clam_mb", "mome"):
        cfg = ModelConfig(
            model_type=model, m1_sizes=tuple(f.size for f in cohort.families), **DEMO_MODEL, **SMALL_PEERS
        )
        train_cross_validation(
            cohort,
            folds,
            cfg,
            TrainConfig(epochs=1, batch_size=8, track_validation=False),
            root / model,
            data_info={"signatures": str(c / "signatures.csv")},
        )
        out[model] = root / model
    return out


@pytest.mark.slow
def test_mcat_attention_page_shows_its_co_attention(make_app, app_env, peer_run_dirs, small_demo):
    app_env(DEREF_RUN=peer_run_dirs["mcat"], DEREF_SLIDE_DIR=small_demo / "cohort" / "slides")
    at = make_app("views/attention.py")
    assert not problems(at)
    assert any("(MCAT) has no decoupled features" in str(i.value) for i in at.info)
    targets = at.selectbox(key="att_target").options
    from deref.data.cohort import load_cohort

    c = small_demo / "cohort"
    families = [f.name for f in load_cohort(c / "cohort.csv", signatures=c / "signatures.csv").families]
    assert [t for t in targets if t.startswith("co-attention: ")] == [f"co-attention: {f}" for f in families]
    assert not any("shared feature" in t for t in targets)  # no decoupled-feature attributions
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith("co_attention")]
    assert len(charts) == 1
    at.selectbox(key="att_target").set_value(f"co-attention: {families[1]}").run()
    assert not problems(at)
    assert len(at.get("image")) >= 2  # the inspected patch and the gallery of the family's top patches
    for page in PAGES:
        at = make_app(page)
        assert not problems(at), (page, problems(at))


@pytest.mark.slow
def test_clam_mb_attention_page_names_its_branches(make_app, app_env, peer_run_dirs, small_demo):
    from deref.runs import RunDir

    app_env(DEREF_RUN=peer_run_dirs["clam_mb"], DEREF_SLIDE_DIR=small_demo / "cohort" / "slides")
    at = make_app("views/attention.py")
    assert not problems(at)
    targets = at.selectbox(key="att_target").options
    n_bins = RunDir(peer_run_dirs["clam_mb"]).info.n_bins
    branches = [t for t in targets if "time bin" in t]
    assert len(branches) == n_bins, targets
    assert not any(t.startswith("co-attention") for t in targets)
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("co_attention")]


@pytest.mark.slow
def test_mome_patient_page_shows_its_router(make_app, app_env, peer_run_dirs):
    app_env(DEREF_RUN=peer_run_dirs["mome"])
    at = make_app("views/patient.py")
    assert not problems(at)
    assert any("(MoME) has no decoupled features" in str(i.value) for i in at.info)
    gate = [c for c in at.get("plotly_chart") if c.proto.id.endswith("gate")]
    assert len(gate) == 1
    spec = json.loads(gate[0].proto.spec)
    assert list(spec["data"][0]["y"]) == [
        f"fusion expert: {e}" for e in ("trans", "bottleneck", "add", "drop")
    ]
    x = spec["data"][0]["x"]
    if isinstance(x, dict):  # plotly's binary array encoding
        x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"])
    assert sorted(np.round(np.asarray(x, float), 6)) == [0, 0, 0, 1]  # hard routing: one expert chosen
    for page in ("views/attention.py", "views/model.py"):
        at = make_app(page)
        assert not problems(at), (page, problems(at))
