"""Fixtures of the preparation tests: a generated pyramidal slide with drawn tissue, a
torchvision-format ResNet-50 state dict, and the real slides of ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepare_helpers import synthetic_slide

from deref.slides import pyramid_levels, write_pyramidal_tiff


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One intra-op thread in these tests: the CI runs two test processes on two cores, and
    OpenMP threads competing for cores (with DataLoader readers, other processes) slow down
    many times over."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict:
    """A 3-level pyramidal Aperio-like TIFF (mpp 0.5, 20x) of :func:`synthetic_slide`."""
    img, truth = synthetic_slide()
    path = write_pyramidal_tiff(
        tmp_path_factory.mktemp("slides") / "synthetic.svs", pyramid_levels(img), mpp=0.5, magnification=20
    )
    return {"path": path, "image": img, "truth": truth}


@pytest.fixture(scope="session")
def tv_weights(tmp_path_factory) -> Path:
    """A torchvision-format ResNet-50 state dict: MONAI's ResNet-50 with torchvision's
    layout, seeded, saved with ``torch.save`` (same 320 keys as torchvision's file)."""
    import torch
    from monai.networks.nets import resnet50

    torch.manual_seed(1234)
    net = resnet50(
        spatial_dims=2,
        n_input_channels=3,
        conv1_t_size=7,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=1000,
    )
    path = tmp_path_factory.mktemp("weights") / "resnet50-test.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def slides_dir(shared_data) -> Path:
    d = shared_data / "slides"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d
