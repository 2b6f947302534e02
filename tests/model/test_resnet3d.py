"""The end-to-end MRI encoder (a 3D ResNet on ROI cubes) and the ResNet3D baseline.

Tiny sizes throughout: G = 16 cubes, base width 8, two sequences, a few patients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deref.errors import ConfigError, InputError
from deref.losses import nll_survival_loss
from deref.model import ModelConfig, build_model, collate_bags, tiny_mri_config
from deref.model.resnet3d import ResNet3d

G = 16
SEQS = ("t1", "t2")

# An MRI (frozen-vector) model section of a run.json written before the 3D ResNet existed.
OLD_MRI_RUN_MODEL = {
    "model_type": "deref",
    "m1_kind": "mri",
    "m1_sizes": [2048] * 5,
    "m1_names": ["arterial", "delay", "hepatobiliary", "t1", "t2"],
    "wsi_dim": 1024,
    "n_bins": 4,
    "c1": 256,
    "c2": 128,
    "snn_hidden": 1024,
    "snn_dropout": 0.25,
    "wsi_dropout": 0.25,
    "heads": 8,
    "landmarks": 128,
    "pinv_iterations": 6,
    "residual_conv_kernel": 33,
    "attn_dropout": 0.1,
    "specific_dropout": 0.1,
    "use_explore": True,
    "decouple": True,
    "rca_mode": "rows",
    "segments": [2, 4, 8, 16, 32, 64],
    "reorg_train": "random",
    "reorg_eval": "all",
    "fixed_segments": 8,
    "fusion": "moe",
    "n_experts": 4,
    "expert_hidden": 64,
    "expert_dropout": 0.1,
    "distance": "mse",
    "alpha_dis": 1.0,
    "hinge_margin": None,
    "abmil_hidden": 256,
}


def _inputs(cfg, n_patches=(5, 9, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    m1 = [torch.randn(len(n_patches), d, generator=g) for d in cfg.m1_sizes]
    wsi, mask = collate_bags([torch.randn(n, cfg.wsi_dim, generator=g) for n in n_patches])
    return m1, wsi, mask


def _model(seed=0, **changes):
    torch.manual_seed(seed)
    return build_model(tiny_mri_config(SEQS, G, **changes)).eval()


# ------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("depth", [10, 18])
def test_resnet_shapes(depth):
    net = ResNet3d(depth, width=8).eval()
    x = torch.randn(2, 1, G, G, G)
    with torch.no_grad():
        fmap, pooled = net.feature_map(x), net(x)
    # Stem stride 2 and three stride-2 stages, no max pooling: 16 -> 8 -> 8 -> 4 -> 2 -> 1.
    assert fmap.shape == (2, 64, 1, 1, 1) and pooled.shape == (2, 64) and net.out_dim == 64
    assert ResNet3d(depth, 8)(torch.randn(1, 1, 32, 32, 32)).shape == (1, 64)
    assert ResNet3d(depth, 8).feature_map(torch.randn(1, 1, 32, 32, 32)).shape == (1, 64, 2, 2, 2)


@pytest.mark.parametrize("depth", [10, 18])
@pytest.mark.parametrize("model_type", ["deref", "resnet3d", "concat_mlp"])
def test_models_on_cubes_have_the_usual_output_shapes(depth, model_type):
    model = _model(model_type=model_type, resnet3d_depth=depth)
    m1, wsi, mask = _inputs(model.config)
    with torch.no_grad():
        out = model(m1, wsi, mask)
    assert out.risk.shape == (3,) and out.hazards.shape == (3, 4) and out.cls_m1.shape == (3, 32)
    if model_type != "resnet3d":
        assert model.m1_encoder.tokens(m1).shape == (3, len(SEQS), 32)


def test_bottleneck_depth_50_pools_four_times_wider():
    net = ResNet3d(50, width=8)
    assert net(torch.randn(1, 1, G, G, G)).shape == (1, 256) and net.out_dim == 256


# ------------------------------------------------------------------- parameter counts
LAYOUTS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3))}  # fmt: skip


def _hand_count(depth, w, c_in=1):
    """Convolution weights (no bias) plus two affine values per normalized channel."""
    kind, blocks = LAYOUTS[depth]
    n = 7**3 * c_in * w + 2 * w
    c = w
    for i, nb in enumerate(blocks):
        p = w * 2**i
        for j in range(nb):
            stride = 2 if i > 0 and j == 0 else 1
            if kind == "basic":
                out = p
                n += 27 * c * p + 2 * p + 27 * p * p + 2 * p
            else:
                out = 4 * p
                n += c * p + 2 * p + 27 * p * p + 2 * p + p * out + 2 * out
            if stride != 1 or c != out:
                n += c * out + 2 * out
            c = out
    return n


def _monai_resnet(depth, w, c_in=1):
    from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

    kind, blocks = LAYOUTS[depth]
    return ResNet(
        ResNetBlock if kind == "basic" else ResNetBottleneck,
        list(blocks),
        [w, 2 * w, 4 * w, 8 * w],
        spatial_dims=3,
        n_input_channels=c_in,
        conv1_t_size=7,
        conv1_t_stride=2,
        no_max_pool=True,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


def test_depth_10_width_8_parameter_count_by_hand():
    # stem 2,760; layer1 3,488; layer2 10,592; layer3 42,176; layer4 168,320 (worked out on paper)
    assert sum(p.numel() for p in ResNet3d(10, 8).parameters()) == 227_336 == _hand_count(10, 8)


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_parameter_count_matches_hand_count_and_monai(depth):
    pytest.importorskip("monai")
    for c_in in (1, 3):
        ours = sum(p.numel() for p in ResNet3d(depth, 8, in_channels=c_in).parameters())
        theirs = sum(p.numel() for p in _monai_resnet(depth, 8, c_in).parameters())
        assert ours == _hand_count(depth, 8, c_in) == theirs, (depth, c_in)


@pytest.mark.parametrize("depth", [10, 50])
def test_batchnorm_variant_computes_monais_network(depth):
    """With norm="batch" and MONAI's weights loaded (names mapped), the outputs agree."""
    pytest.importorskip("monai")
    torch.manual_seed(0)
    theirs = _monai_resnet(depth, 8).eval()
    for m in theirs.modules():  # non-trivial running statistics and affines
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ours = ResNet3d(depth, 8, norm="batch").eval()
    mapped = {k.replace("norm", "bn").replace("shortcut", "downsample"): k for k in ours.state_dict()}
    state = theirs.state_dict()
    assert set(mapped) == set(state)
    ours.load_state_dict({mapped[k]: v for k, v in state.items()})
    x = torch.randn(2, 1, G, G, G)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_groupnorm_encoder_ignores_a_global_rescaling_of_a_cube():
    """Bias-free stem + GroupNorm: only the contrast inside a cube matters (documented)."""
    net = ResNet3d(10, 8).eval()
    x = torch.randn(2, 1, G, G, G)
    with torch.no_grad():
        torch.testing.assert_close(net(3.0 * x), net(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(net(x + 1.0), net(x), atol=1e-3)


# ------------------------------------------------------------ determinism, batching
@pytest.mark.parametrize("model_type", ["deref", "resnet3d"])
def test_eval_is_deterministic(model_type):
    model = _model(model_type=model_type)
    m1, wsi, mask = _inputs(model.config)
    with torch.no_grad():
        a, b = model(m1, wsi, mask), model(m1, wsi, mask)
    assert torch.equal(a.risk, b.risk) and torch.equal(a.survival, b.survival)


@pytest.mark.parametrize(
    "model_type, shared", [("deref", True), ("deref", False), ("resnet3d", True), ("concat_mlp", True)]
)
def test_batched_forward_equals_per_patient_forwards(model_type, shared):
    model = _model(model_type=model_type, resnet3d_shared=shared)
    m1, wsi, mask = _inputs(model.config)
    with torch.no_grad():
        batch = model(m1, wsi, mask)
        for i in range(3):
            n = int(mask[i].sum())
            one = model([x[i : i + 1] for x in m1], wsi[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(one.risk, batch.risk[i : i + 1], rtol=0, atol=1e-5)
            torch.testing.assert_close(one.cls_m1, batch.cls_m1[i : i + 1], rtol=0, atol=1e-5)


def test_shared_net_equals_running_it_on_each_sequence():
    model = _model()
    enc = model.m1_encoder.cube_tokens
    m1, _, _ = _inputs(model.config)
    with torch.no_grad():
        pooled = enc.pooled(m1)
        for x, p in zip(m1, pooled):
            torch.testing.assert_close(enc.backbone(x.view(-1, 1, G, G, G)), p, rtol=0, atol=1e-6)


def test_unshared_nets_are_one_per_sequence():
    shared, unshared = _model(), _model(resnet3d_shared=False)
    n_net = sum(p.numel() for p in ResNet3d(10, 8).parameters())
    diff = sum(p.numel() for p in unshared.parameters()) - sum(p.numel() for p in shared.parameters())
    assert diff == (len(SEQS) - 1) * n_net
    assert len(unshared.m1_encoder.cube_tokens.backbones) == len(SEQS)
    assert unshared.m1_encoder.cube_tokens.backbone is None


# -------------------------------------------------------------------- gradients, tokens
@pytest.mark.parametrize("model_type, shared", [("deref", True), ("deref", False), ("resnet3d", True)])
def test_risk_gradient_reaches_every_sequences_voxels_and_only_its_patient(model_type, shared):
    model = _model(model_type=model_type, resnet3d_shared=shared)
    m1, wsi, mask = _inputs(model.config)
    m1 = [x.requires_grad_(True) for x in m1]
    model(m1, wsi, mask).risk[0].backward()
    for x in m1:
        assert torch.isfinite(x.grad).all()
        assert x.grad[0].abs().sum() > 0
        assert (x.grad[0] != 0).float().mean() > 0.5  # most voxels of the cube matter
        assert torch.equal(x.grad[1:], torch.zeros_like(x.grad[1:]))  # GroupNorm mixes no patients


def test_tokens_paths_work_in_cube_mode():
    from deref.inference import family_tokens, mean_family_tokens

    model = _model()
    m1, wsi, mask = _inputs(model.config)
    tokens = family_tokens(model, m1)
    assert tokens.shape == (3, len(SEQS), 32)
    with torch.no_grad():
        plain = model(m1, wsi, mask)
        via = model(m1, wsi, mask, m1_tokens=tokens)
    torch.testing.assert_close(via.risk, plain.risk, rtol=0, atol=1e-6)
    mean = mean_family_tokens(model, [x.numpy() for x in m1], batch_size=2)
    torch.testing.assert_close(mean, tokens.mean(dim=0), rtol=0, atol=1e-5)


def test_forward_rejects_a_cube_of_the_wrong_size():
    model = _model()
    m1, wsi, mask = _inputs(model.config)
    with pytest.raises(InputError, match=r"group 1 \(t2\).*expected \(B, 4096\)"):
        model([m1[0], m1[1][:, :1000]], wsi, mask)


# ------------------------------------------------------------------------- training
def _sphere_cohort(n=8, seed=0):
    """Noise cubes with a sphere in the first sequence whose intensity sets the event bin."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(G, dtype=torch.float32) - (G - 1) / 2
    r2 = ax.view(-1, 1, 1) ** 2 + ax.view(1, -1, 1) ** 2 + ax.view(1, 1, -1) ** 2
    sphere = (r2 <= 4.5**2).float().flatten()
    level = torch.linspace(0.0, 3.0, n)[torch.randperm(n, generator=g)]
    m1 = [
        0.3 * torch.randn(n, G**3, generator=g) + level.view(-1, 1) * sphere,
        0.3 * torch.randn(n, G**3, generator=g),
    ]
    y = 3 - (level.argsort().argsort() * 4 // n)  # brightest -> earliest bin
    return m1, y, torch.zeros(n), level


@pytest.mark.parametrize("model_type", ["resnet3d", "snn_transformer"])
def test_one_patient_per_step_learns_a_planted_sphere(model_type):
    torch.manual_seed(0)
    model = build_model(tiny_mri_config(SEQS, G, model_type=model_type))
    m1, y, c, level = _sphere_cohort()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(m1, None)
        model.train()
        return nll_survival_loss(out.hazards, y, c).item(), out.risk

    before, _ = evaluate()
    order = torch.Generator().manual_seed(1)
    for _ in range(5):
        for i in torch.randperm(len(y), generator=order).tolist():
            out = model([x[i : i + 1] for x in m1], None)  # a batch of one patient
            loss = nll_survival_loss(out.hazards, y[i : i + 1], c[i : i + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    after, risk = evaluate()
    assert after < 0.8 * before, (before, after)
    rho = np.corrcoef(risk.argsort().argsort().numpy(), level.argsort().argsort().numpy())[0, 1]
    assert rho > 0.6, rho  # brighter sphere -> higher risk


# --------------------------------------------------------------------------- config
def test_bad_sizes_and_fields_raise_config_errors():
    with pytest.raises(
        ConfigError, match=r"sequence 't2' 4000 values; expected mri_grid \*\* 3 = 16\^3 = 4096"
    ):
        tiny_mri_config(SEQS, G, m1_sizes=(4096, 4000))
    with pytest.raises(ConfigError, match=r"'mri_grid' = 8; expected >= 16"):
        tiny_mri_config(SEQS, 8)
    with pytest.raises(ConfigError, match=r"'resnet3d_depth' = 20; expected one of \(10, 18, 34, 50\)"):
        tiny_mri_config(SEQS, G, resnet3d_depth=20)
    with pytest.raises(ConfigError, match="'resnet3d_width' = 0"):
        tiny_mri_config(SEQS, G, resnet3d_width=0)
    with pytest.raises(ConfigError, match="'mri_encoder' = 'cnn'"):
        tiny_mri_config(SEQS, G, mri_encoder="cnn")
    with pytest.raises(ConfigError, match="needs m1_kind = 'mri', got 'genomic'"):
        tiny_mri_config(SEQS, G, m1_kind="genomic")
    with pytest.raises(ConfigError, match="'resnet3d' reads ROI cubes; expected mri_encoder = 'resnet3d'"):
        tiny_mri_config(SEQS, G, model_type="resnet3d", mri_encoder="vectors")
    with pytest.raises(ConfigError, match=r"expected mri_grid \*\* 3 = 32\^3 = 32768"):  # replace() validates
        tiny_mri_config(SEQS, G).replace(mri_grid=32)


def test_a_run_json_written_before_the_3d_resnet_loads_unchanged():
    cfg = ModelConfig.from_dict(dict(OLD_MRI_RUN_MODEL))
    assert cfg.mri_encoder == "vectors" and cfg.m1_sizes == (2048,) * 5
    assert {k: cfg.to_dict()[k] for k in OLD_MRI_RUN_MODEL} == OLD_MRI_RUN_MODEL
    enc = build_model(cfg.replace(c1=16, c2=16, heads=2, segments=(2,), fixed_segments=2)).m1_encoder
    assert enc.cube_tokens is None and enc.token_nets[0][0].weight.shape == (16, 2048)
    assert not any("cube" in k or "backbone" in k for k in enc.state_dict())
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_cube_config_round_trips_through_json():
    import json

    cfg = tiny_mri_config(SEQS, G, resnet3d_depth=18, resnet3d_shared=False)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.resnet3d_shared is False and again.resnet3d_depth == 18
