"""MOTCat (Xu & Chen, ICCV 2023): parameter count against the authors' class, shapes, training,
batching, micro-batches, and the unbalanced-OT co-attention on a hand example."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch

from deref.errors import ConfigError
from deref.model import ModelConfig, build_model, collate_bags, tiny_config
from deref.model.peers.motcat import micro_batches, transport_plan, unbalanced_plan
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

#: TCGA-BLCA family sizes as MCAT's dataset code computes them (MOTCat uses MCAT's tables; see
#: tests/model/test_peer_mcat.py).
BLCA_SIZES = (94, 334, 521, 468, 1495, 479)
REG, TAU = 0.1, 0.5  # MOTCat main.py --ot_reg, --ot_tau

X = torch.tensor(
    [
        [0.5, 1.0, -0.2, 0.3],
        [2.0, 0.1, 0.0, 1.5],
        [0.3, 0.3, 0.9, -1.0],
        [1.2, -0.5, 0.4, 0.8],
        [0.0, 0.7, 1.1, 0.2],
    ]
)
Y = torch.tensor([[1.0, 0.0, 0.5, 0.2], [-0.3, 0.8, 0.1, 1.0], [0.6, 0.6, -0.4, 0.0]])


def _model(**changes):
    torch.manual_seed(0)
    return build_model(tiny_config(model_type="motcat", **changes)).eval()


def _hand_cost(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """OT_Attn_assem's cost: features shifted by their minimum, squared distances, / max."""
    xs = x.double().numpy()
    ys = y.double().numpy()
    xs = xs - xs.min(axis=1, keepdims=True)
    ys = ys - ys.min(axis=1, keepdims=True)
    m = ((xs[:, None, :] - ys[None, :, :]) ** 2).sum(-1)
    return m / m.max()


@pytest.mark.parametrize(
    "fusion, expected",
    [
        # Innse/MOTCat models/model_motcat.py, MOTCAT_Surv(fusion="concat", omic_sizes=BLCA_SIZES, n_classes=4,
        # ot_reg=0.1, ot_tau=0.5, ot_impl="pot-uot-l2"), run on CPU: 4,228,614 parameters (OT_Attn_assem has none).
        ("concat", 4_228_614),
        # the same with fusion="bilinear": 4,427,718.
        ("bilinear", 4_427_718),
    ],
)
def test_parameter_count_equals_the_authors_motcat(fusion, expected):
    # With their weights loaded into ours and their POT call given pot==0.9.3's default kernel (reg_type="entropy",
    # the version they pin), their forward and ours gave the same hazards (max difference 0.0) on a 50-patch bag.
    model = build_model(ModelConfig(model_type="motcat", m1_sizes=BLCA_SIZES, motcat_fusion=fusion))
    assert n_params(model) == expected
    mcat = build_model(ModelConfig(model_type="mcat", m1_sizes=BLCA_SIZES, mcat_fusion=fusion))
    assert (
        n_params(mcat) - n_params(model) == 263_168
    )  # MCAT's co-attention layer; the transport has no weights


def test_output_shapes_at_default_and_tiny_configs():
    for cfg in (ModelConfig(model_type="motcat"), tiny_config(model_type="motcat")):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=[4, 11, 7])
        with torch.no_grad():
            out = model(m1, wsi, mask)
        assert out.logits.shape == (3, cfg.n_bins) and out.risk.shape == (3,)
        assert out.co_attention.shape == (3, 6, 11) and out.wsi_attention.shape == (3, 1, 11)
        assert out.cls_m1.shape == (3, cfg.c1) and out.cls_wsi.shape == (3, cfg.c1)
        torch.testing.assert_close(out.co_attention.sum(-1), torch.ones(3, 6))
        torch.testing.assert_close(out.wsi_attention.sum(-1), torch.ones(3, 1))
        assert (out.co_attention[0, :, 4:] == 0).all() and (out.co_attention[2, :, 7:] == 0).all()


