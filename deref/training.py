"""Leak-free k-fold cross-validated training of DeReF and its baselines.

For each fold, everything learned from data — time bins, the genomic standardizer, the
mean patch embedding used by the "what if" view — is fitted on that fold's training
patients only, and stored with the fold's checkpoint. The headline metric is the one of
the fixed, last epoch; the best-epoch figure is recorded, labelled as optimistic (it picks
the epoch on the validation fold).

Honest model selection (``TrainConfig.selection = "inner"``): an inner validation split (or
inner k-fold) is carved from each outer training fold, stratified by event and time bin
(:func:`deref.data.splits.inner_splits`); the outer validation fold is never seen. On it the
epoch count — and, with ``grid``, a few regularization settings — are chosen: every
candidate is trained on the inner-training part (its bins and standardizer fitted there, so
the inner split is a true hold-out, as the outer one is) and scored on the inner validation
part after every epoch; the best mean score over inner folds wins (ties: the first
candidate, the earliest epoch). The fold's model is then retrained on the whole outer
training fold (preprocessing fitted on it, as with ``"last"``) with the chosen settings and
the same learning-rate schedule, and its weights at the chosen epoch are kept; the retrain
goes on to the last epoch only to record the fixed-last-epoch C-index beside it, for
comparison. ``"last"`` (the default) is the paper's protocol.

Optimization follows the paper: Adam (lr 5e-4, weight decay 1e-5), ``(1 - epoch /
epochs) ** 0.9`` learning-rate decay per epoch, a sampler weighted by bin x censorship
class, one patient per step by default; gradient accumulation and batched training
(patients bucketed by bag size) are options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deref import __version__
from deref.data.cohort import Cohort
from deref.data.preprocess import Preprocessing, fit_preprocessing
from deref.data.splits import Fold, check_folds, inner_splits, write_mcat_splits
from deref.errors import ConfigError, DataError
from deref.fileio import file_sha256
from deref.inference import BagStore, assemble, m1_matrix, resolve_device
from deref.losses import decoupling_loss, l1_penalty, nll_survival_loss
from deref.metrics import harrell_c
from deref.model import ModelConfig, build_model
from deref.recalibration import RECALIBRATIONS, Recalibration, fit_recalibration, hazards_from_survival
from deref.runs import (
    GENOMIC_ONLY_MODELS,
    CIndexSummary,
    DataInfo,
    FoldInfo,
    RunInfo,
    RunMetrics,
    save_checkpoint,
    write_run_info,
)
from deref.runs.directory import write_json
from deref.survival import surv_column_names

log = logging.getLogger(__name__)

#: A finished fold's result beside its checkpoint (``fold_<k>/``), for resuming an interrupted run.
FOLD_RESULT = "fold_result.json"
#: Training settings that do not change a fold's numbers (left out of its fingerprint).
_NOT_IN_FINGERPRINT = ("bag_cache_mb",)

#: ``runner(trainer, [(fold, fold_dir), ...]) -> [FoldResult, ...]`` (in order): how the folds
#: of a run are trained -- one after the other (the default) or as Ray tasks (deref.scale.train).
FoldRunner = Callable[["CohortTrainer", Sequence[tuple[Fold, Path]]], list["FoldResult"]]

HEADLINE_PROTOCOL = "fixed last epoch ({epochs})"
SELECTED_PROTOCOL = "epoch count chosen on an inner split of each training fold (of {epochs})"
OPTIMISTIC_PROTOCOL = (
    "best epoch chosen on the validation fold (optimistic; for comparison with the paper only)"
)


SELECTIONS = ("last", "inner")
SELECTION_METRICS = ("cindex", "nll")
#: TrainConfig fields a selection grid may vary (ModelConfig's float fields, e.g. the
#: dropouts, may be varied too).
GRID_TRAIN_FIELDS = ("lr", "weight_decay", "l1", "alpha_surv")


@dataclass
class TrainConfig:
    """Optimization and protocol settings, serialized into ``run.json``.

    ``l1`` is MCAT's ``lambda_reg``: ``l1 * sum |w|`` over the genomic encoder's parameters
    (the SNN of ``snn``, the per-family SNNs otherwise) is added to every batch's loss.
    ``selection``: ``"last"`` keeps the last epoch (the paper's protocol); ``"inner"``
    chooses the epoch count (and a ``grid`` point, e.g. ``{"weight_decay": [1e-5, 1e-3]}``)
    on an inner split of each training fold, scored by ``selection_metric`` (the inner
    validation C-index or NLL): ``inner_folds = 1`` holds out ``inner_fraction`` of the
    training fold, ``inner_folds >= 2`` is an inner k-fold; ``patience`` stops an inner run
    after that many epochs without improvement. ``recalibration`` (``"temperature"``,
    ``"affine"``, ``"isotonic"``; see :mod:`deref.recalibration`) fits a hazard map on the
    inner validation patients, scored by the inner model(s) at the kept epoch (with
    ``selection = "last"`` the inner runs are trained for it alone), and applies it to the
    fold's curves (never to its risk).
    """

    epochs: int = 30
    lr: float = 5e-4
    weight_decay: float = 1e-5
    lr_power: float = 0.9
    batch_size: int = 1
    grad_accum: int = 1
    weighted_sampler: bool = True
    seed: int = 0
    n_bins: int = 4
    eval_batch_size: int = 8
    device: str = "auto"
    bf16: bool = False
    alpha_surv: float = 0.0
    track_validation: bool = True
    bag_cache_mb: int = 2048
    l1: float = 0.0
    selection: str = "last"
    selection_metric: str = "cindex"
    inner_fraction: float = 0.2
    inner_folds: int = 1
    patience: int | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    recalibration: str = "none"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "n_bins", "eval_batch_size", "inner_folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training config {name!r} = {getattr(self, name)}; expected >= 1")
        if self.lr <= 0:
            raise ConfigError(f"training config 'lr' = {self.lr}; expected > 0")
        if self.l1 < 0 or self.weight_decay < 0:
            raise ConfigError("training config 'l1' and 'weight_decay' must be >= 0")
        for name, options in (
            ("selection", SELECTIONS),
            ("selection_metric", SELECTION_METRICS),
            ("recalibration", RECALIBRATIONS),
        ):
            if getattr(self, name) not in options:
                raise ConfigError(
                    f"training config {name!r} = {getattr(self, name)!r}; expected one of {options}"
                )
        if not 0.0 < self.inner_fraction < 1.0:
            raise ConfigError(f"training config 'inner_fraction' = {self.inner_fraction}; expected in (0, 1)")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"training config 'patience' = {self.patience}; expected >= 1 or None")
        self.grid = {str(k): list(v) for k, v in (self.grid or {}).items()}
        model_fields = {f.name for f in dataclasses.fields(ModelConfig) if f.type in ("float", float)}
        for key, values in self.grid.items():
            if key not in GRID_TRAIN_FIELDS and key not in model_fields:
                raise ConfigError(
                    f"selection grid key {key!r}; expected one of {GRID_TRAIN_FIELDS} or a float "
                    f"model config field ({sorted(model_fields)})"
                )
            if not values:
                raise ConfigError(f"selection grid {key!r} has no value")
        if self.grid and self.selection != "inner":
            raise ConfigError("a selection grid needs selection = 'inner' (it is chosen on inner data)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {unknown}")
        return cls(**data)

    def candidates(self) -> list[dict[str, Any]]:
        """The grid's points (every combination, in the grid's order); ``[{}]`` without one."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class FoldResult:
    """One trained fold.

    Attributes
    ----------
    info
        Its ``run.json`` record: patients, time-bin edges, seed, metrics, history, seconds.
    model_config
        The model configuration as trained (gene-family sizes and bins from the data).
    predictions
        Out-of-fold predictions of its validation patients: ``case_id, fold, risk, risk_std,
        surv_0 .. surv_{K-1}``.
    train_risks
        Its model's risks on its own training patients: ``fold, case_id, risk``.
    """

    info: FoldInfo
    model_config: ModelConfig
    predictions: pd.DataFrame
    train_risks: pd.DataFrame

    @property
    def index(self) -> int:
        return self.info.index


