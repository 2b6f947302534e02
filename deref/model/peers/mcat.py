"""MCAT: Chen, Lu, Weng, Chen, Williamson, Manz, Shady & Mahmood, "Multimodal co-attention
transformer for survival prediction in gigapixel whole slide images", ICCV 2021.

What makes the model: one SNN per gene family gives G = 6 genomic tokens; the slide's patch
embeddings (Linear(wsi_dim, 256)-ReLU-Dropout) are read through *genomic-guided
co-attention* (multi-head attention whose queries are the family tokens and whose keys and
values are the patches), which turns a bag of N patches into G genomics-guided WSI tokens.
Each modality's G tokens then go through their own transformer (2 post-norm layers, 8 heads,
feed-forward 512) and gated attention pooling (Attn_Net_Gated) with a Linear-ReLU-Dropout
``rho``; the two summaries are fused (concatenation + 2-layer MLP, or the gated bilinear
fusion of Pathomic Fusion) and a linear layer gives the bins' logits.

Checked against the authors' ``mahmoodlab/MCAT`` (``models/model_coattn.py``: ``MCAT_Surv``;
``models/model_utils.py``: ``SNN_Block``, ``Attn_Net_Gated``, ``BilinearFusion``), whose
classes were run on CPU for the parameter counts of the tests. Our parts map one to one onto
theirs (``wsi_net``, ``sig_networks``, ``coattn``, the transformers, attention heads, ``rho``,
``mm``, ``classifier``), so the counts are equal. Written from the paper and that reading,
batched with masks:

* the co-attention masks padded patches (``key_padding_mask``): a padded batch gives each
  patient what a batch of one gives. After the co-attention every patient has exactly G path
  tokens, so the path transformer and both attention poolings need no mask (the brief
  expected a masked path transformer; in MCAT that transformer reads the G co-attended
  tokens, never the patches);
* ``co_attention`` ``(B, G, N)`` is the softmaxed co-attention weights averaged over the
  heads (one head by default), 0 at padding. The authors' layer returns the *pre-softmax*
  scores by default (``need_raw=True``); we return the weights, which the Attention page
  reads as each family's distribution over its patient's patches;
* ``wsi_attention`` ``(B, 1, N)``: the path pooling weights over the G co-attended tokens
  carried to the patches through the co-attention (``sum_g a_path[g] * co_attention[g, n]``),
  a distribution over the patches; ``cls_m1`` / ``cls_wsi``: the two pooled summaries;
* the genomic SNNs keep PyTorch's default Linear initialization, as ``MCAT_Surv`` does (it
  never calls ``init_max_weights``); :class:`~deref.model.encoders.SNNBlock` is reset to it;
* the bilinear fusion's dropout is the model dropout (``BilinearFusion``'s own default, 0.25,
  is the same value) and its hidden width ``c1`` (256 hard-coded there);
* a missing genomic group (``allow_missing``) is its training mean (zero); a missing slide is
  refused (the co-attention has nothing to attend to).

No auxiliary loss (MCAT trains with the NLL alone); its optional L1 (``lambda_reg``, off by
default in their ``main.py``) is the loop's ``l1``, applied to the genomic SNNs that
``l1_parameters`` names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deref.errors import ConfigError
from deref.model.baselines import _Baseline, _output
from deref.model.config import ModelConfig
from deref.model.deref import SurvivalOutput
from deref.model.encoders import SNNBlock

#: Late fusions of ``MCAT_Surv`` (its ``fusion`` argument; ``None`` is not offered: no head).
FUSIONS = ("concat", "bilinear")


def check_head_fields(config: ModelConfig, prefix: str) -> None:
    """Validate the ``{prefix}_*`` fields the shared :class:`CoattnHead` reads."""
    fusion = getattr(config, f"{prefix}_fusion")
    if fusion not in FUSIONS:
        raise ConfigError(f"config field '{prefix}_fusion' = {fusion!r}; expected one of {FUSIONS}")
    for name in ("layers", "ff", "bilinear_scale"):
        if getattr(config, f"{prefix}_{name}") <= 0:
            raise ConfigError(
                f"config field '{prefix}_{name}' = {getattr(config, f'{prefix}_{name}')}; expected > 0"
            )
    dropout = getattr(config, f"{prefix}_dropout")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"config field '{prefix}_dropout' = {dropout}; expected 0 <= p < 1")
    scale = getattr(config, f"{prefix}_bilinear_scale")
    if config.c1 % scale:
        raise ConfigError(
            f"config field '{prefix}_bilinear_scale' = {scale} does not divide c1 = {config.c1}"
        )


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (``Attn_Net_Gated``, one class): tokens (B, T, C) -> (B, C), (B, T)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.attention_c(self.attention_a(x) * self.attention_b(x)).squeeze(-1)
        a = torch.softmax(scores.float(), dim=1).to(x.dtype)
        return (a.unsqueeze(-1) * x).sum(dim=1), a


class BilinearFusion(nn.Module):
    """Pathomic Fusion's gated bilinear fusion (skip 0, gated, no bilinear gate):
    each modality is gated by a linear map of both, reduced by ``scale``, a 1 is appended,
    and the outer product (Kronecker) of the two goes through two Linear-ReLU-Dropout layers."""

    def __init__(self, dim: int, scale: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        d = dim // scale
        self.linear_h1 = nn.Sequential(nn.Linear(dim, d), nn.ReLU())
        self.linear_z1 = nn.Linear(2 * dim, d)
        self.linear_o1 = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout))
        self.linear_h2 = nn.Sequential(nn.Linear(dim, d), nn.ReLU())
        self.linear_z2 = nn.Linear(2 * dim, d)
        self.linear_o2 = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout))
        self.post_fusion_dropout = nn.Dropout(dropout)
        self.encoder1 = nn.Sequential(nn.Linear((d + 1) ** 2, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.encoder2 = nn.Sequential(nn.Linear(hidden, out), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, v1: Tensor, v2: Tensor) -> Tensor:
        both = torch.cat([v1, v2], dim=1)
        o1 = self.linear_o1(torch.sigmoid(self.linear_z1(both)) * self.linear_h1(v1))
        o2 = self.linear_o2(torch.sigmoid(self.linear_z2(both)) * self.linear_h2(v2))
        one = torch.ones(o1.shape[0], 1, dtype=o1.dtype, device=o1.device)
        o1, o2 = torch.cat([o1, one], dim=1), torch.cat([o2, one], dim=1)
        o12 = (o1.unsqueeze(2) * o2.unsqueeze(1)).flatten(start_dim=1)
        return self.encoder2(self.encoder1(self.post_fusion_dropout(o12)))


def _transformer(dim: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=dim, nhead=heads, dim_feedforward=ff, dropout=dropout, activation="relu", batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


class CoattnHead(nn.Module):
    """What MCAT and MOTCat share after the co-attention: per modality a transformer over the
    G tokens, gated attention pooling and ``rho``; late fusion; a linear classifier.

    ``forward(path_tokens (B, G, C), omic_tokens (B, G, C))`` -> ``(logits (B, K), h_path (B, C),
    h_omic (B, C), a_path (B, G), a_omic (B, G))``.
    """

    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__()
        check_head_fields(config, prefix)
        c, p = config.c1, prefix
        layers, ff, dropout = (
            getattr(config, f"{p}_layers"),
            getattr(config, f"{p}_ff"),
            getattr(config, f"{p}_dropout"),
        )
        self.fusion = getattr(config, f"{p}_fusion")
        self.path_transformer = _transformer(c, config.heads, ff, layers, dropout)
        self.path_attention_head = GatedAttentionPool(c, dropout)
        self.path_rho = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Dropout(dropout))
        self.omic_transformer = _transformer(c, config.heads, ff, layers, dropout)
        self.omic_attention_head = GatedAttentionPool(c, dropout)
        self.omic_rho = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Dropout(dropout))
        if self.fusion == "concat":
            self.mm = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU())
        else:
            self.mm = BilinearFusion(c, getattr(config, f"{p}_bilinear_scale"), c, c, dropout)
        self.classifier = nn.Linear(c, config.n_bins)

    def forward(self, path_tokens: Tensor, omic_tokens: Tensor) -> tuple[Tensor, ...]:
        h_path, a_path = self.path_attention_head(self.path_transformer(path_tokens))
        h_omic, a_omic = self.omic_attention_head(self.omic_transformer(omic_tokens))
        h_path, h_omic = self.path_rho(h_path), self.omic_rho(h_omic)
        if self.fusion == "concat":
            h = self.mm(torch.cat([h_path, h_omic], dim=1))
        else:
            h = self.mm(h_path, h_omic)
        return self.classifier(h), h_path, h_omic, a_path, a_omic


class CoattnPeer(_Baseline):
    """The encoders MCAT and MOTCat share: ``wsi_net`` (patches -> C) and one 2-layer SNN per
    genomic group (``sig_networks``, C -> C), then the :class:`CoattnHead` of ``prefix``."""

    modalities = ("m1", "wsi")

    def __init__(self, config: ModelConfig, prefix: str) -> None:
        super().__init__(config)
        c = config.c1
        self.wsi_net = nn.Sequential(nn.Linear(config.wsi_dim, c), nn.ReLU(), nn.Dropout(config.wsi_dropout))
        self.sig_networks = nn.ModuleList(SNNBlock(d, c, c, config.snn_dropout) for d in config.m1_sizes)
        for m in self.sig_networks.modules():  # the authors keep PyTorch's default init here
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.head = CoattnHead(config, prefix)

    def encode(self, m1: list[Tensor], wsi: Tensor, wsi_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Family tokens (B, G, C) and patch embeddings (B, N, C), zero at padded patches."""
        omic = torch.stack([net(x) for net, x in zip(self.sig_networks, self._filled(m1))], dim=1)
        path = self.wsi_net(wsi)
        if wsi_mask is not None:
            path = path.masked_fill(~wsi_mask.unsqueeze(-1), 0.0)
        return omic, path

    def l1_parameters(self):
        """MCAT's ``lambda_reg`` target: the genomic SNNs."""
        return self.sig_networks.parameters()


