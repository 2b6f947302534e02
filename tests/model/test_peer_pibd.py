"""PIBD (Zhang et al., ICLR 2024): parameter counts against the authors' class, shapes, training,
determinism, batching, the CLUB estimate / prototype KL / hook terms by hand."""

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
from deref.model.peers.pibd import club_mean, kl_to_standard_normal

#: small widths so that the tests stay fast (one sub-bag per patient in training)
SMALL = dict(pibd_dim=32, pibd_club_hidden=32, pibd_num_patches=512, pibd_sample_num=8)


@pytest.mark.parametrize(
    "wsi_dim, total, pib_wsi",
    [
        # zylbuaa/PIBD models/model_PIBD.py, PIBD(args) with utils/process_args.py defaults
        # (wsi_projection_dim 256, n_classes 4, omics_format pathways) and omic_sizes = the six MCAT
        # families (their datasets_csv/metadata/signatures.csv, the grouping DeReF uses), run on CPU:
        # encoding_dim 1024 -> 3,969,806 (sig_networks 1,264,640, PIB_wsi 923,908, PIB_omics 530,692,
        # PID 395,776, to_logits 197,892, PoE 2, CLUB 656,896); their default encoding_dim 768 -> 3,838,734.
        (1024, 3969806, 923908),
        (768, 3838734, 792836),
    ],
)
def test_parameter_count_equals_the_authors(wsi_dim, total, pib_wsi):
    model = build_model(ModelConfig(model_type="pibd", wsi_dim=wsi_dim))
    assert n_params(model) == total
    assert n_params(model.sig_networks) == 1264640
    assert n_params(model.pib_wsi) == pib_wsi and n_params(model.pib_omics) == 530692
    assert n_params(model.pid) == 395776 and n_params(model.to_logits) == 197892
    assert model.poe_phi.numel() == 2 and n_params(model.club) + n_params(model.club_glob) == 656896


@pytest.mark.parametrize("default", [False, True])
def test_output_shapes(default):
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="pibd", wsi_dim=32) if default else tiny_config(model_type="pibd", **SMALL)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3)
    with torch.no_grad():
        out = model(m1, wsi, mask)
    assert out.logits.shape == (3, 4) and out.risk.shape == (3,)
    assert out.wsi_attention.shape == (3, 1, wsi.shape[1])
    torch.testing.assert_close(out.wsi_attention.sum(dim=(1, 2)), torch.ones(3))
    assert bool((out.wsi_attention[~mask.unsqueeze(1)] == 0).all())
    assert out.cls_m1.shape == (3, cfg.pibd_dim) and out.cls_wsi.shape == (3, cfg.pibd_dim)


def test_trains_and_lowers_its_loss():
    check_trains("pibd", **SMALL)


def test_eval_deterministic_and_batch_equals_single():
    check_eval_deterministic("pibd", **SMALL)
    check_batch_equals_single("pibd", **SMALL)
    # a bag larger than a sub-bag: strided chunks, still deterministic and equal alone
    check_batch_equals_single("pibd", **SMALL, pibd_bag_size=8)


def test_training_samples_and_eval_uses_the_means():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="pibd", **SMALL, pibd_pib_dropout=0.0, pibd_attn_dropout=0.0,
                      pibd_proj_dropout=0.0, pibd_drop_path=0.0, snn_dropout=0.0, pibd_bag_size=64)  # fmt: skip
    model = build_model(cfg)
    mu, _ = model.pib_wsi.prototypes()
    model.eval()
    torch.testing.assert_close(model.pib_wsi.centre(50), mu)
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2)
    with torch.no_grad():
        a = model(m1, wsi, mask).risk
        model.train()
        b, c = model(m1, wsi, mask).risk, model(m1, wsi, mask).risk
    assert not torch.equal(b, c)  # reparameterized samples in training only
    assert not torch.equal(a, b)


def test_club_estimate_by_hand():
    mu = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0], [3.0]])
    # positive: -(0-1)^2/2 = -(2-3)^2/2 = -0.5; negative_0 = -((1-0)^2 + (3-0)^2)/2/2 = -2.5,
    # negative_1 = -((1-2)^2 + (3-2)^2)/2/2 = -0.5 -> mean(-0.5 + 2.5, -0.5 + 0.5) = 1
    assert club_mean(mu, y).item() == pytest.approx(1.0)
    assert club_mean(mu[:1], y[:1]).item() == 0.0  # a batch of one: the estimate vanishes


