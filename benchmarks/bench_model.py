"""Speed and memory of the DeReF model (printed, not asserted).

    python benchmarks/bench_model.py --json            # CPU, 2 threads (the issue's setting)
    python benchmarks/bench_model.py --json --device cuda

Sizes: BLCA gene-family groups (94, 334, 521, 468, 1496, 479), D = 1024, the paper's
architecture. The last line of stdout is one JSON object:

    eval_ms        {fp32: {1000, 10000, 30000}, bf16: {...}}  median eval forward (default
                   deterministic evaluation: encoders once, fusion for every s), one patient
    train_step_ms  {fp32: {1000, 10000}, bf16: {...}}  forward + backward + Adam step
    peak_mb_eval_30000  peak RSS growth of one eval forward at 30k patches, fresh process
    epoch_s        {fp32, bf16}  one training epoch over 300 patients, bags ~U[2000, 15000],
                   at the paper's setting: one patient per forward and per optimizer step
                   (wall time, with the synthesis of each patient's inputs; --epoch-patients
                   runs fewer and scales to 300: the same patients for the reference)
    epoch_model_s  the same epoch's forward + backward + optimizer time only
    epoch_batched_s / epoch_batched_model_s  the same patients at our batched setting
                   (``BATCH`` = 8 patients per forward and per optimizer step, bucketed by bag
                   size as ``deref.training.epoch_batches``); ``batched_speedup`` = epoch_s /
                   epoch_batched_s. The paper's setting stays the trainer's default
                   (``batch_size=1``): batching changes the optimization (8x fewer steps), so it
                   is a choice (``--batch-size``), not a faster way to the same numbers.
    bf16_spearman  rank agreement of bf16 vs fp32 risks over 100 patients
    eval_spread    max - min of the risk over 20 evaluations of one patient
    (cuda only) patients_per_s {fp32_batch1_loop, bf16_batched, speedup} at 10k patches
    gemm_gflops    {fp32, bf16: {shape: GFLOP/s}, peak: {fp32, bf16}} plain products at the
                   model's shapes (the patch MLP, qkv, the attention's batched products)
    gflops_per_forward  {eval: {10000, 30000}, train_step: {10000}, epoch_mean_per_patient}
                   counted with torch.utils.flop_counter.FlopCounterMode (CPU flash attention
                   and grouped-convolution backward formulas added, see ``flop_mapping``)
    floor_ms / efficiency  per figure: floor = FLOPs / peak GEMM rate of its precision;
                   efficiency = floor / measured time (1.0 = every FLOP at GEMM speed)

    python benchmarks/bench_model.py --json --reference DIR   # DIR: export of ZJUMAI/DeReF

runs the authors' model (``benchmarks/reference_model.py``, a subprocess, same inputs,
seeds, sizes and thread count) and adds ``reference`` (its figures) and ``ratio``
(reference time / ours: eval 10k fp32, eval 10k bf16 (ours bf16 vs its fp32), eval 30k
fp32, train step 10k fp32, epoch fp32 and bf16 per patient, the same at our batched setting
against the reference's paper setting (``epoch_batched_*``); peak RSS: ours / reference),
with the issue's ``targets`` and whether each is ``met``.

    python benchmarks/bench_model.py --profile      # + torch.profiler tables on stderr

prints the top 15 ops by self CPU time of one eval forward at 10k (fp32, bf16) and of one
train step at 10k fp32 (``--profile-only``: only those tables).
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
#: Patients per optimizer step at our batched training setting (``deref train --batch-size``).
BATCH = 8


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


#: How repeated timings are summarized: "median" (default) or "min" (``--stat min``: robust
#: to other processes on a shared machine, whose load only ever adds time).
STAT = {"stat": "median"}


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
    return min(out) if STAT["stat"] == "min" else statistics.median(out)


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


def timed_step(model, opt, inputs, bins, bf16, device) -> float:
    """Seconds of one training step (forward, NLL + decoupling loss, backward, Adam) on
    ``inputs`` = ``(m1, wsi, mask)``, uncensored patients in time bins ``bins``."""
    from deref.losses import decoupling_loss, nll_survival_loss

    y = torch.tensor(bins, device=device)
    sync(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(*inputs)
    loss = nll_survival_loss(out.hazards.float(), y, torch.zeros(len(bins), device=device))
    loss = loss + decoupling_loss(out.features.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync(device)
    return time.perf_counter() - t


def epoch_s(device, bf16, n_patients):
    """``(wall, model)`` seconds of one epoch scaled to 300 patients: the wall time includes
    synthesizing each patient's inputs (as a data loader would cost), ``model`` only the
    forward + backward + optimizer steps."""

    model = make_model(device)
    sizes = epoch_sizes(n_patients)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    model.train()
    t = time.perf_counter()
    steps = 0.0
    for i, n in enumerate(sizes):
        m1, wsi = patient(int(n), 100 + i, device)
        steps += timed_step(model, opt, (m1, wsi, None), [i % 4], bf16, device)
    scale = 300 / n_patients  # scaled to the 300-patient epoch
    return (time.perf_counter() - t) * scale, steps * scale


def batched_patients(sizes, seeds, device):
    """A batch of the patients ``patient(n, seed)`` would give one at a time, padded to the
    longest bag with a validity mask (what the trainer's collation builds)."""
    parts = [patient(int(n), seed, device) for n, seed in zip(sizes, seeds)]
    n_max = max(int(n) for n in sizes)
    wsi = torch.zeros(len(parts), n_max, 1024, device=device)
    mask = torch.zeros(len(parts), n_max, dtype=torch.bool, device=device)
    for i, (_, w) in enumerate(parts):
        wsi[i, : w.shape[1]] = w[0]
        mask[i, : w.shape[1]] = True
    m1 = [torch.cat([p[0][g] for p in parts]) for g in range(len(BLCA_SIZES))]
    return m1, wsi, mask


def epoch_batched_s(device, bf16, n_patients, batch_size=BATCH):
    """``(wall, model)`` seconds of the same epoch (the same patients as :func:`epoch_s`) at our
    batched setting: ``batch_size`` patients per forward and per optimizer step, bucketed by
    bag size as ``deref.training.epoch_batches`` does (sorted within chunks of 8 batches), scaled
    to 300 patients."""
    from deref.training import epoch_batches

    model = make_model(device)
    sizes = epoch_sizes(n_patients)
    ids = [str(i) for i in range(n_patients)]
    batches = epoch_batches(ids, None, batch_size, lambda i: int(sizes[int(i)]), np.random.default_rng(0))
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)
    model.train()
    t = time.perf_counter()
    steps = 0.0
    for batch in batches:
        idx = [int(i) for i in batch]
        inputs = batched_patients(sizes[idx], [100 + i for i in idx], device)
        steps += timed_step(model, opt, inputs, [i % 4 for i in idx], bf16, device)
    scale = 300 / n_patients
    return (time.perf_counter() - t) * scale, steps * scale


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


