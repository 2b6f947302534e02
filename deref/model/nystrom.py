"""Nystrom attention for batches of bags of different lengths, exact per patient.

The computation follows the ``nystrom-attention`` package used by TransMIL (and so by the
DeReF reference): the sequence is front-padded with zeros to a multiple of the number of
landmarks ``m``; landmarks are means over groups of ``l = ceil(n / m)`` consecutive tokens;
the Moore-Penrose inverse of the landmark kernel is approximated by ``pinv_iterations``
Newton-Schulz steps started from ``A^T / (max col-sum * max row-sum)``; a depthwise
convolution of the values over the sequence is added as a residual.

Differences from the package, all of which leave a single patient's numbers unchanged:

* **Batching.** Each patient keeps its *own* front padding, landmark groups and pinv scale.
  The sequences are laid out right-aligned in a ``(B, L_max)`` canvas; positions left of a
  patient's own padded window are batch padding, excluded from every softmax by a key mask
  and zeroed in the values (so the residual convolution sees the same zeros). A padded
  batch therefore gives the same per-patient outputs as one patient at a time.
* **Speed and memory.** ``softmax(Q Kl^T) @ pinv(A2) @ (softmax(Ql K^T) @ V)`` is computed
  as two ``scaled_dot_product_attention`` calls around a ``m x m`` product, so no
  ``N x m`` attention matrix is materialized (method.md, "Performance and batching facts").
* **Precision.** Under autocast the landmark kernel and its pseudo-inverse stay in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fast_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout as ``F.dropout`` (each value zeroed with probability ``p``, the others
    scaled by ``1 / (1 - p)``), with the CPU mask drawn as ``rand < 1 - p`` in float32: ~2.5x
    faster than ``F.dropout``'s ``bernoulli_`` there (the same distribution, another random
    stream). Other devices use ``F.dropout``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    mask = torch.rand(x.shape, dtype=torch.float32, device=x.device).lt_(1.0 - p).mul_(1.0 / (1.0 - p))
    return x * mask.to(x.dtype)


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Newton-Schulz pseudo-inverse of ``a`` (B, h, m, m), scaled per patient.

    The package scales by the maxima over the *whole tensor* (all patients and heads); a
    batch would then depend on its other members, so the maxima here are per patient (over
    heads and rows), which equals the package for a batch of one.
    """
    abs_a = a.abs()
    col = abs_a.sum(dim=-1).flatten(1).amax(dim=1)  # (B,)
    row = abs_a.sum(dim=-2).flatten(1).amax(dim=1)
    return _newton_schulz(a, a.transpose(-1, -2) / (col * row).view(-1, 1, 1, 1), iters)


