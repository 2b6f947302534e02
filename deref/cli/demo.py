"""``deref demo``: build the demo cohort (planted signal) and train a 5-fold DeReF run on it."""

from __future__ import annotations

import argparse
import time

from deref.cli.common import BarProgress
from deref.demo import DEMO_PATIENTS, MRI_DEMO_PATIENTS

EPILOG = """\
examples:
  deref demo --out assets/demo            # what the dashboard opens by default
  deref demo --out /tmp/demo --patients 60 --epochs 3   # a quick smoke test
  deref demo --pair mri-wsi --out assets/demo-mri       # the MRI + WSI demo (160 patients)

Writes OUT/cohort (cohort.csv, signatures.csv, slides/*.svs pyramidal TIFFs, bags/*.h5,
truth.csv, demo.json; the planted signal is documented in assets/DEMO.md) and OUT/run
(a run directory, like `deref train` writes). Prints the model's out-of-fold C-index
beside the oracle's (the C-index of the true simulated risk).

--pair mri-wsi writes the MRI + WSI demo instead (assets/DEMO_MRI.md): OUT/cohort with
cohort.csv, mri_manifest.csv, mri/<case>/<sequence>.nii.gz (five sequences, the tumour mask),
slides, bags and the per-sequence MRI vectors in mri_features/ (a random-weight 3D ResNet-50:
marked unusable for science), and OUT/run, a DeReF run on MRI + WSI. It also prints what each
single modality can reach.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="build the demo cohort and its trained run",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--pair",
        choices=("genomics-wsi", "mri-wsi"),
        default="genomics-wsi",
        help="modality pair of the demo (default: %(default)s)",
    )
    p.add_argument(
        "--patients",
        type=int,
        help=f"cohort size (default {DEMO_PATIENTS}; {MRI_DEMO_PATIENTS} for mri-wsi)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the demo schedule's epochs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo in --out")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from deref.demo import build_demo, build_mri_demo

    t0 = time.perf_counter()
    bar = BarProgress()
    mri = args.pair == "mri-wsi"
    default_n = MRI_DEMO_PATIENTS if mri else DEMO_PATIENTS
    try:
        built = (build_mri_demo if mri else build_demo)(
            args.out,
            n_patients=args.patients or default_n,
            seed=args.seed,
            epochs=args.epochs,
            overwrite=args.overwrite,
            progress=bar,
        )
    finally:
        bar.close()
    print(f"demo cohort: {built.cohort_dir}")
    print(f"demo run:    {built.run_dir}")
    print("fold C-index (last epoch): " + ", ".join(f"{c:.3f}" for c in built.fold_cindex))
    print(f"out-of-fold C-index: model {built.model_cindex:.3f}  |  oracle {built.oracle_cindex:.3f}")
    if mri:
        single = json.loads((Path(args.out) / "demo_summary.json").read_text())["single_modality_cindex"]
        print("reachable from one modality alone: " + ", ".join(f"{k} {v:.3f}" for k, v in single.items()))
    print(f"built in {time.perf_counter() - t0:.0f} s")
    return 0
