"""Checks every peer model passes (``deref.model.peers``); each peer's test module calls them
with its own configuration and adds its hand examples and parameter counts."""

from __future__ import annotations

import torch

from deref.losses import nll_survival_loss
from deref.model import build_model, collate_bags, tiny_config


def tiny_inputs(cfg, b: int = 8, seed: int = 0, sizes=None):
    """``(m1, wsi, mask, bins, censorship)``: random genomic groups, ragged bags (3-40 patches)."""
    g = torch.Generator().manual_seed(seed)
    m1 = [torch.randn(b, d, generator=g) for d in cfg.m1_sizes]
    if sizes is None:
        sizes = [int(n) for n in torch.randint(3, 40, (b,), generator=g)]
    bags = [torch.randn(n, cfg.wsi_dim, generator=g) for n in sizes]
    wsi, mask = collate_bags(bags)
    y = torch.randint(0, cfg.n_bins, (b,), generator=g)
    c = (torch.rand(b, generator=g) < 0.3).float()
    return m1, wsi, mask, y, c


def total_loss(model, out, y, c) -> torch.Tensor:
    """The training loop's loss: NLL plus the model's own auxiliary terms (the hook)."""
    loss = nll_survival_loss(out.hazards, y, c)
    hook = getattr(model, "auxiliary_loss", None)
    if hook is not None:
        terms = hook(out, y, c)
        for t in (terms or {}).values():
            loss = loss + t
    return loss


def check_trains(model_type: str, steps: int = 25, lr: float = 1e-3, ratio: float = 0.9, **changes):
    """A few Adam steps on one fixed batch lower the training loss (NLL + the peer's terms)."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, **changes)
    model = build_model(cfg).train()
    m1, wsi, mask, y, c = tiny_inputs(cfg, b=16)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_now():
        model.eval()
        with torch.no_grad():
            out = model(m1, wsi, mask)
        model.train()
        return nll_survival_loss(out.hazards, y, c).item()

    before = loss_now()
    for _ in range(steps):
        out = model(m1, wsi, mask)
        loss = total_loss(model, out, y, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_now()
    assert out.hazards.shape == (16, cfg.n_bins) and out.risk.shape == (16,)
    assert after < before * ratio, (before, after)
    return model


def check_eval_deterministic(model_type: str, **changes):
    """Two eval passes give identical outputs."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, **changes)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg)
    with torch.no_grad():
        a, b = model(m1, wsi, mask), model(m1, wsi, mask)
    torch.testing.assert_close(a.risk, b.risk, rtol=0, atol=0)
    torch.testing.assert_close(a.survival, b.survival, rtol=0, atol=0)
    return a


def check_batch_equals_single(model_type: str, atol: float = 1e-5, **changes):
    """A padded batch of ragged bags gives each patient the output of a batch of one."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, **changes)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=5, sizes=[3, 17, 40, 9, 25])
    with torch.no_grad():
        batch = model(m1, wsi, mask)
        for i, n in enumerate([3, 17, 40, 9, 25]):
            one = model([x[i : i + 1] for x in m1], wsi[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(batch.survival[i : i + 1], one.survival, atol=atol, rtol=0)
            torch.testing.assert_close(batch.risk[i : i + 1], one.risk, atol=atol, rtol=0)
    return batch


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_missing_inputs(model_type: str, group: int = 0, **changes) -> None:
    """``allow_missing``: a missing genomic group (a NaN row) scores as its training mean (zero
    after standardization); a patient without a slide (a NaN bag) is refused, naming the patient."""
    import pytest

    from deref.errors import InputError

    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, allow_missing=True, **changes)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=2, sizes=[6, 11])
    gap = [x.clone() for x in m1]
    gap[group][1] = float("nan")
    zero = [x.clone() for x in m1]
    zero[group][1] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(model(gap, wsi, mask).risk, model(zero, wsi, mask).risk)
    wsi[1] = float("nan")
    with pytest.raises(InputError, match="patient 1"):
        model(m1, wsi, mask)


def check_bf16(model_type: str, **changes):
    """An eval forward under CPU bfloat16 autocast gives finite risks; returns the output."""
    torch.manual_seed(0)
    cfg = tiny_config(model_type=model_type, **changes)
    model = build_model(cfg).eval()
    m1, wsi, mask, _, _ = tiny_inputs(cfg, b=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(m1, wsi, mask)
    assert torch.isfinite(out.risk.float()).all()
    return out
