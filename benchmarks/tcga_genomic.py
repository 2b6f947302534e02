"""SNN and SNN+transformer on TCGA-BLCA, 5-fold CV on the MCAT splits (printed, not asserted).

    python benchmarks/tcga_genomic.py --json [--epochs 20] [--models snn,snn_transformer]
        [--selection inner [--grid weight_decay=1e-5,1e-3] [--l1 1e-5] [--metric cindex]
         [--inner-folds 1] [--patience N]] [--set snn_dropout=0.25]

Goes through the same code path as `deref train` (load_cohort -> read_mcat_splits ->
train_cross_validation); per model and fold it prints the headline C-index (the fixed last
epoch, or with --selection inner the epoch count chosen on an inner split of the training
fold, the fixed last epoch of the same retrain beside it) and the best-epoch one
(optimistic, for comparison with the paper only). The last stdout line is one JSON object:
{"snn": {"selection", "mean", "std", "folds", "fixed_last_epoch_mean", "fixed_last_epoch_std",
"fixed_last_epoch_folds", "selected_epochs", "selected_params", "best_epoch_mean",
"best_epoch_std", "seconds"}, "snn_transformer": {...}}.

Anchors on these folds: DeReF paper (best epoch) SNN 0.618 +- 0.022, SNN+transformer
0.659 +- 0.032; MCAT's SNN code run here 0.569 +- 0.035 (last epoch), 0.588 (best epoch);
penalized Cox on the 50 most variable genes 0.549 +- 0.040.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--models", default="snn,snn_transformer")
    ap.add_argument(
        "--data", default=str(SHARED), help="folder with datasets_csv_sig/, signatures.csv, splits/"
    )
    ap.add_argument("--out", help="keep the run directories here (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selection", choices=("last", "inner"), default="last")
    ap.add_argument("--metric", choices=("cindex", "nll"), default="cindex", help="inner selection score")
    ap.add_argument("--inner-fraction", type=float, default=0.2)
    ap.add_argument("--inner-folds", type=int, default=1)
    ap.add_argument("--patience", type=int)
    ap.add_argument("--l1", type=float, default=0.0, help="L1 on the genomic encoder (MCAT's lambda_reg)")
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=1, help="patients per step (the paper: 1)")
    ap.add_argument("--only-folds", help="comma-separated fold indices (a quick look)")
    ap.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="inner selection grid (repeatable)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="model config override (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deref.cli.common import parse_overrides
    from deref.data.cohort import load_cohort
    from deref.data.splits import read_mcat_splits
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    data = Path(args.data)
    if not data.exists():
        sys.exit(f"{data} not found: the TCGA tables live in ../shared/data/tcga")
    cohort = load_cohort(
        data / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip", signatures=data / "signatures.csv"
    )
    folds = read_mcat_splits(data / "splits" / "5foldcv" / "tcga_blca")
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tcga-genomic-"))
    grid = {
        k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in parse_overrides(args.grid).items()
    }
    tcfg = TrainConfig(
        epochs=args.epochs,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        l1=args.l1,
        selection=args.selection,
        selection_metric=args.metric,
        inner_fraction=args.inner_fraction,
        inner_folds=args.inner_folds,
        patience=args.patience,
        grid=grid,
    )
    results = {}
    for name in args.models.split(","):
        cfg = ModelConfig(
            model_type=name,
            m1_sizes=tuple(f.size for f in cohort.families),
            m1_names=tuple(f.name for f in cohort.families),
            **parse_overrides(args.set),
        )
        t = time.perf_counter()
        only = [int(x) for x in args.only_folds.split(",")] if args.only_folds else None
        res = train_cross_validation(
            cohort, folds, cfg, tcfg, out_root / name, name=f"blca-{name}", only_folds=only
        )
        results[name] = _summary(res.info, args, time.perf_counter() - t)
        r = results[name]
        print(
            f"{name}: {r['mean']:.3f} ± {r['std']:.3f} ({res.info.metrics.headline.protocol}); fixed last epoch "
            f"{r['fixed_last_epoch_mean']:.3f} ± {r['fixed_last_epoch_std']:.3f}; "
            f"best epoch {r['best_epoch_mean']:.3f} (optimistic)"
        )
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


def _summary(info, args, seconds: float) -> dict:
    """Per-fold lines printed, and the model's JSON record."""
    import numpy as np

    head, best = info.metrics.headline, info.metrics.optimistic_best_epoch
    for f in info.folds:
        sel = f.selection or {}
        print(
            f"{info.model.model_type} fold {f.index}: C-index {f.cindex_last_epoch:.3f} at epoch {f.selected_epoch} "
            f"{sel.get('params') or ''}| fixed last epoch {f.cindex_fixed_last_epoch:.3f} | best epoch "
            f"{f.optimistic_best_epoch} {f.optimistic_best_epoch_cindex:.3f} (optimistic)"
        )
    fixed = np.array([f.cindex_fixed_last_epoch for f in info.folds], dtype=float)
    return {
        "selection": args.selection,
        "protocol": head.protocol,
        "mean": round(head.mean, 4),
        "std": round(head.std, 4),
        "folds": [round(x, 4) for x in head.folds],
        "fixed_last_epoch_mean": round(float(fixed.mean()), 4),
        "fixed_last_epoch_std": round(float(fixed.std(ddof=1)), 4),
        "fixed_last_epoch_folds": [round(float(x), 4) for x in fixed],
        "selected_epochs": [f.selected_epoch for f in info.folds],
        "selected_params": [(f.selection or {}).get("params") for f in info.folds],
        "pooled_oof_cindex": round(info.metrics.pooled_oof_cindex, 4),
        "best_epoch_mean": round(best.mean, 4),
        "best_epoch_std": round(best.std, 4),
        "epochs": args.epochs,
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