# ------------------------------------------------------------------ ceiling: GEMM and FLOPs
def gemm_shapes(n=10000, d=1024, c=256, heads=8, landmarks=128):
    """Products the model runs, as (name, a shape, b shape): the patch MLP, qkv, and the
    attention's batched products (bags padded to a multiple of the landmarks)."""
    length = landmarks * -(-(n + 1) // landmarks)
    dh = c // heads
    return [
        (f"{n}x{d}@{d}x{c}", (n, d), (d, c)),
        (f"{length}x{c}@{c}x{3 * c}", (length, c), (c, 3 * c)),
        (f"{heads}x{length}x{dh}@{heads}x{dh}x{landmarks}", (heads, length, dh), (heads, dh, landmarks)),
        (f"{heads}x{landmarks}x{dh}@{heads}x{dh}x{length}", (heads, landmarks, dh), (heads, dh, length)),
        (
            f"{heads}x{landmarks}x{length}@{heads}x{length}x{dh}",
            (heads, landmarks, length),
            (heads, length, dh),
        ),
    ]


def gemm_gflops(device, repeats=10):
    """GFLOP/s of plain products at the model's shapes, fp32 and bf16 (median of repeats)."""
    out: dict = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = {}
        for label, sa, sb in gemm_shapes():
            g = torch.Generator().manual_seed(0)
            a = torch.randn(sa, generator=g).to(device, dtype)
            b = torch.randn(sb, generator=g).to(device, dtype)
            flops = 2 * a.numel() * b.shape[-1]
            ms = timed(lambda a=a, b=b: torch.matmul(a, b), device, repeats, warmup=2)
            rates[label] = round(flops / ms / 1e6, 1)
        out[name] = rates
    out["peak"] = {k: max(v.values()) for k, v in out.items()}
    return out


def flop_mapping():
    """FLOP formulas FlopCounterMode lacks or miscounts on CPU: the CPU flash attention
    (forward, backward), and the convolution backward, which it counts as a dense (not
    grouped) convolution (256x too much for PPEG's depthwise kernel)."""
    from torch.utils.flop_counter import conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def sdpa_bwd(grad, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad, q, k, v)

    def conv_bwd(
        grad, x, w, bias, stride, padding, dilation, transposed, out_pad, groups, mask, out_shape=None
    ):
        one = conv_flop_count(x, w, grad, transposed=transposed)  # forward FLOPs (grouped w)
        return one * (int(mask[0]) + int(mask[1]))

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_bwd,
        aten.convolution_backward: conv_bwd,
    }


