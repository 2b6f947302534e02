"""CFDL (Liu et al., JBHI 2025): parameter counts against the authors' class, shapes, training,
determinism, batching, the DMF / LinG_GN weights and the disentanglement losses by hand."""

from __future__ import annotations

import math

import pytest
import torch
from peer_checks import (
    check_batch_equals_single,
    check_eval_deterministic,
    check_trains,
    n_params,
    tiny_inputs,
)

from deref.errors import ConfigError
from deref.model import ModelConfig, build_model, tiny_config, tiny_mri_config
from deref.model.peers.cfdl import DMF, abs_cosine_sum, pairwise_mse_sum, partial_subsets


def _parts(model) -> dict[str, int]:
    return {k: n_params(getattr(model, k)) for k in ("disentangle", "dmf", "head")}


@pytest.mark.parametrize(
    "sequences, n_bins, theirs",
    [
        # IsDling/CFDL models/CFDL.py, CFDL(args) with main.py defaults (feature_dim 32, ifdis_sup 1,
        # if_allpair 1, fusion moe, moe_fusion_type concat, gating importance, model_depth 18 -> dim_out
        # 512), run on CPU: dataset 'men' (3 sequences, 3 classes) total 99,617,859 of which the three
        # ResNet-18 backbones 99,480,000; linear_dis_share 16,416, linear_dis_spec 49,248,
        # linear_dis_sup 49,248, moe_model 14,592 (gating_fc = LinG_GN 7,200, experts 7,392),
        # linear_cls 8,355.
        (3, 3, dict(disentangle=16416 + 49248 + 49248, dmf=14592, gate=7200, head=8355)),
        # dataset 'brats' (4 sequences, 2 classes): total 132,933,986, backbones 132,640,000;
        # share 16,416, spec 65,664, sup 164,160 (10 subsets), moe 31,232 (gating 15,392), cls 16,514.
        # (Their forward applies linear_dis_sup[4], [5] to a pair and a triple each and never uses
        # [8], [9]; ours uses one projection per subset, the same 10 modules' worth of weights.)
        (4, 2, dict(disentangle=16416 + 65664 + 164160, dmf=31232, gate=15392, head=16514)),
    ],
)
def test_disentangling_dmf_and_head_match_the_authors_counts(sequences, n_bins, theirs):
    # Their M MRI sequences are M modalities; ours are the modality-1 groups plus the slide, so
    # M - 1 MRI vectors + the slide, with each modality vector of their dim_out = 512 (c1).
    cfg = ModelConfig(
        model_type="cfdl", m1_kind="mri", m1_sizes=(16,) * (sequences - 1),
        m1_names=tuple(f"s{i}" for i in range(sequences - 1)), c1=512, n_bins=n_bins,
    )  # fmt: skip
    model = build_model(cfg)
    parts = _parts(model)
    assert parts == {"disentangle": theirs["disentangle"], "dmf": theirs["dmf"], "head": theirs["head"]}
    assert n_params(model.dmf.gate) == theirs["gate"]
    # the encoders differ (theirs: one 3D ResNet-18 per sequence); ours here: per-sequence
    # Linear(16, 512) and the gated-attention slide pooling Linear(1024, 512) + 2 x Linear(512, 512) + Linear(512, 1)
    enc = (sequences - 1) * (16 * 512 + 512) + (1024 * 512 + 512) + 2 * (512 * 512 + 512) + 513
    assert n_params(model) == sum(parts.values()) + enc


def test_default_genomic_count():
    # six gene families + the slide = 7 modalities: 119 partial-shared subsets, 127 features.
    model = build_model(ModelConfig(model_type="cfdl"))
    assert len(model.disentangle.subsets) == 119 and len(model.feature_names) == 127
    snn = sum(d * 256 + 256 + 256 * 256 + 256 for d in (94, 334, 521, 468, 1496, 479))
    pool = 1024 * 256 + 256 + 2 * (256 * 256 + 256) + 257
    dis = (1 + 7 + 119) * (256 * 32 + 32)
    dmf = 127 * (32 * 32 + 32) + 127 * 32 * 32 + 32
    head = 127 * 32 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    assert n_params(model) == snn + pool + dis + dmf + head == 3098789


def test_partial_subsets_are_all_proper_subsets_of_two_or_more():
    assert partial_subsets(3) == [(0, 1), (0, 2), (1, 2)]
    assert len(partial_subsets(4)) == 10 and len(partial_subsets(2)) == 0


@pytest.mark.parametrize("default", [False, True])
def test_output_shapes(default):
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="cfdl", wsi_dim=32) if default else tiny_config(model_type="cfdl")
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3)
    with torch.no_grad():
        out = model(m1, wsi, mask)
    k = 127
    assert out.logits.shape == (3, 4) and out.risk.shape == (3,)
    assert out.features.shape == (3, k, 32) and out.gate.shape == (3, k)
    torch.testing.assert_close(out.gate.sum(dim=1), torch.ones(3))
    assert out.wsi_attention.shape == (3, 1, wsi.shape[1])
    assert bool((out.wsi_attention[~mask.unsqueeze(1)] == 0).all())
    assert out.cls_m1.shape == (3, cfg.c1) and out.cls_wsi.shape == (3, cfg.c1)


