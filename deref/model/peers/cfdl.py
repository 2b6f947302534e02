"""CFDL: Completed Feature Disentanglement Learning (Liu et al., "Completed feature disentanglement
learning for multimodal MRIs analysis", IEEE JBHI 2025, arXiv 2407.04916), as a survival peer.

What makes it itself: every modality's vector is split into a **modality-shared** feature (one
projection shared by all modalities, averaged over them), a **modality-specific** feature (one
projection per modality) and **modality-partial-shared** features (one projection per subset of
2..M-1 modalities, applied to each member and averaged over the subset); losses pull the shared
(and each subset's partial-shared) projections of different modalities together (mean squared
error, ``sim_loss_type='l2norm'``) and push all decoupled features apart (|cosine|,
``diff_loss_type='cosine'``); the **Dynamic Mixture-of-Experts Fusion** (DMF) weights the decoupled
features with **LinG_GN** (``gating_type='importance'``: a global vector g = Linear(ReLU(concat of
all features)) and weights softmax_k(f_k . g), local features against the global one), one expert
ReLU-Linear per feature, and the weighted expert outputs concatenated (``moe_fusion_type='concat'``)
go to the classifier MLP.

Checked against the authors' repository github.com/IsDling/CFDL, ``models/CFDL.py`` (classes
``CFDL`` and ``MoE``) and ``main.py`` (defaults: feature_dim 32, ifdis_sup 1, if_allpair 1,
gating_type importance, moe_fusion_type concat, sim l2norm, diff cosine, w_sim = w_diff = 1,
encoder_drop = cls_drop = 0.5, ifmoe_aux 0, if_ccl 0).

Our adaptation and deviations:

* **Modalities.** The original has 3-4 MRI sequences, each a modality with its own 3D ResNet-18.
  Here every modality-1 group (a gene family, or an MRI sequence) is one modality and the slide
  is one more: M = G + 1. With two modalities (genomics vs slide) the partial-shared set would be
  empty and CFDL would reduce to shared/specific disentangling; with G + 1 the subsets exist as in
  the paper. Cost: with the six gene families M = 7, so 2^7 - 7 - 2 = 119 partial-shared subsets,
  K = 1 + 119 + 7 = 127 decoupled features (the original: 7 with 3 sequences, 15 with 4), ~1.0 M
  parameters in the partial-shared projections at c1 = 256, and 8001 feature pairs in the
  difference loss (a sum, as the authors'). With K = 127 > F = 32 the features cannot all be
  orthogonal, so the difference loss has a floor far above zero (about 1.5e3 on the demo cohort
  after one epoch) and dominates the encoders' gradients; ``cfdl_max_partial = 2`` (pairs only:
  21 subsets, K = 29 <= F) keeps the partial-shared idea at a size where the authors' loss can be
  met, and ``cfdl_w_diff`` reweights it. The default stays the authors' (every subset, weight 1).
  MRI + WSI with 2-4 sequences gives M = 3-5 (1-25 subsets), close to the paper's setting.
* **Their 4-sequence code** (``if_allpair``) builds 10 partial-shared projections but applies
  ``linear_dis_sup[4]`` / ``[5]`` both to a pair (1,3 / 2,3) and to a triple (0,1,2 / 0,1,3), and
  never uses ``[8]`` / ``[9]``: an indexing slip. Ours gives every subset its own projection (the
  paper's design), with the same number of parameters as theirs builds.
* **Encoders** (the authors' 3D ResNet-18 per sequence are for raw MRI volumes): a gene family ->
  its SNN (Linear(d, C1)-ELU-AlphaDropout twice, MCAT's per-family SNN); an MRI sequence vector ->
  Linear-ELU-AlphaDropout; MRI cubes -> :class:`~deref.model.encoders.CubeTokens`; the slide ->
  gated-attention pooling (ABMIL's, lighter than DeReF's TransMIL and masked so that a padded batch
  equals single patients). Each modality vector then passes Dropout(``cfdl_encoder_dropout``) as
  the authors' backbone does. ``dim_out`` (512 for their ResNet-18) is ``c1`` here.
* **Task.** The classifier's last layer has ``n_bins`` outputs read as hazard logits; the
  cross-entropy ``main_cls_loss`` is replaced by the loop's NLL survival loss. The shared /
  partial-shared similarity and difference losses come through :meth:`CFDL.auxiliary_loss` with
  the authors' weights. The optional auxiliary heads (``ifmoe_aux``) and the contrastive center
  loss (``if_ccl``, whose method is absent from their file) are off by default there and not built.
* **Batching.** The per-subset projections run as one batched product (parameters stored as
  ``(n, d_in, d_out)`` banks, the same numbers of weights as their ``nn.Linear`` lists).

The disentangling + DMF + classifier part (``disentangle``, ``dmf``, ``head``) has exactly the
authors' parameter count when built at their sizes (tests/model/test_peer_cfdl.py). Run against
their ``CFDL`` on CPU (3 modalities, their backbones replaced by the identity so that both get
the same modality vectors, weights copied), it reproduces their ``run_type='test'`` prediction
and gating weights, and the hook their ``share_sim_loss``, ``sup_sim_loss`` and ``diff_loss``, to
float precision (max differences <= 1e-7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deref.errors import ConfigError
from deref.model.baselines import _Baseline, _output
from deref.model.config import ModelConfig
from deref.model.deref import SurvivalOutput
from deref.model.encoders import CubeTokens, SNNBlock


class LinearBank(nn.Module):
    """``n`` independent ``Linear(d_in, d_out)`` maps applied at once: ``(..., d_in)`` -> ``(..., n, d_out)``
    (every map to the same input) or, with ``paired``, ``(..., n, d_in)`` -> ``(..., n, d_out)``. Initialized
    as ``nn.Linear`` (uniform in +-1/sqrt(d_in), weights and biases)."""

    def __init__(self, n: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor, paired: bool = False) -> Tensor:
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if paired:
            return torch.einsum("...ni,nio->...no", x, w) + b
        return torch.einsum("...i,nio->...no", x, w) + b


def _combinations(items, k: int) -> list[tuple[int, ...]]:
    """The ``k``-element subsets of ``items`` in lexicographic order (as ``itertools.combinations``)."""
    items = tuple(items)
    if k == 0:
        return [()]
    return [(items[i], *rest) for i in range(len(items)) for rest in _combinations(items[i + 1 :], k - 1)]


def partial_subsets(m: int, max_size: int = 0) -> list[tuple[int, ...]]:
    """Every subset of 2..m-1 of ``m`` modalities (the authors' ``if_allpair``), smallest first, in
    their order; with ``max_size`` > 0 only the subsets of at most ``max_size`` modalities."""
    top = m - 1 if max_size <= 0 else min(m - 1, max_size)
    return [s for k in range(2, top + 1) for s in _combinations(range(m), k)]


class Disentangle(nn.Module):
    """Modality vectors ``(B, M, D)`` -> shared / partial-shared / specific features (each ReLU -> Linear to F).

    Returns ``(features (B, K, F), share_each (B, M, F), sup_each (B, P, M, F))``: the features in
    the authors' order (shared, partial-shared subsets, specific), the shared projection of each
    modality, and every subset's projection of every modality (non-members are ignored by the
    averaging and the losses; :attr:`members` ``(P, M)`` marks the members).
    """

    def __init__(self, m: int, d_in: int, f: int, max_partial: int = 0) -> None:
        super().__init__()
        self.subsets = partial_subsets(m, max_partial)
        self.share = nn.Linear(d_in, f)
        self.spec = LinearBank(m, d_in, f)
        self.sup = LinearBank(len(self.subsets), d_in, f) if self.subsets else None
        members = torch.zeros(len(self.subsets), m)
        for p, s in enumerate(self.subsets):
            members[p, list(s)] = 1.0
        self.register_buffer("members", members, persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = F.relu(x)
        share_each = self.share(h)  # (B, M, F)
        share = share_each.mean(dim=1, keepdim=True)
        spec = self.spec(h, paired=True)  # (B, M, F)
        if self.sup is None:
            sup_each = x.new_zeros(x.shape[0], 0, x.shape[1], share_each.shape[-1])
            return torch.cat([share, spec], dim=1), share_each, sup_each
        sup_each = self.sup(h).transpose(1, 2)  # (B, M, P, F) -> (B, P, M, F)
        w = self.members.to(x.dtype)
        sup = torch.einsum("bpmf,pm->bpf", sup_each, w) / w.sum(dim=1).view(1, -1, 1)
        return torch.cat([share, sup, spec], dim=1), share_each, sup_each


class DMF(nn.Module):
    """Dynamic Mixture-of-Experts Fusion with LinG_GN weights (the authors' ``MoE`` with
    ``gating_type='importance'``, ``moe_fusion_type='concat'``): features ``(B, K, F)`` ->
    ``(fused (B, K*F), weights (B, K))``; ``g = Linear(K*F, F)(ReLU(flatten))``,
    ``weights = softmax_k(f_k . g)``, ``fused = concat_k(weights_k * Linear_k(ReLU(f_k)))``."""

    def __init__(self, k: int, f: int) -> None:
        super().__init__()
        self.experts = LinearBank(k, f, f)
        self.gate = nn.Linear(k * f, f)

    def weights(self, x: Tensor) -> Tensor:
        g = self.gate(F.relu(x.flatten(1)))  # (B, F)
        return torch.softmax(torch.einsum("bkf,bf->bk", x, g), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights(x)
        out = self.experts(F.relu(x), paired=True) * w.unsqueeze(-1)
        return out.flatten(1), w


class GatedAttentionPool(nn.Module):
    """Patch features ``(B, N, D)`` -> ``(pooled (B, C), attention (B, N))`` with a mask (ABMIL's gated
    attention: Linear(D, C)-ReLU-Dropout, ``a = softmax(w . (tanh(Vh) * sigmoid(Uh)))``)."""

    def __init__(self, d_in: int, c: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d_in, c), nn.ReLU(), nn.Dropout(dropout))
        self.attn_a = nn.Linear(c, c)
        self.attn_b = nn.Linear(c, c)
        self.attn_c = nn.Linear(c, 1)

    def forward(self, wsi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.fc(wsi)
        scores = self.attn_c(torch.tanh(self.attn_a(h)) * torch.sigmoid(self.attn_b(h))).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)
        a = torch.softmax(scores.float(), dim=1).to(h.dtype)
        return (a.unsqueeze(-1) * h).sum(dim=1), a


def pairwise_mse_sum(x: Tensor, pairs: Tensor) -> Tensor:
    """``sum over (i, j) in pairs of mean((x[:, i] - x[:, j]) ** 2)`` for ``x`` ``(B, n, F)``; ``pairs`` ``(Q, 2)``."""
    if pairs.numel() == 0:
        return x.new_zeros(())
    d = x[:, pairs[:, 0]] - x[:, pairs[:, 1]]  # (B, Q, F)
    return d.pow(2).mean(dim=(0, 2)).sum()


def abs_cosine_sum(features: Tensor) -> Tensor:
    """``sum over k < l of mean_b |cos(f_k, f_l)|`` for features ``(B, K, F)`` (the difference loss)."""
    u = F.normalize(features, dim=-1, eps=1e-8)
    gram = torch.einsum("bkf,blf->bkl", u, u).abs().mean(dim=0)
    return torch.triu(gram, diagonal=1).sum()


class CFDL(_Baseline):
    """CFDL over M = G + 1 modalities (each modality-1 group and the slide); see the module docstring."""

    modalities = ("m1", "wsi")
    #: the name of ``wsi_attention``'s single row (``deref.model.attention_labels``)
    attention_label = "gated attention of the slide pooling"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config
        self._validate(cfg)
        c, f = cfg.c1, cfg.cfdl_feature_dim
        self.cube_tokens = CubeTokens(cfg) if cfg.mri_encoder == "resnet3d" else None
        if self.cube_tokens is not None:
            self.m1_nets = None
        elif cfg.m1_kind == "genomic":
            self.m1_nets = nn.ModuleList(SNNBlock(d, c, c, cfg.snn_dropout) for d in cfg.m1_sizes)
        else:
            self.m1_nets = nn.ModuleList(
                nn.Sequential(nn.Linear(d, c), nn.ELU(), nn.AlphaDropout(cfg.snn_dropout))
                for d in cfg.m1_sizes
            )
        self.wsi_pool = GatedAttentionPool(cfg.wsi_dim, c, cfg.wsi_dropout)
        self.encoder_drop = nn.Dropout(cfg.cfdl_encoder_dropout)
        m = len(cfg.m1_sizes) + 1
        self.disentangle = Disentangle(m, c, f, cfg.cfdl_max_partial)
        k = 1 + len(self.disentangle.subsets) + m
        self.dmf = DMF(k, f)
        h = cfg.cfdl_head_hidden
        p = cfg.cfdl_cls_dropout
        self.head = nn.Sequential(
            nn.Linear(k * f, f), nn.ReLU(), nn.Dropout(p), nn.Linear(f, h), nn.ReLU(), nn.Dropout(p),
            nn.Linear(h, cfg.n_bins),
        )  # fmt: skip
        names = list(cfg.m1_names) + ["wsi"]
        self.feature_names = (
            ("shared",)
            + tuple("partial_" + "+".join(names[i] for i in s) for s in self.disentangle.subsets)
            + tuple(f"specific_{n}" for n in names)
        )
        self.register_buffer("share_pairs", _pairs([tuple(range(m))]), persistent=False)
        self.register_buffer("sup_pairs", _subset_pairs(self.disentangle.subsets), persistent=False)

    @staticmethod
    def _validate(cfg: ModelConfig) -> None:
        for name in ("cfdl_feature_dim", "cfdl_head_hidden"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected > 0")
        if cfg.cfdl_max_partial < 0 or cfg.cfdl_max_partial == 1:
            raise ConfigError(
                f"config field 'cfdl_max_partial' = {cfg.cfdl_max_partial}; expected 0 (every subset) or >= 2"
            )
        for name in ("cfdl_encoder_dropout", "cfdl_cls_dropout"):
            if not 0.0 <= getattr(cfg, name) < 1.0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected in [0, 1)")
        for name in ("cfdl_w_sim", "cfdl_w_diff"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected >= 0")

    def modality_vectors(self, m1: list[Tensor], wsi: Tensor, wsi_mask: Tensor | None):
        """``(vectors (B, G+1, C1) before the encoder dropout, slide attention (B, N))``."""
        m1 = self._filled(m1)
        if self.cube_tokens is not None:
            g = self.cube_tokens(m1)
        else:
            g = torch.stack([net(x) for net, x in zip(self.m1_nets, m1)], dim=1)
        p, a = self.wsi_pool(wsi, wsi_mask)
        return torch.cat([g, p.unsqueeze(1).to(g.dtype)], dim=1), a

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        x, a = self.modality_vectors(m1, wsi, wsi_mask)
        features, share_each, sup_each = self.disentangle(self.encoder_drop(x))
        fused, weights = self.dmf(features)
        out = _output(
            self.head(fused),
            cls_m1=x[:, :-1].mean(dim=1),
            cls_wsi=x[:, -1],
            wsi_attention=a.unsqueeze(1),
            features=features,
            feature_names=self.feature_names,
            gate=weights,
            extras={"share_each": share_each, "sup_each": sup_each, "features": features},
        )
        return out

    def auxiliary_loss(self, out: SurvivalOutput, bins: Tensor, censorship: Tensor) -> dict[str, Tensor]:
        """The authors' ``share_sim_loss``, ``sup_sim_loss`` (mean squared error between the shared, resp.
        each subset's partial-shared, projections of every pair of modalities, summed, times ``w_sim``)
        and ``diff_loss`` (|cosine| between every pair of decoupled features, summed, times ``w_diff``)."""
        cfg = self.config
        e = out.extras
        share = pairwise_mse_sum(e["share_each"].float(), self.share_pairs)
        sup_each = e["sup_each"].float()
        if self.sup_pairs.numel():
            d = (
                sup_each[:, self.sup_pairs[:, 0], self.sup_pairs[:, 1]]
                - sup_each[:, self.sup_pairs[:, 0], self.sup_pairs[:, 2]]
            )
            sup = d.pow(2).mean(dim=(0, 2)).sum()
        else:
            sup = sup_each.new_zeros(())
        diff = abs_cosine_sum(e["features"].float())
        return {
            "cfdl_share_sim": cfg.cfdl_w_sim * share,
            "cfdl_sup_sim": cfg.cfdl_w_sim * sup,
            "cfdl_diff": cfg.cfdl_w_diff * diff,
        }


def _pairs(sets: list[tuple[int, ...]]) -> Tensor:
    """``(Q, 2)`` long: every unordered pair of members of each set."""
    rows = [pair for s in sets for pair in _combinations(s, 2)]
    return torch.tensor(rows, dtype=torch.long).view(-1, 2)


def _subset_pairs(subsets: list[tuple[int, ...]]) -> Tensor:
    """``(Q, 3)`` long: ``(subset p, member i, member j)`` for every pair of members of every subset."""
    rows = [(p, i, j) for p, s in enumerate(subsets) for i, j in _combinations(s, 2)]
    return torch.tensor(rows, dtype=torch.long).view(-1, 3)


__all__ = [
    "CFDL",
    "DMF",
    "Disentangle",
    "LinearBank",
    "partial_subsets",
    "pairwise_mse_sum",
    "abs_cosine_sum",
]
