"""CLAM-SB / CLAM-MB (deref.model.peers.clam): the authors' parameter counts, shapes, the peer
checks, and the instance-level clustering loss (top-k / bottom-k pseudo-labels) by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deref.errors import ConfigError
from deref.model import ModelConfig, attention_labels, build_model, tiny_config
from deref.model.deref import SurvivalOutput
from deref.model.peers.clam import select_patches
from tests.model.peer_checks import (
    check_batch_equals_single,
    check_eval_deterministic,
    check_trains,
    n_params,
    tiny_inputs,
)

MODELS = ("clam_sb", "clam_mb")


# ------------------------------------------------------------------ parameter counts
def test_parameter_counts_equal_the_authors():
    # mahmoodlab/CLAM models/model_clam.py, run on CPU: CLAM_SB(gate=True, size_arg="small",
    # dropout=0.25, k_sample=8, n_classes=4, embed_dim=1024) has 793,869 parameters and
    # CLAM_MB(same arguments) 794,640 (n_classes = our n_bins = 4; the instance loss has none).
    cfg = ModelConfig(model_type="clam_sb")
    assert n_params(build_model(cfg)) == 793_869
    assert n_params(build_model(cfg.replace(model_type="clam_mb"))) == 794_640
    # The survival copies, Innse/MOTCat (= BearCleverProud/MoME) models/model_clam.py:
    # CLAM_SB(dropout=True, n_classes=4) 397,325 and CLAM_MB(dropout=True, n_classes=4) 398,096;
    # their size_dict["small"] is [1024, 256, 256], i.e. clam_hidden=256.
    assert n_params(build_model(cfg.replace(clam_hidden=256))) == 397_325
    assert n_params(build_model(cfg.replace(model_type="clam_mb", clam_hidden=256))) == 398_096


def test_ungated_attention_drops_the_sigmoid_branch():
    cfg = ModelConfig(model_type="clam_sb")
    gated, plain = build_model(cfg), build_model(cfg.replace(clam_gated=False))
    assert n_params(gated) - n_params(plain) == 512 * 256 + 256  # Attn_Net's missing Linear(512, 256)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("model_type", MODELS)
@pytest.mark.parametrize("tiny", [True, False])
def test_output_shapes_and_attention(model_type, tiny):
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type) if tiny else ModelConfig(model_type=model_type)
    model = build_model(cfg).eval()
    sizes = [3, 11, 7]
    _, wsi, mask, _, _ = tiny_inputs(cfg, b=3, sizes=sizes)
    with torch.no_grad():
        out = model(None, wsi, mask)
    branches = cfg.n_bins if model_type == "clam_mb" else 1
    assert out.logits.shape == out.hazards.shape == out.survival.shape == (3, cfg.n_bins)
    assert out.risk.shape == (3,)
    assert out.wsi_attention.shape == (3, branches, 11)
    assert out.cls_wsi.shape == (3, branches * cfg.clam_hidden)
    torch.testing.assert_close(out.wsi_attention.sum(-1), torch.ones(3, branches))
    for i, n in enumerate(sizes):
        assert (out.wsi_attention[i, :, n:] == 0).all() and (out.wsi_attention[i, :, :n] > 0).all()
    assert out.extras is None  # the hook's tensors travel in training mode only
    labels = attention_labels(model, branches)
    assert labels == (
        ("gated attention",)
        if branches == 1
        else tuple(f"attention branch of time bin {k}" for k in (1, 2, 3, 4))
    )


def test_mb_branches_attend_differently_and_sb_has_one():
    torch.manual_seed(0)
    cfg = tiny_config(model_type="clam_mb")
    model = build_model(cfg).eval()
    _, wsi, mask, _, _ = tiny_inputs(cfg, b=2)
    with torch.no_grad():
        a = model(None, wsi, mask).wsi_attention
    assert not torch.allclose(a[:, 0], a[:, 1])


# ------------------------------------------------------------------ peer checks
@pytest.mark.parametrize("model_type", MODELS)
def test_trains_a_few_steps_and_lowers_its_loss(model_type):
    check_trains(model_type)


@pytest.mark.parametrize("model_type", MODELS)
def test_trains_with_the_ce_instance_loss_and_subtyping(model_type):
    check_trains(model_type, clam_inst_loss="ce", clam_subtyping=True)


@pytest.mark.parametrize("model_type", MODELS)
def test_eval_is_deterministic(model_type):
    check_eval_deterministic(model_type)


@pytest.mark.parametrize("model_type", MODELS)
def test_batch_equals_one_at_a_time(model_type):
    check_batch_equals_single(model_type)


@pytest.mark.parametrize("model_type", MODELS)
def test_runs_under_bf16_autocast(model_type):
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type)
    model = build_model(cfg).train()
    _, wsi, mask, y, c = tiny_inputs(cfg, b=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(None, wsi, mask)
        aux = model.auxiliary_loss(out, y, c)["clam_instance"]
    assert torch.isfinite(out.risk.float()).all() and torch.isfinite(aux) and aux.dtype == torch.float32
    aux.backward()
    assert model.fc[0].weight.grad is not None and model.instance_classifiers[0].weight.grad is not None


@pytest.mark.parametrize(
    "field, value",
    [
        ("clam_hidden", 0),
        ("clam_attn_dim", -1),
        ("clam_k_sample", 0),
        ("clam_inst_loss", "hinge"),
        ("clam_inst_weight", -0.1),
    ],
)
def test_bad_fields_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field):
        build_model(tiny_config(model_type="clam_sb", **{field: value}))


def test_a_missing_slide_is_refused():
    from deref.errors import InputError

    cfg = tiny_config(model_type="clam_sb", allow_missing=True)
    model = build_model(cfg).eval()
    _, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[4, 6])
    wsi[1] = float("nan")
    with pytest.raises(InputError, match="patient 1"):
        model(None, wsi, mask)


# ------------------------------------------------------------------ the instance loss by hand
# Bag 0: five real patches; bag 1: one real patch, then padding with large scores (never picked).
SCORES = [[0.1, 3.0, -2.0, 1.0, 0.5], [0.0, 9.0, 9.0, 9.0, 9.0]]
H0 = [[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [2.0, 1.0], [-1.0, 1.0]]
H1 = [[6.0, -2.0]] + [[0.0, 0.0]] * 4
MASK = [[True] * 5, [True] + [False] * 4]


def test_select_patches_picks_the_top_and_bottom_real_patches():
    top, bottom, valid = select_patches(torch.tensor(SCORES), torch.tensor(MASK), k=2)
    assert top[0].tolist() == [1, 3] and bottom[0].tolist() == [2, 0]
    assert top[1, 0] == 0 and bottom[1, 0] == 0  # fewer patches than k: the one patch, both ways
    assert valid.tolist() == [[True, True], [True, False]]
    top, bottom, valid = select_patches(torch.tensor(SCORES), torch.tensor(MASK), k=8)
    assert top.shape == (2, 5) and top[0].tolist() == [1, 3, 4, 0, 2] and valid[0].all()
    assert valid[1].tolist() == [True, False, False, False, False]


def _hand_model(model_type: str, loss: str, subtyping: bool = False, n_bins: int = 4):
    cfg = tiny_config(
        model_type=model_type,
        clam_hidden=2,
        clam_k_sample=2,
        clam_inst_loss=loss,
        clam_subtyping=subtyping,
        n_bins=n_bins,
    )
    model = build_model(cfg).train()
    with torch.no_grad():  # classifier c: logits = (c + 1) * h
        for c, clf in enumerate(model.instance_classifiers):
            clf.weight.copy_((c + 1) * torch.eye(2))
            clf.bias.zero_()
    return model


def _ce(logits, target):  # -log softmax(logits)[target]
    other = logits[1 - target]
    return math.log(1.0 + math.exp(other - logits[target]))


def _svm(logits, target):  # smooth top-1 SVM, alpha = tau = 1, hard hinge past log(1000)
    z = 1.0 + logits[1 - target] - logits[target]
    if abs(logits[0] - logits[1]) >= math.log(1000.0):
        return max(0.0, z)
    return math.log(1.0 + math.exp(z))


def _scaled(h, c):
    return [(c + 1) * v for v in h]


def _hand_in_class(loss_fn, y0, y1):
    bag0 = [loss_fn(_scaled(H0[i], y0), 1) for i in (1, 3)] + [loss_fn(_scaled(H0[i], y0), 0) for i in (2, 0)]
    bag1 = [loss_fn(_scaled(H1[0], y1), 1), loss_fn(_scaled(H1[0], y1), 0)]
    return [sum(bag0) / 4, sum(bag1) / 2]


def _extras(scores):
    return {"clam_h": torch.tensor([H0, H1]), "clam_scores": scores, "clam_mask": torch.tensor(MASK)}


@pytest.mark.parametrize("loss, loss_fn", [("svm", _svm), ("ce", _ce)])
def test_sb_instance_loss_equals_a_hand_computation(loss, loss_fn):
    model = _hand_model("clam_sb", loss)
    bins = torch.tensor([2, 0])
    out = SurvivalOutput(*(torch.zeros(2, 4),) * 4, extras=_extras(torch.tensor(SCORES)[:, None, :]))
    got = model.auxiliary_loss(out, bins, torch.zeros(2))
    expected = sum(_hand_in_class(loss_fn, 2, 0)) / 2 * (0.3 / 0.7)
    assert set(got) == {"clam_instance"}
    assert got["clam_instance"].item() == pytest.approx(expected, rel=1e-6)
    if loss == "svm":  # bag 1's patch has margin 8 >= log 1000: the hard hinge, max(0, 1 - 8) = 0 for label 0
        assert _svm(H1[0], 0) == 0.0 and _ce(H1[0], 0) > 0


def test_mb_instance_loss_reads_the_branch_of_the_patients_bin():
    model = _hand_model("clam_mb", "ce")
    bins = torch.tensor([2, 0])
    scores = -torch.tensor(SCORES)[:, None, :].repeat(1, 4, 1)  # every branch reversed ...
    scores[0, 2] = torch.tensor(SCORES[0])  # ... except the in-class ones
    scores[1, 0] = torch.tensor(SCORES[1])
    out = SurvivalOutput(*(torch.zeros(2, 4),) * 4, extras=_extras(scores))
    got = model.auxiliary_loss(out, bins, torch.zeros(2))["clam_instance"].item()
    assert got == pytest.approx(sum(_hand_in_class(_ce, 2, 0)) / 2 * (0.3 / 0.7), rel=1e-6)
    # reading branch 0 for patient 0 instead would pick the reversed order: a different value
    wrong = scores.clone()
    wrong[0, 2] = -wrong[0, 2]
    bad = model.auxiliary_loss(SurvivalOutput(*(torch.zeros(2, 4),) * 4, extras=_extras(wrong)), bins, None)
    assert abs(bad["clam_instance"].item() - got) > 1e-3


def test_subtyping_adds_the_out_of_class_terms_by_hand():
    model = _hand_model("clam_sb", "ce", subtyping=True, n_bins=2)
    bins = torch.tensor([0, 1])
    out = SurvivalOutput(*(torch.zeros(2, 2),) * 4, extras=_extras(torch.tensor(SCORES)[:, None, :]))
    got = model.auxiliary_loss(out, bins, torch.zeros(2))["clam_instance"].item()
    in0, in1 = _hand_in_class(_ce, 0, 1)
    # out of class: the top-k of the (single) branch under the other class's classifier, label 0
    out0 = sum(_ce(_scaled(H0[i], 1), 0) for i in (1, 3)) / 2
    out1 = _ce(_scaled(H1[0], 0), 0)
    expected = ((in0 + out0) / 2 + (in1 + out1) / 2) / 2 * (0.3 / 0.7)
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("model_type", MODELS)
def test_hook_on_a_batch_is_the_mean_of_the_patients_losses(model_type):
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, wsi_dropout=0.0)
    model = build_model(cfg).train()
    sizes = [3, 17, 40, 9]
    _, wsi, mask, y, c = tiny_inputs(cfg, b=4, sizes=sizes)
    batch = model.auxiliary_loss(model(None, wsi, mask), y, c)["clam_instance"]
    singles = [
        model.auxiliary_loss(model(None, wsi[i : i + 1, :n], mask[i : i + 1, :n]), y[i : i + 1], c[i : i + 1])
        for i, n in enumerate(sizes)
    ]
    mean = sum(s["clam_instance"] for s in singles) / 4
    torch.testing.assert_close(batch, mean, atol=1e-6, rtol=0)
    assert batch.item() > 0
