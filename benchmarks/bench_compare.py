"""Speed of ``deref compare`` (issue 13). Printed, never asserted.

    python benchmarks/bench_compare.py [--json] [--runs 20] [--patients 300] [--resamples 2000]

Writes ``--runs`` synthetic run directories (``run.json``, ``predictions.csv`` with 4 survival
bins, ``train_risks.csv``; 5 folds, every run on the same patients and folds, risks of varying
quality) into a temporary folder, then times :func:`deref.compare.compare_runs` on them: reading
the runs, the pairing check, every run's per-fold metrics and the paired bootstrap.

Figures (target from the issue in brackets):
- ``compare_s`` [<= 10 s on 2 cores for 20 runs x 300 patients x 2,000 resamples]: the whole
  ``compare_runs`` call (first call in the process: scikit-survival's import included);
- ``bootstrap_s``: :func:`deref.compare.resampled_harrell` of all runs on all resamples alone;
- ``files_s``: the table (CSV, Markdown, LaTeX) and the forest plot (PNG, SVG, PDF);
- ``cores``: CPU cores this process may use; ``threads``: BLAS/OpenMP threads asked for.

With ``--json`` the last line of stdout is ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_synthetic_run(
    out: Path, name: str, quality: float, n: int = 300, k: int = 5, seed: int = 0
) -> Path:
    """A run directory on a fixed synthetic cohort of ``n`` patients in ``k`` folds (the cohort
    depends on ``seed`` only); the risks' correlation with the log-hazard grows with ``quality``."""
    import numpy as np
    import pandas as pd

    from deref.model import ModelConfig
    from deref.runs import DataInfo, FoldInfo, RunInfo, RunMetrics, write_run_info

    cohort = np.random.default_rng(seed)
    eta = cohort.normal(size=n)
    time_ = cohort.exponential(np.exp(-eta)) * 30
    censor = cohort.exponential(40, size=n)
    event = time_ <= censor
    t = np.round(np.minimum(time_, censor), 2)
    ids = [f"SYN-{i:04d}" for i in range(n)]
    fold = cohort.permutation(np.arange(n) % k)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    risk = quality * eta + np.sqrt(max(1e-6, 1 - quality**2)) * rng.normal(size=n)
    haz = 1 / (1 + np.exp(-risk))
    surv = np.exp(-np.outer(haz, [0.3, 0.7, 1.2, 2.0]))
    edges = [0.0, *np.quantile(t[event], [0.25, 0.5, 0.75]).tolist(), float("inf")]
    out.mkdir(parents=True, exist_ok=True)
    pred = pd.DataFrame(
        {
            "case_id": ids,
            "fold": fold,
            "time": t,
            "censorship": (~event).astype(int),
            "event": event.astype(int),
        }
    ).assign(risk=risk, **{f"surv_{j}": surv[:, j] for j in range(4)})
    pred.sort_values(["fold", "case_id"]).to_csv(out / "predictions.csv", index=False)
    train = [
        pd.DataFrame({"fold": f, "case_id": np.array(ids)[fold != f], "risk": risk[fold != f]})
        for f in range(k)
    ]
    pd.concat(train).to_csv(out / "train_risks.csv", index=False)
    folds = tuple(
        FoldInfo(
            index=f,
            bin_edges=tuple(edges),
            train_ids=tuple(np.array(ids)[fold != f]),
            val_ids=tuple(np.array(ids)[fold == f]),
            metrics={"optimistic_best_epoch_cindex": 0.5 + 0.3 * quality + 0.02},
        )
        for f in range(k)
    )
    info = RunInfo(
        name=name,
        model=ModelConfig(model_type="snn", m1_sizes=(8,), m1_names=("genes",)),
        folds=folds,
        data=DataInfo(table="synthetic.csv", fingerprint=f"synthetic-{seed}", n_patients=n),
        metrics=RunMetrics(),
    )
    write_run_info(out, info)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))  # before numpy loads its BLAS
    import numpy as np

    from deref.compare import bootstrap_weights, compare_runs, pair_runs, resampled_harrell, run_inputs

    with tempfile.TemporaryDirectory() as tmp:
        dirs = [
            write_synthetic_run(
                Path(tmp) / f"run{i:02d}",
                f"run{i:02d}",
                0.2 + 0.6 * i / max(1, args.runs - 1),
                n=args.patients,
            )
            for i in range(args.runs)
        ]
        log(f"{args.runs} synthetic runs of {args.patients} patients written")
        t0 = time.perf_counter()
        comparison = compare_runs(dirs, n_resamples=args.resamples, seed=0)
        compare_s = time.perf_counter() - t0
        cohort = pair_runs([run_inputs(d) for d in dirs])
        t0 = time.perf_counter()
        resampled_harrell(
            cohort.time, cohort.event, cohort.risks, bootstrap_weights(cohort.n, args.resamples, 0)
        )
        bootstrap_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        comparison.files()
        files_s = time.perf_counter() - t0
    res = {
        "compare_s": round(compare_s, 3),
        "bootstrap_s": round(bootstrap_s, 3),
        "files_s": round(files_s, 3),
        "runs": args.runs,
        "patients": args.patients,
        "resamples": args.resamples,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": args.threads,
        "widest_ci": round(
            float(np.max([p.delta_c_ci_high - p.delta_c_ci_low for p in comparison.pairs])), 4
        ),
    }
    log(f"compare_s {res['compare_s']} (target <= 10 s), bootstrap_s {res['bootstrap_s']}")
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
