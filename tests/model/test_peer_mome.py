"""MoME (deref.model.peers.mome): the authors' parameter count, shapes, the peer checks, batching
with patients routed to different experts, and the router's choice on a hand example."""

from __future__ import annotations

import math

import pytest
import torch

from deref.errors import ConfigError, InputError
from deref.losses import nll_survival_loss
from deref.model import ModelConfig, build_model, tiny_config
from deref.model.nystrom import NystromAttention
from deref.model.peers.mome import MoMELayer, admin_omega, attention_rows, ragged_cat
from tests.model.peer_checks import (
    check_batch_equals_single,
    check_eval_deterministic,
    check_trains,
    n_params,
    tiny_inputs,
    total_loss,
)

#: Small MoME sizes for the fast checks (8 landmarks: bags of 3-40 patches take both Nystrom paths).
TINY = dict(mome_dim=32, mome_omic_hidden=(32, 32), mome_landmarks=8)


# ------------------------------------------------------------------ parameter count
def test_parameter_count_equals_the_authors_less_their_unused_norms():
    # BearCleverProud/MoME models/model_mome.py, run on CPU (nystrom-attention 0.0.14, admin-torch
    # 0.1.0): MoMETransformer(n_bottlenecks=2, omic_sizes=[94, 334, 521, 468, 1496, 479],
    # n_classes=4) (model_size_wsi = model_size_omic = "small", wsi 1024) has 21,716,348
    # parameters. Each of its 4 MoME layers builds BottleneckTransFusion.norm, an RMSNorm(512)
    # that forward never calls; we do not build it: 4 x 512 = 2,048 fewer.
    model = build_model(ModelConfig(model_type="mome"))
    assert n_params(model) == 21_716_348 - 4 * 512 == 21_714_300
    # their per-part counts: sig_networks 3,315,712; wsi_net 524,800; multi_layer1 1,050,376;
    # classifier 2,052; a MoME layer 4,205,852 (its unused norm: 512)
    assert n_params(model.sig_networks) == 3_315_712
    assert n_params(model.wsi_net) == 524_800
    assert n_params(model.multi_layer) == 1_050_376
    assert n_params(model.path_layers[0]) == 4_205_852 - 512
    assert n_params(model.path_layers[0].routing_network) == 528_388


def test_admin_shortcut_scale_is_admin_torchs():
    # admin_torch.calculate_init(8, "default") = ((8 + 1) / ln(9) - 1) ** 0.5
    assert admin_omega(8) == pytest.approx(1.7595671399013928, abs=1e-12)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("changes", [{}, TINY], ids=["default-sizes", "tiny"])
def test_output_shapes(changes):
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", **changes)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=[5, 12, 9])
    with torch.no_grad():
        out = model(m1, wsi, mask, return_attention=True)
    b, n, g = 3, 12, len(cfg.m1_sizes)
    assert out.logits.shape == out.hazards.shape == out.survival.shape == (b, cfg.n_bins)
    assert out.risk.shape == (b,)
    assert out.cls_m1.shape == out.cls_wsi.shape == (b, cfg.mome_dim)
    assert out.gate.shape == (b, 4)
    assert out.extras["gates"].shape == out.extras["router_probs"].shape == (b, 2 * cfg.mome_stages, 4)
    torch.testing.assert_close(out.gate, out.extras["gates"][:, -1])
    # hard routing: one-hot gates (the straight-through value is 1 up to rounding)
    torch.testing.assert_close(out.gate.sum(dim=1), torch.ones(b))
    assert ((out.gate == 0).sum(dim=1) == 3).all()
    assert out.wsi_attention.shape == (b, 1, n) and out.co_attention.shape == (b, g, n)
    assert (out.wsi_attention[~mask.unsqueeze(1)] == 0).all()
    assert (out.co_attention[~mask.unsqueeze(1).expand(-1, g, -1)] == 0).all()
    assert (out.wsi_attention[mask.unsqueeze(1)] != 0).all()


def test_default_sizes_run_under_bf16_autocast():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome")
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[6, 20])
    with torch.no_grad():
        ref = model(m1, wsi, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(m1, wsi, mask, return_attention=True)
    assert torch.isfinite(low.risk.float()).all() and torch.isfinite(low.co_attention).all()
    torch.testing.assert_close(low.risk.float(), ref.risk, atol=0.05, rtol=0)


# ------------------------------------------------------------------ peer checks
@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_trains_a_few_steps(routing):
    check_trains("mome", mome_routing=routing, **TINY)


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_eval_is_deterministic_and_a_batch_equals_one_at_a_time(routing):
    check_eval_deterministic("mome", mome_routing=routing, **TINY)
    check_batch_equals_single("mome", mome_routing=routing, **TINY)


def test_router_is_trained_through_the_straight_through_gate():
    # the authors' hard branch drops the gate, so their router gets no gradient; ours must get one
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", **TINY)
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=4)
    total_loss(model, model(m1, wsi, mask), y, c).backward()
    for layer in (*model.path_layers, *model.omic_layers):
        assert layer.routing_network.clsfer.weight.grad.abs().sum() > 0


