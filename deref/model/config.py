"""One typed configuration for every model of the package, serialized with each checkpoint.

``ModelConfig`` holds every size of the architecture and the paper's ablations as switches.
It round-trips through JSON (``to_dict`` / ``from_dict``) and validates itself on creation,
so a checkpoint whose config is inconsistent fails at load time with a named field.
"""

from __future__ import annotations

import dataclasses
import numbers
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

#: What each model reads: ``m1`` (genomics or the MRI) and/or ``wsi`` (the slide's patch bag).
MODEL_MODALITIES: dict[str, tuple[str, ...]] = {
    "deref": ("m1", "wsi"),
    "snn": ("m1",),
    "snn_transformer": ("m1",),
    "abmil": ("wsi",),
    "transmil": ("wsi",),
    "concat_mlp": ("m1", "wsi"),
    "resnet3d": ("m1",),
    # the paper's peers (deref.model.peers)
    "clam_sb": ("wsi",),
    "clam_mb": ("wsi",),
    "mcat": ("m1", "wsi"),
    "motcat": ("m1", "wsi"),
    "cmta": ("m1", "wsi"),
    "ccl": ("m1", "wsi"),
    "mome": ("m1", "wsi"),
    "cfdl": ("m1", "wsi"),
    "pibd": ("m1", "wsi"),
}
MODEL_TYPES = tuple(MODEL_MODALITIES)
#: Each model's name as its paper writes it.
MODEL_NAMES: dict[str, str] = {
    "deref": "DeReF",
    "snn": "SNN",
    "snn_transformer": "SNN+Transformer",
    "abmil": "AttnMIL",
    "transmil": "TransMIL",
    "concat_mlp": "Concat+MLP",
    "resnet3d": "ResNet3D",
    "clam_sb": "CLAM-SB",
    "clam_mb": "CLAM-MB",
    "mcat": "MCAT",
    "motcat": "MOTCat",
    "cmta": "CMTA",
    "ccl": "CCL",
    "mome": "MoME",
    "cfdl": "CFDL",
    "pibd": "PIBD",
}
M1_KINDS = ("genomic", "mri")
#: How an MRI cohort's modality 1 arrives: frozen per-sequence vectors, or ROI cubes for a 3D
#: ResNet trained with the model (``deref.model.resnet3d``).
MRI_ENCODERS = ("vectors", "resnet3d")
RESNET3D_DEPTHS = (10, 18, 34, 50)
#: The 3D ResNet downsamples by 16 (stem stride 2, three stride-2 stages).
MIN_MRI_GRID = 16
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

    MRI end to end (``mri_encoder="resnet3d"``, the paper's protocol): each modality-1 group is
    one sequence's ROI cube of side ``mri_grid``, flattened (``m1_sizes[g] == mri_grid ** 3``),
    and a 3D ResNet (``resnet3d_depth``, base width ``resnet3d_width``; one net shared by the
    sequences unless ``resnet3d_shared`` is False) is trained with the model. The default
    ``"vectors"`` reads frozen per-sequence feature vectors. ``model_type="resnet3d"`` is the
    MRI-only baseline (Table II's first row) and needs ``mri_encoder="resnet3d"``.
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
    # ---- peers (deref.model.peers): one block per peer, every field prefixed by its name ----
    # [clam]
    # CLAM-SB / CLAM-MB (Lu et al. 2021; mahmoodlab/CLAM models/model_clam.py, main.py defaults).
    clam_hidden: int = 512  # size_dict["small"][1]: embedding Linear(wsi_dim, 512); survival copies: 256
    clam_attn_dim: int = 256  # size_dict["small"][2]: gated-attention hidden width
    clam_gated: bool = True  # gate=True: Attn_Net_Gated (False: Attn_Net, tanh only)
    clam_k_sample: int = 8  # k_sample (--B 8): top-k / bottom-k attended patches per branch
    clam_inst_loss: str = "svm"  # --inst_loss svm (SmoothTop1SVM; paper, README); "ce": main.py's default
    clam_inst_weight: float = 0.3 / 0.7  # (1 - bag_weight) / bag_weight, --bag_weight 0.7: nll + w * inst
    clam_subtyping: bool = False  # --subtyping off: no out-of-class instance term
    # [/clam]
    # [mcat]
    mcat_fusion: str = "concat"  # MCAT models/model_coattn.py MCAT_Surv(fusion='concat'); or 'bilinear'
    mcat_coattn_heads: int = 1  # MCAT_Surv: MultiheadAttention(embed_dim=256, num_heads=1)
    mcat_layers: int = 2  # MCAT_Surv: nn.TransformerEncoder(num_layers=2) per modality
    mcat_ff: int = 512  # MCAT_Surv: TransformerEncoderLayer(dim_feedforward=512)
    mcat_dropout: float = 0.25  # MCAT_Surv(dropout=0.25): transformers, gated attention, rho
    mcat_bilinear_scale: int = 8  # MCAT_Surv: BilinearFusion(scale_dim1=8, scale_dim2=8)
    # [/mcat]
    # [motcat]
    motcat_fusion: str = "concat"  # MOTCat main.py --fusion default; MOTCAT_Surv also has 'bilinear'
    motcat_layers: int = 2  # MOTCAT_Surv: nn.TransformerEncoder(num_layers=2) per modality
    motcat_ff: int = 512  # MOTCAT_Surv: TransformerEncoderLayer(dim_feedforward=512)
    motcat_dropout: float = 0.25  # MOTCAT_Surv(dropout=0.25)
    motcat_bilinear_scale: int = 8  # MOTCAT_Surv: BilinearFusion(scale_dim1=8, scale_dim2=8)
    motcat_ot_reg: float = 0.1  # MOTCat main.py --ot_reg, entropic eps (command.md: 0.05 BLCA, LUAD)
    motcat_ot_tau: float = 0.5  # MOTCat main.py --ot_tau (reg_m of sinkhorn_knopp_unbalanced)
    motcat_bs_micro: int = 0  # 0 = whole bag (main.py --use_micro_batch False); paper's command.md: 256
    # [/motcat]
    # [cmta]
    cmta_model_size: str = "small"  # CMTA utils/options.py --model_size default ("small" or "large")
    cmta_large_path_hidden: int = 512  # CMTA network.py size_dict pathomics large [1024, 512, 256]
    cmta_cross_heads: int = 1  # network.py P_in_G_Att / G_in_P_Att MultiheadAttention(num_heads=1)
    cmta_fusion: str = "concat"  # options.py --fusion default ("concat" or "bilinear")
    cmta_bilinear_scale: int = 8  # network.py BilinearFusion(scale_dim1=8, scale_dim2=8)
    cmta_bilinear_dropout: float = 0.25  # util.py BilinearFusion dropout_rate default
    cmta_alpha: float = 1.0  # run.sh / README --alpha 1.0 (BLCA, GBMLGG, UCEC; options.py default 0.5)
    # [/cmta]
    # [ccl]
    ccl_clusters: int = 6  # CCL models/CCL/network.py custom_config num_cluster default 6
    ccl_update_ratio: float = 0.1  # network.py custom_config update_ratio default 0.1
    ccl_bank_length: int = 10  # network.py custom_config bank_length default 10
    ccl_dropout: float = 0.15  # network.py SNN_Block(dropout=0.15)
    ccl_temperature: float = 2.0  # utils/loss_factory.py CohortLoss temperature=2
    ccl_cohort_weight: float = 1.0  # network.py custom_config loss "nllsurv,cohort" (weight 1)
    ccl_kmeans_tol: float = 1e-4  # kmeans_pytorch kmeans(tol=1e-4)
    ccl_kmeans_iters: int = 100  # ours: a cap on Lloyd iterations (theirs iter_limit=0, no cap)
    # [/ccl]
    # [mome]
    mome_dim: int = 512  # MoMETransformer size_dict_WSI["small"] = [1024, 512, 512]: MoME(dim=size[2])
    mome_omic_hidden: tuple[int, ...] = (512, 512)  # size_dict_omic["small"]: SNN_Blocks per gene family
    mome_stages: int = 2  # MoME_patho1/genom1 + MoME_patho2/genom2 (model_mome.py)
    mome_experts: tuple[str, ...] = ("trans", "bottleneck", "add", "drop")  # MoME.routing_dict order
    mome_n_bottlenecks: int = 2  # main.py --n_bottlenecks default 2
    mome_landmarks: int = 256  # TransLayer NystromAttention num_landmarks = dim // 2
    mome_routing: str = "hard"  # MoMETransformer calls MoME(..., hard=True): top-1 ("soft": weighted sum)
    mome_temperature: float = 1.0  # RoutingNetwork temp (MoME.forward passes hard=True as temp: 1.0)
    mome_admin_layers: int = 8  # TransLayer residual: admin_torch.as_module(8)
    # [/mome]
    # [cfdl]
    cfdl_feature_dim: int = 32  # CFDL main.py --feature_dim (decoupled feature width)
    cfdl_head_hidden: int = 32  # CFDL models/CFDL.py linear_cls hidden width (hard-coded 32)
    cfdl_encoder_dropout: float = 0.5  # CFDL main.py --encoder_drop (after each modality encoder)
    cfdl_cls_dropout: float = 0.5  # CFDL main.py --cls_drop (classifier MLP)
    cfdl_w_sim: float = 1.0  # CFDL main.py --w_sim (shared / partial-shared similarity losses)
    cfdl_w_diff: float = 1.0  # CFDL main.py --w_diff (|cosine| difference loss)
    cfdl_max_partial: int = 0  # 0: every subset of 2..M-1 modalities (main.py --if_allpair 1); k: sizes <= k
    # [/cfdl]
    # [pibd]
    pibd_dim: int = 256  # PIBD process_args --wsi_projection_dim (z and token width)
    pibd_heads: int = 4  # PIBD model_PIBD.py MITransformerLayer(num_heads=4)
    pibd_bag_size: int = 512  # PIBD model_PIBD.py BAG_SIZE (patches per sub-bag)
    pibd_num_patches: int = 4096  # PIBD --num_patches (num_patches // bag_size = 8 sub-bags in training)
    pibd_ratio_wsi: float = 0.5  # PIBD --ratio_wsi (top-k patches = ratio * sub-bag size)
    pibd_ratio_omics: float = 0.8  # PIBD --ratio_omics (top-k gene tokens = int(ratio * G))
    pibd_sample_num: int = 50  # PIBD --sample_num (reparameterized samples, training only)
    pibd_alpha: float = 0.1  # PIBD --alpha (prototypes' survival NLL, IB term)
    pibd_beta: float = 0.01  # PIBD --beta (prototypes' KL to N(0, I), IB term)
    pibd_gamma: float = 1.0  # PIBD --gamma (proxy loss)
    pibd_sigma: float = 0.1  # PIBD --sigma (CLUB estimate + its learning loss; lambda in the paper)
    pibd_alpha_surv: float = 0.5  # PIBD model_PIBD.py NLLSurvLoss(alpha=0.5) of the prototypes
    pibd_pib_dropout: float = 0.2  # PIBD model_PIBD.py PIB encoder Dropout(0.2)
    pibd_attn_dropout: float = 0.1  # PIBD MITransformerLayer(attn_drop=0.1)
    pibd_proj_dropout: float = 0.1  # PIBD MITransformerLayer(proj_drop=0.1)
    pibd_drop_path: float = 0.1  # PIBD MITransformerLayer(drop_path=0.1) (also the MLP's dropout)
    pibd_club_hidden: int = 512  # PIBD club.py CLUBMean(hidden_size=512)
    # [/pibd]
    # MRI encoder (the defaults are the frozen-vector behaviour of earlier runs).
    mri_encoder: str = "vectors"
    resnet3d_depth: int = 10
    resnet3d_width: int = 32
    resnet3d_shared: bool = True
    mri_grid: int = 32
    # Missing inputs (``deref train --allow-missing``): a modality-1 group or a slide given as
    # NaN is missing; DeReF puts the training fold's mean token in its place (see ``missing``
    # in :mod:`deref.model.encoders`), the baselines the group's training mean.
    allow_missing: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        for f in fields(self):  # JSON gives lists: every tuple field is a tuple again
            if str(f.type).startswith("tuple[") and isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        self.m1_sizes = tuple(int(s) for s in self.m1_sizes)
        self.m1_names = tuple(str(s) for s in self.m1_names)
        self.segments = tuple(int(s) for s in self.segments)
        self.validate()

    def _check_types(self) -> None:
        """Every field has its declared type, wherever the value came from (``--set``, a JSON run
        config, code): ``"false"`` for a bool, ``2.5`` for an int or ``"64"`` for a size is a
        :class:`ConfigError` naming the field and its type (ints are accepted for floats)."""

        def boolean(value: Any) -> bool:
            return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too

        def ok(value: Any, kind: str) -> bool:
            if kind == "bool":
                return boolean(value)
            if kind == "int":  # numpy integers too; bools are not sizes
                return isinstance(value, numbers.Integral) and not boolean(value)
            if kind == "float":
                return isinstance(value, numbers.Real) and not boolean(value)
            if kind == "str":
                return isinstance(value, str)
            return True

        for f in fields(self):
            kind = str(f.type).replace(" ", "")
            value = getattr(self, f.name)
            if kind.endswith("|None"):
                if value is None:
                    continue
                kind = kind[: -len("|None")]
            if kind.startswith("tuple["):
                inner = kind[len("tuple[") :].split(",")[0]
                good = isinstance(value, (tuple, list)) and all(ok(v, inner) for v in value)
            else:
                good = ok(value, kind)
            if not good:
                raise ConfigError(
                    f"config field {f.name!r} = {value!r} ({type(value).__name__}); expected {f.type}"
                )

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
        self._validate_mri()

    def _validate_mri(self) -> None:
        if self.mri_encoder not in MRI_ENCODERS:
            raise ConfigError(
                f"config field 'mri_encoder' = {self.mri_encoder!r}; expected one of {MRI_ENCODERS}"
            )
        if self.resnet3d_depth not in RESNET3D_DEPTHS:
            raise ConfigError(
                f"config field 'resnet3d_depth' = {self.resnet3d_depth!r}; expected one of {RESNET3D_DEPTHS}"
            )
        if self.resnet3d_width <= 0:
            raise ConfigError(f"config field 'resnet3d_width' = {self.resnet3d_width}; expected > 0")
        if self.model_type == "resnet3d" and self.mri_encoder != "resnet3d":
            raise ConfigError(
                f"config field 'model_type' = 'resnet3d' reads ROI cubes; expected mri_encoder = 'resnet3d', "
                f"got {self.mri_encoder!r}"
            )
        if self.mri_encoder != "resnet3d":
            return
        if self.m1_kind != "mri":
            raise ConfigError(
                f"config field 'mri_encoder' = 'resnet3d' needs m1_kind = 'mri', got {self.m1_kind!r}"
            )
        if self.mri_grid < MIN_MRI_GRID:
            raise ConfigError(
                f"config field 'mri_grid' = {self.mri_grid}; expected >= {MIN_MRI_GRID} "
                "(the 3D ResNet downsamples by 16)"
            )
        cube = self.mri_grid**3
        for name, size in zip(self.m1_names, self.m1_sizes):
            if size != cube:
                raise ConfigError(
                    f"config field 'm1_sizes' gives sequence {name!r} {size} values; expected "
                    f"mri_grid ** 3 = {self.mri_grid}^3 = {cube} (one flattened ROI cube per sequence)"
                )

    # ------------------------------------------------------------ derived sizes
    @property
    def modalities(self) -> tuple[str, ...]:
        """What the model reads: ``("m1",)``, ``("wsi",)`` or ``("m1", "wsi")``."""
        return MODEL_MODALITIES[self.model_type]

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


def tiny_mri_config(sequences: tuple[str, ...] = ("t1", "t2"), grid: int = 16, **changes: Any) -> ModelConfig:
    """A small end-to-end MRI configuration (3D ResNet-10 of width 8 on ``grid``^3 cubes) for tests."""
    base = dict(
        m1_kind="mri",
        mri_encoder="resnet3d",
        mri_grid=grid,
        m1_sizes=(grid**3,) * len(sequences),
        m1_names=tuple(sequences),
        resnet3d_width=8,
        c1=32,
        c2=16,
        heads=4,
        segments=(2, 4, 8),
        fixed_segments=4,
        expert_hidden=16,
    )
    base.update(changes)
    return tiny_config(**base)


__all__ = [
    "ModelConfig",
    "tiny_config",
    "tiny_mri_config",
    "GENE_FAMILIES",
    "MODEL_MODALITIES",
    "MODEL_NAMES",
    "MODEL_TYPES",
    "REFERENCE_SEGMENTS",
    "MRI_ENCODERS",
    "RESNET3D_DEPTHS",
    "field",
]
