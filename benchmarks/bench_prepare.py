"""Speed of the preparation pipeline: tiling, patch reading, feature extraction.

    python benchmarks/bench_prepare.py            # human-readable lines
    python benchmarks/bench_prepare.py --json     # ... and one JSON object as the last line

A generated Aperio-like pyramidal TIFF (45,056 x 45,056 pixels at 0.5 um/px, 3 levels, JPEG
tiles; a 36,864-pixel square of textured "tissue" on white) is written to a temporary folder
from a few pre-encoded tiles, so generating it takes seconds. It holds 20,736 tissue patches
at 20x, 256 px. Figures (printed, not asserted):

- ``tile_s_20000``: seconds for ``tile_slide`` on it (mask, coordinates, .h5, QC pictures);
  ``grid_s_20000``: the coordinate computation alone; ``tile_patches_per_s``;
- ``read_patches_per_s``: 256 x 256 level-0 ``read_region`` calls per second with one
  process per core (``read_patches_per_s_1proc``: one process; ``read_efficiency``: the
  ratio of the two, divided by the number of cores);
- ``loader_patches_per_s``: the extractor's DataLoader alone (read, resize to 224, collate);
- ``extract_patches_per_s``: ``extract_features`` with the default backbone on CPU, batch 64;
  ``backbone_patches_per_s``: the backbone alone on ready tensors, with the same torch
  threads (``..._all_threads``: one thread per core, no reader). Extraction is FLOP-bound
  when these are close and far below the reading rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

TILE = 256
LEVEL0 = 45056  # 176 tiles
TISSUE = (4096, 40960)  # level-0 square of tissue, aligned to tiles at every level
DOWNSAMPLES = (1, 4, 16)
MPP = 0.5


def _tiles(rng: np.random.Generator, n: int = 16) -> list[np.ndarray]:
    """H&E-like textured tiles: pink stroma, purple nuclei, noise."""
    out = []
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    for _ in range(n):
        t = np.empty((TILE, TILE, 3), np.float32)
        t[:] = (226, 150, 190)
        for _ in range(60):
            cy, cx, r = rng.integers(0, TILE, 2).tolist() + [int(rng.integers(3, 8))]
            t[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (120, 70, 160)
        t += rng.normal(0, 8, t.shape)
        out.append(t.clip(0, 255).astype(np.uint8))
    return out


def write_big_slide(path: Path, seed: int = 0) -> Path:
    """The benchmark slide (see the module docstring), from pre-encoded JPEG tiles."""
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(seed)
    tissue = [imagecodecs.jpeg_encode(t, level=85) for t in _tiles(rng)]
    white = imagecodecs.jpeg_encode(np.full((TILE, TILE, 3), 243, np.uint8), level=85)
    desc = (
        f"Aperio Image Library v10.0.0\n{LEVEL0}x{LEVEL0} [0,0 {LEVEL0}x{LEVEL0}] ({TILE}x{TILE}) "
        f"JPEG/RGB Q=85|AppMag = 20|MPP = {MPP}"
    )

    def level_tiles(ds: int):
        n = LEVEL0 // ds // TILE
        lo, hi = TISSUE[0] // ds // TILE, TISSUE[1] // ds // TILE
        for ty in range(n):
            for tx in range(n):
                inside = lo <= ty < hi and lo <= tx < hi
                yield tissue[(ty * 7 + tx) % len(tissue)] if inside else white

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, ds in enumerate(DOWNSAMPLES):
            size = LEVEL0 // ds
            tif.write(
                level_tiles(ds),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                subfiletype=1 if i else 0,
                description=desc,
                metadata=None,
            )
            if i == 0:
                thumb = np.full((256, 256, 3), 243, np.uint8)
                a, b = TISSUE[0] * 256 // LEVEL0, TISSUE[1] * 256 // LEVEL0
                thumb[a:b, a:b] = (200, 120, 180)
                tif.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    description=desc + "\nthumbnail",
                    metadata=None,
                )
    return path


# ---------------------------------------------------------------------------------- reading
_SLIDE = None


def _open(path: str) -> None:
    global _SLIDE
    from deref.slides import open_slide

    _SLIDE = open_slide(path, check_pixels=False)


def _read_chunk(coords: np.ndarray) -> int:
    for x, y in coords:
        np.asarray(_SLIDE.read_region((int(x), int(y)), 0, (TILE, TILE)))
    return len(coords)


def bench_read(path: Path, coords: np.ndarray, processes: int) -> tuple[float, float]:
    """(patches/s with ``processes`` processes, patches/s with one)."""
    _open(str(path))
    _read_chunk(coords[:20])
    n1 = min(len(coords), 400)
    t0 = time.perf_counter()
    _read_chunk(coords[:n1])
    one = n1 / (time.perf_counter() - t0)
    ctx = get_context("fork") if "fork" in get_all_start_methods() else get_context()
    with ctx.Pool(processes, initializer=_open, initargs=(str(path),)) as pool:
        pool.map(_read_chunk, np.array_split(coords[:40], processes))  # warm up
        chunks = np.array_split(coords, processes * 8)
        t0 = time.perf_counter()
        n = sum(pool.map(_read_chunk, chunks, chunksize=1))
        many = n / (time.perf_counter() - t0)
    return many, one


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--read-patches", type=int, default=3000, help="patches read per reading figure")
    ap.add_argument("--extract-patches", type=int, default=128, help="patches through the backbone")
    ap.add_argument("--skip-extract", action="store_true", help="tiling and reading only")
    args = ap.parse_args(argv)

    import torch

    from deref.prepare.tile import TileConfig, grid_coords, tile_slide

    cores = os.cpu_count() or 1
    res: dict = {"cores": cores, "python": platform.python_version(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        slide = write_big_slide(tmp / "big.svs")
        res["generate_slide_s"] = round(time.perf_counter() - t0, 2)
        res["slide_mb"] = round(slide.stat().st_size / 1e6, 1)

        tile_slide(slide, tmp / "warm", TileConfig())  # warm the file cache and imports
        t0 = time.perf_counter()
        tiled = tile_slide(slide, tmp / "tiles", TileConfig())
        tile_s = time.perf_counter() - t0
        n = len(tiled.coords)
        res["tile_patches"] = n
        res["tile_s_20000"] = round(tile_s * 20000 / n, 3)
        res["tile_patches_per_s"] = round(n / tile_s, 1)
        mask = tiled.tissue.mask
        scale = (LEVEL0 / mask.shape[1], LEVEL0 / mask.shape[0])
        t0 = time.perf_counter()
        coords, _ = grid_coords(mask, scale, 256, (0, 0, LEVEL0, LEVEL0), 0.5)
        res["grid_s_20000"] = round((time.perf_counter() - t0) * 20000 / len(coords), 4)
        print(f"tiling: {n} patches in {tile_s:.2f} s (mask + coordinates + .h5 + QC PNGs)", file=sys.stderr)

        rng = np.random.default_rng(1)
        sample = tiled.coords[rng.permutation(n)[: args.read_patches]]
        many, one = bench_read(slide, sample, cores)
        res["read_patches_per_s"] = round(many, 1)
        res["read_patches_per_s_1proc"] = round(one, 1)
        res["read_ms_per_patch_1proc"] = round(1000 / one, 3)
        res["read_efficiency"] = round(many / (one * cores), 3)
        print(f"reading: {many:.0f}/s with {cores} processes, {one:.0f}/s with one", file=sys.stderr)

        from deref.prepare.extract import ExtractConfig, PatchDataset, _collate

        ds = PatchDataset(slide, sample, 0, 256, 224)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=64, num_workers=cores, collate_fn=_collate, prefetch_factor=4
        )
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        m = sum(len(b) for b, _ in it)
        res["loader_patches_per_s"] = round(m / (time.perf_counter() - t0), 1)
        del it, loader
        print(
            f"loader: {res['loader_patches_per_s']:.0f}/s (read + resize to 224 + collate)", file=sys.stderr
        )

        if not args.skip_extract:
            from deref.prepare.backbones import build_backbone
            from deref.prepare.extract import extract_features

            model = build_backbone("resnet50_trunc", random_weights=True)  # same FLOPs as pretrained
            config = ExtractConfig(batch_size=64, workers=1, input_size=224)
            res["extract_threads"] = config.threads or max(1, cores - config.workers)
            torch.set_num_threads(res["extract_threads"])
            x = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8)
            with torch.inference_mode():
                model(x[:8])  # warm up
                t0 = time.perf_counter()
                model(x)
                res["backbone_patches_per_s"] = round(64 / (time.perf_counter() - t0), 2)
            if cores > 1:
                torch.set_num_threads(cores)
                with torch.inference_mode():
                    model(x[:8])
                    t0 = time.perf_counter()
                    model(x)
                    res["backbone_patches_per_s_all_threads"] = round(64 / (time.perf_counter() - t0), 2)
                torch.set_num_threads(res["extract_threads"])
            k = args.extract_patches
            ds = PatchDataset(slide, sample[:k], 0, 256, 224)
            t0 = time.perf_counter()
            feats = extract_features(ds, model, config, torch.device("cpu"))
            res["extract_patches_per_s"] = round(k / (time.perf_counter() - t0), 2)
            res["extract_dim"] = int(feats.shape[1])
            res["extract_over_loader"] = round(res["extract_patches_per_s"] / res["loader_patches_per_s"], 4)
            print(
                f"extraction: {res['extract_patches_per_s']:.1f}/s, backbone alone {res['backbone_patches_per_s']:.1f}/s "
                f"({res['extract_threads']} torch threads + 1 reader)",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(res))
    else:
        for key, value in res.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
