"""CCL: cohort-individual cooperative learning (Zhou, Zhou & Chen, "Cohort-individual
cooperative learning for multimodal cancer survival analysis", IEEE TMI 2024), genomics + WSI.

What makes the model itself:

* **Individual representations.** Genomics: one SNN layer (Linear-SELU-AlphaDropout) per gene
  family, a shared SNN layer, and a 1x1 convolution over the family tokens (+ instance norm,
  ReLU) to one vector. Pathology: the bag is summarized by ``K`` k-means centres of its raw
  patch features, started from the **cohort prototypes** and matched to them (Hungarian, L1
  cost) so centre k always sits in prototype k's slot; an SNN layer per centre and a 1x1
  convolution over the centres give one vector.
* **Cohort guidance, pathology side.** The prototypes ``(K, wsi_dim)`` are model state (a
  buffer): in training mode each patient's matched centres update them by a running mean,
  ``memory <- (1 - r) memory + r centres`` (``r`` = ``ccl_update_ratio``), patient after
  patient; in eval they are fixed, so prediction is deterministic.
* **Multimodal knowledge decomposition.** From the two vectors: the common (redundant) and the
  synergistic knowledge, each from an interaction estimator (a per-modality MLP and sigmoid
  gates from the outer product of the two), and each modality's specific knowledge (an MLP).
  The four vectors (plus a class token) go through two Nystrom layers; the class token -> bins.
* **Cohort guidance, knowledge side, and its losses** (the hook). A bank per time bin holds
  the last ``ccl_bank_length`` training patients' decomposed knowledge (a buffer; FIFO). The
  *intra* term asks the common vector to be cosine-similar to both modality vectors, the
  synergy orthogonal to both, each specific vector similar to its modality and orthogonal to
  the other: ``mean(|s| (1 - M) - M s) + 1``. The *inter* term contrasts the patient with the
  bank: positives are its own bin's patients (uncensored; itself excluded) or the bins at or
  after its censoring bin (censored), negatives the other bins (uncensored) or the earlier ones
  (censored); ``-log(mean e^{k*p/T} / (mean e^{k*p/T} + mean e^{k*n/T}))`` with elementwise
  products ``k*p`` as theirs, temperature ``T`` = 2. A censored patient of the first bin has no
  inter term. Both are weighted by ``ccl_cohort_weight`` (their loss string ``nllsurv,cohort``).

Checked against the authors' repository moothes/CCL-survival: ``models/CCL/network.py`` (class
``CCL(args)`` with ``custom_config`` defaults num_cluster 6, update_ratio 0.1, bank_length 10;
resnet50 features, 1024; dataset blca), ``models/CCL/util.py`` (the Nystrom attention),
``models/CCL/kmeans/kmeans_pytorch/__init__.py`` (their vendored k-means: started at the patch
nearest each prototype, Lloyd steps until the squared total centre shift is below 1e-4, an
empty cluster's centre set to 0), ``utils/loss_factory.py`` (``CohortLoss``) and
``utils/engine.py``. Their class has 2,147,110 trainable parameters; this one 22,016 fewer:
their fusion ``Transformer`` builds a PPEG it never calls (``tests/model/test_peer_ccl.py``).
With their weights and prototypes copied in (and their specific-knowledge swap, below, undone
in theirs), eight training steps of batch one give their hazards (to 2e-7), their prototype
updates (2e-7) and their cohort loss (1e-6).

Deviations:

* **Specific knowledge from its own modality.** Their ``Knowledge_Decomposition.forward(gfeat,
  pfeat)`` is called with ``(path, geno)``, so their "genomic-specific" estimator reads the
  pathology vector and vice versa, while the loss compares it with the genomic vector; here
  each modality's specific vector comes from that modality, as the paper describes.
  (The interaction estimators receive the right inputs in theirs, by a second swap.)
* **State as buffers.** Their prototypes and banks are plain tensors (not saved with a
  checkpoint); here they are buffers saved with the model. The bank is filled in the hook
  (which receives the bins) instead of in forward: for a batch of one that is the same order
  of events; a batch is pushed patient after patient, each patient's inter term seeing the bank
  as it stood after its own push, exactly as a run of batches of one.
* **Batched.** The k-means is per bag (it is inherently per patient), so forward loops over
  the batch for it; in training the prototypes are updated patient after patient in batch
  order, which is what batches of one do. Everything after it is batched; in eval a padded
  batch equals one patient at a time.
* **k-means.** Ours: at most ``ccl_kmeans_iters`` Lloyd steps (theirs: no cap); distances as theirs,
  ``sum((x - c)^2)``, over chunks of patches rather than one ``N x K x D`` tensor; the Hungarian
  matching is solved as an exact optimal transport between uniform weights (``ot.emd``,
  whose optimum is a permutation), instead of ``scipy``'s ``linear_sum_assignment``.
* The inter term is computed with log-sum-exp (stable; their ``+ 1e-10`` is dropped).
* ``wsi_attention`` ``(B, K, N)``: row k is the weight of each patch in centre k (``1 / |k|`` on
  its members, 0 elsewhere): the centre is exactly ``wsi_attention[k] @ patches``. ``cls_m1`` /
  ``cls_wsi`` are the genomic and pathology vectors. ``l1_parameters`` names the per-family
  SNNs (MCAT's ``lambda_reg`` target, off unless the loop's ``l1`` is set).
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deref.errors import ConfigError
from deref.model.baselines import _Baseline, _output
from deref.model.config import ModelConfig
from deref.model.deref import SurvivalOutput
from deref.model.encoders import TransLayer

#: Rows: common, synergy, genomic-specific, pathology-specific; columns: genomic, pathology.
#: 1: the vector should be similar to that modality's vector; 0: orthogonal to it.
INTRA_MASK = ((1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))


def snn_layer(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    """CCL's ``SNN_Block``: Linear-SELU-AlphaDropout."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SELU(), nn.AlphaDropout(dropout))


