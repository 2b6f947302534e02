"""``deref precompute``: every patient's dashboard results into the run's explanation cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  # every patient of the run's own cohort: outputs, grad + IG attributions, thumbnails, top-k
  deref precompute runs/demo/run
  # two patients, gradients only, the top 12 patches of each map
  deref precompute runs/demo/run --patients DEMO-0001,DEMO-0002 --methods grad --top-k 12
  # another cohort (its table, bags and slides)
  deref precompute runs/blca --table data/external.csv --bags features/external --slides slides/external
  # a Ray cluster: one actor per GPU (or per CPU share) holding the run's models
  deref precompute /shared/runs/blca --ray auto

What is stored, per patient (RUN/explanations/, see `deref.explain.precompute`):
  fold_<k>/<case>__output[-m1|-wsi]__<hash>.npz  the model output and its two "what if"s
  fold_<k>/<case>__grad|ig__<hash>.npz          attributions of every target (DeReF runs)
  slides/<slide>__thumbnail__<hash>.npz         the slide thumbnail the Attention page draws on
  slides/<slide>__patches__<hash>.npz           the patches of its top-k galleries (both orders)
  precompute_manifest.csv                       patient, status, patches, seconds, error, output
Entries are keyed by the weights, the preprocessing, the bag files, the cohort table and the
settings: a rerun computes only what is missing or stale (those patients are "skipped").
The dashboard reads float32 attributions: --bf16 writes entries it does not read.

exit status: 0 every patient done (or skipped); 1 nothing could run (bad run, table or
arguments); 3 finished, but some patients failed (see the manifest).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "precompute",
        help="every patient's dashboard results into the run's explanation cache",
        description="Compute, for every patient of a run's cohort, what the dashboard's Patient and "
        "Attention pages show (model outputs, attributions, thumbnails, top-k patches) and store it "
        "in RUN/explanations/, so that every patient opens instantly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory written by `deref train`")
    p.add_argument("--table", help="cohort table (default: the run's own)")
    p.add_argument("--bags", help="bag folder (default: the run's own)")
    p.add_argument("--slides", help="slide folder (default: slides/ beside the table, or beside the bags)")
    p.add_argument("--patients", metavar="A,B", help="comma-separated case ids (default: every patient)")
    p.add_argument(
        "--methods", default="grad,ig", help="attribution methods, grad and/or ig (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=32, help="IG points (default: %(default)s)")
    p.add_argument(
        "--top-k",
        type=int,
        default=24,
        help="patches per map and order in the galleries (default: %(default)s)",
    )
    p.add_argument(
        "--highest-only",
        action="store_true",
        help="store only the highest top-k patches of each map, not the lowest too (less disk)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the attribution passes")
    from deref.scale import add_ray_options

    add_ray_options(p, what="patients")
    p.set_defaults(func=run)


def _case_ids(args: argparse.Namespace) -> list[str] | None:
    if not args.patients:
        return None
    return [c.strip() for c in args.patients.split(",") if c.strip()]


def _all_case_ids(args: argparse.Namespace) -> list[str]:
    """The cohort's patients (read without torch, for the Ray driver)."""
    from deref.runs import RunDir
    from deref.runs.fit import load_run_cohort

    return [str(c) for c in load_run_cohort(RunDir(args.run).info, args.table, args.bags).case_ids]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deref.explain.precompute import PrecomputeSettings, manifest_path, precompute_run
    from deref.prepare import exit_status, summarize, write_manifest
    from deref.scale import options_from_args

    settings = PrecomputeSettings(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        steps=args.steps,
        top_k=args.top_k,
        bf16=True if args.bf16 else None,
        lowest=not args.highest_only,
    )
    options = options_from_args(args)
    case_ids = _case_ids(args)
    total = len(case_ids) if case_ids is not None else None
    if options is not None and case_ids is None:
        case_ids = _all_case_ids(args)
        total = len(case_ids)
    with tqdm(total=total, unit="patient", desc="precompute", disable=None) as bar:

        def on_result(row) -> None:
            bar.update(1)
            if row.status == "failed":
                tqdm.write(f"deref precompute: {row.error}", file=sys.stderr)

        common = dict(table=args.table, bags=args.bags, slide_dir=args.slides, on_result=on_result)
        if options is None:
            rows = precompute_run(args.run, settings, case_ids=case_ids, **common)
        else:
            from deref.scale.precompute import precompute_ray

            rows = precompute_ray(args.run, case_ids, settings, options, **common)
    manifest = write_manifest(manifest_path(args.run), rows, id_column="patient")
    print(f"deref precompute: {summarize(rows, noun='patient', counted=None)} -> {Path(manifest)}")
    return exit_status(rows)
