"""The top-k patches of a score (attention, attribution), read at full resolution for a gallery.

Conventions: ``coords`` are level-0 pixel (x, y) top-left corners (the CLAM ``coords``
dataset); ``patch_size`` is the patch's side **at** ``patch_level`` (the CLAM ``patch_size``
attribute), which is exactly what ``OpenSlide.read_region((x, y), patch_level, (size, size))``
takes. (``render_heatmap`` instead wants the level-0 extent, ``patch_size * downsample``.)
:func:`patch_geometry` reads both from a bag's attributes, whichever tool wrote the bag.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deref.errors import DataError, InputError
from deref.explain.heatmap import _check_scores_coords
from deref.slides import read_regions

__all__ = [
    "PatchGeometry",
    "PatchView",
    "patch_gallery_image",
    "patch_geometry",
    "patches_at",
    "top_k_indices",
    "top_k_patches",
]


@dataclass(frozen=True)
class PatchView:
    """One patch for the gallery.

    ``index`` into the bag's patches, its ``score``, its level-0 top-left corner ``(x, y)``,
    and its pixels (RGB, ``patch_size`` px at ``patch_level``, or ``out_size``) -- None when no
    slide file was given.
    """

    index: int
    score: float
    x: int
    y: int
    image: Image.Image | None = None


@dataclass(frozen=True)
class PatchGeometry:
    """How a bag's patches sit on their slide, from the bag's attributes.

    Attributes
    ----------
    size : int
        The patch's side in pixels as recorded (``patch_size``: at ``patch_level`` in CLAM's
        files, at the target magnification in ``deref tile``'s).
    level : int
        The pyramid level the patches are read from (``patch_level``).
    downsample : float
        Level-0 pixels per patch pixel, so that a patch covers ``extent0 = size * downsample``
        level-0 pixels.
    read_size : int
        Pixels read at ``level`` for one patch (what ``top_k_patches``/``patches_at`` take
        as ``patch_size``; ``deref tile``'s ``read_size``, else ``size``).
    extent0 : float
        The patch's side in level-0 pixels (what ``render_heatmap`` takes as ``patch_size``).
    assumed : tuple of str
        Attributes the bag does not record and that were given their default here
        (``patch_size`` 256, ``patch_level`` 0), so a caller can say so.
    """

    size: int
    level: int
    downsample: float
    read_size: int
    extent0: float
    assumed: tuple[str, ...] = ()


def _attr_number(attrs: Mapping[str, Any], key: str) -> float | None:
    """A numeric attribute as a float (an array, as CLAM stores ``downsample`` (x, y), gives
    its mean); None when absent; a :class:`DataError` when not a positive finite number."""
    if attrs.get(key) is None:
        return None
    try:
        value = float(np.mean(np.asarray(attrs[key], dtype=np.float64)))
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise DataError(f"bag attribute {key}={attrs[key]!r}: expected a non-negative number")
    return value


def patch_geometry(
    attrs: Mapping[str, Any], level_downsamples: Sequence[float] | None = None
) -> PatchGeometry:
    """The patch geometry a bag's (or one slide's) attributes record.

    Rules: ``size`` is ``patch_size`` (256 when absent) and ``level`` is ``patch_level`` (0
    when absent). The level-0 extent is ``level0_size`` when recorded (``deref tile``), else
    ``size * downsample`` with the recorded ``downsample`` (CLAM: the read level's
    downsample), else ``size`` at level 0, else ``size * level_downsamples[level]``.
    ``read_size`` is the recorded ``read_size`` (``deref tile``, whose patches are resized
    after reading), else ``size`` (CLAM: ``patch_size`` pixels read at ``patch_level``).

    Parameters
    ----------
    attrs : mapping
        Bag attributes (``Bag.attrs``, or one entry of its ``per_slide``).
    level_downsamples : sequence of float, optional
        The slide's ``level_downsamples``, for a bag that records a level above 0 but no
        downsample.

    Raises
    ------
    DataError
        An attribute that is not a usable number, or a level above 0 with no downsample known.
    """
    assumed = tuple(k for k in ("patch_size", "patch_level") if attrs.get(k) is None)
    size = _attr_number(attrs, "patch_size")
    size = 256 if size is None else int(size)
    if size < 1:
        raise DataError(f"bag attribute patch_size={attrs['patch_size']!r}: expected a positive integer")
    level = int(_attr_number(attrs, "patch_level") or 0)
    extent0 = _attr_number(attrs, "level0_size")
    if not extent0:
        down = _attr_number(attrs, "downsample")
        if not down and level == 0:
            down = 1.0
        elif not down and level_downsamples is not None and level < len(level_downsamples):
            down = float(level_downsamples[level])
        if not down:
            raise DataError(
                f"bag attributes give patch_level {level} but no downsample (level-0 pixels per patch "
                "pixel); pass the slide's level_downsamples"
            )
        extent0 = size * down
    read = _attr_number(attrs, "read_size") or size
    return PatchGeometry(size, level, extent0 / size, max(1, int(round(read))), float(extent0), assumed)


def top_k_indices(scores: Any, k: int, *, largest: bool = True) -> np.ndarray:
    """Indices of the ``k`` highest (or lowest) scores, best first; ties go to the lower index.

    ``k`` larger than the number of patches returns them all. The order is deterministic
    (a stable lexicographic sort on (score, index)), so a gallery does not reshuffle between
    reruns on equal scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise InputError(f"k must be a non-negative integer; got {k!r}")
    idx = np.arange(s.size)
    order = np.lexsort((idx, -s if largest else s))
    return order[: int(k)]


