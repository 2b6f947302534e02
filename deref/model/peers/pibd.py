"""PIBD: Prototypical Information Bottlenecking and Disentangling (Zhang et al., "Prototypical
information bottlenecking and disentangling for multimodal cancer survival prediction", ICLR 2024,
arXiv 2401.01646), with DeReF's call signature.

What makes it itself: the **prototypical information bottleneck** (PIB), one per modality: each
instance (patch, gene-family token) is encoded to z; 2K learned prototypes (one per risk bin x
censorship, a Gaussian N(mu, softplus(s)) each, i.e. a Gaussian mixture) are matched by cosine
similarity, and only the top-k instances closest to any prototype are kept (the bottleneck's
selection); the IB terms are a survival NLL of the prototypes' own decoded bins (``alpha``) and
the KL of each prototype to N(0, I) (``beta``), and a proxy loss pulls instances towards their
patient's prototype and away from the others (``gamma``). The **disentangling transformer** (PID):
the selected patch and gene tokens attend within their modality (modality-specific) while a
global token, initialized from the product of experts of the two chosen prototypes, attends over
everything (modality-common); the three mean tokens are concatenated for the head. A **CLUB**
upper bound (mean-variance version) of the mutual information between the specific features,
and between both specific ones and the common one, is minimized (``sigma``), together with the
estimator's learning loss.

Checked against github.com/zylbuaa/PIBD: ``models/model_PIBD.py`` (PIBD, PIB, PoE),
``models/disentangle_transformer.py`` (MITransformerLayer), ``models/club.py`` (MIEstimator,
CLUBMean), ``models/omics_encoder.py``, ``utils/loss_func.py`` (NLLSurvLoss), ``utils/core_utils.py``
(how the terms are summed) and ``utils/process_args.py`` (defaults).

Run against their ``PIBD`` on CPU (weights copied, their eval noise set to zero, one sub-bag of
512 patches, B = 3), our eval logits equal theirs to 7e-8; their ``MIEstimator`` estimate and
learning loss, prototype NLL (``get_loss_proxy``), ``get_KL_loss`` and (label-driven) proxy loss
equal our terms to float precision.

Deviations and why:

* **Prototype choice without labels in the forward pass.** The authors pick, in training, the
  prototype of the patient's true (censorship, bin) for the product of experts (and so for the
  prediction); our loop's forward has no labels. We always use their inference rule (the most
  frequent prototype among the top-k similarities), in training too; the labels still drive the
  proxy loss in :meth:`PIBD.auxiliary_loss`. This also removes their train/test mismatch.
* **Deterministic evaluation.** Training samples as theirs: ``num_patches // bag_size`` random
  sub-bags of at most ``bag_size`` patches per patient, prototype means from ``sample_num``
  reparameterized samples, the product of experts as the mean of ``sample_num`` samples
  ``mu + var * eps`` (their scale), all averaged. In eval (theirs draws random sub-bags and
  seeded noise) we use the means: the bag split into ``ceil(n / bag_size)`` strided chunks (patch
  i in chunk i mod c), the prototypes' mu and the PoE mean; logits averaged over the chunks.
* **top-k on small bags.** ``k = int(ratio_wsi * sub-bag size)`` (theirs fixes 256 = 0.5 * 512 and
  fails below 256 patches); genes ``int(ratio_omics * G)`` as theirs.
* **Per patient.** Each patient's sub-bags and top-k differ in size, so the slide/PID part loops
  over the patients of a batch (the peers train with batches of one); gene tokens are batched.
* **Loss scale.** Their loop adds ``gamma * proxy + IB + sigma * (CLUB + CLUB learning)`` to the
  summed NLL and divides by the batch size; the hook returns these terms divided by the batch
  size likewise (the loop's NLL is already a mean). With a batch of one the CLUB estimate is 0
  (positive and negative pairs coincide), as it would be in their code at batch size 1.
* Genomic encoder: their per-pathway SNN_Block(d, 256)-SNN_Block(256, 256) is our
  :class:`~deref.model.encoders.SNNBlock` (same layers and parameters). MRI vectors use the same
  block; MRI cubes use :class:`~deref.model.encoders.CubeTokens` (needs ``pibd_dim == c1``).
* ``wsi_attention`` ``(B, 1, N)``: how often each patch is among the PIB's selected top-k
  (normalized per patient); ``co_attention`` is not defined for PIBD.
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


def kl_to_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """``KL(N(mu, diag sigma^2) || N(0, I))`` per row: ``0.5 * sum(sigma^2 + mu^2 - 1 - log sigma^2)``
    (the authors' ``KL_between_normals`` against the prior, sigma clamped at 1e-8 in the log)."""
    log_var = 2 * torch.log(sigma.clamp_min(1e-8))
    return 0.5 * (sigma.pow(2) + mu.pow(2) - 1 - log_var).sum(dim=-1)


def nll_sum(logits: Tensor, y: Tensor, c: Tensor, alpha: float, eps: float = 1e-7) -> Tensor:
    """Discrete-time NLL summed over rows (the authors' ``NLLSurvLoss(alpha)``, ``reduction='sum'``)."""
    h = torch.sigmoid(logits)
    s = torch.cat([torch.ones_like(h[:, :1]), torch.cumprod(1 - h, dim=1)], dim=1)
    y = y.long().view(-1, 1)
    c = c.to(h.dtype).view(-1, 1)
    s_prev = s.gather(1, y).clamp_min(eps)
    h_this = h.gather(1, y).clamp_min(eps)
    s_this = s.gather(1, y + 1).clamp_min(eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored = -c * torch.log(s_this)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).sum()


def club_mean(mu: Tensor, y: Tensor) -> Tensor:
    """CLUB with unit variance (the authors' ``CLUBMean.forward``) given ``mu = p_mu(x)`` ``(B, d)`` and
    ``y`` ``(B, d)``: ``mean_i [ -||mu_i - y_i||^2 / 2 + mean_j ||mu_i - y_j||^2 / 2 ]``."""
    positive = -(mu - y).pow(2) / 2
    negative = -(y.unsqueeze(0) - mu.unsqueeze(1)).pow(2).mean(dim=1) / 2
    return (positive.sum(dim=-1) - negative.sum(dim=-1)).mean()


class CLUBMean(nn.Module):
    """``p_mu``: Linear(x, h)-ReLU-Linear(h, y); estimate :func:`club_mean`; learning loss
    ``mean_i ||mu_i - y_i||^2`` (minus the unit-variance log-likelihood)."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int) -> None:
        super().__init__()
        self.p_mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.p_mu(x)
        return club_mean(mu, y), (mu - y).pow(2).sum(dim=1).mean()


class PIB(nn.Module):
    """One modality's prototypical information bottleneck: encoder, ``2K`` Gaussian prototypes, decoder."""

    def __init__(self, x_dim: int, z: int, n_bins: int, dropout: float) -> None:
        super().__init__()
        self.z = z
        self.encoder = nn.Sequential(
            nn.Linear(x_dim, 2 * z), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(2 * z, 2 * z), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(2 * z, z),
        )  # fmt: skip
        self.decoder_logits = nn.Linear(z, n_bins)
        self.proxies = nn.Parameter(torch.empty(2 * n_bins, 2 * z))
        nn.init.xavier_uniform_(self.proxies)

    def prototypes(self) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` ``(2K, z)``; row ``c * K + y`` is (censorship c, bin y) as the authors' dict."""
        return self.proxies[:, : self.z], F.softplus(self.proxies[:, self.z :])

    def centre(self, samples: int) -> Tensor:
        """The prototypes' means used for matching: the mean of ``samples`` reparameterized draws in
        training, mu in eval."""
        mu, sigma = self.prototypes()
        if not self.training:
            return mu
        eps = torch.randn(mu.shape[0], samples, mu.shape[1], device=mu.device, dtype=mu.dtype)
        return (mu.unsqueeze(1) + sigma.unsqueeze(1) * eps).mean(dim=1)

    def select(self, z: Tensor, centre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Instances ``z`` ``(B, n, z)`` against the prototype centres: ``(chosen prototype (B,),
        top-k instance indices (B, k), per-prototype mean of the top-k similarities (B, 2K), att (B, n, 2K))``."""
        att = F.normalize(z, dim=-1) @ F.normalize(centre, dim=-1).to(z.dtype).t()  # (B, n, 2K)
        b, n, p = att.shape
        # instance-major flattening: index = instance * 2K + prototype (the authors' eval rule)
        top = torch.topk(att.reshape(b, n * p), k, dim=1).indices
        chosen = torch.mode(top % p, dim=1).values
        # prototype-major flattening: index = prototype * n + instance (their z_topk)
        idx = torch.topk(att.transpose(1, 2).reshape(b, p * n), k, dim=1).indices % n
        col_top = torch.topk(att, k, dim=1).values.mean(dim=1)  # (B, 2K)
        return chosen, idx, col_top, att


class MITransformerLayer(nn.Module):
    """The disentangling transformer layer (shared qkv / projection / MLP over the three streams):
    specific streams attend within themselves, the global token over global + both streams."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float, drop_path: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(drop_path), nn.Linear(dim, dim), nn.Dropout(drop_path)
        )
        self.drop_path = drop_path

    def _qkv(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        a = torch.softmax((q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5, dim=-1).to(v.dtype)
        out = self.attn_drop(a) @ v  # (B, H, n, d)
        b, h, n, d = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, h * d)))

    def _dp(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_path == 0:
            return x
        keep = 1 - self.drop_path
        return (
            x * torch.bernoulli(torch.full((x.shape[0], 1, 1), keep, device=x.device, dtype=x.dtype)) / keep
        )

    def forward(self, hist: Tensor, path: Tensor, glob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qh, kh, vh = self._qkv(self.norm1(hist))
        qp, kp, vp = self._qkv(self.norm1(path))
        qg, kg, vg = self._qkv(self.norm1(glob))
        hist = hist + self._dp(self._attend(qh, kh, vh))
        path = path + self._dp(self._attend(qp, kp, vp))
        glob = glob + self._dp(
            self._attend(qg, torch.cat([kg, kh, kp], dim=2), torch.cat([vg, vh, vp], dim=2))
        )
        return tuple(x + self._dp(self.mlp(self.norm2(x))) for x in (hist, path, glob))


class PIBD(_Baseline):
    """PIBD with DeReF's signature; see the module docstring."""

    modalities = ("m1", "wsi")
    #: the name of ``wsi_attention``'s single row (``deref.model.attention_labels``)
    attention_label = "PIB top-k selection frequency"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        cfg = config
        self._validate(cfg)
        d = cfg.pibd_dim
        self.cube_tokens = CubeTokens(cfg) if cfg.mri_encoder == "resnet3d" else None
        self.sig_networks = (
            None
            if self.cube_tokens is not None
            else nn.ModuleList(SNNBlock(s, d, d, cfg.snn_dropout) for s in cfg.m1_sizes)
        )
        self.pib_wsi = PIB(cfg.wsi_dim, d, cfg.n_bins, cfg.pibd_pib_dropout)
        self.pib_omics = PIB(d, d, cfg.n_bins, cfg.pibd_pib_dropout)
        self.pid = MITransformerLayer(
            d, cfg.pibd_heads, cfg.pibd_attn_dropout, cfg.pibd_proj_dropout, cfg.pibd_drop_path
        )
        self.to_logits = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU(), nn.Linear(d, cfg.n_bins))
        self.poe_phi = nn.Parameter(torch.ones(2))
        self.club = CLUBMean(d, d, cfg.pibd_club_hidden)
        self.club_glob = CLUBMean(2 * d, d, cfg.pibd_club_hidden)
        self.k_omics = max(1, int(len(cfg.m1_sizes) * cfg.pibd_ratio_omics))

    @staticmethod
    def _validate(cfg: ModelConfig) -> None:
        for name in (
            "pibd_dim",
            "pibd_heads",
            "pibd_bag_size",
            "pibd_num_patches",
            "pibd_sample_num",
            "pibd_club_hidden",
        ):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected > 0")
        if cfg.pibd_dim % cfg.pibd_heads:
            raise ConfigError(
                f"config field 'pibd_dim' = {cfg.pibd_dim} is not divisible by pibd_heads = {cfg.pibd_heads}"
            )
        for name in ("pibd_ratio_wsi", "pibd_ratio_omics"):
            if not 0.0 < getattr(cfg, name) <= 1.0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected in (0, 1]")
        for name in ("pibd_pib_dropout", "pibd_attn_dropout", "pibd_proj_dropout", "pibd_drop_path"):
            if not 0.0 <= getattr(cfg, name) < 1.0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected in [0, 1)")
        for name in ("pibd_alpha", "pibd_beta", "pibd_gamma", "pibd_sigma", "pibd_alpha_surv"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"config field {name!r} = {getattr(cfg, name)}; expected >= 0")
        if cfg.mri_encoder == "resnet3d" and cfg.pibd_dim != cfg.c1:
            raise ConfigError(
                f"config field 'pibd_dim' = {cfg.pibd_dim} must equal c1 = {cfg.c1} with MRI cubes"
            )

    def poe(self, mu: list[Tensor], var: list[Tensor]) -> Tensor:
        """Weighted product of experts (weights softmax(phi)): the mean in eval, the mean of
        ``sample_num`` draws ``mu + var * eps`` in training (the authors' scale)."""
        alpha = torch.softmax(self.poe_phi, dim=0)
        t = [a / (v + 1e-8) for a, v in zip(alpha, var)]
        prec = t[0] + t[1]
        m = (t[0] * mu[0] + t[1] * mu[1]) / prec
        if not self.training:
            return m
        eps = torch.randn(self.config.pibd_sample_num, *m.shape, device=m.device, dtype=m.dtype)
        return (m + eps / prec).mean(dim=0)

    def _sub_bags(self, bag: Tensor) -> list[Tensor]:
        """Patch indices of each sub-bag: random subsets in training, strided chunks in eval."""
        n, size = bag.shape[0], self.config.pibd_bag_size
        if self.training:
            iters = max(1, self.config.pibd_num_patches // size)
            return [torch.randperm(n, device=bag.device)[:size] for _ in range(iters)]
        chunks = math.ceil(n / size)
        return [torch.arange(j, n, chunks, device=bag.device) for j in range(chunks)]

    def _patient(self, bag: Tensor, omic: tuple, centres: list[Tensor]) -> dict[str, Tensor]:
        """One patient: ``bag`` ``(n, D)``; ``omic`` its (tokens (k_o, d), mu, sigma); ``centres`` the WSI
        prototype centres of each training iteration (one, reused, in eval)."""
        cfg = self.config
        mu_w_all, sigma_w_all = self.pib_wsi.prototypes()
        rows = {k: [] for k in ("logits", "hist", "path", "glob", "col_top")}
        counts = bag.new_zeros(bag.shape[0])
        for t, idx in enumerate(self._sub_bags(bag)):
            z = self.pib_wsi.encoder(bag[idx]).unsqueeze(0)  # (1, m, d)
            k = max(1, int(len(idx) * cfg.pibd_ratio_wsi))
            chosen, top, col_top, _ = self.pib_wsi.select(z, centres[min(t, len(centres) - 1)], k)
            counts.index_add_(0, idx[top[0]], torch.ones(k, device=bag.device, dtype=bag.dtype))
            hist_tokens = z[:, top[0]]
            g = self.poe([mu_w_all[chosen].to(z.dtype), omic[1]], [sigma_w_all[chosen].to(z.dtype), omic[2]])
            h, p, gl = self.pid(hist_tokens, omic[0], g.unsqueeze(1))
            h, p, gl = h.mean(dim=1), p.mean(dim=1), gl.mean(dim=1)
            rows["logits"].append(self.to_logits(torch.cat([h, p, gl], dim=-1)))
            for name, v in (("hist", h), ("path", p), ("glob", gl), ("col_top", col_top)):
                rows[name].append(v)
        out = {k: torch.cat(v, dim=0) for k, v in rows.items()}  # (T, .)
        out["attention"] = counts / counts.sum()
        return out

    def _omics(self, m1: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Gene tokens through their PIB: ``(selected tokens (B, k_o, d), chosen prototype's mu and sigma
        (B, d) each, per-prototype top-k similarity means (B, 2K), prototype logits (2K, K))``; one
        prototype draw serves the matching and the prototypes' decoded bins, as the authors'."""
        if self.cube_tokens is not None:
            tokens = self.cube_tokens(m1)
        else:
            tokens = torch.stack([net(x) for net, x in zip(self.sig_networks, m1)], dim=1)  # (B, G, d)
        z = self.pib_omics.encoder(tokens)
        centre = self.pib_omics.centre(self.config.pibd_sample_num)
        chosen, top, col_top, _ = self.pib_omics.select(z, centre, self.k_omics)
        mu, sigma = self.pib_omics.prototypes()
        sel = torch.gather(z, 1, top.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        return (
            sel,
            mu[chosen].to(z.dtype),
            sigma[chosen].to(z.dtype),
            col_top,
            self.pib_omics.decoder_logits(centre),
        )

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        cfg = self.config
        sel_o, mu_o, sigma_o, col_top_o, proxy_o = self._omics(self._filled(m1))
        iters = max(1, cfg.pibd_num_patches // cfg.pibd_bag_size) if self.training else 1
        centres = [self.pib_wsi.centre(cfg.pibd_sample_num) for _ in range(iters)]
        b, n_max = wsi.shape[:2]
        per = []
        for i in range(b):
            bag = wsi[i] if wsi_mask is None else wsi[i][wsi_mask[i]]
            per.append(self._patient(bag, (sel_o[i : i + 1], mu_o[i : i + 1], sigma_o[i : i + 1]), centres))
        attention = wsi.new_zeros(b, n_max)
        for i, r in enumerate(per):
            if wsi_mask is None:
                attention[i] = r["attention"].to(attention.dtype)
            else:
                attention[i, wsi_mask[i]] = r["attention"].to(attention.dtype)
        logits = torch.stack([r["logits"].mean(dim=0) for r in per])
        # in eval the chunk counts differ between patients: only the means travel (the hook runs in training)
        keys = ("hist", "path", "glob", "col_top")
        stack = {
            k: torch.stack([r[k] if self.training else r[k].mean(0, keepdim=True) for r in per]) for k in keys
        }
        proxy_w = torch.stack([self.pib_wsi.decoder_logits(c) for c in centres])  # (T, 2K, K)
        extras = {
            "hist": stack["hist"], "path": stack["path"], "glob": stack["glob"],
            "col_top_wsi": stack["col_top"], "col_top_omics": col_top_o,
            "proxy_logits_wsi": proxy_w.unsqueeze(0).expand(b, -1, -1, -1),
            "proxy_logits_omics": proxy_o.unsqueeze(0).expand(b, -1, -1),
        }  # fmt: skip
        return _output(
            logits,
            cls_m1=stack["path"].mean(dim=1),
            cls_wsi=stack["hist"].mean(dim=1),
            wsi_attention=attention.unsqueeze(1),
            extras=extras,
        )

    def auxiliary_loss(self, out: SurvivalOutput, bins: Tensor, censorship: Tensor) -> dict[str, Tensor]:
        """The authors' ``gamma * proxy_loss + IB_loss_proxy + sigma * (CLUB + CLUB learning loss)``,
        each averaged over the training sub-bags and divided by the batch size (as their loop)."""
        cfg = self.config
        e = {k: v.float() for k, v in out.extras.items()}
        b, k = bins.shape[0], cfg.n_bins
        pos = (censorship.long() * k + bins.long()).view(-1)  # (B,) the patient's prototype
        proxy = (
            _proxy_loss(e["col_top_omics"], pos)
            + torch.stack(
                [_proxy_loss(e["col_top_wsi"][:, t], pos) for t in range(e["col_top_wsi"].shape[1])]
            ).mean()
        )
        y = torch.arange(k, device=bins.device).repeat(2)
        c = torch.cat([torch.zeros(k), torch.ones(k)]).to(bins.device)
        ib_nll = (
            nll_sum(e["proxy_logits_omics"][0], y, c, cfg.pibd_alpha_surv)
            + torch.stack([nll_sum(lg, y, c, cfg.pibd_alpha_surv) for lg in e["proxy_logits_wsi"][0]]).mean()
        )
        kl = sum(
            kl_to_standard_normal(*(t.float() for t in p.prototypes())).mean()
            for p in (self.pib_wsi, self.pib_omics)
        )
        club = []
        for t in range(e["hist"].shape[1]):
            h, p, g = e["hist"][:, t], e["path"][:, t], e["glob"][:, t]
            (mi1, l1), (mi2, l2) = self.club(h, p), self.club_glob(torch.cat([h, p], dim=1), g)
            club.append(mi1 + mi2 + l1 + l2)
        return {
            "pibd_proxy": cfg.pibd_gamma * proxy / b,
            "pibd_ib": (cfg.pibd_alpha * ib_nll + cfg.pibd_beta * kl) / b,
            "pibd_club": cfg.pibd_sigma * torch.stack(club).mean() / b,
        }


def _proxy_loss(col_top: Tensor, pos: Tensor) -> Tensor:
    """``-mean_b(top-k mean of the patient's prototype - mean over the other prototypes of theirs)``
    from the per-prototype top-k means ``col_top`` ``(B, 2K)``."""
    p = col_top.shape[1]
    positive = col_top.gather(1, pos.view(-1, 1)).squeeze(1)
    negative = (col_top.sum(dim=1) - positive) / (p - 1)
    return -(positive - negative).mean()


__all__ = ["PIBD", "PIB", "CLUBMean", "MITransformerLayer", "club_mean", "kl_to_standard_normal", "nll_sum"]
