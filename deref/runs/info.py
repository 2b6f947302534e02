"""``run.json`` as typed objects: :class:`RunInfo`, parsed once by ``RunDir``.

Nothing outside :mod:`deref.runs` reads ``run.json`` keys; everything else reads these fields.
Torch-free (the model config imports without torch), so the dashboard's first page and the
statistics can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deref.errors import CheckpointError, ConfigError
from deref.model.config import MODEL_MODALITIES, ModelConfig
from deref.recalibration import Recalibration
from deref.survival import MEAN_OF_FOLDS

RUN_FORMAT = "deref-run/1"

# models that read no slide (modality 1 only: genomics or the MRI): they need no bag folder
GENOMIC_ONLY_MODELS = frozenset(m for m, reads in MODEL_MODALITIES.items() if "wsi" not in reads)

_TIME_UNITS = (("month", "months"), ("day", "days"), ("year", "years"), ("week", "weeks"))


def time_unit_of(time_col: str) -> str:
    """The unit a survival-time column name says (``survival_months`` -> ``months``)."""
    col = time_col.lower()
    return next((unit for key, unit in _TIME_UNITS if key in col), "time units")


def _edge(x: Any) -> float:
    return math.inf if x in ("inf", None) else float(x)


def _edge_json(x: float) -> float | str:
    return "inf" if math.isinf(x) else float(x)


@dataclass(frozen=True)
class CIndexSummary:
    """A C-index over folds under one protocol (``fixed last epoch (20)``, ...)."""

    protocol: str
    mean: float
    std: float
    folds: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CIndexSummary:
        return cls(
            protocol=str(d.get("protocol", "")),
            mean=_float(d.get("cindex_mean")),
            std=_float(d.get("cindex_std")),
            folds=tuple(_float(x) for x in d.get("cindex_folds", [])),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "cindex_mean": self.mean,
            "cindex_std": self.std,
            "cindex_folds": list(self.folds),
        }


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True)
class RunMetrics:
    """The run's cohort-level metrics: the headline (fixed last epoch) and the optimistic
    best-epoch figure, reported only labelled as such."""

    headline: CIndexSummary | None = None
    optimistic_best_epoch: CIndexSummary | None = None
    pooled_oof_cindex: float = float("nan")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunMetrics:
        d = d or {}
        head, opt = d.get("headline"), d.get("optimistic_best_epoch")
        return cls(
            headline=CIndexSummary.from_dict(head) if isinstance(head, Mapping) else None,
            optimistic_best_epoch=CIndexSummary.from_dict(opt) if isinstance(opt, Mapping) else None,
            pooled_oof_cindex=_float(d.get("pooled_oof_cindex")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.headline is not None:
            out["headline"] = self.headline.to_dict()
        out["pooled_oof_cindex"] = self.pooled_oof_cindex
        if self.optimistic_best_epoch is not None:
            out["optimistic_best_epoch"] = self.optimistic_best_epoch.to_dict()
        return out


@dataclass(frozen=True)
class FoldInfo:
    """One fold of a run: its patients, time-bin edges (fitted on its training patients),
    validation metrics and training curve.

    ``horizon`` is the largest follow-up time among its training patients: the end of the
    open last time bin when curves are interpolated (None in runs written before it was
    recorded). ``recalibration`` is the hazard map fitted on inner validation patients
    (:mod:`deref.recalibration`), applied to the fold model's curves; None without one.
    """

    index: int
    bin_edges: tuple[float, ...]
    train_ids: tuple[str, ...] = ()
    val_ids: tuple[str, ...] = ()
    seed: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    seconds: float | None = None
    horizon: float | None = None
    recalibration: Recalibration | None = None
    #: SHA-256 of the fold's model.safetensors as training wrote it (checked at load).
    weights_sha256: str | None = None

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    @property
    def n_val(self) -> int:
        return len(self.val_ids)

    @property
    def n_bins(self) -> int:
        return len(self.bin_edges) - 1

    @property
    def cindex_last_epoch(self) -> float | None:
        """The validation C-index of the fold's kept model (the headline): the fixed last epoch,
        or the epoch chosen on inner data when ``selection["rule"] == "inner"``; None when not
        recorded."""
        c = self.metrics.get("cindex_last_epoch")
        return None if c is None else float(c)

    @property
    def optimistic_best_epoch(self) -> int | None:
        """The epoch (1-based) with the best validation C-index; None when not tracked."""
        best = self.metrics.get("optimistic_best_epoch")
        return None if best is None else int(best)

    @property
    def optimistic_best_epoch_cindex(self) -> float | None:
        """That epoch's validation C-index (optimistic: chosen on the validation fold)."""
        best = self.metrics.get("optimistic_best_epoch_cindex")
        return None if best is None else float(best)

    @property
    def selection(self) -> Mapping[str, Any] | None:
        """How the kept epoch was chosen: ``{"rule": "last" | "inner", "epoch", ...}`` (the
        inner rule adds its metric, split, grid point and candidates' inner curves); None
        for runs written before it was recorded."""
        sel = self.metrics.get("selection")
        return dict(sel) if isinstance(sel, Mapping) else None

    @property
    def selected_epoch(self) -> int | None:
        """The epoch (1-based) of the fold's kept model; None when not recorded."""
        e = self.metrics.get("selected_epoch")
        return None if e is None else int(e)

    @property
    def cindex_fixed_last_epoch(self) -> float | None:
        """The validation C-index at the fixed last epoch (equals :attr:`cindex_last_epoch`
        unless the epoch was chosen on inner data), for comparison."""
        c = self.metrics.get("cindex_fixed_last_epoch", self.metrics.get("cindex_last_epoch"))
        return None if c is None else float(c)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FoldInfo:
        return cls(
            index=int(d["index"]),
            bin_edges=tuple(_edge(x) for x in d["bin_edges"]),
            train_ids=tuple(str(c) for c in d.get("train_ids", [])),
            val_ids=tuple(str(c) for c in d.get("val_ids", [])),
            seed=None if d.get("seed") is None else int(d["seed"]),
            metrics=dict(d.get("metrics") or {}),
            history=tuple(dict(h) for h in d.get("history") or []),
            seconds=None if d.get("seconds") is None else float(d["seconds"]),
            horizon=None if d.get("horizon") is None else float(d["horizon"]),
            recalibration=None if not d.get("recalibration") else Recalibration.from_dict(d["recalibration"]),
            weights_sha256=d.get("weights_sha256") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}  # written only when known: older run.json files round-trip
        if self.horizon is not None:
            extra["horizon"] = self.horizon
        if self.recalibration is not None:
            extra["recalibration"] = self.recalibration.to_dict()
        if self.weights_sha256 is not None:
            extra["weights_sha256"] = self.weights_sha256
        return {
            "index": self.index,
            "seed": self.seed,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "train_ids": list(self.train_ids),
            "val_ids": list(self.val_ids),
            "bin_edges": [_edge_json(e) for e in self.bin_edges],
            "metrics": dict(self.metrics),
            "history": [dict(h) for h in self.history],
            "seconds": self.seconds,
            **extra,
        }