@dataclass
class RunResult:
    """A trained run: its directory, its typed ``run.json``, the folds and the out-of-fold table."""

    path: Path
    info: RunInfo
    folds: list[FoldResult]
    predictions: pd.DataFrame


@dataclass
class _FoldData:
    """What one fold's model reads, fitted on the fold's training patients only."""

    pre: Preprocessing
    config: ModelConfig  # the model config with the fold's gene-family sizes and bins
    m1_all: list[np.ndarray]  # standardized modality 1 of every patient, one (n, d_g) per group
    rows: dict[str, int]  # case_id -> row of m1_all
    bins: pd.Series  # time bin of every patient (by case_id)
    cens: pd.Series  # censorship of every patient (by case_id)
    #: ``bins`` and ``cens`` as arrays in ``rows`` order (built on first use, by ``_labels``)
    row_labels: tuple[np.ndarray, np.ndarray] | None = None


def _labels(data: _FoldData, batch: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(bins, censorship)`` of a batch's patients: the values of ``data.bins[batch]`` and
    ``data.cens[batch]``, read from arrays in row order (no pandas lookup per step)."""
    if data.row_labels is None:
        order = sorted(data.rows, key=data.rows.__getitem__)
        data.row_labels = (data.bins[order].to_numpy(), data.cens[order].to_numpy())
    rows = [data.rows[c] for c in batch]
    return data.row_labels[0][rows], data.row_labels[1][rows]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def class_weights(bins: np.ndarray, censorship: np.ndarray) -> np.ndarray:
    """Sampling weight per patient: inverse frequency of its (bin, censorship) class."""
    classes = bins * 2 + censorship
    counts = pd.Series(classes).map(pd.Series(classes).value_counts()).to_numpy()
    return len(classes) / counts


def epoch_batches(
    ids: Sequence[str],
    weights: np.ndarray | None,
    batch_size: int,
    size_of: Callable[[str], int] | None,
    rng: np.random.Generator,
) -> list[list[str]]:
    """One epoch of batches: sampled with replacement by weight (or a permutation), then,
    for batches of several patients, bucketed by bag size so padding stays small."""
    n = len(ids)
    if weights is not None:
        idx = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        idx = rng.permutation(n)
    order = [ids[i] for i in idx]
    if batch_size == 1 or size_of is None:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    # Bucketing: sort chunks of 8 batches by size, then shuffle the batches.
    chunk = batch_size * 8
    batches: list[list[str]] = []
    for s in range(0, n, chunk):
        part = sorted(order[s : s + chunk], key=size_of)
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _fold_metrics(
    history: Sequence[dict[str, float]],
    n_train: int,
    n_val: int,
    tracked: bool,
    selection: dict[str, Any] | None = None,
) -> dict:
    """A fold's ``metrics`` record: the C-index of the fold's kept model (the last epoch, or
    the epoch chosen on inner data: ``selection["epoch"]``), the fixed last epoch's beside
    it, and, when every epoch was validated, the best epoch (optimistic: it is chosen on the
    validation fold)."""
    selection = selection or {"rule": "last", "epoch": len(history)}
    keep = int(selection["epoch"])
    cidx = [h["val_cindex"] for h in history if "val_cindex" in h]
    best = tracked and bool(cidx)
    return {
        "cindex_last_epoch": history[keep - 1]["val_cindex"],
        "cindex_fixed_last_epoch": history[-1]["val_cindex"],
        "selected_epoch": keep,
        "selection": selection,
        "optimistic_best_epoch": int(np.argmax(cidx)) + 1 if best else None,
        "optimistic_best_epoch_cindex": float(np.max(cidx)) if best else None,
        "n_train": n_train,
        "n_val": n_val,
    }


def mean_curve(curves: Sequence[Sequence[float]], epochs: int) -> np.ndarray:
    """The per-epoch mean of inner folds' score curves; an epoch missing from one of them
    (that inner run stopped early) or NaN in one of them is NaN."""
    out = np.full((len(curves), epochs), np.nan)
    for i, c in enumerate(curves):
        out[i, : len(c)] = np.asarray(c, dtype=float)[:epochs]
    return out.mean(axis=0)


def select_epoch(curves: Sequence[Sequence[float]]) -> tuple[int, int] | None:
    """``(candidate, epoch)`` (epoch 1-based) with the highest score over candidates' curves,
    NaN ignored; ties go to the first candidate, then the earliest epoch. None when every
    score is NaN."""
    best: tuple[float, int, int] | None = None
    for i, curve in enumerate(curves):
        for e, v in enumerate(curve):
            if np.isfinite(v) and (best is None or v > best[0]):
                best = (float(v), i, e + 1)
    return None if best is None else (best[1], best[2])


def survival_nll(surv: np.ndarray, bins: np.ndarray, censorship: np.ndarray, eps: float = 1e-7) -> float:
    """Mean discrete-time NLL of survival curves ``(n, K)`` (the loss the model trains on):
    an event in bin y costs ``-log(S_{y-1} - S_y)``, a censoring ``-log S_y`` (``S_{-1} = 1``)."""
    padded = np.hstack([np.ones((len(surv), 1)), np.asarray(surv, dtype=float)])
    r = np.arange(len(surv))
    before, through = padded[r, bins], padded[r, bins + 1]
    cost = np.where(
        censorship == 1, -np.log(np.clip(through, eps, None)), -np.log(np.clip(before - through, eps, None))
    )
    return float(cost.mean())


def l1_target(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters MCAT's ``lambda_reg`` penalizes: the genomic SNN encoder (``snn`` of
    the SNN baseline, the per-family SNNs of the others); none for a slide-only model."""
    if hasattr(model, "l1_parameters"):
        return list(model.l1_parameters())
    if hasattr(model, "snn"):
        return list(model.snn.parameters())
    enc = getattr(model, "m1_encoder", None)
    return list(enc.token_nets.parameters()) if enc is not None else []


def _split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grid point split into TrainConfig and ModelConfig changes."""
    train = {k: v for k, v in params.items() if k in GRID_TRAIN_FIELDS}
    return train, {k: v for k, v in params.items() if k not in GRID_TRAIN_FIELDS}


class CohortTrainer:
    """Trains one model configuration with k-fold cross-validation on a cohort."""

    def __init__(
        self,
        cohort: Cohort,
        model_config: ModelConfig,
        train_config: TrainConfig,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.cohort = cohort
        self.model_config = model_config
        self.cfg = train_config
        self.device = resolve_device(train_config.device)
        self.needs_wsi = model_config.model_type not in GENOMIC_ONLY_MODELS
        self.progress = progress
        if self.needs_wsi and cohort.bag_dir is None:
            raise DataError(
                f"{cohort.source}: model {model_config.model_type!r} needs WSI bags; give a bag folder"
            )
        if self.needs_wsi and not cohort.allow_missing:
            no_bag = [c for c in cohort.case_ids if not bool(cohort.modalities.at[c, "wsi"])]
            if no_bag:
                shown = ", ".join(f"{c} ({', '.join(cohort.slides[c]) or 'no slide_id'})" for c in no_bag[:5])
                raise DataError(
                    f"{cohort.source}: {len(no_bag)} patient(s) have no bag file in {cohort.bag_dir} for every "
                    f"slide: {shown}{' ...' if len(no_bag) > 5 else ''}; expected a bag per slide "
                    "(or --allow-missing: the slide is then a missing input, at the training mean token)"
                )
        if cohort.allow_missing and not model_config.allow_missing:
            model_config = model_config.replace(allow_missing=True)
            self.model_config = model_config
        self.bags = (
            BagStore(cohort, None, max_bytes=train_config.bag_cache_mb << 20) if self.needs_wsi else None
        )

    # ---------------------------------------------------------------- folds
    def check(self, folds: Sequence[Fold]) -> None:
        check_folds(folds, self.cohort.case_ids, events=self.cohort.patients["event"])

    def train_fold(self, fold: Fold, fold_dir: Path | None = None) -> FoldResult:
        """Fit the fold's preprocessing and model on its training patients (choosing the epoch
        count on an inner split with ``selection = "inner"``), predict its validation patients,
        and (with ``fold_dir``) write its checkpoint."""
        t0 = time.perf_counter()
        seed = self.cfg.seed + fold.index
        selection, recal = None, None
        if self.cfg.selection == "inner" or self.cfg.recalibration != "none":
            selection, recal = self.select(fold, seed)
        cfg, model_changes = self.cfg, {}
        if selection is not None:
            train_changes, model_changes = _split_params(selection["params"])
            cfg = dataclasses.replace(self.cfg, **train_changes)
        seed_everything(seed)
        data = self._fit_fold_data(fold)
        data.config = data.config.replace(**model_changes)
        model = build_model(data.config).to(self.device)
        train_ids = list(fold.train)
        wsi_mean = self._mean_patch(train_ids) if self.needs_wsi else None
        keep = cfg.epochs if selection is None else int(selection["epoch"])
        history, kept = self._fit_outer(model, data, fold, seed, cfg, keep)
        if kept is not None:
            model.load_state_dict(kept)
        if data.config.allow_missing:
            self._fit_mean_tokens(model, data, train_ids)
        val_pred = self._predict(model, fold.val, data)
        train_pred = self._predict(model, train_ids, data)
        if recal is not None:
            cols = [c for c in val_pred.columns if c.startswith("surv_")]
            val_pred[cols] = recal.apply_survival(val_pred[cols].to_numpy())
        val_pred.insert(1, "fold", fold.index)
        if data.config.allow_missing:
            val_pred["missing"] = [";".join(self.cohort.missing_inputs(c)) for c in val_pred["case_id"]]
        digest = None
        if fold_dir is not None:
            extra = {
                "wsi_mean": None if wsi_mean is None else wsi_mean.tolist(),
                "fold": fold.index,
                "seed": seed,
            }
            digest = save_checkpoint(fold_dir, model, data.pre, extra)
        train_risks = pd.DataFrame(
            {"fold": fold.index, "case_id": train_ids, "risk": train_pred["risk"].to_numpy()}
        )
        metrics = _fold_metrics(history, len(train_ids), len(fold.val), cfg.track_validation, selection)
        info = FoldInfo(
            index=fold.index,
            bin_edges=tuple(float(e) for e in data.pre.bin_edges),
            train_ids=tuple(train_ids),
            val_ids=tuple(fold.val),
            seed=seed,
            metrics=metrics,
            history=tuple(history),
            seconds=time.perf_counter() - t0,
            horizon=float(self.cohort.patients.loc[train_ids, "time"].max()),
            recalibration=recal,
            weights_sha256=digest,
        )
        result = FoldResult(info, data.config, val_pred, train_risks)
        if fold_dir is not None:
            save_fold_result(fold_dir, result, self.fold_fingerprint(fold))
        return result

    def fold_fingerprint(self, fold: Fold) -> str:
        """What a fold's result depends on (configurations, seed, patients): a finished fold with
        the same fingerprint is kept when a run is resumed."""
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
        blob = {
            "model": self.model_config.to_dict(),
            "train": train,
            "fold": fold.index,
            "train_ids": list(fold.train),
            "val_ids": list(fold.val),
            "table": self.cohort.fingerprint,
            "bags": None if self.cohort.bag_dir is None else str(self.cohort.bag_dir),
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()

    def _fit_outer(
        self, model: torch.nn.Module, data: _FoldData, fold: Fold, seed: int, cfg: TrainConfig, keep: int
    ) -> tuple[list[dict[str, float]], dict[str, torch.Tensor] | None]:
        """Train on the outer training fold for ``cfg.epochs``; the validation C-index is
        recorded (never used for any choice), and the weights at epoch ``keep`` are returned
        when it is not the last."""
        kept: dict[str, torch.Tensor] | None = None

        def on_epoch(epoch: int, record: dict[str, float]) -> bool:
            nonlocal kept
            if cfg.track_validation or epoch in (cfg.epochs, keep):
                record["val_cindex"] = self._cindex(model, fold.val, data)
            if epoch == keep and keep != cfg.epochs:
                kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False

        history = self._fit(model, data, list(fold.train), seed, cfg, f"fold {fold.index}", on_epoch)
        return history, kept

    def select(self, fold: Fold, seed: int) -> tuple[dict[str, Any] | None, Recalibration | None]:
        """The inner stage of ``fold``, on its training patients only (the outer validation
        patients are dropped before the split): with ``selection = "inner"`` the epoch count
        and grid point chosen (else None: the last epoch), and with ``recalibration`` the
        hazard map fitted on the inner validation patients at the kept epoch."""
        cfg = self.cfg
        inner = inner_splits(
            fold,
            self.cohort.patients,
            fraction=cfg.inner_fraction,
            k=cfg.inner_folds,
            seed=seed,
            n_bins=cfg.n_bins,
        )
        if cfg.selection != "inner":  # recalibration alone: the paper's last epoch
            runs = [self._inner_run(fold, split, seed, {}, patience=False) for split in inner]
            return None, self._recalibrate(fold, runs, cfg.epochs)
        candidates = cfg.candidates()
        table, all_runs = [], []
        for params in candidates:
            runs = [self._inner_run(fold, split, seed, params) for split in inner]
            all_runs.append(runs)
            means = {m: mean_curve([r[m] for r in runs], cfg.epochs) for m in SELECTION_METRICS}
            curve = means[cfg.selection_metric]
            row: dict[str, Any] = {"params": params}
            for m, values in (("curve", curve), *((f"inner_{m}", v) for m, v in means.items())):
                row[m] = [None if np.isnan(v) else float(v) for v in values]
            row["_score"] = curve if cfg.selection_metric == "cindex" else -curve
            table.append(row)
        chosen = select_epoch([row.pop("_score") for row in table])
        # nothing scorable (e.g. no event in any inner validation part): the paper's last epoch
        which, epoch = chosen if chosen is not None else (0, cfg.epochs)
        selection = {
            "rule": "inner",
            "metric": cfg.selection_metric,
            "inner_folds": cfg.inner_folds,
            "inner_fraction": cfg.inner_fraction if cfg.inner_folds == 1 else None,
            "n_inner_val": [len(split.val) for split in inner],
            "patience": cfg.patience,
            "epoch": int(epoch),
            "params": dict(candidates[which]),
            "score": table[which]["curve"][epoch - 1],
            "fallback": chosen is None,
            "candidates": table,
        }
        recal = self._recalibrate(fold, all_runs[which], int(epoch)) if cfg.recalibration != "none" else None
        return selection, recal

    def _recalibrate(self, fold: Fold, runs: Sequence[dict[str, Any]], epoch: int) -> Recalibration | None:
        """The hazard map fitted on the inner validation patients' curves at ``epoch`` (each
        inner run that reached it; their own bins, from the inner-training edges)."""
        parts = [r for r in runs if len(r["surv"]) >= epoch]
        if not parts:
            return None
        hazards = np.concatenate([hazards_from_survival(r["surv"][epoch - 1]) for r in parts])
        bins = np.concatenate([r["bins"] for r in parts])
        cens = np.concatenate([r["cens"] for r in parts])
        where = (
            f"the inner validation part of fold {fold.index}'s training patients"
            if len(parts) == 1
            else f"the {len(parts)} inner validation folds of fold {fold.index}'s training patients"
        )
        recal = fit_recalibration(
            self.cfg.recalibration, hazards, bins, cens, source=f"{where}, epoch {epoch}"
        )
        log.info("fold %d: %s", fold.index, recal.describe())
        return recal

    def _inner_run(
        self, fold: Fold, split: Fold, seed: int, params: dict[str, Any], patience: bool = True
    ) -> dict[str, Any]:
        """Train one candidate on an inner-training part (preprocessing fitted there) and score
        it on the inner validation part after every epoch: ``{"cindex": [...], "nll": [...],
        "surv": [(n_val, K) per epoch], "bins", "cens"}`` (the last two: the inner validation
        patients' bins from the inner-training edges, and censorship)."""
        train_changes, model_changes = _split_params(params)
        cfg = dataclasses.replace(self.cfg, **train_changes)
        seed_everything(seed)
        data = self._fit_fold_data(split)
        data.config = data.config.replace(**model_changes)
        model = build_model(data.config).to(self.device)
        bins, cens = data.bins[split.val].to_numpy(), data.cens[split.val].to_numpy()
        scores: dict[str, Any] = {"cindex": [], "nll": [], "surv": [], "bins": bins, "cens": cens}
        best = (-math.inf, 0)

        def on_epoch(epoch: int, record: dict[str, float]) -> bool:
            nonlocal best
            pred = self._predict(model, split.val, data)
            pts = self.cohort.patients.loc[split.val]
            time_, event = pts["time"].to_numpy(), pts["event"].to_numpy()
            risk = pred["risk"].to_numpy()
            c = harrell_c(time_, event, risk).cindex if event.any() else float("nan")
            surv = pred[[k for k in pred.columns if k.startswith("surv_")]].to_numpy()
            nll = survival_nll(surv, bins, cens)
            scores["cindex"].append(c)
            scores["nll"].append(nll)
            scores["surv"].append(surv)
            record.update(inner_cindex=c, inner_nll=nll)
            score = c if cfg.selection_metric == "cindex" else -nll
            if np.isfinite(score) and score > best[0]:
                best = (score, epoch)
            return patience and cfg.patience is not None and epoch - best[1] >= cfg.patience

        label = f"fold {fold.index} inner {split.index}"
        self._fit(model, data, list(split.train), seed, cfg, label, on_epoch)
        return scores

    def _cindex(self, model: torch.nn.Module, ids: Sequence[str], data: _FoldData) -> float:
        """Harrell's C of ``ids`` (NaN without an event: undefined)."""
        risk = self._predict(model, ids, data)["risk"].to_numpy()
        pts = self.cohort.patients.loc[list(ids)]
        time_, event = pts["time"].to_numpy(), pts["event"].to_numpy()
        return harrell_c(time_, event, risk).cindex if event.any() else float("nan")

    def _fit_fold_data(self, fold: Fold) -> _FoldData:
        cohort, mcfg = self.cohort, self.model_config
        wsi_dim = mcfg.wsi_dim if self.needs_wsi else None
        pre = fit_preprocessing(cohort, fold.train, n_bins=self.cfg.n_bins, wsi_dim=wsi_dim)
        if self.needs_wsi and pre.wsi_dim is not None and pre.wsi_dim != mcfg.wsi_dim:
            raise ConfigError(
                f"bags in {cohort.bag_dir} have D = {pre.wsi_dim}; the model config expects wsi_dim = {mcfg.wsi_dim}"
            )
        if self.bags is not None:
            self.bags.wsi_dim = mcfg.wsi_dim
        config = mcfg.replace(
            m1_sizes=pre.m1_sizes,
            m1_names=tuple(pre.m1_names) or mcfg.m1_names[: len(pre.m1_sizes)],
            n_bins=self.cfg.n_bins,
        )
        ids = cohort.case_ids
        pts = cohort.patients
        return _FoldData(
            pre=pre,
            config=config,
            m1_all=m1_matrix(cohort, pre, ids),
            rows={c: i for i, c in enumerate(ids)},
            bins=pd.Series(pre.bins(pts["time"].to_numpy()), index=pts.index),
            cens=pts["censorship"].astype(int),
        )

    def _fit(
        self,
        model: torch.nn.Module,
        data: _FoldData,
        train_ids: list[str],
        seed: int,
        cfg: TrainConfig,
        label: str,
        on_epoch: Callable[[int, dict[str, float]], bool],
    ) -> list[dict[str, float]]:
        """The paper's optimization on ``train_ids``; returns the per-epoch history.
        ``on_epoch(epoch, record)`` adds scores to the epoch's record and returns True to stop
        (the learning-rate schedule stays the one of ``cfg.epochs``)."""
        weights = None
        if cfg.weighted_sampler:
            weights = class_weights(data.bins[train_ids].to_numpy(), data.cens[train_ids].to_numpy())
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / cfg.epochs) ** cfg.lr_power)
        rng = np.random.default_rng(seed)
        size_of = self.bags.size if (self.bags is not None and cfg.batch_size > 1) else None
        l1_params = l1_target(model) if cfg.l1 else []
        history: list[dict[str, float]] = []
        for epoch in range(cfg.epochs):
            te = time.perf_counter()
            batches = epoch_batches(train_ids, weights, cfg.batch_size, size_of, rng)
            step_label = f"{label} epoch {epoch + 1}/{cfg.epochs}"
            totals = self._train_epoch(model, opt, data, batches, epoch == 0, step_label, cfg, l1_params)
            sched.step()
            n = len(train_ids)
            record = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": totals["loss"] / n,
                "train_nll": totals["nll"] / n,
                "train_dis": totals["dis"] / n,
                "train_aux": totals["aux"] / n,
                "seconds": time.perf_counter() - te,
            }
            stop = on_epoch(epoch + 1, record)
            history.append(record)
            log.info("%s epoch %d: %s", label, epoch + 1, {k: round(v, 4) for k, v in record.items()})
            if stop:
                break
        return history

    def _train_epoch(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        data: _FoldData,
        batches: list[list[str]],
        validate: bool,
        label: str,
        cfg: TrainConfig,
        l1_params: Sequence[torch.nn.Parameter] = (),
    ) -> dict[str, float]:
        """One pass over ``batches`` (with gradient accumulation); loss sums over patients.
        With ``cfg.l1``, ``l1 * sum |w|`` of ``l1_params`` is added to each batch's loss."""
        model.train()
        totals = {"loss": 0.0, "nll": 0.0, "dis": 0.0, "aux": 0.0}
        steps = math.ceil(sum(len(b) for b in batches) / cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        for step, batch in enumerate(batches):
            loss, terms = self._losses(model, data, batch, validate, cfg.alpha_surv)
            total = loss + cfg.l1 * l1_penalty(l1_params) if l1_params else loss
            (total / cfg.grad_accum).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == len(batches):
                opt.step()
                opt.zero_grad(set_to_none=True)
            totals["loss"] += loss.item() * len(batch)
            for key, value in terms.items():
                totals[key] += value.item() * len(batch)
            if self.progress:
                self.progress(label, step + 1, steps)
        return totals

    def _losses(
        self, model: torch.nn.Module, data: _FoldData, batch: list[str], validate: bool, alpha_surv: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {"nll", "dis", "aux"})`` of one batch: ``loss = nll + alpha_dis * dis + aux``,
        ``dis`` DeReF's decoupling loss, ``aux`` the sum of the model's own weighted terms
        (``model.auxiliary_loss(out, bins, censorship)``, the peers' hook; see
        :mod:`deref.model.peers`)."""
        mcfg = data.config
        x = assemble(batch, data.m1_all, data.rows, self.bags, self.needs_wsi).to(self.device)
        bins, cens = _labels(data, batch)
        y = torch.as_tensor(bins, device=self.device)
        c = torch.as_tensor(cens, device=self.device, dtype=torch.float32)
        with self._autocast():
            out = model(x.m1, x.wsi, x.mask, validate=validate)
        nll = nll_survival_loss(out.hazards.float(), y, c, alpha=alpha_surv)
        zero = torch.zeros((), device=self.device)
        loss, dis, aux = nll, zero, zero
        if mcfg.model_type == "deref" and mcfg.decouple and mcfg.alpha_dis:
            dis = decoupling_loss(out.features.float(), mcfg.distance, mcfg.hinge_margin)
            loss = loss + mcfg.alpha_dis * dis
        hook = getattr(model, "auxiliary_loss", None)
        if hook is not None:
            terms = hook(out, y, c)
            if terms:
                aux = sum(t.float() for t in terms.values())
                loss = loss + aux
        return loss, {"nll": nll, "dis": dis, "aux": aux}

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    @torch.no_grad()
    def _fit_mean_tokens(self, model: torch.nn.Module, data: _FoldData, ids: Sequence[str]) -> None:
        """Set each missing-input mean token (:class:`deref.model.encoders.MeanToken`) to the exact
        mean over the fold's training patients that have the input (eval mode), the token
        prediction then puts in place of a missing sequence or slide."""
        from deref.model.encoders import MeanToken

        model.eval()
        m1_enc, wsi_enc = getattr(model, "m1_encoder", None), getattr(model, "wsi_encoder", None)
        sums: dict[str, list] = {}
        for s in range(0, len(ids), self.cfg.eval_batch_size):
            x = assemble(
                ids[s : s + self.cfg.eval_batch_size], data.m1_all, data.rows, self.bags, self.needs_wsi
            )
            x = x.to(self.device)
            with self._autocast():
                if isinstance(getattr(m1_enc, "mean_token", None), MeanToken):
                    tokens, missing = m1_enc.raw_tokens(x.m1)
                    _add_mean(sums, "m1", tokens.float(), ~missing)
                if isinstance(getattr(wsi_enc, "mean_token", None), MeanToken) and x.wsi is not None:
                    cls, _, missing = wsi_enc.raw_cls(x.wsi, x.mask)
                    _add_mean(sums, "wsi", cls.float().unsqueeze(1), ~missing.unsqueeze(1))
        for key, enc in (("m1", m1_enc), ("wsi", wsi_enc)):
            if key in sums:
                total, count = sums[key]
                seen = count > 0
                mean = torch.where(
                    seen.unsqueeze(-1), total / count.clamp_min(1).unsqueeze(-1), enc.mean_token.value
                )
                enc.mean_token.set(mean)

    def _mean_patch(self, ids: Sequence[str]) -> np.ndarray:
        total, count = None, 0
        for c in ids:
            if "wsi" in self.cohort.missing_inputs(c):
                continue
            f = self.bags.get(c).features
            s = f.sum(axis=0, dtype=np.float64)
            total = s if total is None else total + s
            count += f.shape[0]
        return (total / max(count, 1)).astype(np.float32)

    @torch.no_grad()
    def _predict(self, model: torch.nn.Module, ids: Sequence[str], data: _FoldData) -> pd.DataFrame:
        """``case_id, risk, risk_std, surv_k`` of ``ids`` (in that order), in eval mode."""
        model.eval()
        ids = list(ids)
        order = sorted(ids, key=self.bags.size) if self.bags is not None else ids
        risk, std, surv = [], [], []
        bs = self.cfg.eval_batch_size
        for s in range(0, len(order), bs):
            batch = order[s : s + bs]
            x = assemble(batch, data.m1_all, data.rows, self.bags, self.needs_wsi).to(self.device)
            with self._autocast():
                out = model(x.m1, x.wsi, x.mask, validate=False)
            risk.append(out.risk.float().cpu().numpy())
            std.append(out.risk_std.float().cpu().numpy())
            surv.append(out.survival.float().cpu().numpy())
        frame = pd.DataFrame(
            {"case_id": order, "risk": np.concatenate(risk), "risk_std": np.concatenate(std)}
        )
        s_arr = np.concatenate(surv)
        for j, col in enumerate(surv_column_names(s_arr.shape[1])):
            frame[col] = s_arr[:, j]
        return frame.set_index("case_id").loc[ids].reset_index()


#: Packages whose exact versions every run records.
MANIFEST_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "lifelines",
    "h5py",
    "safetensors",
    "monai",
    "nibabel",
    "pydicom",
    "openslide-python",
)


def _code_version() -> dict[str, Any]:
    """The package version, and the git commit (plus whether the tree had changes) when the
    package runs from a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"package_version": __version__, "git_commit": None, "git_dirty": None}
    if not (root / ".git").exists():
        return out
    try:
        run = {"cwd": root, "capture_output": True, "text": True, "timeout": 10, "check": True}
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout
        out["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _folder_fingerprint(folder: Path | None, suffixes: tuple[str, ...] = (".h5", ".pt")) -> str | None:
    """SHA-256 over the sorted names and sizes of a folder's feature files (not their bytes: a
    cohort's bags can be terabytes), or None without a folder."""
    import hashlib

    if folder is None or not Path(folder).is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).iterdir() if p.suffix in suffixes):
        h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()


