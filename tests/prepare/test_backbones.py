"""Backbone registry and strict loading of torchvision-format weights."""

from __future__ import annotations

import logging

import pytest
import torch

from deref.errors import DataError
from deref.prepare.backbones import BACKBONES, build_backbone, get_backbone_spec, read_state_dict


@pytest.fixture(scope="module")
def tv_state(tv_weights):
    return torch.load(tv_weights, weights_only=True)


def test_fixture_has_torchvision_key_layout(tv_state):
    assert len(tv_state) == 320  # torchvision's resnet50 state dict has 320 entries
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer3.5.bn3.bias",
        "layer4.2.conv3.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in tv_state
    assert "layer1.0.downsample.0.bias" not in tv_state
    assert tuple(tv_state["fc.weight"].shape) == (1000, 2048)


def test_default_backbone_is_resnet50_cut_after_layer3(tv_weights, tv_state):
    from monai.networks.nets import resnet50

    model = build_backbone("resnet50_trunc", tv_weights)
    assert not model.unusable_for_science and model.provenance()["weights_sha256"]
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        feats = model(x)
    assert feats.shape == (2, 1024)
    # Independent path: MONAI's own ResNet-50 with the state dict, run stage by stage.
    ref = resnet50(
        spatial_dims=2,
        n_input_channels=3,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=1000,
    ).eval()
    ref.load_state_dict(tv_state)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x.float() / 255 - mean) / std
    with torch.inference_mode():
        h = ref.maxpool(ref.act(ref.bn1(ref.conv1(h))))
        h = ref.layer3(ref.layer2(ref.layer1(h)))
        expected = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
    assert torch.allclose(feats, expected, rtol=1e-4, atol=1e-4)


def test_strict_loading_names_the_problem(tv_state, tmp_path):
    sd = dict(tv_state)
    del sd["layer2.0.conv1.weight"]
    sd["head.extra"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(DataError) as info:
        build_backbone("resnet50_trunc", bad)
    msg = str(info.value)
    assert (
        str(bad) in msg
        and "1 missing keys (layer2.0.conv1.weight)" in msg
        and "unexpected keys (head.extra)" in msg
    )
    sd = dict(tv_state)
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(sd, bad)
    with pytest.raises(DataError, match=r"shape mismatches \(conv1.weight \(64, 1, 7, 7\)"):
        build_backbone("resnet50_trunc", bad)
    with pytest.raises(DataError, match="does not fit"):
        build_backbone("resnet18", _save(tv_state, tmp_path))  # resnet50 weights, resnet18 registry entry
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be read as a state dict"):
        build_backbone("resnet50_trunc", tmp_path / "junk.pth")


def _save(sd, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(sd, path)
    return path


def test_common_checkpoint_wrappings_load(tv_state, tmp_path):
    from safetensors.torch import save_file

    old_style = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in old_style.items()}}, tmp_path / "wrapped.pth")
    sd = read_state_dict(tmp_path / "wrapped.pth")
    assert set(sd) == set(old_style)
    build_backbone("resnet50_trunc", tmp_path / "wrapped.pth")  # old files lack num_batches_tracked
    save_file({k: v.contiguous() for k, v in tv_state.items()}, str(tmp_path / "w.safetensors"))
    build_backbone("resnet50_trunc", tmp_path / "w.safetensors")


def test_random_weights_only_when_asked(caplog):
    with pytest.raises(DataError, match="needs pretrained weights: pass --weights"):
        build_backbone("resnet50_trunc")
    with caplog.at_level(logging.WARNING):
        a = build_backbone("resnet18", random_weights=True)
    assert "RANDOM weights" in caplog.text
    assert a.unusable_for_science and a.provenance()["unusable_for_science"] is True
    b = build_backbone("resnet18", random_weights=True)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        ya, yb = a(x), b(x)
    assert ya.shape == (1, BACKBONES["resnet18"].dim) and torch.equal(ya, yb)  # seeded, reproducible


def test_registry():
    spec = get_backbone_spec("resnet50_trunc")
    assert (spec.dim, spec.input_size, spec.mean) == (1024, 224, (0.485, 0.456, 0.406))
    with pytest.raises(DataError, match="unknown backbone 'uni'.*resnet50_trunc"):
        get_backbone_spec("uni")