def mlp_block(d: int) -> nn.Sequential:
    """CCL's ``MLP_Block``: Linear-LayerNorm-ReLU."""
    return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.ReLU())


class TokenPool(nn.Module):
    """CCL's ``conv1d_Block(k, 1)``: a 1x1 convolution of ``k`` tokens to one, instance norm, ReLU:
    ``(B, k, D)`` -> ``(B, D)``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(k, 1, 1)
        self.norm = nn.InstanceNorm1d(1)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(tokens))).squeeze(1)


def sq_distances(x: Tensor, c: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """Squared Euclidean distances ``(n, K)`` between rows of ``x`` (n, d) and ``c`` (K, d), as
    ``sum((x - c)^2)`` (theirs), over chunks of rows of at most ``chunk_elems`` differences. Not
    ``|x|^2 - 2 x.c + |c|^2``: equal centres (two prototypes nearest the same patch) must give
    exactly equal distances, so that a tie goes to the first centre as in theirs."""
    step = max(1, chunk_elems // max(1, c.numel()))
    return torch.cat([(x[i : i + step, None] - c[None]).pow(2).sum(-1) for i in range(0, x.shape[0], step)])


def kmeans(x: Tensor, prototypes: Tensor, tol: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of ``x`` (n, d) started at the patch nearest each prototype (K, d), as the
    authors' vendored k-means: ``(assignment (n,), centres (K, d))``, the centres the means of the
    final assignment (0 for an empty cluster); stops when the squared total shift < ``tol``."""
    k = prototypes.shape[0]
    centres = x[sq_distances(x, prototypes).argmin(dim=0)]
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        assign = sq_distances(x, centres).argmin(dim=1)
        onehot = F.one_hot(assign, k).to(x.dtype)  # (n, K)
        new = (onehot.t() @ x) / onehot.sum(dim=0).clamp_min(1).unsqueeze(1)
        shift = (new - centres).norm(dim=1).sum()
        centres = new
        if float(shift) ** 2 < tol:
            break
    return assign, centres


def match_to_prototypes(centres: Tensor, prototypes: Tensor) -> Tensor:
    """``perm`` (K,): the prototype slot of each centre under the assignment of least total L1
    distance (the Hungarian matching of theirs), solved as exact optimal transport."""
    cost = torch.cdist(centres.double(), prototypes.double(), p=1).cpu().numpy()
    k = cost.shape[0]
    plan = ot.emd(np.full(k, 1.0 / k), np.full(k, 1.0 / k), cost)
    perm = plan.argmax(axis=1)
    if sorted(perm.tolist()) != list(range(k)):  # an optimal vertex is a permutation
        raise RuntimeError(f"CCL prototype matching gave no permutation: {perm.tolist()}")
    return torch.as_tensor(perm, device=centres.device)


