"""CMTA: cross-modal translation and alignment (Zhou & Chen, "Cross-modal translation and
alignment for survival analysis", ICCV 2023), genomics + WSI.

What makes the model itself:

* **Intra-modal encoders.** Pathology: patch MLP, then a TransMIL-style transformer (class
  token, Nystrom layer, PPEG, Nystrom layer, LayerNorm) over the bag completed to a square.
  Genomics: one SNN per gene family, then a class-token transformer (two Nystrom layers)
  over the six family tokens. Each gives a class token (``P``, ``G``) and its tokens.
* **Cross-modal translators.** One attention per direction (one head): the pathology tokens
  query the genomic tokens (``P <- G``, the pathology representation translated from the
  genomics) and the genomic tokens query the pathology tokens (``G <- P``, the family-by-patch
  co-attention, ``out.co_attention``). Each translated sequence goes through a decoder of the
  same kind as its target's encoder; the decoders' class tokens are ``P_hat`` and ``G_hat``.
* **Inter-modal representation.** ``(P + P_hat) / 2`` and ``(G + G_hat) / 2`` are fused
  (concat + MLP, or the gated bilinear fusion) and a linear head gives the hazards.
* **Alignment loss** (the hook): ``alpha * (L1(P.detach(), P_hat) + L1(G.detach(), G_hat))``,
  L1 the mean absolute difference (``nn.L1Loss``), exactly what ``models/cmta/engine.py``
  adds to the NLL with ``--loss nll_surv_l1``; ``alpha`` = 1.0 as ``run.sh`` / the README use
  for BLCA, GBMLGG and UCEC (``utils/options.py``'s default is 0.5; BRCA 100, LUAD 1e-4).

Checked against the authors' repository FT-ZHOU-ZZZ/CMTA: ``models/cmta/network.py`` (class
``CMTA(omic_sizes, n_classes=4, fusion="concat", model_size="small")``), ``models/cmta/util.py``
(``SNN_Block``, ``BilinearFusion``, ``initialize_weights``, the Nystrom attention and the
multi-head attention), ``models/cmta/engine.py`` (the loss) and ``utils/options.py`` (defaults).
Their class at its defaults with MCAT's BLCA family sizes has 8,259,140 parameters; so has
this one (``tests/model/test_peer_cmta.py``). The weights are initialized as theirs
(Xavier-normal linear layers with zero bias, class tokens N(0, 1e-6)).

Sizes (their ``size_dict``): ``small`` = patch MLP ``wsi_dim -> c1 -> c1`` and family SNNs
``d -> snn_hidden -> c1``; ``large`` = ``wsi_dim -> cmta_large_path_hidden -> c1`` and
``d -> snn_hidden x 3 -> c1``. The translators are ``nn.MultiheadAttention`` (their ``util.py``
copy of it computes the same). With their weights copied in (same parameter order), this
class gives their hazards to 2e-7 for one patient, in all four size / fusion combinations.

Deviations, none of which changes a single patient's numbers:

* **Batched.** Each bag's real patches are compacted, completed to its own square, and run
  through the Nystrom layers with per-patient lengths (:mod:`deref.model.nystrom`) and a
  per-patient PPEG canvas; the ``G <- P`` attention masks each patient's padding, so a padded
  batch equals one patient at a time. Their code runs one patient per step.
* The square-completion copies stay in the token sequence the translators see (as theirs):
  ``co_attention`` and ``wsi_attention`` fold a copy's weight back onto the patch it repeats.
* ``wsi_attention`` ``(B, 2, N)`` is the pathology encoder's class-token attention per
  Nystrom layer (mean over heads), filled in eval mode or with ``return_attention``.
* ``cls_m1`` / ``cls_wsi`` are the fused halves ``(G + G_hat) / 2`` and ``(P + P_hat) / 2``.
* ``l1_parameters`` names the per-family SNNs (MCAT's ``lambda_reg`` target); CMTA itself
  uses no L1 penalty, so it is active only when the loop's ``l1`` is set.
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
from deref.model.encoders import PPEG, SNNBlock, TransLayer

MODEL_SIZES = ("small", "large")
FUSIONS = ("concat", "bilinear")


def xavier_init_(module: nn.Module) -> None:
    """The authors' ``initialize_weights``: Xavier-normal linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def class_token(dim: int) -> nn.Parameter:
    """A class token ``(1, 1, dim)`` drawn from N(0, 1e-6) (their ``nn.init.normal_(std=1e-6)``)."""
    return nn.Parameter(torch.randn(1, 1, dim) * 1e-6)


