"""Tiling: tissue patches of a whole-slide image at a target magnification.

For each slide, :func:`tile_slide` writes

- ``<out>/patches/<stem>.h5``: CLAM layout, ``coords`` (N, 2) int64 = (x, y) of each patch's
  top-left corner in level-0 pixels, with attrs ``patch_size`` (pixels of the patch at the
  target magnification), ``patch_level`` (the level read from), ``downsample`` (level-0
  pixels per target pixel), ``mpp`` (micrometres per target pixel), ``magnification``, and
  ``read_size`` / ``level0_size`` / ``level_downsample`` / ``slide_path`` / ``slide_mpp`` /
  ``mpp_source`` for the extractor and for provenance;
- ``<out>/qc/<stem>_thumbnail.png`` and ``<out>/qc/<stem>_mask.png`` (tissue outline and the
  kept patches drawn over the thumbnail).

:func:`tile_slides` runs a batch and never stops at a bad slide.

Resolution. The target is ``10 / magnification`` micrometres per pixel (20x = 0.5 um/px).
Level-0 resolution comes from the slide's mpp, else its objective power (``10 / power``),
else ``--mpp``. The downsample ``target_mpp / slide_mpp`` is snapped to the nearest integer
when within ``snap_tolerance`` (scanners report 0.499 or 0.2527 um/px for 20x and 40x), so
patches are read without resampling whenever the scan allows. Patches are read from the
coarsest level that is still at least as fine as the target, then resized.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deref.errors import DataError, one_line
from deref.prepare import ManifestRow
from deref.prepare.discover import MPP_AT_1X, resolve_mpp, slide_stem
from deref.prepare.tissue import TissueMask, TissueParams, overlay, tissue_mask
from deref.slides import SlideInfo, open_slide, read_rgb, slide_info

log = logging.getLogger(__name__)

PATCH_DIR = "patches"
QC_DIR = "qc"
MANIFEST_NAME = "tile_manifest.csv"


@dataclass(frozen=True)
class TileConfig:
    """How to tile. ``mpp`` overrides the slide's level-0 resolution (micrometres/pixel);
    ``min_tissue`` is the fraction of a patch the tissue mask must cover for it to be kept."""

    patch_size: int = 256
    magnification: float = 20.0
    mpp: float | None = None
    min_tissue: float = 0.5
    snap_tolerance: float = 0.05
    thumbnail_size: int = 1024
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if self.patch_size < 8:
            raise DataError(f"patch size must be >= 8 pixels, got {self.patch_size}")
        if not self.magnification > 0:
            raise DataError(f"magnification must be > 0, got {self.magnification}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise DataError(f"minimum tissue fraction must be within [0, 1], got {self.min_tissue}")


@dataclass(frozen=True)
class PatchPlan:
    """Where and how patches of one slide are read.

    A patch covers ``level0_size`` x ``level0_size`` level-0 pixels (the grid step), is read
    as ``read_size`` x ``read_size`` pixels at ``level`` and resized to ``patch_size``.
    """

    patch_size: int
    magnification: float
    downsample: float
    level: int
    level_downsample: float
    read_size: int
    level0_size: int
    mpp: float
    slide_mpp: float
    mpp_source: str


def plan_patches(info: SlideInfo, config: TileConfig) -> PatchPlan:
    """Choose the read level and sizes for ``config``'s magnification on slide ``info``.

    Raises :class:`DataError` when the slide has no usable resolution (and no ``config.mpp``)
    or was scanned coarser than the target (patches would have to be upsampled).
    """
    res = resolve_mpp(info, config.mpp)
    target_mpp = MPP_AT_1X / config.magnification
    ds = target_mpp / res.mpp
    nearest = round(ds)
    if nearest >= 1 and abs(ds - nearest) <= config.snap_tolerance * ds:
        ds = float(nearest)
    if ds < 1.0:
        scan_mag = MPP_AT_1X / res.mpp
        raise DataError(
            f"{info.path}: scanned at {res.mpp:.4g} um/px (about {scan_mag:.3g}x, from "
            f"{res.source}); {config.magnification:g}x would need upsampling; use "
            f"--magnification {scan_mag:.3g} or lower"
        )
    level = 0
    for i, lds in enumerate(info.level_downsamples):
        if lds <= ds * (1.0 + 1e-3):
            level = i
    level_ds = info.level_downsamples[level]
    level0_size = int(round(config.patch_size * ds))
    read_size = max(1, int(round(level0_size / level_ds)))
    return PatchPlan(
        patch_size=config.patch_size,
        magnification=float(config.magnification),
        downsample=ds,
        level=level,
        level_downsample=level_ds,
        read_size=read_size,
        level0_size=level0_size,
        mpp=res.mpp * ds,
        slide_mpp=res.mpp,
        mpp_source=res.source,
    )


def slide_bounds(slide) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the scanned area in level-0 pixels (``openslide.bounds-*``
    where the format records them, e.g. MRXS; else the whole level 0)."""
    props = slide.properties
    w, h = slide.dimensions
    try:
        bx = int(props.get("openslide.bounds-x", 0))
        by = int(props.get("openslide.bounds-y", 0))
        bw = int(props.get("openslide.bounds-width", w))
        bh = int(props.get("openslide.bounds-height", h))
    except ValueError:
        return 0, 0, w, h
    return bx, by, bw, bh


