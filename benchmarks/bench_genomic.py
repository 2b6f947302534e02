"""Training speed of the genomic-only models on TCGA-BLCA (printed, not asserted).

    OMP_NUM_THREADS=1 python benchmarks/bench_genomic.py --json [--threads 1] [--epochs 3]
        [--models snn,snn_transformer] [--batch-sizes 1,32] [--fold 0] [--no-profile]

One fold's training patients (MCAT split ``--fold``, about 300 patients) of
``datasets_csv_sig/tcga_blca_all_clean.csv.zip`` with ``signatures.csv`` (../shared/data/tcga),
through the trainer's own code path (``CohortTrainer._fit``: the fold's preprocessing, the
weighted sampler, Adam and its schedule), training only (no validation pass: the
``--no-track-validation`` setting). Per model and batch size (1: the paper's protocol, one
patient per optimizer step; >1: our batched setting), ``epochs`` epochs are timed and the
fastest is reported. Then one more epoch runs under cProfile, and its time is split into the
trainer's phases by the cumulative time of the functions that do them:

    sampler     epoch_batches (the weighted draw of the epoch's patients)
    assemble    deref.inference.assemble (modality-1 rows -> tensors) and the label lookups
    forward     the model's forward
    loss        nll_survival_loss (+ decoupling / auxiliary terms)
    backward    Tensor.backward
    optimizer   Optimizer.step and zero_grad
    sync        Tensor.item (per-step loss read-back)
    other       the rest (Python overhead of the loop, the profiler's own cost included)

The last stdout line is one JSON object: ``{"snn": {"1": {"epoch_s", "step_ms", "steps",
"split_ms_per_step": {...}}, "32": {...}}, "snn_transformer": {...}, "n_train", "threads",
"torch"}``. ``--target`` (default 3 s) is the issue's bound for snn_transformer, one
patient per step; ``met`` says whether it holds.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tcga"

#: phase -> (module path suffix, function name) whose cumulative time is the phase's
PHASES = {
    "sampler": [("deref/training.py", "epoch_batches")],
    "assemble": [("deref/inference.py", "assemble"), ("deref/training.py", "_labels")],
    "forward": [("deref/model/baselines.py", "forward"), ("deref/model/deref.py", "forward")],
    "loss": [("deref/losses.py", "nll_survival_loss"), ("deref/losses.py", "decoupling_loss")],
    "backward": [("torch/_tensor.py", "backward")],
    "optimizer": [("torch/optim/optimizer.py", "wrapper"), ("torch/optim/optimizer.py", "zero_grad")],
    "sync": [("~", "<method 'item' of 'torch._C.TensorBase' objects>")],
}


def _setup(data: Path, fold_index: int):
    from deref.data.cohort import load_cohort
    from deref.data.splits import read_mcat_splits

    cohort = load_cohort(
        data / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip", signatures=data / "signatures.csv"
    )
    folds = read_mcat_splits(data / "splits" / "5foldcv" / "tcga_blca")
    return cohort, folds[fold_index]


def _trainer(cohort, fold, model_type: str, batch_size: int, epochs: int):
    from deref.model import ModelConfig, build_model
    from deref.training import CohortTrainer, TrainConfig, seed_everything

    mcfg = ModelConfig(
        model_type=model_type,
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
    )
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, track_validation=False, device="cpu")
    trainer = CohortTrainer(cohort, mcfg, tcfg)
    seed_everything(0)
    data = trainer._fit_fold_data(fold)
    model = build_model(data.config)
    return trainer, data, model, tcfg


def _split(prof: cProfile.Profile, steps: int, total_s: float) -> dict[str, float]:
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out: dict[str, float] = {}
    for phase, keys in PHASES.items():
        t = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
            for suffix, fn in keys:
                if name == fn and (file.endswith(suffix) or (suffix == "~" and file == "~")):
                    t += ct
        out[phase] = t
    # the model forward is counted once even when forward calls a nested forward
    out["other"] = max(total_s - sum(out.values()), 0.0)
    return {k: round(1e3 * v / steps, 3) for k, v in out.items()}


def bench_one(cohort, fold, model_type: str, batch_size: int, epochs: int, profile: bool) -> dict:
    trainer, data, model, tcfg = _trainer(cohort, fold, model_type, batch_size, epochs + 1)
    train_ids = list(fold.train)
    history = trainer._fit(model, data, train_ids, 0, tcfg.__class__(**{**tcfg.to_dict(), "epochs": epochs}), "bench", lambda e, r: False)
    best = min(h["seconds"] for h in history)
    steps = -(-len(train_ids) // batch_size)
    rec = {"epoch_s": round(best, 3), "step_ms": round(1e3 * best / steps, 3), "steps": steps}
    rec["epochs_s"] = [round(h["seconds"], 3) for h in history]
    if profile:
        one = tcfg.__class__(**{**tcfg.to_dict(), "epochs": 1})
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        trainer._fit(model, data, train_ids, 1, one, "bench", lambda e, r: False)
        prof.disable()
        total = time.perf_counter() - t
        rec["profiled_epoch_s"] = round(total, 3)
        rec["split_ms_per_step"] = _split(prof, steps, total)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (fastest reported)")
    ap.add_argument("--models", default="snn,snn_transformer")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--target", type=float, default=3.0, help="s per epoch, snn_transformer, batch 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.exists():
        sys.exit(f"{data} not found: the TCGA tables live in ../shared/data/tcga")
    cohort, fold = _setup(data, args.fold)
    result: dict = {"n_train": len(fold.train), "threads": torch.get_num_threads(), "torch": torch.__version__}
    for model_type in args.models.split(","):
        result[model_type] = {}
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            rec = bench_one(cohort, fold, model_type, bs, args.epochs, not args.no_profile)
            result[model_type][str(bs)] = rec
            print(f"{model_type} batch {bs}: {rec['epoch_s']:.3f} s/epoch, {rec['step_ms']:.2f} ms/step "
                  f"{rec.get('split_ms_per_step', '')}", file=sys.stderr)
    snnt = result.get("snn_transformer", {}).get("1")
    if snnt is not None:
        result["target"] = {"snn_transformer_b1_epoch_s": args.target, "met": snnt["epoch_s"] <= args.target}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
