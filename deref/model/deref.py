"""DeReF: Decouple, Reorganize and Fuse (Wang et al., 2025), batched and deterministic in eval.

Inputs of a batch of B patients:

* ``m1`` — modality 1 as a list of ``(B, d_g)`` tensors, one per gene family (or per MRI
  sequence vector), in the order of ``config.m1_sizes``;
* ``wsi`` — padded bags ``(B, N, D)`` and ``wsi_mask`` ``(B, N)`` (True = a real patch).

Prediction in eval mode (``config.reorg_eval``):

* ``"all"`` (default): the encoders and decoupling run once; reorganization, experts and
  head run for every ``s`` in ``config.segments``; the survival curve is the mean of the
  per-``s`` curves (a mixture), the risk is ``-sum(survival)`` (the mean of per-``s``
  risks), hazards are those of the mean curve, and ``risk_std`` is the standard deviation
  (population) of the per-``s`` risks — the uncertainty from reorganization;
* ``"fixed"`` (``config.fixed_segments``), ``"none"`` (plain concatenation) or ``"random"``
  (one ``s`` drawn per forward: the reference's non-deterministic behaviour).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from deref.errors import InputError
from deref.model.config import ModelConfig
from deref.model.encoders import M1Encoder, WSIEncoder, missing_bags
from deref.model.fusion import DenseMoE, RegionalCrossAttention, SpecificEncoder, reorganize


@dataclass
class SurvivalOutput:
    """Named output of every model of the package (baselines fill what they have).

    hazards, survival, logits: (B, K); risk, risk_std: (B,) (higher risk = worse);
    risk_per_s: (B, S) and survival_per_s: (B, S, K) per segment count; features: (B, F, C2) decoupled features in the
    order of ``feature_names``; gate: (B, N) expert weights; cls_m1, cls_wsi: (B, C1)
    encoder outputs; wsi_attention: (B, 2, N) class-token attention per Nystrom layer.
    """

    logits: Tensor
    hazards: Tensor
    survival: Tensor
    risk: Tensor
    risk_std: Tensor | None = None
    risk_per_s: Tensor | None = None
    survival_per_s: Tensor | None = None
    segments: tuple[int, ...] = ()
    features: Tensor | None = None
    feature_names: tuple[str, ...] = ()
    gate: Tensor | None = None
    cls_m1: Tensor | None = None
    cls_wsi: Tensor | None = None
    reorganized: Tensor | None = None
    wsi_attention: Tensor | None = None
    #: (B, G, N) modality-1-token-by-patch co-attention (MCAT, MOTCat: each family's weights
    #: over the patches; rows sum to one over a patient's patches).
    co_attention: Tensor | None = None
    #: Model-specific batch-first tensors for the model's ``auxiliary_loss`` (peers).
    extras: dict[str, Tensor] | None = None

    def _map(self, fn) -> SurvivalOutput:
        vals = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = fn(v)
            elif isinstance(v, dict):
                v = {k: fn(t) if isinstance(t, Tensor) else t for k, t in v.items()}
            vals[f.name] = v
        return SurvivalOutput(**vals)

    def detach(self) -> SurvivalOutput:
        return self._map(lambda t: t.detach())

    def select(self, index: int | slice | Tensor) -> SurvivalOutput:
        """The same output for a subset of patients (first dimension of every tensor)."""
        return self._map(lambda t: t[index])


def survival_from_logits(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits (..., K) -> hazards = sigmoid, survival S_k = prod_{j<=k}(1 - h_j), risk = -sum S."""
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1 - hazards, dim=-1)
    return hazards, survival, -survival.sum(dim=-1)


