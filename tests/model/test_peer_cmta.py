"""CMTA (Zhou & Chen, ICCV 2023): parameter counts against the authors' class, shapes, training,
batching, the translators' structure and the alignment loss on hand tensors."""

from __future__ import annotations

import pytest
import torch

from deref.errors import ConfigError
from deref.model import ModelConfig, build_model, tiny_config
from deref.model.baselines import _output
from deref.model.peers.cmta import fold_attention, square_complete
from tests.model.peer_checks import (
    check_batch_equals_single,
    check_bf16,
    check_eval_deterministic,
    check_missing_inputs,
    check_trains,
    n_params,
    tiny_inputs,
)


# Counts obtained by running the authors' code (FT-ZHOU-ZZZ/CMTA, models/cmta/network.py, class
# CMTA(omic_sizes=[94, 334, 521, 468, 1496, 479] (MCAT's BLCA families), n_classes=4, fusion,
# model_size), WSI features 1024): concat/small (their defaults) 8,259,140; concat/large
# 21,182,276; bilinear/small 8,458,244; bilinear/large 21,381,380. Copying their weights into
# ours (same parameter order) gives their hazards to 2e-7 for bags of 30 and 200 patches.
@pytest.mark.parametrize(
    "fusion, size, expected",
    [
        ("concat", "small", 8_259_140),
        ("concat", "large", 21_182_276),
        ("bilinear", "small", 8_458_244),
        ("bilinear", "large", 21_381_380),
    ],
)
def test_parameter_count_equals_the_authors(fusion, size, expected):
    cfg = ModelConfig(model_type="cmta", cmta_fusion=fusion, cmta_model_size=size)
    assert cfg.m1_sizes == (94, 334, 521, 468, 1496, 479) and cfg.wsi_dim == 1024
    assert n_params(build_model(cfg)) == expected


def test_output_shapes_at_default_and_tiny_configs():
    for cfg in (ModelConfig(model_type="cmta"), tiny_config(model_type="cmta")):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=[5, 12, 2])
        with torch.no_grad():
            out = model(m1, wsi, mask)
        assert out.logits.shape == out.hazards.shape == (3, cfg.n_bins)
        assert out.risk.shape == (3,)
        assert out.cls_m1.shape == out.cls_wsi.shape == (3, cfg.c1)
        assert out.co_attention.shape == (3, len(cfg.m1_sizes), 12)
        assert out.wsi_attention.shape == (3, 2, 12)
        assert set(out.extras) == {"path", "path_hat", "geno", "geno_hat"}
        assert all(v.shape == (3, cfg.c1) for v in out.extras.values())
        # each family's co-attention is a distribution over its own patient's patches
        torch.testing.assert_close(out.co_attention.sum(-1), torch.ones(3, len(cfg.m1_sizes)))
        assert (out.co_attention[~mask.unsqueeze(1).expand_as(out.co_attention)] == 0).all()
        assert (out.wsi_attention[~mask.unsqueeze(1).expand_as(out.wsi_attention)] == 0).all()


def test_trains_a_few_steps():
    check_trains("cmta", c1=32, heads=4)  # a narrower model: the loop's speed on two shared cores


def test_eval_is_deterministic():
    check_eval_deterministic("cmta")


def test_padded_batch_equals_one_patient_at_a_time():
    check_batch_equals_single("cmta")


def test_bilinear_and_large_variants_run_batched():
    check_batch_equals_single("cmta", cmta_fusion="bilinear", cmta_model_size="large")


