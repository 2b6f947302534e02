"""``deref tile``: tissue masks and patch coordinates for a batch of whole-slide images."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  deref tile slides/ --out prep/blca
  deref tile a.svs b.ndpi c.mrxs --out prep/blca --magnification 20 --patch-size 256
  deref tile scans/ --out prep/x --mpp 0.25            # files without resolution metadata
  deref tile slides/ --out prep/blca --min-tissue 0.25 --no-pen-filter --workers 4
  deref tile slides/ --out /shared/prep/blca --ray auto     # one Ray task per slide (see --ray)

output (per slide <stem>):
  OUT/patches/<stem>.h5          coords (N, 2) = level-0 (x, y) of each patch's corner;
                                 attrs patch_size, patch_level, downsample, mpp, magnification
  OUT/qc/<stem>_thumbnail.png    thumbnail
  OUT/qc/<stem>_mask.png         tissue outline (green) and kept patches (blue) over it
  OUT/tile_manifest.csv          slide, status (ok/skipped/empty/failed), patches, seconds, error

Slides whose patch file exists are skipped (--overwrite redoes them). A slide that cannot be
opened or read, or has no resolution metadata (and no --mpp), is reported on one line and
the others go on. Then deref extract --patches OUT/patches ... computes features.

exit status: 0 every slide tiled (or skipped, or without tissue); 1 nothing could run
(bad arguments, no slide found); 3 finished, but some slides failed (see the manifest).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tile",
        help="tissue masks + patch coordinates for whole-slide images",
        description="Detect tissue on each slide and lay non-overlapping patches over it at a "
        "target magnification; write CLAM-layout patch files, QC pictures and a manifest.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR", help="slide files and/or folders of slides")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    _add_patch_options(p.add_argument_group("patches"))
    _add_tissue_options(p.add_argument_group("tissue mask"))
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="slides tiled in parallel (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo slides whose patch file exists")
    from deref.scale import add_ray_options

    add_ray_options(p)
    p.set_defaults(func=run)


def _add_patch_options(g) -> None:
    """Patch size, magnification, resolution and tissue fraction options."""
    g.add_argument(
        "--patch-size",
        type=int,
        default=256,
        metavar="PX",
        help="patch side at the target magnification (default: %(default)s)",
    )
    g.add_argument(
        "--magnification",
        type=float,
        default=20.0,
        metavar="X",
        help="target magnification; 20x = 0.5 um/px (default: %(default)s)",
    )
    g.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="level-0 micrometres per pixel, overriding the slide's metadata",
    )
    g.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        metavar="F",
        help="keep patches at least this fraction tissue (default: %(default)s)",
    )


def _add_tissue_options(t) -> None:
    """Tissue mask options (deref.prepare.tissue.TissueParams)."""
    t.add_argument(
        "--saturation-threshold",
        type=float,
        metavar="S",
        help="fixed saturation threshold 0-255 (default: Otsu, clipped to [12, 40])",
    )
    t.add_argument(
        "--min-area",
        type=float,
        default=20000.0,
        metavar="UM2",
        help="drop tissue pieces smaller than this, um^2 (default: %(default)g)",
    )
    t.add_argument(
        "--max-hole",
        type=float,
        default=5000.0,
        metavar="UM2",
        help="fill holes smaller than this, um^2 (default: %(default)g)",
    )
    t.add_argument(
        "--no-pen-filter", action="store_true", help="keep green/blue/cyan ink (it is excluded by default)"
    )
    t.add_argument(
        "--mask-mpp",
        type=float,
        default=8.0,
        metavar="UM",
        help="resolution of the tissue mask, um/px (default: %(default)g)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from deref.prepare import exit_status, summarize, write_manifest
    from deref.prepare.discover import discover_slides
    from deref.prepare.tile import MANIFEST_NAME, TileConfig, tile_slides
    from deref.prepare.tissue import TissueParams
    from deref.scale import options_from_args

    tissue = TissueParams(
        saturation_threshold=args.saturation_threshold,
        min_tissue_area_um2=args.min_area,
        max_hole_area_um2=args.max_hole,
        pen_filter=not args.no_pen_filter,
        mask_mpp=args.mask_mpp,
    )
    config = TileConfig(
        patch_size=args.patch_size,
        magnification=args.magnification,
        mpp=args.mpp,
        min_tissue=args.min_tissue,
        tissue=tissue,
    )
    slides = discover_slides(args.inputs, recursive=args.recursive)
    out = Path(args.out)
    t0 = time.perf_counter()
    with logging_redirect_tqdm(), tqdm(total=len(slides), unit="slide", desc="tile", disable=None) as bar:

        def on_result(row) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{Path(row.item).name}: {row.status}", refresh=False)
            if row.status == "failed":
                tqdm.write(f"deref tile: {row.error}", file=sys.stderr)

        options = options_from_args(args)
        if options is not None:
            from deref.scale.prepare import tile_slides_ray

            rows = tile_slides_ray(
                slides, out, config, options, overwrite=args.overwrite, on_result=on_result
            )
        else:
            rows = tile_slides(
                slides, out, config, workers=args.workers, overwrite=args.overwrite, on_result=on_result
            )
    manifest = write_manifest(out / MANIFEST_NAME, rows)
    print(f"deref tile: {summarize(rows)} (wall {time.perf_counter() - t0:.1f} s); manifest {manifest}")
    return exit_status(rows)
