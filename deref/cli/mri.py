"""``deref mri``: one feature vector per patient from MRI sequences (NIfTI or DICOM) + tumour mask."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  # one patient, one sequence, a tumour mask:
  deref mri t1.nii.gz --mask tumour.nii.gz --patient P001 --weights resnet50_3d.pth --out mri/
  # one patient, several sequences as channels:
  deref mri art.nii.gz pv.nii.gz t2.nii.gz --mask tumour.nii.gz --patient P001 --weights w.pth --out mri/
  # DICOM series folders wherever a NIfTI file is accepted (one series per folder):
  deref mri dicom/P001/t2/ --mask tumour.nii.gz --patient P001 --weights w.pth --out mri/
  # the MRI manifest of a cohort: case_id (or patient), mask, one column per sequence,
  # paths (NIfTI files or DICOM folders) relative to the table:
  deref mri --table mri_manifest.csv --sequences art,pv,del,t2,dwi --weights w.pth --out mri/
  # a folder per patient: ROOT/<patient>/<sequence>.nii.gz (or <sequence>/ of DICOM files)
  # and ROOT/<patient>/mask.nii.gz:
  deref mri --root liver/ --sequences art,pv,del,t2,dwi --weights w.pth --out mri/
  # one Ray task per patient (the backbone built once per worker process):
  deref mri --table mri_manifest.csv --weights w.pth --out /shared/mri --ray auto
  # the ROI cubes for end-to-end training (no network, no weights):
  deref mri --table mri_manifest.csv --cubes --grid 32 --out mri_cubes/

Each volume is reoriented to RAS, cropped to a cube around the mask (+ --margin-mm), sampled
on a --grid^3 grid (default 64: under a second per patient on a CPU) and normalized; the
sequences are stacked as channels through a MONAI 3D ResNet-50 with global average pooling.
Output: OUT/<patient>.h5 with features (1, 2048), or (S, 2048) with --per-sequence (one row
per sequence), read by the core as modality 1 (`deref train --mri-features OUT`); OUT/mri_manifest.csv.
With --cubes, no network runs: OUT/<patient>.h5 holds the preprocessed cubes (S, G, G, G) and
the tumour mask on them, cached once for a 3D ResNet trained end to end with DeReF (the paper's
protocol: `deref train --mri-cubes OUT`).
The sequences must be CO-REGISTERED BY THE USER (one world space; nothing is registered
here). Orientation and spacing come from the NIfTI/DICOM headers. A sequence sampled on
another grid than the mask (shape or affine) is resampled onto the mask's grid in world
coordinates (trilinear; the mask is never resampled) and listed in the bag attribute
resampled_sequences; without a mask the first sequence's grid is the reference. A sequence
whose field of view does not cover the mask's box is an error for that patient. Each bad
patient (missing file or table cell, 2-D image, empty mask, mask outside the volume, NaN
voxels in the crop, a DICOM folder of several series) gets one failed manifest row naming
patient, sequence and file; the others go on. A rerun skips finished patients (bags are
written atomically). Weights are never downloaded; --random-weights marks the output
unusable_for_science=True.

exit status: 0 every patient done (or skipped); 1 nothing could run (bad arguments, no
cases, weights that do not fit); 3 finished, but some patients failed (see the manifest).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mri",
        help="MRI sequences (+ tumour mask) -> one vector per patient",
        description="Turn the co-registered MRI sequences (NIfTI or DICOM) of each patient into a feature vector with a 3D "
        "ResNet-50, written as a bag the model reads as modality 1.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "volumes",
        nargs="*",
        metavar="VOLUME",
        help="sequences of one patient (NIfTI files or DICOM series folders), in channel order",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--table", metavar="CSV", help="MRI manifest: case_id/patient, mask, one column per sequence"
    )
    src.add_argument(
        "--root",
        metavar="DIR",
        help="folder of patient folders holding <sequence>.nii[.gz] or <sequence>/ (DICOM)",
    )
    p.add_argument(
        "--mask",
        metavar="NIFTI",
        help="tumour mask (NIfTI or DICOM folder) of the single patient given as VOLUME",
    )
    p.add_argument(
        "--patient", metavar="ID", help="patient id of the single patient (default: first volume's name)"
    )
    p.add_argument("--sequences", metavar="A,B,...", help="sequence names / columns, in channel order")
    p.add_argument(
        "--mask-name",
        default="mask",
        metavar="NAME",
        help="mask file name in --root folders (default: %(default)s)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the patient bags")
    _add_network_options(p)
    p.add_argument("--overwrite", action="store_true", help="redo patients whose bag exists")
    from deref.scale import add_ray_options

    add_ray_options(p, what="patients")
    p.set_defaults(func=run)


def _add_network_options(p: argparse.ArgumentParser) -> None:
    """Weights, preprocessing and compute options."""
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="FILE", help="local MONAI-layout 3D ResNet-50 state dict")
    w.add_argument(
        "--random-weights",
        action="store_true",
        help="no pretrained weights: smoke tests only, output marked unusable",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=64,
        metavar="G",
        help="resampled cube size in voxels (default: %(default)s)",
    )
    p.add_argument(
        "--margin-mm",
        type=float,
        default=10.0,
        metavar="MM",
        help="margin around the mask's box (default: %(default)g)",
    )
    p.add_argument(
        "--norm",
        default="zscore",
        choices=("zscore", "minmax", "none"),
        help="intensity normalization (default: %(default)s)",
    )
    p.add_argument(
        "--per-sequence", action="store_true", help="one vector per sequence instead of sequences as channels"
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="auto (CUDA when present), cpu, cuda (default: %(default)s)",
    )
    p.add_argument(
        "--cubes",
        action="store_true",
        help="write the preprocessed ROI cubes (OUT/<patient>.h5: cubes (S, G, G, G), inside) for a 3D ResNet "
        "trained end to end (`deref train --mri-cubes OUT`) instead of vectors; no network, no weights",
    )
    p.add_argument(
        "--save-crops",
        action="store_true",
        help="also write the preprocessed cubes to OUT/crops/<patient>.nii.gz",
    )


def _cases(args: argparse.Namespace) -> list:
    """The ``MriCase`` list the arguments name: a table, patient folders, or one patient's volumes."""
    from deref.errors import DataError
    from deref.prepare.mri import MriCase, cases_from_folders, cases_from_table, nifti_stem

    seqs = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    if args.table or args.root:
        if args.volumes or args.mask or args.patient:
            raise DataError(
                "VOLUME, --mask and --patient are for a single patient; do not combine them with --table/--root"
            )
        if args.table:
            return cases_from_table(args.table, seqs)
        return cases_from_folders(args.root, seqs, args.mask_name)
    if not args.volumes:
        raise DataError(
            "give the volumes of one patient, or --table CSV, or --root DIR (see deref mri --help)"
        )
    names = seqs or [nifti_stem(v) for v in args.volumes]
    if len(names) != len(args.volumes) or len(set(names)) != len(names):
        raise DataError(
            f"--sequences gives {len(names)} distinct names for {len(args.volumes)} volumes; expected one each"
        )
    patient = args.patient or nifti_stem(args.volumes[0])
    mask = Path(args.mask) if args.mask else None
    return [MriCase(patient, dict(zip(names, map(Path, args.volumes))), mask)]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from deref.errors import DataError
    from deref.prepare import exit_status, summarize, write_manifest
    from deref.prepare.mri import MANIFEST_NAME, MriConfig, build_mri_backbone, process_cases
    from deref.scale import options_from_args

    cases = _cases(args)
    n_seq = {len(c.sequences) for c in cases if not c.problems} or {
        max(1, *(len(c.sequences) for c in cases))
    }
    config = MriConfig(
        grid=args.grid,
        margin_mm=args.margin_mm,
        norm=args.norm,
        per_sequence=args.per_sequence,
        device=args.device,
        overwrite=args.overwrite,
    )
    if len(n_seq) > 1 and not (args.per_sequence or args.cubes):
        raise DataError(
            f"patients have different numbers of sequences {sorted(n_seq)}; channels need the same set"
        )
    if args.cubes and (args.weights or args.random_weights):
        raise DataError(
            "--cubes writes the preprocessed cubes and runs no network: give no --weights/--random-weights"
        )
    if args.random_weights:
        print(
            "deref mri: WARNING: --random-weights: vectors from an untrained network are "
            "UNUSABLE FOR SCIENCE; every bag is marked unusable_for_science=True",
            file=sys.stderr,
        )
    in_ch = 1 if args.per_sequence else n_seq.pop()
    model = (
        None if args.cubes else build_mri_backbone(in_ch, args.weights, random_weights=args.random_weights)
    )
    out = Path(args.out)
    t0 = time.perf_counter()
    with logging_redirect_tqdm(), tqdm(total=len(cases), unit="patient", desc="mri", disable=None) as bar:

        def on_result(row) -> None:
            bar.update(1)
            if row.status == "failed":
                tqdm.write(f"deref mri: {row.error}", file=sys.stderr)

        options = options_from_args(args)
        if options is not None:
            from deref.scale.prepare import process_cases_ray

            backbone = None if args.cubes else (in_ch, args.weights, bool(args.random_weights))
            rows = process_cases_ray(
                cases, out, backbone, config, options, save_crops=args.save_crops, on_result=on_result
            )
        else:
            rows = process_cases(cases, out, model, config, save_crops=args.save_crops, on_result=on_result)
    counted = "cubes" if args.cubes else "vectors"
    manifest = write_manifest(out / MANIFEST_NAME, rows, id_column="patient", count_column=counted)
    print(
        f"deref mri: {summarize(rows, noun='patient', counted=counted)} (wall {time.perf_counter() - t0:.1f} s); manifest {manifest}"
    )
    return exit_status(rows)