def count_flops(model, device, n, train=False):
    """FLOPs of one eval forward (or one train forward + backward) at ``n`` patches."""
    from torch.utils.flop_counter import FlopCounterMode

    from deref.losses import decoupling_loss, nll_survival_loss

    m1, wsi = patient(n, 1, device)
    counter = FlopCounterMode(display=False, custom_mapping=flop_mapping())
    model.train(train)
    if train:
        with counter:
            out = model(m1, wsi)
            loss = nll_survival_loss(
                out.hazards, torch.tensor([1], device=device), torch.tensor([0.0], device=device)
            )
            (loss + decoupling_loss(out.features)).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode(), counter:
            model(m1, wsi)
    model.eval()
    return counter.get_total_flops()


def epoch_sizes(n_patients):
    return np.random.default_rng(0).integers(2000, 15001, size=n_patients)


def profile_tables(model, device, rows=15):
    """torch.profiler per-op tables (top ``rows`` by self CPU time), printed to stderr."""
    from torch.profiler import ProfilerActivity, profile

    from deref.losses import decoupling_loss, nll_survival_loss

    m1, wsi = patient(10000, 1, device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def show(title, fn):
        fn()  # warm-up
        sync(device)
        with profile(activities=acts) as prof:
            fn()
            sync(device)
        print(f"\n=== profile: {title} ===", file=sys.stderr)
        print(prof.key_averages().table(sort_by=sort, row_limit=rows), file=sys.stderr)

    for bf16 in (False, True):
        model.eval()

        def ev(bf16=bf16):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(m1, wsi)

        show(f"eval forward, 10000 patches, {'bf16 autocast' if bf16 else 'fp32'}", ev)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)

    def step():
        model.train()
        out = model(m1, wsi)
        y, c = torch.tensor([1], device=device), torch.tensor([0.0], device=device)
        loss = nll_survival_loss(out.hazards, y, c) + decoupling_loss(out.features)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    show("train step, 10000 patches, fp32", step)
    model.eval()


# ------------------------------------------------------------------ reference (authors' code)
#: The issue's targets: ratio = reference time / ours (peak RSS: ours / reference).
TARGETS = {
    "eval_fp32_10000": (">=", 3.0),
    "eval_bf16_10000": (">=", 8.0),
    "eval_fp32_30000": (">=", 3.0),
    "train_step_fp32_10000": (">=", 2.5),
    "epoch_fp32": (">=", 2.5),
    "epoch_bf16": (">=", 5.0),
    "peak_rss_eval_30000": ("<=", 0.4),
}


