"""``deref figures``: Kaplan–Meier figures and tables of a training run's risk groups."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from deref.errors import DataError

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  deref figures runs/blca-deref --out figures/
      median split, cutoffs from each fold's training risks; PNG, SVG and PDF
  deref figures runs/blca-deref --out figures/ --rule tertiles --formats png
  deref figures runs/blca-deref --out figures/ --rule quantiles:0.25,0.75
  deref figures runs/external --out figures/ --cutoffs-from cohort
      a cohort without train_risks.csv: cut at its own risk quantiles (labelled as such)

writes into --out:
  km_<rule>.png/.svg/.pdf   Kaplan–Meier curves, 95% CI, censor ticks, number at risk,
                            log-rank p, hazard ratio; run, cohort, rule and date in the
                            file metadata and in a caption line
  km_<rule>.csv             every number behind the figure (section column says which)
  risk_boxplot.png          box plot and Welch t-test of the extreme groups
"""

FORMATS = ("png", "svg", "pdf")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``figures`` subcommand."""
    p = subparsers.add_parser(
        "figures",
        help="Kaplan–Meier figures of a run's risk groups (PNG/SVG/PDF + CSV)",
        description=(
            "Stratify a run's out-of-fold predictions into risk groups, with cutoffs taken from each\n"
            "fold's training-set risks, and write Kaplan–Meier figures and the table behind them."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", type=Path, help="run directory (predictions.csv, run.json, ...)"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument(
        "--rule",
        default="median",
        help="median (default), tertiles, quartiles, quantiles:P1,P2,... or thresholds:T1,T2,...",
    )
    p.add_argument(
        "--formats", default="png,svg,pdf", help="comma-separated subset of png,svg,pdf (default: all)"
    )
    p.add_argument(
        "--cutoffs-from",
        choices=("training", "cohort"),
        default="training",
        help="training: quantiles of each fold's training risks (default); cohort: of the shown cohort",
    )
    p.add_argument("--cohort", default=None, help="cohort name for captions (default: run.json data.table)")
    p.add_argument("--time-unit", default="months", help="unit of the time column (default: months)")
    p.set_defaults(func=run)
    return p


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: no rows")
    return df


def _read_run_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def _parse_formats(spec: str) -> list[str]:
    fmts = [f.strip().lower().lstrip(".") for f in spec.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise DataError(f"--formats: unknown format(s) {bad or [spec]}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(fmts))


def _with_file(path: Path, exc: DataError) -> DataError:
    msg = str(exc)
    return DataError(msg if str(path) in msg else f"{path}: {msg}")


def run(args: argparse.Namespace) -> int:
    """Write the figures and tables; print log-rank p, HR and medians. Returns 0."""
    from deref.figures import (
        export_figure,
        figure_meta,
        format_p,
        hazard_ratio_text,
        km_figure_matplotlib,
        median_text,
        risk_boxplot_matplotlib,
        stratification_table,
    )
    from deref.stratify import CutoffRule, assign_groups, compute_cutoffs, stratify

    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    formats = _parse_formats(args.formats)
    rule = CutoffRule.parse(args.rule)
    pred_path, train_path, info_path = (
        run_dir / "predictions.csv",
        run_dir / "train_risks.csv",
        run_dir / "run.json",
    )

    info = _read_run_json(info_path)
    pred = _read_csv(pred_path, ["case_id", "fold", "time", "censorship", "risk"])
    train = None
    if args.cutoffs_from == "training" and rule.kind == "quantiles":
        if not train_path.is_file():
            raise DataError(
                f"{train_path}: file not found; the cutoffs come from each fold's training risks "
                "(use --cutoffs-from cohort to cut at this cohort's own risks instead)"
            )
        train = _read_csv(train_path, ["fold", "case_id", "risk"])

    try:
        cutoffs = compute_cutoffs(rule, train_risks=train, pred_df=pred, cutoffs_from=args.cutoffs_from)
    except DataError as exc:
        raise _with_file(train_path if train is not None else pred_path, exc) from exc
    try:
        groups = assign_groups(pred, cutoffs)
        result = stratify(pred, groups, cutoffs=cutoffs, time_unit=args.time_unit)
    except DataError as exc:
        raise _with_file(pred_path, exc) from exc

    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    cohort = args.cohort or (Path(str(data["table"])).stem if data.get("table") else None)
    meta = figure_meta(
        run=str(info.get("name") or run_dir.name),
        cohort=cohort,
        cutoff=cutoffs.describe(),
        run_created=info.get("created"),
    )
    title = f"{meta['run']}: {rule.name} split"
    meta_file = {**meta, "title": f"Kaplan–Meier, {title}"}

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"km_{rule.slug}"
    written = []
    km_fig = km_figure_matplotlib(result, title=title, meta=meta)
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        path.write_bytes(export_figure(km_fig, fmt, meta_file))
        written.append(path)
    table_path = out / f"{stem}.csv"
    stratification_table(result).to_csv(table_path, index=False)
    written.append(table_path)
    box_path = out / "risk_boxplot.png"
    box_fig = risk_boxplot_matplotlib(result, title=f"{title}: risk groups", meta=meta)
    box_path.write_bytes(export_figure(box_fig, "png", {**meta, "title": f"Box plot, {title}"}))
    written.append(box_path)

    lr = result.logrank
    print(f"risk groups: {rule.name}, cutoffs from {cutoffs.describe()}")
    print(f"log-rank: {format_p(lr.p_value) if lr.estimable else 'not estimable: ' + str(lr.reason)}")
    print(hazard_ratio_text(result))
    for g in result.groups:
        print(f"  {g.name}: n={g.n}, events={g.events}, {median_text(g, result.time_unit)}")
    for note in result.notes:
        print(f"note: {note}")
    for path in written:
        logger.info("wrote %s", path)
    return 0
