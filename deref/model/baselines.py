"""Baselines of the paper, with DeReF's call signature and output structure.

* ``SNN`` (genomic only; MCAT's self-normalizing network on all genomic columns);
* ``SNNTransformer`` (genomic only; one SNN per gene family + the token transformer);
* ``ABMIL`` (WSI only; gated attention MIL, Ilse et al. 2018);
* ``TransMIL`` (WSI only; the same Nystrom/PPEG encoder DeReF uses);
* ``ConcatMLP`` (both; DeReF's two encoders, concatenated, an MLP head);
* ``ResNet3D`` (MRI only, Table II's first row; a 3D ResNet over the sequences' ROI cubes
  stacked as channels, trained from scratch).

Every model takes ``(m1, wsi, wsi_mask)`` (ignoring a modality it does not use, which may
then be None) and returns a :class:`~deref.model.deref.SurvivalOutput`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deref.errors import InputError
from deref.model.config import ModelConfig
from deref.model.deref import SurvivalOutput, check_inputs, survival_from_logits
from deref.model.encoders import M1Encoder, SNNBlock, WSIEncoder, missing_bags
from deref.model.resnet3d import ResNet3d, cubes


def _output(logits: Tensor, **extra) -> SurvivalOutput:
    hazards, survival, risk = survival_from_logits(logits)
    return SurvivalOutput(
        logits=logits, hazards=hazards, survival=survival, risk=risk, risk_std=torch.zeros_like(risk), **extra
    )


class _Baseline(nn.Module):
    modalities: tuple[str, ...] = ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def _check(self, m1, wsi, wsi_mask, validate: bool) -> None:
        if validate:
            check_inputs(
                self.config,
                m1 if "m1" in self.modalities else None,
                wsi if "wsi" in self.modalities else None,
                wsi_mask if "wsi" in self.modalities else None,
            )

    def _filled(self, m1: list[Tensor]) -> list[Tensor]:
        """Modality 1 with a missing group (a NaN row, ``allow_missing``) at its training mean: zero
        after the fold's standardization (vectors) or ``deref mri``'s z-scoring (cubes)."""
        return [torch.nan_to_num(x, nan=0.0) for x in m1] if self.config.allow_missing else list(m1)

    def _no_missing_slide(self, wsi: Tensor, wsi_mask: Tensor | None) -> None:
        if not self.config.allow_missing:
            return
        missing = missing_bags(wsi, wsi_mask)
        if bool(missing.any()):
            raise InputError(
                f"patient {int(missing.nonzero()[0])}: no slide (a missing input); the {self.config.model_type} "
                "baseline reads only the slide and cannot score a patient without one"
            )


class SNN(_Baseline):
    """All genomic columns concatenated -> 2 SNN layers (256) -> bins."""

    modalities = ("m1",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.snn = SNNBlock(sum(config.m1_sizes), config.c1, config.c1, config.snn_dropout)
        self.head = nn.Linear(config.c1, config.n_bins)

    def forward(self, m1, wsi=None, wsi_mask=None, *, validate: bool = True, **_) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        h = self.snn(torch.cat(self._filled(m1), dim=1))
        return _output(self.head(h), cls_m1=h)


class SNNTransformer(_Baseline):
    """One SNN per gene family -> tokens -> 2-layer Nystrom transformer -> class token -> bins."""

    modalities = ("m1",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.m1_encoder = M1Encoder(config)
        self.head = nn.Linear(config.c1, config.n_bins)

    def forward(self, m1, wsi=None, wsi_mask=None, *, validate: bool = True, **_) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        h = self.m1_encoder(m1)
        return _output(self.head(h), cls_m1=h)


class ABMIL(_Baseline):
    """Gated attention MIL: Linear(D,256)-ReLU-Dropout, gated attention pooling, MLP head."""

    modalities = ("wsi",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d = config.abmil_hidden
        self.fc = nn.Sequential(nn.Linear(config.wsi_dim, d), nn.ReLU(), nn.Dropout(config.wsi_dropout))
        self.attn_a = nn.Linear(d, d)
        self.attn_b = nn.Linear(d, d)
        self.attn_c = nn.Linear(d, 1)
        self.rho = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(config.wsi_dropout))
        self.head = nn.Linear(d, config.n_bins)

    def forward(self, m1=None, wsi=None, wsi_mask=None, *, validate: bool = True, **_) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        h = self.fc(wsi)  # (B, N, d)
        scores = self.attn_c(torch.tanh(self.attn_a(h)) * torch.sigmoid(self.attn_b(h))).squeeze(-1)
        if wsi_mask is not None:
            scores = scores.masked_fill(~wsi_mask, float("-inf"))
            h = h.masked_fill(~wsi_mask.unsqueeze(-1), 0.0)
        a = torch.softmax(scores, dim=1)  # (B, N)
        pooled = (a.unsqueeze(-1) * h).sum(dim=1)
        out = _output(self.head(self.rho(pooled)), cls_wsi=pooled)
        out.wsi_attention = a.unsqueeze(1)
        return out


class TransMIL(_Baseline):
    """DeReF's WSI encoder (patch MLP + TransMIL) with a linear head."""

    modalities = ("wsi",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.wsi_encoder = WSIEncoder(config)
        self.head = nn.Linear(config.c1, config.n_bins)

    def forward(
        self, m1=None, wsi=None, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        h, attn = self.wsi_encoder(wsi, wsi_mask, return_attention=return_attention)
        return _output(self.head(h), cls_wsi=h, wsi_attention=attn)


class ConcatMLP(_Baseline):
    """DeReF's two encoders, class tokens concatenated, MLP (2C1 -> C1) and a linear head."""

    modalities = ("m1", "wsi")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.m1_encoder = M1Encoder(config)
        self.wsi_encoder = WSIEncoder(config)
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.c1, config.c1), nn.ReLU(), nn.Dropout(config.expert_dropout)
        )
        self.head = nn.Linear(config.c1, config.n_bins)

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        g = self.m1_encoder(m1)
        p, attn = self.wsi_encoder(wsi, wsi_mask, return_attention=return_attention)
        return _output(self.head(self.mlp(torch.cat([g, p], dim=1))), cls_m1=g, cls_wsi=p, wsi_attention=attn)


