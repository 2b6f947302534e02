"""Modality encoders: gene-family SNNs / MRI projections or 3D ResNet + token transformer, and TransMIL.

Shapes: B patients, N patches per bag (padded), D patch-feature width, C = ``c1`` (256).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deref.model.config import ModelConfig
from deref.model.nystrom import NystromAttention, fast_dropout
from deref.model.resnet3d import ResNet3d, cubes, resnet3d_out_dim

#: Momentum of the running mean token while training (as BatchNorm's running statistics).
MEAN_TOKEN_MOMENTUM = 0.1


def missing_rows(x: Tensor) -> Tensor:
    """``(B,)`` bool: rows of ``x`` ``(B, ...)`` given entirely as NaN (a missing input)."""
    return torch.isnan(x).flatten(1).all(dim=1)


def missing_bags(wsi: Tensor, mask: Tensor | None) -> Tensor:
    """``(B,)`` bool: patients whose real patches are all NaN (a missing slide, ``allow_missing``)."""
    nan = torch.isnan(wsi).all(dim=2)
    return (nan | ~mask).all(dim=1) if mask is not None else nan.all(dim=1)


class MeanToken(nn.Module):
    """The training mean of ``G`` tokens ``(G, C)`` that may be missing, put in their place.

    ``substitute(tokens (B, G, C), missing (B, G))`` returns the tokens with each missing one
    replaced by the mean. While training, the mean is a running mean (momentum
    :data:`MEAN_TOKEN_MOMENTUM`) of the present tokens of each batch, detached: a missing input
    contributes nothing and receives no gradient. After a fold's training the trainer sets it to the
    exact mean over the fold's training patients (:meth:`set`), which prediction then uses. A
    buffer: it is saved with the checkpoint.
    """

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(n, dim))
        self.register_buffer("started", torch.zeros(n, dtype=torch.bool))

    @torch.no_grad()
    def _update(self, tokens: Tensor, present: Tensor) -> None:
        w = present.to(tokens.dtype).unsqueeze(-1)  # (B, G, 1)
        count = w.sum(dim=0)  # (G, 1)
        seen = count.squeeze(-1) > 0
        if not bool(seen.any()):
            return
        mean = (tokens.detach() * w).sum(dim=0) / count.clamp_min(1)
        m = torch.where(self.started, MEAN_TOKEN_MOMENTUM, 1.0).unsqueeze(-1).to(mean.dtype)
        new = (1 - m) * self.value.to(mean.dtype) + m * mean
        self.value.copy_(torch.where(seen.unsqueeze(-1), new, self.value.to(mean.dtype)))
        self.started |= seen

    def substitute(self, tokens: Tensor, missing: Tensor) -> Tensor:
        if self.training:
            self._update(tokens, ~missing)
        if not bool(missing.any()):
            return tokens
        return torch.where(missing.unsqueeze(-1), self.value.to(tokens.dtype).expand_as(tokens), tokens)

    @torch.no_grad()
    def set(self, value: Tensor) -> None:
        self.value.copy_(value.to(self.value))
        self.started.fill_(True)


def init_snn_(module: nn.Module) -> None:
    """Self-normalizing init (MCAT's ``init_max_weights``): N(0, 1/fan_in) weights, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.weight.shape[1]))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SNNBlock(nn.Module):
    """Linear(d, hidden)-ELU-AlphaDropout, Linear(hidden, out)-ELU-AlphaDropout: (B, d) -> (B, out)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.drop1 = nn.AlphaDropout(dropout)
        self.drop2 = nn.AlphaDropout(dropout)
        init_snn_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(F.elu(self.fc1(x)))
        return self.drop2(F.elu(self.fc2(x)))


class TransLayer(nn.Module):
    """Pre-norm Nystrom attention with a residual: ``x + attn(LN(x))``, (B, T, C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.c1)
        self.attn = NystromAttention(
            cfg.c1,
            heads=cfg.heads,
            landmarks=cfg.landmarks,
            pinv_iterations=cfg.pinv_iterations,
            residual_conv_kernel=cfg.residual_conv_kernel,
            dropout=cfg.attn_dropout,
        )

    def forward(
        self, x: Tensor, lengths: Tensor | None, return_cls_attention: bool = False, cls_only: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``cls_only``: the output of each sequence's first token only, ``(B, 1, C)``."""
        out, attn = self.attn(
            self.norm(x), lengths, return_cls_attention=return_cls_attention, cls_only=cls_only
        )
        return (x[:, :1] if cls_only else x) + out, attn


class TokenEncoder(nn.Module):
    """Class token + 2 Nystrom layers + LayerNorm over a fixed set of tokens: (B, k, C) -> (B, C)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.c1))
        self.layer1 = TransLayer(cfg)
        self.layer2 = TransLayer(cfg)
        self.norm = nn.LayerNorm(cfg.c1)

    def forward(self, tokens: Tensor) -> Tensor:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        x, _ = self.layer1(x, None)
        x, _ = self.layer2(x, None)
        return self.norm(x)[:, 0]


class CubeTokens(nn.Module):
    """ROI cubes of S sequences -> one token per sequence: ``S x (B, G**3)`` -> ``(B, S, C1)``.

    A 3D ResNet (:class:`~deref.model.resnet3d.ResNet3d`; one shared by every sequence, or
    one per sequence when ``resnet3d_shared`` is False) pools each cube ``(B, 1, G, G, G)``
    into a vector, and a per-sequence projection (Linear-ELU-AlphaDropout, as the frozen
    vectors get) maps it to ``c1``. The shared net runs once over the ``B * S`` cubes of a
    batch; its GroupNorm treats every cube on its own, so this equals per-cube runs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.grid = cfg.mri_grid
        n = len(cfg.m1_sizes)

        def net() -> ResNet3d:
            return ResNet3d(cfg.resnet3d_depth, cfg.resnet3d_width, in_channels=1)

        self.backbone = net() if cfg.resnet3d_shared else None
        self.backbones = None if cfg.resnet3d_shared else nn.ModuleList(net() for _ in range(n))
        d = resnet3d_out_dim(cfg.resnet3d_depth, cfg.resnet3d_width)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(d, cfg.c1), nn.ELU(), nn.AlphaDropout(cfg.snn_dropout)) for _ in range(n)
        )

    def pooled(self, m1: list[Tensor]) -> list[Tensor]:
        """One pooled ResNet vector ``(B, out_dim)`` per sequence."""
        if self.backbone is None:
            return [net(cubes(x, self.grid)) for net, x in zip(self.backbones, m1)]
        b = m1[0].shape[0]
        return list(self.backbone(torch.cat([cubes(x, self.grid) for x in m1], dim=0)).split(b, dim=0))

    def forward(self, m1: list[Tensor]) -> Tensor:
        return torch.stack([p(v) for p, v in zip(self.proj, self.pooled(m1))], dim=1)


