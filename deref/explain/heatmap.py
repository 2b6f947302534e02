"""Patch scores drawn over a WSI thumbnail (or a blank canvas), and the pixel -> patch map.

``render_heatmap`` turns one score per patch (attention, an attribution) into an RGBA image for
the dashboard's attention page, plus the arrays needed to answer a click (``patch_index``) and
to draw a colour bar (``norm_range``). Everything is vectorized: there is no Python loop over
patches (20,000 patches onto a 2,048-px thumbnail: ~70 ms of CPU on one core; see
``benchmarks/bench_explain.py``).

Geometry
--------
``coords`` are level-0 pixel (x, y) top-left corners, and the patch size used here is its
level-0 extent (a 256-px patch read at a level with downsample 4 covers 1,024 level-0 px: pass
``patch_size=1024``, or ``patch_size=256, patch_level=1, downsample=4.0``). The canvas of
``W x H`` pixels shows the whole level-0 image of ``W0 x H0`` pixels, so the scale is taken per
axis, ``sx = W / W0`` and ``sy = H / H0`` (a thumbnail's size rarely divides the slide's evenly,
so the two differ slightly).

A canvas pixel belongs to a patch when the pixel's **centre** lies inside the patch's half-open
level-0 rectangle ``[x, x + w) x [y, y + h)``. Pixel column ``i`` has its centre at level-0
``(i + 0.5) / sx``, so the patch covers the half-open column range::

    x_start = ceil(x * sx - 0.5)        x_end = ceil((x + w) * sx - 0.5)

(and the same in y with ``sy``), computed in float64 and clipped to the canvas. Because the end
of one patch is given by the same expression as the start of its right-hand neighbour
(``x + w`` is the neighbour's ``x``), patches that tile the slide tile the canvas: no gap and no
pixel counted twice, whatever the ratio between the two sizes. A patch smaller than a canvas
pixel may contain no pixel centre; it then covers the single pixel that holds its own centre,
``floor((x + w / 2) * sx)`` (clipped to the canvas), so that every patch is drawn and can be
clicked. (The one exception: a patch hanging off the slide's edge whose part on the canvas is a
sliver holding no pixel centre covers nothing.) Scores are accumulated in fixed point (2**-32),
so averages are exact to ~1e-9 and the same whatever the number of patches.

Values and colours
------------------
Each patch's score is first normalized to [0, 1] (``normalize_scores``), then averaged over the
patches covering each pixel (overlapping patches are averaged, as in CLAM), optionally smoothed,
thresholded, coloured with a matplotlib colormap and alpha-blended onto the thumbnail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from deref.errors import InputError

Normalization = Literal["percentile", "raw", "clip"]
IndexPriority = Literal["last", "score"]

DEFAULT_THUMBNAIL_SIZE = 2048

__all__ = [
    "HeatmapResult",
    "canvas_size",
    "normalize_scores",
    "patch_boxes",
    "pixel_to_patch",
    "render_heatmap",
]


@dataclass(frozen=True, eq=False)
class HeatmapResult:
    """What ``render_heatmap`` returns; ``H x W`` is the canvas (thumbnail) size.

    Attributes
    ----------
    rgba : (H, W, 4) uint8
        The heatmap blended onto the thumbnail (or the blank canvas); alpha is 255 everywhere.
    overlay : (H, W) float32
        The normalized score map in [0, 1] that is coloured: the mean of the normalized scores
        of the patches covering each pixel, smoothed when ``smooth_sigma > 0``; NaN where no
        patch covers the pixel. The threshold is not applied to it (see ``shown``). Averages
        are accumulated in fixed point (steps of 2**-32).
    patch_index : (H, W) int32
        Index (into ``scores``/``coords``) of the patch covering each pixel, -1 where none
        does. Where patches overlap, the winner follows ``index_priority``: the highest index
        (``"last"``, the patch drawn last) or the highest score (``"score"``, ties to the
        highest index).
    coverage : (H, W) int32
        Number of patches covering each pixel.
    shown : (H, W) bool
        Pixels that take the colormap's colour (at ``opacity > 0``): covered by a patch (any
        pixel when ``tissue_only=False``) and at or above the threshold.
    boxes : (N, 4) int32
        Each patch's half-open pixel rectangle ``(x_start, y_start, x_end, y_end)`` on the
        canvas (see the module docstring), e.g. to outline a selected patch.
    values : (N,) float64
        Each patch's normalized score in [0, 1] (before averaging and smoothing).
    scale : (float, float)
        Canvas pixels per level-0 pixel, ``(sx, sy)``.
    norm_range : (float, float)
        The scores mapped to the colormap's ends 0 and 1: ``(min, max)`` for ``"raw"`` and
        ``"percentile"`` (where the colour bar itself reads as a rank, 0-100 %), the two
        percentiles for ``"clip"``; NaN when there are no patches.
    normalization : str
        The normalization used.
    """

    rgba: np.ndarray
    overlay: np.ndarray
    patch_index: np.ndarray
    coverage: np.ndarray
    shown: np.ndarray
    boxes: np.ndarray
    values: np.ndarray
    scale: tuple[float, float]
    norm_range: tuple[float, float]
    normalization: str

    @property
    def size(self) -> tuple[int, int]:
        """Canvas size ``(W, H)``, PIL order."""
        return int(self.rgba.shape[1]), int(self.rgba.shape[0])


# --------------------------------------------------------------------------------------------
# Boundary checks


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on the GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_scores_coords(scores: Any, coords: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``scores`` (N,) and ``coords`` (N, 2) (arrays, lists or tensors); return float64 arrays."""
    s = _as_array(scores)
    if s.ndim == 2 and 1 in s.shape:
        s = s.reshape(-1)
    if s.ndim != 1:
        raise InputError(f"scores must be one score per patch, shape (N,); got shape {s.shape}")
    c = _as_array(coords)
    if c.ndim != 2 or c.shape[1] != 2:
        raise InputError(f"coords must be level-0 (x, y) corners, shape (N, 2); got shape {c.shape}")
    if c.shape[0] != s.shape[0]:
        raise InputError(f"scores has {s.shape[0]} entries but coords has {c.shape[0]} rows")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise InputError(f"scores has {bad.size} non-finite value(s) (NaN/inf), first at patch {bad[0]}")
    bad = np.flatnonzero(~np.isfinite(c).all(axis=1))
    if bad.size:
        raise InputError(f"coords has {bad.size} non-finite row(s), first at patch {bad[0]}")
    return s, c


