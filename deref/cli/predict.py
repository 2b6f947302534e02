"""``deref predict``: risks and survival curves of a cohort from a trained run directory."""

from __future__ import annotations

import argparse

from deref.cli.common import simple_progress

EPILOG = """\
examples:
  # reproduce a run's out-of-fold predictions from the run directory alone
  deref predict runs/blca-deref --out preds.csv

  # an external cohort: mean of the fold models, on the GPU with bf16 autocast
  deref predict runs/blca-deref --table other.csv --bags other_feats/ --fold mean \\
      --device cuda --bf16 --out external.csv

Columns: case_id, fold, time, censorship, event, risk (higher = worse), risk_std (spread
over the reorganization segment counts; over folds with --fold mean), surv_0..surv_{K-1}.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict a cohort with a trained run",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `deref train`")
    p.add_argument("--table", help="cohort table (default: the run's own)")
    p.add_argument("--bags", help="bag folder (default: the run's own)")
    p.add_argument("--fold", default="oof", help="oof (default), mean, or a fold index")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--out", required=True, help="CSV to write")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from deref.inference import Predictor

    pred = Predictor.from_run(args.run, device=args.device, bf16=args.bf16)
    cohort = pred.load_cohort(args.table, args.bags)
    fold = int(args.fold) if args.fold.lstrip("-").isdigit() else args.fold
    df = pred.predict(cohort, fold=fold, batch_size=args.batch_size, progress=simple_progress("predict"))
    df.to_csv(args.out, index=False)
    print(
        f"{len(df)} patients predicted with {pred.run.name} ({pred.config.model_type}, fold={args.fold}) -> {args.out}"
    )
    return 0
