"""``deref compare``: runs side by side, with paired bootstrap CIs of their C-index differences."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  deref compare runs/deref runs/snn runs/abmil --out comparison/
  deref compare runs/* --reference runs/deref --resamples 5000 --seed 1 --out comparison/

The runs must be on the same patients with the same fold for every patient (and the same
outcomes); otherwise the command refuses, naming the first differing patient.
Per run: per-fold Harrell and Uno C, td-AUC and IBS of the held-out predictions (the kept
model of each outer fold: the honest headline), mean +- std over folds; the best-epoch C is
shown only labelled optimistic. Per pair (reference vs each other run): the pooled out-of-fold
Harrell C of the reference minus the other's, its paired bootstrap CI over patients (the same
resample for both runs), the fold-wise differences, the share of resamples the reference wins,
and Holm-corrected bootstrap p-values.

Writes comparison.csv, comparison.md, comparison.tex, forest.png/.svg/.pdf and comparison.json
(every number, with the seed) into --out.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand."""
    p = subparsers.add_parser(
        "compare",
        help="compare runs: metrics side by side, paired bootstrap CIs of C-index differences",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--reference",
        metavar="RUN",
        help="the run compared with every other (name or folder; default: the first)",
    )
    p.add_argument(
        "--resamples", type=int, default=2000, metavar="N", help="bootstrap resamples (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default: %(default)s)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Compare, write the files, print the short table. Returns 0."""
    from deref.compare import compare_runs
    from deref.runs import write_json

    comparison = compare_runs(args.runs, reference=args.reference, n_resamples=args.resamples, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in comparison.files().items():
        (out / name).write_bytes(data)
        written.append(name)
    write_json(out / "comparison.json", comparison.to_dict())
    written.append("comparison.json")
    for line in comparison.summary_lines():
        print(line)
    print(f"wrote {', '.join(written)} to {out}")
    return 0