class InteractionEstimator(nn.Module):
    """Common / synergy estimator: per-modality MLPs ``g``, ``p``; the outer product ``g_i p_j``
    gives a gate per genomic channel ``sigmoid(sum_j w_j g_i p_j + b)`` and per pathology channel
    ``sigmoid(sum_i w'_i g_i p_j + b')``; out ``p * gate_p + g * gate_g``. The sums factor as
    ``g_i (p . w)`` and ``p_j (g . w')``, so the ``D x D`` product is never formed."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.geno_fc = mlp_block(d)
        self.path_fc = mlp_block(d)
        self.geno_atten = nn.Linear(d, 1)
        self.path_atten = nn.Linear(d, 1)

    def forward(self, geno: Tensor, path: Tensor) -> Tensor:
        g, p = self.geno_fc(geno), self.path_fc(path)
        gate_g = torch.sigmoid(g * (p @ self.geno_atten.weight.t()) + self.geno_atten.bias)
        gate_p = torch.sigmoid(p * (g @ self.path_atten.weight.t()) + self.path_atten.bias)
        return p * gate_p + g * gate_g


class KnowledgeDecomposition(nn.Module):
    """``(B, D)`` genomic and pathology vectors -> ``(B, 4, D)``: common, synergy, genomic-specific,
    pathology-specific."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.geno_spec = mlp_block(d)
        self.path_spec = mlp_block(d)
        self.common_encoder = InteractionEstimator(d)
        self.synergy_encoder = InteractionEstimator(d)

    def forward(self, geno: Tensor, path: Tensor) -> Tensor:
        parts = [self.common_encoder(geno, path), self.synergy_encoder(geno, path)]
        return torch.stack(parts + [self.geno_spec(geno), self.path_spec(path)], dim=1)