def compact_bags(fc: nn.Module, wsi: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``fc`` applied to each bag's real patches, left-aligned: ``(tokens (B, n_max, C), lengths (B,),
    order (B, N) or None)``, ``order[b, i]`` the original position of patient b's i-th real patch."""
    b, n, _ = wsi.shape
    if mask is None:
        return fc(wsi), torch.full((b,), n, dtype=torch.long, device=wsi.device), None
    lengths = mask.sum(dim=1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    flat = fc(wsi[mask])
    n_max = int(lengths.max())
    slot = torch.arange(n_max, device=wsi.device).view(1, -1) < lengths.view(-1, 1)
    h = flat.new_zeros(b, n_max, flat.shape[-1])
    h[slot] = flat
    return h, lengths, order


def square_complete(h: Tensor, lengths: Tensor) -> tuple[Tensor, list[int], Tensor, Tensor, Tensor]:
    """Each patient's ``n`` tokens completed to ``side = ceil(sqrt(n))`` squared by repeating its
    first tokens (their ``Transformer_P``). Returns ``(tokens (B, T, C), sides, t (B,), src (B, T),
    valid (B, T))``: token j of patient b copies its token ``src[b, j]``; rows past ``t[b]`` are 0."""
    b, n_max, c = h.shape
    sides = [math.ceil(math.sqrt(n)) for n in lengths.tolist()]
    t = torch.tensor([s * s for s in sides], device=h.device)
    j = torch.arange(int(t.max()), device=h.device).view(1, -1)
    src = torch.where(j < lengths.view(-1, 1), j, j - lengths.view(-1, 1)).clamp(0, n_max - 1)
    valid = j < t.view(-1, 1)
    tokens = torch.gather(h, 1, src.unsqueeze(-1).expand(-1, -1, c)) * valid.unsqueeze(-1).to(h.dtype)
    return tokens, sides, t, src, valid


def ppeg_squares(pos_layer: PPEG, tokens: Tensor, sides: list[int]) -> Tensor:
    """PPEG on each patient's square of tokens ``(B, T, C)`` (row-major), on a zero canvas so that
    the border of every square sees the zero padding it sees alone."""
    b, t_max, c = tokens.shape
    if len(set(sides)) == 1:
        s = sides[0]
        return pos_layer(tokens.transpose(1, 2).reshape(b, c, s, s)).flatten(2).transpose(1, 2)
    s_max = max(sides)
    canvas = tokens.new_zeros(b, c, s_max, s_max)
    for i, s in enumerate(sides):
        canvas[i, :, :s, :s] = tokens[i, : s * s].transpose(0, 1).reshape(c, s, s)
    conv = pos_layer(canvas)
    out = tokens.new_zeros(b, t_max, c)
    for i, s in enumerate(sides):
        out[i, : s * s] = conv[i, :, :s, :s].reshape(c, s * s).transpose(0, 1)
    return out


def fold_attention(attn: Tensor, src: Tensor, valid: Tensor, order: Tensor | None, n: int) -> Tensor:
    """Weights over completed tokens ``(B, H, T)`` -> over the bag's patches ``(B, H, N)``: a
    copy's weight is added to the patch it repeats; zero at padded patches."""
    b, h, t = attn.shape
    idx = src if order is None else torch.gather(order, 1, src)
    out = attn.new_zeros(b, h, n)
    return out.scatter_add_(2, idx.unsqueeze(1).expand(b, h, t), attn * valid.unsqueeze(1).to(attn.dtype))


class PathTransformer(nn.Module):
    """Their ``Transformer_P``: class token, Nystrom layer, PPEG, Nystrom layer, LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cls_token = class_token(cfg.c1)
        self.pos_layer = PPEG(cfg.c1)
        self.layer1 = TransLayer(cfg)
        self.layer2 = TransLayer(cfg)
        self.norm = nn.LayerNorm(cfg.c1)

    def forward(self, h: Tensor, lengths: Tensor, want_attention: bool = False):
        """``h`` (B, n_max, C) with per-patient ``lengths`` -> ``(cls (B, C), tokens (B, T, C), t,
        src, valid, attention (B, 2, T) or None)`` (see :func:`square_complete`)."""
        tokens, sides, t, src, valid = square_complete(h, lengths)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        seq = None if len(set(sides)) == 1 else t + 1
        x, a1 = self.layer1(x, seq, want_attention)
        x = torch.cat([x[:, :1], ppeg_squares(self.pos_layer, x[:, 1:], sides)], dim=1)
        x, a2 = self.layer2(x, seq, want_attention)
        x = self.norm(x)
        attn = torch.stack([a1, a2], dim=1).mean(dim=2)[..., 1:] if want_attention else None
        return x[:, 0], x[:, 1:] * valid.unsqueeze(-1).to(x.dtype), t, src, valid, attn


class TokenTransformer(nn.Module):
    """Their ``Transformer_G``: class token + two Nystrom layers + LayerNorm over a fixed token set."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cls_token = class_token(cfg.c1)
        self.layer1 = TransLayer(cfg)
        self.layer2 = TransLayer(cfg)
        self.norm = nn.LayerNorm(cfg.c1)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        x, _ = self.layer1(x, None)
        x, _ = self.layer2(x, None)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


class BilinearFusion(nn.Module):
    """Gated bilinear fusion (their ``BilinearFusion`` at CMTA's arguments: gates on, no skip, no
    ``nn.Bilinear``): each vector gated by a sigmoid of both, reduced by ``scale``, outer product
    with a 1 appended to each, then two Linear-ReLU-Dropout layers."""

    def __init__(self, dim: int, scale: int, dropout: float) -> None:
        super().__init__()
        r = dim // scale
        self.linear_h1 = nn.Linear(dim, r)
        self.linear_z1 = nn.Linear(2 * dim, r)
        self.linear_o1 = nn.Linear(r, r)
        self.linear_h2 = nn.Linear(dim, r)
        self.linear_z2 = nn.Linear(2 * dim, r)
        self.linear_o2 = nn.Linear(r, r)
        self.encoder1 = nn.Linear((r + 1) * (r + 1), dim)
        self.encoder2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, v1: Tensor, v2: Tensor) -> Tensor:
        both = torch.cat([v1, v2], dim=1)
        o1 = self.drop(
            F.relu(self.linear_o1(torch.sigmoid(self.linear_z1(both)) * F.relu(self.linear_h1(v1))))
        )
        o2 = self.drop(
            F.relu(self.linear_o2(torch.sigmoid(self.linear_z2(both)) * F.relu(self.linear_h2(v2))))
        )
        o1 = torch.cat([o1, torch.ones_like(o1[:, :1])], dim=1)
        o2 = torch.cat([o2, torch.ones_like(o2[:, :1])], dim=1)
        out = self.drop((o1.unsqueeze(2) * o2.unsqueeze(1)).flatten(1))
        out = self.drop(F.relu(self.encoder1(out)))
        return self.drop(F.relu(self.encoder2(out)))


