"""MCAT (Chen et al., ICCV 2021): parameter count against the authors' class, shapes, training,
batching, and the genomic-guided co-attention on a hand example."""

from __future__ import annotations

import math

import pytest
import torch

from deref.errors import ConfigError
from deref.model import ModelConfig, build_model, collate_bags, tiny_config
from deref.training import l1_target
from tests.model.peer_checks import (
    check_batch_equals_single,
    check_bf16,
    check_eval_deterministic,
    check_missing_inputs,
    check_trains,
    n_params,
    tiny_inputs,
)

#: TCGA-BLCA gene-family sizes as the authors' dataset code computes them
#: (mahmoodlab/MCAT datasets/dataset_survival.py, signatures.csv x datasets_csv_sig/tcga_blca_all_clean.csv.zip;
#: its metadata slice drops the table's last column, ZXDC_rnaseq, hence 1495 transcription factors where
#: our default config has 1496).
BLCA_SIZES = (94, 334, 521, 468, 1495, 479)


def _model(**changes):
    torch.manual_seed(0)
    return build_model(tiny_config(model_type="mcat", **changes)).eval()


@pytest.mark.parametrize(
    "fusion, expected",
    [
        # mahmoodlab/MCAT models/model_coattn.py, MCAT_Surv(fusion="concat", omic_sizes=BLCA_SIZES,
        # n_classes=4) (model_size_wsi/omic "small", dropout 0.25), run on CPU: 4,491,782 parameters.
        ("concat", 4_491_782),
        # the same with fusion="bilinear" (BilinearFusion(dim1=256, dim2=256, scale 8, mmhid=256)): 4,690,886.
        ("bilinear", 4_690_886),
    ],
)
def test_parameter_count_equals_the_authors_mcat(fusion, expected):
    # With their weights loaded into ours (a one-to-one name map), their forward and ours gave the same
    # hazards (max difference 0.0) on a 50-patch bag; checked once by hand, their code is not a dependency.
    model = build_model(ModelConfig(model_type="mcat", m1_sizes=BLCA_SIZES, mcat_fusion=fusion))
    assert n_params(model) == expected
    # parts as in theirs: coattn 263,168; sig_networks 1,264,384; wsi_net 262,400; each transformer 1,054,208
    assert n_params(model.coattn) == 263_168
    assert n_params(model.sig_networks) == 1_264_384
    assert n_params(model.wsi_net) == 262_400
    assert n_params(model.head.path_transformer) == 1_054_208
    assert n_params(model.head.mm) == (197_120 if fusion == "concat" else 396_224)


def test_output_shapes_at_default_and_tiny_configs():
    for cfg in (ModelConfig(model_type="mcat"), tiny_config(model_type="mcat")):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=[4, 11, 7])
        with torch.no_grad():
            out = model(m1, wsi, mask)
        assert out.logits.shape == (3, cfg.n_bins) and out.risk.shape == (3,)
        assert out.co_attention.shape == (3, 6, 11)
        assert out.wsi_attention.shape == (3, 1, 11)
        assert out.cls_m1.shape == (3, cfg.c1) and out.cls_wsi.shape == (3, cfg.c1)
        torch.testing.assert_close(out.wsi_attention.sum(-1), torch.ones(3, 1))
        assert (out.wsi_attention[0, 0, 4:] == 0).all() and (out.wsi_attention[0, 0, :4] > 0).all()


@pytest.mark.parametrize("fusion", ["concat", "bilinear"])
def test_trains_is_deterministic_in_eval_and_batches_like_single_patients(fusion):
    check_trains("mcat", mcat_fusion=fusion)
    check_eval_deterministic("mcat", mcat_fusion=fusion)
    check_batch_equals_single("mcat", mcat_fusion=fusion)


def _hand_attention(model, m1, wsi, mask):
    """softmax(Q K^T / sqrt(d)) per head from the layer's own projections, padded keys at -inf."""
    omic, path = model.encode(m1, wsi, mask)
    c, h = model.config.c1, model.config.mcat_coattn_heads
    w, bias = model.coattn.in_proj_weight, model.coattn.in_proj_bias
    q = omic @ w[:c].T + bias[:c]
    k = path @ w[c : 2 * c].T + bias[c : 2 * c]
    d = c // h
    q = q.view(q.shape[0], q.shape[1], h, d).transpose(1, 2)  # (B, h, G, d)
    k = k.view(k.shape[0], k.shape[1], h, d).transpose(1, 2)  # (B, h, N, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=1)  # (B, G, N)


@pytest.mark.parametrize("heads", [1, 4])
def test_co_attention_is_the_hand_softmax_over_real_patches(heads):
    model = _model(mcat_coattn_heads=heads)
    cfg = model.config
    g = torch.Generator().manual_seed(3)
    m1 = [torch.randn(2, d, generator=g) for d in cfg.m1_sizes]
    wsi, mask = collate_bags(
        [torch.randn(3, cfg.wsi_dim, generator=g), torch.randn(7, cfg.wsi_dim, generator=g)]
    )
    with torch.no_grad():
        out = model(m1, wsi, mask)
        hand = _hand_attention(model, m1, wsi, mask)
    co = out.co_attention
    assert co.shape == (2, 6, 7)  # families x patches
    torch.testing.assert_close(co, hand, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(co.sum(-1), torch.ones(2, 6))  # each family: a distribution over real patches
    assert (co[0, :, 3:] == 0).all()  # padding gets nothing
    assert (co[0, :, :3] > 0).all() and (co[1] > 0).all()
    assert not torch.allclose(
        co[1], torch.full_like(co[1], 1 / 7), atol=1e-3
    )  # not uniform: it reads the data


def test_co_attended_tokens_feed_the_head():
    """The logits are the head applied to softmax(QK^T/sqrt d) V W_o + b_o (the co-attended tokens)."""
    model = _model()
    cfg = model.config
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[5, 9])
    with torch.no_grad():
        out = model(m1, wsi, mask)
        omic, path = model.encode(m1, wsi, mask)
        c = cfg.c1
        v = path @ model.coattn.in_proj_weight[2 * c :].T + model.coattn.in_proj_bias[2 * c :]
        tokens = model.coattn.out_proj(_hand_attention(model, m1, wsi, mask) @ v)
        logits = model.head(tokens, omic)[0]
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)


def test_no_auxiliary_loss_and_l1_targets_the_genomic_snns():
    model = _model()
    assert not hasattr(model, "auxiliary_loss")  # MCAT trains on the NLL alone
    params = l1_target(model)
    hand = sum(p.abs().sum() for name, p in model.named_parameters() if name.startswith("sig_networks."))
    torch.testing.assert_close(sum(p.abs().sum() for p in params), hand)
    assert len(params) == 4 * 6  # two Linear layers (weight, bias) per family
    assert sum(p.numel() for p in params) < n_params(model) / 2


def test_missing_genomic_group_is_its_mean_and_a_missing_slide_is_refused():
    check_missing_inputs("mcat", group=2)


def test_bf16_autocast_runs():
    check_bf16("mcat")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"mcat_fusion": "sum"}, "mcat_fusion"),
        ({"mcat_coattn_heads": 3}, "mcat_coattn_heads"),
        ({"mcat_layers": 0}, "mcat_layers"),
        ({"mcat_dropout": 1.0}, "mcat_dropout"),
        ({"mcat_bilinear_scale": 7}, "mcat_bilinear_scale"),
    ],
)
def test_bad_fields_are_refused_by_name(changes, field):
    with pytest.raises(ConfigError, match=field):
        build_model(tiny_config(model_type="mcat", **changes))
