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
    "attention_labels",
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


def attention_labels(model, n_rows: int) -> tuple[str, ...] | None:
    """Names of the rows of a model's ``wsi_attention`` when they are not Nystrom layers: a
    model with ``attention_label`` (a format string of the row index ``i`` and its 1-based
    ``n``, e.g. ``"attention branch of time bin {n}"``) names its rows; None otherwise (rows
    are the WSI encoder's layers)."""
    label = getattr(model, "attention_label", None)
    if label is None:
        return None
    return tuple(label.format(i=i, n=i + 1) for i in range(n_rows))
