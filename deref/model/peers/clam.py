"""CLAM-SB and CLAM-MB: clustering-constrained attention MIL, for survival.

Lu, Williamson, Chen, Chen, Barbieri & Mahmood, "Data-efficient and weakly supervised
computational pathology on whole-slide images", Nature Biomedical Engineering 5, 555-570
(2021). WSI only.

What makes it itself:

* **Gated attention pooling** (Ilse et al. 2018) over the patch embeddings
  ``h = Dropout(ReLU(Linear(wsi_dim, clam_hidden)))``: ``a = tanh(V h) * sigmoid(U h)``,
  score ``w^T a``, softmax over the patient's real patches, bag vector ``M = sum_n A_n h_n``.
* **Single branch (SB) vs one branch per output (MB)**. CLAM-SB has one attention branch and
  a linear head ``Linear(clam_hidden, n_bins)`` on its bag vector; CLAM-MB has one attention
  branch per output (here: per time bin) and one ``Linear(clam_hidden, 1)`` per branch, logit
  ``k`` read from branch ``k``'s bag vector. Logits ``(B, n_bins)`` -> hazards = sigmoid, as
  the survival field's copies (MOTCat, MoME ``models/model_clam.py``) and all our models.
* **Instance-level clustering** (the auxiliary loss, :meth:`auxiliary_loss`): one
  ``Linear(clam_hidden, 2)`` instance classifier per class. For the patient's class ``y``,
  the ``k`` most attended patches of the in-class branch (SB: the only branch; MB: branch
  ``y``) get pseudo-label 1 and the ``k`` least attended get 0, under classifier ``y``. With
  ``clam_subtyping``, for every other class ``c`` the ``k`` most attended patches of branch
  ``c`` (SB: the only branch) get label 0 under classifier ``c``, and the sum is divided by
  the number of classes (the authors' subtyping mode). The loss per instance is the smooth
  top-1 SVM (Berrada et al. 2018, alpha = tau = 1, the ``topk`` package's SmoothTop1SVM with
  its switch to the hard hinge when the margin exceeds ``tau log 1000``) or cross-entropy.
  The selection is by attention (indices, no gradient); the loss trains the embedding and the
  instance classifiers.

Survival: the "class" is the patient's discretized survival bin ``bins`` (the label the
survival copies hand ``F.one_hot(label, n_classes)`` with ``n_classes = n_bins``); censored
patients are included with their (censoring-time) bin, as the copies would. Neither survival
copy actually trains the instance loss (their ``trainer/mil_trainer.py`` calls the model
without ``instance_eval`` and their ``utils/core_utils.py`` never builds CLAM), so this follows
the classification original: total = ``bag_weight * bag + (1 - bag_weight) * inst`` with
``bag_weight = 0.7``. Our loop adds ``nll + clam_inst_weight * inst``; ``clam_inst_weight =
0.3 / 0.7`` is that loss divided by 0.7, the same direction of descent (Adam is invariant to
the overall factor up to its epsilon; the L2 weight decay weighs 1/0.7 more, relatively).

Authors' code checked (and run on CPU for the parameter counts): mahmoodlab/CLAM
``models/model_clam.py`` (CLAM_SB / CLAM_MB, ``gate=True, size_arg="small", dropout=0.25,
k_sample=8``; ``main.py``: ``--bag_weight 0.7``, ``--B 8``; README's runs: ``--inst_loss svm``),
and the survival copies Innse/MOTCat and BearCleverProud/MoME ``models/model_clam.py``
(identical: ``size_dict["small"] = [1024, 256, 256]``, logits -> sigmoid hazards).

Deviations, and why:

* **Batched**: top-k / bottom-k over each patient's own real patches only, with ``k_i =
  min(clam_k_sample, n_i)``; padded patches are never picked or attended. A bag with fewer
  than ``2 k`` patches has overlapping top and bottom sets (the same patch pseudo-labelled 1
  and 0), as the authors' code has whenever ``k <= n < 2k``; a bag with fewer than ``k``
  patches (where ``torch.topk`` fails in the authors' code) uses all ``n_i`` patches for both.
  The per-patient loss is the authors' (mean over its ``2 k_i`` instances); the batch loss is
  the mean over patients, like the NLL.
* **Width**: ``clam_hidden = 512`` (CLAM's "small"); the survival copies' "small" is 256
  (``clam_hidden=256`` builds theirs exactly).
* **Dropout**: the authors put ``Dropout(0.25)`` after the embedding and on both gated
  branches when ``dropout`` is set; we use ``wsi_dropout`` (0.25) at those three places.
* **Init**: Xavier-normal weights, zero biases (the survival copies' and earlier CLAM
  releases' ``initialize_weights``; CLAM's current HEAD leaves PyTorch's default).
* ``wsi_attention`` ``(B, branches, N)`` is the softmax attention (0 at padded patches); the
  authors return the raw scores for heatmaps. ``cls_wsi`` is the bag vector ``(B, clam_hidden)``
  (SB) or the branches' bag vectors concatenated ``(B, n_bins * clam_hidden)`` (MB).
* The tensors the hook needs (``h``, the scores, the mask) travel in ``out.extras`` in
  training mode only, so prediction does not hold a second copy of every embedding.
* A missing slide (``allow_missing``) is refused: the model reads nothing else.
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

INST_LOSSES = ("svm", "ce")
#: SmoothTop1SVM's margin ``alpha``, temperature ``tau`` and hard-switch threshold (``topk``'s defaults).
SVM_ALPHA, SVM_TAU, SVM_THRESH = 1.0, 1.0, 1e3


def _check_config(cfg: ModelConfig) -> None:
    for name in ("clam_hidden", "clam_attn_dim", "clam_k_sample"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected > 0")
    if cfg.clam_inst_loss not in INST_LOSSES:
        raise ConfigError(
            f"config field 'clam_inst_loss' = {cfg.clam_inst_loss!r}; expected one of {INST_LOSSES}"
        )
    w = cfg.clam_inst_weight
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"config field 'clam_inst_weight' = {w}; expected a finite number >= 0")


def smooth_top1_svm(logits: Tensor, target: Tensor) -> Tensor:
    """Per-instance smooth top-1 SVM loss ``(M, C), (M,) -> (M,)`` (Berrada et al. 2018):
    ``tau * logsumexp((s + alpha [j != y] - s_y) / tau)``, or the hard hinge
    ``max_j (s_j + alpha [j != y]) - s_y`` where the top score leads the second by at least
    ``tau * log(1000)`` (the ``topk`` package's numerical switch)."""
    delta = SVM_ALPHA * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
    z = logits + delta - logits.gather(1, target[:, None])
    smooth = SVM_TAU * torch.logsumexp(z / SVM_TAU, dim=1)
    hard_loss = z.max(dim=1).values
    top2 = logits.topk(2, dim=1).values
    hard = (top2[:, 0] - top2[:, 1]) >= SVM_TAU * math.log(SVM_THRESH)
    return torch.where(hard, hard_loss, smooth)


def select_patches(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k and bottom-k patches of each bag by attention score, over its real patches only.

    ``scores`` ``(B, N)``, ``mask`` ``(B, N)`` bool -> ``(top, bottom, valid)``, each
    ``(B, k')`` with ``k' = min(k, N)``: patch indices (most attended first; least attended
    first) and whether slot ``j`` is used (``j < min(k, n_i)``, ``n_i`` the bag's real patches).
    """
    kk = min(k, scores.shape[1])
    neg_inf = torch.finfo(scores.dtype).min
    top = scores.masked_fill(~mask, neg_inf).topk(kk, dim=1).indices
    bottom = (-scores).masked_fill(~mask, neg_inf).topk(kk, dim=1).indices
    k_i = mask.sum(dim=1).clamp(max=k)
    valid = torch.arange(kk, device=scores.device)[None, :] < k_i[:, None]
    return top, bottom, valid


class _GatedAttention(nn.Module):
    """``(B, N, L) -> (B, N, branches)`` scores: ``w^T (tanh(V h) * sigmoid(U h))`` (gated) or
    ``w^T tanh(V h)`` (``gated=False``, the authors' Attn_Net), dropout after each branch."""

    def __init__(self, dim: int, hidden: int, branches: int, dropout: float, gated: bool) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = (
            nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout)) if gated else None
        )
        self.attention_c = nn.Linear(hidden, branches)

    def forward(self, h: Tensor) -> Tensor:
        a = self.attention_a(h)
        if self.attention_b is not None:
            a = a * self.attention_b(h)
        return self.attention_c(a)


class _CLAM(_Baseline):
    """The shared body: embedding, gated attention with ``branches`` outputs, instance classifiers."""

    modalities = ("wsi",)
    multi_branch = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        _check_config(config)
        hid, p = config.clam_hidden, config.wsi_dropout
        self.branches = config.n_bins if self.multi_branch else 1
        self.fc = nn.Sequential(nn.Linear(config.wsi_dim, hid), nn.ReLU(), nn.Dropout(p))
        self.attention = _GatedAttention(hid, config.clam_attn_dim, self.branches, p, config.clam_gated)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hid, 2) for _ in range(config.n_bins))

    def reset_parameters(self) -> None:
        """Xavier-normal weights, zero biases (the survival copies' ``initialize_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def _head(self, bag: Tensor) -> Tensor:  # (B, branches, H) -> (B, n_bins)
        raise NotImplementedError

    def forward(
        self, m1=None, wsi=None, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        if wsi_mask is None:
            wsi_mask = torch.ones(wsi.shape[:2], dtype=torch.bool, device=wsi.device)
        h = self.fc(wsi)  # (B, N, H)
        scores = self.attention(h).transpose(1, 2)  # (B, branches, N)
        pad = ~wsi_mask[:, None, :]
        a = torch.softmax(scores.float().masked_fill(pad, float("-inf")), dim=2)  # 0 at padded patches
        h = h.masked_fill(~wsi_mask[..., None], 0.0)
        bag = torch.einsum("bkn,bnh->bkh", a.to(h.dtype), h)  # (B, branches, H)
        extras = {"clam_h": h, "clam_scores": scores, "clam_mask": wsi_mask} if self.training else None
        return _output(self._head(bag), cls_wsi=bag.flatten(1), wsi_attention=a, extras=extras)

    def auxiliary_loss(self, out: SurvivalOutput, bins: Tensor, censorship: Tensor) -> dict[str, Tensor]:
        """``{"clam_instance": clam_inst_weight * instance loss}`` (mean over the batch's patients)."""
        x = out.extras or {}
        if "clam_h" not in x:
            raise ConfigError("CLAM's instance loss needs the training-mode forward's out.extras")
        inst = self.instance_loss(x["clam_h"], x["clam_scores"], x["clam_mask"], bins)
        return {"clam_instance": self.config.clam_inst_weight * inst}

    def _instance_terms(self, h: Tensor, idx: Tensor, cls: Tensor, target: int) -> Tensor:
        """Per-instance losses ``(B, k)`` of patches ``idx`` ``(B, k)`` under classifier ``cls[b]``."""
        x = h.gather(1, idx[..., None].expand(-1, -1, h.shape[2]))  # (B, k, H)
        w = torch.stack([c.weight for c in self.instance_classifiers])[cls]  # (B, 2, H)
        b = torch.stack([c.bias for c in self.instance_classifiers])[cls]  # (B, 2)
        logits = (torch.einsum("bkh,boh->bko", x, w.to(x.dtype)) + b[:, None, :].to(x.dtype)).float()
        flat = logits.reshape(-1, 2)
        t = torch.full((flat.shape[0],), target, dtype=torch.long, device=flat.device)
        if self.config.clam_inst_loss == "svm":
            loss = smooth_top1_svm(flat, t)
        else:
            loss = F.cross_entropy(flat, t, reduction="none")
        return loss.view(idx.shape)

    def instance_loss(self, h: Tensor, scores: Tensor, mask: Tensor, bins: Tensor) -> Tensor:
        """The instance-level clustering loss (unweighted), averaged over patients.

        ``h`` ``(B, N, H)`` patch embeddings, ``scores`` ``(B, branches, N)`` attention scores
        (pre-softmax; the ranking is the softmax's), ``mask`` ``(B, N)``, ``bins`` ``(B,)``.
        """
        y = bins.long().to(h.device)
        k = self.config.clam_k_sample
        rows = torch.arange(len(y), device=h.device)
        in_branch = scores[rows, y] if self.multi_branch else scores[:, 0]  # (B, N)
        top, bottom, valid = select_patches(in_branch, mask, k)
        v = valid.float()
        pos = self._instance_terms(h, top, y, 1)
        neg = self._instance_terms(h, bottom, y, 0)
        per_patient = ((pos + neg) * v).sum(1) / (2 * v.sum(1)).clamp(min=1)
        if self.config.clam_subtyping:
            for c in range(self.config.n_bins):
                out_top, _, out_valid = select_patches(scores[:, c if self.multi_branch else 0], mask, k)
                cls = torch.full_like(y, c)
                terms = self._instance_terms(h, out_top, cls, 0)
                ov = out_valid.float()
                out_c = (terms * ov).sum(1) / ov.sum(1).clamp(min=1)
                per_patient = per_patient + out_c * (y != c).float()
            per_patient = per_patient / self.config.n_bins
        return per_patient.mean()


class CLAMSB(_CLAM):
    """CLAM-SB: one gated attention branch -> bag vector -> Linear(clam_hidden, n_bins)."""

    attention_label = "gated attention"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.classifier = nn.Linear(config.clam_hidden, config.n_bins)
        self.reset_parameters()

    def _head(self, bag: Tensor) -> Tensor:
        return self.classifier(bag[:, 0])


class CLAMMB(_CLAM):
    """CLAM-MB: one gated attention branch per time bin; logit ``k`` = Linear_k(bag vector of branch k)."""

    multi_branch = True
    attention_label = "attention branch of time bin {n}"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.classifiers = nn.ModuleList(nn.Linear(config.clam_hidden, 1) for _ in range(config.n_bins))
        self.reset_parameters()

    def _head(self, bag: Tensor) -> Tensor:
        return torch.cat([c(bag[:, i]) for i, c in enumerate(self.classifiers)], dim=1)


__all__ = ["CLAMSB", "CLAMMB", "select_patches", "smooth_top1_svm"]
