"""``deref extract``: patch features for tiled slides, resumable and shardable."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  deref extract --patches prep/blca --weights resnet50-0676ba61.pth --out features/blca
  deref extract --patches prep/blca/patches --backbone resnet50_trunc \\
      --weights resnet50.safetensors --out features/blca --batch-size 128 --dtype float16
  # four machines (or a SLURM array 1-4) sharing one output folder:
  deref extract --patches prep/blca --weights w.pth --out features/blca --shard $SLURM_ARRAY_TASK_ID/4
  # a Ray cluster: one actor per GPU (or per CPU share) holding the backbone
  deref extract --patches /shared/prep/blca --weights w.pth --out /shared/features/blca --ray auto
  deref extract --list-backbones
  deref extract --patches prep/demo --random-weights --out /tmp/smoke   # smoke test only

output: OUT/<stem>.h5 with features (N, dim) beside the patch file's coords and attrs, plus
backbone, weights_file, weights_sha256, unusable_for_science; OUT/extract_manifest.csv
(extract_manifest.shard-K-of-N.csv with --shard).

Weights are never downloaded: --weights takes a local torchvision-format state dict (.pth,
.pt or .safetensors) and is checked key by key. --random-weights runs without them, warns,
and marks every bag unusable_for_science=True.

Resuming: bags are written under a temporary name and renamed when complete; a rerun skips
slides whose bag is complete, so a killed run is finished by running the same command again.
--shard K/N (K = 1..N) deals the sorted slide list round-robin: N runs cover it exactly once.

exit status: 0 every slide extracted (or skipped, or without patches); 1 nothing could run
(bad arguments, weights that do not fit, no patch files); 3 finished, but some slides
failed (see the manifest).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="patch features for tiled slides (resumable, shardable)",
        description="Read the patches listed by `deref tile`, run a pretrained backbone on them "
        "and store the features beside the coordinates, one .h5 bag per slide.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--patches", metavar="DIR", help="output folder of `deref tile` (or its patches/ folder)")
    p.add_argument("--out", metavar="DIR", help="folder for the feature bags")
    p.add_argument(
        "--backbone",
        default="resnet50_trunc",
        metavar="NAME",
        help="registry name (default: %(default)s; see --list-backbones)",
    )
    w = p.add_mutually_exclusive_group()
    w.add_argument(
        "--weights", metavar="FILE", help="local torchvision-format state dict (.pth/.pt/.safetensors)"
    )
    w.add_argument(
        "--random-weights",
        action="store_true",
        help="no pretrained weights: smoke tests only, output marked unusable",
    )
    p.add_argument("--slides", metavar="DIR", help="folder holding the slides, if they moved since tiling")
    p.add_argument("--shard", metavar="K/N", help="process only part K of N of the slide list (K = 1..N)")
    _add_compute_options(p)
    p.add_argument("--overwrite", action="store_true", help="redo slides whose bag exists")
    p.add_argument("--list-backbones", action="store_true", help="list the registered backbones and exit")
    from deref.scale import add_ray_options

    add_ray_options(p)
    p.set_defaults(func=run)


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    """Batching, readers, threads, device, precision and stored dtype."""
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="(default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="patch-reading processes; 0 reads in the main process (default: 1 on CPU, where "
        "the backbone's FLOPs are the bottleneck; min(8, cores) with CUDA)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: cores not used by --workers, at least 1)",
    )
    p.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="auto (CUDA when present), cpu, cuda, cuda:1 ... (default: %(default)s)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="compute precision; auto = bf16/fp16 on CUDA, fp32 on CPU",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16"),
        help="stored feature type (default: %(default)s)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        metavar="PX",
        help="resize patches to this size for the backbone (default: the backbone's, 224)",
    )


def _config(args: argparse.Namespace):
    """The ``ExtractConfig`` of the arguments (readers by device when --workers is not given)."""
    from deref.prepare.extract import ExtractConfig, default_workers, resolve_device

    if args.workers is not None:
        workers = args.workers
    elif getattr(args, "ray", None):
        workers = 0  # a Ray worker reads its slide itself; its CPUs are its share of the node
    else:
        workers = default_workers(resolve_device(args.device))
    return ExtractConfig(
        batch_size=args.batch_size,
        workers=workers,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
        input_size=args.input_size,
        overwrite=args.overwrite,
        slide_dir=Path(args.slides) if args.slides else None,
    )


def _patch_files(args: argparse.Namespace) -> tuple[list[Path], str]:
    """The patch files to extract (this shard's with --shard) and the manifest's name."""
    from deref.prepare.discover import parse_shard, shard
    from deref.prepare.extract import MANIFEST_NAME, list_patch_files

    files = list_patch_files(args.patches)
    if not args.shard:
        return files, MANIFEST_NAME
    k, n = parse_shard(args.shard)
    mine = shard(files, k, n, key=lambda p: p.stem)
    print(f"deref extract: shard {k}/{n}: {len(mine)} of {len(files)} slides", file=sys.stderr)
    return mine, f"extract_manifest.shard-{k}-of-{n}.csv"


def _extract_with_progress(files, out: Path, model, config) -> list:
    """``extract_slides`` with a slide bar and a per-slide patch bar; failures on stderr."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from deref.prepare.extract import extract_slides

    with logging_redirect_tqdm():
        slides_bar = tqdm(total=len(files), unit="slide", desc="extract", disable=None)
        patch_bar = None

        def on_slide(name: str, n: int) -> None:
            nonlocal patch_bar
            if patch_bar is not None:
                patch_bar.close()
            patch_bar = tqdm(total=n, unit="patch", desc=name[:30], leave=False, disable=None)

        def on_batch(n: int) -> None:
            if patch_bar is not None:
                patch_bar.update(n)

        def on_result(row) -> None:
            slides_bar.update(1)
            if row.status == "failed":
                tqdm.write(f"deref extract: {row.error}", file=sys.stderr)

        try:
            return extract_slides(
                files, out, model, config, on_slide=on_slide, on_batch=on_batch, on_result=on_result
            )
        finally:
            if patch_bar is not None:
                patch_bar.close()
            slides_bar.close()


def _extract_on_ray(files, out: Path, args: argparse.Namespace, config, options) -> list:
    """``extract_slides_ray`` with a slide bar; failures on stderr."""
    from tqdm import tqdm

    from deref.scale.prepare import extract_slides_ray

    with tqdm(total=len(files), unit="slide", desc="extract (ray)", disable=None) as bar:

        def on_result(row) -> None:
            bar.update(1)
            if row.status == "failed":
                tqdm.write(f"deref extract: {row.error}", file=sys.stderr)

        return extract_slides_ray(
            files,
            out,
            args.backbone,
            args.weights,
            config,
            options,
            random_weights=args.random_weights,
            on_result=on_result,
        )


def run(args: argparse.Namespace) -> int:
    from deref.errors import DataError

    if args.list_backbones:
        from deref.prepare.backbones import BACKBONES

        for spec in BACKBONES.values():
            print(f"{spec.name:16s} dim {spec.dim:5d}  input {spec.input_size}px  {spec.description}")
        return 0
    if not args.patches or not args.out:
        raise DataError("--patches and --out are required (see deref extract --help)")

    from deref.prepare import exit_status, summarize, write_manifest
    from deref.prepare.backbones import build_backbone
    from deref.scale import options_from_args

    config = _config(args)
    files, manifest_name = _patch_files(args)
    if args.random_weights:
        print(
            "deref extract: WARNING: --random-weights: features from an untrained network are "
            "UNUSABLE FOR SCIENCE; every bag is marked unusable_for_science=True",
            file=sys.stderr,
        )
    model = build_backbone(
        args.backbone, args.weights, random_weights=args.random_weights
    )  # checks the weights
    out = Path(args.out)
    t0 = time.perf_counter()
    options = options_from_args(args)
    if options is not None:
        rows = _extract_on_ray(files, out, args, config, options)
    else:
        rows = _extract_with_progress(files, out, model, config)
    manifest = write_manifest(out / manifest_name, rows)
    print(f"deref extract: {summarize(rows)} (wall {time.perf_counter() - t0:.1f} s); manifest {manifest}")
    return exit_status(rows)
