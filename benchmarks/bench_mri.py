"""Speed of ``deref mri``: MRI sequences + tumour mask to per-sequence vectors.

    python benchmarks/bench_mri.py            # human-readable lines
    python benchmarks/bench_mri.py --json     # one JSON object on stdout (progress on stderr)

A few synthetic liver-like patients are written to a temporary folder: five int16 NIfTI
sequences (arterial, delay, hepatobiliary, T1, T2; 192 x 192 x 48 voxels of 1.5 x 1.5 x 4 mm,
a bright organ and a tumour sphere of 12-18 mm radius) and a tumour mask. T2 is stored on
another grid (2 x 2 x 5 mm, shifted), as co-registered sequences often are, so every patient
also pays one resampling onto the mask's grid. Random 3D ResNet-50 weights (the same FLOPs
as pretrained), per-sequence mode (one 2,048-d vector per sequence), 64^3 cubes, one torch
thread per core. Figures (printed, not asserted):

- ``mri_patients_per_s``: :func:`deref.prepare.mri.process_cases` end to end (read, resample,
  crop, normalize, network, atomic ``.h5``), after one warm-up patient;
- ``preprocess_s_per_patient``: :func:`~deref.prepare.mri.preprocess_case` alone;
- ``network_s_per_patient``: :func:`~deref.prepare.mri.mri_features` alone (5 cubes).

On the MRI + WSI demo (the one the tests build under ``.cache/test-demos/mri-full`` when it is
there, else a small one built in a temporary folder: 20 patients, 24 x 24 x 20 volumes, 1
epoch; ``--demo PATH`` names another built demo folder, ``--no-demo`` skips these):

- ``voxel_attr_s``: :func:`deref.explain.mri.explain_voxels`, gradient x input of the
  MRI-specific feature for one patient (cubes rebuilt from the files, backbone rebuilt,
  forward and backward through five 32^3 cubes), median of 2 after one warm-up; target <= 3 s;
- ``voxel_ig32_s``: the same with Integrated Gradients, 32 points; target <= 60 s;
- ``epoch_e2e_s``: the same epoch with the 3D ResNet-10 (width 32) trained end to end on the
  demo's ROI cubes (``mri_encoder="resnet3d"``);
- ``epoch_s``: one training epoch of the frozen-vector DeReF (the demo's model and schedule)
  over fold 0's training patients (``epoch_patients``), the second of two epochs (the first
  fills the bag cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQUENCES = ("arterial", "delay", "hepatobiliary", "t1", "t2")
SHAPE = (192, 192, 48)
SPACING = (1.5, 1.5, 4.0)


def write_patient(folder: Path, seed: int) -> dict:
    """One synthetic patient's NIfTI files; returns the MriCase fields."""
    import nibabel as nib
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = -np.asarray(SHAPE) * SPACING / 2
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    world = idx * SPACING + affine[:3, 3]
    organ = (((world - [20, 0, 0]) / [110, 90, 70]) ** 2).sum(-1) <= 1
    center = np.asarray([30, 10, 0]) + rng.uniform(-15, 15, 3)
    radius = rng.uniform(12, 18)
    tumour = np.linalg.norm(world - center, axis=-1) <= radius
    mask_path = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(tumour.astype(np.uint8), affine), mask_path)
    seqs = {}
    for j, name in enumerate(SEQUENCES):
        vol = 200 + 500 * organ + (300 + 150 * j) * tumour + rng.normal(0, 40, SHAPE)
        vol = ndi.gaussian_filter(vol, 0.7).astype(np.int16)
        aff = affine
        if name == "t2":  # another grid: coarser, shifted (co-registered, differently sampled)
            aff = np.diag([2.0, 2.0, 5.0, 1.0])
            aff[:3, 3] = affine[:3, 3] - [1.3, 0.7, 2.1]
            shape = (150, 150, 40)
            m = np.linalg.inv(affine) @ aff
            vol = ndi.affine_transform(vol, m[:3, :3], m[:3, 3], output_shape=shape, order=1).astype(np.int16)
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(vol, aff), path)
        seqs[name] = path
    return {"sequences": seqs, "mask": mask_path}