class M1Encoder(nn.Module):
    """Modality 1 (genomics or MRI) -> class token (B, C).

    Genomics: one SNN per gene family (``m1_sizes``), each giving a token. MRI vectors
    (``mri_encoder="vectors"``): one learned projection (Linear-ELU-AlphaDropout) per MRI
    sequence vector. MRI cubes (``mri_encoder="resnet3d"``): a 3D ResNet trained with the model,
    then a per-sequence projection (:class:`CubeTokens`). Then the token encoder.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.m1_kind
        self.cube_tokens = None
        if cfg.m1_kind == "genomic":
            self.token_nets = nn.ModuleList(
                SNNBlock(d, cfg.snn_hidden, cfg.c1, cfg.snn_dropout) for d in cfg.m1_sizes
            )
        elif cfg.mri_encoder == "resnet3d":
            self.token_nets = None
            self.cube_tokens = CubeTokens(cfg)
        else:
            self.token_nets = nn.ModuleList(
                nn.Sequential(nn.Linear(d, cfg.c1), nn.ELU(), nn.AlphaDropout(cfg.snn_dropout))
                for d in cfg.m1_sizes
            )
        self.encoder = TokenEncoder(cfg)
        self.mean_token = MeanToken(len(cfg.m1_sizes), cfg.c1) if cfg.allow_missing else None

    def raw_tokens(self, m1: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """``(tokens (B, k, C), missing (B, k) or None)``: a missing group (a NaN row, with
        ``allow_missing``) is encoded from zeros here; :meth:`tokens` replaces its token."""
        missing = None
        if self.mean_token is not None:
            missing = torch.stack([missing_rows(x) for x in m1], dim=1)
            m1 = [torch.nan_to_num(x, nan=0.0) for x in m1]
        if self.cube_tokens is not None:
            return self.cube_tokens(m1), missing
        return torch.stack([net(x) for net, x in zip(self.token_nets, m1)], dim=1), missing

    def tokens(self, m1: list[Tensor]) -> Tensor:
        """(B, k, C): one token per group (a missing group's: the training mean token)."""
        tokens, missing = self.raw_tokens(m1)
        return tokens if missing is None else self.mean_token.substitute(tokens, missing)

    def forward(self, m1: list[Tensor]) -> Tensor:
        return self.encoder(self.tokens(m1))


class _DepthwiseConv2d(torch.autograd.Function):
    """``conv2d(x, w, b, padding, groups=C)`` for a depthwise ``w`` (C, 1, kh, kw) with "same"
    padding ``(kh // 2, kw // 2)``, whose weight gradient is one grouped convolution of the
    input with the output gradient (``dL/dw[c, i, j] = sum_{b,p,q} x_pad[b, c, p + i, q + j]
    g[b, c, p, q]``). On CPU the built-in depthwise weight gradient is ~10x slower than that
    (PPEG at 10k patches: ~125 ms against ~10 ms per backward, one thread)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        ctx.has_bias = b is not None
        return F.conv2d(x, w, b, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        pad = list(ctx.padding)
        bsz, c = x.shape[:2]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                grad, x, w, None, [1, 1], pad, [1, 1], False, [0, 0], c, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            # One grouped convolution per patient (its grid as the input, its output gradient as
            # C filters), summed: for a batch ~5x faster than one convolution over the batch's
            # B x C channels with (C, B, H, W) filters (8 patients at 8k patches: 0.12 s against
            # 0.7 s); the same sums, added in another order.
            gw = sum(
                F.conv2d(x[i : i + 1], grad[i].unsqueeze(1).contiguous(), padding=pad, groups=c)
                for i in range(bsz)
            ).view_as(w)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None


def depthwise_conv2d(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """Depthwise "same" convolution of ``x`` (B, C, H, W) with ``w`` (C, 1, kh, kw): the fast
    weight gradient (:class:`_DepthwiseConv2d`) when one is needed on CPU, else ``F.conv2d``."""
    pad = (w.shape[2] // 2, w.shape[3] // 2)
    need = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
    if x.device.type == "cpu" and torch.is_grad_enabled() and need:
        return _DepthwiseConv2d.apply(x, w, b, pad)
    return F.conv2d(x, w, b, padding=pad, groups=x.shape[1])


class PPEG(nn.Module):
    """TransMIL's positional encoding: ``x + conv7(x) + conv5(x) + conv3(x)`` (depthwise).

    The three convolutions and the identity are one linear map, so they run as a single
    depthwise 7x7 convolution whose kernel is assembled from the three (method.md).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def fused_kernel(self) -> tuple[Tensor, Tensor]:
        w = (
            self.conv7.weight
            + F.pad(self.conv5.weight, (1, 1, 1, 1))
            + F.pad(self.conv3.weight, (2, 2, 2, 2))
        )
        ident = torch.zeros_like(w)
        ident[:, :, 3, 3] = 1.0
        return w + ident, self.conv7.bias + self.conv5.bias + self.conv3.bias

    #: True on the attributions' copy (``deref.explain.attribution``): the fused kernel is built
    #: without autograd, so a backward computes the input's gradient only (the kernel's would be
    #: a convolution with an H x W kernel, ~0.1 s per backward at 10k patches in bf16).
    frozen_kernel: bool = False

    def forward(self, grid: Tensor) -> Tensor:
        """grid: (B, C, H, W) -> (B, C, H, W) (any memory format; channels-last is the
        encoder's: a free view of its (B, H * W, C) tokens)."""
        if self.frozen_kernel:
            with torch.no_grad():
                w, b = self.fused_kernel()
        else:
            w, b = self.fused_kernel()
        dev = grid.device.type
        if dev == "cpu" and torch.is_grad_enabled() and (grid.requires_grad or w.requires_grad):
            # The conv's dtype under autocast is the autocast dtype (as F.conv2d's would be).
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else grid.dtype
            with torch.autocast(device_type=dev, enabled=False):
                return depthwise_conv2d(grid.to(dtype), w.to(dtype), b.to(dtype))
        return F.conv2d(grid, w.to(grid.dtype), b.to(grid.dtype), padding=3, groups=grid.shape[1])


class WSIEncoder(nn.Module):
    """Patch-feature MLP + TransMIL: bags (B, N, D) with a validity mask -> class token (B, C).

    Each bag is completed to a square ``side = ceil(sqrt(n))`` by repeating its first
    tokens (as the reference does), the class token is prepended, and the squares of a
    batch are placed on a zero canvas for the positional convolution, so every patient is
    encoded exactly as it would be alone.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.wsi_dim, cfg.c1)
        self.fc2 = nn.Linear(cfg.c1, cfg.c1)
        self.drop1 = nn.Dropout(cfg.wsi_dropout)
        self.drop2 = nn.Dropout(cfg.wsi_dropout)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.c1))
        self.layer1 = TransLayer(cfg)
        self.pos_layer = PPEG(cfg.c1)
        self.layer2 = TransLayer(cfg)
        self.norm = nn.LayerNorm(cfg.c1)
        self.mean_token = MeanToken(1, cfg.c1) if cfg.allow_missing else None

    def mlp(self, x: Tensor) -> Tensor:
        """fc1-ReLU-Dropout-fc2-ReLU-Dropout (the dropouts drawn by :func:`fast_dropout`)."""
        # Not in place: the attributions read fc1's output as a leaf (deref.explain.attribution).
        x = fast_dropout(F.relu(self.fc1(x)), self.drop1.p, self.training)
        return fast_dropout(F.relu(self.fc2(x)), self.drop2.p, self.training)

    def forward(
        self, wsi: Tensor, mask: Tensor | None = None, *, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Encode bags.

        Returns the class token (B, C) and, with ``return_attention``, the class token's
        attention over the original patches in each Nystrom layer, ``(B, 2, N)`` (mean over
        heads; attention on a repeated square-completion token is added to the patch it
        copies; zero at masked positions). With ``allow_missing``, a patient whose patches are
        all NaN has no slide: its class token is the training mean token (zero attention).
        """
        cls, attn, missing = self.raw_cls(wsi, mask, return_attention)
        if missing is None:
            return cls, attn
        cls = self.mean_token.substitute(cls.unsqueeze(1), missing.unsqueeze(1)).squeeze(1)
        if attn is not None and bool(missing.any()):
            attn = attn.masked_fill(missing.view(-1, 1, 1), 0.0)
        return cls, attn

    def raw_cls(
        self, wsi: Tensor, mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(class token, attention, missing (B,) or None)`` before a missing slide's token is
        replaced (:meth:`forward` replaces it): with ``allow_missing`` a NaN bag is encoded from zeros."""
        if self.mean_token is None:
            return (*self._encode(wsi, mask, return_attention), None)
        missing = missing_bags(wsi, mask)
        return (*self._encode(torch.nan_to_num(wsi, nan=0.0), mask, return_attention), missing)

    def _encode(
        self, wsi: Tensor, mask: Tensor | None, return_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        b, n_max, _ = wsi.shape
        dev = wsi.device
        if mask is None:
            lengths = torch.full((b,), n_max, dtype=torch.long, device=dev)
            h = self.mlp(wsi)  # (B, N, C)
            order = None
        else:
            lengths = mask.sum(dim=1)
            # Stable compaction: each patient's valid tokens first, in their original order.
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
            n_valid = int(lengths.max())
            flat = self.mlp(wsi[mask])  # only real patches go through the MLP
            slot = torch.arange(n_valid, device=dev).view(1, -1) < lengths.view(-1, 1)
            h = flat.new_zeros(b, n_valid, flat.shape[-1])
            h[slot] = flat
            n_max = n_valid

        n_list = lengths.tolist()
        sides = [math.ceil(math.sqrt(n)) for n in n_list]
        t_list = [s * s for s in sides]
        t_max = max(t_list)
        # Square completion by repeating the first tokens: token j <- j if j < n else j - n.
        j = torch.arange(t_max, device=dev).view(1, -1)
        src = torch.where(j < lengths.view(-1, 1), j, j - lengths.view(-1, 1)).clamp(0, n_max - 1)
        valid = j < torch.tensor(t_list, device=dev).view(-1, 1)
        cls_tok = self.cls_token.expand(b, -1, -1).to(h.dtype)
        if len(set(n_list)) == 1 and n_list[0] == n_max:  # equal lengths: one copy, no gather
            x = torch.cat([cls_tok, h, h[:, : t_max - n_max]], dim=1)
        else:
            tokens = torch.gather(h, 1, src.unsqueeze(-1).expand(b, t_max, h.shape[-1]))
            tokens = tokens * valid.unsqueeze(-1).to(tokens.dtype)
            x = torch.cat([cls_tok, tokens], dim=1)
        seq_len = torch.tensor([t + 1 for t in t_list], device=dev)
        uniform = len(set(t_list)) == 1
        seq_arg = None if uniform else seq_len

        x, a1 = self.layer1(x, seq_arg, return_attention)
        x = torch.cat([x[:, :1], self._ppeg(x[:, 1:], sides, uniform)], dim=1)
        # Only the class token leaves the last layer: it alone is computed there.
        x, a2 = self.layer2(x, seq_arg, return_attention, cls_only=True)
        cls = self.norm(x[:, 0])
        if not return_attention:
            return cls, None
        attn = torch.stack([a1, a2], dim=1).mean(dim=2)[..., 1:]  # (B, 2, t_max) over tokens
        # Fold attention on square-completion copies back onto the patches they copy.
        folded = attn.new_zeros(b, 2, n_max)
        folded.scatter_add_(2, src.unsqueeze(1).expand(b, 2, t_max), attn * valid.unsqueeze(1))
        if order is not None:
            full = attn.new_zeros(b, 2, wsi.shape[1])
            slot = torch.arange(n_max, device=dev).view(1, -1) < lengths.view(-1, 1)
            idx = order[:, :n_max]
            full.scatter_add_(2, idx.unsqueeze(1).expand(b, 2, n_max), folded * slot.unsqueeze(1))
            folded = full
        return cls, folded

    def _ppeg(self, tokens: Tensor, sides: list[int], uniform: bool) -> Tensor:
        """Apply PPEG to each patient's square of tokens (B, T_max, C), row-major fold."""
        b, t_max, c = tokens.shape
        # Channels-last grids: (B, H, W, C) memory viewed as (B, C, H, W), no transposes.
        if uniform:
            s = sides[0]
            grid = tokens.reshape(b, s, s, c).permute(0, 3, 1, 2)
            return self.pos_layer(grid).permute(0, 2, 3, 1).reshape(b, s * s, c)
        s_max = max(sides)
        # Per-patient pieces through unbind / pad / stack, not indexed writes and reads: their
        # backwards would allocate a zero tensor of the whole batch per patient (O(B^2)).
        rows = tokens.unbind(0)
        canvas = torch.stack(
            [
                F.pad(rows[i][: s * s].reshape(s, s, c), (0, 0, 0, s_max - s, 0, s_max - s))
                for i, s in enumerate(sides)
            ]
        )
        conv = self.pos_layer(canvas.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).unbind(0)  # B x (H, W, C)
        return torch.stack(
            [F.pad(conv[i][:s, :s].reshape(s * s, c), (0, 0, 0, t_max - s * s)) for i, s in enumerate(sides)]
        )