def _validate(cfg: ModelConfig) -> None:
    if cfg.cmta_model_size not in MODEL_SIZES:
        raise ConfigError(
            f"config field 'cmta_model_size' = {cfg.cmta_model_size!r}; expected one of {MODEL_SIZES}"
        )
    if cfg.cmta_fusion not in FUSIONS:
        raise ConfigError(f"config field 'cmta_fusion' = {cfg.cmta_fusion!r}; expected one of {FUSIONS}")
    if cfg.cmta_cross_heads <= 0 or cfg.c1 % cfg.cmta_cross_heads:
        raise ConfigError(
            f"config field 'cmta_cross_heads' = {cfg.cmta_cross_heads}; expected > 0 and dividing c1 = {cfg.c1}"
        )
    if cfg.cmta_large_path_hidden <= 0:
        raise ConfigError(
            f"config field 'cmta_large_path_hidden' = {cfg.cmta_large_path_hidden}; expected > 0"
        )
    if not 1 <= cfg.cmta_bilinear_scale <= cfg.c1:
        raise ConfigError(
            f"config field 'cmta_bilinear_scale' = {cfg.cmta_bilinear_scale}; expected 1 ... c1 = {cfg.c1}"
        )
    if not 0.0 <= cfg.cmta_bilinear_dropout < 1.0:
        raise ConfigError(
            f"config field 'cmta_bilinear_dropout' = {cfg.cmta_bilinear_dropout}; expected in [0, 1)"
        )
    if cfg.cmta_alpha < 0:
        raise ConfigError(f"config field 'cmta_alpha' = {cfg.cmta_alpha}; expected >= 0")


