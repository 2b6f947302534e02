"""``deref figures``: Kaplan–Meier figures and tables of a training run's risk groups."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from deref.errors import DataError

if TYPE_CHECKING:
    from deref.report import StratificationReport

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
        df = pd.read_csv(path, dtype={"case_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise DataError(f"{path}: no rows")
    return df


def _parse_formats(spec: str) -> list[str]:
    fmts = [f.strip().lower().lstrip(".") for f in spec.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise DataError(f"--formats: unknown format(s) {bad or [spec]}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(fmts))


def _with_file(path: Path, exc: DataError) -> DataError:
    msg = str(exc)
    return DataError(msg if str(path) in msg else f"{path}: {msg}")


def _read_tables(run_dir: Path, needs_training: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``predictions.csv`` and (for training cutoffs) ``train_risks.csv``, columns checked."""
    pred = _read_csv(run_dir / "predictions.csv", ["case_id", "fold", "time", "censorship", "risk"])
    if not needs_training:
        return pred, None
    train_path = run_dir / "train_risks.csv"
    if not train_path.is_file():
        raise DataError(
            f"{train_path}: file not found; the cutoffs come from each fold's training risks "
            "(use --cutoffs-from cohort to cut at this cohort's own risks instead)"
        )
    return pred, _read_csv(train_path, ["fold", "case_id", "risk"])


def _write_files(report: StratificationReport, out: Path, formats: list[str]) -> list[Path]:
    """The KM figure in each format, its CSV and the box plot PNG; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    files = [(f"{report.file_stem('km', run_prefix=False)}.{fmt}", fmt, "km") for fmt in formats]
    files.append((f"{report.file_stem('km', run_prefix=False)}.csv", "csv", "km"))
    files.append((f"{report.file_stem('box', run_prefix=False)}.png", "png", "box"))
    written = []
    for name, fmt, what in files:
        path = out / name
        path.write_bytes(report.export(fmt, what))
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    """Write the figures and tables; print log-rank p, HR and medians. Returns 0."""
    from deref.report import stratification_report
    from deref.runs import RunDir
    from deref.stratify import CutoffRule
    from deref.survival import survival_frame

    formats = _parse_formats(args.formats)
    rule = CutoffRule.parse(args.rule)
    rd = RunDir(args.run_dir)
    pred, train = _read_tables(rd.path, args.cutoffs_from == "training" and rule.kind == "quantiles")
    pred_path = rd.path / "predictions.csv"
    try:
        sf = survival_frame(pred)
    except DataError as exc:
        raise _with_file(pred_path, exc) from exc
    table = rd.info.data.table
    try:
        report = stratification_report(
            sf,
            rule=rule,
            train_risks=train,
            cutoffs_from=args.cutoffs_from,
            time_unit=args.time_unit,
            run_name=rd.name,
            cohort_name=args.cohort or (Path(str(table)).stem if table else None),
            run_created=rd.info.created,
        )
    except DataError as exc:
        raise _with_file(rd.path / "train_risks.csv" if train is not None else pred_path, exc) from exc
    written = _write_files(report, args.out, formats)
    for line in report.summary_lines():
        print(line)
    for path in written:
        logger.info("wrote %s", path)
    return 0