def top_k_patches(
    scores: Any,
    coords: Any,
    k: int,
    patch_size: int,
    patch_level: int = 0,
    slide_path: str | os.PathLike | None = None,
    *,
    largest: bool = True,
    out_size: int | None = None,
) -> list[PatchView]:
    """The ``k`` best-scoring patches, with their pixels read from the slide.

    Parameters
    ----------
    scores : (N,) array-like
        One score per patch.
    coords : (N, 2) array-like
        Level-0 pixel (x, y) top-left corners.
    k : int
        How many (all of them when ``k >= N``).
    patch_size : int
        The patch's side in pixels at ``patch_level`` (what ``read_region`` reads).
    patch_level : int
        The pyramid level the patches were cut at; coords stay level-0 whatever the level.
    slide_path : path, optional
        The slide. None gives views without images (scores and coordinates only).
    largest : bool
        True for the highest scores first, False for the lowest first; ties go to the lower
        patch index.
    out_size : int, optional
        Resize each image to ``out_size x out_size`` (for a compact gallery); the read itself is
        always at full resolution.

    Returns
    -------
    list of PatchView
        Best first. The slide is opened once for all ``k`` reads.

    Raises
    ------
    DataError
        The slide is missing, cannot be opened, lacks ``patch_level``, or a patch cannot be
        decoded (the message names the patch and its coordinates).
    """
    s, c = _check_scores_coords(scores, coords)
    patch_size, patch_level = _check_read(patch_size, patch_level, out_size)
    return _read_patches(
        s, c, top_k_indices(s, k, largest=largest), patch_size, patch_level, slide_path, out_size
    )


def patches_at(
    scores: Any,
    coords: Any,
    indices: Sequence[int] | np.ndarray,
    patch_size: int,
    patch_level: int = 0,
    slide_path: str | os.PathLike | None = None,
    *,
    out_size: int | None = None,
) -> list[PatchView]:
    """The patches at ``indices`` (in that order), read like :func:`top_k_patches` reads its k.

    For one patch picked by the user (a click, a rank) without reading the patches ranked
    above it. Parameters, errors and the views are those of :func:`top_k_patches`; an index
    out of ``0..N-1`` is an ``InputError``.
    """
    s, c = _check_scores_coords(scores, coords)
    patch_size, patch_level = _check_read(patch_size, patch_level, out_size)
    idx = np.asarray(indices).reshape(-1)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= s.size):
        raise InputError(f"patch indices must be integers in 0..{s.size - 1}; got {idx[:5].tolist()}")
    return _read_patches(s, c, idx.astype(np.int64), patch_size, patch_level, slide_path, out_size)