class ResNet3D(_Baseline):
    """MRI only: the sequences' ROI cubes stacked as channels ``(B, S, G, G, G)`` -> 3D ResNet ->
    global average pooling -> Linear(., C1)-ELU-AlphaDropout -> bins.

    Channels (one net that sees every sequence at each voxel, as ``deref mri`` stacks them)
    rather than a shared net averaged over sequences: the sequences are co-registered, so a
    voxel's contrast across sequences is available from the first convolution, and the cost is
    one network pass per patient instead of S. ``resnet3d_shared`` does not apply here.
    ``cls_m1`` is the C1 vector before the head.
    """

    modalities = ("m1",)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.backbone = ResNet3d(
            config.resnet3d_depth, config.resnet3d_width, in_channels=len(config.m1_sizes)
        )
        self.proj = nn.Sequential(
            nn.Linear(self.backbone.out_dim, config.c1), nn.ELU(), nn.AlphaDropout(config.snn_dropout)
        )
        self.head = nn.Linear(config.c1, config.n_bins)

    def forward(self, m1, wsi=None, wsi_mask=None, *, validate: bool = True, **_) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        x = torch.cat([cubes(v, self.config.mri_grid) for v in self._filled(m1)], dim=1)  # (B, S, G, G, G)
        h = self.proj(self.backbone(x))
        return _output(self.head(h), cls_m1=h)


BASELINES: dict[str, type[nn.Module]] = {
    "snn": SNN,
    "snn_transformer": SNNTransformer,
    "abmil": ABMIL,
    "transmil": TransMIL,
    "concat_mlp": ConcatMLP,
    "resnet3d": ResNet3D,
}

__all__ = ["SNN", "SNNTransformer", "ABMIL", "TransMIL", "ConcatMLP", "ResNet3D", "BASELINES"]