def run_reference(ref_dir, args):
    """The authors' figures from ``benchmarks/reference_model.py`` (fresh processes)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_model.py")
    base = [sys.executable, script, ref_dir, "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    def call(extra):
        out = subprocess.run(base + extra, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"reference run failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    extra = [
        "--repeats",
        str(args.repeats),
        "--epoch-patients",
        str(args.epoch_patients),
        "--stat",
        args.stat,
    ]
    res = call(extra + (["--skip-epoch"] if args.skip_epoch else []))
    res["peak_mb_eval_30000"] = call(["--peak"])["peak_mb_eval_30000"]
    return res


def ratios(ref, ours):
    r = {
        "eval_fp32_10000": ref["eval_ms"]["fp32"]["10000"] / ours["eval_ms"]["fp32"]["10000"],
        "eval_bf16_10000": ref["eval_ms"]["fp32"]["10000"] / ours["eval_ms"]["bf16"]["10000"],
        "eval_fp32_30000": ref["eval_ms"]["fp32"]["30000"] / ours["eval_ms"]["fp32"]["30000"],
        "train_step_fp32_10000": ref["train_step_ms"]["fp32"]["10000"]
        / ours["train_step_ms"]["fp32"]["10000"],
        "peak_rss_eval_30000": ours["peak_mb_eval_30000"] / ref["peak_mb_eval_30000"],
    }
    if "epoch_s" in ref and "epoch_s" in ours:  # both scaled from the same patients: per patient
        r["epoch_fp32"] = ref["epoch_s"]["fp32"] / ours["epoch_s"]["fp32"]
        r["epoch_bf16"] = ref["epoch_s"]["fp32"] / ours["epoch_s"]["bf16"]
        if "epoch_model_s" in ref and "epoch_model_s" in ours:  # without the input synthesis
            r["epoch_model_fp32"] = ref["epoch_model_s"]["fp32"] / ours["epoch_model_s"]["fp32"]
            r["epoch_model_bf16"] = ref["epoch_model_s"]["fp32"] / ours["epoch_model_s"]["bf16"]
    if "epoch_s" in ref and "epoch_batched_s" in ours:  # the reference has one setting: the paper's
        r["epoch_batched_fp32"] = ref["epoch_s"]["fp32"] / ours["epoch_batched_s"]["fp32"]
        r["epoch_batched_bf16"] = ref["epoch_s"]["fp32"] / ours["epoch_batched_s"]["bf16"]
    return {k: round(v, 3) for k, v in r.items()}


def targets_met(ratio):
    out = {}
    for k, (op, v) in TARGETS.items():
        if k in ratio:
            out[k] = {"target": f"{op} {v}", "met": ratio[k] >= v if op == ">=" else ratio[k] <= v}
    return out


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
    ap.add_argument("--stat", choices=("median", "min"), default="median", help="summary of repeats")
    ap.add_argument("--reference", metavar="DIR", help="an export of github ZJUMAI/DeReF: run it too")
    ap.add_argument("--profile", action="store_true", help="per-op profiler tables on stderr")
    ap.add_argument("--profile-only", action="store_true", help="only the profiler tables")
    args = ap.parse_args()
    STAT["stat"] = args.stat
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = make_model(device)
    if args.profile or args.profile_only:
        profile_tables(model, device)
        if args.profile_only:
            return
    res: dict = {
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "stat": args.stat,
    }
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
        ep = {p: epoch_s(device, p == "bf16", args.epoch_patients) for p in ("fp32", "bf16")}
        res["epoch_s"] = {p: round(v[0], 1) for p, v in ep.items()}
        res["epoch_model_s"] = {p: round(v[1], 1) for p, v in ep.items()}
        res["epoch_patients_run"] = args.epoch_patients
        res["epoch_s_per_patient"] = {p: round(v / 300, 4) for p, v in res["epoch_s"].items()}
        # our batched setting, the same patients: BATCH per forward and per optimizer step
        bt = {p: epoch_batched_s(device, p == "bf16", args.epoch_patients) for p in ("fp32", "bf16")}
        res["epoch_batched_s"] = {p: round(v[0], 1) for p, v in bt.items()}
        res["epoch_batched_model_s"] = {p: round(v[1], 1) for p, v in bt.items()}
        res["epoch_batch_size"] = BATCH
        res["batched_speedup"] = {p: round(res["epoch_s"][p] / res["epoch_batched_s"][p], 2) for p in bt}
        print("epoch_s", res["epoch_s"], "batched", res["epoch_batched_s"], file=sys.stderr)
    if device.type == "cuda":
        res["patients_per_s"] = cuda_throughput(model, device)

    # The ceiling: GEMM rates at the model's shapes, counted FLOPs, efficiency per figure.
    gemm = gemm_gflops(device)
    res["gemm_gflops"] = gemm
    flops = {
        "eval": {str(n): count_flops(model, device, n) for n in (10000, 30000)},
        "train_step": {str(n): count_flops(model, device, n, train=True) for n in (2000, 10000, 15000)},
    }
    # Train FLOPs are linear in the bag size (Nystrom): the epoch's from the 2k and 15k counts.
    t2, t15 = flops["train_step"]["2000"], flops["train_step"]["15000"]
    sizes = epoch_sizes(args.epoch_patients)
    epoch_flops = float(np.mean([t2 + (t15 - t2) * (int(n) - 2000) / 13000 for n in sizes])) * 300
    res["gflops_per_forward"] = {
        "eval": {k: round(v / 1e9, 2) for k, v in flops["eval"].items()},
        "train_step": {"10000": round(flops["train_step"]["10000"] / 1e9, 2)},
        "epoch_mean_per_patient": round(epoch_flops / 300 / 1e9, 2),
    }
    peak = gemm["peak"]
    floor = {
        "eval_fp32_10000": flops["eval"]["10000"] / peak["fp32"] / 1e6,
        "eval_bf16_10000": flops["eval"]["10000"] / peak["bf16"] / 1e6,
        "eval_fp32_30000": flops["eval"]["30000"] / peak["fp32"] / 1e6,
        "train_step_fp32_10000": flops["train_step"]["10000"] / peak["fp32"] / 1e6,
        "train_step_bf16_10000": flops["train_step"]["10000"] / peak["bf16"] / 1e6,
    }
    measured = {
        "eval_fp32_10000": res["eval_ms"]["fp32"]["10000"],
        "eval_bf16_10000": res["eval_ms"]["bf16"]["10000"],
        "eval_fp32_30000": res["eval_ms"]["fp32"]["30000"],
        "train_step_fp32_10000": res["train_step_ms"]["fp32"]["10000"],
        "train_step_bf16_10000": res["train_step_ms"]["bf16"]["10000"],
    }
    if "epoch_s" in res:
        floor["epoch_fp32"] = epoch_flops / peak["fp32"] / 1e6
        floor["epoch_bf16"] = epoch_flops / peak["bf16"] / 1e6
        measured["epoch_fp32"] = res["epoch_model_s"]["fp32"] * 1000  # model time only
        measured["epoch_bf16"] = res["epoch_model_s"]["bf16"] * 1000
    res["floor_ms"] = {k: round(v, 1) for k, v in floor.items()}
    res["efficiency"] = {k: round(floor[k] / measured[k], 3) for k in floor}
    print("efficiency", res["efficiency"], file=sys.stderr)

    if args.reference:
        ref = run_reference(args.reference, args)
        res["reference"] = ref
        res["ratio"] = ratios(ref, res)
        res["targets"] = targets_met(res["ratio"])
        print("ratio", res["ratio"], file=sys.stderr)
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