def reproducibility_manifest(
    cohort: Cohort, cfg: TrainConfig, device: torch.device, folds: Sequence[FoldResult], out: Path
) -> dict[str, Any]:
    """What a run needs to be reproduced, recorded in ``run.json`` (``RunInfo.environment``): the
    code version, exact dependency versions, Python and platform, device, dtype and threads, the
    seed of every fold, the SHA-256 of the run's split files and fingerprints of the table and the
    feature folders. ``deref compare`` lists where two runs differ in any of them."""
    import platform
    from importlib import metadata

    from deref.fileio import file_sha256

    deps = {}
    for name in MANIFEST_PACKAGES:
        try:
            deps[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            deps[name] = None
    features = {"table": cohort.fingerprint, "bags": _folder_fingerprint(cohort.bag_dir)}
    if cohort.m1_kind == "mri":
        source = cohort.mri_cubes.folder if cohort.mri_cubes is not None else cohort.mri_features
        features["mri"] = _folder_fingerprint(Path(source), (".h5",))
    return {
        "code": _code_version(),
        "dependencies": deps,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": "bfloat16 autocast" if cfg.bf16 else "float32",
        "torch_threads": torch.get_num_threads(),
        "seeds": {str(f.index): f.info.seed for f in folds},
        "splits": {p.name: file_sha256(p) for p in sorted((out / "splits").glob("*.csv"))},
        "features": features,
    }


def _add_mean(sums: dict[str, list], key: str, tokens: torch.Tensor, present: torch.Tensor) -> None:
    """Accumulate ``sum`` and ``count`` of the present tokens ``(B, G, C)`` per group."""
    w = present.to(tokens.dtype)
    total = (tokens * w.unsqueeze(-1)).sum(dim=0).cpu()
    count = w.sum(dim=0).cpu()
    if key in sums:
        sums[key][0] += total
        sums[key][1] += count
    else:
        sums[key] = [total, count]


def _summary(protocol: str, values: Sequence[float], nan_aware: bool) -> CIndexSummary:
    """Mean and sample standard deviation of per-fold C-indices (std 0 for one fold)."""
    v = np.asarray(values, dtype=float)
    mean, std = (np.nanmean, np.nanstd) if nan_aware else (np.mean, np.std)
    return CIndexSummary(
        protocol=protocol,
        mean=float(mean(v)),
        std=float(std(v, ddof=1)) if len(v) > 1 else 0.0,
        folds=tuple(v.tolist()),
    )


def run_metrics(
    folds: Sequence[FoldInfo], oof: pd.DataFrame, epochs: int, selection: str = "last"
) -> RunMetrics:
    """The run's metrics: the C-index over folds of the folds' kept models (the headline: the
    fixed last epoch, or with ``selection = "inner"`` the epoch chosen on inner data; folds
    without an event are left out of mean and std), the pooled out-of-fold C-index of
    ``oof`` (``time, event, risk``), and the best-epoch figure when every fold tracked it."""
    protocol = SELECTED_PROTOCOL if selection == "inner" else HEADLINE_PROTOCOL
    headline = _summary(
        protocol.format(epochs=epochs),
        [np.nan if f.cindex_last_epoch is None else f.cindex_last_epoch for f in folds],
        nan_aware=True,
    )
    best = [f.optimistic_best_epoch_cindex for f in folds]
    optimistic = None
    if all(b is not None for b in best):
        optimistic = _summary(OPTIMISTIC_PROTOCOL, best, nan_aware=False)
    event = oof["event"].to_numpy()
    pooled = (
        harrell_c(oof["time"].to_numpy(), event, oof["risk"].to_numpy()).cindex
        if event.any()
        else float("nan")
    )
    return RunMetrics(headline=headline, optimistic_best_epoch=optimistic, pooled_oof_cindex=pooled)


def _data_info(cohort: Cohort, wsi_dim: int | None, data_info: dict[str, Any] | None) -> DataInfo:
    extra = dict(data_info or {})
    if cohort.allow_missing:
        extra["allow_missing"] = True
    if cohort.m1_kind == "mri":  # where modality 1 came from: the run reloads its cohort from these
        extra["mri_manifest"] = str(Path(cohort.mri.path).resolve())
        if cohort.mri_cubes is not None:
            extra["mri_cubes"] = str(Path(cohort.mri_cubes.folder).resolve())
        else:
            extra["mri_features"] = str(Path(cohort.mri_features).resolve())
    return DataInfo(
        table=str(Path(cohort.source).resolve()),
        bag_dir=None if cohort.bag_dir is None else str(Path(cohort.bag_dir).resolve()),
        fingerprint=cohort.fingerprint,
        n_patients=len(cohort.case_ids),
        n_events=int(cohort.n_events),
        m1_names=tuple(f.name for f in cohort.families),
        m1_columns=() if cohort.mri_cubes is not None else tuple(tuple(f.columns) for f in cohort.families),
        wsi_dim=wsi_dim,
        time_col=str(extra.pop("time_col", None) or DataInfo.time_col),
        extra=extra,
    )


def _oof_table(cohort: Cohort, folds: Sequence[FoldResult]) -> pd.DataFrame:
    """The folds' validation predictions with each patient's ``time, censorship, event``."""
    preds = pd.concat([f.predictions for f in folds], ignore_index=True)
    pts = cohort.patients.loc[preds["case_id"]]
    preds.insert(2, "time", pts["time"].to_numpy())
    preds.insert(3, "censorship", pts["censorship"].to_numpy())
    preds.insert(4, "event", pts["event"].to_numpy())
    return preds


def save_fold_result(fold_dir: Path, result: FoldResult, fingerprint: str) -> None:
    """Write a finished fold's result beside its checkpoint (tables first, the JSON last and
    atomically: its presence means the fold is complete)."""
    fold_dir = Path(fold_dir)
    for name, frame in (("val_predictions.csv", result.predictions), ("train_risks.csv", result.train_risks)):
        tmp = fold_dir / f".{name}.tmp-{os.getpid()}"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, fold_dir / name)
    write_json(
        fold_dir / FOLD_RESULT,
        {
            "fingerprint": fingerprint,
            "info": result.info.to_dict(),
            "model_config": result.model_config.to_dict(),
        },
    )