def patch_attention(a_path: Tensor, co_attention: Tensor) -> Tensor:
    """Path pooling weights over the G co-attended tokens (B, G) carried to the patches through
    the co-attention rows (B, G, N): (B, 1, N), a distribution over each patient's patches."""
    return torch.einsum("bg,bgn->bn", a_path.to(co_attention.dtype), co_attention).unsqueeze(1)


class MCAT(CoattnPeer):
    """Genomic-guided co-attention (family tokens query the patches) + two token transformers
    with gated attention pooling + late fusion. See the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, "mcat")
        heads = config.mcat_coattn_heads
        if heads <= 0 or config.c1 % heads:
            raise ConfigError(
                f"config field 'mcat_coattn_heads' = {heads}; expected > 0 and dividing c1 = {config.c1}"
            )
        self.coattn = nn.MultiheadAttention(config.c1, heads, batch_first=True)

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        omic, path = self.encode(m1, wsi, wsi_mask)
        pad = None if wsi_mask is None else ~wsi_mask
        tokens, co = self.coattn(omic, path, path, key_padding_mask=pad, need_weights=True)
        logits, h_path, h_omic, a_path, _ = self.head(tokens, omic)
        return _output(
            logits,
            cls_m1=h_omic,
            cls_wsi=h_path,
            co_attention=co,
            wsi_attention=patch_attention(a_path, co),
        )


__all__ = ["MCAT", "CoattnHead", "CoattnPeer", "GatedAttentionPool", "BilinearFusion", "FUSIONS"]