def _patch_extent0(
    patch_size: float | Sequence[float], patch_level: int | None, downsample: float | None
) -> tuple[float, float]:
    """Level-0 (width, height) of a patch from its size at ``patch_level`` and the downsample."""
    ps = np.broadcast_to(np.asarray(patch_size, dtype=np.float64), (2,))
    if not np.all(np.isfinite(ps)) or np.any(ps <= 0):
        raise InputError(f"patch_size must be positive; got {patch_size!r}")
    if downsample is None:
        if patch_level not in (None, 0):
            raise InputError(
                f"patch_level={patch_level} needs downsample= (the slide's level_downsamples"
                f"[{patch_level}]) to turn patch_size into level-0 pixels"
            )
        downsample = 1.0
    if not (math.isfinite(downsample) and downsample > 0):
        raise InputError(f"downsample must be positive; got {downsample!r}")
    return float(ps[0] * downsample), float(ps[1] * downsample)


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def canvas_size(level0_dims: tuple[int, int], max_size: int = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
    """Size ``(W, H)`` of a canvas whose longer side is ``max_size``, with the level-0 aspect.

    Like OpenSlide's ``get_thumbnail`` it never upscales: a slide smaller than ``max_size`` is
    drawn at level-0 size. Each side is rounded half up and is at least 1 px.
    """
    w0, h0 = (float(v) for v in level0_dims)
    if max_size < 1:
        raise InputError(f"thumbnail_size must be >= 1 px; got {max_size}")
    s = min(1.0, max_size / max(w0, h0))
    return max(1, _round_half_up(w0 * s)), max(1, _round_half_up(h0 * s))


def _thumbnail_rgb(thumbnail: Any, max_size: int | None) -> np.ndarray:
    """(H, W, 3) uint8 array of a PIL image or array; transparent pixels go onto white."""
    if isinstance(thumbnail, np.ndarray):
        a = thumbnail
        if a.dtype != np.uint8:
            raise InputError(f"thumbnail array must be uint8; got {a.dtype}")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise InputError(f"thumbnail array must be (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
        if a.shape[2] == 3 and (max_size is None or max(a.shape[:2]) <= max_size):
            return a
        img = Image.fromarray(np.ascontiguousarray(a))  # RGB or RGBA from the shape
    elif isinstance(thumbnail, Image.Image):
        img = thumbnail
    else:
        raise InputError(
            f"thumbnail must be a PIL image, a uint8 array or None; got {type(thumbnail).__name__}"
        )
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if max_size is not None and max(img.size) > max_size:
        img = img.copy()
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return np.asarray(img)


# --------------------------------------------------------------------------------------------
# Numeric core (inputs already validated)


def _average_rank0(s: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing their average rank (``scipy.stats.rankdata`` minus 1)."""
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    run = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    counts = np.bincount(run)
    first = np.cumsum(counts) - counts
    ranks = np.empty(s.size)
    ranks[order] = (first + (counts - 1) / 2.0)[run]
    return ranks


def normalize_scores(
    scores: np.ndarray, normalization: Normalization = "percentile", clip: tuple[float, float] = (1.0, 99.0)
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map patch scores to [0, 1]; return ``(values (N,), norm_range)``.

    - ``"percentile"``: the rank of each score among all patch scores, ``(r - 1) / (N - 1)``
      with ``r`` the 1-based rank and ties given their average rank (so the lowest score maps
      to 0, the highest to 1, whatever the scores' spread: sparse attention stays visible).
    - ``"raw"``: min-max, ``(s - min) / (max - min)``.
    - ``"clip"``: scores clipped to the ``clip = (lo, hi)`` percentiles of the scores, then
      min-max between those two values.

    When all scores are equal (or there is a single patch) every value is 0.5, the middle of
    the colormap. When the two clip percentiles are equal but the scores are not (sparse
    attention: most scores identical), scores above map to 1, below to 0, and those equal to
    the percentile to 0 if any score is above it, else to 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    if n == 0:
        return np.zeros(0), (math.nan, math.nan)
    lo, hi = float(s.min()), float(s.max())
    if normalization == "percentile":
        if hi == lo:
            return np.full(n, 0.5), (lo, hi)
        return _average_rank0(s) / (n - 1), (lo, hi)
    if normalization == "clip":
        lo, hi = (float(v) for v in np.percentile(s, clip))
    elif normalization != "raw":
        raise InputError(f"normalization must be 'percentile', 'raw' or 'clip'; got {normalization!r}")
    if hi > lo:
        return np.clip((s - lo) / (hi - lo), 0.0, 1.0), (lo, hi)
    if s.min() == s.max():
        return np.full(n, 0.5), (lo, hi)
    # Equal clip percentiles (sparse attention: most scores equal): above -> 1, below -> 0,
    # and the scores at that value -> 0 if any score is above it, else 1.
    at = 0.0 if (s > hi).any() else 1.0
    return np.where(s > hi, 1.0, np.where(s < lo, 0.0, at)), (lo, hi)


def patch_boxes(
    coords: np.ndarray,
    extent0: tuple[float, float],
    level0_dims: tuple[float, float],
    size: tuple[int, int],
) -> np.ndarray:
    """(N, 4) int64 half-open canvas rectangles ``(x0, y0, x1, y1)`` of level-0 patches.

    ``coords`` (N, 2) level-0 corners, ``extent0`` the patch's level-0 (w, h), ``size`` the
    canvas (W, H). Pixel-centre rule; see the module docstring. With integer coordinates,
    extent and level-0 size (the usual case) the rule is evaluated exactly in integers, so a
    pixel centre falling exactly on a patch edge is decided the same way every time.
    """
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    out = np.empty((c.shape[0], 4), dtype=np.int64)
    for axis in (0, 1):
        n_px, full = int(size[axis]), float(level0_dims[axis])
        start, ext = c[:, axis], float(extent0[axis])
        if ext.is_integer() and full.is_integer() and np.array_equal(start, np.floor(start)):
            # centre (i + 1/2) * L / S >= x  <=>  i >= (2 x S - L) / (2 L), all integers
            x, e, length = start.astype(np.int64), int(ext), int(full)
            a = -((length - 2 * x * n_px) // (2 * length))
            b = -((length - 2 * (x + e) * n_px) // (2 * length))
            centre = ((2 * x + e) * n_px) // (2 * length)
        else:
            scale = n_px / full
            a = np.ceil(start * scale - 0.5).astype(np.int64)
            b = np.ceil((start + ext) * scale - 0.5).astype(np.int64)
            centre = np.floor((start + ext / 2.0) * scale).astype(np.int64)
        tiny = b <= a
        if tiny.any():
            a = np.where(tiny, np.clip(centre, 0, n_px - 1), a)
            b = np.where(tiny, a + 1, b)
        out[:, axis] = np.clip(a, 0, n_px)
        out[:, axis + 2] = np.clip(b, 0, n_px)
    return out


# Fixed-point accumulation keeps the 2-D prefix sums in int64: exact (no float drift between
# far-apart +v/-v corners), and integer cumulative sums are several times faster than float ones.
_VALUE_BITS = 32  # normalized values in [0, 1] are summed as round(v * 2**32)
_COUNT_SHIFT = 40  # coverage and sum(index + 1) share one int64 map: count << 40 | index sum


def _box_sums(boxes: np.ndarray, weights: list[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    """Per-pixel sum of each int64 weight (N,) over the boxes covering the pixel.

    Each box adds +v at (y0, x0) and (y1, x1) and -v at (y0, x1) and (y1, x0) of an
    (H+1, W+1) difference array; cumulative sums along both axes turn it into the per-pixel
    sum. Cost O(N + H*W) whatever the patches' size. Returns (H, W) int64 arrays.
    """
    x0, y0, x1, y1 = boxes.T
    stride = w + 1
    corners = np.concatenate([y0 * stride + x0, y1 * stride + x1, y0 * stride + x1, y1 * stride + x0])
    out = []
    for v in weights:
        d = np.zeros((h + 1) * stride, dtype=np.int64)
        np.add.at(d, corners, np.concatenate([v, v, -v, -v]))
        d = d.reshape(h + 1, stride)
        np.cumsum(d, axis=1, out=d)
        # Row by row: numpy's cumsum along axis 0 walks the array element-wise and is ~5x slower.
        for i in range(1, h):
            np.add(d[i], d[i - 1], out=d[i])
        out.append(d[:h, :w])
    return out


def _expand_pixels(boxes: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices of every box's pixels, and the box each belongs to (box order)."""
    x0, y0, x1, y1 = boxes.T
    bw, bh = x1 - x0, y1 - y0
    nrows = int(bh.sum())
    row_box = np.repeat(np.arange(boxes.shape[0]), bh)
    row_y = y0[row_box] + (np.arange(nrows) - np.repeat(np.cumsum(bh) - bh, bh))
    row_start = row_y * w + x0[row_box]
    row_len = bw[row_box]
    npix = int(row_len.sum())
    pix = np.repeat(row_start - (np.cumsum(row_len) - row_len), row_len) + np.arange(npix)
    return pix, np.repeat(row_box, row_len)


def _resolve_overlaps(
    index: np.ndarray, boxes: np.ndarray, coverage: np.ndarray, priority: np.ndarray, ids: np.ndarray
) -> None:
    """Fill ``index`` (H, W) in place where ``coverage > 1`` with the top-``priority`` patch id.

    Only boxes that touch a multiply-covered pixel (found with a summed-area table of the
    overlap mask) are expanded to their pixels and resolved with ``np.maximum.at``; for the
    usual non-overlapping CLAM grid this does nothing.
    """
    h, w = coverage.shape
    multi = coverage > 1
    if not multi.any():
        return
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    np.cumsum(multi, axis=1, out=sat[1:, 1:])
    for i in range(2, h + 1):
        np.add(sat[i], sat[i - 1], out=sat[i])
    x0, y0, x1, y1 = boxes.T
    sel = np.flatnonzero((sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) > 0)
    pix, box = _expand_pixels(boxes[sel], w)
    keep = multi.reshape(-1)[pix]
    pix, box = pix[keep], sel[box[keep]]
    best = np.full(h * w, -1, dtype=np.int64)
    np.maximum.at(best, pix, priority[box])
    by_priority = np.empty(priority.max() + 1, dtype=np.int64)
    by_priority[priority] = ids
    hit = np.flatnonzero(best >= 0)
    # `index` may be a view into the canvas (not contiguous): index it in 2-D.
    index[hit // w, hit % w] = by_priority[best[hit]]


def _rasterize(
    boxes: np.ndarray,
    values: np.ndarray,
    priority: np.ndarray,
    overlay: np.ndarray,
    coverage: np.ndarray,
    patch_index: np.ndarray,
) -> tuple[int, int, int, int] | None:
    """Average ``values`` over the covering boxes, working inside the boxes' bounding box only.

    Fills the canvas-sized ``overlay`` (NaN-initialized float32), ``coverage`` (zeros, int32)
    and ``patch_index`` (-1, int32) in place; returns the bounding box ``(x0, y0, x1, y1)``, or
    None when no box holds a pixel.
    """
    ids = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if ids.size == 0:
        return None
    b = boxes[ids]
    bx0, by0 = int(b[:, 0].min()), int(b[:, 1].min())
    bx1, by1 = int(b[:, 2].max()), int(b[:, 3].max())
    b = b - np.array([bx0, by0, bx0, by0])
    h, w = by1 - by0, bx1 - bx0
    inside = np.s_[by0:by1, bx0:bx1]
    ov, cov, idx = overlay[inside], coverage[inside], patch_index[inside]
    fixed = np.rint(values[ids] * float(2**_VALUE_BITS)).astype(np.int64)
    if ids.size < 2**20:  # count << 40 | sum(index + 1) cannot overflow
        packed, vsum = _box_sums(b, [(ids + 1) + (1 << _COUNT_SHIFT), fixed], h, w)
        np.right_shift(packed, _COUNT_SHIFT, out=cov, casting="unsafe")
        np.bitwise_and(packed, (1 << _COUNT_SHIFT) - 1, out=idx, casting="unsafe")
    else:
        count, idx_sum, vsum = _box_sums(b, [np.ones_like(ids), ids + 1, fixed], h, w)
        cov[...] = count
        idx[...] = idx_sum
    # Right where coverage is 0 (-1) or 1 (the index); _resolve_overlaps rewrites the rest.
    idx -= 1
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(vsum, cov, out=ov, casting="unsafe")  # 0 / 0 = NaN off the patches
    ov *= np.float32(2.0**-_VALUE_BITS)
    _resolve_overlaps(idx, b, cov, priority[ids], ids)
    return bx0, by0, bx1, by1


# Colours are quantized to 255 levels so that a colour index (0..254, 255 = no colour) and a
# background byte fit one uint16 index into a blend table.
_LEVELS = 255


def _blend(
    out: np.ndarray,
    base: np.ndarray | None,
    blank: np.ndarray,
    drawn: np.ndarray,
    shown: np.ndarray,
    lut: np.ndarray,
    alpha: int,
) -> None:
    """Write into ``out`` (h, w, >=3) uint8 the ``lut`` colours of ``drawn`` over ``base``.

    ``drawn`` is in [0, 1] (NaN allowed where not ``shown``), ``lut`` (255, 3) uint8 and
    ``alpha`` the opacity in 0..255. Index 255 stands for "no colour", so the blend of a colour
    and a background byte is a precomputed (256 x 256) table per channel, read with one
    ``take`` per channel: no boolean gathers, no per-pixel multiply.
    """
    top = np.float32(_LEVELS - 1)
    q = np.where(shown, drawn * top + np.float32(0.5), np.float32(_LEVELS)).astype(np.uint16)
    colour = np.concatenate([lut, np.zeros((1, 3), np.uint8)]).astype(np.uint32)  # (256, 3)
    a = np.full(_LEVELS + 1, alpha, dtype=np.uint32)
    a[_LEVELS] = 0
    if base is None:
        table = (blank.astype(np.uint32) * (255 - a[:, None]) + colour * a[:, None] + 127) // 255
        for ch in range(3):
            out[..., ch] = np.take(table[:, ch].astype(np.uint8), q)
        return
    b = np.arange(256, dtype=np.uint32)
    q <<= 8
    for ch in range(3):
        table = (b[None, :] * (255 - a[:, None]) + colour[:, ch, None] * a[:, None] + 127) // 255
        out[..., ch] = np.take(table.astype(np.uint8).reshape(-1), q | base[..., ch])


def _colormap_lut(cmap: Any) -> np.ndarray:
    """(255, 3) uint8 lookup table of a matplotlib colormap (a name or a Colormap)."""
    import matplotlib

    if isinstance(cmap, str):
        try:
            cm = matplotlib.colormaps[cmap]
        except KeyError:
            raise InputError(
                f"unknown matplotlib colormap {cmap!r} (e.g. 'jet', 'viridis', 'inferno')"
            ) from None
    elif callable(cmap):
        cm = cmap
    else:
        raise InputError(f"cmap must be a matplotlib colormap name or object; got {type(cmap).__name__}")
    rgba = np.asarray(cm(np.linspace(0.0, 1.0, _LEVELS)), dtype=np.float64)
    return np.rint(rgba[:, :3] * 255.0).astype(np.uint8)


def _smooth(values: np.ndarray, weight: np.ndarray | None, sigma: float) -> np.ndarray:
    """Gaussian smoothing (kernel cut at 3 sigma); with ``weight`` (0/1) a normalized convolution.

    ``G*(v w) / G*w`` only averages covered pixels, so the background neither pulls edge
    values towards 0 nor is coloured itself. Cost grows linearly with sigma (direct 1-D
    convolutions along each axis).
    """
    from scipy.ndimage import gaussian_filter

    opts = {"mode": "constant", "cval": 0.0, "truncate": 3.0}
    if weight is None:
        return gaussian_filter(values.astype(np.float32), sigma, **opts)
    num = gaussian_filter(np.where(weight, values, 0.0).astype(np.float32), sigma, **opts)
    den = gaussian_filter(weight.astype(np.float32), sigma, **opts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight, num / np.maximum(den, np.float32(1e-12)), np.nan).astype(np.float32)


# --------------------------------------------------------------------------------------------
# render_heatmap, step by step: validated inputs -> boxes -> raster -> colour -> blend


@dataclass(frozen=True)
class _Style:
    """The drawing options of ``render_heatmap``, validated."""

    normalization: Normalization
    clip: tuple[float, float]
    threshold: float
    lut: np.ndarray  # (255, 3) uint8
    alpha: int  # opacity in 0..255
    smooth_sigma: float
    tissue_only: bool
    blank: np.ndarray  # (3,) uint8
    index_priority: IndexPriority


def _check_style(
    normalization, clip, threshold, cmap, opacity, smooth_sigma, tissue_only, blank_color, index_priority
) -> _Style:
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must be in [0, 1]; got {opacity}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold is in normalized units and must be in [0, 1]; got {threshold}")
    if not (len(clip) == 2 and 0.0 <= clip[0] < clip[1] <= 100.0):
        raise InputError(f"clip must be two percentiles 0 <= lo < hi <= 100; got {clip!r}")
    if not (math.isfinite(smooth_sigma) and smooth_sigma >= 0):
        raise InputError(f"smooth_sigma must be >= 0 px; got {smooth_sigma}")
    if index_priority not in ("last", "score"):
        raise InputError(f"index_priority must be 'last' or 'score'; got {index_priority!r}")
    if len(blank_color) != 3:
        raise InputError(f"blank_color must be (r, g, b); got {blank_color!r}")
    blank = np.asarray(blank_color)
    if blank.shape != (3,) or not np.all((blank >= 0) & (blank <= 255)):
        raise InputError(f"blank_color must be (r, g, b) in 0..255; got {blank_color!r}")
    return _Style(
        normalization=normalization,
        clip=clip,
        threshold=float(threshold if threshold is not None else 0.0),
        lut=_colormap_lut(cmap),
        alpha=int(round(opacity * 255)),
        smooth_sigma=float(smooth_sigma),
        tissue_only=bool(tissue_only),
        blank=blank.astype(np.uint8),
        index_priority=index_priority,
    )


def _slide_size(c: np.ndarray, extent0: tuple[float, float], level0_dims: Any) -> tuple[float, float]:
    """The level-0 ``(W0, H0)``: given, or inferred from the patches; every patch must touch it."""
    n = c.shape[0]
    if level0_dims is None:
        if n == 0:
            raise InputError("level0_dims is required when there are no patches")
        level0_dims = (
            int(math.ceil(float((c[:, 0] + extent0[0]).max()))),
            int(math.ceil(float((c[:, 1] + extent0[1]).max()))),
        )
    if len(level0_dims) != 2 or not all(float(v) > 0 for v in level0_dims):
        raise InputError(f"level0_dims must be the slide's positive (width, height); got {level0_dims!r}")
    w0, h0 = float(level0_dims[0]), float(level0_dims[1])
    outside = (c[:, 0] + extent0[0] <= 0) | (c[:, 1] + extent0[1] <= 0) | (c[:, 0] >= w0) | (c[:, 1] >= h0)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{int(outside.sum())} of {n} patches lie entirely outside the slide's level-0 size "
            f"{int(w0)} x {int(h0)} (first: patch {first} at {tuple(c[first].tolist())}); coords must be "
            "level-0 pixels and patch_size the level-0 extent"
        )
    return w0, h0


def _canvas(
    thumbnail: Any, thumbnail_size: int | None, level0: tuple[float, float]
) -> tuple[np.ndarray | None, int, int]:
    """``(base (H, W, 3) uint8 or None for a blank canvas, W, H)``."""
    if thumbnail is None:
        cw, ch = canvas_size(level0, thumbnail_size or DEFAULT_THUMBNAIL_SIZE)
        return None, cw, ch
    base = _thumbnail_rgb(thumbnail, thumbnail_size)
    return base, base.shape[1], base.shape[0]


def _priorities(s: np.ndarray, index_priority: IndexPriority) -> np.ndarray:
    """(N,) rank of each patch for winning an overlapped pixel in ``patch_index``."""
    n = s.shape[0]
    if index_priority == "last":
        return np.arange(n)
    priority = np.empty(n, dtype=np.int64)
    priority[np.lexsort((np.arange(n), s))] = np.arange(n)  # by score, ties to the higher index
    return priority


def _raster(
    boxes: np.ndarray, values: np.ndarray, priority: np.ndarray, cw: int, ch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
    """``(overlay, coverage, patch_index, bbox)`` canvas maps (see :class:`HeatmapResult`), and
    the patches' pixel bounding box (None when no patch holds a pixel)."""
    overlay = np.full((ch, cw), np.nan, dtype=np.float32)
    coverage = np.zeros((ch, cw), dtype=np.int32)
    patch_index = np.full((ch, cw), -1, dtype=np.int32)
    bbox = _rasterize(boxes, values, priority, overlay, coverage, patch_index)
    return overlay, coverage, patch_index, bbox


def _coloured(
    overlay: np.ndarray, coverage: np.ndarray, bbox: tuple[int, int, int, int] | None, style: _Style
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int, int] | None]:
    """``(overlay, drawn, region)``: the (smoothed) overlay, the values coloured inside
    ``region`` (the patches' bounding box, or the whole canvas without ``tissue_only``)."""
    sigma = style.smooth_sigma
    if style.tissue_only:
        if bbox is None:
            return overlay, None, None
        inside = np.s_[bbox[1] : bbox[3], bbox[0] : bbox[2]]
        drawn = overlay[inside]
        if sigma > 0:
            drawn = _smooth(drawn, coverage[inside] > 0, sigma)
            overlay[inside] = drawn
        return overlay, drawn, bbox
    ch, cw = overlay.shape
    covered = coverage > 0
    drawn = np.where(covered, overlay, np.float32(0.0))  # off the patches: value 0
    if sigma > 0:
        drawn = _smooth(drawn, None, sigma)
        overlay = np.where(covered, drawn, np.float32(np.nan)).astype(np.float32)
    return overlay, drawn, (0, 0, cw, ch)


def _compose(
    base: np.ndarray | None,
    drawn: np.ndarray | None,
    region: tuple[int, int, int, int] | None,
    style: _Style,
    cw: int,
    ch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(rgba (H, W, 4) uint8, shown (H, W) bool)``: the colours of ``drawn`` blended inside
    ``region``, the thumbnail (or blank colour) everywhere else."""
    shown = np.zeros((ch, cw), dtype=bool)
    rgba = np.empty((ch, cw, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rest = [np.s_[:, :]]
    if region is not None:
        x0, y0, x1, y1 = region
        sel = np.s_[y0:y1, x0:x1]
        with np.errstate(invalid="ignore"):
            shown_sub = drawn >= np.float32(style.threshold)  # NaN: False
        shown[sel] = shown_sub
        sub_base = None if base is None else base[sel]
        _blend(rgba[sel], sub_base, style.blank, drawn, shown_sub, style.lut, style.alpha)
        rest = [np.s_[:y0, :], np.s_[y1:, :], np.s_[y0:y1, :x0], np.s_[y0:y1, x1:]]
    # Channel by channel: numpy copies (H, W, 3) into (H, W, 4) several times slower in one go.
    for part in rest:
        for k in range(3):
            rgba[part + (k,)] = style.blank[k] if base is None else base[part + (k,)]
    return rgba, shown


# --------------------------------------------------------------------------------------------
# Public API


def render_heatmap(
    scores: Any,
    coords: Any,
    patch_size: float | Sequence[float],
    level0_dims: tuple[int, int] | None,
    thumbnail: Image.Image | np.ndarray | None = None,
    *,
    thumbnail_size: int | None = None,
    normalization: Normalization = "percentile",
    clip: tuple[float, float] = (1.0, 99.0),
    threshold: float | None = None,
    cmap: Any = "jet",
    opacity: float = 0.5,
    smooth_sigma: float = 0.0,
    tissue_only: bool = True,
    blank_color: tuple[int, int, int] = (255, 255, 255),
    patch_level: int | None = None,
    downsample: float | None = None,
    index_priority: IndexPriority = "last",
) -> HeatmapResult:
    """Draw one score per patch over a slide thumbnail, or over a blank canvas.

    Parameters
    ----------
    scores : (N,) array-like
        One score per patch (attention, attribution); finite.
    coords : (N, 2) array-like
        Level-0 pixel (x, y) of each patch's top-left corner (the CLAM ``coords`` dataset).
    patch_size : float or (w, h)
        The patch's extent in level-0 pixels (``PatchGeometry.extent0``); or, with
        ``patch_level`` and ``downsample``, its size at that level (extent ``patch_size * downsample``).
    level0_dims : (W0, H0) or None
        The slide's level-0 size; None infers it from the patches' extent (features only).
    thumbnail : PIL image, (H, W[, 3|4]) uint8 array, or None
        The whole slide, downscaled (``deref.slides.read_thumbnail``); its size is the canvas
        size. None draws on a ``blank_color`` canvas of ``thumbnail_size`` px (longer side,
        default 2,048) with the level-0 aspect.
    thumbnail_size : int, optional
        Canvas size without a thumbnail; with one, a larger thumbnail is downscaled to it.
    normalization : {"percentile", "raw", "clip"}
        How scores map to [0, 1] (``normalize_scores``), ``clip`` the percentiles of ``"clip"``.
    threshold : float in [0, 1], optional
        Pixels whose normalized value is below it get no colour (colormap units).
    cmap : str or matplotlib colormap
        Default ``"jet"``.
    opacity : float in [0, 1]
        Weight of the colour against the thumbnail.
    smooth_sigma : float
        Gaussian sigma in canvas pixels (0 = none); with ``tissue_only`` a normalized
        convolution over the covered pixels only.
    tissue_only : bool
        True colours only pixels covered by a patch. False also colours the rest of the canvas
        as normalized value 0 (blurred like any value when smoothing); ``overlay`` stays NaN there.
    blank_color : (r, g, b)
        Canvas colour when there is no thumbnail.
    index_priority : {"last", "score"}
        Which of several overlapping patches ``patch_index`` reports: the highest index, or the
        highest score (ties to the highest index).

    Returns
    -------
    HeatmapResult
        ``rgba`` (H, W, 4) uint8 plus the maps and geometry described there. Geometry (level-0
        to canvas pixels, per axis, pixel-centre rule) is in the module docstring; normalized
        values are averaged where patches overlap.
    """
    s, c = _check_scores_coords(scores, coords)
    extent0 = _patch_extent0(patch_size, patch_level, downsample)
    w0, h0 = _slide_size(c, extent0, level0_dims)
    style = _check_style(
        normalization, clip, threshold, cmap, opacity, smooth_sigma, tissue_only, blank_color, index_priority
    )
    base, cw, ch = _canvas(thumbnail, thumbnail_size, (w0, h0))
    values, norm_range = normalize_scores(s, normalization, clip)
    boxes = patch_boxes(c, extent0, (w0, h0), (cw, ch))
    overlay, coverage, patch_index, bbox = _raster(boxes, values, _priorities(s, index_priority), cw, ch)
    overlay, drawn, region = _coloured(overlay, coverage, bbox, style)
    rgba, shown = _compose(base, drawn, region, style, cw, ch)
    return HeatmapResult(
        rgba=rgba,
        overlay=overlay,
        patch_index=patch_index,
        coverage=coverage,
        shown=shown,
        boxes=boxes.astype(np.int32),
        values=values,
        scale=(cw / w0, ch / h0),
        norm_range=norm_range,
        normalization=normalization,
    )


def pixel_to_patch(result: HeatmapResult, x: float, y: float) -> int | None:
    """Index of the patch under canvas pixel (x, y) (e.g. a click), or None.

    ``x``, ``y`` are canvas (thumbnail) pixel coordinates, column then row; fractional values
    (event coordinates) are floored. Outside the canvas or off every patch gives None.
    """
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    col, row = int(math.floor(x)), int(math.floor(y))
    h, w = result.patch_index.shape
    if not (0 <= col < w and 0 <= row < h):
        return None
    i = int(result.patch_index[row, col])
    return None if i < 0 else i