@dataclass(frozen=True)
class DataInfo:
    """Where the run's data came from (provenance) and what its models read."""

    table: str | None = None
    bag_dir: str | None = None
    fingerprint: str | None = None
    n_patients: int | None = None
    n_events: int | None = None
    m1_names: tuple[str, ...] = ()
    m1_columns: tuple[tuple[str, ...], ...] = ()
    wsi_dim: int | None = None
    time_col: str = "survival_months"
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KEYS = (
        "table",
        "bag_dir",
        "fingerprint",
        "n_patients",
        "n_events",
        "m1_names",
        "m1_columns",
        "wsi_dim",
        "time_col",
    )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DataInfo:
        d = dict(d or {})
        m1 = d.get("m1_columns") or []
        if not (
            isinstance(m1, list)
            and all(isinstance(g, list) and all(isinstance(c, str) for c in g) for g in m1)
        ):
            raise ConfigError("data.m1_columns: malformed; expected a list of lists of column names")
        return cls(
            table=d.get("table"),
            bag_dir=d.get("bag_dir"),
            fingerprint=d.get("fingerprint"),
            n_patients=None if d.get("n_patients") is None else int(d["n_patients"]),
            n_events=None if d.get("n_events") is None else int(d["n_events"]),
            m1_names=tuple(str(x) for x in d.get("m1_names") or []),
            m1_columns=tuple(tuple(g) for g in m1),
            wsi_dim=None if d.get("wsi_dim") is None else int(d["wsi_dim"]),
            time_col=str(d.get("time_col") or "survival_months"),
            extra={k: v for k, v in d.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "table": self.table,
            "bag_dir": self.bag_dir,
            "fingerprint": self.fingerprint,
            "n_patients": self.n_patients,
            "n_events": self.n_events,
            "m1_names": list(self.m1_names),
            "m1_columns": [list(g) for g in self.m1_columns],
            "wsi_dim": self.wsi_dim,
            "time_col": self.time_col,
        }
        out.update(self.extra)
        return out

    @property
    def n_m1_columns(self) -> int:
        return sum(len(g) for g in self.m1_columns)

    def provenance(self) -> dict[str, Any]:
        """:meth:`to_dict` for display: the genomic columns summarized as their count."""
        out = self.to_dict()
        out["m1_columns"] = f"{self.n_m1_columns} columns in {len(self.m1_columns)} groups"
        return out


@dataclass(frozen=True)
class RunInfo:
    """A run's ``run.json``, typed (see :mod:`deref.runs.directory` for the layout)."""

    name: str
    model: ModelConfig
    folds: tuple[FoldInfo, ...]
    data: DataInfo = field(default_factory=DataInfo)
    train: Mapping[str, Any] = field(default_factory=dict)
    metrics: RunMetrics = field(default_factory=RunMetrics)
    created: str | None = None
    package_version: str | None = None
    torch_version: str | None = None
    format: str = RUN_FORMAT
    #: The reproducibility manifest (``deref.training.reproducibility_manifest``): code version,
    #: dependency versions, seeds, split-file and feature fingerprints, device and dtype; empty for
    #: runs written before it was recorded.
    environment: Mapping[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- derived facts
    @property
    def fold_indices(self) -> list[int]:
        return [f.index for f in self.folds]

    def fold(self, k: int) -> FoldInfo:
        for f in self.folds:
            if f.index == int(k):
                return f
        raise CheckpointError(f"run {self.name!r}: no fold {k}; folds are {self.fold_indices}")

    @property
    def needs_wsi(self) -> bool:
        """Whether the run's models read a slide (a bag folder is then required)."""
        return self.model.model_type not in GENOMIC_ONLY_MODELS

    @property
    def has_decoupled_features(self) -> bool:
        """Whether the run's model has DeReF's decoupled features and MoE gate (baselines do not)."""
        return self.model.model_type == "deref"

    @property
    def m1_kind(self) -> str:
        """``"genomic"`` or ``"mri"``: what the run's modality 1 is."""
        return self.model.m1_kind

    @property
    def m1_label(self) -> str:
        """A modality-1 token in words: ``gene family`` or ``MRI sequence``."""
        return "MRI sequence" if self.m1_kind == "mri" else "gene family"

    @property
    def modalities(self) -> tuple[str, ...]:
        """What each patient must bring: ``("genomics",)``, ``("genomics", "wsi")``, ``("mri",
        "wsi")``, ``("mri",)`` (models of modality 1 only), ``("wsi",)`` (slide-only models)."""
        m1 = "mri" if self.m1_kind == "mri" else "genomics"
        if "m1" not in MODEL_MODALITIES[self.model.model_type]:
            return ("wsi",)
        return (m1, "wsi") if self.needs_wsi else (m1,)

    @property
    def time_unit(self) -> str:
        return time_unit_of(self.data.time_col)

    @property
    def n_bins(self) -> int:
        return self.model.n_bins

    def bin_edges(self) -> dict[int, list[float]]:
        """Fold -> time-bin edges, plus :data:`MEAN_OF_FOLDS` -> the folds' mean edges (the bins
        of a survival curve averaged over the fold models)."""
        out = {f.index: [float(e) for e in f.bin_edges] for f in self.folds}
        if out and len({len(e) for e in out.values()}) == 1:
            out[MEAN_OF_FOLDS] = np.mean(list(out.values()), axis=0).tolist()
        return out

    def horizons(self) -> dict[int, float]:
        """Fold -> its largest training follow-up time (where an open last bin ends when a curve
        is interpolated), plus :data:`MEAN_OF_FOLDS` -> their mean; folds of runs written before
        it was recorded are absent."""
        out = {f.index: float(f.horizon) for f in self.folds if f.horizon is not None}
        if out and len(out) == len(self.folds):
            out[MEAN_OF_FOLDS] = float(np.mean(list(out.values())))
        return out

    @property
    def recalibrated(self) -> bool:
        """True when the fold models' curves pass through a fitted hazard map."""
        return any(f.recalibration is not None for f in self.folds)

    def validation_folds(self) -> dict[str, int]:
        """case_id -> the fold whose validation set held the patient out."""
        return {c: f.index for f in self.folds for c in f.val_ids}

    def training_ids(self, k: int) -> tuple[str, ...]:
        return self.fold(k).train_ids

    def history_frame(self):
        """The training curves: one row per (fold, epoch) with ``fold`` and every quantity the
        trainer recorded (``epoch``, ``train_loss``, ``val_cindex``...); empty when none was."""
        import pandas as pd

        return pd.DataFrame([{"fold": f.index, **h} for f in self.folds for h in f.history])

    # ---------------------------------------------------------------- (de)serialization
    @classmethod
    def from_dict(cls, d: Any, where: str = "run.json") -> RunInfo:
        """Parse ``run.json``; a malformed file raises :class:`CheckpointError` naming the key."""
        if not isinstance(d, Mapping):
            raise CheckpointError(
                f"{where}: not a JSON object; expected a run.json as `deref train` writes it"
            )
        fmt = d.get("format")
        if fmt != RUN_FORMAT:
            raise CheckpointError(f"{where}: format {fmt!r}; expected {RUN_FORMAT!r}")
        try:
            model = ModelConfig.from_dict(d["model"])
        except (KeyError, TypeError, ConfigError) as exc:
            raise CheckpointError(
                f"{where}: bad model config ({exc}); expected a 'model' section as `deref train` writes it"
            ) from exc
        folds_raw = d.get("folds")
        if not isinstance(folds_raw, list) or not folds_raw:
            raise CheckpointError(
                f"{where}: no 'folds' list; expected a run.json as `deref train` writes it (one entry per fold)"
            )
        folds = []
        for i, f in enumerate(folds_raw):
            if not isinstance(f, Mapping) or "index" not in f or "bin_edges" not in f:
                raise CheckpointError(f"{where}: folds[{i}] needs 'index' and 'bin_edges'")
            try:
                folds.append(FoldInfo.from_dict(f))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"{where}: folds[{i}] malformed ({exc})") from exc
        try:
            data = DataInfo.from_dict(d.get("data"))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc}") from exc
        return cls(
            name=str(d.get("name") or ""),
            model=model,
            folds=tuple(folds),
            data=data,
            train=dict(d.get("train") or {}),
            metrics=RunMetrics.from_dict(d.get("metrics")),
            created=d.get("created"),
            package_version=d.get("package_version"),
            torch_version=d.get("torch_version"),
            format=str(fmt),
            environment=dict(d.get("environment") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "created": self.created,
            "package_version": self.package_version,
            "torch_version": self.torch_version,
            "model": self.model.to_dict(),
            "train": dict(self.train),
            "data": self.data.to_dict(),
            "folds": [f.to_dict() for f in self.folds],
            "metrics": self.metrics.to_dict(),
            "environment": dict(self.environment),
        }