def load_fold_result(fold_dir: Path, fingerprint: str) -> FoldResult | None:
    """The finished fold in ``fold_dir`` when it was trained with ``fingerprint`` and its weights
    are the ones it recorded; None otherwise (the fold is then trained again)."""
    fold_dir = Path(fold_dir)
    path = fold_dir / FOLD_RESULT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fingerprint:
            log.info("%s: trained with other settings or patients; training the fold again", fold_dir)
            return None
        info = FoldInfo.from_dict(data["info"])
        weights = fold_dir / "model.safetensors"
        if not weights.is_file() or (info.weights_sha256 and file_sha256(weights) != info.weights_sha256):
            log.info("%s: weights missing or changed; training the fold again", fold_dir)
            return None
        read = {"dtype": {"case_id": str}}
        preds = pd.read_csv(fold_dir / "val_predictions.csv", **read)
        if "missing" in preds:
            preds["missing"] = preds["missing"].fillna("").astype(str)
        train_risks = pd.read_csv(fold_dir / "train_risks.csv", **read)
        return FoldResult(info, ModelConfig.from_dict(data["model_config"]), preds, train_risks)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable fold result (%s); training the fold again", fold_dir, exc)
        return None


def _train_sequentially(trainer: CohortTrainer, jobs: Sequence[tuple[Fold, Path]]) -> list[FoldResult]:
    return [trainer.train_fold(fold, fold_dir) for fold, fold_dir in jobs]