def grid_coords(
    mask: np.ndarray,
    scale: tuple[float, float],
    step: int,
    bounds: tuple[int, int, int, int],
    min_tissue: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (N, 2) = (x, y), level-0 pixels, of the grid cells to keep, and each
    kept cell's tissue fraction (N,).

    ``mask`` (H, W) covers level 0 at ``scale = (sx, sy)`` level-0 pixels per mask pixel; the
    grid has step ``step`` and only whole cells inside ``bounds = (x, y, w, h)``. Vectorized
    with a summed-area table: cost is one cumulative sum of the mask plus O(cells).
    """
    bx, by, bw, bh = bounds
    nx, ny = bw // step, bh // step
    if nx <= 0 or ny <= 0 or mask.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    sx, sy = scale
    mh, mw = mask.shape
    sat = np.zeros((mh + 1, mw + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    x0 = bx + np.arange(nx, dtype=np.int64) * step
    y0 = by + np.arange(ny, dtype=np.int64) * step
    xl = np.clip(np.floor(x0 / sx + 0.5).astype(np.int64), 0, mw)
    xh = np.clip(np.floor((x0 + step) / sx + 0.5).astype(np.int64), 0, mw)
    yl = np.clip(np.floor(y0 / sy + 0.5).astype(np.int64), 0, mh)
    yh = np.clip(np.floor((y0 + step) / sy + 0.5).astype(np.int64), 0, mh)
    xh = np.maximum(xh, np.minimum(xl + 1, mw))
    yh = np.maximum(yh, np.minimum(yl + 1, mh))
    area = (yh - yl)[:, None] * (xh - xl)[None, :]
    total = sat[yh][:, xh] - sat[yl][:, xh] - sat[yh][:, xl] + sat[yl][:, xl]
    frac = np.where(area > 0, total / np.maximum(area, 1), 0.0)
    keep = frac >= min_tissue if min_tissue > 0 else frac > 0
    iy, ix = np.nonzero(keep)  # row-major: y first, then x
    coords = np.stack([x0[ix], y0[iy]], axis=1)
    return coords, frac[iy, ix]


def read_downsampled(slide, downsample: float, *, chunk: int = 4096) -> np.ndarray:
    """The whole slide as an RGB array at ``downsample`` level-0 pixels per output pixel.

    Reads the best level in chunks (block-averaged by the integer part of the remaining
    factor, then resized), so a slide without a pyramid never needs its full level in memory.
    """
    from PIL import Image

    w0, h0 = slide.dimensions
    out_w = max(1, int(math.ceil(w0 / downsample)))
    out_h = max(1, int(math.ceil(h0 / downsample)))
    level = slide.get_best_level_for_downsample(downsample)
    lw, lh = slide.level_dimensions[level]
    lds = slide.level_downsamples[level]
    f = max(1, int(downsample / lds))
    step = max(f, (chunk // f) * f)
    rw, rh = int(math.ceil(lw / f)), int(math.ceil(lh / f))
    reduced = np.empty((rh, rw, 3), np.uint8)
    for y in range(0, lh, step):
        for x in range(0, lw, step):
            cw, ch = min(step, lw - x), min(step, lh - y)
            rgb = read_rgb(slide, (int(round(x * lds)), int(round(y * lds))), level, (cw, ch))
            if f > 1:
                # PIL's reduce averages f x f blocks (a partial last block over what it has).
                rgb = np.asarray(Image.fromarray(rgb).reduce(f))
            reduced[y // f : y // f + rgb.shape[0], x // f : x // f + rgb.shape[1]] = rgb
    if reduced.shape[:2] == (out_h, out_w):
        return reduced
    return np.asarray(Image.fromarray(reduced).resize((out_w, out_h), Image.Resampling.BOX))


@dataclass
class TileResult:
    """The outcome of tiling one slide."""

    slide: Path
    h5: Path
    coords: np.ndarray
    plan: PatchPlan
    tissue: TissueMask
    thumbnail: Path
    mask_png: Path
    seconds: float


def output_paths(slide: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(patches .h5, thumbnail PNG, mask overlay PNG) that tiling ``slide`` writes."""
    out_dir = Path(out_dir)
    stem = slide_stem(slide)
    return (
        out_dir / PATCH_DIR / f"{stem}.h5",
        out_dir / QC_DIR / f"{stem}_thumbnail.png",
        out_dir / QC_DIR / f"{stem}_mask.png",
    )


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(img).save(tmp, format="PNG", compress_level=1)  # QC pictures: speed over size
    os.replace(tmp, path)


def _draw_patches(img: np.ndarray, coords: np.ndarray, step: int, scale: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    size = step / scale
    for x, y in coords / scale:
        draw.rectangle([x, y, x + size, y + size], outline=(20, 60, 220))
    return np.asarray(pil)


def _mask_scales(info: SlideInfo, plan: PatchPlan, config: TileConfig) -> tuple[float, float]:
    """Level-0 pixels per pixel of the tissue mask and of the QC thumbnail.

    The mask is at about ``tissue.mask_mpp``, with at least 4 mask pixels across a patch and at
    most 8192 pixels on the long side.
    """
    w0, h0 = info.dimensions
    d_mask = config.tissue.mask_mpp / plan.slide_mpp
    d_mask = min(d_mask, plan.level0_size / 4.0)
    d_mask = max(1.0, d_mask, max(w0, h0) / 8192.0)
    return d_mask, max(1.0, max(w0, h0) / config.thumbnail_size)


def _mask_and_thumbnail(
    slide, info: SlideInfo, plan: PatchPlan, config: TileConfig
) -> tuple[TissueMask, np.ndarray, float]:
    """``(tissue mask, QC thumbnail (h, w, 3) uint8, thumbnail downsample)`` from one
    downsampled read of the slide."""
    from PIL import Image

    w0, h0 = info.dimensions
    d_mask, d_thumb = _mask_scales(info, plan, config)
    try:
        base = read_downsampled(slide, min(d_mask, d_thumb))
    except Exception as exc:  # noqa: BLE001 - any decoder failure
        raise DataError(f"{info.path}: cannot read pixels for the tissue mask: {one_line(exc)}") from exc

    def resized(d: float) -> np.ndarray:
        size = (max(1, int(math.ceil(w0 / d))), max(1, int(math.ceil(h0 / d))))
        if size == (base.shape[1], base.shape[0]):
            return base
        return np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BOX))

    tm = tissue_mask(resized(d_mask), plan.slide_mpp * d_mask, config.tissue)
    return tm, resized(d_thumb), d_thumb


