"""Fixtures of the model tests: the reference fixture and small random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deref.model import DeReF, tiny_config

GOLDEN = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "golden" / "deref_reference_tiny.npz"
)


@pytest.fixture(scope="session")
def golden():
    if not GOLDEN.exists():
        pytest.skip(f"reference fixture {GOLDEN} not present (../shared/data is absent)")
    with np.load(GOLDEN, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return DeReF(tiny_config()).eval()


def random_inputs(cfg, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    m1 = [torch.randn(len(sizes), d, generator=g) for d in cfg.m1_sizes]
    bags = [torch.randn(n, cfg.wsi_dim, generator=g) for n in sizes]
    return m1, bags


@pytest.fixture(name="random_inputs")
def _random_inputs_fixture():
    return random_inputs