def test_prototype_kl_by_hand():
    kl = kl_to_standard_normal(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 1.0]]))
    # 0.5 * (4 + 1 + 1 + 0 - 2 - log 4) = 2 - log 2
    assert kl.item() == pytest.approx(2 - math.log(2))


def test_hook_equals_hand_computation():
    cfg = tiny_config(model_type="pibd", **SMALL)
    model = build_model(cfg).train()
    with torch.no_grad():  # prototypes N(0, I): zero KL
        for pib in (model.pib_wsi, model.pib_omics):
            pib.proxies[:, :32] = 0.0
            pib.proxies[:, 32:] = math.log(math.e - 1)
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=1)
    out = model(m1, wsi, mask)
    g = torch.Generator().manual_seed(1)
    h, p, gl = (torch.randn(1, 1, 32, generator=g) for _ in range(3))
    out.extras = {
        "hist": h, "path": p, "glob": gl,
        "col_top_omics": torch.arange(8.0).view(1, 8) / 10, "col_top_wsi": torch.zeros(1, 1, 8),
        "proxy_logits_omics": torch.zeros(1, 8, 4), "proxy_logits_wsi": torch.zeros(1, 1, 8, 4),
    }  # fmt: skip
    terms = model.auxiliary_loss(out, torch.tensor([2]), torch.tensor([1.0]))
    # prototype of (censored, bin 2) = 1 * 4 + 2 = 6: -(0.6 - (2.8 - 0.6) / 7); the WSI's is 0
    assert terms["pibd_proxy"].item() == pytest.approx(-(0.6 - 2.2 / 7))
    # hazards 0.5: uncensored rows (y+1) log 2, censored 0.5 (y+1) log 2 -> 15 log 2 per modality
    assert terms["pibd_ib"].item() == pytest.approx(0.1 * 30 * math.log(2), rel=1e-5)
    with torch.no_grad():
        hp = torch.cat([h[:, 0], p[:, 0]], dim=1)
        learn = (model.club.p_mu(h[:, 0]) - p[:, 0]).pow(2).sum() + (model.club_glob.p_mu(hp) - gl[:, 0]).pow(
            2
        ).sum()
    assert terms["pibd_club"].item() == pytest.approx(0.1 * learn.item(), rel=1e-5)


def test_hook_runs_on_a_batch_and_backpropagates():
    cfg = tiny_config(model_type="pibd", **SMALL)
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=4)
    terms = model.auxiliary_loss(model(m1, wsi, mask), y, c)
    sum(terms.values()).backward()
    assert model.pib_wsi.proxies.grad.abs().sum() > 0 and model.club.p_mu[0].weight.grad.abs().sum() > 0


def test_bfloat16_autocast_runs():
    cfg = tiny_config(model_type="pibd", **SMALL)
    model = build_model(cfg)
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(m1, wsi, mask)
    assert torch.isfinite(sum(model.auxiliary_loss(out, y, c).values())).all()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(m1, wsi, mask).risk.float()).all()


def test_bad_field_is_named():
    with pytest.raises(ConfigError, match="pibd_ratio_wsi"):
        build_model(tiny_config(model_type="pibd", pibd_ratio_wsi=0.0))


@pytest.mark.parametrize("kind", ["tiny", "mri_vectors", "mri_cubes"])
def test_builds_and_runs_in_both_modes(kind):
    torch.manual_seed(0)
    if kind == "tiny":
        cfg = tiny_config(model_type="pibd")
    elif kind == "mri_vectors":
        cfg = tiny_config(model_type="pibd", m1_kind="mri", m1_sizes=(8, 8), m1_names=("t1", "t2"), **SMALL)
    else:
        cfg = tiny_mri_config(("t1", "t2"), model_type="pibd", **SMALL)  # pibd_dim = c1 = 32
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=2)
    out = model(m1, wsi, mask)
    assert all(torch.isfinite(t) for t in model.auxiliary_loss(out, y, c).values())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(m1, wsi, mask).risk).all()


def test_cubes_need_pibd_dim_equal_to_c1():
    with pytest.raises(ConfigError, match="pibd_dim"):
        build_model(tiny_mri_config(("t1",), model_type="pibd", pibd_dim=64))
