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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deref import __version__
from deref.data.cohort import Cohort
from deref.data.preprocess import fit_preprocessing
from deref.data.splits import Fold, check_folds, write_mcat_splits
from deref.errors import ConfigError, DataError
from deref.inference import BagStore, assemble, m1_matrix, resolve_device, surv_columns
from deref.losses import decoupling_loss, nll_survival_loss
from deref.metrics import harrell_c
from deref.model import ModelConfig, build_model
from deref.runs import RUN_FORMAT, save_checkpoint, write_json

log = logging.getLogger(__name__)

GENOMIC_ONLY = ("snn", "snn_transformer")


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
    index: int
    predictions: pd.DataFrame
    train_risks: pd.DataFrame
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    seconds: float


@dataclass
class RunResult:
    path: Path
    folds: list[FoldResult] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


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
        self.needs_wsi = model_config.model_type not in GENOMIC_ONLY
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
        cfg, cohort = self.cfg, self.cohort
        t0 = time.perf_counter()
        seed = cfg.seed + fold.index
        seed_everything(seed)
        wsi_dim = self.model_config.wsi_dim if self.needs_wsi else None
        pre = fit_preprocessing(cohort, fold.train, n_bins=cfg.n_bins, wsi_dim=wsi_dim)
        if self.needs_wsi and pre.wsi_dim is not None and pre.wsi_dim != self.model_config.wsi_dim:
            raise ConfigError(
                f"bags in {cohort.bag_dir} have D = {pre.wsi_dim}; the model config expects wsi_dim = {self.model_config.wsi_dim}"
            )
        if self.bags is not None:
            self.bags.wsi_dim = self.model_config.wsi_dim
        mcfg = self.model_config.replace(
            m1_sizes=pre.m1_sizes,
            m1_names=tuple(pre.m1_names) or self.model_config.m1_names[: len(pre.m1_sizes)],
            n_bins=cfg.n_bins,
        )
        model = build_model(mcfg).to(self.device)
        ids_all = cohort.case_ids
        m1_all = m1_matrix(cohort, pre, ids_all)
        rows = {c: i for i, c in enumerate(ids_all)}
        pts = cohort.patients
        bins = pd.Series(pre.bins(pts["time"].to_numpy()), index=pts.index)
        cens = pts["censorship"].astype(int)

        train_ids = list(fold.train)
        weights = (
            class_weights(bins[train_ids].to_numpy(), cens[train_ids].to_numpy())
            if cfg.weighted_sampler
            else None
        )
        wsi_mean = self._mean_patch(train_ids) if self.needs_wsi else None

        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / cfg.epochs) ** cfg.lr_power)
        rng = np.random.default_rng(seed)
        size_of = self.bags.size if (self.bags is not None and cfg.batch_size > 1) else None
        history: list[dict[str, float]] = []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
        for epoch in range(cfg.epochs):
            te = time.perf_counter()
            model.train()
            totals = {"loss": 0.0, "nll": 0.0, "dis": 0.0}
            batches = epoch_batches(train_ids, weights, cfg.batch_size, size_of, rng)
            opt.zero_grad(set_to_none=True)
            for step, batch in enumerate(batches):
                x = assemble(batch, m1_all, rows, self.bags, self.needs_wsi).to(self.device)
                y = torch.as_tensor(bins[batch].to_numpy(), device=self.device)
                c = torch.as_tensor(cens[batch].to_numpy(), device=self.device, dtype=torch.float32)
                with autocast:
                    out = model(x.m1, x.wsi, x.mask, validate=epoch == 0)
                nll = nll_survival_loss(out.hazards.float(), y, c, alpha=cfg.alpha_surv)
                loss = nll
                dis = torch.zeros((), device=self.device)
                if mcfg.model_type == "deref" and mcfg.decouple and mcfg.alpha_dis:
                    dis = decoupling_loss(out.features.float(), mcfg.distance, mcfg.hinge_margin)
                    loss = loss + mcfg.alpha_dis * dis
                (loss / cfg.grad_accum).backward()
                if (step + 1) % cfg.grad_accum == 0 or step + 1 == len(batches):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                totals["loss"] += loss.item() * len(batch)
                totals["nll"] += nll.item() * len(batch)
                totals["dis"] += dis.item() * len(batch)
                if self.progress:
                    self.progress(
                        f"fold {fold.index} epoch {epoch + 1}/{cfg.epochs}", step + 1, steps_per_epoch
                    )
            sched.step()
            record = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": totals["loss"] / len(train_ids),
                "train_nll": totals["nll"] / len(train_ids),
                "train_dis": totals["dis"] / len(train_ids),
                "seconds": time.perf_counter() - te,
            }
            if cfg.track_validation or epoch + 1 == cfg.epochs:
                val = self._predict(model, fold.val, m1_all, rows)
                record["val_cindex"] = _cindex(pts.loc[fold.val], val["risk"].to_numpy())
            history.append(record)
            log.info(
                "fold %d epoch %d: %s", fold.index, epoch + 1, {k: round(v, 4) for k, v in record.items()}
            )

        val_pred = self._predict(model, fold.val, m1_all, rows)
        train_pred = self._predict(model, train_ids, m1_all, rows)
        val_pred.insert(1, "fold", fold.index)
        cidx = [h["val_cindex"] for h in history if "val_cindex" in h]
        metrics = {
            "cindex_last_epoch": history[-1]["val_cindex"],
            "optimistic_best_epoch": int(np.argmax(cidx)) + 1 if cidx and cfg.track_validation else None,
            "optimistic_best_epoch_cindex": float(np.max(cidx)) if cidx and cfg.track_validation else None,
            "n_train": len(train_ids),
            "n_val": len(fold.val),
        }
        if fold_dir is not None:
            extra = {
                "wsi_mean": None if wsi_mean is None else wsi_mean.tolist(),
                "fold": fold.index,
                "seed": seed,
            }
            save_checkpoint(fold_dir, model, pre, extra)
        result = FoldResult(
            index=fold.index,
            predictions=val_pred,
            train_risks=pd.DataFrame(
                {"fold": fold.index, "case_id": train_ids, "risk": train_pred["risk"].to_numpy()}
            ),
            history=history,
            metrics=metrics,
            seconds=time.perf_counter() - t0,
        )
        result.metrics["bin_edges"] = pre.bin_edges
        result.metrics["model_config"] = mcfg.to_dict()
        return result

    def _mean_patch(self, ids: Sequence[str]) -> np.ndarray:
        total, count = None, 0
        for c in ids:
            f = self.bags.get(c).features
            s = f.sum(axis=0, dtype=np.float64)
            total = s if total is None else total + s
            count += f.shape[0]
        return (total / max(count, 1)).astype(np.float32)

    @torch.no_grad()
    def _predict(self, model, ids: Sequence[str], m1_all, rows) -> pd.DataFrame:
        model.eval()
        ids = list(ids)
        order = sorted(ids, key=self.bags.size) if self.bags is not None else ids
        risk, std, surv = [], [], []
        bs = self.cfg.eval_batch_size
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)
        for s in range(0, len(order), bs):
            batch = order[s : s + bs]
            x = assemble(batch, m1_all, rows, self.bags, self.needs_wsi).to(self.device)
            with autocast:
                out = model(x.m1, x.wsi, x.mask, validate=False)
            risk.append(out.risk.float().cpu().numpy())
            std.append(out.risk_std.float().cpu().numpy())
            surv.append(out.survival.float().cpu().numpy())
        frame = pd.DataFrame(
            {"case_id": order, "risk": np.concatenate(risk), "risk_std": np.concatenate(std)}
        )
        s_arr = np.concatenate(surv)
        for j, col in enumerate(surv_columns(s_arr.shape[1])):
            frame[col] = s_arr[:, j]
        return frame.set_index("case_id").loc[ids].reset_index()


