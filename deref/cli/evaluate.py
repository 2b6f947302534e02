"""``deref evaluate``: metrics and risk stratification of a run's out-of-fold predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
examples:
  deref evaluate runs/blca-deref
  deref evaluate runs/blca-deref --rule tertiles --json metrics.json

Prints per fold and overall: Harrell's C, Uno's C, mean time-dependent AUC, integrated
Brier score (censoring weights from each fold's training patients); then the Kaplan-Meier stratification (cutoffs from each fold's training
risks): log-rank p, hazard ratio with 95% CI, median survival (with its CI) per group.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="metrics and KM stratification of a run",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--predictions", help="predictions CSV (default: the run's out-of-fold table)")
    p.add_argument(
        "--rule", default="median", help="median, tertiles, quartiles, quantiles:a,b (default: %(default)s)"
    )
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument(
        "--step",
        action="store_true",
        help="score the IBS on the step curves (S_k held over each bin) instead of the interpolated "
        "ones the dashboard draws (constant hazard inside each bin)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the metrics table and the stratification summary; optionally write JSON. Returns 0."""
    import pandas as pd

    from deref.metrics import evaluate_run_predictions
    from deref.report import stratification_report
    from deref.runs import RunDir, write_json
    from deref.survival import survival_frame

    run_dir = RunDir(args.run)
    preds = survival_frame(
        pd.read_csv(args.predictions, dtype={"case_id": str}) if args.predictions else run_dir.predictions()
    )
    train_risks = run_dir.train_risks()
    # Censoring weights (Uno's C, td-AUC, IBS) from each fold's training patients for the run's
    # own out-of-fold table (every training patient is another fold's test patient, so their
    # outcomes are in it); another predictions table uses its own pooled cohort.
    report, note = evaluate_run_predictions(
        preds, None if args.predictions else train_risks, run_dir.info.bin_edges(), interpolate=not args.step
    )
    print(f"note: {note}")
    table = report.to_frame()
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(table.to_string())
    strat = stratification_report(preds, rule=args.rule, train_risks=train_risks, run_name=run_dir.name)
    print()
    for line in strat.summary_lines():
        print(line)
    if args.json:
        write_json(Path(args.json), {"metrics": json.loads(table.to_json(orient="index")), "rule": args.rule})
    return 0
