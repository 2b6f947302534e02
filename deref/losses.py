"""Survival and decoupling losses, vectorized over a batch.

``nll_survival_loss`` is the discrete-time negative log-likelihood of MCAT / CMTA / DeReF;
``decoupling_loss`` is DeReF's ``L_dis`` with every distance of the paper; ``l1_penalty`` is
MCAT's ``lambda_reg`` term (the sum of absolute values of a module's parameters).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from deref.errors import InputError


def nll_survival_loss(
    hazards: Tensor,
    y: Tensor,
    censorship: Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> Tensor:
    """Discrete-time survival NLL (MCAT convention).

    Parameters
    ----------
    hazards : (B, K) per-bin hazards h_k in (0, 1).
    y : (B,) int bin index of the event or censoring time.
    censorship : (B,) 1 = censored (no event), 0 = event.
    alpha : weight of an extra uncensored-only term: ``(1 - alpha) * L + alpha * L_uncensored``.

    With ``S_0 = 1`` and ``S_k = prod_{j<=k}(1 - h_j)``: an event in bin y costs
    ``-log S_{y} - log h_y`` (survived the bins before y, then the event); a censoring in
    bin y costs ``-log S_{y+1}`` (survived through bin y). Probabilities are clamped at eps.
    """
    if hazards.dim() != 2:
        raise InputError(f"hazards have shape {tuple(hazards.shape)}; expected (B, K)")
    y = y.long().view(-1, 1)
    if (y < 0).any() or (y >= hazards.shape[1]).any():
        raise InputError(f"bin labels must lie in [0, {hazards.shape[1] - 1}]; got {y.view(-1).tolist()}")
    c = censorship.to(hazards.dtype).view(-1, 1)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_padded = torch.cat([torch.ones_like(c), surv], dim=1)  # S_0 .. S_K
    s_before = torch.gather(surv_padded, 1, y).clamp(min=eps)
    h_at = torch.gather(hazards, 1, y).clamp(min=eps)
    s_through = torch.gather(surv_padded, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_before) + torch.log(h_at))
    censored = -c * torch.log(s_through)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    loss = loss.view(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def distance(a: Tensor, b: Tensor, kind: str = "mse") -> Tensor:
    """Per-patient distance between features ``a``, ``b`` (B, C) -> (B,).

    mse / l1: mean squared / absolute difference over the C elements; kl:
    ``KL(softmax(b) || softmax(a))`` (``F.kl_div(log_softmax(a), softmax(b))`` summed over C);
    cosine: ``1 - cos(a, b)``.
    """
    if kind == "mse":
        return (a - b).pow(2).mean(dim=-1)
    if kind == "l1":
        return (a - b).abs().mean(dim=-1)
    if kind == "kl":
        return F.kl_div(F.log_softmax(a, dim=-1), F.softmax(b, dim=-1), reduction="none").sum(dim=-1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=-1)
    raise InputError(f"unknown distance {kind!r}; expected mse, l1, kl or cosine")


def decoupling_loss(
    features: Tensor,
    kind: str = "mse",
    hinge_margin: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """DeReF's decoupling loss over stacked features (B, F, C2), F = 4 (or 3 without explore).

    ``L = D(sp1,sh) + D(sp2,sh) + D(sp1,ex) + D(sp2,ex) + D(sh,ex) - D(sp1,sp2)``, the
    explore terms dropped when F = 3. The negative term is unbounded below (reference); with
    ``hinge_margin`` it becomes ``max(0, margin - D(sp1, sp2))``.
    """
    f = features.shape[1]
    if f not in (3, 4):
        raise InputError(f"decoupling loss needs 3 or 4 decoupled features; got {f}")
    sp1, sp2, sh = features[:, 0], features[:, 1], features[:, 2]
    loss = distance(sp1, sh, kind) + distance(sp2, sh, kind)
    if f == 4:
        ex = features[:, 3]
        loss = loss + distance(sp1, ex, kind) + distance(sp2, ex, kind) + distance(sh, ex, kind)
    neg = distance(sp1, sp2, kind)
    loss = loss + (torch.clamp(hinge_margin - neg, min=0) if hinge_margin is not None else -neg)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def l1_penalty(parameters: Iterable[Tensor]) -> Tensor:
    """``sum |w|`` over every element of ``parameters`` (weights and biases, as MCAT's
    ``l1_reg_modules``); a zero scalar when there is none."""
    total: Tensor | None = None
    for p in parameters:
        s = p.abs().sum()
        total = s if total is None else total + s
    return torch.zeros(()) if total is None else total
