"""MoME: Mixture of Multimodal Experts (Xiong, Chen, Zheng, Wei, Zheng, Sung and King, "MoME: Mixture of
multimodal experts for cancer survival prediction", MICCAI 2024), batched and deterministic in eval.

What makes the model itself: *Biased Progressive Encoding* — the patch tokens and the gene-family
tokens are encoded alternately, each using the other modality as its reference, over
``mome_stages`` stages (pathology first, then genomics, in every stage) — where every encoding step
is a *MoME layer*: a routing network reads both modalities (an MLP per modality, token means
summed, a linear classifier, a softmax) and picks, per patient, one of the multimodal experts:

* ``"trans"`` (TransFusion): one Nystrom transformer layer over the joint sequence ``[x1, x2]``,
  x1's tokens kept — a balanced fusion;
* ``"bottleneck"`` (BottleneckTransFusion): ``mome_n_bottlenecks`` bottleneck tokens first read
  x2 (one transformer layer over ``[bottlenecks, x2]``), then x1 reads them (a second layer over
  ``[x1, bottlenecks]``) — a narrow channel from the reference;
* ``"add"`` (AddFusion): ``SNN(RMSNorm(x1)) + mean over x2's tokens of SNN(RMSNorm(x2))``;
* ``"drop"`` (DropX2Fusion): x1 unchanged — the reference is ignored.

After the stages a class token, the patch tokens and the family tokens go through one more
transformer layer; the class token gives the bins. Every transformer layer is
``omega * x + NystromAttention(norm(x))`` with Admin's shortcut scale
``omega = sqrt((n + 1) / ln(n + 1) - 1)`` for ``n = mome_admin_layers`` (``admin_torch.as_module(8)``).

Authors' code checked: github.com/BearCleverProud/MoME, ``models/model_mome.py`` (``MoMETransformer``,
``MoME``, ``RoutingNetwork``, ``DiffSoftmax``, the four experts, ``TransLayer``), ``main.py``
(``--n_bottlenecks 2``, batch of one, ``gc`` 32) and ``trainer/mb_trainer.py``. At its defaults
(BLCA omic sizes, wsi 1024) their ``MoMETransformer(n_bottlenecks=2)`` has 21,716,348 parameters;
ours 21,714,300 (see the deviations). With their weights loaded (mapped by name), ours gives their
hazards on single patients of 50, 300 and 700 patches to within 1e-7, all four experts chosen somewhere.

Routing. Their ``MoMETransformer`` calls every MoME layer with ``hard=True``: the router's softmax
(temperature 1: ``MoME.forward`` passes ``hard`` positionally into ``temp``) is argmaxed and only
the chosen expert runs. There is no Gumbel noise, so routing is deterministic in training and eval
alike. ``mome_routing="soft"`` instead mixes every expert with the softmax weights.

Outputs: ``gate`` ``(B, E)`` is the last MoME layer's routing (the genomic layer of the last stage;
one-hot for hard routing, the softmax for soft); ``extras["gates"]`` ``(B, 2 * stages, E)`` holds
every layer's (pathology then genomics, stage by stage) and ``extras["router_probs"]`` the routers'
softmax. ``wsi_attention`` ``(B, 1, N)``: the final layer's class-token attention over the patches
(mean over heads; the rest of its row is on the family tokens). ``co_attention`` ``(B, G, N)``
(with ``return_attention``; zeros otherwise): what each family token of the last genomic MoME layer
read from each patch through its chosen expert — TransFusion: the family rows of its attention over
the patches; Bottleneck: family -> bottleneck attention times bottleneck -> patch attention; Add:
the uniform mean (``1 / n``); Drop: zeros (gate-weighted in soft routing). ``cls_m1`` / ``cls_wsi``:
the mean of the final family / patch tokens (the model has no per-modality class token).
MoME has no auxiliary loss (no load balancing; ``reg_type`` None), so there is no hook.

Deviations from the authors' code, and why:

* **Batched.** Theirs runs one patient (``.item()`` on the argmax; ``squeeze``). Here each patient's
  real patches are compacted to the front, every concatenation ``[x1, x2]`` is built per patient
  (its own tokens, then the other's), each Nystrom layer attends within each patient's own length
  (:class:`~deref.model.nystrom.NystromAttention`, exact per patient), and every token mean is
  masked. Each expert runs on the sub-batch routed to it, so a padded batch gives each patient
  exactly what a batch of one gives.
* **The router learns.** Their hard branch returns the chosen expert's output without the gate
  (and the soft branch sums the experts unweighted), so their router receives no gradient and
  keeps its random initialization. Here the chosen expert's output is multiplied by the
  straight-through gate ``one_hot - p.detach() + p`` (their ``DiffSoftmax(hard=True)``), whose
  value is 1: the forward pass is theirs, and the router is trained through ``p``.
* **Fixed random tokens are buffers.** Their bottleneck tokens and the final class token are
  ``torch.rand`` tensors that are neither parameters nor saved; here they are persistent buffers
  (same draw, not trained), so a checkpoint reproduces its predictions.
* **Unused modules omitted.** ``BottleneckTransFusion.norm`` (an RMSNorm never called) is not
  built: 512 parameters per MoME layer, 2,048 fewer in all.
* Their micro-batching of patches (``bs_micro`` 4096 random patches per forward) belongs to their
  trainer, not the model; DeReF's loop reads whole bags.
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
from deref.model.nystrom import NystromAttention, _short_nystrom_attention, iterative_pinv

#: The experts of a MoME layer, in the authors' ``routing_dict`` order.
EXPERTS: tuple[str, ...] = ("trans", "bottleneck", "add", "drop")
ROUTINGS = ("hard", "soft")


def admin_omega(n_layers: int) -> float:
    """Admin's shortcut scale for ``n_layers`` residual layers (``admin_torch.calculate_init``, O(log n))."""
    return math.sqrt((n_layers + 1) / math.log(n_layers + 1) - 1)


