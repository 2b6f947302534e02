"""DeReF and its baselines. ``build_model(config)`` returns the model a config names."""

from deref.model.config import GENE_FAMILIES, ModelConfig, tiny_config
from deref.model.deref import DeReF, SurvivalOutput, collate_bags, survival_from_logits

__all__ = [
    "GENE_FAMILIES",
    "ModelConfig",
    "tiny_config",
    "DeReF",
    "SurvivalOutput",
    "collate_bags",
    "survival_from_logits",
    "build_model",
]


def build_model(config: ModelConfig):
    """The model named by ``config.model_type`` (DeReF or a baseline)."""
    if config.model_type == "deref":
        return DeReF(config)
    from deref.model.baselines import BASELINES

    return BASELINES[config.model_type](config)
