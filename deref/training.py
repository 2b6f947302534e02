"""Leak-free k-fold cross-validated training of DeReF and its baselines.

For each fold, everything learned from data — time bins, the genomic standardizer, the
mean patch embedding used by the "what if" view — is fitted on that fold's training
patients only, and stored with the fold's checkpoint. The headline metric is the one of
the fixed, last epoch; the best-epoch figure is recorded, labelled as optimistic (it picks
the epoch on the validation fold).

Optimization follows the paper: Adam (lr 5e-4, weight decay 1e-5), ``(1 - epoch /
epochs) ** 0.9`` learning-rate decay per epoch, a sampler weighted by bin x censorship
class, one patient per step by default; gradient accumulation and batched training
(patients bucketed by bag size) are options.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deref import __version__
from deref.data.cohort import Cohort
from deref.data.preprocess import Preprocessing, fit_preprocessing
from deref.data.splits import Fold, check_folds, write_mcat_splits
from deref.errors import ConfigError, DataError
from deref.inference import BagStore, assemble, m1_matrix, resolve_device
from deref.losses import decoupling_loss, nll_survival_loss
from deref.metrics import harrell_c
from deref.model import ModelConfig, build_model
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
from deref.survival import surv_column_names

log = logging.getLogger(__name__)

HEADLINE_PROTOCOL = "fixed last epoch ({epochs})"
OPTIMISTIC_PROTOCOL = (
    "best epoch chosen on the validation fold (optimistic; for comparison with the paper only)"
)


@dataclass
class TrainConfig:
    """Optimization and protocol settings, serialized into ``run.json``."""

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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "n_bins", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"training config {name!r} = {getattr(self, name)}; expected >= 1")
        if self.lr <= 0:
            raise ConfigError(f"training config 'lr' = {self.lr}; expected > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {unknown}")
        return cls(**data)


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


def _fold_metrics(history: Sequence[dict[str, float]], n_train: int, n_val: int, tracked: bool) -> dict:
    """A fold's ``metrics`` record: the last epoch's C-index and, when every epoch was
    validated, the best epoch (optimistic: it is chosen on the validation fold)."""
    cidx = [h["val_cindex"] for h in history if "val_cindex" in h]
    best = tracked and bool(cidx)
    return {
        "cindex_last_epoch": history[-1]["val_cindex"],
        "optimistic_best_epoch": int(np.argmax(cidx)) + 1 if best else None,
        "optimistic_best_epoch_cindex": float(np.max(cidx)) if best else None,
        "n_train": n_train,
        "n_val": n_val,
    }


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
        self.bags = (
            BagStore(cohort, None, max_bytes=train_config.bag_cache_mb << 20) if self.needs_wsi else None
        )

    # ---------------------------------------------------------------- folds
    def check(self, folds: Sequence[Fold]) -> None:
        check_folds(folds, self.cohort.case_ids, events=self.cohort.patients["event"])

    def train_fold(self, fold: Fold, fold_dir: Path | None = None) -> FoldResult:
        """Fit the fold's preprocessing and model on its training patients, predict its
        validation patients, and (with ``fold_dir``) write its checkpoint."""
        t0 = time.perf_counter()
        seed = self.cfg.seed + fold.index
        seed_everything(seed)
        data = self._fit_fold_data(fold)
        model = build_model(data.config).to(self.device)
        train_ids = list(fold.train)
        wsi_mean = self._mean_patch(train_ids) if self.needs_wsi else None
        history = self._fit(model, data, fold, seed)
        val_pred = self._predict(model, fold.val, data)
        train_pred = self._predict(model, train_ids, data)
        val_pred.insert(1, "fold", fold.index)
        if fold_dir is not None:
            extra = {
                "wsi_mean": None if wsi_mean is None else wsi_mean.tolist(),
                "fold": fold.index,
                "seed": seed,
            }
            save_checkpoint(fold_dir, model, data.pre, extra)
        train_risks = pd.DataFrame(
            {"fold": fold.index, "case_id": train_ids, "risk": train_pred["risk"].to_numpy()}
        )
        info = FoldInfo(
            index=fold.index,
            bin_edges=tuple(float(e) for e in data.pre.bin_edges),
            train_ids=tuple(train_ids),
            val_ids=tuple(fold.val),
            seed=seed,
            metrics=_fold_metrics(history, len(train_ids), len(fold.val), self.cfg.track_validation),
            history=tuple(history),
            seconds=time.perf_counter() - t0,
        )
        return FoldResult(info, data.config, val_pred, train_risks)

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

    def _fit(self, model: torch.nn.Module, data: _FoldData, fold: Fold, seed: int) -> list[dict[str, float]]:
        """The paper's optimization of one fold; returns the per-epoch history."""
        cfg = self.cfg
        train_ids = list(fold.train)
        weights = None
        if cfg.weighted_sampler:
            weights = class_weights(data.bins[train_ids].to_numpy(), data.cens[train_ids].to_numpy())
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / cfg.epochs) ** cfg.lr_power)
        rng = np.random.default_rng(seed)
        size_of = self.bags.size if (self.bags is not None and cfg.batch_size > 1) else None
        history: list[dict[str, float]] = []
        for epoch in range(cfg.epochs):
            te = time.perf_counter()
            batches = epoch_batches(train_ids, weights, cfg.batch_size, size_of, rng)
            label = f"fold {fold.index} epoch {epoch + 1}/{cfg.epochs}"
            totals = self._train_epoch(model, opt, data, batches, epoch == 0, label)
            sched.step()
            n = len(train_ids)
            record = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": totals["loss"] / n,
                "train_nll": totals["nll"] / n,
                "train_dis": totals["dis"] / n,
                "seconds": time.perf_counter() - te,
            }
            if cfg.track_validation or epoch + 1 == cfg.epochs:
                risk = self._predict(model, fold.val, data)["risk"].to_numpy()
                pts = self.cohort.patients.loc[fold.val]
                time_, event = pts["time"].to_numpy(), pts["event"].to_numpy()
                # no event in the fold: the C-index is undefined, recorded as NaN
                record["val_cindex"] = harrell_c(time_, event, risk).cindex if event.any() else float("nan")
            history.append(record)
            log.info(
                "fold %d epoch %d: %s", fold.index, epoch + 1, {k: round(v, 4) for k, v in record.items()}
            )
        return history

    def _train_epoch(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        data: _FoldData,
        batches: list[list[str]],
        validate: bool,
        label: str,
    ) -> dict[str, float]:
        """One pass over ``batches`` (with gradient accumulation); loss sums over patients."""
        cfg = self.cfg
        model.train()
        totals = {"loss": 0.0, "nll": 0.0, "dis": 0.0}
        steps = math.ceil(sum(len(b) for b in batches) / cfg.batch_size)
        opt.zero_grad(set_to_none=True)
        for step, batch in enumerate(batches):
            loss, nll, dis = self._losses(model, data, batch, validate)
            (loss / cfg.grad_accum).backward()
            if (step + 1) % cfg.grad_accum == 0 or step + 1 == len(batches):
                opt.step()
                opt.zero_grad(set_to_none=True)
            totals["loss"] += loss.item() * len(batch)
            totals["nll"] += nll.item() * len(batch)
            totals["dis"] += dis.item() * len(batch)
            if self.progress:
                self.progress(label, step + 1, steps)
        return totals

    def _losses(
        self, model: torch.nn.Module, data: _FoldData, batch: list[str], validate: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, nll, decoupling)`` of one batch; ``loss = nll + alpha_dis * decoupling``."""
        mcfg = data.config
        x = assemble(batch, data.m1_all, data.rows, self.bags, self.needs_wsi).to(self.device)
        y = torch.as_tensor(data.bins[batch].to_numpy(), device=self.device)
        c = torch.as_tensor(data.cens[batch].to_numpy(), device=self.device, dtype=torch.float32)
        with self._autocast():
            out = model(x.m1, x.wsi, x.mask, validate=validate)
        nll = nll_survival_loss(out.hazards.float(), y, c, alpha=self.cfg.alpha_surv)
        if mcfg.model_type == "deref" and mcfg.decouple and mcfg.alpha_dis:
            dis = decoupling_loss(out.features.float(), mcfg.distance, mcfg.hinge_margin)
            return nll + mcfg.alpha_dis * dis, nll, dis
        return nll, nll, torch.zeros((), device=self.device)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _mean_patch(self, ids: Sequence[str]) -> np.ndarray:
        total, count = None, 0
        for c in ids:
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


def run_metrics(folds: Sequence[FoldInfo], oof: pd.DataFrame, epochs: int) -> RunMetrics:
    """The run's metrics: the fixed last epoch's C-index over folds (the headline; folds
    without an event are left out of mean and std), the pooled out-of-fold C-index of
    ``oof`` (``time, event, risk``), and the best-epoch figure when every fold tracked it."""
    headline = _summary(
        HEADLINE_PROTOCOL.format(epochs=epochs),
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
    return DataInfo(
        table=str(Path(cohort.source).resolve()),
        bag_dir=None if cohort.bag_dir is None else str(Path(cohort.bag_dir).resolve()),
        fingerprint=cohort.fingerprint,
        n_patients=len(cohort.case_ids),
        n_events=int(cohort.n_events),
        m1_names=tuple(f.name for f in cohort.families),
        m1_columns=tuple(tuple(f.columns) for f in cohort.families),
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
) -> RunResult:
    """Train every fold, write the run directory (see :mod:`deref.runs`) and return results.

    ``data_info`` adds provenance to ``run.json``'s ``data`` (``signatures``, ``splits``,
    ``time_col``, ...). ``only_folds`` trains a subset of the (checked, complete) folds: a
    quick look, whose out-of-fold table then covers only those folds' patients.
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
    results = [trainer.train_fold(fold, out / f"fold_{fold.index}") for fold in chosen]
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
        metrics=run_metrics([f.info for f in results], preds, train_config.epochs),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        package_version=__version__,
        torch_version=torch.__version__,
    )
    write_run_info(out, info)
    return RunResult(path=out, info=info, folds=results, predictions=preds)
