"""``deref ablate``: the paper's ablation grid (or a custom one) as resumable runs, then compared."""

from __future__ import annotations

import argparse

from deref.cli.common import BarProgress, load_cohort_from_args
from deref.errors import ConfigError

EPILOG = """\
examples:
  # the paper's grid (Tables III-VII) on a cohort, 5 generated folds, compared with DeReF
  deref ablate cohort.csv --signatures sig.csv --bags bags/ --grid paper --out ablations/

  # a few variants, three rounds of 5-fold with re-drawn folds and other seeds (Table IX)
  deref ablate cohort.csv --signatures sig.csv --bags bags/ --grid paper \\
      --only no_moe,no_rfr,experts_8 --repeats 3 --out ablations/

  # a custom grid: {"variants": {"wide": {"c2": 256}, "no_share_kl": {"distance": "kl"}}}
  deref ablate cohort.csv --signatures sig.csv --bags bags/ --grid grid.json --out custom/

Every variant is trained into DIR/<variant> (DIR/<variant>/r<k> with --repeats) as by
`deref train` (the same training options; --set changes the base configuration that every
variant starts from). Resumable: run the same command again after a kill and only what did not
finish is trained; a finished run is never retrained (a finished run of another configuration
is refused). DIR/grid.json records the grid; DIR/comparison/ holds the comparison of every
variant with DeReF (the `deref` variant), as written by `deref compare`.

The paper's grid: deref, no_explore, no_decoupling, rca_concat_mlp, rca_cross_attention,
no_rfr, no_moe, distance_l1/kl/cosine/mse, fixed_s2/8/16/32/64 (those that divide c2),
experts_2/4/6/8. A variant of the same configuration as an earlier one (distance_mse and
experts_4 with the default settings) is trained once.
"""


def _train_parser() -> argparse.ArgumentParser:
    """``deref train``'s parser, whose arguments ``deref ablate`` takes over."""
    from deref.cli import train

    return train.register(argparse.ArgumentParser(add_help=False).add_subparsers())


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ablate`` subcommand (the cohort and training options of ``deref train``)."""
    p = subparsers.add_parser(
        "ablate",
        help="train the paper's ablation grid (or a custom one), resumably, and compare it",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_train_parser()],
        conflict_handler="resolve",
    )
    p.add_argument(
        "--grid",
        required=True,
        metavar="paper|FILE",
        help="'paper' (the paper's grid) or a JSON/YAML file {\"variants\": {name: {field: value}}}",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="the grid's folder (created; resumed if present)"
    )
    p.add_argument("--only", metavar="A,B,...", help="train only these variants (deref is always kept)")
    p.add_argument(
        "--repeats", type=int, default=1, metavar="K", help="rounds of k-fold (default: %(default)s)"
    )
    p.add_argument(
        "--selection-grid",
        action="append",
        metavar="KEY=V1,V2",
        help="the inner-selection grid of `deref train --grid` (repeatable)",
    )
    p.add_argument(
        "--resamples", type=int, default=2000, metavar="N", help="bootstrap resamples (default: %(default)s)"
    )
    # `deref train` options that name one run: not for a grid of runs
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--only-folds", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # a grid always resumes
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Train the grid (resuming), print progress and the comparison table. Returns 0."""
    from deref.ablate import grid_variants, run_grid, select_variants
    from deref.cli.train import _fold_runner, _model_config, _train_config
    from deref.data.splits import make_folds, read_mcat_splits

    for flag, value in (("--name", args.name), ("--only-folds", args.only_folds)):
        if value is not None:
            raise ConfigError(f"{flag}: not an option of deref ablate (each variant's run is named after it)")
    cohort = load_cohort_from_args(args)
    if not cohort.families:
        raise ConfigError(
            "no modality 1: pass --signatures or --families (genomics), or --mri-manifest and --mri-features (MRI)"
        )
    base = _model_config(args, cohort)
    tcfg = _train_config(argparse.Namespace(**{**vars(args), "grid": args.selection_grid}))
    variants, notes = grid_variants(args.grid, base)
    variants, only_notes = select_variants(variants, args.only.split(",") if args.only else None)
    notes += only_notes
    folds = (
        read_mcat_splits(args.splits)
        if args.splits
        else make_folds(cohort.patients, k=args.folds, seed=args.seed)
    )
    print(
        f"cohort {cohort.source}: {len(cohort.case_ids)} patients, {cohort.n_events} events; "
        f"grid {args.grid}: {len(variants)} variants x {args.repeats} round(s); {len(folds)} folds; "
        f"{tcfg.epochs} epochs"
    )
    for note in notes:
        print(f"note: {note}")
    bar = BarProgress()

    def progress(label: str, done: int, total: int) -> None:
        if label == "grid":
            bar.close()
            print(f"[{done}/{total}] runs done")
        else:
            bar(label, done, total)

    try:
        result = run_grid(
            cohort,
            folds,
            base,
            tcfg,
            args.out,
            variants,
            repeats=args.repeats,
            seed=args.seed,
            progress=progress,
            notify=print,
            data_info={
                "signatures": args.signatures,
                "families_json": args.families,
                "splits": args.splits,
                "time_col": args.time_col,
                "censorship_col": args.censorship_col,
            },
            n_resamples=args.resamples,
            notes=notes,
            fold_runner=_fold_runner(args),
        )
    finally:
        bar.close()
    for line in result.summary_lines():
        print(line)
    print(f"grid written to {args.out} (grid.json; comparison in {args.out}/comparison)")
    return 0