def _check_read(patch_size: int, patch_level: int, out_size: int | None) -> tuple[int, int]:
    """``(patch_size, patch_level)`` as ints, after checking them and ``out_size``."""
    if isinstance(patch_size, bool) or int(patch_size) != patch_size or patch_size < 1:
        raise InputError(f"patch_size must be a positive integer (pixels at patch_level); got {patch_size!r}")
    if isinstance(patch_level, bool) or int(patch_level) != patch_level or patch_level < 0:
        raise InputError(f"patch_level must be a non-negative integer; got {patch_level!r}")
    if out_size is not None and (int(out_size) != out_size or out_size < 1):
        raise InputError(f"out_size must be a positive integer; got {out_size!r}")
    patch_size, patch_level = int(patch_size), int(patch_level)
    return patch_size, patch_level


def _read_patches(
    s: np.ndarray,
    c: np.ndarray,
    chosen: np.ndarray,
    patch_size: int,
    patch_level: int,
    slide_path: str | os.PathLike | None,
    out_size: int | None,
) -> list[PatchView]:
    """The views of patches ``chosen`` (checked scores ``s``, coords ``c`` and read arguments);
    the slide is opened once for all reads."""
    xy = np.rint(c[chosen]).astype(np.int64)
    if slide_path is None or chosen.size == 0:
        return [PatchView(int(i), float(s[i]), int(x), int(y), None) for i, (x, y) in zip(chosen, xy)]
    names = [f"patch {int(i)}" for i in chosen]
    pixels = read_regions(slide_path, xy, patch_level, (patch_size, patch_size), names=names)
    views = []
    for i, (x, y), rgb in zip(chosen, xy, pixels):
        image = Image.fromarray(rgb)
        if out_size is not None and image.size != (out_size, out_size):
            image = image.resize((int(out_size), int(out_size)), Image.Resampling.LANCZOS)
        views.append(PatchView(int(i), float(s[i]), int(x), int(y), image))
    return views


def patch_gallery_image(
    views: Sequence[PatchView],
    ncols: int = 4,
    *,
    tile_size: int | None = None,
    gap: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """One RGB image: the patches in a grid, row by row, each labelled with its score.

    Each cell is the patch image scaled to ``tile_size`` (default: the largest patch image, or
    128 px when no view has one; a view without an image gets a grey placeholder) above a
    label ``#rank  score`` and ``(x, y)``. Handy for export next to a heatmap.
    """
    if isinstance(ncols, bool) or int(ncols) != ncols or ncols < 1:
        raise InputError(f"ncols must be a positive integer; got {ncols!r}")
    ncols = int(ncols)
    if tile_size is None:
        sizes = [max(v.image.size) for v in views if v.image is not None]
        tile_size = max(sizes) if sizes else 128
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = probe.textbbox((0, 0), "Ag(0,9)", font=font)[3] + 2
    label_h = 2 * line_h + 2
    nrows = max(1, -(-len(views) // ncols))
    cols = min(ncols, max(1, len(views)))
    cell_w, cell_h = tile_size + gap, tile_size + label_h + gap
    canvas = Image.new("RGB", (cols * cell_w + gap, nrows * cell_h + gap), background)
    draw = ImageDraw.Draw(canvas)
    for rank, view in enumerate(views):
        left = gap + (rank % ncols) * cell_w
        top = gap + (rank // ncols) * cell_h
        if view.image is not None:
            tile = view.image.convert("RGB")
            if tile.size != (tile_size, tile_size):
                tile = tile.resize((tile_size, tile_size), Image.Resampling.LANCZOS)
            canvas.paste(tile, (left, top))
        else:
            draw.rectangle([left, top, left + tile_size - 1, top + tile_size - 1], fill=(225, 225, 225))
            draw.text((left + 4, top + 4), "no slide", fill=(90, 90, 90), font=font)
        draw.text((left, top + tile_size + 2), f"#{rank + 1}  {view.score:.4g}", fill=(0, 0, 0), font=font)
        draw.text((left, top + tile_size + 2 + line_h), f"({view.x}, {view.y})", fill=(70, 70, 70), font=font)
    return canvas
