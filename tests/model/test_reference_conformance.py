"""Our DeReF, loaded with the reference's weights, reproduces every recorded intermediate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deref.errors import CheckpointError
from deref.losses import decoupling_loss, nll_survival_loss
from deref.model import DeReF
from deref.model.reference import (
    config_from_reference_state,
    import_reference_checkpoint,
    load_reference_state_dict,
)

TOL = 1e-5
SEGMENTS = (2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def reference(golden):
    params = {k[len("param/") :]: v for k, v in golden.items() if k.startswith("param/")}
    model = import_reference_checkpoint(params)
    m1 = [torch.from_numpy(golden[f"input/x_omic{i}"]).unsqueeze(0) for i in range(1, 7)]
    wsi = torch.from_numpy(golden["input/x_path"]).unsqueeze(0)
    return model, m1, wsi


def test_config_inferred_from_reference(reference):
    model, _, _ = reference
    cfg = model.config
    assert cfg.m1_sizes == (5, 6, 7, 8, 9, 10)
    assert cfg.wsi_dim == 1024 and cfg.n_bins == 4 and cfg.n_experts == 4


@pytest.mark.parametrize("s", SEGMENTS)
def test_every_intermediate_matches(reference, golden, s):
    model, m1, wsi = reference
    with torch.no_grad():
        out = model(m1, wsi, segments=s)
    ours = {
        "cls_genomic": out.cls_m1,
        "cls_wsi": out.cls_wsi,
        "v_sp_genomic": out.features[:, 0],
        "v_sp_wsi": out.features[:, 1],
        "v_share": out.features[:, 2],
        "v_explore": out.features[:, 3],
        "reorganized": out.reorganized[:, 0],
        "gate": out.gate.T,
        "logits": out.logits,
        "hazards": out.hazards,
        "survival": out.survival,
        "risk": out.risk,
    }
    for key, value in ours.items():
        expected = golden[f"s{s}/{key}"]
        assert value.shape == expected.shape, key
        np.testing.assert_allclose(value.numpy(), expected, atol=TOL, rtol=0, err_msg=f"s={s} {key}")
    dis = decoupling_loss(out.features, "mse").item()
    assert dis == pytest.approx(float(golden[f"s{s}/loss_dis_mse"]), abs=TOL)
    for y in range(4):
        for c in (0, 1):
            nll = nll_survival_loss(out.hazards, torch.tensor([y]), torch.tensor([c])).item()
            assert nll == pytest.approx(float(golden[f"s{s}/loss_nll_y{y}_c{c}"]), abs=TOL), (y, c)


def test_all_mode_scores_every_segment_count_as_the_reference(reference, golden):
    # The default evaluation runs every segment count s in one forward; each s's risk and
    # survival curve is the reference's for that s, and the risks differ (the reorganization
    # matters at test time, which is why the prediction averages over s).
    model, m1, wsi = reference
    with torch.no_grad():
        out = model(m1, wsi)
    assert out.segments == SEGMENTS
    want = np.array([golden[f"s{s}/risk"][0] for s in SEGMENTS])
    np.testing.assert_allclose(out.risk_per_s[0].numpy(), want, atol=TOL, rtol=0)
    surv = np.stack([golden[f"s{s}/survival"][0] for s in SEGMENTS])
    np.testing.assert_allclose(out.survival_per_s[0].numpy(), surv, atol=TOL, rtol=0)
    assert np.ptp(out.risk_per_s[0].numpy()) > 100 * TOL


def test_default_eval_is_mean_over_segments(reference, golden):
    model, m1, wsi = reference
    with torch.no_grad():
        out = model(m1, wsi)  # reorg_eval="all"
    per_s = np.array([golden[f"s{s}/risk"][0] for s in SEGMENTS])
    surv = np.stack([golden[f"s{s}/survival"][0] for s in SEGMENTS]).mean(axis=0)
    assert out.risk.item() == pytest.approx(per_s.mean(), abs=TOL)
    assert out.risk_std.item() == pytest.approx(per_s.std(), abs=TOL)
    np.testing.assert_allclose(out.survival[0].numpy(), surv, atol=TOL)
    # hazards are those of the mean curve: prod(1 - h) gives it back
    np.testing.assert_allclose(torch.cumprod(1 - out.hazards, 1)[0].numpy(), surv, atol=TOL)


def test_strict_loading_names_the_problem(golden):
    params = {k[len("param/") :]: torch.from_numpy(v) for k, v in golden.items() if k.startswith("param/")}
    cfg = config_from_reference_state(params)
    model = DeReF(cfg.replace(wsi_dim=512))
    with pytest.raises(CheckpointError, match="pathomics_fc.0.weight"):
        load_reference_state_dict(model, params)
    params.pop("classifier.bias")
    with pytest.raises(CheckpointError, match="head.bias"):
        load_reference_state_dict(DeReF(cfg), params)