def _newton_schulz(a: Tensor, z: Tensor, iters: int) -> Tensor:
    """``iters`` steps of the package's pseudo-inverse iteration of ``a`` from ``z``."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - (az @ (15 * eye - (az @ (7 * eye - az)))))
    return z


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, chunk: int = 4096) -> Tensor:
    """``softmax(q k^T + mask) v`` with unit scale, (B, h, Lq, d).

    float32 uses the fused ``scaled_dot_product_attention`` (fastest on CPU in float32);
    bf16/fp16 use explicit products over chunks of queries (faster there on CPU, whose
    fused kernel gains nothing from low precision), bounding memory to ``chunk x Lk``.
    """
    if q.dtype == torch.float32 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    kt = k.transpose(-1, -2)
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    outs = []
    for start in range(0, q.shape[2], chunk):
        sim = q[:, :, start : start + chunk] @ kt
        if bias is not None:
            sim = sim + bias
        outs.append(torch.softmax(sim, dim=-1) @ v)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def banded_depthwise_conv(v: Tensor, weight: Tensor, block: int = 32) -> Tensor:
    """Depthwise convolution over the sequence, one kernel per head, zero padded.

    Equals ``conv2d(v, weight, padding=(k // 2, 0), groups=h)`` for ``v`` (B, h, L, d) and
    ``weight`` (h, 1, k, 1), computed as banded (Toeplitz) matrix products over blocks of
    ``block`` positions: several times faster on CPU than the depthwise convolution kernel.
    """
    b, h, length, d = v.shape
    k = weight.shape[2]
    r = k // 2
    nb = -(-length // block)
    vp = F.pad(v, (0, 0, r, r + nb * block - length))
    win = vp.unfold(2, block + 2 * r, block)  # (B, h, nb, d, block + 2r)
    i = torch.arange(block, device=v.device).view(-1, 1)
    j = torch.arange(block + 2 * r, device=v.device).view(1, -1)
    off = j - i
    band = weight.view(h, k)[:, off.clamp(0, k - 1)] * ((off >= 0) & (off < k))  # (h, block, block+2r)
    out = torch.einsum("htj,bhndj->bhntd", band.to(v.dtype), win)
    return out.reshape(b, h, nb * block, d)[:, :, :length]


def _landmarks(q: Tensor, k: Tensor, padded: list[int], m: int, uniform: bool) -> tuple[Tensor, Tensor]:
    """Landmarks ``(B, h, m, d)`` of ``q`` and ``k`` (B, h, L, d): means over groups of ``l_i``
    consecutive tokens inside each patient's own (right-aligned) padded window."""
    return _group_means(q, padded, m, uniform), _group_means(k, padded, m, uniform)


def _group_means(x: Tensor, padded: list[int], m: int, uniform: bool) -> Tensor:
    """``(B, h, m, d)`` means of ``x`` (B, h, L, d) over each patient's ``m`` groups."""
    b, h, lmax, d = x.shape
    if uniform:
        grp = lmax // m
        return x.reshape(b, h, m, grp, d).sum(dim=3) / grp
    # unbind, not x[i]: the backward of x[i] allocates a zero tensor of the whole batch per
    # patient (O(B^2) memory traffic); unbind's backward is one stack.
    rows = x.unbind(0)
    parts = []
    for i, p in enumerate(padded):
        grp = p // m
        parts.append(rows[i][:, lmax - p :].reshape(h, m, grp, d).sum(dim=2) / grp)
    return torch.stack(parts)


def _left_align(
    out: Tensor | None, cls_attn: Tensor | None, lengths: Tensor, t: int, lmax: int
) -> tuple[Tensor, Tensor | None]:
    """Right-aligned ``(B, lmax, dim)`` (and ``(B, h, lmax)``) back to left-aligned ``(B, T, ...)``;
    rows past each length are zero."""
    b, h = lengths.shape[0], None if cls_attn is None else cls_attn.shape[1]
    device = lengths.device
    dst = torch.arange(t, device=device).view(1, -1) + (lmax - lengths.view(b, 1))
    keep = torch.arange(t, device=device).view(1, -1) < lengths.view(b, 1)
    dst = dst.clamp(max=lmax - 1)
    if out is not None:
        out = torch.gather(out, 1, dst.unsqueeze(-1).expand(b, t, out.shape[-1]))
        out = out * keep.unsqueeze(-1).to(out.dtype)
    if cls_attn is not None:
        cls_attn = torch.gather(cls_attn, 2, dst.unsqueeze(1).expand(b, h, t)) * keep.unsqueeze(1)
    return out, cls_attn


def _right_align_rows(x: Tensor, lengths: Tensor, padded: list[int], lmax: int) -> tuple[Tensor, Tensor]:
    """``x`` (B, T, c) with each patient right-aligned in ``(B, lmax, c)`` (its tokens at
    ``[lmax - n_i, lmax)``, zeros before), and the key mask ``(B, lmax)`` of its own window
    (real tokens plus its own front padding)."""
    b, t, _ = x.shape
    pos = torch.arange(lmax, device=x.device)
    src = pos.view(1, -1) - (lmax - lengths.view(b, 1))  # (B, lmax) source index in x
    valid_src = src >= 0
    src = src.clamp(min=0, max=t - 1)
    out = torch.gather(x, 1, src.unsqueeze(-1).expand(b, lmax, x.shape[-1]))
    out = out * valid_src.unsqueeze(-1).to(out.dtype)
    start = torch.tensor([lmax - p for p in padded], device=x.device).view(b, 1)
    return out, pos.view(1, -1) >= start


def _short_nystrom_attention(q: Tensor, k: Tensor, m: int, iters: int) -> Tensor:
    """``A1 @ pinv(A2) @ A3`` over the real tokens, (B, h, t, t) float32, for ``t <= m``.

    With ``t <= m`` tokens the package pads ``p = m - t`` zero tokens in front and every
    token is its own landmark, so ``A1 = A2 = A3 = A = softmax(Q K^T)`` over an ``m x m``
    matrix whose ``p`` padding rows are identical and whose ``p`` padding columns are
    identical. In the orthonormal basis ``(1_p / sqrt(p), e_1 .. e_t)`` plus any basis of
    the padding vectors orthogonal to ``1_p``, ``A`` is ``A' (+) 0``: ``A'`` is
    ``(t + 1) x (t + 1)`` (``A'[0, 0] = p a_pp``, ``A'[0, r] = sqrt(p) a_pr``,
    ``A'[r, 0] = sqrt(p) a_rp``, ``A'[r, s] = a_rs``), and ``A^T`` is ``A'^T (+) 0``. The
    Newton-Schulz iteration only multiplies, transposes and adds multiples of the identity,
    which that change of basis preserves, so it runs on ``A'`` with a ``(t + 1)`` identity, and
    the real rows over real columns of ``A Z A`` are those of ``A' Z' A'``: the package's
    numbers (up to rounding) from plain ``8 x 8`` products for 7 genomic tokens instead of
    ``128 x 128`` ones, a few operations per step.
    """
    b, h, t, _ = q.shape
    p = m - t
    sim = q.float() @ k.float().transpose(-1, -2)  # (B, h, t, t) real x real
    mx = sim.amax(dim=-1, keepdim=True).clamp_min(0)  # padding logits are 0
    e = torch.exp(sim - mx)
    ez = torch.exp(-mx)
    denom = p * ez + e.sum(dim=-1, keepdim=True)
    a_rr, a_rp = e / denom, ez / denom  # real rows: over real columns, over each padding column
    # pinv's initial scale: max row sum x max column sum of the full m x m matrix (a padding
    # row is uniform, 1 / m per column).
    rows = a_rr.sum(dim=-1) + p * a_rp.squeeze(-1)  # (B, h, t)
    cols = a_rr.sum(dim=-2) + p / m  # (B, h, t): real columns
    if p > 0:
        rows = torch.cat([rows, rows.new_ones(b, h, 1)], dim=-1)  # a padding row sums to 1
        cols = torch.cat([cols, a_rp.sum(dim=-2) + p / m], dim=-1)  # a padding column
        sp = math.sqrt(p)
        top = torch.cat([q.new_full((b, h, 1, 1), p / m), q.new_full((b, h, 1, t), sp / m)], dim=-1)
        a = torch.cat([top, torch.cat([sp * a_rp, a_rr], dim=-1)], dim=-2)  # A' (B, h, t+1, t+1)
    else:
        a = a_rr
    scale = rows.flatten(1).amax(dim=1) * cols.flatten(1).amax(dim=1)
    z = _newton_schulz(a, a.transpose(-1, -2) / scale.view(-1, 1, 1, 1), iters)
    full = (a @ z) @ a  # A1 @ pinv(A2) @ A3
    return full[..., -t:, -t:] if p > 0 else full


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention over ``(B, T, dim)`` with per-patient lengths.

    Parameters mirror the package: ``to_qkv`` (no bias), ``to_out`` (Linear + Dropout),
    ``res_conv`` (depthwise ``(kernel, 1)`` conv over the sequence, one channel per head).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int | None = None,
        landmarks: int = 128,
        pinv_iterations: int = 6,
        residual_conv_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        dim_head = dim_head or dim // heads
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.landmarks = landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        k = residual_conv_kernel
        self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        *,
        return_cls_attention: bool = False,
        cls_only: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend within each patient's first ``lengths[b]`` tokens of ``x`` (B, T, dim).

        Returns the output (B, T, dim) — rows past a patient's length are zero — and, when
        ``return_cls_attention``, the attention row of each patient's first token (its class
        token) over its own tokens, ``(B, heads, T)``, computed as ``softmax(q0 Kl^T) @
        pinv(A2) @ softmax(Ql K^T)`` without forming any ``T x T`` or ``T x m`` matrix.

        ``cls_only``: the output of each patient's first token only, ``(B, 1, dim)`` (the same
        numbers as ``forward(x)[:, :1]``): the queries are projected for that token and the
        landmarks only (a landmark is a mean of queries, and the projection is linear), and
        the attention, residual convolution and output projection run for that one row.
        """
        b, t, _ = x.shape
        h, m, d = self.heads, self.landmarks, self.dim_head
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
        n = lengths.tolist()
        padded = [m * math.ceil(ni / m) for ni in n]  # each patient's own padded length
        lmax = max(padded)
        uniform = all(ni == t for ni in n)
        if uniform and t <= m:
            out, cls_attn = self._short_forward(x, return_cls_attention)
            return (out[:, :1] if cls_only else out), cls_attn
        if cls_only:
            return self._cls_forward(x, lengths, n, padded, lmax, uniform, return_cls_attention)
        if uniform:
            qkv, key_mask = self._uniform_qkv(x, lmax), None
        else:
            qkv, key_mask = self._right_aligned_qkv(x, lengths, padded, lmax)

        # (B, h, L, d); q is pre-scaled (the scale is folded into the projection's q rows)
        q, k, v = qkv.view(b, lmax, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        q_l, k_l = _landmarks(q, k, padded, m, uniform)
        with torch.autocast(device_type=x.device.type, enabled=False):
            a2 = torch.softmax(q_l.float() @ k_l.float().transpose(-1, -2), dim=-1)
            a2_inv = iterative_pinv(a2, self.pinv_iterations)  # (B, h, m, m) fp32

        attn_mask = None if key_mask is None else key_mask.view(b, 1, 1, lmax)
        a3v = _attention(q_l, k, v, attn_mask)  # (B, h, m, d)
        inner = (a2_inv @ a3v.float()).to(q.dtype)
        out = _attention(q, k_l, inner, None)  # (B, h, L, d)
        out = out + banded_depthwise_conv(v, self.res_conv.weight)
        out = self._project_out(out.transpose(1, 2).reshape(b, lmax, h * d))

        cls_attn = None
        if return_cls_attention:
            cls_pos = torch.tensor([lmax - ni for ni in n], device=q.device)
            idx = cls_pos.view(b, 1, 1, 1).expand(b, h, 1, d)
            cls_attn = self._cls_attention(torch.gather(q, 2, idx), k, k_l, q_l, a2_inv, key_mask, lmax)
        if uniform:
            return out[:, lmax - t :], None if cls_attn is None else cls_attn[..., lmax - t :]
        return _left_align(out, cls_attn, lengths, t, lmax)

    def _cls_forward(
        self,
        x: Tensor,
        lengths: Tensor,
        n: list[int],
        padded: list[int],
        lmax: int,
        uniform: bool,
        want_attn: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """The ``cls_only`` forward: ``(B, 1, dim)`` for each patient's first token."""
        b, t, dim = x.shape
        h, m, d = self.heads, self.landmarks, self.dim_head
        dtype = self._compute_dtype(x)
        w = self._qkv_weight().to(dtype)  # (3 h d, dim): rows q (pre-scaled), k, v
        w_q, w_kv = w[: h * d], w[h * d :]
        # Each patient right-aligned in its padded window (zeros before), as the full forward.
        if uniform:
            xa, key_mask = F.pad(x.to(dtype), (0, 0, lmax - t, 0)), None
        else:
            xa, key_mask = _right_align_rows(x.to(dtype), lengths, padded, lmax)
        kv = xa @ w_kv.t()  # (B, lmax, 2 h d); zero rows stay zero (no bias)
        k, v = kv.view(b, lmax, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, L, d)
        # Landmarks: group means of the projected tokens = projections of the group means.
        x_l = _group_means(xa.unsqueeze(1), padded, m, uniform)  # (B, 1, m, dim)
        k_l = _group_means(k, padded, m, uniform)  # (B, h, m, d)
        q_l = (x_l.squeeze(1) @ w_q.t()).view(b, m, h, d).transpose(1, 2)
        q_cls = (x[:, :1].to(dtype) @ w_q.t()).view(b, 1, h, d).transpose(1, 2)
        with torch.autocast(device_type=x.device.type, enabled=False):
            a2 = torch.softmax(q_l.float() @ k_l.float().transpose(-1, -2), dim=-1)
            a2_inv = iterative_pinv(a2, self.pinv_iterations)  # (B, h, m, m) fp32
        attn_mask = None if key_mask is None else key_mask.view(b, 1, 1, lmax)
        a3v = _attention(q_l, k, v, attn_mask)  # (B, h, m, d)
        inner = (a2_inv @ a3v.float()).to(q_l.dtype)
        out = _attention(q_cls, k_l, inner, None)  # (B, h, 1, d)
        # Residual conv at the class token (position c = lmax - n_i): the taps before it see
        # the zero front padding, so only taps r..k-1 over v[c .. c + r] count.
        kern = self.res_conv.weight.view(h, -1)
        r = kern.shape[1] // 2
        cls_pos = torch.tensor([lmax - ni for ni in n], device=x.device).view(b, 1)
        pos = cls_pos + torch.arange(r + 1, device=x.device).view(1, -1)  # (B, r + 1)
        inside = (pos < lmax).to(v.dtype)
        win = torch.gather(v, 2, pos.clamp(max=lmax - 1).view(b, 1, r + 1, 1).expand(b, h, r + 1, d))
        conv = torch.einsum("hj,bhjd->bhd", kern[:, r:].to(v.dtype), win * inside.view(b, 1, r + 1, 1))
        out = out + conv.unsqueeze(2)
        out = self._project_out(out.transpose(1, 2).reshape(b, 1, h * d))
        cls_attn = None
        if want_attn:
            cls_attn = self._cls_attention(q_cls, k, k_l, q_l, a2_inv, key_mask, lmax)
            if uniform:
                cls_attn = cls_attn[..., lmax - t :]
            else:
                cls_attn = _left_align(None, cls_attn, lengths, t, lmax)[1]
        return out, cls_attn

    def _uniform_qkv(self, x: Tensor, lmax: int) -> Tensor:
        """``(B, lmax, 3 h d)`` projections of equal-length sequences, front zero padded."""
        b, t, _ = x.shape
        h, d = self.heads, self.dim_head
        if b == 1 and not torch.is_grad_enabled():
            # The projection is written straight into the padded buffer (no extra copy); only
            # the padding rows are zeroed.
            qkv = x.new_empty(b, lmax, 3 * h * d, dtype=self._compute_dtype(x))
            qkv[0, : lmax - t].zero_()
            w = self._qkv_weight().t().to(qkv.dtype)
            torch.matmul(x[0].to(qkv.dtype), w, out=qkv[0, lmax - t :])
            return qkv
        # Pad the (narrower) input, not the projections: zero rows project to zero rows.
        return F.linear(F.pad(x, (0, 0, lmax - t, 0)), self._qkv_weight())

    def _project_out(self, x: Tensor) -> Tensor:
        """``to_out`` (Linear, Dropout), the dropout drawn by :func:`fast_dropout`."""
        return fast_dropout(self.to_out[0](x), self.to_out[1].p, self.training)

    def _qkv_weight(self) -> Tensor:
        """``to_qkv.weight`` (3 h d, dim) with the query rows multiplied by the attention scale,
        so that the projection gives scaled queries (one pass over ``q`` fewer)."""
        w = self.to_qkv.weight
        hd = self.heads * self.dim_head
        return torch.cat([w[:hd] * self.scale, w[hd:]])

    def _right_aligned_qkv(
        self, x: Tensor, lengths: Tensor, padded: list[int], lmax: int
    ) -> tuple[Tensor, Tensor]:
        """Projections ``(B, lmax, 3 h d)`` with each patient right-aligned, and its key mask
        (see :func:`_right_align_rows`)."""
        return _right_align_rows(F.linear(x, self._qkv_weight()), lengths, padded, lmax)

    def _short_forward(self, x: Tensor, return_cls_attention: bool) -> tuple[Tensor, Tensor | None]:
        """Exact shortcut for sequences no longer than the number of landmarks (see
        :func:`_short_nystrom_attention`)."""
        b, t, _ = x.shape
        h, d = self.heads, self.dim_head
        q, k, v = self.to_qkv(x).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, t, d)
        q = q * self.scale
        with torch.autocast(device_type=x.device.type, enabled=False):
            attn = _short_nystrom_attention(q, k, self.landmarks, self.pinv_iterations)
            out = attn.to(v.dtype) @ v
        out = out + banded_depthwise_conv(v, self.res_conv.weight)
        out = self._project_out(out.transpose(1, 2).reshape(b, t, h * d))
        cls_attn = attn[..., 0, :] if return_cls_attention else None
        return out, cls_attn

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return x.dtype

    def _cls_attention(self, q_cls, k, k_l, q_l, a2_inv, key_mask, lmax) -> Tensor:
        """Attention row of each patient's class token (queries ``q_cls`` (B, h, 1, d)) over
        the padded window, (B, h, L)."""
        b = q_cls.shape[0]
        # A display output: nothing differentiates it, so no graph is kept (the attribution
        # forwards run with gradients on), and the (B, h, m, L) softmax is done in place:
        # row @ softmax(S) = (row / Z) @ exp(S - max), one pass over S fewer.
        with torch.no_grad(), torch.autocast(device_type=q_cls.device.type, enabled=False):
            q_cls = q_cls.float()  # (B, h, 1, d)
            row = torch.softmax(q_cls @ k_l.float().transpose(-1, -2), dim=-1) @ a2_inv  # (B,h,1,m)
            sim3 = q_l.float() @ k.float().transpose(-1, -2)  # (B, h, m, L)
            if key_mask is not None:
                sim3.masked_fill_(~key_mask.view(b, 1, 1, lmax), float("-inf"))
            sim3.sub_(sim3.amax(dim=-1, keepdim=True)).exp_()
            row = row / sim3.sum(dim=-1).unsqueeze(-2)  # (B, h, 1, m) / (B, h, 1, m)
            return (row @ sim3).squeeze(2)  # (B, h, L)

    def cls_attention(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class-token attention over tokens, ``(B, heads, T)`` (see ``forward``)."""
        return self.forward(x, lengths, return_cls_attention=True)[1]