def _diverse(model):
    """Sharpen every router so that patients of one batch take different experts."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (*model.path_layers, *model.omic_layers):
            w = layer.routing_network.clsfer.weight
            w.copy_(torch.randn(w.shape, generator=g) * 5.0)
    return model


@pytest.mark.parametrize("experts", [("trans", "bottleneck", "add", "drop"), ("trans",), ("bottleneck",)])
def test_batch_with_mixed_routing_equals_one_at_a_time(experts):
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", mome_experts=experts, **TINY)
    model = _diverse(build_model(cfg).eval())
    sizes = [3, 17, 40, 9, 25]
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=5, sizes=sizes)
    with torch.no_grad():
        batch = model(m1, wsi, mask, return_attention=True)
        for i, n in enumerate(sizes):
            one = model(
                [x[i : i + 1] for x in m1], wsi[i : i + 1, :n], mask[i : i + 1, :n], return_attention=True
            )
            torch.testing.assert_close(batch.survival[i : i + 1], one.survival, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batch.extras["gates"][i : i + 1], one.extras["gates"], atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                batch.wsi_attention[i : i + 1, :, :n], one.wsi_attention, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                batch.co_attention[i : i + 1, :, :n], one.co_attention, atol=1e-5, rtol=0
            )
    if len(experts) > 1:  # the batch really mixes experts within a layer
        chosen = batch.extras["gates"].argmax(dim=-1)  # (B, layers)
        assert max(len(set(chosen[:, k].tolist())) for k in range(chosen.shape[1])) >= 3
    else:
        assert batch.co_attention.abs().sum() > 0


def test_co_attention_of_the_add_and_drop_experts():
    torch.manual_seed(0)
    sizes = [4, 10, 7]
    for experts, want in ((("add",), "uniform"), (("drop",), "zero")):
        cfg = tiny_config(model_type="mome", mome_experts=experts, **TINY)
        model = build_model(cfg).eval()
        m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=sizes)
        with torch.no_grad():
            co = model(m1, wsi, mask, return_attention=True).co_attention
        n = torch.tensor(sizes, dtype=torch.float32).view(-1, 1, 1)
        expected = mask.unsqueeze(1).float() / n if want == "uniform" else torch.zeros(3, 1, 10)
        torch.testing.assert_close(co, expected.expand(-1, 6, -1))


def test_attention_rows_equal_the_class_token_attention_of_a_patient_alone():
    torch.manual_seed(0)
    attn = NystromAttention(16, heads=2, landmarks=4, pinv_iterations=6, residual_conv_kernel=5).eval()
    lengths = torch.tensor([3, 11, 7])  # 3 <= landmarks: the package's short form; the others padded
    x = torch.randn(3, 11, 16) * (torch.arange(11).view(1, -1, 1) < lengths.view(-1, 1, 1))
    with torch.no_grad():
        rows = attention_rows(attn, x, lengths, 2)
        for i, n in enumerate(lengths.tolist()):
            _, cls = attn(x[i : i + 1, :n], None, return_cls_attention=True)
            torch.testing.assert_close(rows[i : i + 1, :, 0, :n], cls, atol=1e-5, rtol=0)
            assert (rows[i, :, :, n:] == 0).all()


def test_ragged_cat_puts_each_patients_tokens_first():
    a = torch.tensor([[[1.0], [2.0], [0.0]], [[3.0], [0.0], [0.0]]])
    b = torch.tensor([[[7.0], [8.0]], [[9.0], [0.0]]])
    out, lengths = ragged_cat(a, torch.tensor([2, 1]), b, torch.tensor([2, 1]))
    assert lengths.tolist() == [4, 2]
    assert out.squeeze(-1).tolist() == [[1.0, 2.0, 7.0, 8.0], [3.0, 9.0, 0.0, 0.0]]


# ------------------------------------------------------------------ the MoME layer by hand
def _hand_layer(scores: list[list[float]]) -> MoMELayer:
    """A MoME layer (width 4) whose router MLPs are the identity (then RMSNorm, GELU) and whose
    classifier weight is ``scores`` (no bias)."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", mome_dim=4, mome_omic_hidden=(4, 4), heads=2, mome_landmarks=4)
    layer = MoMELayer(cfg).eval()
    router = layer.routing_network
    with torch.no_grad():
        for fc in (router.fc1, router.fc2):
            fc[0].weight.copy_(torch.eye(4))
            fc[0].bias.zero_()
        router.clsfer.weight.copy_(torch.tensor(scores))
        router.clsfer.bias.zero_()
    return layer