def _demo_dir(args, tmp: Path) -> tuple[Path, str]:
    """A built MRI demo folder and where it came from (the tests' cache, ``--demo``, or a small
    one built now into ``tmp``)."""
    from deref.demo import build_mri_demo, mri_demo_is_built

    if args.demo is not None:
        if not mri_demo_is_built(args.demo):
            raise SystemExit(
                f"bench_mri: {args.demo}: not a built MRI demo (no run.json / demo.json / recipe)"
            )
        return Path(args.demo), "given"
    cached = Path(__file__).resolve().parents[1] / ".cache" / "test-demos" / "mri-full"
    if mri_demo_is_built(cached):
        return cached, "tests' full demo"
    print("building a small MRI demo (20 patients) for the attribution and epoch figures", file=sys.stderr)
    build_mri_demo(tmp / "demo", n_patients=20, epochs=1, shape=(24, 24, 20), slide_size=(1024, 1024))
    return tmp / "demo", "small demo built now"


def demo_figures(args, tmp: Path) -> dict:
    """``voxel_attr_s``, ``voxel_ig32_s`` and ``epoch_s`` on the MRI demo (see the module notes)."""
    from deref.data.splits import read_mcat_splits
    from deref.demo import MRI_DEMO_TRAIN
    from deref.explain.mri import explain_voxels
    from deref.inference import Predictor
    from deref.model import ModelConfig
    from deref.training import CohortTrainer, TrainConfig

    folder, origin = _demo_dir(args, tmp)
    pred = Predictor.from_run(folder / "run", device="cpu")
    cohort = pred.load_cohort()
    case = cohort.case_ids[0]
    res: dict = {"demo": origin, "demo_patients": len(cohort.case_ids)}
    explain_voxels(pred, cohort, case, "specific_mri", "grad")  # warm-up: MONAI import, allocator
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        att = explain_voxels(pred, cohort, case, "specific_mri", "grad")
        times.append(time.perf_counter() - t0)
    res["voxel_grid"] = int(att.cubes.shape[-1])
    res["voxel_attr_s"] = round(statistics.median(times), 2)
    print(f"voxel attribution (gradient x input): {res['voxel_attr_s']:.2f} s", file=sys.stderr)
    t0 = time.perf_counter()
    att = explain_voxels(pred, cohort, case, "specific_mri", "ig", steps=32)
    res["voxel_ig32_s"] = round(time.perf_counter() - t0, 2)
    res["voxel_ig32_delta"] = float(f"{att.convergence_delta:.3g}")
    print(f"voxel attribution (IG, 32 points): {res['voxel_ig32_s']:.2f} s", file=sys.stderr)
    fold = read_mcat_splits(folder / "run" / "splits")[0]
    mcfg = ModelConfig.from_dict(pred.run.info.model.to_dict())
    tcfg = TrainConfig(**dict(MRI_DEMO_TRAIN, epochs=2, seed=0, device="cpu"))
    result = CohortTrainer(cohort, mcfg, tcfg).train_fold(fold)
    res["epoch_s"] = round(float(result.info.history[-1]["seconds"]), 2)
    res["epoch_patients"] = len(fold.train)
    print(
        f"one epoch, frozen-vector DeReF: {res['epoch_s']:.2f} s ({len(fold.train)} patients)",
        file=sys.stderr,
    )
    res.update(_end_to_end_epoch(folder, cohort, fold, mcfg, tcfg))
    return res