def _patch_attrs(path: Path, info: SlideInfo, plan: PatchPlan, config: TileConfig, tm: TissueMask) -> dict:
    """The attributes of a patch file (see the module docstring)."""
    return {
        "patch_size": plan.patch_size,
        "patch_level": plan.level,
        "downsample": plan.downsample,
        "mpp": plan.mpp,
        "magnification": plan.magnification,
        "read_size": plan.read_size,
        "level0_size": plan.level0_size,
        "level_downsample": plan.level_downsample,
        "slide_mpp": plan.slide_mpp,
        "mpp_source": plan.mpp_source,
        "slide_path": str(path.resolve()),
        "slide_name": path.name,
        "slide_dimensions": np.asarray(info.dimensions, np.int64),
        "vendor": info.vendor,
        "min_tissue": config.min_tissue,
        "tissue_threshold": tm.threshold,
        "tissue_fraction": tm.fraction,
        "tissue_params": json.dumps(config.tissue.to_dict()),
    }


def tile_slide(
    slide_path: str | os.PathLike, out_dir: str | os.PathLike, config: TileConfig | None = None
) -> TileResult:
    """Tile one slide into ``out_dir`` (see the module docstring for what is written).

    Raises :class:`DataError` (one line, naming the file) when the slide cannot be opened or
    read or has no usable resolution.
    """
    from deref.data.bags import write_bag_h5

    config = config or TileConfig()
    t0 = time.perf_counter()
    path = Path(slide_path)
    h5_path, thumb_path, mask_path = output_paths(path, out_dir)
    slide = open_slide(path)
    try:
        info = slide_info(slide, path)
        plan = plan_patches(info, config)
        tm, thumb, d_thumb = _mask_and_thumbnail(slide, info, plan, config)
        scale = (info.dimensions[0] / tm.mask.shape[1], info.dimensions[1] / tm.mask.shape[0])
        coords, _ = grid_coords(tm.mask, scale, plan.level0_size, slide_bounds(slide), config.min_tissue)
    finally:
        slide.close()
    write_bag_h5(h5_path, None, coords, _patch_attrs(path, info, plan, config, tm))
    _save_png(thumb, thumb_path)
    _save_png(_draw_patches(overlay(thumb, tm.mask), coords, plan.level0_size, d_thumb), mask_path)
    seconds = time.perf_counter() - t0
    log.info("%s: %d patches (%.1f%% tissue) in %.2f s", path.name, len(coords), 100 * tm.fraction, seconds)
    return TileResult(path, h5_path, coords, plan, tm, thumb_path, mask_path, seconds)