def _cindex(pts: pd.DataFrame, risk: np.ndarray) -> float:
    if int(pts["event"].sum()) == 0:
        return float("nan")
    return harrell_c(pts["time"].to_numpy(), pts["event"].to_numpy(), risk).cindex


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

    ``only_folds`` trains a subset of the (checked, complete) folds: a quick look, whose
    out-of-fold table then covers only those folds' patients.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = CohortTrainer(cohort, model_config, train_config, progress)
    trainer.check(folds)
    write_mcat_splits(folds, out / "splits")
    result = RunResult(path=out)
    fold_meta = []
    for fold in folds:
        if only_folds is not None and fold.index not in only_folds:
            continue
        fr = trainer.train_fold(fold, out / f"fold_{fold.index}")
        result.folds.append(fr)
        m = dict(fr.metrics)
        fold_meta.append(
            {
                "index": fold.index,
                "seed": train_config.seed + fold.index,
                "n_train": len(fold.train),
                "n_val": len(fold.val),
                "train_ids": list(fold.train),
                "val_ids": list(fold.val),
                "bin_edges": [("inf" if math.isinf(e) else float(e)) for e in m.pop("bin_edges")],
                "metrics": {k: v for k, v in m.items() if k != "model_config"},
                "history": fr.history,
                "seconds": fr.seconds,
            }
        )
    final_cfg = ModelConfig.from_dict(result.folds[0].metrics["model_config"])
    preds = pd.concat([f.predictions for f in result.folds], ignore_index=True)
    pts = cohort.patients.loc[preds["case_id"]]
    preds.insert(2, "time", pts["time"].to_numpy())
    preds.insert(3, "censorship", pts["censorship"].to_numpy())
    preds.insert(4, "event", pts["event"].to_numpy())
    preds.to_csv(out / "predictions.csv", index=False)
    pd.concat([f.train_risks for f in result.folds], ignore_index=True).to_csv(
        out / "train_risks.csv", index=False
    )
    last = np.array([f.metrics["cindex_last_epoch"] for f in result.folds], dtype=float)
    best = [f.metrics["optimistic_best_epoch_cindex"] for f in result.folds]
    metrics = {
        "headline": {
            "protocol": f"fixed last epoch ({train_config.epochs})",
            "cindex_mean": float(np.nanmean(last)),
            "cindex_std": float(np.nanstd(last, ddof=1)) if len(last) > 1 else 0.0,
            "cindex_folds": last.tolist(),
        },
        "pooled_oof_cindex": _cindex(cohort.patients.loc[preds["case_id"]], preds["risk"].to_numpy()),
    }
    if all(b is not None for b in best):
        metrics["optimistic_best_epoch"] = {
            "protocol": "best epoch chosen on the validation fold (optimistic; for comparison with the paper only)",
            "cindex_mean": float(np.mean(best)),
            "cindex_std": float(np.std(best, ddof=1)) if len(best) > 1 else 0.0,
            "cindex_folds": best,
        }
    result.predictions = preds
    result.metrics = metrics
    info = {
        "format": RUN_FORMAT,
        "name": name or out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "model": final_cfg.to_dict(),
        "train": train_config.to_dict(),
        "data": {
            "table": str(Path(cohort.source).resolve()),
            "bag_dir": None if cohort.bag_dir is None else str(Path(cohort.bag_dir).resolve()),
            "fingerprint": cohort.fingerprint,
            "n_patients": len(cohort.case_ids),
            "n_events": cohort.n_events,
            "m1_names": [f.name for f in cohort.families],
            "m1_columns": [list(f.columns) for f in cohort.families],
            "wsi_dim": final_cfg.wsi_dim if trainer.needs_wsi else None,
            **(data_info or {}),
        },
        "folds": fold_meta,
        "metrics": metrics,
    }
    write_json(out / "run.json", info)
    return result
