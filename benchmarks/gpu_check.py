"""GPU checks in one script (run on a machine with CUDA; prints figures, exits 1 on a failed check).

    python benchmarks/gpu_check.py --golden PATH/deref_reference_tiny.npz --cohort DEMO/cohort --json

What it checks, each on the CUDA device against the CPU:

1. the reference conformance (every recorded output of the golden fixture, all s) on CUDA;
2. batched == one-at-a-time on CUDA (padding/masks), fp32;
3. training: ``train_cross_validation`` on ``device="cuda"`` (2 folds, a few epochs) writes
   a run; ``Predictor.from_run(device="auto")`` resolves to CUDA and reproduces its
   predictions.csv; the same run predicted on the CPU agrees; bf16 autocast keeps the ranking;
4. attributions on CUDA: gradient and IG match the CPU's, structural zeros stay exactly zero,
   IG completeness holds.

The last line is one JSON object with the figures. Speed figures come from
``benchmarks/bench_model.py --device cuda`` (run it after this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

RESULTS: dict[str, object] = {}
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def conformance(golden_path: Path, dev: torch.device) -> None:
    from deref.model.reference import import_reference_checkpoint

    with np.load(golden_path, allow_pickle=False) as z:
        g = {k: z[k] for k in z.files}
    params = {k[len("param/") :]: v for k, v in g.items() if k.startswith("param/")}
    model = import_reference_checkpoint(params).to(dev).eval()
    m1 = [torch.from_numpy(g[f"input/x_omic{i}"]).unsqueeze(0).to(dev) for i in range(1, 7)]
    wsi = torch.from_numpy(g["input/x_path"]).unsqueeze(0).to(dev)
    worst = 0.0
    for s in (2, 4, 8, 16, 32, 64):
        with torch.no_grad():
            out = model(m1, wsi, segments=s)
        for key, val in {
            "risk": out.risk,
            "hazards": out.hazards,
            "survival": out.survival,
            "logits": out.logits,
        }.items():
            worst = max(worst, float(np.abs(val.float().cpu().numpy() - g[f"s{s}/{key}"]).max()))
    RESULTS["golden_max_abs_diff_cuda"] = worst
    check("golden conformance on the device (TF32 off)", worst < 1e-4, f"max abs diff {worst:.2e}")


def batching(dev: torch.device) -> None:
    from deref.model import DeReF, tiny_config

    torch.manual_seed(0)
    cfg = tiny_config()
    model = DeReF(cfg).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    sizes = [3, 40, 257, 1000]
    m1 = [torch.randn(len(sizes), d, generator=g) for d in cfg.m1_sizes]
    bags = [torch.randn(n, cfg.wsi_dim, generator=g) for n in sizes]
    from deref.model.deref import collate_bags

    wsi, mask = collate_bags(bags)
    with torch.no_grad():
        batch = model([x.to(dev) for x in m1], wsi.to(dev), mask.to(dev), segments=8).risk.cpu()
        single = torch.cat(
            [
                model([x[i : i + 1].to(dev) for x in m1], bags[i][None].to(dev), segments=8).risk.cpu()
                for i in range(len(sizes))
            ]
        )
    diff = float((batch - single).abs().max())
    RESULTS["batch_vs_single_cuda"] = diff
    check("batched == one at a time on the device", diff < 1e-4, f"max abs diff {diff:.2e}")


def training_and_inference(cohort_dir: Path, dev: torch.device, epochs: int) -> None:
    import pandas as pd
    from scipy.stats import spearmanr

    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.demo import DEMO_MODEL
    from deref.inference import Predictor
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    cohort = load_cohort(
        cohort_dir / "cohort.csv", signatures=cohort_dir / "signatures.csv", bag_dir=cohort_dir / "bags"
    )
    folds = make_folds(cohort.patients, k=5, seed=0)
    mcfg = ModelConfig(
        m1_sizes=tuple(f.size for f in cohort.families),
        m1_names=tuple(f.name for f in cohort.families),
        **DEMO_MODEL,
    )
    out = Path(tempfile.mkdtemp()) / "run"
    t0 = time.perf_counter()
    res = train_cross_validation(
        cohort,
        folds,
        mcfg,
        TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, device=dev.type, track_validation=False),
        out,
        only_folds=[0, 1],
    )
    RESULTS["train_s_cuda_2folds"] = round(time.perf_counter() - t0, 2)
    RESULTS["train_cindex_cuda_folds"] = list(res.info.metrics.headline.folds)
    saved = pd.read_csv(out / "predictions.csv")
    pred = Predictor.from_run(out, device="auto")
    check("Predictor device='auto' resolves to CUDA", pred.device.type == dev.type, str(pred.device))
    again = pred.predict(pred.load_cohort(), saved["case_id"].tolist(), fold="oof")
    d_gpu = float(np.abs(again["risk"].to_numpy() - saved["risk"].to_numpy()).max())
    cpu = Predictor.from_run(out, device="cpu").predict(
        pred.load_cohort(), saved["case_id"].tolist(), fold="oof"
    )
    d_cpu = float(np.abs(cpu["risk"].to_numpy() - saved["risk"].to_numpy()).max())
    bf = Predictor.from_run(out, device=dev.type, bf16=True).predict(
        pred.load_cohort(), saved["case_id"].tolist(), fold="oof"
    )
    rho = float(spearmanr(bf["risk"].to_numpy(), saved["risk"].to_numpy()).statistic)
    RESULTS.update(predict_cuda_vs_saved=d_gpu, predict_cpu_vs_cuda_trained=d_cpu, bf16_spearman_cuda=rho)
    check("CUDA predictions reproduce predictions.csv", d_gpu < 1e-4, f"max abs diff {d_gpu:.2e}")
    check("CPU predictions of the CUDA-trained run agree", d_cpu < 1e-4, f"max abs diff {d_cpu:.2e}")
    check("bf16 autocast on CUDA keeps the ranking", rho > 0.999, f"Spearman {rho:.5f}")
    attributions(pred, cohort, saved["case_id"].iloc[0])


def attributions(pred, cohort, case_id: str) -> None:
    from deref.explain.attribution import attribute_inputs
    from deref.inference import BagStore

    ck = pred.fold(0)
    store = BagStore(cohort, pred.config.wsi_dim)
    bag = torch.as_tensor(store.get(case_id).features)
    from deref.inference import m1_matrix

    m1 = [torch.as_tensor(a[:1]) for a in m1_matrix(cohort, ck.preprocessing, [case_id])]
    model_gpu = ck.model.eval()
    model_cpu = pred.run.load_fold(0, torch.device("cpu")).model.eval()
    base = torch.as_tensor(ck.wsi_mean) if ck.wsi_mean is not None else None
    out = {}
    for name, model, dev in (("cuda", model_gpu, pred.device), ("cpu", model_cpu, torch.device("cpu"))):
        out[name] = {
            m: attribute_inputs(model, [x.to(dev) for x in m1], bag.to(dev), base, method=m, steps=64)
            for m in ("grad", "ig")
        }
    worst = 0.0
    for m in ("grad", "ig"):
        a, b = out["cuda"][m], out["cpu"][m]
        for t in a.targets:
            scale = max(
                1e-12, float(np.abs(b.patch_scores[t]).max()), float(np.abs(b.family_scores[t]).max())
            )
            worst = max(worst, float(np.abs(a.patch_scores[t] - b.patch_scores[t]).max()) / scale)
            worst = max(worst, float(np.abs(a.family_scores[t] - b.family_scores[t]).max()) / scale)
    RESULTS["attr_cuda_vs_cpu_rel"] = worst
    check("attributions on CUDA == CPU", worst < 1e-3, f"max relative diff {worst:.2e}")
    names = out["cuda"]["grad"].targets
    zeros = True
    for m in ("grad", "ig"):
        a = out["cuda"][m]
        for t in names:
            if "wsi" in t and t.startswith("sp"):
                zeros &= bool(np.all(a.family_scores[t] == 0))
            if t.startswith("sp") and "wsi" not in t:
                zeros &= bool(np.all(a.patch_scores[t] == 0))
    check("structural zeros exact on CUDA", zeros)
    ig = out["cuda"]["ig"]
    t = "risk"
    rel = abs(
        ig.patch_scores[t].sum() + ig.family_scores[t].sum() - (ig.target_values[t] - ig.baseline_values[t])
    ) / max(abs(ig.target_values[t] - ig.baseline_values[t]), 1e-6)
    RESULTS["ig_completeness_rel_cuda"] = float(rel)
    check(
        "IG completeness of the risk on CUDA, 64 steps (within 1%)",
        rel < 0.01,
        f"worst relative gap {rel:.4f}",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", type=Path, required=True)
    ap.add_argument(
        "--cohort", type=Path, required=True, help="a demo cohort folder (cohort.csv, signatures.csv, bags/)"
    )
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to dry-run this script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    RESULTS["device"] = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    RESULTS["torch"] = torch.__version__
    for step in (
        lambda: conformance(args.golden, dev),
        lambda: batching(dev),
        lambda: training_and_inference(args.cohort, dev, args.epochs),
    ):
        try:
            step()
        except Exception:  # report and go on: one script, every check
            traceback.print_exc()
            FAILED.append("exception")
    RESULTS["failed"] = FAILED
    print(json.dumps(RESULTS, default=float))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
