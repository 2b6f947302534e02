"""The built-in demo: a synthetic cohort with planted signal and a DeReF run trained on it.

``build_demo(out_dir)`` writes ``out_dir/cohort`` (MCAT-layout table, signatures, one
pyramidal TIFF per slide, CLAM-layout bags; see ``assets/DEMO.md``) and ``out_dir/run``
(5-fold DeReF trained by our own trainer), then compares the model's out-of-fold C-index
with the oracle's (the true risk's). The demo model is the paper's architecture with sizes
fitted to the demo's small inputs (32 landmarks for ~100-patch bags, 256 SNN units for
~25-column gene families) and a short schedule, so it builds in a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deref.model import ModelConfig
from deref.training import TrainConfig

DEMO_SEED = 0
DEMO_PATIENTS = 200
DEMO_MODEL = dict(wsi_dim=64, landmarks=32, snn_hidden=256)
DEMO_TRAIN = dict(epochs=12, batch_size=8, lr=1e-3, track_validation=False)


@dataclass
class DemoBuild:
    cohort_dir: Path
    run_dir: Path
    oracle_cindex: float
    model_cindex: float
    fold_cindex: list[float]


def demo_is_built(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return (out / "run" / "run.json").exists() and (out / "cohort" / "demo.json").exists() and (out / "demo_summary.json").exists()


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
    from deref.data.cohort import load_cohort
    from deref.data.demo import make_demo_cohort
    from deref.data.splits import make_folds
    from deref.metrics import harrell_c
    from deref.training import train_cross_validation

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
    cohort = load_cohort(demo.table, signatures=demo.signatures, bag_dir=demo.bags_dir)
    folds = make_folds(cohort.patients, k=5, seed=seed)
    mcfg = ModelConfig(
        m1_sizes=tuple(f.size for f in cohort.families), m1_names=tuple(f.name for f in cohort.families), **DEMO_MODEL
    )
    train = dict(DEMO_TRAIN, seed=seed)
    if epochs is not None:
        train["epochs"] = epochs
    result = train_cross_validation(
        cohort, folds, mcfg, TrainConfig(**train), out / "run", name="demo-deref",
        data_info={"signatures": str(demo.signatures.resolve()), "demo": True}, progress=progress,
    )
    preds = result.predictions
    model_c = harrell_c(preds["time"].to_numpy(), preds["event"].to_numpy(), preds["risk"].to_numpy()).cindex
    summary = {
        "oracle_cindex": demo.oracle_cindex,
        "model_oof_cindex": model_c,
        "fold_cindex": result.metrics["headline"]["cindex_folds"],
        "n_patients": n_patients,
        "seed": seed,
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return DemoBuild(cohort_dir, out / "run", float(demo.oracle_cindex), float(model_c), list(np.asarray(summary["fold_cindex"], float)))