def length_mask(lengths: Tensor, t: int) -> Tensor:
    """``(B, t)`` bool: position < length."""
    return torch.arange(t, device=lengths.device).view(1, -1) < lengths.view(-1, 1)


def ragged_cat(a: Tensor, la: Tensor, b: Tensor, lb: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patient concatenation of left-aligned ``a`` (B, Ta, D) and ``b`` (B, Tb, D) of lengths
    ``la``, ``lb``: each patient's ``a`` tokens, then its ``b`` tokens, zeros after; and the lengths."""
    bsz, ta, d = a.shape
    lengths = la + lb
    t = int(lengths.max())
    j = torch.arange(t, device=a.device).view(1, -1)
    src = torch.where(j < la.view(-1, 1), j, ta + j - la.view(-1, 1)).clamp(max=ta + b.shape[1] - 1)
    both = torch.cat([a, b.to(a.dtype)], dim=1)
    out = torch.gather(both, 1, src.unsqueeze(-1).expand(bsz, t, d))
    return out * length_mask(lengths, t).unsqueeze(-1).to(out.dtype), lengths


def first_tokens(x: Tensor, t: int, lengths: Tensor) -> Tensor:
    """The first ``t`` tokens of ``x`` (B, T, D) (zero padded when ``T < t``), zero past ``lengths``."""
    x = x[:, :t] if x.shape[1] >= t else F.pad(x, (0, 0, 0, t - x.shape[1]))
    return x * length_mask(lengths, t).unsqueeze(-1).to(x.dtype)


def columns(maps: Tensor, start: int, width: int) -> Tensor:
    """Columns ``[start, start + width)`` of ``maps`` (..., T), zero padded past ``T``."""
    maps = maps[..., start : start + width]
    return F.pad(maps, (0, width - maps.shape[-1]))


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean of each patient's first ``lengths`` tokens of ``x`` (B, T, D) -> (B, D)."""
    w = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    return (x * w).sum(dim=1) / lengths.view(-1, 1).to(x.dtype)


def attention_rows(attn: NystromAttention, x: Tensor, lengths: Tensor, rows: int) -> Tensor:
    """Nystrom attention of each patient's first ``rows`` tokens over its tokens, ``(B, h, rows, T)``
    float32 (zero past a length), as the ``nystrom-attention`` package computes it for that patient
    alone: ``softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T)`` after front zero padding to a
    multiple of the landmarks. ``x`` is the layer's normalized input. One patient at a time
    (explanations only)."""
    b, t, _ = x.shape
    h, d, m = attn.heads, attn.dim_head, attn.landmarks
    out = x.new_zeros(b, h, rows, t, dtype=torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        for i, n in enumerate(lengths.tolist()):
            qkv = attn.to_qkv(x[i : i + 1, :n].float()).view(1, n, 3, h, d).permute(2, 0, 3, 1, 4)
            q, k = qkv[0] * attn.scale, qkv[1]  # (1, h, n, d)
            if n <= m:
                out[i, :, :, :n] = _short_nystrom_attention(q, k, m, attn.pinv_iterations)[0, :, :rows]
                continue
            p = m * math.ceil(n / m)
            qp, kp = F.pad(q, (0, 0, p - n, 0)), F.pad(k, (0, 0, p - n, 0))
            q_l = qp.reshape(1, h, m, p // m, d).mean(dim=3)
            k_l = kp.reshape(1, h, m, p // m, d).mean(dim=3)
            inv = iterative_pinv(torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1), attn.pinv_iterations)
            left = torch.softmax(q[:, :, :rows] @ k_l.transpose(-1, -2), dim=-1) @ inv
            out[i, :, :, :n] = (left @ torch.softmax(q_l @ kp.transpose(-1, -2), dim=-1))[0, ..., p - n :]
    return out


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` computed in float32 and cast back (the authors' RMSNorm, eps 1e-6)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(
            x.dtype
        )


class TransLayer(nn.Module):
    """``omega * x + NystromAttention(norm(x))`` over per-patient lengths (the authors' ``TransLayer``;
    ``norm`` RMSNorm inside the TransFusion expert, LayerNorm elsewhere)."""

    def __init__(self, cfg: ModelConfig, rms: bool = False) -> None:
        super().__init__()
        dim = cfg.mome_dim
        self.norm = RMSNorm(dim) if rms else nn.LayerNorm(dim)
        self.omega = admin_omega(cfg.mome_admin_layers)
        self.attn = NystromAttention(
            dim,
            heads=cfg.heads,
            dim_head=dim // cfg.heads,
            landmarks=cfg.mome_landmarks,
            pinv_iterations=cfg.pinv_iterations,
            residual_conv_kernel=cfg.residual_conv_kernel,
            dropout=cfg.attn_dropout,
        )

    def forward(
        self, x: Tensor, lengths: Tensor, cls_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        out, a = self.attn(self.norm(x), lengths, return_cls_attention=cls_attention)
        keep = length_mask(lengths, x.shape[1]).unsqueeze(-1)
        return x * self.omega * keep.to(x.dtype) + out, a

    def rows(self, x: Tensor, lengths: Tensor, rows: int) -> Tensor:
        """Attention of the first ``rows`` tokens, mean over heads: ``(B, rows, T)``."""
        return attention_rows(self.attn, self.norm(x), lengths, rows).mean(dim=1)


def snn_block(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    """The authors' ``SNN_Block``: Linear-ELU-AlphaDropout (PyTorch's default init)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ELU(), nn.AlphaDropout(dropout))


class TransFusion(nn.Module):
    """One transformer layer over ``[x1, x2]`` per patient; x1's tokens are returned."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.translayer = TransLayer(cfg, rms=True)

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        seq, lengths = ragged_cat(x1, l1, x2, l2)
        return first_tokens(self.translayer(seq, lengths)[0], x1.shape[1], l1)

    def maps(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        """``(B, T1, T2)``: x1's rows over x2's tokens (x1 all real: the family tokens)."""
        seq, lengths = ragged_cat(x1, l1, x2, l2)
        t1 = x1.shape[1]
        return columns(self.translayer.rows(seq, lengths, t1), t1, x2.shape[1])


class BottleneckTransFusion(nn.Module):
    """Bottleneck tokens read x2 (``attn2`` over ``[bottlenecks, x2]``); x1 reads them (``attn1``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n = cfg.mome_n_bottlenecks
        self.attn1 = TransLayer(cfg)
        self.attn2 = TransLayer(cfg)
        self.register_buffer("bottleneck", torch.rand(1, self.n, cfg.mome_dim))

    def _bottlenecks(self, x2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b = x2.shape[0]
        nb = torch.full_like(l2, self.n)
        seq2, len2 = ragged_cat(self.bottleneck.expand(b, -1, -1).to(x2.dtype), nb, x2, l2)
        return self.attn2(seq2, len2)[0][:, : self.n], nb, seq2, len2

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        z, nb, _, _ = self._bottlenecks(x2, l2)
        seq1, len1 = ragged_cat(x1, l1, z, nb)
        return first_tokens(self.attn1(seq1, len1)[0], x1.shape[1], l1)

    def maps(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        z, nb, seq2, len2 = self._bottlenecks(x2, l2)
        seq1, len1 = ragged_cat(x1, l1, z, nb)
        t1 = x1.shape[1]
        to_bottleneck = columns(self.attn1.rows(seq1, len1, t1), t1, self.n)  # (B, T1, nb)
        to_x2 = columns(self.attn2.rows(seq2, len2, self.n), self.n, x2.shape[1])  # (B, nb, T2)
        return to_bottleneck @ to_x2


class AddFusion(nn.Module):
    """``SNN(RMSNorm(x1)) + mean_tokens SNN(RMSNorm(x2))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.mome_dim
        self.snn1 = snn_block(dim, dim, cfg.snn_dropout)
        self.snn2 = snn_block(dim, dim, cfg.snn_dropout)
        self.norm1 = RMSNorm(dim)
        self.norm2 = RMSNorm(dim)

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        ref = masked_mean(self.snn2(self.norm2(x2)), l2).unsqueeze(1)
        return (self.snn1(self.norm1(x1)) + ref) * length_mask(l1, x1.shape[1]).unsqueeze(-1).to(ref.dtype)

    def maps(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        w = length_mask(l2, x2.shape[1]).float() / l2.view(-1, 1).float()
        return w.unsqueeze(1).expand(-1, x1.shape[1], -1)


class DropX2Fusion(nn.Module):
    """x1 unchanged (the reference modality is dropped)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        return x1

    def maps(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        return x1.new_zeros(x1.shape[0], x1.shape[1], x2.shape[1], dtype=torch.float32)


EXPERT_CLASSES = {
    "trans": TransFusion,
    "bottleneck": BottleneckTransFusion,
    "add": AddFusion,
    "drop": DropX2Fusion,
}


class RoutingNetwork(nn.Module):
    """Linear-RMSNorm-GELU per modality, token means summed, a linear classifier: logits ``(B, E)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.mome_dim

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, dim), RMSNorm(dim), nn.GELU())

        self.fc1, self.fc2 = mlp(), mlp()
        self.clsfer = nn.Linear(dim, len(cfg.mome_experts))

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> Tensor:
        return self.clsfer(masked_mean(self.fc1(x1), l1) + masked_mean(self.fc2(x2), l2))


class MoMELayer(nn.Module):
    """Encode x1 with x2 as reference through the expert the router picks for each patient.

    Returns ``(x1', gate (B, E), probs (B, E))``: hard routing runs each expert on the patients
    routed to it and scales its output by the straight-through gate (value 1); soft routing sums
    every expert weighted by ``probs``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.names = cfg.mome_experts
        self.experts = nn.ModuleDict({name: EXPERT_CLASSES[name](cfg) for name in cfg.mome_experts})
        self.routing_network = RoutingNetwork(cfg)
        self.hard = cfg.mome_routing == "hard"
        self.temperature = cfg.mome_temperature

    def route(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor]:
        """``(gate, probs)``: the straight-through one-hot of the argmax (hard) or the softmax."""
        probs = torch.softmax(self.routing_network(x1, l1, x2, l2).float() / self.temperature, dim=-1)
        if not self.hard:
            return probs, probs
        one_hot = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
        return one_hot - probs.detach() + probs, probs

    def _groups(self, gate: Tensor):
        """``(expert, patient indices)`` for every expert with patients (all of them when soft)."""
        b = gate.shape[0]
        chosen = gate.detach().argmax(dim=-1)
        for e, name in enumerate(self.names):
            idx = (chosen == e).nonzero().flatten() if self.hard else torch.arange(b, device=gate.device)
            if idx.numel():
                yield e, self.experts[name], idx

    def forward(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gate, probs = self.route(x1, l1, x2, l2)
        out = torch.zeros_like(x1)
        for e, expert, idx in self._groups(gate):
            y = expert(x1[idx], l1[idx], x2[idx], l2[idx]).to(x1.dtype)
            out = out.index_add(0, idx, y * gate[idx, e].view(-1, 1, 1).to(x1.dtype))
        return out, gate, probs

    @torch.no_grad()
    def maps(self, x1: Tensor, l1: Tensor, x2: Tensor, l2: Tensor, gate: Tensor) -> Tensor:
        """``(B, T1, T2)`` float32: what x1's tokens read from x2's through the routed experts."""
        out = x1.new_zeros(x1.shape[0], x1.shape[1], x2.shape[1], dtype=torch.float32)
        for e, expert, idx in self._groups(gate):
            m = expert.maps(x1[idx], l1[idx], x2[idx], l2[idx]).float()
            out = out.index_add(0, idx, m * gate[idx, e].view(-1, 1, 1).float())
        return out


class MoME(_Baseline):
    """MoME (Xiong et al., MICCAI 2024): biased progressive encoding with mixture-of-multimodal-experts
    layers; see the module docstring for the architecture, outputs and deviations."""

    modalities = ("m1", "wsi")

    @property
    def gate_names(self) -> tuple[str, ...]:
        """What ``gate``'s columns are: the last MoME layer's fusion experts (the Patient page)."""
        return tuple(f"fusion expert: {name}" for name in self.config.mome_experts)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        _validate(config)
        dim = config.mome_dim
        hidden = config.mome_omic_hidden
        self.sig_networks = nn.ModuleList(
            nn.Sequential(*(snn_block(a, b, config.snn_dropout) for a, b in zip((d, *hidden[:-1]), hidden)))
            for d in config.m1_sizes
        )
        self.wsi_net = nn.Sequential(
            nn.Linear(config.wsi_dim, dim), nn.ReLU(), nn.Dropout(config.wsi_dropout)
        )
        self.path_layers = nn.ModuleList(MoMELayer(config) for _ in range(config.mome_stages))
        self.omic_layers = nn.ModuleList(MoMELayer(config) for _ in range(config.mome_stages))
        self.multi_layer = TransLayer(config)
        self.register_buffer("cls_token", torch.rand(1, 1, dim))
        self.classifier = nn.Linear(dim, config.n_bins)

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        b, n_max, _ = wsi.shape
        omic = torch.stack([net(x) for net, x in zip(self.sig_networks, self._filled(m1))], dim=1)
        lo = torch.full((b,), omic.shape[1], dtype=torch.long, device=wsi.device)
        if wsi_mask is None:
            order, lp = None, torch.full((b,), n_max, dtype=torch.long, device=wsi.device)
        else:  # each patient's real patches first, in their original order
            order = torch.argsort((~wsi_mask).to(torch.int8), dim=1, stable=True)
            wsi = torch.gather(wsi, 1, order.unsqueeze(-1).expand_as(wsi))
            lp = wsi_mask.sum(dim=1)
        path = self.wsi_net(wsi) * length_mask(lp, n_max).unsqueeze(-1).to(wsi.dtype)
        gates, probs = [], []
        for path_layer, omic_layer in zip(self.path_layers, self.omic_layers):
            path, g, p = path_layer(path, lp, omic, lo)
            gates.append(g)
            probs.append(p)
            omic_in = omic
            omic, g, p = omic_layer(omic, lo, path, lp)
            gates.append(g)
            probs.append(p)
        ones = torch.ones_like(lp)
        seq, lengths = ragged_cat(self.cls_token.expand(b, -1, -1).to(path.dtype), ones, path, lp)
        seq, lengths = ragged_cat(seq, lengths, omic, lo)
        h, cls_attn = self.multi_layer(seq, lengths, cls_attention=True)
        logits = self.classifier(h[:, 0])
        wsi_attention = columns(cls_attn.float().mean(dim=1, keepdim=True), 1, n_max)
        co = omic.new_zeros(b, omic.shape[1], n_max, dtype=torch.float32)
        if return_attention:
            co = self.omic_layers[-1].maps(omic_in, lo, path, lp, gates[-1])
        return _output(
            logits,
            cls_m1=omic.mean(dim=1),
            cls_wsi=masked_mean(path, lp),
            gate=gates[-1],
            wsi_attention=_unsort(wsi_attention, order, lp),
            co_attention=_unsort(co, order, lp),
            extras={"gates": torch.stack(gates, dim=1), "router_probs": torch.stack(probs, dim=1)},
        )


def _unsort(maps: Tensor, order: Tensor | None, lengths: Tensor) -> Tensor:
    """Maps ``(B, R, N)`` over compacted patches back to the original patch positions (0 at padding)."""
    n = maps.shape[-1]
    maps = maps * length_mask(lengths, n).unsqueeze(1).to(maps.dtype)
    if order is None:
        return maps
    return maps.new_zeros(maps.shape).scatter(2, order.unsqueeze(1).expand_as(maps), maps)


def _validate(cfg: ModelConfig) -> None:
    """Raise :class:`ConfigError` naming the ``mome_*`` field that cannot build the model."""
    for name in ("mome_dim", "mome_stages", "mome_n_bottlenecks", "mome_landmarks", "mome_admin_layers"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected > 0")
    if cfg.mome_dim % cfg.heads:
        raise ConfigError(f"config field 'mome_dim' = {cfg.mome_dim} is not divisible by heads = {cfg.heads}")
    hidden = cfg.mome_omic_hidden
    if not hidden or any(h <= 0 for h in hidden) or hidden[-1] != cfg.mome_dim:
        raise ConfigError(
            f"config field 'mome_omic_hidden' = {hidden}; expected positive sizes ending in mome_dim = {cfg.mome_dim}"
        )
    experts = cfg.mome_experts
    if not experts or len(set(experts)) != len(experts) or any(e not in EXPERTS for e in experts):
        raise ConfigError(f"config field 'mome_experts' = {experts}; expected distinct names from {EXPERTS}")
    if cfg.mome_routing not in ROUTINGS:
        raise ConfigError(f"config field 'mome_routing' = {cfg.mome_routing!r}; expected one of {ROUTINGS}")
    if not cfg.mome_temperature > 0:
        raise ConfigError(f"config field 'mome_temperature' = {cfg.mome_temperature}; expected > 0")


__all__ = ["MoME", "MoMELayer", "RoutingNetwork", "EXPERTS", "attention_rows", "admin_omega", "ragged_cat"]