def test_trains_and_lowers_its_loss():
    # 127 features: the authors' summed difference loss dominates at first, so 60 steps
    check_trains("cfdl", steps=60)


def test_eval_deterministic_and_batch_equals_single():
    check_eval_deterministic("cfdl")
    check_batch_equals_single("cfdl")


def test_two_modalities_have_no_partial_shared_features():
    cfg = tiny_config(model_type="cfdl", m1_sizes=(5,), m1_names=("g",))
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=2)
    out = model(m1, wsi, mask)
    assert out.features.shape[1] == 3  # shared + 2 specific
    assert model.auxiliary_loss(out, y, c)["cfdl_sup_sim"].item() == 0.0


def test_dmf_lingn_weights_by_hand():
    dmf = DMF(2, 2)
    with torch.no_grad():
        dmf.gate.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        dmf.gate.bias.zero_()
        dmf.experts.weight.copy_(torch.eye(2).expand(2, 2, 2))
        dmf.experts.bias.zero_()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    fused, w = dmf(x)
    # g = W relu([1, 0, 0, 2]) = [1, 2]; f1.g = 1, f2.g = 4; w = softmax([1, 4])
    w1, w2 = 1 / (1 + math.exp(3)), math.exp(3) / (1 + math.exp(3))
    torch.testing.assert_close(w, torch.tensor([[w1, w2]]))
    torch.testing.assert_close(fused, torch.tensor([[w1, 0.0, 0.0, 2 * w2]]))


def test_loss_terms_by_hand():
    share = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]])
    pairs = torch.tensor([[0, 1], [0, 2], [1, 2]])
    assert pairwise_mse_sum(share, pairs).item() == pytest.approx(1 + 2 + 1)
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert abs_cosine_sum(feats).item() == pytest.approx(0 + 2 / math.sqrt(2))


def test_hook_equals_hand_computation():
    cfg = tiny_config(
        model_type="cfdl", m1_sizes=(5, 6), m1_names=("a", "b"), cfdl_w_sim=2.0, cfdl_w_diff=0.5
    )
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=2)
    out = model(m1, wsi, mask)
    share = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]]).repeat(2, 1, 1)
    sup = torch.full((2, 3, 3, 2), 1e3)  # non-members: ignored
    sup[:, 0, 0], sup[:, 0, 1] = 1.0, 3.0  # subset (0, 1): mse 4
    sup[:, 1, 0], sup[:, 1, 2] = 0.0, 0.0  # subset (0, 2): 0
    sup[:, 2, 1], sup[:, 2, 2] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])  # (1, 2): 0.5
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]).repeat(2, 1, 1)
    out.extras = {"share_each": share, "sup_each": sup, "features": feats}
    terms = model.auxiliary_loss(out, y, c)
    assert terms["cfdl_share_sim"].item() == pytest.approx(2.0 * 4)
    assert terms["cfdl_sup_sim"].item() == pytest.approx(2.0 * 4.5)
    assert terms["cfdl_diff"].item() == pytest.approx(0.5 * math.sqrt(2))


def test_hook_terms_backpropagate_to_the_projections():
    cfg = tiny_config(model_type="cfdl", m1_sizes=(5, 6), m1_names=("a", "b"))
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=4)
    sum(model.auxiliary_loss(model(m1, wsi, mask), y, c).values()).backward()
    assert (
        model.disentangle.sup.weight.grad.abs().sum() > 0
        and model.disentangle.share.weight.grad.abs().sum() > 0
    )


def test_bfloat16_autocast_runs():
    cfg = tiny_config(model_type="cfdl")
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(m1, wsi, mask)
    assert torch.isfinite(out.risk.float()).all()


def test_bad_field_is_named():
    with pytest.raises(ConfigError, match="cfdl_feature_dim"):
        build_model(tiny_config(model_type="cfdl", cfdl_feature_dim=0))


def test_max_partial_keeps_the_small_subsets():
    cfg = tiny_config(model_type="cfdl", cfdl_max_partial=2)
    model = build_model(cfg).eval()
    assert len(model.disentangle.subsets) == 21 and all(len(s) == 2 for s in model.disentangle.subsets)
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2)
    with torch.no_grad():
        assert model(m1, wsi, mask).features.shape == (2, 1 + 21 + 7, 32)
    with pytest.raises(ConfigError, match="cfdl_max_partial"):
        build_model(tiny_config(model_type="cfdl", cfdl_max_partial=1))


@pytest.mark.parametrize("cubes", [False, True])
def test_mri_modality_one(cubes):
    torch.manual_seed(0)
    if cubes:
        cfg = tiny_mri_config(("t1", "t2", "flair"), model_type="cfdl")
    else:
        cfg = tiny_config(
            model_type="cfdl", m1_kind="mri", m1_sizes=(8, 8, 8), m1_names=("t1", "t2", "flair")
        )
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=2)
    out = model(m1, wsi, mask)
    assert len(model.disentangle.subsets) == 10  # 4 modalities, as the authors' BraTS setting
    assert out.features.shape == (2, 15, 32) and torch.isfinite(out.risk).all()
    assert all(torch.isfinite(t) for t in model.auxiliary_loss(out, y, c).values())
