"""CCL (Zhou, Zhou & Chen, IEEE TMI 2024): parameter count against the authors' class, shapes,
training, batching, the cohort guidance (prototype k-means, matching, running update, bank) on
hand examples, and each loss term by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deref.errors import ConfigError
from deref.model import ModelConfig, build_model, tiny_config
from deref.model.baselines import _output
from deref.model.encoders import PPEG
from deref.model.peers.ccl import InteractionEstimator, intra_loss, kmeans, match_to_prototypes
from tests.model.peer_checks import (
    check_batch_equals_single,
    check_bf16,
    check_eval_deterministic,
    check_missing_inputs,
    check_trains,
    n_params,
    tiny_inputs,
)

#: Obtained by running the authors' code (moothes/CCL-survival, models/CCL/network.py, class
#: CCL(args) with custom_config defaults num_cluster=6, update_ratio=0.1, bank_length=10,
#: n_classes=4, extractor="resnet50" (1024), dataset="blca" (families 94, 334, 521, 468, 1496,
#: 479)): 2,147,110 trainable parameters (their prototype memory is a non-trainable tensor).
THEIRS = 2_147_110
#: Their fusion Transformer builds a PPEG(256) that its forward never calls; ours has none.
UNUSED_PPEG = 22_016


def test_parameter_count_equals_the_authors_less_their_unused_ppeg():
    cfg = ModelConfig(model_type="ccl")
    assert cfg.m1_sizes == (94, 334, 521, 468, 1496, 479) and cfg.wsi_dim == 1024 and cfg.c1 == 256
    model = build_model(cfg)
    assert n_params(PPEG(256)) == UNUSED_PPEG
    assert n_params(model) == THEIRS - UNUSED_PPEG == 2_125_094
    # cohort state is buffers, not parameters
    assert model.memory.shape == (6, 1024) and model.bank.shape == (4, 10, 4, 256)


def test_output_shapes_at_default_and_tiny_configs():
    for cfg in (ModelConfig(model_type="ccl"), tiny_config(model_type="ccl")):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=[9, 14, 4])
        with torch.no_grad():
            out = model(m1, wsi, mask)
        assert out.logits.shape == out.hazards.shape == (3, cfg.n_bins) and out.risk.shape == (3,)
        assert out.cls_m1.shape == out.cls_wsi.shape == (3, cfg.c1)
        assert out.extras["knowledge"].shape == (3, 4, cfg.c1)
        assert out.wsi_attention.shape == (3, cfg.ccl_clusters, 14)
        assert (out.wsi_attention[~mask.unsqueeze(1).expand_as(out.wsi_attention)] == 0).all()
        # every real patch belongs to exactly one centre: its weights sum to one per non-empty centre
        sums = out.wsi_attention.sum(-1)
        assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))
        assert ((out.wsi_attention > 0).sum(1) == mask.long()).all()


def test_trains_a_few_steps():
    check_trains("ccl")


def test_eval_is_deterministic_and_leaves_the_cohort_state_alone():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="ccl")
    model = build_model(cfg).eval()
    before = model.memory.clone()
    check_eval_deterministic("ccl")
    m1, wsi, mask, _, _ = tiny_inputs(cfg)
    with torch.no_grad():
        model(m1, wsi, mask)
    assert torch.equal(model.memory, before)


def test_padded_batch_equals_one_patient_at_a_time():
    check_batch_equals_single("ccl")


# ---------------------------------------------------------------- cohort guidance by hand
POINTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
PROTOS = torch.tensor([[9.0, 0.0], [1.0, 0.0]])


def test_kmeans_and_matching_on_a_hand_example():
    assign, centres = kmeans(POINTS, PROTOS, tol=1e-4, max_iter=100)
    # started at the patch nearest each prototype: (10, 0) and (0, 0)
    assert assign.tolist() == [1, 1, 0, 0]
    torch.testing.assert_close(centres, torch.tensor([[10.0, 0.5], [0.0, 0.5]]))
    assert match_to_prototypes(centres, PROTOS).tolist() == [0, 1]
    assert match_to_prototypes(centres.flip(0), PROTOS).tolist() == [1, 0]
    # an empty cluster's centre is 0 (theirs): two prototypes nearest the same patch
    pts = torch.tensor([[5.0, 5.0], [5.0, 6.0]])
    assign, centres = kmeans(pts, torch.tensor([[5.0, 5.2], [5.0, 5.3]]), 1e-4, 100)
    assert assign.tolist() == [0, 0]
    torch.testing.assert_close(centres, torch.tensor([[5.0, 5.5], [0.0, 0.0]]))


def _hand_model(**changes):
    cfg = tiny_config(model_type="ccl", wsi_dim=2, ccl_clusters=2, ccl_update_ratio=0.5, **changes)
    model = build_model(cfg)
    model.memory.copy_(PROTOS)
    m1 = [torch.zeros(2, d) for d in cfg.m1_sizes]
    return model, m1


def test_prototypes_move_by_a_running_mean_in_training_and_stay_in_eval():
    model, m1 = _hand_model()
    # patient 0: the four points (one padded row); patient 1: the two right-hand points
    wsi = torch.stack([torch.cat([POINTS, torch.zeros(1, 2)]), torch.cat([POINTS[2:], torch.zeros(3, 2)])])
    mask = torch.tensor([[True] * 4 + [False], [True, True, False, False, False]])
    model.eval()
    with torch.no_grad():
        out = model(m1, wsi, mask)
    assert torch.equal(model.memory, PROTOS)
    torch.testing.assert_close(
        out.wsi_attention[0], torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]])
    )
    model.train()
    with torch.no_grad():
        model(m1, wsi, mask)
    # patient 0: memory <- 0.5 * PROTOS + 0.5 * [(10, .5), (0, .5)] = [(9.5, .25), (.5, .25)]
    # patient 1 (from that memory): both points nearest prototype 0's patch (10, 0) ... centre
    # 0 = (10, .5); prototype 1's nearest patch is (10, 0) too, so centre 1 is empty (0, 0)
    first = torch.tensor([[9.5, 0.25], [0.5, 0.25]])
    second = 0.5 * first + 0.5 * torch.tensor([[10.0, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(model.memory, second)


def _out(knowledge, geno, path):
    return _output(
        torch.zeros(knowledge.shape[0], 4), extras={"knowledge": knowledge, "geno": geno, "path": path}
    )


def _unit(i, d=256):
    v = torch.zeros(d)
    v[i] = 1.0
    return v


def test_the_bank_is_a_fifo_per_bin_filled_by_the_hook():
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type="ccl", ccl_bank_length=2)).train()
    for step in range(3):
        k = torch.full((1, 4, 256), float(step + 1))
        model.auxiliary_loss(_out(k, k[:, 0], k[:, 1]), torch.tensor([2]), torch.tensor([0.0]))
    assert model.bank_size.tolist() == [0, 0, 2, 0]
    assert model.bank[2, :, 0, 0].tolist() == [2.0, 3.0]  # the oldest dropped, newest last
    # a batch of two is pushed patient after patient, as two batches of one
    a = build_model(tiny_config(model_type="ccl")).train()
    b = build_model(tiny_config(model_type="ccl")).train()
    for j, e in [(0, torch.randn(4, 256)), (2, torch.randn(4, 256)), (2, torch.randn(4, 256))]:
        a.push(e, j)
        b.push(e, j)
    k = torch.randn(2, 4, 256)
    y, c = torch.tensor([1, 1]), torch.tensor([0.0, 0.0])
    ta = a.auxiliary_loss(_out(k, k[:, 0], k[:, 1]), y, c)
    t0 = b.auxiliary_loss(_out(k[:1], k[:1, 0], k[:1, 1]), y[:1], c[:1])
    t1 = b.auxiliary_loss(_out(k[1:], k[1:, 0], k[1:, 1]), y[1:], c[1:])
    assert torch.equal(a.bank, b.bank) and a.bank_size.tolist() == [1, 2, 2, 0]
    # the first has no positive yet (its own bin held only itself); the second has the first
    assert t0["ccl_inter"].item() == 0.0 and t1["ccl_inter"].item() > 0
    torch.testing.assert_close(ta["ccl_inter"], (t0["ccl_inter"] + t1["ccl_inter"]) / 2)
    torch.testing.assert_close(ta["ccl_intra"], (t0["ccl_intra"] + t1["ccl_intra"]) / 2)


def test_intra_term_on_a_hand_example():
    geno, path = _unit(0), _unit(1)
    # common (1, 1): cos 1/sqrt2 with both; synergy (1, 0): 1, 0; genomic-specific (1, 0): 1, 0;
    # pathology-specific (1, 0): 1 with genomics, 0 with pathology
    know = torch.stack([_unit(0) + _unit(1), _unit(0), _unit(0), _unit(0)]).unsqueeze(0)
    # mask [[1,1],[0,0],[1,0],[0,1]]: -.7071 -.7071 | 1 0 | -1 0 | 1 -0 -> sum -0.41421, / 8, + 1
    expected = (-2 / math.sqrt(2) + 1 - 1 + 1) / 8 + 1
    orig = torch.stack([geno, path]).unsqueeze(0)
    assert intra_loss(know, orig).item() == pytest.approx(expected, abs=1e-6)
    model = build_model(tiny_config(model_type="ccl", ccl_cohort_weight=0.5)).train()
    terms = model.auxiliary_loss(_out(know, geno[None], path[None]), torch.tensor([0]), torch.tensor([1.0]))
    assert terms["ccl_intra"].item() == pytest.approx(0.5 * expected, abs=1e-6)
    assert terms["ccl_inter"].item() == 0.0  # censored in the first bin: no cohort contrast


def _their_inter(k, pos, neg, t=2.0):
    """loss_factory.CohortLoss's inter term, as written there."""
    p, n = torch.exp(k * pos / t).mean(), torch.exp(k * neg / t).mean()
    return -torch.log(p / (p + n + 1e-10))


