"""Time the authors' DeReF (github ZJUMAI/DeReF, unmodified) on CPU, on bench_model's inputs.

    python benchmarks/reference_model.py DIR [--threads 2] [--repeats 5] [--epoch-patients 300]
    python benchmarks/reference_model.py DIR --peak      # peak RSS of one eval at 30k only

``DIR`` is a plain export of the reference repository (its data zips are not needed). The
reference hard-codes ``.cuda()`` on its two class tokens: ``torch.Tensor.cuda`` and
``torch.nn.Module.cuda`` are made no-ops in this process instead of editing its files. Its
model takes one patient as ``x_path`` (N, D) and ``x_omic1..6`` (d_g,), exactly as its data
loader gives them; the inputs, seeds and sizes are those of ``bench_model.py`` (same
generator), the loss is its own (NLL + MSE decoupling, alpha 1) and the optimizer Adam as in
its defaults. The last stdout line is one JSON object (same keys as bench_model's figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_model import BLCA_SIZES, STAT, patient, timed  # noqa: E402


def _no_cuda() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]


def load_reference(ref_dir: str):
    """The reference model class and its loss (imported from ``ref_dir``)."""
    _no_cuda()
    sys.path.insert(0, os.path.abspath(ref_dir))
    from models.deref.network import DeReF  # the authors' code
    from utils.loss import NLLSurvLoss

    return DeReF, NLLSurvLoss


def make_reference(ref_dir: str, seed: int = 0):
    cls, _ = load_reference(ref_dir)
    torch.manual_seed(seed)
    return cls(omic_sizes=list(BLCA_SIZES), n_classes=4, fusion="concat", model_size="small")


def ref_inputs(n: int, seed: int) -> dict:
    """bench_model.patient(n, seed) in the reference's calling convention (one patient)."""
    m1, wsi = patient(n, seed, torch.device("cpu"))
    kw = {"x_path": wsi[0]}
    kw.update({f"x_omic{i + 1}": x[0] for i, x in enumerate(m1)})
    return kw


def _loss(nll, out, y: int):
    feats, _, hazards, surv, _ = out
    mse = torch.nn.functional.mse_loss
    sur = nll(hazards=hazards, S=surv, Y=torch.tensor([y]), c=torch.tensor([0.0]))
    dis = (
        mse(feats[0], feats[2])
        + mse(feats[1], feats[2])
        + mse(feats[0], feats[3])
        + mse(feats[1], feats[3])
        + mse(feats[2], feats[3])
        - mse(feats[0], feats[1])
    )
    return sur + dis


def eval_ms(model, n: int, repeats: int) -> float:
    kw = ref_inputs(n, 1)
    model.eval()

    def fn():
        with torch.inference_mode():
            model(**kw)

    return timed(fn, torch.device("cpu"), repeats)


def train_step_ms(model, nll, n: int, repeats: int) -> float:
    kw = ref_inputs(n, 2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    model.train()

    def fn():
        loss = _loss(nll, model(**kw), 1)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return timed(fn, torch.device("cpu"), repeats)


def epoch_s(ref_dir: str, n_patients: int) -> tuple[float, float]:
    """One epoch at bench_model's sizes (~U[2000, 15000]) and seeds, scaled to 300 patients:
    ``(wall with input synthesis, model steps only)``."""
    _, nll_cls = load_reference(ref_dir)
    model = make_reference(ref_dir)
    nll = nll_cls(alpha=0.0)
    sizes = np.random.default_rng(0).integers(2000, 15001, size=n_patients)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    model.train()
    t = time.perf_counter()
    steps = 0.0
    for i, n in enumerate(sizes):
        kw = ref_inputs(int(n), 100 + i)
        t_step = time.perf_counter()
        loss = _loss(nll, model(**kw), i % 4)
        loss.backward()
        opt.step()
        opt.zero_grad()
        steps += time.perf_counter() - t_step
    scale = 300 / n_patients
    return (time.perf_counter() - t) * scale, steps * scale


def peak_mb(ref_dir: str) -> float:
    """Peak RSS growth of one eval forward at 30k patches (this process must be fresh)."""
    import psutil

    model = make_reference(ref_dir).eval()
    kw = ref_inputs(30000, 3)
    with torch.inference_mode():  # warm up the allocator on a small bag
        model(**ref_inputs(100, 4))
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, stop = [base], [False]

    def watch():
        while not stop[0]:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=watch)
    th.start()
    with torch.inference_mode():
        model(**kw)
    stop[0] = True
    th.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epoch-patients", type=int, default=300)
    ap.add_argument("--skip-epoch", action="store_true")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--peak", action="store_true", help="only the peak RSS of one eval at 30k")
    args = ap.parse_args()
    STAT["stat"] = args.stat
    torch.set_num_threads(args.threads)
    random.seed(0)  # the reference draws s with `random.choice` at every forward
    if args.peak:
        print(json.dumps({"peak_mb_eval_30000": round(peak_mb(args.ref_dir), 1)}))
        return
    _, nll_cls = load_reference(args.ref_dir)
    model = make_reference(args.ref_dir)
    res: dict = {"threads": args.threads}
    res["eval_ms"] = {"fp32": {str(n): round(eval_ms(model, n, args.repeats), 1) for n in (10000, 30000)}}
    print("reference eval_ms", res["eval_ms"], file=sys.stderr)
    res["train_step_ms"] = {
        "fp32": {"10000": round(train_step_ms(model, nll_cls(alpha=0.0), 10000, args.repeats), 1)}
    }
    print("reference train_step_ms", res["train_step_ms"], file=sys.stderr)
    if not args.skip_epoch:
        wall, steps = epoch_s(args.ref_dir, args.epoch_patients)
        res["epoch_s"] = {"fp32": round(wall, 1)}
        res["epoch_model_s"] = {"fp32": round(steps, 1)}
        res["epoch_patients_run"] = args.epoch_patients
    print(json.dumps(res))


if __name__ == "__main__":
    main()
