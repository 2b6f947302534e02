"""Speed and memory of the DeReF model (printed, not asserted).

    python benchmarks/bench_model.py --json            # CPU, 2 threads (the issue's setting)
    python benchmarks/bench_model.py --json --device cuda

Sizes: BLCA gene-family groups (94, 334, 521, 468, 1496, 479), D = 1024, the paper's
architecture. The last line of stdout is one JSON object:

    eval_ms        {fp32: {1000, 10000, 30000}, bf16: {...}}  median eval forward (default
                   deterministic evaluation: encoders once, fusion for every s), one patient
    train_step_ms  {fp32: {1000, 10000}, bf16: {...}}  forward + backward + Adam step
    peak_mb_eval_30000  peak RSS growth of one eval forward at 30k patches, fresh process
    epoch_s        {fp32, bf16}  one training epoch over 300 patients, bags ~U[2000, 15000]
    bf16_spearman  rank agreement of bf16 vs fp32 risks over 100 patients
    eval_spread    max - min of the risk over 20 evaluations of one patient
    (cuda only) patients_per_s {fp32_batch1_loop, bf16_batched, speedup} at 10k patches
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

BLCA_SIZES = (94, 334, 521, 468, 1496, 479)


def make_model(device, seed=0):
    from deref.model import DeReF, ModelConfig

    torch.manual_seed(seed)
    return DeReF(ModelConfig(m1_sizes=BLCA_SIZES, wsi_dim=1024)).to(device)


def patient(n, seed, device, b=1):
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(b, 1, 1024, generator=g) * 0.5  # patient-specific offset: risks differ
    wsi = (torch.randn(b, n, 1024, generator=g) + shift).to(device)
    m1 = [torch.randn(b, d, generator=g).to(device) for d in BLCA_SIZES]
    return m1, wsi


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def eval_ms(model, device, n, bf16, repeats):
    m1, wsi = patient(n, 1, device)
    model.eval()

    def fn():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(m1, wsi)

    return timed(fn, device, repeats)


def train_step_ms(model, device, n, bf16, repeats):
    from deref.losses import decoupling_loss, nll_survival_loss

    m1, wsi = patient(n, 2, device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    y = torch.tensor([1], device=device)
    c = torch.tensor([0.0], device=device)
    model.train()

    def fn():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(m1, wsi)
        loss = nll_survival_loss(out.hazards.float(), y, c) + decoupling_loss(out.features.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(fn, device, repeats)


def epoch_s(device, bf16, n_patients):
    from deref.losses import decoupling_loss, nll_survival_loss

    model = make_model(device)
    rng = np.random.default_rng(0)
    sizes = rng.integers(2000, 15001, size=n_patients)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    model.train()
    t = time.perf_counter()
    for i, n in enumerate(sizes):
        m1, wsi = patient(int(n), 100 + i, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(m1, wsi)
        loss = nll_survival_loss(
            out.hazards.float(), torch.tensor([i % 4], device=device), torch.tensor([0.0], device=device)
        )
        loss = loss + decoupling_loss(out.features.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t) * 300 / n_patients  # scaled to the 300-patient epoch


def bf16_spearman(model, device, n_patients=100):
    from scipy.stats import spearmanr

    model.eval()
    rng = np.random.default_rng(1)
    r32, r16 = [], []
    for i in range(n_patients):
        m1, wsi = patient(int(rng.integers(500, 3000)), 1000 + i, device)
        with torch.inference_mode():
            r32.append(model(m1, wsi).risk.item())
            with torch.autocast(device.type, dtype=torch.bfloat16):
                r16.append(model(m1, wsi).risk.float().item())
    return float(spearmanr(r32, r16).statistic)


def eval_spread(model, device):
    model.eval()
    m1, wsi = patient(3000, 7, device)
    risks = []
    for _ in range(20):
        with torch.inference_mode():
            risks.append(model(m1, wsi).risk.item())
    return max(risks) - min(risks)


def peak_mb_child(device: str) -> float:
    """Peak RSS growth of one eval forward at 30k patches, measured in a fresh process."""
    code = f"""
import os, threading, time, psutil, torch
torch.set_num_threads({torch.get_num_threads()})
import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from benchmarks.bench_model import make_model, patient
dev = torch.device({device!r})
model = make_model(dev).eval()
m1, wsi = patient(30000, 3, dev)
with torch.inference_mode():  # warm up the allocator on a small bag
    model(*patient(100, 4, dev))
proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; stop = [False]
def watch():
    while not stop[0]:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)
t = threading.Thread(target=watch); t.start()
with torch.inference_mode():
    model(m1, wsi)
stop[0] = True; t.join()
peak[0] = max(peak[0], proc.memory_info().rss)
print((peak[0] - base) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cuda_throughput(model, device, n=10000, batch=16, patients=32):
    """Patients per second at 10k patches: fp32 batch-of-one loop vs bf16 batches."""
    from deref.model import collate_bags

    model.eval()
    data = [patient(n, 200 + i, device) for i in range(patients)]
    with torch.inference_mode():
        model(*data[0])
        sync(device)
        t = time.perf_counter()
        for m1, wsi in data:
            model(m1, wsi)
        sync(device)
        loop = patients / (time.perf_counter() - t)
        bags = [w[0] for _, w in data]
        m1s = [torch.cat([d[0][g] for d in data]) for g in range(len(BLCA_SIZES))]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for s in range(0, patients, batch):
                wsi, mask = collate_bags(bags[s : s + batch], device=device)
                model([x[s : s + batch] for x in m1s], wsi, mask)
            sync(device)
            t = time.perf_counter()
            for s in range(0, patients, batch):
                wsi, mask = collate_bags(bags[s : s + batch], device=device)
                model([x[s : s + batch] for x in m1s], wsi, mask)
            sync(device)
        batched = patients / (time.perf_counter() - t)
    return {"fp32_batch1_loop": loop, "bf16_batched": batched, "speedup": batched / loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--epoch-patients", type=int, default=300, help="patients actually run for epoch_s (scaled to 300)"
    )
    ap.add_argument("--skip-epoch", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = make_model(device)
    res: dict = {"device": str(device), "threads": args.threads, "torch": torch.__version__}
    res["eval_ms"] = {
        p: {
            str(n): round(eval_ms(model, device, n, p == "bf16", args.repeats), 1)
            for n in (1000, 10000, 30000)
        }
        for p in ("fp32", "bf16")
    }
    print("eval_ms", res["eval_ms"], file=sys.stderr)
    res["train_step_ms"] = {
        p: {
            str(n): round(train_step_ms(model, device, n, p == "bf16", args.repeats), 1)
            for n in (1000, 10000)
        }
        for p in ("fp32", "bf16")
    }
    print("train_step_ms", res["train_step_ms"], file=sys.stderr)
    res["peak_mb_eval_30000"] = round(peak_mb_child(args.device), 1)
    res["bf16_spearman"] = round(bf16_spearman(model, device), 5)
    res["eval_spread"] = eval_spread(model, device)
    if not args.skip_epoch:
        res["epoch_s"] = {
            p: round(epoch_s(device, p == "bf16", args.epoch_patients), 1) for p in ("fp32", "bf16")
        }
        res["epoch_patients_run"] = args.epoch_patients
    if device.type == "cuda":
        res["patients_per_s"] = cuda_throughput(model, device)
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
