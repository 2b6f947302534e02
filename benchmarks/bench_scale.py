"""Scale-out on Ray: slides/s with 1 and 2 local workers, the driver's overhead per slide, and
the scaling efficiency (printed, not asserted).

    python benchmarks/bench_scale.py --json
    python benchmarks/bench_scale.py --json --slides 24 --gpu      # + extraction patches/s per GPU

For each worker count a local Ray (127.0.0.1 only) with that many CPUs tiles the same generated
slides (2048 x 1536 px at 20x, about 40 patches each) and extracts them with a small backbone
(resnet18, random weights, 64 px input: the pipeline, not the network, is timed). The last line
of stdout is one JSON object:

    slides                   how many slides
    tile / extract           {workers: {wall_s, slides_per_s, worker_s}}  worker_s = the seconds the
                             workers report for their slides (reading, computing, writing);
                             tiling timed on warm worker processes (cold_wall_s: the first pass,
                             which starts them), extraction from the first slide handed to a
                             ready actor (actor_start_s: building the actors and their backbones)
    ray_start_s              {workers: seconds to start the local Ray}
    driver_overhead_ms       per slide with 1 worker: (wall - worker seconds) / slides, tiling and
                             extraction (submission, scheduling, result transfer, manifest)
    scaling                  {tile, extract}: slides/s with 2 workers / slides/s with 1
    sequential_tile_s        the same tiling without Ray (deref tile --workers 1)
    gpu (--gpu, CUDA only)   extraction with the ResNet-50 trunk on one GPU, reading included:
                             patches_per_s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported


def generated_slide(path: Path, seed: int, size: tuple[int, int] = (2048, 1536)) -> Path:
    """A pyramidal 20x slide with two tissue blobs (about 20-40 patches of 256 px); the Ray tests
    use it too."""
    from deref.slides import pyramid_levels, write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - 0.5 * h) / (0.38 * h)) ** 2 + ((xx - 0.3 * w) / (0.22 * w)) ** 2 <= 1
    tissue |= ((yy - 0.5 * h) / (0.3 * h)) ** 2 + ((xx - 0.72 * w) / (0.18 * w)) ** 2 <= 1
    img = np.full((h, w, 3), 243, np.uint8)
    noise = rng.integers(0, 60, (h, w, 1))
    img[tissue] = (np.array([210, 120, 180]) - noise[tissue]).clip(0, 255).astype(np.uint8)
    return write_pyramidal_tiff(path, pyramid_levels(img), mpp=0.5, magnification=20)


def make_slides(folder: Path, n: int) -> list[Path]:
    """``n`` generated slides (:func:`generated_slide`, seeds 0 .. n-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [generated_slide(folder / f"s{i:03d}.svs", i) for i in range(n)]


def _figures(rows, wall: float) -> dict:
    worker = sum(r.seconds for r in rows)
    bad = [r.error for r in rows if r.status not in ("ok", "empty")]
    if bad:
        raise SystemExit(f"bench_scale: {len(bad)} slides failed: {bad[:2]}")
    return {
        "wall_s": round(wall, 3),
        "slides_per_s": round(len(rows) / wall, 3),
        "worker_s": round(worker, 3),
    }


def run_workers(slides: list[Path], root: Path, workers: int) -> tuple[float, dict, dict]:
    """(ray start seconds, tile figures, extract figures) on a local Ray with ``workers`` CPUs."""
    import ray

    from deref.prepare.extract import ExtractConfig, list_patch_files
    from deref.prepare.tile import TileConfig
    from deref.scale import LOCAL_ADDRESS, RayOptions
    from deref.scale.prepare import extract_slides_ray, tile_slides_ray

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, _node_ip_address=LOCAL_ADDRESS, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        opts = RayOptions(address="auto", workers=workers)
        out = root / f"w{workers}"
        t = time.perf_counter()
        tile_slides_ray(slides, out / "cold", TileConfig(), opts)  # starts the worker processes
        cold = time.perf_counter() - t
        t = time.perf_counter()
        tile_rows = tile_slides_ray(slides, out / "tiles", TileConfig(), opts)
        tile = _figures(tile_rows, time.perf_counter() - t)
        tile["cold_wall_s"] = round(cold, 3)
        files = list_patch_files(out / "tiles")
        cfg = ExtractConfig(batch_size=32, workers=0, threads=1, input_size=64)
        first: list[float] = []
        t = time.perf_counter()
        ext_rows = extract_slides_ray(
            files,
            out / "feats",
            "resnet18",
            None,
            cfg,
            opts,
            random_weights=True,
            on_dispatch=lambda *_: first.append(time.perf_counter()) if not first else None,
        )
        end = time.perf_counter()
        extract = _figures(ext_rows, end - first[0])  # from the first slide handed to a ready actor
        extract["actor_start_s"] = round(first[0] - t, 3)
        extract["patches"] = int(sum(r.patches for r in ext_rows))
    finally:
        ray.shutdown()
    return started, tile, extract


def gpu_figures(slides: list[Path], root: Path) -> dict:
    """Extraction with the ResNet-50 trunk on one GPU through one Ray actor, reading included."""
    import ray
    import torch

    from deref.prepare.extract import ExtractConfig, list_patch_files
    from deref.scale import LOCAL_ADDRESS, RayOptions
    from deref.scale.prepare import extract_slides_ray

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    ray.init(num_gpus=1, _node_ip_address=LOCAL_ADDRESS, include_dashboard=False, log_to_driver=False)
    try:
        files = list_patch_files(root / "w1" / "tiles")
        cores = os.cpu_count() or 1
        cfg = ExtractConfig(batch_size=256, workers=min(8, cores - 1), device="cuda", precision="auto")
        opts = RayOptions(address="auto", workers=1, cpus_per_worker=max(1, cores - 1))
        extract_slides_ray(
            files[:1], root / "gpu-warm", "resnet50_trunc", None, cfg, opts, random_weights=True
        )
        t = time.perf_counter()
        rows = extract_slides_ray(files, root / "gpu", "resnet50_trunc", None, cfg, opts, random_weights=True)
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    n = int(sum(r.patches for r in rows))
    return {
        "patches": n,
        "wall_s": round(wall, 3),
        "patches_per_s": round(n / wall, 1),
        "device": torch.cuda.get_device_name(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--slides", type=int, default=16, help="generated slides (default: %(default)s)")
    ap.add_argument("--gpu", action="store_true", help="also time extraction on one GPU (CUDA only)")
    args = ap.parse_args()
    import torch

    from deref.prepare.tile import TileConfig, tile_slides

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        slides = make_slides(root / "slides", args.slides)
        t = time.perf_counter()
        tile_slides(slides, root / "sequential", TileConfig(), workers=1)
        sequential = time.perf_counter() - t
        result: dict = {"slides": len(slides), "sequential_tile_s": round(sequential, 3)}
        result.update(ray_start_s={}, tile={}, extract={})
        for w in (1, 2):
            started, tile, extract = run_workers(slides, root, w)
            result["ray_start_s"][w] = round(started, 2)
            result["tile"][w], result["extract"][w] = tile, extract
            print(f"{w} worker(s): tile {tile}, extract {extract}", file=sys.stderr)
        n = len(slides)
        result["driver_overhead_ms"] = {
            k: round(1000 * (result[k][1]["wall_s"] - result[k][1]["worker_s"]) / n, 1)
            for k in ("tile", "extract")
        }
        result["scaling"] = {
            k: round(result[k][2]["slides_per_s"] / result[k][1]["slides_per_s"], 2)
            for k in ("tile", "extract")
        }
        if args.gpu:
            result["gpu"] = gpu_figures(slides, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