def test_inter_term_on_a_hand_example():
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type="ccl")).train()
    bank = {j: [torch.randn(4, 256) * 0.5 for _ in range(j + 1)] for j in range(4)}  # bin j holds j + 1
    for j, entries in bank.items():
        for e in entries:
            model.push(e, j)
    k = torch.randn(1, 4, 256) * 0.5
    out = _out(k, k[:, 0], k[:, 1])
    # uncensored in bin 1: positives bin 1's two earlier patients (itself excluded), negatives 0, 2, 3
    state = (model.bank.clone(), model.bank_size.clone())
    got = model.auxiliary_loss(out, torch.tensor([1]), torch.tensor([0.0]))["ccl_inter"]
    pos = torch.stack(bank[1])
    neg = torch.stack(bank[0] + bank[2] + bank[3])
    assert got.item() == pytest.approx(_their_inter(k[0], pos, neg).item(), rel=1e-5)
    # censored in bin 2: positives bins 2 and 3 (itself included), negatives bins 0 and 1
    model.bank.copy_(state[0])
    model.bank_size.copy_(state[1])
    got = model.auxiliary_loss(out, torch.tensor([2]), torch.tensor([1.0]))["ccl_inter"]
    pos = torch.stack(bank[2] + [k[0]] + bank[3])
    neg = torch.stack(bank[0] + bank[1])
    assert got.item() == pytest.approx(_their_inter(k[0], pos, neg).item(), rel=1e-5)
    # an empty cohort: no positives or negatives, no term
    fresh = build_model(tiny_config(model_type="ccl")).train()
    assert fresh.auxiliary_loss(out, torch.tensor([1]), torch.tensor([0.0]))["ccl_inter"].item() == 0.0