def _end_to_end_epoch(folder: Path, cohort, fold, mcfg, tcfg) -> dict:
    """``epoch_e2e_s``: one epoch of DeReF with the 3D ResNet-10 (width 32, the default) trained end
    to end on the demo's ROI cubes (``cohort/mri_cubes``; ``deref mri --cubes`` when the folder
    predates them), same patients and schedule as ``epoch_s``."""
    from deref.data.cohort import load_cohort
    from deref.demo import MRI_DEMO_GRID
    from deref.prepare.mri import MriConfig, cases_from_table, process_cases
    from deref.training import CohortTrainer

    cubes = folder / "cohort" / "mri_cubes"
    if not cubes.is_dir():
        process_cases(cases_from_table(cohort.mri.path), cubes, None, MriConfig(grid=MRI_DEMO_GRID))
    e2e = load_cohort(cohort.source, bag_dir=cohort.bag_dir, mri_manifest=cohort.mri.path, mri_cubes=cubes)
    cfg = mcfg.replace(mri_encoder="resnet3d", mri_grid=e2e.mri_cubes.grid, m1_sizes=e2e.m1_sizes)
    result = CohortTrainer(e2e, cfg, tcfg).train_fold(fold)
    out = {"epoch_e2e_s": round(float(result.info.history[-1]["seconds"]), 2), "e2e_grid": e2e.mri_cubes.grid}
    print(f"one epoch, end-to-end DeReF (3D ResNet-10): {out['epoch_e2e_s']:.2f} s", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--patients", type=int, default=3, help="timed patients (plus one warm-up)")
    ap.add_argument("--grid", type=int, default=64, help="cube size in voxels")
    ap.add_argument(
        "--demo", type=Path, default=None, help="a built MRI demo folder (default: the tests' cache)"
    )
    ap.add_argument("--no-demo", action="store_true", help="skip the attribution and epoch figures")
    args = ap.parse_args(argv)

    import torch

    from deref.prepare.mri import (
        MriCase,
        MriConfig,
        build_mri_backbone,
        mri_features,
        preprocess_case,
        process_cases,
    )

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    res: dict = {
        "cores": cores,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sequences": len(SEQUENCES),
        "grid": args.grid,
        "patients": args.patients,
        "mode": "per_sequence",
    }
    config = MriConfig(grid=args.grid, per_sequence=True, device="cpu")
    with tempfile.TemporaryDirectory(prefix="bench_mri_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cases = [
            MriCase(f"P{i:03d}", **write_patient(tmp / "in" / f"P{i:03d}", i))
            for i in range(args.patients + 1)
        ]
        res["generate_s"] = round(time.perf_counter() - t0, 2)
        print(f"wrote {len(cases)} synthetic patients in {res['generate_s']} s", file=sys.stderr)
        model = build_mri_backbone(1, random_weights=True)
        rows = process_cases(cases[:1], tmp / "warm", model, config)  # warm-up: imports, allocator
        if rows[0].status != "ok":
            raise SystemExit(f"bench_mri: warm-up patient failed: {rows[0].error}")
        t0 = time.perf_counter()
        rows = process_cases(cases[1:], tmp / "out", model, config)
        wall = time.perf_counter() - t0
        failed = [r.error for r in rows if r.status != "ok"]
        if failed:
            raise SystemExit(f"bench_mri: {failed[0]}")
        res["mri_patients_per_s"] = round(len(rows) / wall, 4)
        res["mri_s_per_patient"] = round(wall / len(rows), 3)
        pre, net = [], []
        for case in cases[1:]:
            t0 = time.perf_counter()
            vol = preprocess_case(case, config)
            pre.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            feats = mri_features(vol, model, config)
            net.append(time.perf_counter() - t0)
        res["resampled_sequences_per_patient"] = len(vol.notes["resampled_sequences"])
        res["feature_shape"] = list(feats.shape)
        res["preprocess_s_per_patient"] = round(statistics.median(pre), 3)
        res["network_s_per_patient"] = round(statistics.median(net), 3)
        if not args.no_demo:
            res.update(demo_figures(args, tmp))
    print(
        f"deref mri: {res['mri_patients_per_s']:.3f} patients/s ({res['mri_s_per_patient']:.2f} s each: "
        f"preprocessing {res['preprocess_s_per_patient']:.2f} s, network {res['network_s_per_patient']:.2f} s "
        f"for {len(SEQUENCES)} cubes of {args.grid}^3 on {cores} threads)",
        file=sys.stderr,
    )
    res["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(res))
    else:
        for key, value in res.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
