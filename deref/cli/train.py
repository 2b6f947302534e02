"""``deref train``: k-fold cross-validated training of DeReF or a baseline on a cohort."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from deref.cli.common import BarProgress, add_cohort_args, load_cohort_from_args, typed_grid, typed_overrides
from deref.errors import ConfigError
from deref.model.config import MODEL_TYPES

if TYPE_CHECKING:
    from deref.runs import RunInfo

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  # DeReF on a cohort with MCAT split files (5 folds), 30 epochs as in the paper
  deref train tcga_blca_all_clean.csv.zip --signatures signatures.csv --bags feats/ \\
      --splits splits/5foldcv/tcga_blca --out runs/blca-deref

  # genomic baselines on TCGA-BLCA (no slides needed)
  deref train tcga_blca_all_clean.csv.zip --signatures signatures.csv \\
      --splits splits/5foldcv/tcga_blca --model snn --epochs 20 --out runs/blca-snn

  # honest model selection: the epoch count (and weight decay / L1) chosen on an inner
  # split of each training fold; dropout as a model setting
  deref train tcga_blca_all_clean.csv.zip --signatures signatures.csv \\
      --splits splits/5foldcv/tcga_blca --model snn --epochs 20 --selection inner \\
      --grid weight_decay=1e-5,1e-3 --l1 1e-5 --set snn_dropout=0.25 --out runs/blca-snn-inner

  # generated folds (stratified on event x time bin), batched training, an ablation
  deref train cohort.csv --signatures sig.csv --bags bags/ --folds 5 --batch-size 8 \\
      --set rca_mode=blocks --set n_experts=8 --out runs/blocks-8experts

  # the folds as Ray tasks (one GPU each, or a CPU share), same predictions as sequentially
  deref train cohort.csv --signatures sig.csv --bags bags/ --folds 5 --out runs/x --ray auto

  # MRI + WSI, frozen features: per-sequence vectors from `deref mri --per-sequence`
  deref train cohort.csv --mri-manifest mri_manifest.csv --mri-features mri_features/ \
      --bags bags/ --folds 5 --out runs/mri-deref

  # MRI + WSI end to end (the paper's protocol): ROI cubes from `deref mri --cubes`, a 3D
  # ResNet (depth 10/18/34/50, --set resnet3d_depth=18) trained from scratch with DeReF;
  # and the MRI-only ResNet3D baseline (Table II's first row) on the same cubes
  deref train cohort.csv --mri-manifest mri_manifest.csv --mri-cubes mri_cubes/ \
      --bags bags/ --folds 5 --out runs/mri-deref-e2e
  deref train cohort.csv --mri-manifest mri_manifest.csv --mri-cubes mri_cubes/ \
      --folds 5 --model resnet3d --out runs/mri-resnet3d

The run directory holds per-fold weights (safetensors) and preprocessing, run.json
(configs, data fingerprints, per-epoch history, metrics), predictions.csv (out-of-fold)
and train_risks.csv. The headline C-index is the fixed last epoch's (--selection last, the
paper's protocol) or that of the epoch count chosen on an inner split of each training
fold (--selection inner: the outer validation fold is never used for the choice; the model
is retrained on the whole training fold and kept at the chosen epoch, the fixed last
epoch's C-index printed beside it). The best-epoch figure is printed only labelled as
optimistic.
"""