def train_cross_validation(
    cohort: Cohort,
    folds: Sequence[Fold],
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    name: str | None = None,
    data_info: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    only_folds: Sequence[int] | None = None,
    fold_runner: FoldRunner | None = None,
    resume: bool = False,
) -> RunResult:
    """Train every fold, write the run directory (see :mod:`deref.runs`) and return results.

    ``data_info`` adds provenance to ``run.json``'s ``data`` (``signatures``, ``splits``,
    ``time_col``, ...). ``only_folds`` trains a subset of the (checked, complete) folds: a
    quick look, whose out-of-fold table then covers only those folds' patients.
    ``fold_runner`` trains the folds (default: one after the other; ``deref.scale.train``: as Ray
    tasks). ``resume`` keeps the folds of ``out_dir`` finished with the same settings, patients
    and weights (:func:`load_fold_result`) and trains only the others.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = CohortTrainer(cohort, model_config, train_config, progress)
    trainer.check(folds)
    chosen = [f for f in folds if only_folds is None or f.index in only_folds]
    if not chosen:
        raise ConfigError(
            f"only_folds {list(only_folds or [])} names no fold; folds are {[f.index for f in folds]}"
        )
    write_mcat_splits(folds, out / "splits")
    kept: dict[int, FoldResult] = {}
    if resume:
        for fold in chosen:
            r = load_fold_result(out / f"fold_{fold.index}", trainer.fold_fingerprint(fold))
            if r is not None:
                kept[fold.index] = r
                log.info("fold %d: finished earlier with the same settings, kept", fold.index)
    jobs = [(f, out / f"fold_{f.index}") for f in chosen if f.index not in kept]
    trained = (fold_runner or _train_sequentially)(trainer, jobs) if jobs else []
    by_index = {**kept, **{r.index: r for r in trained}}
    results = [by_index[f.index] for f in chosen]
    preds = _oof_table(cohort, results)
    preds.to_csv(out / "predictions.csv", index=False)
    pd.concat([f.train_risks for f in results], ignore_index=True).to_csv(
        out / "train_risks.csv", index=False
    )
    model = results[0].model_config
    info = RunInfo(
        name=name or out.name,
        model=model,
        folds=tuple(f.info for f in results),
        data=_data_info(cohort, model.wsi_dim if trainer.needs_wsi else None, data_info),
        train=train_config.to_dict(),
        metrics=run_metrics([f.info for f in results], preds, train_config.epochs, train_config.selection),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        package_version=__version__,
        torch_version=torch.__version__,
        environment=reproducibility_manifest(cohort, train_config, trainer.device, results, out),
    )
    write_run_info(out, info)
    return RunResult(path=out, info=info, folds=results, predictions=preds)