def check_inputs(
    cfg: ModelConfig, m1: list[Tensor] | None, wsi: Tensor | None, wsi_mask: Tensor | None
) -> None:
    """Raise :class:`InputError` naming the patient index and the expected value."""
    if m1 is not None:
        if len(m1) != len(cfg.m1_sizes):
            raise InputError(
                f"modality 1 has {len(m1)} groups; the config expects {len(cfg.m1_sizes)} "
                f"({', '.join(cfg.m1_names)})"
            )
        for g, (x, d) in enumerate(zip(m1, cfg.m1_sizes)):
            if x.dim() != 2 or x.shape[1] != d:
                raise InputError(
                    f"modality-1 group {g} ({cfg.m1_names[g]}) has shape {tuple(x.shape)}; expected (B, {d})"
                )
            bad = ~torch.isfinite(x).all(dim=1)
            if cfg.allow_missing:  # a row entirely NaN is a missing group, not bad values
                bad &= ~torch.isnan(x).all(dim=1)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise InputError(
                    f"patient {i}: modality-1 group {g} ({cfg.m1_names[g]}) has NaN or infinite values; "
                    "expected finite numbers"
                    + (" (or all NaN: a missing input)" if cfg.allow_missing else "")
                )
    if wsi is not None:
        if wsi.dim() != 3:
            raise InputError(f"WSI bags have shape {tuple(wsi.shape)}; expected (B, N, {cfg.wsi_dim})")
        if wsi.shape[2] != cfg.wsi_dim:
            raise InputError(
                f"patient 0: WSI features have dimension {wsi.shape[2]}; the config expects "
                f"wsi_dim = {cfg.wsi_dim}"
            )
        if wsi.shape[1] == 0:
            raise InputError("patient 0: empty WSI bag (0 patches); expected at least 1 patch")
        if wsi_mask is not None:
            if wsi_mask.shape != wsi.shape[:2] or wsi_mask.dtype != torch.bool:
                raise InputError(
                    f"wsi_mask has shape {tuple(wsi_mask.shape)} and dtype {wsi_mask.dtype}; "
                    f"expected a bool tensor of shape {tuple(wsi.shape[:2])}"
                )
            empty = ~wsi_mask.any(dim=1)
            if empty.any():
                i = int(empty.nonzero()[0])
                raise InputError(f"patient {i}: the mask hides every patch; expected at least 1 real patch")
        # A row sum is non-finite when any of its values is (cheap screen of N x D values);
        # the exact element check runs only when the screen fires.
        row_ok = torch.isfinite(wsi.sum(dim=2))
        if wsi_mask is not None:
            row_ok = row_ok | ~wsi_mask
        if cfg.allow_missing:  # a bag of NaN patches only is a missing slide
            row_ok = row_ok | missing_bags(wsi, wsi_mask).unsqueeze(1)
        if not bool(row_ok.all()):
            finite = torch.isfinite(wsi).all(dim=2)
            if wsi_mask is not None:
                finite = finite | ~wsi_mask
            bad = ~finite.all(dim=1)
            i = int(bad.nonzero()[0])
            rows = int((~finite[i]).sum())
            raise InputError(
                f"patient {i}: {rows} WSI patch feature row(s) have NaN or infinite values; expected finite numbers"
            )


