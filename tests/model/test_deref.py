"""DeReF's invariants: batching, masks, determinism, gradients, ablation switches, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from deref.errors import ConfigError, InputError
from deref.model import DeReF, ModelConfig, build_model, collate_bags, tiny_config
from deref.model.fusion import DenseMoE, RegionalCrossAttention, inverse_reorganize, reorganize


# ---------------------------------------------------------------- reorganization
@pytest.mark.parametrize("s", [1, 2, 4, 8, 16, 32, 64, 128])
def test_reorganize_is_a_permutation_and_inverts(s):
    feats = torch.arange(2 * 4 * 128, dtype=torch.float32).view(2, 4, 128)
    out = reorganize(feats, s)
    assert out.shape == (2, 512)
    assert torch.equal(out.sort(dim=1).values, feats.flatten(1).sort(dim=1).values)
    assert torch.equal(inverse_reorganize(out, 4, s), feats)


def test_reorganize_layout_by_hand():
    # features a, b of 4 elements, s = 2: [a0 a1 | b0 b1 | a2 a3 | b2 b3]
    feats = torch.tensor([[[0.0, 1, 2, 3], [10, 11, 12, 13]]])
    assert reorganize(feats, 2).tolist() == [[0, 1, 10, 11, 2, 3, 12, 13]]


# -------------------------------------------------------------------------- RCA
def _rca_by_hand(v1, v2, blocks=False):
    x1 = np.concatenate([v1, v2])
    x2 = np.concatenate([v2, v1])
    c = len(v1)
    m = np.outer(x1, x2)
    a = np.zeros_like(m)
    if blocks:
        for bi, bj in itertools.product(range(2), range(2)):
            blk = m[bi * c : (bi + 1) * c, bj * c : (bj + 1) * c]
            e = np.exp(blk - blk.max(axis=1, keepdims=True))
            a[bi * c : (bi + 1) * c, bj * c : (bj + 1) * c] = e / e.sum(axis=1, keepdims=True)
    else:
        e = np.exp(m - m.max(axis=1, keepdims=True))
        a = e / e.sum(axis=1, keepdims=True)
    out_a = np.array([sum(x2[i] * a[i, j] for i in range(2 * c)) for j in range(c)])
    out_b = np.array([sum(a[i, j] * x1[j] for j in range(2 * c)) for i in range(c)])
    return (out_a + out_b) / 2


@pytest.mark.parametrize("mode", ["rows", "blocks"])
def test_rca_matches_hand_computation(mode):
    torch.manual_seed(0)
    rca = RegionalCrossAttention(c1=3, c2=2, mode=mode)
    cls1, cls2 = torch.randn(1, 3), torch.randn(1, 3)
    with torch.no_grad():
        got = rca(cls1, cls2)[0].numpy()
        v1, v2 = rca.fc_m1(cls1)[0].numpy(), rca.fc_m2(cls2)[0].numpy()
    np.testing.assert_allclose(got, _rca_by_hand(v1, v2, blocks=mode == "blocks"), rtol=1e-5, atol=1e-6)


def test_rca_tiny_numbers():
    # v1 = [1, 0], v2 = [0, 1]: X1 = [1,0,0,1], X2 = [0,1,1,0]; M rows 0 and 3 = X2, rows 1,2 = 0.
    rca = RegionalCrossAttention(c1=2, c2=2, mode="rows")
    with torch.no_grad():
        for fc in (rca.fc_m1, rca.fc_m2):
            fc.weight.copy_(torch.eye(2))
            fc.bias.zero_()
        got = rca(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))[0]
    # rows 0 and 3 of A = softmax([0, 1, 1, 0]); rows 1 and 2 = uniform 0.25.
    # out_a[j] = sum_i X2[i] A[i, j] = A[1, j] + A[2, j] = 0.5
    # out_b[i] = sum_j A[i, j] X1[j]: i = 0 -> A[0,0] + A[0,3] = 2 / (2 + 2e); i = 1 -> 0.5
    e = math.e
    out_a = np.array([0.5, 0.5])
    out_b = np.array([2 / (2 + 2 * e), 0.5])
    np.testing.assert_allclose(got.numpy(), (out_a + out_b) / 2, rtol=1e-6)


# -------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("n_features,n_experts", [(4, 4), (4, 8), (4, 2), (3, 4), (2, 6)])
def test_gate_weights_sum_to_one(n_features, n_experts):
    moe = DenseMoE(n_features, 16, n_experts, 8, 0.1)
    g = moe.gates(torch.randn(5, n_features, 16))
    assert g.shape == (5, n_experts)
    torch.testing.assert_close(g.sum(dim=1), torch.ones(5))
    assert bool((g > 0).all())


# ---------------------------------------------------------------- batching/masks
def test_batch_equals_one_at_a_time_and_padding_is_inert(tiny_model, random_inputs):
    cfg = tiny_model.config
    sizes = [1, 9, 50, 128, 129, 300]
    m1, bags = random_inputs(cfg, sizes)
    wsi, mask = collate_bags(bags)
    wsi[~mask] = float("nan")  # masked tokens must not change any output, not even NaN
    with torch.no_grad():
        batch = tiny_model(m1, wsi, mask, segments=8, return_attention=True)
        for i, bag in enumerate(bags):
            one = tiny_model([x[i : i + 1] for x in m1], bag[None], segments=8, return_attention=True)
            for name in ("risk", "hazards", "survival", "features", "gate", "cls_m1", "cls_wsi"):
                torch.testing.assert_close(
                    getattr(batch, name)[i : i + 1], getattr(one, name), atol=1e-5, rtol=1e-5
                )
            torch.testing.assert_close(
                batch.wsi_attention[i : i + 1, :, : sizes[i]], one.wsi_attention, atol=1e-6, rtol=1e-4
            )
            assert torch.all(batch.wsi_attention[i, :, sizes[i] :] == 0)


def test_mask_with_holes_equals_compacted_bag(tiny_model, random_inputs):
    cfg = tiny_model.config
    m1, (bag,) = random_inputs(cfg, [40])
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, ::3] = False
    garbage = bag.clone()
    garbage[~mask[0]] = 1e6
    with torch.no_grad():
        holes = tiny_model(m1, garbage[None], mask, return_attention=True)
        compact = tiny_model(m1, bag[mask[0]][None], return_attention=True)
    torch.testing.assert_close(holes.risk, compact.risk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        holes.wsi_attention[0][:, mask[0]], compact.wsi_attention[0], atol=1e-6, rtol=1e-4
    )


def test_eval_is_deterministic_and_uses_every_segment(tiny_model, random_inputs):
    m1, bags = random_inputs(tiny_model.config, [30, 31])
    wsi, mask = collate_bags(bags)
    with torch.no_grad():
        outs = [tiny_model(m1, wsi, mask) for _ in range(5)]
    for o in outs[1:]:
        assert torch.equal(o.risk, outs[0].risk) and torch.equal(o.survival, outs[0].survival)
    o = outs[0]
    assert o.segments == tiny_model.config.segments
    assert o.risk_per_s.shape == (2, 6)
    torch.testing.assert_close(o.risk, o.risk_per_s.mean(dim=1))
    torch.testing.assert_close(o.risk_std, o.risk_per_s.std(dim=1, unbiased=False))
    assert bool((o.risk_std > 0).all())


def test_random_mode_is_the_reference_behaviour(tiny_model, random_inputs):
    m1, bags = random_inputs(tiny_model.config, [30])
    with torch.no_grad():
        risks = {round(tiny_model(m1, bags[0][None], segments="random").risk.item(), 7) for _ in range(40)}
    assert len(risks) > 1  # random s at test time gives different predictions


def test_survival_is_monotone_and_risk_is_minus_sum(tiny_model, random_inputs):
    m1, bags = random_inputs(tiny_model.config, [20, 5])
    wsi, mask = collate_bags(bags)
    with torch.no_grad():
        o = tiny_model(m1, wsi, mask)
    assert bool((o.survival[:, 1:] <= o.survival[:, :-1] + 1e-7).all())
    torch.testing.assert_close(o.risk, -o.survival.sum(dim=1))


# ------------------------------------------------------------------- gradients
def test_wsi_specific_feature_has_no_gradient_from_genomics(tiny_model, random_inputs):
    m1, bags = random_inputs(tiny_model.config, [25])
    m1 = [x.requires_grad_(True) for x in m1]
    wsi = bags[0][None].requires_grad_(True)
    out = tiny_model(m1, wsi, segments=8)
    grads = torch.autograd.grad(out.features[:, 1].sum(), m1 + [wsi], allow_unused=True, retain_graph=True)
    for g in grads[:-1]:
        assert g is None or torch.count_nonzero(g) == 0
    assert grads[-1] is not None and torch.count_nonzero(grads[-1]) > 0
    grads = torch.autograd.grad(out.features[:, 0].sum(), [wsi], allow_unused=True)
    assert grads[0] is None or torch.count_nonzero(grads[0]) == 0


# ------------------------------------------------------------------- ablations
def _with_shared_weights(base: DeReF, **changes) -> DeReF:
    model = DeReF(base.config.replace(**changes)).eval()
    own = model.state_dict()
    model.load_state_dict(
        {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
    )
    return model


def _run(model, m1, wsi, **kw):
    with torch.no_grad():
        return model(m1, wsi, **kw)


@pytest.fixture
def ablation_inputs(tiny_model, random_inputs):
    m1, bags = random_inputs(tiny_model.config, [33])
    return m1, bags[0][None]


def test_ablation_without_explore(tiny_model, ablation_inputs):
    base = _run(tiny_model, *ablation_inputs, segments=8)
    abl = _run(_with_shared_weights(tiny_model, use_explore=False), *ablation_inputs, segments=8)
    assert abl.features.shape[1] == 3 and abl.feature_names == ("specific_genomic", "specific_wsi", "share")
    torch.testing.assert_close(abl.features, base.features[:, :3])
    assert not torch.allclose(abl.risk, base.risk)


def test_ablation_without_decoupling(tiny_model, ablation_inputs):
    base = _run(tiny_model, *ablation_inputs, segments=8)
    abl = _run(_with_shared_weights(tiny_model, decouple=False), *ablation_inputs, segments=8)
    torch.testing.assert_close(abl.cls_m1, base.cls_m1)
    torch.testing.assert_close(abl.cls_wsi, base.cls_wsi)
    assert abl.features.shape[1] == 2 and not hasattr(
        _with_shared_weights(tiny_model, decouple=False), "share"
    )


@pytest.mark.parametrize("mode", ["blocks", "cross_attention", "concat_mlp"])
def test_ablation_rca_modes_change_only_share_and_explore(tiny_model, ablation_inputs, mode):
    base = _run(tiny_model, *ablation_inputs, segments=8)
    abl = _run(_with_shared_weights(tiny_model, rca_mode=mode), *ablation_inputs, segments=8)
    torch.testing.assert_close(abl.features[:, :2], base.features[:, :2])
    assert not torch.allclose(abl.features[:, 2], base.features[:, 2])
    assert not torch.allclose(abl.features[:, 3], base.features[:, 3])


def test_ablation_reorganization_changes_only_the_fusion_input(tiny_model, ablation_inputs):
    outs = {s: _run(tiny_model, *ablation_inputs, segments=s) for s in ("none", 2, 64)}
    for s in (2, 64):
        torch.testing.assert_close(outs[s].features, outs["none"].features)
        torch.testing.assert_close(outs[s].gate, outs["none"].gate)
        assert not torch.equal(outs[s].reorganized, outs["none"].reorganized)
    torch.testing.assert_close(outs["none"].reorganized[:, 0], outs["none"].features.flatten(1))
    fixed = _with_shared_weights(tiny_model, reorg_eval="fixed", fixed_segments=16)
    torch.testing.assert_close(
        _run(fixed, *ablation_inputs).risk, _run(tiny_model, *ablation_inputs, segments=16).risk
    )


def test_ablation_concat_fusion(tiny_model, ablation_inputs):
    base = _run(tiny_model, *ablation_inputs, segments=8)
    abl = _run(_with_shared_weights(tiny_model, fusion="concat"), *ablation_inputs, segments=8)
    torch.testing.assert_close(abl.features, base.features)
    assert abl.gate is None and base.gate is not None


# --------------------------------------------------------------------- errors
def test_bad_inputs_name_patient_and_expectation(tiny_model, random_inputs):
    cfg = tiny_model.config
    m1, bags = random_inputs(cfg, [10, 12])
    wsi, mask = collate_bags(bags)
    with pytest.raises(InputError, match=r"dimension 16; the config expects wsi_dim = 32"):
        tiny_model(m1, wsi[..., :16], mask)
    with pytest.raises(
        InputError, match=r"group 2 \(Protein Kinases\) has shape \(2, 6\); expected \(B, 7\)"
    ):
        tiny_model([m1[0], m1[1], m1[1]] + m1[3:], wsi, mask)
    with pytest.raises(InputError, match="6 groups|expects 6"):
        tiny_model(m1[:5], wsi, mask)
    bad = wsi.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(InputError, match=r"patient 1: 1 WSI patch feature row\(s\) have NaN"):
        tiny_model(m1, bad, mask)
    bad = wsi.clone()
    bad[0, 2, 5] = float("inf")
    with pytest.raises(InputError, match="patient 0"):
        tiny_model(m1, bad, mask)
    hidden = mask.clone()
    hidden[1] = False
    with pytest.raises(InputError, match="patient 1: the mask hides every patch"):
        tiny_model(m1, wsi, hidden)
    nan_m1 = [x.clone() for x in m1]
    nan_m1[4][1, 0] = float("nan")
    with pytest.raises(InputError, match=r"patient 1: modality-1 group 4"):
        tiny_model(nan_m1, wsi, mask)
    with pytest.raises(InputError, match="patient 1: empty WSI bag"):
        collate_bags([bags[0], torch.zeros(0, 32)])
    with pytest.raises(InputError, match="patient 1: bag feature dimension 8; expected 32"):
        collate_bags([bags[0], torch.zeros(3, 8)])


def test_config_validation_and_round_trip():
    cfg = tiny_config(rca_mode="blocks", segments=(2, 4), hinge_margin=0.5)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ConfigError, match="rca_mode"):
        tiny_config(rca_mode="softmax")
    with pytest.raises(ConfigError, match="segments"):
        tiny_config(segments=(3,))
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**cfg.to_dict(), "nonsense": 1})


def test_mri_branch_and_device_agnostic_build():
    cfg = tiny_config(m1_kind="mri", m1_sizes=(16, 16), m1_names=("T1", "T2"))
    model = build_model(cfg).eval()
    m1 = [torch.randn(2, 16), torch.randn(2, 16)]
    wsi, mask = collate_bags([torch.randn(5, 32), torch.randn(9, 32)])
    with torch.no_grad():
        out = model(m1, wsi, mask)
    assert out.feature_names[0] == "specific_mri" and out.risk.shape == (2,)


def test_m1_tokens_stand_in_for_the_profiles_exactly(tiny_model, random_inputs):
    """forward(m1_tokens=the model's own SNN tokens) == forward(profiles); one (1, G, C1) token
    set is broadcast over the batch, and the profiles are then not used."""
    m1, bags = random_inputs(tiny_model.config, [5, 9])
    wsi, mask = collate_bags(bags)
    with torch.no_grad():
        plain = tiny_model(m1, wsi, mask)
        tokens = tiny_model.m1_encoder.tokens(m1)
        via_tokens = tiny_model(m1, wsi, mask, m1_tokens=tokens)
        shared = tiny_model([torch.randn_like(x) for x in m1], wsi, mask, m1_tokens=tokens[:1])
    torch.testing.assert_close(via_tokens.risk, plain.risk, rtol=0, atol=1e-6)
    torch.testing.assert_close(via_tokens.cls_m1, plain.cls_m1, rtol=0, atol=1e-6)
    assert torch.equal(shared.cls_m1[0], shared.cls_m1[1])
    torch.testing.assert_close(shared.cls_m1[0], plain.cls_m1[0], rtol=0, atol=1e-6)


def test_ppeg_gradients_equal_plain_convolution():
    """PPEG's depthwise conv with its own weight gradient (a grouped convolution) gives the
    gradients of ``F.conv2d``, for a batch and a channels-last grid."""
    import torch.nn.functional as F

    from deref.model.encoders import PPEG

    torch.manual_seed(0)
    ppeg = PPEG(8)
    grid = torch.randn(3, 9, 9, 8).permute(0, 3, 1, 2).requires_grad_(True)  # channels-last view
    w_grad = torch.randn(3, 8, 9, 9)
    (ppeg(grid) * w_grad).sum().backward()
    ours = [grid.grad] + [p.grad for p in ppeg.parameters()]
    grid.grad = None
    ppeg.zero_grad()
    w, b = ppeg.fused_kernel()
    (F.conv2d(grid, w, b, padding=3, groups=8) * w_grad).sum().backward()
    plain = [grid.grad] + [p.grad for p in ppeg.parameters()]
    for a, e in zip(ours, plain):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_a_frozen_kernel_ppeg_gives_the_same_output_and_input_gradient_and_no_kernel_gradient(monkeypatch):
    """The attributions' PPEG copy (``frozen_kernel``) shares the parameters, gives the same
    output and input gradient, and runs no kernel-gradient convolution in its backward."""
    import copy

    import torch.nn.functional as F

    from deref.model import encoders
    from deref.model.encoders import PPEG

    torch.manual_seed(0)
    ppeg = PPEG(8)
    frozen = copy.copy(ppeg)
    frozen.frozen_kernel = True
    assert not ppeg.frozen_kernel and frozen.conv7.weight is ppeg.conv7.weight
    grid = torch.randn(2, 9, 9, 8).permute(0, 3, 1, 2)
    g_out = torch.randn(2, 8, 9, 9)
    convs = []
    real_conv2d = F.conv2d
    monkeypatch.setattr(
        encoders.F, "conv2d", lambda *a, **k: convs.append(a[1].shape) or real_conv2d(*a, **k)
    )
    grads = []
    for module in (ppeg, frozen):
        x = grid.clone().requires_grad_(True)
        out = module(x)
        (gx,) = torch.autograd.grad((out * g_out).sum(), x)
        grads.append((out.detach(), gx))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=0)
    # plain: forward + a kernel-gradient convolution per patient (its "weight" is that patient's
    # output gradient); frozen: the forward only
    assert [tuple(s) for s in convs] == [(8, 1, 7, 7), (8, 1, 9, 9), (8, 1, 9, 9), (8, 1, 7, 7)]
    assert all(p.grad is None for p in ppeg.parameters())