def count_patches(h5_path: str | os.PathLike) -> int | None:
    """Number of coordinates in a finished patch file, or None when it is not readable."""
    import h5py

    try:
        with h5py.File(h5_path, "r") as f:
            return int(f["coords"].shape[0])
    except Exception:  # noqa: BLE001 - unreadable means "not finished"
        return None


def tile_one(
    slide_path: str | os.PathLike, out_dir: str | os.PathLike, config: TileConfig, overwrite: bool = False
) -> ManifestRow:
    """Tile one slide and report the outcome as a manifest row; never raises for a bad slide."""
    t0 = time.perf_counter()
    path = Path(slide_path)
    h5_path = output_paths(path, out_dir)[0]
    if not overwrite and h5_path.exists():
        n = count_patches(h5_path)
        if n is not None:
            return ManifestRow(str(path), "skipped", n, 0.0, "", str(h5_path))
    try:
        res = tile_slide(path, out_dir, config)
    except DataError as exc:
        return ManifestRow(str(path), "failed", 0, time.perf_counter() - t0, one_line(exc))
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
        log.debug("unexpected failure on %s:\n%s", path, traceback.format_exc())
        return ManifestRow(
            str(path), "failed", 0, time.perf_counter() - t0, f"{path}: {type(exc).__name__}: {one_line(exc)}"
        )
    status = "ok" if len(res.coords) else "empty"
    error = "" if len(res.coords) else f"{path}: no patch with >= {config.min_tissue:g} tissue"
    return ManifestRow(str(path), status, len(res.coords), res.seconds, error, str(res.h5))


def tile_slides(
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: TileConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """Tile ``slides`` into ``out_dir`` with ``workers`` processes; one row per slide, in the
    order given. Slides whose patch file exists are skipped unless ``overwrite``."""
    config = config or TileConfig()
    rows: dict[int, ManifestRow] = {}
    if workers <= 1 or len(slides) <= 1:
        for i, s in enumerate(slides):
            rows[i] = tile_one(s, out_dir, config, overwrite)
            if on_result:
                on_result(rows[i])
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(slides))) as pool:
            futures = {pool.submit(tile_one, s, out_dir, config, overwrite): i for i, s in enumerate(slides)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    rows[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker (out of memory, ...)
                    rows[i] = ManifestRow(
                        str(slides[i]), "failed", 0, 0.0, f"{slides[i]}: worker crashed: {one_line(exc)}"
                    )
                if on_result:
                    on_result(rows[i])
    return [rows[i] for i in range(len(slides))]