def collate_bags(
    bags: list[Tensor], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Pad a list of bags ``(N_i, D)`` into ``(B, N_max, D)`` and a mask ``(B, N_max)``.

    Raises :class:`InputError` for an empty bag or a bag whose width differs from the first.
    """
    if not bags:
        raise InputError("no bags to collate; expected at least one patient")
    d = bags[0].shape[-1]
    for i, bag in enumerate(bags):
        if bag.dim() != 2:
            raise InputError(f"patient {i}: bag has shape {tuple(bag.shape)}; expected (N, D)")
        if bag.shape[0] == 0:
            raise InputError(f"patient {i}: empty WSI bag (0 patches); expected at least 1 patch")
        if bag.shape[1] != d:
            raise InputError(
                f"patient {i}: bag feature dimension {bag.shape[1]}; expected {d} like patient 0"
            )
    n_max = max(b.shape[0] for b in bags)
    out = torch.zeros(len(bags), n_max, d, dtype=dtype, device=device)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool, device=device)
    for i, bag in enumerate(bags):
        out[i, : bag.shape[0]] = torch.as_tensor(bag).to(device=device, dtype=dtype)
        mask[i, : bag.shape[0]] = True
    return out, mask


class DeReF(nn.Module):
    """The DeReF model. See the module docstring for inputs and evaluation modes."""

    modalities: tuple[str, ...] = ("m1", "wsi")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        self.m1_encoder = M1Encoder(cfg)
        self.wsi_encoder = WSIEncoder(cfg)
        if cfg.decouple:
            self.specific_m1 = SpecificEncoder(cfg.c1, cfg.c2, cfg.specific_dropout)
            self.specific_wsi = SpecificEncoder(cfg.c1, cfg.c2, cfg.specific_dropout)
            self.share = RegionalCrossAttention(cfg.c1, cfg.c2, cfg.rca_mode)
            if cfg.use_explore:
                self.explore = RegionalCrossAttention(cfg.c1, cfg.c2, cfg.rca_mode)
        else:
            # Without decoupling: the two class tokens, projected to C2, are the features.
            self.proj_m1 = nn.Linear(cfg.c1, cfg.c2)
            self.proj_wsi = nn.Linear(cfg.c1, cfg.c2)
        n_feat = cfg.n_features
        if cfg.fusion == "moe":
            self.moe = DenseMoE(n_feat, cfg.c2, cfg.n_experts, cfg.expert_hidden, cfg.expert_dropout)
            self.head = nn.Linear(cfg.n_experts * cfg.c2, cfg.n_bins)
        else:
            self.fuse = nn.Sequential(
                nn.Linear(n_feat * cfg.c2, n_feat * cfg.c2), nn.ReLU(), nn.Dropout(cfg.expert_dropout)
            )
            self.head = nn.Linear(n_feat * cfg.c2, cfg.n_bins)

    # ----------------------------------------------------------------- pieces
    def encode(
        self,
        m1: list[Tensor],
        wsi: Tensor,
        wsi_mask: Tensor | None = None,
        *,
        return_attention: bool = False,
        m1_tokens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Class tokens ``(B, C1)`` of both modalities (and the WSI attention if asked).

        ``m1_tokens`` ``(B, G, C1)`` replaces the modality-1 tokens (the SNN outputs) and
        ``m1`` is then not used: the "what if" without genomics puts every family token at
        the training patients' mean token.
        """
        if m1_tokens is not None:
            tokens = m1_tokens.to(device=wsi.device, dtype=torch.float32)
            cls_m1 = self.m1_encoder.encoder(
                tokens.expand(wsi.shape[0], -1, -1) if tokens.shape[0] == 1 else tokens
            )
        else:
            cls_m1 = self.m1_encoder(m1)
        cls_wsi, attn = self.wsi_encoder(wsi, wsi_mask, return_attention=return_attention)
        return cls_m1, cls_wsi, attn

    def decouple(self, cls_m1: Tensor, cls_wsi: Tensor) -> Tensor:
        """The decoupled features, stacked ``(B, F, C2)`` in ``config.feature_names`` order."""
        if not self.config.decouple:
            return torch.stack([self.proj_m1(cls_m1), self.proj_wsi(cls_wsi)], dim=1)
        feats = [self.specific_m1(cls_m1), self.specific_wsi(cls_wsi), self.share(cls_m1, cls_wsi)]
        if self.config.use_explore:
            feats.append(self.explore(cls_m1, cls_wsi))
        return torch.stack(feats, dim=1)

    def segments_for_forward(self, segments: int | str | None = None) -> tuple[int, ...]:
        """The segment counts this forward uses (a tuple; one element except in "all")."""
        cfg = self.config
        if isinstance(segments, int):
            return (segments,)
        mode = segments or (cfg.reorg_train if self.training else cfg.reorg_eval)
        if mode == "all":
            return cfg.segments
        if mode == "fixed":
            return (cfg.fixed_segments,)
        if mode == "none":
            return (1,)
        if mode == "random":
            return (cfg.segments[random.randrange(len(cfg.segments))],)
        raise InputError(f"unknown reorganization mode {mode!r}; expected all, fixed, none, random or an int")

    def fuse_and_predict(self, features: Tensor, segments: tuple[int, ...]) -> dict[str, Tensor]:
        """Reorganize for each ``s``, fuse, and apply the head. Per-``s`` outputs (S, B, ...)."""
        x = torch.stack([reorganize(features, s) for s in segments])  # (S, B, F*C2)
        if self.config.fusion == "moe":
            gate = self.moe.gates(features)
            fused = self.moe(x, gate)
        else:
            gate = None
            fused = self.fuse(x)
        logits = self.head(fused)  # (S, B, K)
        return {"reorganized": x, "gate": gate, "logits": logits}

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        m1: list[Tensor],
        wsi: Tensor,
        wsi_mask: Tensor | None = None,
        *,
        segments: int | str | None = None,
        return_attention: bool = False,
        validate: bool = True,
        m1_tokens: Tensor | None = None,
    ) -> SurvivalOutput:
        """Predict for a batch. ``segments`` overrides the configured reorganization mode
        (an int ``s``, or "all" / "fixed" / "none" / "random"); ``m1_tokens`` (B, G, C1)
        stands in for the modality-1 tokens (see :meth:`encode`)."""
        if validate:
            check_inputs(self.config, m1, wsi, wsi_mask)
        cls_m1, cls_wsi, attn = self.encode(
            m1, wsi, wsi_mask, return_attention=return_attention, m1_tokens=m1_tokens
        )
        # Everything after the encoders is tiny; it runs in float32 even under autocast so
        # that risks keep their resolution (bf16 would quantize them to ~4e-3 and tie ranks).
        with torch.autocast(device_type=cls_wsi.device.type, enabled=False):
            cls_m1, cls_wsi = cls_m1.float(), cls_wsi.float()
            features = self.decouple(cls_m1, cls_wsi)
            segs = self.segments_for_forward(segments)
            per_s = self.fuse_and_predict(features, segs)
        logits_s = per_s["logits"]
        hazards_s, survival_s, risk_s = survival_from_logits(logits_s)
        if len(segs) == 1:
            logits, hazards, survival, risk = logits_s[0], hazards_s[0], survival_s[0], risk_s[0]
            risk_std = torch.zeros_like(risk)
        else:
            survival = survival_s.mean(dim=0)
            prev = torch.cat([torch.ones_like(survival[:, :1]), survival[:, :-1]], dim=1)
            hazards = 1 - survival / prev.clamp_min(torch.finfo(survival.dtype).tiny)
            logits = torch.logit(hazards, eps=1e-7)
            risk = -survival.sum(dim=-1)
            risk_std = risk_s.std(dim=0, unbiased=False)
        return SurvivalOutput(
            logits=logits,
            hazards=hazards,
            survival=survival,
            risk=risk,
            risk_std=risk_std,
            risk_per_s=risk_s.transpose(0, 1),
            survival_per_s=survival_s.transpose(0, 1),
            segments=segs,
            features=features,
            feature_names=self.config.feature_names,
            gate=per_s["gate"],
            cls_m1=cls_m1,
            cls_wsi=cls_wsi,
            reorganized=per_s["reorganized"].transpose(0, 1),
            wsi_attention=attn,
        )
