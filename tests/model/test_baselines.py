"""Every baseline runs on a batch, keeps DeReF's output structure, and learns a toy signal."""

from __future__ import annotations

import pytest
import torch

from deref.losses import nll_survival_loss
from deref.model import build_model, collate_bags, tiny_config


@pytest.mark.parametrize("model_type", ["snn", "snn_transformer", "abmil", "transmil", "concat_mlp", "deref"])
def test_baseline_trains_a_few_steps_and_lowers_its_loss(model_type):
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(0)
    b = 16
    m1 = [torch.randn(b, d, generator=g) for d in cfg.m1_sizes]
    bags = [torch.randn(int(n), cfg.wsi_dim, generator=g) for n in torch.randint(3, 40, (b,), generator=g)]
    wsi, mask = collate_bags(bags)
    y = torch.randint(0, 4, (b,), generator=g)
    c = torch.zeros(b)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_now():
        model.eval()
        with torch.no_grad():
            out = model(m1, wsi, mask, segments=8) if model_type == "deref" else model(m1, wsi, mask)
        model.train()
        return nll_survival_loss(out.hazards, y, c).item()

    before = loss_now()
    for _ in range(25):
        out = model(m1, wsi, mask)
        loss = nll_survival_loss(out.hazards, y, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert out.hazards.shape == (b, 4) and out.risk.shape == (b,)
    assert after < before * 0.9, (before, after)


def test_genomic_baselines_ignore_the_slide():
    cfg = tiny_config(model_type="snn")
    model = build_model(cfg).eval()
    m1 = [torch.randn(2, d) for d in cfg.m1_sizes]
    with torch.no_grad():
        a = model(m1, None)
        b = model(m1, torch.randn(2, 7, cfg.wsi_dim))
    torch.testing.assert_close(a.risk, b.risk)