def test_square_completion_and_folding_on_a_hand_example():
    # patient 0: 3 real patches at positions 0, 2, 3 of a padded bag of 4 (position 1 padding)
    h = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])  # compacted, lengths 3 and 2
    tokens, sides, t, src, valid = square_complete(h, torch.tensor([3, 2]))
    assert sides == [2, 2] and t.tolist() == [4, 4]
    # 3 -> 4 tokens: the first token repeated; 2 -> 4: both repeated
    assert tokens[..., 0].tolist() == [[1.0, 2.0, 3.0, 1.0], [4.0, 5.0, 4.0, 5.0]]
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    attn = torch.tensor([[[0.1, 0.2, 0.3, 0.4]], [[0.25, 0.25, 0.125, 0.375]]])
    folded = fold_attention(attn, src, valid, order, 4)
    torch.testing.assert_close(folded, torch.tensor([[[0.5, 0.0, 0.2, 0.3]], [[0.375, 0.625, 0.0, 0.0]]]))


def test_translators_route_each_modality_where_the_paper_says():
    """P depends on the slide only, G on the genomics only; the translations P_hat (pathology read
    from the genomics) and G_hat (genomics read from the slide) depend on both."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type="cmta")
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[7, 10])
    m1_b = [x + 1.0 for x in m1]
    wsi_b = wsi + torch.randn_like(wsi)
    with torch.no_grad():
        base = model(m1, wsi, mask).extras
        new_g = model(m1_b, wsi, mask).extras
        new_p = model(m1, wsi_b, mask).extras

    def same(a, b):
        return torch.allclose(a, b, atol=1e-6)

    assert same(base["path"], new_g["path"]) and not same(base["path_hat"], new_g["path_hat"])
    assert same(base["geno"], new_p["geno"]) and not same(base["geno_hat"], new_p["geno_hat"])
    assert not same(base["path"], new_p["path"]) and not same(base["geno"], new_g["geno"])
    assert not same(base["path_hat"], new_p["path_hat"]) and not same(base["geno_hat"], new_g["geno_hat"])


def test_alignment_loss_on_hand_tensors_equals_the_hook():
    cfg = tiny_config(model_type="cmta", cmta_alpha=0.5)
    model = build_model(cfg).train()
    path = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    path_hat = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    geno = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    geno_hat = torch.tensor([[1.0, -1.0], [2.0, -2.0]], requires_grad=True)
    out = _output(
        torch.zeros(2, 4), extras={"path": path, "path_hat": path_hat, "geno": geno, "geno_hat": geno_hat}
    )
    terms = model.auxiliary_loss(out, torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    # L1 means: path |0, 1, 2, 3| / 4 = 1.5; genomics |1, 1, 2, 2| / 4 = 1.5; alpha 0.5 each
    assert terms["cmta_align_path"].item() == pytest.approx(0.75)
    assert terms["cmta_align_geno"].item() == pytest.approx(0.75)
    sum(terms.values()).backward()
    assert path.grad is None and geno.grad is None  # the real representations are detached
    torch.testing.assert_close(path_hat.grad, torch.tensor([[0.0, -0.125], [-0.125, -0.125]]))
    torch.testing.assert_close(geno_hat.grad, torch.tensor([[0.125, -0.125], [0.125, -0.125]]))


def test_hook_on_a_real_batch_is_the_mean_absolute_difference():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="cmta")
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=3)
    out = model(m1, wsi, mask)
    terms = model.auxiliary_loss(out, y, c)
    e = out.extras
    expected = (e["path"] - e["path_hat"]).abs().mean() + (e["geno"] - e["geno_hat"]).abs().mean()
    assert cfg.cmta_alpha == 1.0
    torch.testing.assert_close(terms["cmta_align_path"] + terms["cmta_align_geno"], expected)
    assert expected.item() > 0


def test_runs_under_bf16_autocast_and_with_missing_inputs():
    check_bf16("cmta")
    check_missing_inputs("cmta", group=2)


@pytest.mark.parametrize(
    "field, value",
    [("cmta_model_size", "huge"), ("cmta_fusion", "sum"), ("cmta_cross_heads", 3), ("cmta_alpha", -1.0)],
)
def test_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        build_model(tiny_config(model_type="cmta", **{field: value}))
