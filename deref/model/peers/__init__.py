"""The paper's peers (Tables II and III), each written from its paper, with DeReF's call
signature ``model(m1, wsi, wsi_mask, *, validate=True, return_attention=False)`` and its
:class:`~deref.model.deref.SurvivalOutput`, trained by the same loop
(:mod:`deref.training`).

A peer's own auxiliary losses reach the loop through one hook: a model with a method
``auxiliary_loss(out, bins, censorship) -> dict[str, Tensor]`` has the (already weighted)
terms added to the survival loss of every training batch; the loop records their sum per
epoch (``train_aux``). Model-specific tensors the hook needs travel in ``out.extras``
(batch-first). A model whose genomic encoder MCAT's ``lambda_reg`` should penalize names
it with ``l1_parameters()``.

Explanations: ``out.co_attention`` ``(B, G, N)`` is the family-by-patch co-attention of
MCAT-style models (the Attention page shows it per family); ``out.wsi_attention``
``(B, H, N)`` is attention over patches (CLAM's per branch).

Each peer module is imported on first use (``build_model``), so nothing here loads torch.
"""

from __future__ import annotations

import importlib

#: model_type -> "module:Class" under deref.model.peers
PEERS: dict[str, str] = {
    "clam_sb": "clam:CLAMSB",
    "clam_mb": "clam:CLAMMB",
    "mcat": "mcat:MCAT",
    "motcat": "motcat:MOTCat",
    "cmta": "cmta:CMTA",
    "ccl": "ccl:CCL",
    "mome": "mome:MoME",
    "cfdl": "cfdl:CFDL",
    "pibd": "pibd:PIBD",
}


def peer_class(model_type: str):
    """The class of peer ``model_type`` (imports its module)."""
    module, name = PEERS[model_type].split(":")
    return getattr(importlib.import_module(f"deref.model.peers.{module}"), name)


__all__ = ["PEERS", "peer_class"]
