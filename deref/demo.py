"""The built-in demo: a synthetic cohort with planted signal and a DeReF run trained on it.

``build_demo(out_dir)`` writes ``out_dir/cohort`` (MCAT-layout table, signatures, one
pyramidal TIFF per slide, CLAM-layout bags; see ``assets/DEMO.md``) and ``out_dir/run``
(5-fold DeReF trained by our own trainer), then compares the model's out-of-fold C-index
with the oracle's (the true risk's).

The demo model is the paper's architecture with every width scaled to the demo's small
inputs and cohort (300 patients, 64-d patch embeddings, 20-30 columns per gene family):
encoder width ``c1`` = 64 and decoupled width ``c2`` = 64 (paper: 256 / 128), 64 SNN units
(paper: 1024), 32 Nystrom landmarks for ~80-patch bags, experts of 32 units, and doubled
dropout (SNN / patch MLP 0.5, specific heads and experts 0.3). With 240 training patients a
model of the paper's widths memorizes the training fold within a few epochs (training NLL
0.7 while validation stalls) and leans on the genomic branch alone; the scaled model learns
both modalities. Schedule: 12 epochs, batches of 16, lr 1.5e-3 with the paper's decay.
Measured on 2 cores: see ``assets/DEMO.md``.

This module imports no torch at import time (the dashboard calls :func:`demo_is_built`
before it loads any model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the training, not with this module
    from deref.data.synthetic import DemoCohort
    from deref.training import RunResult

DEMO_SEED = 0
DEMO_PATIENTS = 300
DEMO_MODEL = dict(
    wsi_dim=64,
    c1=64,
    c2=64,
    landmarks=32,
    snn_hidden=64,
    expert_hidden=32,
    snn_dropout=0.5,
    wsi_dropout=0.5,
    specific_dropout=0.3,
    expert_dropout=0.3,
)
DEMO_TRAIN = dict(epochs=12, batch_size=16, lr=1.5e-3, track_validation=False)


def build_recipe() -> dict:
    """What a demo folder is built from: the generator's version and the model and training
    settings. ``demo_summary.json`` records it; a folder built from another recipe is rebuilt."""
    from deref.data.synthetic import DEMO_VERSION

    return {"generator_version": DEMO_VERSION, "model": dict(DEMO_MODEL), "train": dict(DEMO_TRAIN)}


@dataclass
class DemoBuild:
    cohort_dir: Path
    run_dir: Path
    oracle_cindex: float
    model_cindex: float
    fold_cindex: list[float]


def _built_from(out_dir: str | Path, recipe: dict) -> bool:
    """A complete demo (run, cohort, summary) built from ``recipe`` is in ``out_dir``."""
    out = Path(out_dir)
    if not ((out / "run" / "run.json").exists() and (out / "cohort" / "demo.json").exists()):
        return False
    try:
        summary = json.loads((out / "demo_summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("recipe") == recipe


def demo_is_built(out_dir: str | Path) -> bool:
    """A complete demo built from the current :func:`build_recipe` is in ``out_dir``."""
    return _built_from(out_dir, build_recipe())


def build_demo(
    out_dir: str | Path,
    *,
    n_patients: int = DEMO_PATIENTS,
    seed: int = DEMO_SEED,
    epochs: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    slide_size: tuple[int, int] | None = None,
) -> DemoBuild:
    """Generate the demo cohort and train the demo run (see the module docstring)."""
    from deref.data.synthetic import make_demo_cohort
    from deref.metrics import harrell_c

    t0 = time.perf_counter()
    out = Path(out_dir)
    cohort_dir = out / "cohort"
    demo = make_demo_cohort(
        cohort_dir,
        n_patients=n_patients,
        seed=seed,
        wsi_dim=DEMO_MODEL["wsi_dim"],
        overwrite=overwrite,
        **({"slide_size": slide_size} if slide_size else {}),
        progress=(lambda d, t: progress("demo cohort: slides and bags", d, t)) if progress else None,
    )
    result = _train_demo_run(demo, out / "run", seed=seed, epochs=epochs, progress=progress)
    preds = result.predictions
    model_c = harrell_c(preds["time"].to_numpy(), preds["event"].to_numpy(), preds["risk"].to_numpy()).cindex
    headline = result.info.metrics.headline
    fold_cindex = [float(c) for c in headline.folds] if headline is not None else []
    summary = {
        "oracle_cindex": demo.oracle_cindex,
        "model_oof_cindex": model_c,
        "fold_cindex": fold_cindex,
        "n_patients": n_patients,
        "seed": seed,
        "recipe": build_recipe(),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return DemoBuild(cohort_dir, out / "run", float(demo.oracle_cindex), float(model_c), fold_cindex)


def _train_demo_run(
    demo: DemoCohort,
    run_dir: Path,
    *,
    seed: int,
    epochs: int | None,
    progress: Callable[[str, int, int], None] | None,
) -> RunResult:
    """The demo's 5-fold DeReF run on the written cohort, by ``deref train``'s code."""
    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    cohort = load_cohort(demo.table, signatures=demo.signatures, bag_dir=demo.bags_dir)
    folds = make_folds(cohort.patients, k=5, seed=seed)
    mcfg = ModelConfig(
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
        **DEMO_MODEL,
    )
    train = dict(DEMO_TRAIN, seed=seed)
    if epochs is not None:
        train["epochs"] = epochs
    return train_cross_validation(
        cohort,
        folds,
        mcfg,
        TrainConfig(**train),
        run_dir,
        name="demo-deref",
        data_info={"signatures": str(demo.signatures.resolve()), "demo": True},
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# the demo comparison (the Compare page)
# --------------------------------------------------------------------------------------------
#: The peers' own widths at the demo's scale: the demo's DeReF is 4x narrower than the paper's
#: (c1 = 64 against 256), and so is every peer (the peers that follow c1 -- MCAT, MOTCat, CMTA,
#: CCL -- need nothing here). Everything else stays at each peer's paper default.
DEMO_PEER_SIZES = dict(
    clam_hidden=128,  # 512 / 4
    clam_attn_dim=64,  # 256 / 4
    mome_dim=128,  # 512 / 4
    mome_omic_hidden=(128, 128),
    mome_landmarks=64,  # dim // 2, as MoME's own
    pibd_dim=64,  # 256 / 4
    pibd_club_hidden=128,  # 512 / 4
)

#: What the dashboard's demo comparison trains with ``deref ablate`` on the demo's cohort and
#: folds: DeReF (the demo run itself, kept), three ablations that remove fusion capacity, two
#: baselines (the genomic SNN and the slide-only ABMIL) and three of the paper's peers (CLAM-SB,
#: MCAT and MOTCat, at :data:`DEMO_PEER_SIZES`).
DEMO_COMPARISON = {
    "deref": {},
    "no_explore": {"use_explore": False},
    "no_decoupling": {"decouple": False},
    "no_moe": {"fusion": "concat"},
    "snn": {"model_type": "snn"},
    "abmil": {"model_type": "abmil"},
    "clam_sb": {"model_type": "clam_sb", **DEMO_PEER_SIZES},
    "mcat": {"model_type": "mcat", **DEMO_PEER_SIZES},
    "motcat": {"model_type": "motcat", **DEMO_PEER_SIZES},
}


def demo_comparison_dir(demo_dir: str | Path) -> Path:
    return Path(demo_dir) / "comparison"


def build_demo_comparison(demo_dir: str | Path, progress: Callable[[str, int, int], None] | None = None):
    """Train :data:`DEMO_COMPARISON` on the built demo (``deref ablate``'s code: resumable, one run
    directory per variant under ``<demo>/comparison``, compared at the end). The demo run is
    copied in as the ``deref`` variant (same configuration, seed and folds: kept, not retrained).
    Returns the :class:`deref.ablate.GridResult`."""
    import shutil

    from deref.ablate import run_grid
    from deref.data.cohort import load_cohort
    from deref.data.splits import read_mcat_splits
    from deref.model import ModelConfig
    from deref.runs import RunDir
    from deref.training import TrainConfig

    demo_dir = Path(demo_dir)
    run = RunDir(demo_dir / "run")
    info = run.info
    cohort = load_cohort(
        info.data.table, signatures=info.data.extra.get("signatures"), bag_dir=info.data.bag_dir
    )
    out = demo_comparison_dir(demo_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "deref" / "run.json").exists():
        shutil.copytree(run.path, out / "deref", dirs_exist_ok=True)
    base = ModelConfig.from_dict(info.model.to_dict())
    train = TrainConfig.from_dict(dict(info.train))
    return run_grid(
        cohort,
        read_mcat_splits(run.path / "splits"),
        base,
        train,
        out,
        DEMO_COMPARISON,
        progress=progress,
        data_info={"signatures": info.data.extra.get("signatures"), "demo": True},
    )


# --------------------------------------------------------------------------------------------
# the MRI + WSI demo
# --------------------------------------------------------------------------------------------
MRI_DEMO_PATIENTS = 160
#: The ROI cube side of the demo's MRI vectors (``deref mri --grid``): the planted region stays
#: visible to the backbone (a ridge fit of the region's share on the hepatobiliary vectors,
#: 5-fold, r = 0.85 at 32), at an eighth of the cost of 64.
MRI_DEMO_GRID = 32
MRI_DEMO_MODEL = dict(DEMO_MODEL, m1_kind="mri")
MRI_DEMO_TRAIN = dict(DEMO_TRAIN)


def build_mri_recipe() -> dict:
    """What an MRI demo folder is built from (recorded in its ``demo_summary.json``)."""
    from deref.data.synthetic_mri import MRI_DEMO_VERSION

    return {
        "pair": "mri-wsi",
        "generator_version": MRI_DEMO_VERSION,
        "mri_grid": MRI_DEMO_GRID,
        "mri_cubes": True,
        "model": dict(MRI_DEMO_MODEL),
        "train": dict(MRI_DEMO_TRAIN),
    }


def mri_demo_is_built(out_dir: str | Path) -> bool:
    """A complete MRI + WSI demo of the current :func:`build_mri_recipe` is in ``out_dir``."""
    return _built_from(out_dir, build_mri_recipe())


def mri_demo_features(
    cohort_dir: Path, progress: Callable[[str, int, int], None] | None = None, *, overwrite: bool = False
) -> Path:
    """``deref mri --per-sequence --random-weights --grid MRI_DEMO_GRID`` over the demo's manifest,
    into ``cohort_dir/mri_features``, and the same ROI cubes (``deref mri --cubes``) into
    ``cohort_dir/mri_cubes`` for end-to-end training (resumable: finished patients are kept). Random weights are
    marked unusable for science in every file: the demo shows the workflow, not MedicalNet.
    ``overwrite`` recomputes every patient (a regenerated cohort)."""
    from deref.errors import DataError
    from deref.prepare.mri import MriConfig, build_mri_backbone, cases_from_table, process_cases

    cases = cases_from_table(cohort_dir / "mri_manifest.csv")
    out = cohort_dir / "mri_features"
    done = [0]

    def on_result(row) -> None:
        done[0] += 1
        if progress:
            progress("demo cohort: MRI vectors", done[0], len(cases))

    rows = process_cases(
        cases,
        out,
        build_mri_backbone(1, random_weights=True),
        MriConfig(grid=MRI_DEMO_GRID, per_sequence=True, overwrite=overwrite),
        on_result=on_result,
        cubes_dir=cohort_dir / "mri_cubes",
    )
    failed = [r for r in rows if r.status == "failed"]
    if failed:
        raise DataError(f"MRI demo: {len(failed)} patient(s) failed: {failed[0].error}")
    return out


def build_mri_demo(
    out_dir: str | Path,
    *,
    n_patients: int = MRI_DEMO_PATIENTS,
    seed: int = DEMO_SEED,
    epochs: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    slide_size: tuple[int, int] | None = None,
    shape: tuple[int, int, int] | None = None,
) -> DemoBuild:
    """The MRI + WSI demo (``deref demo --pair mri-wsi``): the synthetic liver-cancer-like cohort
    of :mod:`deref.data.synthetic_mri` (see ``assets/DEMO_MRI.md``), its per-sequence MRI vectors,
    and a 5-fold DeReF run on MRI + WSI trained by ``deref train``'s code; ``demo_summary.json``
    records the out-of-fold C-index beside the oracle's and each single modality's."""
    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.data.synthetic_mri import make_mri_demo_cohort
    from deref.metrics import harrell_c
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    t0 = time.perf_counter()
    out = Path(out_dir)
    extra = {k: v for k, v in (("slide_size", slide_size), ("shape", shape)) if v is not None}
    demo = make_mri_demo_cohort(
        out / "cohort",
        n_patients,
        seed,
        wsi_dim=DEMO_MODEL["wsi_dim"],
        overwrite=overwrite,
        progress=(lambda d, t: progress("demo cohort: volumes, slides and bags", d, t)) if progress else None,
        **extra,
    )
    features = mri_demo_features(out / "cohort", progress, overwrite=overwrite)
    cohort = load_cohort(demo.table, bag_dir=demo.bags_dir, mri_manifest=demo.manifest, mri_features=features)
    mcfg = ModelConfig(
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
        **MRI_DEMO_MODEL,
    )
    train = dict(MRI_DEMO_TRAIN, seed=seed, **({"epochs": epochs} if epochs is not None else {}))
    result = train_cross_validation(
        cohort,
        make_folds(cohort.patients, k=5, seed=seed),
        mcfg,
        TrainConfig(**train),
        out / "run",
        name="demo-mri-deref",
        data_info={"demo": True, "pair": "mri-wsi"},
        progress=progress,
    )
    p = result.predictions
    model_c = harrell_c(p["time"].to_numpy(), p["event"].to_numpy(), p["risk"].to_numpy()).cindex
    folds = [float(c) for c in result.info.metrics.headline.folds]
    summary = {
        "oracle_cindex": demo.oracle_cindex,
        "single_modality_cindex": {k: v for k, v in demo.cindex.items() if k != "oracle"},
        "model_oof_cindex": model_c,
        "fold_cindex": folds,
        "n_patients": n_patients,
        "seed": seed,
        "recipe": build_mri_recipe(),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return DemoBuild(out / "cohort", out / "run", float(demo.oracle_cindex), float(model_c), folds)