@pytest.mark.parametrize("changes", [{}, {"motcat_fusion": "bilinear"}, {"motcat_bs_micro": 16}])
def test_trains_is_deterministic_in_eval_and_batches_like_single_patients(changes):
    check_trains("motcat", **changes)
    check_eval_deterministic("motcat", **changes)
    check_batch_equals_single("motcat", **changes)


def test_transport_plan_is_pots_unbalanced_sinkhorn_on_the_hand_cost():
    plan = transport_plan(X, Y, REG, TAU).T.numpy()  # (n patches, G families)
    cost = _hand_cost(X, Y)
    a, b = np.full(5, 1 / 5), np.full(3, 1 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reg_type="entropy" announces that it uses the all-ones reference
        pot = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, cost, reg=REG, reg_m=TAU, reg_type="entropy")
    np.testing.assert_allclose(plan, pot, rtol=1e-10, atol=1e-14)
    # an independent generalized Sinkhorn (Chizat et al.): u = (a / K v)^f, v = (b / K^T u)^f, f = tau / (tau + eps)
    k = np.exp(-cost / REG)
    u, v, f = np.ones(5), np.ones(3), TAU / (TAU + REG)
    for _ in range(5000):
        u = (a / (k @ v)) ** f
        v = (b / (k.T @ u)) ** f
    np.testing.assert_allclose(plan, u[:, None] * k * v[None, :], rtol=1e-5)


def test_the_device_path_torch_backend_gives_the_cpu_path_numpy_backend_plan():
    # off the CPU the solver runs on tensors (POT's torch backend); on the CPU on numpy arrays
    cost = torch.from_numpy(_hand_cost(X, Y))
    n, g = cost.shape
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((g,), 1 / g, dtype=torch.float64)
    on_tensors = ot.unbalanced.sinkhorn_knopp_unbalanced(
        a, b, cost, reg=REG, reg_m=TAU, reg_type="kl", c=torch.ones_like(cost)
    )
    assert isinstance(on_tensors, torch.Tensor)
    torch.testing.assert_close(unbalanced_plan(cost, REG, TAU), on_tensors, rtol=1e-12, atol=1e-15)


def test_transport_plan_marginals_behave_as_unbalanced_ot():
    plan = transport_plan(X, Y, REG, TAU).T.numpy()
    cost = _hand_cost(X, Y)
    a, b = np.full(5, 1 / 5), np.full(3, 1 / 3)
    rows, cols = plan.sum(1), plan.sum(0)
    assert (plan > 0).all()
    assert plan.sum() < 1.0 - 0.05  # mass is destroyed where transport is costly
    assert np.abs(rows - a).max() > 0.05 and np.abs(cols - b).max() > 0.01  # marginals relaxed, not imposed
    # first-order optimality of  <P, M> + eps KL(P | 1) + tau KL(P 1 | a) + tau KL(P^T 1 | b):
    # M_ij + eps log P_ij + tau log(r_i / a_i) + tau log(c_j / b_j) = 0 for every entry
    grad = cost + REG * np.log(plan) + TAU * np.log(rows / a)[:, None] + TAU * np.log(cols / b)[None, :]
    assert np.abs(grad).max() < 1e-5
    # a large tau imposes the marginals (balanced OT)
    tight = transport_plan(X, Y, REG, 1e4).T.numpy()
    np.testing.assert_allclose(tight.sum(1), a, atol=1e-4)
    np.testing.assert_allclose(tight.sum(0), b, atol=1e-4)


def test_transport_plan_raises_no_warning_and_ignores_autocast():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = transport_plan(X, Y, REG, TAU)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = transport_plan(X, Y, REG, TAU)
    assert plain.dtype == torch.float64 and plain.shape == (3, 5)
    torch.testing.assert_close(cast, plain, rtol=0, atol=0)