class CMTA(_Baseline):
    """CMTA (see the module docstring): intra-modal encoders, a translator and a decoder per
    direction, the averaged class tokens fused, and the L1 alignment loss through the hook."""

    modalities = ("m1", "wsi")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        _validate(config)
        c, drop = config.c1, config.wsi_dropout
        widths = [
            config.wsi_dim,
            c if config.cmta_model_size == "small" else config.cmta_large_path_hidden,
            c,
        ]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(drop)]
        self.pathomics_fc = nn.Sequential(*layers)
        self.genomics_fc = nn.ModuleList(self._genomic_net(d) for d in config.m1_sizes)
        self.pathomics_encoder = PathTransformer(config)
        self.pathomics_decoder = PathTransformer(config)
        heads = config.cmta_cross_heads
        self.p_in_g = nn.MultiheadAttention(c, heads, batch_first=True)  # pathology queries genomics
        self.g_in_p = nn.MultiheadAttention(c, heads, batch_first=True)  # genomics queries pathology
        self.genomics_encoder = TokenTransformer(config)
        self.genomics_decoder = TokenTransformer(config)
        if config.cmta_fusion == "concat":
            self.mm = nn.Sequential(nn.Linear(2 * c, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU())
        else:
            self.mm = BilinearFusion(c, config.cmta_bilinear_scale, config.cmta_bilinear_dropout)
        self.classifier = nn.Linear(c, config.n_bins)
        xavier_init_(self)

    def _genomic_net(self, d: int) -> nn.Module:
        """SNN layers d -> snn_hidden -> c1 (small) or d -> 3 x snn_hidden -> c1 (large)."""
        cfg = self.config
        h, drop = cfg.snn_hidden, cfg.snn_dropout
        if cfg.cmta_model_size == "small":
            return SNNBlock(d, h, cfg.c1, drop)
        return nn.Sequential(SNNBlock(d, h, h, drop), SNNBlock(h, h, cfg.c1, drop))

    def l1_parameters(self):
        """The per-family SNNs (what MCAT's ``lambda_reg`` penalizes)."""
        return self.genomics_fc.parameters()

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        g_tokens = torch.stack([net(x) for net, x in zip(self.genomics_fc, self._filled(m1))], dim=1)
        h, lengths, order = compact_bags(self.pathomics_fc, wsi, wsi_mask)
        want = return_attention or not self.training
        p_cls, p_tok, t, src, valid, attn = self.pathomics_encoder(h, lengths, want)
        g_cls, g_tok = self.genomics_encoder(g_tokens)
        # translators: P <- G (each pathology token reads the genomic tokens), G <- P (masked)
        p_from_g, _ = self.p_in_g(p_tok, g_tok, g_tok, need_weights=False)
        g_from_p, co = self.g_in_p(g_tok, p_tok, p_tok, key_padding_mask=~valid)
        p_hat = self.pathomics_decoder(p_from_g * valid.unsqueeze(-1).to(p_from_g.dtype), t)[0]
        g_hat, _ = self.genomics_decoder(g_from_p)
        path, geno = (p_cls + p_hat) / 2, (g_cls + g_hat) / 2
        fused = (
            self.mm(torch.cat([path, geno], dim=1))
            if self.config.cmta_fusion == "concat"
            else self.mm(path, geno)
        )
        n = wsi.shape[1]
        return _output(
            self.classifier(fused),
            cls_m1=geno,
            cls_wsi=path,
            co_attention=fold_attention(co, src, valid, order, n),
            wsi_attention=None if attn is None else fold_attention(attn, src, valid, order, n),
            extras={"path": p_cls, "path_hat": p_hat, "geno": g_cls, "geno_hat": g_hat},
        )

    def auxiliary_loss(self, out: SurvivalOutput, bins: Tensor, censorship: Tensor) -> dict[str, Tensor]:
        """CMTA's alignment: ``alpha * L1(P.detach(), P_hat)`` and ``alpha * L1(G.detach(), G_hat)``
        (mean absolute differences over the batch and the channels; engine.py's ``nn.L1Loss``)."""
        e, alpha = out.extras, self.config.cmta_alpha
        path = F.l1_loss(e["path_hat"].float(), e["path"].detach().float())
        geno = F.l1_loss(e["geno_hat"].float(), e["geno"].detach().float())
        return {"cmta_align_path": alpha * path, "cmta_align_geno": alpha * geno}


__all__ = ["CMTA", "BilinearFusion", "PathTransformer", "TokenTransformer"]