def _hand_inputs():
    x1 = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # two real tokens
    # x2: two real tokens and a padded one that would change the choice if it were not masked
    x2 = torch.tensor([[[0, 0, 0, 1.0], [0, 0, 0, 3.0], [0, 0, 100.0, 0]]])
    return x1, torch.tensor([2]), x2, torch.tensor([2])


def test_router_chooses_the_expert_a_hand_computation_says_and_returns_its_output():
    # RMSNorm maps each one-hot token v * e_j to 2 e_j; GELU(2) = 2 Phi(2). Means: x1 -> (g/2, g/2, 0, 0),
    # x2 (real tokens) -> (0, 0, 0, g); summed: s = (g/2, g/2, 0, g). Scores W s with the rows below:
    # trans 0, bottleneck g/2, add g, drop g/2 -> "add". With the padded token counted, the x2 mean
    # would be (0, 0, g/3, 2g/3) and trans (3 * g/3 = g) would beat add (2g/3).
    g = 2 * 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    layer = _hand_layer([[0, 0, 3, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]])
    x1, l1, x2, l2 = _hand_inputs()
    with torch.no_grad():
        out, gate, probs = layer(x1, l1, x2, l2)
        experts = {name: e(x1, l1, x2, l2) for name, e in layer.experts.items()}
    torch.testing.assert_close(probs, torch.softmax(torch.tensor([[0, g / 2, g, g / 2]]), dim=-1))
    torch.testing.assert_close(gate, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(out, experts["add"], atol=1e-6, rtol=0)
    for name in ("trans", "bottleneck", "drop"):
        assert (out - experts[name]).abs().max() > 1e-3


def test_the_drop_expert_chosen_by_hand_returns_x1():
    layer = _hand_layer([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # drop scores g/2 > 0
    x1, l1, x2, l2 = _hand_inputs()
    with torch.no_grad():
        out, gate, _ = layer(x1, l1, x2, l2)
    assert gate.argmax().item() == 3
    torch.testing.assert_close(out, x1, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ auxiliary loss, inputs, config
def test_mome_has_no_auxiliary_loss():
    # the authors' MoME trains with the NLL survival loss alone (no load balancing; reg_type None)
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", **TINY)
    model = build_model(cfg).train()
    assert not hasattr(model, "auxiliary_loss") and not hasattr(model, "l1_parameters")
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=3)
    out = model(m1, wsi, mask)
    torch.testing.assert_close(total_loss(model, out, y, c), nll_survival_loss(out.hazards, y, c))


def test_missing_genomic_group_is_filled_and_a_missing_slide_refused():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="mome", allow_missing=True, **TINY)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[5, 8])
    m1[2][1] = float("nan")
    with torch.no_grad():
        out = model(m1, wsi, mask)
        filled = model([x.clone() if k != 2 else torch.nan_to_num(x) for k, x in enumerate(m1)], wsi, mask)
    assert torch.isfinite(out.risk).all()
    torch.testing.assert_close(out.risk, filled.risk)
    wsi[0, :5] = float("nan")
    with pytest.raises(InputError, match="patient 0"):
        model(m1, wsi, mask)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(mome_experts=("trans", "moe")), "mome_experts"),
        (dict(mome_experts=("add", "add")), "mome_experts"),
        (dict(mome_omic_hidden=(32, 16)), "mome_omic_hidden"),
        (dict(mome_routing="gumbel"), "mome_routing"),
        (dict(mome_dim=36), "mome_dim"),
        (dict(mome_stages=0), "mome_stages"),
        (dict(mome_temperature=0.0), "mome_temperature"),
    ],
)
def test_bad_fields_name_themselves(changes, field):
    cfg = tiny_config(model_type="mome", **{**TINY, **changes})
    with pytest.raises(ConfigError, match=field):
        build_model(cfg)


def test_fixed_random_tokens_travel_with_the_checkpoint():
    # the authors' bottleneck and class tokens are unsaved torch.rand tensors; ours are buffers
    cfg = tiny_config(model_type="mome", **TINY)
    torch.manual_seed(0)
    a = build_model(cfg).eval()
    torch.manual_seed(1)
    b = build_model(cfg).eval()
    state = a.state_dict()
    assert "cls_token" in state and "path_layers.0.experts.bottleneck.bottleneck" in state
    b.load_state_dict(state)
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3)
    with torch.no_grad():
        torch.testing.assert_close(a(m1, wsi, mask).risk, b(m1, wsi, mask).risk, rtol=0, atol=0)
