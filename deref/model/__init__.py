"""DeReF and its baselines. ``build_model(config)`` returns the model a config names.

The configuration (``ModelConfig``) imports without torch, so reading a run's ``run.json`` (the
dashboard's first page, ``deref.runs.RunDir``) does not load it; the model classes load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deref.model.config import GENE_FAMILIES, ModelConfig, tiny_config, tiny_mri_config

if TYPE_CHECKING:
    from deref.model.deref import DeReF, SurvivalOutput, collate_bags, survival_from_logits

__all__ = [
    "GENE_FAMILIES",
    "ModelConfig",
    "tiny_config",
    "tiny_mri_config",
    "DeReF",
    "SurvivalOutput",
    "collate_bags",
    "survival_from_logits",
    "build_model",
]

_FROM_DEREF = ("DeReF", "SurvivalOutput", "collate_bags", "survival_from_logits")


def __getattr__(name: str) -> Any:
    if name in _FROM_DEREF:
        from deref.model import deref as _deref

        return getattr(_deref, name)
    raise AttributeError(f"module 'deref.model' has no attribute {name!r}")


def build_model(config: ModelConfig):
    """The model named by ``config.model_type`` (DeReF or a baseline)."""
    if config.model_type == "deref":
        from deref.model.deref import DeReF

        return DeReF(config)
    from deref.model.peers import PEERS, peer_class

    if config.model_type in PEERS:
        return peer_class(config.model_type)(config)
    from deref.model.baselines import BASELINES

    return BASELINES[config.model_type](config)