def test_forward_is_the_head_on_the_plan_times_the_patches():
    """Co-attended tokens = plan^T (G, n) @ patch embeddings (unnormalized, as the authors'); co_attention =
    the plan's family rows normalized to one."""
    model = _model()
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    m1 = [torch.randn(2, d, generator=g) for d in cfg.m1_sizes]
    wsi, mask = collate_bags(
        [torch.randn(6, cfg.wsi_dim, generator=g), torch.randn(3, cfg.wsi_dim, generator=g)]
    )
    with torch.no_grad():
        out = model(m1, wsi, mask)
        omic, path = model.encode(m1, wsi, mask)
        plans = [transport_plan(path[i, :n], omic[i], REG, TAU) for i, n in enumerate([6, 3])]
        tokens = torch.stack([p.float() @ path[i, : p.shape[1]] for i, p in enumerate(plans)])
        logits = model.head(tokens, omic)[0]
    torch.testing.assert_close(out.logits, logits, atol=1e-6, rtol=1e-5)
    for i, p in enumerate(plans):
        n = p.shape[1]
        torch.testing.assert_close(out.co_attention[i, :, :n], (p / p.sum(1, keepdim=True)).float())
        assert (out.co_attention[i, :, n:] == 0).all()
    assert not torch.allclose(
        plans[0].sum(1), torch.ones(6, dtype=torch.float64)
    )  # rows of the raw plan: < 1


def test_micro_batches_split_like_the_authors_and_shuffle_only_in_training():
    eval_chunks = micro_batches(10, 4, shuffle=False, device=torch.device("cpu"))  # 10 // 4 + 1 = 3 chunks
    assert [c.tolist() for c in eval_chunks] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # np.array_split sizes
    assert [c.tolist() for c in micro_batches(3, 4, False, torch.device("cpu"))] == [[0, 1, 2]]
    assert [c.tolist() for c in micro_batches(9, 0, True, torch.device("cpu"))] == [list(range(9))]
    torch.manual_seed(0)
    train_chunks = micro_batches(10, 4, shuffle=True, device=torch.device("cpu"))
    assert [len(c) for c in train_chunks] == [4, 3, 3]
    assert sorted(torch.cat(train_chunks).tolist()) == list(range(10))
    assert torch.cat(train_chunks).tolist() != list(range(10))


def test_micro_batched_training_passes_are_random_and_eval_is_not():
    no_dropout = dict(motcat_dropout=0.0, snn_dropout=0.0, wsi_dropout=0.0)
    m1, wsi, mask, _, _ = tiny_inputs(tiny_config(), b=3, sizes=[30, 25, 12])
    for bs, random_in_training in ((8, True), (0, False)):
        model = _model(motcat_bs_micro=bs, **no_dropout).train()
        with torch.no_grad():
            a, b = model(m1, wsi, mask), model(m1, wsi, mask)
        assert (not torch.equal(a.risk, b.risk)) == random_in_training
        model.eval()
        with torch.no_grad():
            c, d = model(m1, wsi, mask), model(m1, wsi, mask)
        torch.testing.assert_close(c.risk, d.risk, rtol=0, atol=0)
        torch.testing.assert_close(c.co_attention.sum(-1), torch.ones(3, 6))


def test_no_auxiliary_loss_and_l1_targets_the_genomic_snns():
    model = _model()
    assert not hasattr(model, "auxiliary_loss")  # the OT distance of the authors' code never enters the loss
    hand = sum(p.abs().sum() for name, p in model.named_parameters() if name.startswith("sig_networks."))
    torch.testing.assert_close(sum(p.abs().sum() for p in l1_target(model)), hand)
    assert len(l1_target(model)) == 4 * 6


def test_missing_genomic_group_is_its_mean_and_a_missing_slide_is_refused():
    check_missing_inputs("motcat", group=0)


def test_bf16_autocast_runs():
    out = check_bf16("motcat")
    torch.testing.assert_close(out.co_attention.sum(-1), torch.ones(3, 6))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"motcat_fusion": "sum"}, "motcat_fusion"),
        ({"motcat_ot_reg": 0.0}, "motcat_ot_reg"),
        ({"motcat_ot_tau": -1.0}, "motcat_ot_tau"),
        ({"motcat_bs_micro": -1}, "motcat_bs_micro"),
        ({"motcat_ff": 0}, "motcat_ff"),
    ],
)
def test_bad_fields_are_refused_by_name(changes, field):
    with pytest.raises(ConfigError, match=field):
        build_model(tiny_config(model_type="motcat", **changes))