class FusionTransformer(nn.Module):
    """Their ``Transformer`` as called: class token + two Nystrom layers + LayerNorm -> class token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.c1) * 1e-6)
        self.layer1 = TransLayer(cfg)
        self.layer2 = TransLayer(cfg)
        self.norm = nn.LayerNorm(cfg.c1)

    def forward(self, tokens: Tensor) -> Tensor:
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        x, _ = self.layer1(x, None)
        x, _ = self.layer2(x, None)
        return self.norm(x)[:, 0]


def _validate(cfg: ModelConfig) -> None:
    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"config field {name!r} = {getattr(cfg, name)!r}; expected {expected}")

    for name in ("ccl_clusters", "ccl_bank_length", "ccl_kmeans_iters"):
        if getattr(cfg, name) < 1:
            raise bad(name, ">= 1")
    if not 0.0 <= cfg.ccl_update_ratio <= 1.0:
        raise bad("ccl_update_ratio", "in [0, 1]")
    if not 0.0 <= cfg.ccl_dropout < 1.0:
        raise bad("ccl_dropout", "in [0, 1)")
    if cfg.ccl_temperature <= 0:
        raise bad("ccl_temperature", "> 0")
    if cfg.ccl_cohort_weight < 0:
        raise bad("ccl_cohort_weight", ">= 0")
    if cfg.ccl_kmeans_tol < 0:
        raise bad("ccl_kmeans_tol", ">= 0")


class CCL(_Baseline):
    """CCL (see the module docstring). Buffers: ``memory`` (K, wsi_dim), the cohort prototypes;
    ``bank`` (n_bins, L, 4, C) and ``bank_size`` (n_bins,), the knowledge bank per time bin."""

    modalities = ("m1", "wsi")
    attention_label = "patches of cohort prototype {n} (k-means centre)"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        _validate(config)
        c, k, drop = config.c1, config.ccl_clusters, config.ccl_dropout
        self.genomics_fc = nn.ModuleList(snn_layer(d, c, drop) for d in config.m1_sizes)
        self.geno_fc = snn_layer(c, c, drop)
        self.geno_conv = TokenPool(len(config.m1_sizes))
        self.register_buffer("memory", torch.randn(k, config.wsi_dim))  # theirs: torch.randn too
        self.path_fc = snn_layer(config.wsi_dim, c, drop)
        self.path_conv = TokenPool(k)
        self.know_decompose = KnowledgeDecomposition(c)
        self.register_buffer("bank", torch.zeros(config.n_bins, config.ccl_bank_length, 4, c))
        self.register_buffer("bank_size", torch.zeros(config.n_bins, dtype=torch.long))
        self.transformer = FusionTransformer(config)
        self.classifier = nn.Linear(c, config.n_bins)

    def l1_parameters(self):
        """The per-family SNNs (what MCAT's ``lambda_reg`` penalizes)."""
        return self.genomics_fc.parameters()

    @torch.no_grad()
    def cohort_centres(self, wsi: Tensor, wsi_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Each bag's k-means centres in prototype order ``(B, K, wsi_dim)`` (float32) and the patch
        weights that make them ``(B, K, N)``; in training mode the prototypes move towards each
        patient's centres in turn (running mean, ``ccl_update_ratio``)."""
        cfg = self.config
        b, n, d = wsi.shape
        k = cfg.ccl_clusters
        centres = torch.zeros(b, k, d, device=wsi.device)
        weights = torch.zeros(b, k, n, device=wsi.device)
        with torch.autocast(device_type=wsi.device.type, enabled=False):
            for i in range(b):
                idx = (
                    torch.arange(n, device=wsi.device)
                    if wsi_mask is None
                    else wsi_mask[i].nonzero().squeeze(1)
                )
                memory = self.memory.float()
                assign, found = kmeans(wsi[i, idx].float(), memory, cfg.ccl_kmeans_tol, cfg.ccl_kmeans_iters)
                perm = match_to_prototypes(found, memory)
                centres[i, perm] = found
                slot = perm[assign]  # (n_i,) each patch's prototype slot
                count = torch.bincount(slot, minlength=k).to(centres.dtype)
                weights[i, slot, idx] = 1.0 / count[slot]
                if self.training:
                    self.memory.copy_((1 - cfg.ccl_update_ratio) * memory + cfg.ccl_update_ratio * centres[i])
        return centres, weights

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        tokens = torch.stack([net(x) for net, x in zip(self.genomics_fc, self._filled(m1))], dim=1)
        geno = self.geno_conv(self.geno_fc(tokens))  # (B, C)
        centres, weights = self.cohort_centres(wsi, wsi_mask)
        path = self.path_conv(self.path_fc(centres.to(tokens.dtype)))  # (B, C)
        knowledge = self.know_decompose(geno, path)  # (B, 4, C)
        logits = self.classifier(self.transformer(knowledge))
        return _output(
            logits,
            cls_m1=geno,
            cls_wsi=path,
            wsi_attention=weights,
            extras={"knowledge": knowledge, "geno": geno, "path": path},
        )

    # ------------------------------------------------------------------ the hook
    def auxiliary_loss(self, out: SurvivalOutput, bins: Tensor, censorship: Tensor) -> dict[str, Tensor]:
        """``{"ccl_intra", "ccl_inter"}`` (weighted by ``ccl_cohort_weight``, means over the batch);
        pushes each patient's knowledge into its bin's bank first (see the module docstring)."""
        know = out.extras["knowledge"].float()
        orig = torch.stack([out.extras["geno"], out.extras["path"]], dim=1).float().detach()
        inter = []
        for i in range(know.shape[0]):
            y, cens = int(bins[i]), float(censorship[i])
            self.push(know[i].detach(), y)
            inter.append(self.inter_loss(know[i], y, cens))
        w = self.config.ccl_cohort_weight
        return {"ccl_intra": w * intra_loss(know, orig).mean(), "ccl_inter": w * torch.stack(inter).mean()}

    @torch.no_grad()
    def push(self, knowledge: Tensor, y: int) -> None:
        """Append one patient's knowledge ``(4, C)`` to bin ``y``'s bank (dropping the oldest when full)."""
        size = int(self.bank_size[y])
        if size < self.bank.shape[1]:
            self.bank[y, size] = knowledge
            self.bank_size[y] += 1
        else:
            self.bank[y] = torch.roll(self.bank[y], -1, dims=0)
            self.bank[y, -1] = knowledge

    def _entries(self, bins: list[int]) -> Tensor:
        """The bank entries of ``bins``, oldest first per bin, copied (later pushes of a batch write
        into the bank, which autograd must not see)."""
        parts = [self.bank[j, : int(self.bank_size[j])] for j in bins]
        return torch.cat(parts, dim=0) if parts else self.bank.new_zeros(0, *self.bank.shape[2:])

    def inter_loss(self, knowledge: Tensor, y: int, censored: float) -> Tensor:
        """The cohort contrast of one patient (already pushed) against the bank, a scalar."""
        k = self.bank.shape[0]
        zero = knowledge.new_zeros(())
        if censored == 0:
            neg = self._entries([j for j in range(k) if j != y])
            pos = self.bank[y, : int(self.bank_size[y]) - 1].clone()  # its own bin, itself excluded
        elif y != 0:
            neg, pos = self._entries(list(range(y))), self._entries(list(range(y, k)))
        else:
            return zero
        if neg.shape[0] == 0 or pos.shape[0] == 0:
            return zero
        t = self.config.ccl_temperature
        lp = _log_mean_exp(knowledge * pos / t)
        ln = _log_mean_exp(knowledge * neg / t)
        return torch.logaddexp(lp, ln) - lp


def _log_mean_exp(x: Tensor) -> Tensor:
    return torch.logsumexp(x.flatten(), dim=0) - math.log(x.numel())


def intra_loss(knowledge: Tensor, orig: Tensor) -> Tensor:
    """``(B,)``: ``mean(|s| (1 - M) - M s) + 1`` over the 4 x 2 cosine similarities ``s`` of the
    knowledge ``(B, 4, C)`` with the (detached) modality vectors ``(B, 2, C)``, ``M`` :data:`INTRA_MASK`."""
    sim = F.cosine_similarity(knowledge.unsqueeze(2), orig.unsqueeze(1), dim=-1)  # (B, 4, 2)
    mask = torch.tensor(INTRA_MASK, dtype=sim.dtype, device=sim.device)
    return (sim.abs() * (1 - mask) - mask * sim).mean(dim=(1, 2)) + 1


__all__ = ["CCL", "kmeans", "match_to_prototypes", "intra_loss", "InteractionEstimator"]
