"""MOTCat: Xu & Chen, "Multimodal optimal transport-based co-attention transformer with global
structure consistency for survival prediction", ICCV 2023.

What makes the model: MCAT's architecture with the co-attention replaced by *optimal-transport
co-attention*: the transport plan of an entropic unbalanced OT problem between the patch
embeddings (uniform mass 1/N) and the G gene-family tokens (mass 1/G), on the squared
Euclidean cost of the min-shifted features normalized by its maximum, solved by POT's
generalized Sinkhorn (``ot.unbalanced.sinkhorn_knopp_unbalanced``, ``reg`` = epsilon 0.1,
``reg_m`` = tau 0.5). The plan is a global matching of the two sets (the paper's "global
structure consistency"): its transpose ``(G, N)`` multiplies the patch embeddings into G
genomics-matched WSI tokens, then MCAT's two transformers, gated attention pooling, fusion and
classifier (:class:`~deref.model.peers.mcat.CoattnHead`) follow.

Checked against the authors' ``Innse/MOTCat`` (``models/model_motcat.py``: ``MOTCAT_Surv``,
``OT_Attn_assem`` with ``impl='pot-uot-l2'``; ``main.py`` for the defaults;
``trainer/mb_trainer.py`` for the micro-batches), run on CPU for the parameter counts; the
parameters are MCAT's less its co-attention (the transport has none). Deviations:

* POT kernel: the authors pin ``pot==0.9.3``, whose solver defaults to ``reg_type='entropy'``
  (kernel ``exp(-M / reg)``); later POT (0.9.6 and 0.9.7 here) defaults to ``KL(pi | a b^T)``,
  which scales the whole plan by a constant (0.78 on the test's example) and so changes the
  co-attended tokens. We pass the all-ones reference measure ``c``: the authors' plan on any
  POT version. With their weights loaded into ours and their call given that kernel, their
  ``MOTCAT_Surv`` and ours gave identical hazards on a 50-patch bag;
* on the CPU the solver gets numpy arrays (POT's numpy backend; same iterations, far less
  overhead per operation on these small matrices), elsewhere tensors (POT's torch backend, on
  the device, as the authors' GPU version);
* the cost is computed in float64 from detached features (the authors: float32 ``cdist``,
  then ``.double()``); the plan is detached, as theirs (no gradient through the solver; their
  OT distance is computed but never used in the loss, so there is no auxiliary loss). A cost
  whose maximum is 0 (one patch equal to all families) is not divided by 0;
* batched by a loop: POT solves one problem at a time, and bags are ragged, so forward loops
  over the patients for the transport (on each patient's real patches only) and runs the
  shared head once for the whole batch;
* micro-batches (``motcat_bs_micro`` > 0; ``mb_trainer.split_chunk_list``): the bag is split
  into ``N // bs + 1`` near-equal chunks, each chunk is transported and scored by the head
  separately. In training the patches are shuffled before splitting (random, as theirs); in
  eval they are split in their given order (deterministic; the authors shuffle in validation
  too). The patient's logits are the mean of the chunks' logits, on which the loop computes
  one NLL (the authors average the chunks' NLLs and risks). With one chunk both coincide.
  The default 0 (the whole bag) is their ``main.py`` default ``--use_micro_batch False`` (the
  README: the GPU OT "allows ... the removal of Micro-Batch setting"); the paper's commands
  (``scripts/command.md``) used ``--bs_micro 256``, at about N / 256 solver calls per patient;
* ``co_attention`` ``(B, G, N)``: the plan with each family row divided by its total mass
  (the mass a family receives is not 1 in unbalanced OT), so a row is a distribution over the
  patient's patches (with chunks, each chunk's row normalized and divided by the number of
  chunks); 0 at padding. ``wsi_attention``, ``cls_m1``, ``cls_wsi`` as MCAT (chunk means).
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from deref.errors import ConfigError
from deref.model.baselines import _output
from deref.model.config import ModelConfig
from deref.model.deref import SurvivalOutput
from deref.model.peers.mcat import CoattnPeer, patch_attention


def unbalanced_plan(cost: Tensor, reg: float, reg_m: float) -> Tensor:
    """POT's generalized Sinkhorn on ``cost`` (n, G), uniform masses, kernel ``exp(-cost / reg)``
    (POT 0.9.3's ``reg_type='entropy'``, written as an all-ones reference ``c``): the plan (n, G).

    On the CPU the problem goes to POT as numpy arrays (its numpy backend: the same iterations,
    without torch's per-operation overhead on these small matrices); elsewhere as tensors
    (POT's torch backend, on the device, as the authors' GPU version)."""
    n, g = cost.shape
    if cost.device.type == "cpu":
        m = cost.numpy()
        a, b = np.full(n, 1.0 / n), np.full(g, 1.0 / g)
        plan = ot.unbalanced.sinkhorn_knopp_unbalanced(
            a, b, m, reg=reg, reg_m=reg_m, reg_type="kl", c=np.ones_like(m)
        )
        return torch.from_numpy(plan)
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    b = torch.full((g,), 1.0 / g, dtype=cost.dtype, device=cost.device)
    return ot.unbalanced.sinkhorn_knopp_unbalanced(
        a, b, cost, reg=reg, reg_m=reg_m, reg_type="kl", c=torch.ones_like(cost)
    )


def transport_plan(patches: Tensor, families: Tensor, reg: float, reg_m: float) -> Tensor:
    """MOTCat's OT co-attention for one patient: patch embeddings (n, C) and family tokens (G, C)
    -> the unbalanced entropic transport plan transposed, (G, n), float64, detached.

    Each feature vector is shifted by its minimum (``normalize_feature``), the cost is the
    squared Euclidean distance divided by its maximum, the masses are uniform
    (:func:`unbalanced_plan`).
    """
    with torch.autocast(patches.device.type, enabled=False):
        x = patches.detach().double()
        y = families.detach().double()
        x = x - x.min(dim=-1, keepdim=True).values
        y = y - y.min(dim=-1, keepdim=True).values
        cost = torch.cdist(x, y) ** 2
        cost = cost / cost.max().clamp_min(torch.finfo(cost.dtype).tiny)
        return unbalanced_plan(cost, reg, reg_m).T


def micro_batches(n: int, bs_micro: int, shuffle: bool, device: torch.device) -> list[Tensor]:
    """Patch indices of each micro-batch: ``n // bs_micro + 1`` near-equal chunks (the authors'
    ``split_chunk_list``) of a random permutation (``shuffle``) or of ``0..n-1``; one chunk of all
    patches when ``bs_micro`` is 0."""
    groups = 1 if bs_micro <= 0 else n // bs_micro + 1
    if groups == 1:
        return [torch.arange(n, device=device)]
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    return list(torch.tensor_split(order, groups))


class MOTCat(CoattnPeer):
    """Unbalanced-OT co-attention (POT) + MCAT's token transformers, pooling and fusion.
    See the module docstring (the transport loops over patients: POT solves one plan at a time)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, "motcat")
        for name in ("motcat_ot_reg", "motcat_ot_tau"):
            if getattr(config, name) <= 0:
                raise ConfigError(f"config field {name!r} = {getattr(config, name)}; expected > 0")
        if config.motcat_bs_micro < 0:
            raise ConfigError(
                f"config field 'motcat_bs_micro' = {config.motcat_bs_micro}; expected >= 0 (0 = whole bag)"
            )

    def _transport(self, omic: Tensor, path: Tensor, wsi_mask: Tensor | None):
        """Per patient and micro-batch: co-attended tokens (K, G, C), the patient of each (K,),
        and the row-normalized co-attention (B, G, N) averaged over the patient's chunks."""
        cfg = self.config
        b, n_max = path.shape[:2]
        tokens, owner = [], []
        co = path.new_zeros(b, omic.shape[1], n_max, dtype=torch.float32)
        for i in range(b):
            real = (
                torch.arange(n_max, device=path.device) if wsi_mask is None else wsi_mask[i].nonzero()[:, 0]
            )
            chunks = micro_batches(real.numel(), cfg.motcat_bs_micro, self.training, path.device)
            for idx in (real[c] for c in chunks):
                p = path[i, idx]
                plan = transport_plan(p, omic[i], cfg.motcat_ot_reg, cfg.motcat_ot_tau)  # (G, n_c)
                tokens.append(plan.to(p.dtype) @ p)
                owner.append(i)
                rows = plan / plan.sum(dim=1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)
                co[i, :, idx] = (rows / len(chunks)).to(co.dtype)
        return torch.stack(tokens), torch.tensor(owner, device=path.device), co

    def forward(
        self, m1, wsi, wsi_mask=None, *, validate: bool = True, return_attention: bool = False, **_
    ) -> SurvivalOutput:
        self._check(m1, wsi, wsi_mask, validate)
        self._no_missing_slide(wsi, wsi_mask)
        omic, path = self.encode(m1, wsi, wsi_mask)
        tokens, owner, co = self._transport(omic, path, wsi_mask)
        logits, h_path, h_omic, a_path, _ = self.head(tokens, omic[owner])
        if tokens.shape[0] != omic.shape[0]:  # micro-batches: each patient's mean over its chunks

            def mean(x: Tensor) -> Tensor:
                total = x.new_zeros(omic.shape[0], *x.shape[1:]).index_add(0, owner, x)
                count = torch.bincount(owner, minlength=omic.shape[0]).to(x.dtype)
                return total / count.view(-1, *([1] * (x.dim() - 1)))

            logits, h_path, h_omic, a_path = mean(logits), mean(h_path), mean(h_omic), mean(a_path)
        return _output(
            logits,
            cls_m1=h_omic,
            cls_wsi=h_path,
            co_attention=co,
            wsi_attention=patch_attention(a_path, co),
        )


__all__ = ["MOTCat", "transport_plan", "unbalanced_plan", "micro_batches"]
