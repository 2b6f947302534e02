"""A small MRI + WSI cohort on disk for tests: a table without genomic columns, an MRI manifest,
per-sequence vectors (the ``hepatobiliary`` vector carries the log-risk) and small WSI bags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from deref.data.bags import write_bag_h5
from deref.data.cohort import load_cohort

SEQUENCES = ("arterial", "delay", "hepatobiliary", "t1", "t2")
DIM = 16  # MRI vector width (2048 with the real 3D ResNet-50; small here)
WSI_DIM = 8


def write_mri_cohort(root, n=60, seed=0, *, drop_feature_of=None, one_row_for=None):
    """A cohort table without genomic columns, an MRI manifest, per-sequence vectors (the
    ``hepatobiliary`` vector carries the log-risk), and small WSI bags."""
    rng = np.random.default_rng(seed)
    cases = [f"LC-{i:03d}" for i in range(n)]
    risk = rng.normal(size=n)
    time = 20 * np.exp(-1.5 * risk) * rng.exponential(size=n) ** 0.3  # Weibull: oracle C about 0.85
    table = pd.DataFrame(
        {
            "case_id": cases,
            "slide_id": [f"{c}-HE.svs" for c in cases],
            "survival_months": np.round(time, 2) + 0.1,
            "censorship": (rng.random(n) < 0.05).astype(int),
            "age": rng.integers(40, 80, n),
        }
    )
    table.to_csv(root / "cohort.csv", index=False)
    manifest = pd.DataFrame(
        {"case_id": cases, **{s: [f"mri/{c}/{s}.nii.gz" for c in cases] for s in SEQUENCES}}
    )
    manifest["mask"] = [f"mri/{c}/mask.nii.gz" for c in cases]
    manifest.to_csv(root / "mri_manifest.csv", index=False)
    feats = root / "mri_features"
    direction = rng.normal(size=DIM)
    for i, c in enumerate(cases):
        if c == drop_feature_of:
            continue
        vec = rng.normal(size=(len(SEQUENCES), DIM)).astype(np.float32)
        vec[SEQUENCES.index("hepatobiliary")] += 2.0 * risk[i] * direction
        names = list(SEQUENCES)
        if c == one_row_for:
            vec, names = vec[:1], None
        attrs = {"modality": "mri", "patient": c, "feature_rows": "sequence"}
        if names is not None:
            attrs["sequences"] = json.dumps(names)
        write_bag_h5(feats / f"{c}.h5", vec, None, attrs)
        bag = rng.normal(size=(12, WSI_DIM)).astype(np.float32)
        write_bag_h5(root / "bags" / f"{c}-HE.h5", bag, np.zeros((12, 2)), {"patch_size": 256})
    return table, risk


def load_mri_cohort(root, **kw):
    return load_cohort(
        root / "cohort.csv",
        bag_dir=root / "bags",
        mri_manifest=root / "mri_manifest.csv",
        mri_features=root / "mri_features",
        **kw,
    )


def write_cube_cohort(root, n=60, seed=0, grid=16, *, nan_of=None, vectors_of=None, drop_sequence_of=None):
    """A cohort table, an MRI manifest and ROI cubes (``deref mri --cubes`` layout) whose
    ``hepatobiliary`` cube holds a dark blob inside the tumour growing with the log-risk (the other
    sequences: the tumour only), plus small WSI bags without signal. Returns ``(table, risk)``."""
    from deref.prepare.mri import MriVolume, write_cubes_h5

    table, risk = write_mri_cohort(root, n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    ax = np.arange(grid) - (grid - 1) / 2
    r = np.sqrt(sum(a**2 for a in np.meshgrid(ax, ax, ax, indexing="ij")))
    tumour = r < grid * 0.35
    for i, c in enumerate(table["case_id"]):
        data = rng.normal(scale=0.3, size=(len(SEQUENCES), grid, grid, grid)).astype(np.float32)
        data[:, tumour] += 1.0
        blob = r < grid * (0.12 + 0.07 * np.tanh(risk[i]))
        data[SEQUENCES.index("hepatobiliary"), blob] -= 1.5
        if c == nan_of:
            data[1, 2, 3, 4] = np.nan
        seqs = [s for s in SEQUENCES if not (c == drop_sequence_of and s == "t2")]
        vol = MriVolume(
            data=data[[SEQUENCES.index(s) for s in seqs]],
            inside=tumour,
            sequences=seqs,
            spacing_mm=1.5,
            center_ras_mm=np.zeros(3),
            mask_voxels=int(tumour.sum()),
        )
        attrs = {"modality": "mri", "patient": c, "sequences": json.dumps(seqs), "spacing_mm": 1.5}
        if c == vectors_of:
            write_bag_h5(
                root / "mri_cubes" / f"{c}.h5", data[:, 0, 0, :2], None, attrs | {"feature_rows": "sequence"}
            )
        else:
            write_cubes_h5(root / "mri_cubes" / f"{c}.h5", vol, attrs)
    return table, risk


def load_cube_cohort(root, **kw):
    return load_cohort(
        root / "cohort.csv",
        bag_dir=root / "bags",
        mri_manifest=root / "mri_manifest.csv",
        mri_cubes=root / "mri_cubes",
        **kw,
    )