MODELS = MODEL_TYPES  # every model, peers included


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="cross-validated training on a cohort",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cohort_args(p)
    split = p.add_mutually_exclusive_group()
    split.add_argument("--splits", help="folder of MCAT split files splits_<k>.csv")
    split.add_argument(
        "--folds", type=int, default=5, help="generate K stratified folds (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--model", choices=MODELS, default="deref", help="model (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=1, help="patients per step (bucketed by bag size)")
    p.add_argument("--grad-accum", type=int, default=1, help="steps of gradient accumulation")
    p.add_argument(
        "--no-weighted-sampler",
        action="store_true",
        help="uniform sampling instead of bin x censorship weights",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed; fold k uses seed + k")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--no-track-validation", action="store_true", help="skip the per-epoch validation C-index")
    p.add_argument("--only-folds", help="comma-separated fold indices to train (a quick look)")
    p.add_argument(
        "--l1",
        type=float,
        default=0.0,
        help="L1 weight on the genomic encoder (MCAT's lambda_reg; default 0)",
    )
    p.add_argument(
        "--selection",
        choices=("last", "inner"),
        default="last",
        help="keep the last epoch (the paper's protocol, default) or choose the epoch count on an inner split",
    )
    p.add_argument(
        "--selection-metric",
        choices=("cindex", "nll"),
        default="cindex",
        help="inner score (default: %(default)s)",
    )
    p.add_argument(
        "--inner-fraction", type=float, default=0.2, help="inner validation share (default: %(default)s)"
    )
    p.add_argument(
        "--inner-folds", type=int, default=1, help="K >= 2: inner K-fold instead of one split (small cohorts)"
    )
    p.add_argument(
        "--patience", type=int, help="stop an inner run after this many epochs without improvement"
    )
    p.add_argument(
        "--bins",
        type=int,
        default=4,
        help="discrete time bins (quantiles of the training fold's event times; default %(default)s, the "
        "paper's; more bins let the curves follow the Kaplan-Meier shape)",
    )
    p.add_argument(
        "--recalibration",
        choices=("none", "temperature", "affine", "isotonic"),
        default="none",
        help="hazard map fitted on inner validation patients and applied to the curves, never to the "
        "risk (default: %(default)s; affine = a temperature and a shift per time bin)",
    )
    p.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="values the inner selection chooses among (weight_decay, l1, lr, alpha_surv or a float model "
        "setting such as snn_dropout; repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="model config override, e.g. snn_dropout=0.4 (repeatable)",
    )
    p.add_argument("--name", help="run name (default: the folder name)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the folds of --out finished earlier with the same settings, patients and weights",
    )
    from deref.scale import add_ray_options

    add_ray_options(p, what="folds")
    p.set_defaults(func=run)
    return p


def _model_config(args: argparse.Namespace, cohort):
    """The model config of ``--model`` and ``--set``: gene-family sizes from the cohort and,
    for a slide-reading model, ``wsi_dim`` from the first bag's header."""
    from deref.data.bags import find_bag, peek_bag_shape
    from deref.model import ModelConfig
    from deref.runs import GENOMIC_ONLY_MODELS

    overrides = typed_overrides(args.set, ModelConfig)
    overrides.setdefault("model_type", args.model)
    if args.bags and "wsi_dim" not in overrides and args.model not in GENOMIC_ONLY_MODELS:
        for case in cohort.case_ids:
            slides = cohort.slides.get(case) or []
            if slides:
                overrides["wsi_dim"] = peek_bag_shape(find_bag(slides[0], cohort.bag_dir))[1]
                break
    overrides.setdefault("m1_kind", cohort.m1_kind)
    if cohort.mri_cubes is not None:  # end to end: the 3D ResNet reads the cubes
        if (
            overrides.get("mri_encoder", "resnet3d") != "resnet3d"
            or overrides.get("mri_grid", cohort.mri_cubes.grid) != cohort.mri_cubes.grid
        ):
            raise ConfigError(
                f"--mri-cubes gives {cohort.mri_cubes.grid}^3 ROI cubes for a 3D ResNet; --set mri_encoder / "
                "mri_grid cannot change that (use --mri-features for frozen vectors)"
            )
        overrides["mri_encoder"] = "resnet3d"
        overrides["mri_grid"] = cohort.mri_cubes.grid
    overrides.setdefault("m1_sizes", cohort.m1_sizes)
    if cohort.allow_missing:
        overrides["allow_missing"] = True
    overrides.setdefault("m1_names", tuple(f.name for f in cohort.families))
    return ModelConfig(**overrides)


def _train_config(args: argparse.Namespace):
    from deref.model import ModelConfig
    from deref.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        weighted_sampler=not args.no_weighted_sampler,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        track_validation=not args.no_track_validation,
        l1=args.l1,
        selection=args.selection,
        selection_metric=args.selection_metric,
        inner_fraction=args.inner_fraction,
        inner_folds=args.inner_folds,
        patience=args.patience,
        recalibration=args.recalibration,
        n_bins=args.bins,
        grid=typed_grid(args.grid, TrainConfig, ModelConfig),
    )


