"""Decoupling (specific heads, regional cross-attention), reorganization, and dense MoE fusion.

Shapes: B patients, C1 encoder width (256), C2 decoupled width (128), F decoupled features,
s segments, N experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpecificEncoder(nn.Module):
    """Modality-specific feature: Linear(C1,C1)-ReLU-Dropout-Linear(C1,C2)-ReLU, (B, C1) -> (B, C2)."""

    def __init__(self, c1: int, c2: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c1, c1)
        self.fc2 = nn.Linear(c1, c2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(self.drop(F.relu(self.fc1(x)))))


class RegionalCrossAttention(nn.Module):
    """Regional cross-attention (RCA) between the two modalities' class tokens -> (B, C2).

    ``v1 = fc_m1(V_m1)``, ``v2 = fc_m2(V_m2)``; ``X1 = [v1, v2]``, ``X2 = [v2, v1]`` (2*C2);
    ``M = X1^T X2`` (2C2 x 2C2, rank one, unscaled). ``mode``:

    * ``"rows"`` (reference): ``A = softmax(M)`` over whole rows; ``out_a = X2 A[:, :C2]``,
      ``out_b = (A[:C2, :] X1^T)^T``; ``V = (out_a + out_b) / 2``.
    * ``"blocks"`` (the paper's algorithm): the same with each C2 x C2 block of ``M``
      softmaxed over its own rows.
    * ``"cross_attention"`` (ablation): plain scaled cross-attention between the elements
      of ``v1`` (queries) and ``v2`` (keys/values) and back, averaged:
      ``V = (v2 softmax(v1^T v2 / sqrt(C2))^T + v1 softmax(v2^T v1 / sqrt(C2))^T) / 2``.
    * ``"concat_mlp"`` (ablation): ``V = ReLU(Linear(2C2, C2)([v1, v2]))``.
    """

    def __init__(self, c1: int, c2: int, mode: str = "rows") -> None:
        super().__init__()
        self.mode = mode
        self.c2 = c2
        self.fc_m1 = nn.Linear(c1, c2)
        self.fc_m2 = nn.Linear(c1, c2)
        if mode == "concat_mlp":
            self.mlp = nn.Linear(2 * c2, c2)

    def forward(self, cls_m1: Tensor, cls_m2: Tensor) -> Tensor:
        v1, v2 = self.fc_m1(cls_m1), self.fc_m2(cls_m2)  # (B, C2)
        c = self.c2
        if self.mode == "concat_mlp":
            return F.relu(self.mlp(torch.cat([v1, v2], dim=-1)))
        if self.mode == "cross_attention":
            scale = c**-0.5
            a12 = torch.softmax(v1.unsqueeze(2) * v2.unsqueeze(1) * scale, dim=-1)  # (B, C2, C2)
            a21 = torch.softmax(v2.unsqueeze(2) * v1.unsqueeze(1) * scale, dim=-1)
            out12 = (a12 @ v2.unsqueeze(2)).squeeze(2)
            out21 = (a21 @ v1.unsqueeze(2)).squeeze(2)
            return (out12 + out21) / 2
        x1 = torch.cat([v1, v2], dim=-1)  # (B, 2C2)
        x2 = torch.cat([v2, v1], dim=-1)
        m = x1.unsqueeze(2) * x2.unsqueeze(1)  # (B, 2C2, 2C2), M[i, j] = X1[i] X2[j]
        if self.mode == "rows":
            a = torch.softmax(m, dim=-1)
        else:  # "blocks": softmax within each C2 x C2 block, over the block's rows
            a = m.view(-1, 2, c, 2, c).softmax(dim=-1).view_as(m)
        out_a = (x2.unsqueeze(1) @ a[:, :, :c]).squeeze(1)  # (B, C2)
        out_b = (a[:, :c, :] @ x1.unsqueeze(2)).squeeze(2)  # (B, C2)
        return (out_a + out_b) / 2


def reorganize(features: Tensor, s: int) -> Tensor:
    """Random feature reorganization for a given ``s``: (B, F, C2) -> (B, F * C2).

    Each feature is cut into ``s`` segments of ``C2 / s``; the output interleaves them
    segment by segment: ``concat_l concat_f v_{f,l}``. A permutation of the plain concat.
    """
    b, f, c = features.shape
    return features.reshape(b, f, s, c // s).transpose(1, 2).reshape(b, f * c)


def inverse_reorganize(x: Tensor, n_features: int, s: int) -> Tensor:
    """Inverse of :func:`reorganize`: (B, F * C2) -> (B, F, C2)."""
    b = x.shape[0]
    c = x.shape[1] // n_features
    return x.reshape(b, s, n_features, c // s).transpose(1, 2).reshape(b, n_features, c)


class Expert(nn.Module):
    """Linear(F*C2, hidden)-ReLU-Dropout-Linear(hidden, C2)-ReLU."""

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc2(self.drop(F.relu(self.fc1(x)))))


class DenseMoE(nn.Module):
    """Dense mixture of experts: every expert sees the reorganized vector; gates from features.

    Gate (paper, N = F): one ``Linear(C2, 1)`` scores each (non-reorganized) decoupled
    feature, softmax over the F scores gives expert weights. When N is a multiple of F each
    feature gives N/F scores (``Linear(C2, N/F)``); otherwise a joint ``Linear(F*C2, N)``
    scores the concatenated features. Output ``concat_i(g_i * E_i(x))`` (B, N * C2).
    """

    def __init__(self, n_features: int, c2: int, n_experts: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.per_feature = n_experts % n_features == 0
        self.experts = nn.ModuleList(Expert(n_features * c2, hidden, c2, dropout) for _ in range(n_experts))
        if self.per_feature:
            self.gate = nn.Linear(c2, n_experts // n_features)
        else:
            self.gate = nn.Linear(n_features * c2, n_experts)

    def gates(self, features: Tensor) -> Tensor:
        """(B, F, C2) -> gate weights (B, N), summing to one."""
        if self.per_feature:
            scores = self.gate(features).flatten(1)  # (B, F * N/F), feature-major
        else:
            scores = self.gate(features.flatten(1))
        return torch.softmax(scores, dim=-1)

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        """x: (..., B, F*C2) reorganized inputs; gates: (B, N) -> (..., B, N * C2)."""
        outs = [g.unsqueeze(-1) * e(x) for g, e in zip(gates.unbind(-1), self.experts)]
        return torch.cat(outs, dim=-1)
