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


def demo_is_built(out_dir: str | Path) -> bool:
    """A complete demo built from the current :func:`build_recipe` is in ``out_dir``."""
    out = Path(out_dir)
    if not ((out / "run" / "run.json").exists() and (out / "cohort" / "demo.json").exists()):
        return False
    try:
        summary = json.loads((out / "demo_summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("recipe") == build_recipe()


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
