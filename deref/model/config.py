"""One typed configuration for every model of the package, serialized with each checkpoint.

``ModelConfig`` holds every size of the architecture and the paper's ablations as switches.
It round-trips through JSON (``to_dict`` / ``from_dict``) and validates itself on creation,
so a checkpoint whose config is inconsistent fails at load time with a named field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from deref.errors import ConfigError

#: The reference code's segment set for random feature reorganization.
REFERENCE_SEGMENTS: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
#: The six MCAT gene families, in the order of the signatures table.
GENE_FAMILIES: tuple[str, ...] = (
    "Tumor Suppressor Genes",
    "Oncogenes",
    "Protein Kinases",
    "Cell Differentiation Markers",
    "Transcription Factors",
    "Cytokines and Growth Factors",
)

MODEL_TYPES = ("deref", "snn", "snn_transformer", "abmil", "transmil", "concat_mlp")
M1_KINDS = ("genomic", "mri")
RCA_MODES = ("rows", "blocks", "cross_attention", "concat_mlp")
REORG_MODES = ("random", "fixed", "none")
EVAL_REORG_MODES = ("all", "random", "fixed", "none")
FUSION_MODES = ("moe", "concat")
DISTANCES = ("mse", "l1", "kl", "cosine")


@dataclass
class ModelConfig:
    """Sizes and switches of a DeReF model (or a baseline).

    Sizes follow the paper: ``c1`` = 256 (encoder width), ``c2`` = 128 (decoupled feature
    width). ``m1_sizes`` is the input width of each modality-1 token: the six gene-family
    group sizes for genomics, or one size per MRI sequence vector.
    """

    model_type: str = "deref"
    m1_kind: str = "genomic"
    m1_sizes: tuple[int, ...] = (94, 334, 521, 468, 1496, 479)
    m1_names: tuple[str, ...] = GENE_FAMILIES
    wsi_dim: int = 1024
    n_bins: int = 4
    c1: int = 256
    c2: int = 128
    snn_hidden: int = 1024
    snn_dropout: float = 0.25
    wsi_dropout: float = 0.25
    # Nystrom attention of both token encoders (TransMIL settings).
    heads: int = 8
    landmarks: int = 128
    pinv_iterations: int = 6
    residual_conv_kernel: int = 33
    attn_dropout: float = 0.1
    # Decoupling.
    specific_dropout: float = 0.1
    use_explore: bool = True
    decouple: bool = True
    rca_mode: str = "rows"
    # Random feature reorganization.
    segments: tuple[int, ...] = REFERENCE_SEGMENTS
    reorg_train: str = "random"
    reorg_eval: str = "all"
    fixed_segments: int = 8
    # Fusion.
    fusion: str = "moe"
    n_experts: int = 4
    expert_hidden: int = 64
    expert_dropout: float = 0.1
    # Decoupling loss.
    distance: str = "mse"
    alpha_dis: float = 1.0
    hinge_margin: float | None = None
    # Baselines.
    abmil_hidden: int = 256

    def __post_init__(self) -> None:
        self.m1_sizes = tuple(int(s) for s in self.m1_sizes)
        self.m1_names = tuple(str(s) for s in self.m1_names)
        self.segments = tuple(int(s) for s in self.segments)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"config field {name!r} = {value!r}; expected one of {options}")

        choice("model_type", MODEL_TYPES)
        choice("m1_kind", M1_KINDS)
        choice("rca_mode", RCA_MODES)
        choice("reorg_train", REORG_MODES)
        choice("reorg_eval", EVAL_REORG_MODES)
        choice("fusion", FUSION_MODES)
        choice("distance", DISTANCES)
        if not self.m1_sizes or any(s <= 0 for s in self.m1_sizes):
            raise ConfigError(f"config field 'm1_sizes' = {self.m1_sizes}; expected positive sizes")
        if len(self.m1_names) != len(self.m1_sizes):
            raise ConfigError(
                f"config field 'm1_names' has {len(self.m1_names)} names for {len(self.m1_sizes)} "
                "m1_sizes; expected one name per modality-1 token"
            )
        for name in ("wsi_dim", "n_bins", "c1", "c2", "heads", "landmarks", "n_experts"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name!r} = {getattr(self, name)}; expected > 0")
        if self.c1 % self.heads:
            raise ConfigError(f"config field 'c1' = {self.c1} is not divisible by heads = {self.heads}")
        for s in self.segments:
            if s <= 0 or self.c2 % s:
                raise ConfigError(
                    f"config field 'segments' holds {s}; every segment count must divide c2 = {self.c2}"
                )
        if self.fixed_segments <= 0 or self.c2 % self.fixed_segments:
            raise ConfigError(
                f"config field 'fixed_segments' = {self.fixed_segments} must divide c2 = {self.c2}"
            )
        if self.residual_conv_kernel % 2 == 0:
            raise ConfigError("config field 'residual_conv_kernel' must be odd")

    # ------------------------------------------------------------ derived sizes
    @property
    def n_features(self) -> int:
        """Number of decoupled features fed to reorganization and fusion."""
        if not self.decouple:
            return 2
        return 4 if self.use_explore else 3

    @property
    def feature_names(self) -> tuple[str, ...]:
        m1 = "mri" if self.m1_kind == "mri" else "genomic"
        if not self.decouple:
            return (m1, "wsi")
        names = (f"specific_{m1}", "specific_wsi", "share", "explore")
        return names[: self.n_features]

    # --------------------------------------------------------------- serialize
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def tiny_config(**changes: Any) -> ModelConfig:
    """A small configuration for tests and quick demos (same architecture, smaller inputs)."""
    base = dict(m1_sizes=(5, 6, 7, 8, 9, 10), wsi_dim=32, snn_hidden=64, landmarks=16)
    base.update(changes)
    return ModelConfig(**base)


__all__ = ["ModelConfig", "tiny_config", "GENE_FAMILIES", "REFERENCE_SEGMENTS", "field"]