def test_interaction_estimator_equals_the_explicit_outer_product():
    torch.manual_seed(0)
    est = InteractionEstimator(8)
    geno, path = torch.randn(3, 8), torch.randn(3, 8)
    g, p = est.geno_fc(geno), est.path_fc(path)
    outer = g.unsqueeze(2) * p.unsqueeze(1)  # (B, i, j) = g_i p_j (theirs: atten)
    gate_g = torch.sigmoid(est.geno_atten(outer)).squeeze(-1)
    gate_p = torch.sigmoid(est.path_atten(outer.transpose(1, 2))).squeeze(-1)
    torch.testing.assert_close(est(geno, path), p * gate_p + g * gate_g)


def test_specific_knowledge_comes_from_its_own_modality():
    torch.manual_seed(0)
    model = build_model(tiny_config(model_type="ccl")).eval()
    geno, path = torch.randn(2, 256), torch.randn(2, 256)
    know = model.know_decompose(geno, path)
    torch.testing.assert_close(know[:, 2], model.know_decompose.geno_spec(geno))
    torch.testing.assert_close(know[:, 3], model.know_decompose.path_spec(path))


def test_runs_under_bf16_autocast_and_with_missing_inputs():
    check_bf16("ccl")
    check_missing_inputs("ccl", group=2)


@pytest.mark.parametrize(
    "field, value",
    [("ccl_clusters", 0), ("ccl_update_ratio", 1.5), ("ccl_temperature", 0.0), ("ccl_bank_length", 0)],
)
def test_bad_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        build_model(tiny_config(model_type="ccl", **{field: value}))