def run(args: argparse.Namespace) -> int:
    from deref.data.splits import make_folds, read_mcat_splits
    from deref.training import train_cross_validation

    cohort = load_cohort_from_args(args)
    if not cohort.families:
        raise ConfigError(
            "no modality 1: pass --signatures or --families (genomics), or --mri-manifest and --mri-features (MRI)"
        )
    mcfg = _model_config(args, cohort)
    tcfg = _train_config(args)
    folds = (
        read_mcat_splits(args.splits)
        if args.splits
        else make_folds(cohort.patients, k=args.folds, seed=args.seed)
    )
    only = [int(x) for x in args.only_folds.split(",")] if args.only_folds else None
    print(
        f"cohort {cohort.source}: {len(cohort.case_ids)} patients, {cohort.n_events} events; "
        f"model {mcfg.model_type}; {len(folds)} folds; {tcfg.epochs} epochs; selection {_rule(tcfg)}"
    )
    bar = BarProgress()
    try:
        result = train_cross_validation(
            cohort,
            folds,
            mcfg,
            tcfg,
            args.out,
            name=args.name,
            data_info={
                "signatures": args.signatures,
                "families_json": args.families,
                "splits": args.splits,
                "time_col": args.time_col,
                # recorded so that the run reloads its cohort with the same column (deref.runs.fit)
                "censorship_col": args.censorship_col,
            },
            progress=bar,
            only_folds=only,
            fold_runner=_fold_runner(args),
            resume=args.resume,
        )
    finally:
        bar.close()
    print_run_summary(result.info)
    print(f"run written to {args.out}")
    return 0


def _fold_runner(args: argparse.Namespace):
    """The Ray fold runner with ``--ray`` (deref.scale.train), else None (one fold after the other)."""
    from deref.scale import options_from_args

    options = options_from_args(args)
    if options is None:
        return None
    from deref.scale.train import RayFoldRunner

    return RayFoldRunner(options)


def _rule(tcfg) -> str:
    if tcfg.selection == "last":
        recal = (
            f"; {tcfg.recalibration} recalibration fitted on an inner split"
            if tcfg.recalibration != "none"
            else ""
        )
        return f"last epoch (the paper's protocol){recal}"
    split = f"{tcfg.inner_folds}-fold" if tcfg.inner_folds > 1 else f"{tcfg.inner_fraction:g} held out"
    grid = f", grid {tcfg.grid}" if tcfg.grid else ""
    recal = f"; {tcfg.recalibration} recalibration on the inner split" if tcfg.recalibration != "none" else ""
    return f"inner ({split}, by {tcfg.selection_metric}{grid}){recal}"


def _selected(f) -> str:
    sel = f.selection
    if not sel or sel.get("rule") != "inner":
        return ""
    params = f", {sel['params']}" if sel.get("params") else ""
    fixed = f"; fixed last epoch {_c(f.cindex_fixed_last_epoch)}"
    return f" at inner-selected epoch {sel['epoch']}{params}{fixed}"


def print_run_summary(info: RunInfo) -> None:
    """Per-fold and cohort-level C-index of a trained run (the selected epoch and grid point
    when chosen on inner data; the best epoch labelled optimistic)."""
    for f in info.folds:
        best = f.optimistic_best_epoch_cindex
        extra = (
            f"  (best epoch {f.optimistic_best_epoch}: {best:.3f}, optimistic)" if best is not None else ""
        )
        print(f"fold {f.index}: C-index {_c(f.cindex_last_epoch)}{_selected(f)}{extra}")
        if f.recalibration is not None:
            print(f"  {f.recalibration.describe()}")
    head, best = info.metrics.headline, info.metrics.optimistic_best_epoch
    print(f"C-index, {head.protocol}: {head.mean:.3f} ± {head.std:.3f}")
    fixed = [f.cindex_fixed_last_epoch for f in info.folds]
    if any((f.selection or {}).get("rule") == "inner" for f in info.folds) and None not in fixed:
        import numpy as np

        v = np.asarray(fixed, dtype=float)
        sd = float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0
        print(f"C-index, fixed last epoch (for comparison): {float(np.nanmean(v)):.3f} ± {sd:.3f}")
    if best is not None:
        print(f"C-index, best epoch per fold (optimistic): {best.mean:.3f} ± {best.std:.3f}")
    print(f"pooled out-of-fold C-index: {info.metrics.pooled_oof_cindex:.3f}")


def _c(value: float | None) -> str:
    return f"{float('nan') if value is None else value:.3f}"
