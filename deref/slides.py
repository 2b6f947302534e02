"""Whole-slide image I/O: opening, metadata, thumbnails, region reads, and the TIFF writer.

This is the only module that imports OpenSlide. Every failure to open or read a slide is a
:class:`~deref.errors.DataError` whose message is one line starting with the file and saying
what is wrong with it:

- ``<path>: slide file not found`` / ``<path>: is a folder, not a slide file``;
- ``<path>: not a slide format OpenSlide recognizes (corrupt file or unsupported format)``;
- ``<path>: OpenSlide cannot open this <vendor> file: <reason>``;
- ``<path>: <vendor> file opens but its pixels cannot be decoded (<where>): <reason>``;
- ``<path>: cannot read <what> at level-0 (x, y), level L, size W x H: <reason>``;
- ``<path>: has N level(s) (0..N-1); level L was requested``.

A batch can write such a message to its manifest and go on; the dashboard can show it.

:func:`write_pyramidal_tiff` writes the Aperio-compatible pyramidal TIFFs of the demo cohort
and of the tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deref.errors import DataError, InputError, one_line

__all__ = [
    "PLAUSIBLE_MPP",
    "SlideInfo",
    "block_mean",
    "open_slide",
    "pyramid_levels",
    "read_regions",
    "read_rgb",
    "read_thumbnail",
    "slide_info",
    "write_pyramidal_tiff",
]

#: Resolutions outside this range (micrometres per pixel) are not microscope scans; they
#: come from TIFF resolution tags left at a default such as 72 dpi (352.8 um/px).
PLAUSIBLE_MPP: tuple[float, float] = (0.05, 20.0)

# --------------------------------------------------------------------------------------------
# Opening and metadata


def _undecodable(path: Path, vendor: str, where: str, exc: BaseException) -> DataError:
    return DataError(
        f"{path}: {vendor} file opens but its pixels cannot be decoded ({where}): {one_line(exc)}"
    )


def open_slide(path: str | os.PathLike, *, check_pixels: bool = True) -> Any:
    """Open ``path`` with OpenSlide (an ``openslide.OpenSlide``, to be closed by the caller).

    With ``check_pixels`` a small region of the smallest level is decoded, so that files whose
    headers open but whose tiles are corrupt fail here rather than halfway through a batch.

    Raises
    ------
    DataError
        One line naming the file: missing, a folder, not a slide format, rejected by OpenSlide,
        or (with ``check_pixels``) pixels that cannot be decoded.
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: slide file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a slide file")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenSlide raises several types here
        raise DataError(f"{path}: cannot inspect file: {one_line(exc)}") from exc
    if vendor is None:
        raise DataError(
            f"{path}: not a slide format OpenSlide recognizes (corrupt file or unsupported format)"
        )
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenSlideError, OSError, ValueError...
        raise DataError(f"{path}: OpenSlide cannot open this {vendor} file: {one_line(exc)}") from exc
    if check_pixels:
        level = slide.level_count - 1
        w, h = slide.level_dimensions[level]
        try:
            slide.read_region((0, 0), level, (max(1, min(w, 16)), max(1, min(h, 16))))
        except Exception as exc:  # noqa: BLE001 - any decoder failure
            slide.close()
            raise _undecodable(path, vendor, f"level {level}", exc) from exc
    return slide


@dataclass(frozen=True)
class SlideInfo:
    """What tiling and drawing need to know about one slide.

    ``dimensions`` is the level-0 ``(W, H)``; ``mpp`` micrometres per level-0 pixel (None
    when the file has none usable); ``objective_power`` the scanner's magnification (None when
    absent); ``mpp_note`` says why a resolution tag present in the file was not used.
    """

    path: Path
    vendor: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    objective_power: float | None
    mpp_note: str = ""


def _float_property(props: dict, key: str) -> float | None:
    value = props.get(key)
    if value in (None, ""):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) and out > 0 else None


def _mpp(props: dict) -> tuple[float | None, str]:
    """Level-0 um/px from the ``openslide.mpp-*`` properties, and why it was rejected."""
    mpp_x = _float_property(props, "openslide.mpp-x")
    mpp_y = _float_property(props, "openslide.mpp-y")
    if mpp_x is None:
        return None, ""
    mpp = mpp_x if mpp_y is None else (mpp_x + mpp_y) / 2.0
    if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return mpp, ""
    dpi = 25400.0 / mpp
    return None, (
        f"its resolution tags give {mpp:.4g} um/px ({dpi:.0f} dpi, a default rather than a "
        f"scan resolution; expected {PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} um/px)"
    )


def slide_info(slide: Any, path: str | os.PathLike) -> SlideInfo:
    """Dimensions, levels, mpp and objective power of an open OpenSlide ``slide``."""
    props = dict(slide.properties)
    mpp, note = _mpp(props)
    return SlideInfo(
        path=Path(path),
        vendor=str(props.get("openslide.vendor", "unknown")),
        dimensions=tuple(int(v) for v in slide.dimensions),
        level_count=int(slide.level_count),
        level_dimensions=tuple(tuple(int(v) for v in d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=mpp,
        objective_power=_float_property(props, "openslide.objective-power"),
        mpp_note=note,
    )


# --------------------------------------------------------------------------------------------
# Reading pixels


def read_rgb(slide: Any, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """``read_region`` as an (H, W, 3) uint8 array, transparent pixels made white.

    OpenSlide returns non-premultiplied RGBA; areas outside the scanned region (MRXS, some
    NDPI, beyond the level's edge) are transparent and must read as background, not black.
    OpenSlide's own errors propagate (callers know which patch they were reading).
    """
    rgba = np.asarray(slide.read_region(location, level, size))
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def read_regions(
    path: str | os.PathLike,
    locations: np.ndarray | Sequence[tuple[int, int]],
    level: int,
    size: tuple[int, int],
    *,
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Read regions of one slide, opening it once: one (H, W, 3) uint8 array per location.

    Parameters
    ----------
    path : path
        The slide.
    locations : (K, 2) int
        Level-0 pixel (x, y) top-left corners, whatever ``level``.
    level : int
        The pyramid level read (``size`` is in that level's pixels).
    size : (W, H)
        Pixels read at ``level``.
    names : sequence of str, optional
        What each region is (``"patch 17"``), for the error message; default ``"region k"``.

    Returns
    -------
    list of (H, W, 3) uint8
        In the order of ``locations``; transparent pixels (off the scan, beyond the level's
        edge) as white.

    Raises
    ------
    DataError
        The slide cannot be opened, lacks ``level``, or a region cannot be decoded (the message
        names the region, its corner, level and size).
    """
    path = Path(path)
    xy = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
    slide = open_slide(path, check_pixels=False)
    out = []
    try:
        if not 0 <= level < slide.level_count:
            raise DataError(
                f"{path}: has {slide.level_count} level(s) (0..{slide.level_count - 1}); "
                f"level {level} was requested"
            )
        for k, (x, y) in enumerate(xy.tolist()):
            try:
                rgb = read_rgb(slide, (x, y), level, size)
            except Exception as exc:  # noqa: BLE001 - OpenSlideError, OSError, ValueError
                what = names[k] if names is not None else f"region {k}"
                raise DataError(
                    f"{path}: cannot read {what} at level-0 ({x}, {y}), level {level}, "
                    f"size {size[0]} x {size[1]}: {one_line(exc)}"
                ) from exc
            out.append(rgb)
    finally:
        slide.close()
    return out


def read_thumbnail(
    slide_path: str | os.PathLike, max_size: int = 2048
) -> tuple[Image.Image, tuple[int, int]]:
    """The slide's RGB thumbnail and its level-0 size ``(W0, H0)``.

    The thumbnail's longer side is at most ``max_size`` (OpenSlide never upscales; transparent
    areas take the slide's background colour). Raises :class:`DataError` with a one-line
    reason (see the module docstring) when the file is missing, cannot be opened, or its pixels
    cannot be decoded; a caller can then draw on a blank canvas.
    """
    if max_size < 1:
        raise InputError(f"max_size must be >= 1 px; got {max_size}")
    path = Path(slide_path)
    slide = open_slide(path, check_pixels=False)
    try:
        dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
        # read before decoding: a handle that failed to decode answers nothing any more
        vendor = str(slide.properties.get("openslide.vendor", "slide"))
        try:
            thumb = slide.get_thumbnail((max_size, max_size))
        except Exception as exc:  # noqa: BLE001 - any decoder failure
            raise _undecodable(path, vendor, f"thumbnail of at most {max_size} px", exc) from exc
    finally:
        slide.close()
    return thumb.convert("RGB"), dims


# --------------------------------------------------------------------------------------------
# Writing pyramidal TIFFs


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample an (H, W, C) uint8 image by ``factor``: the mean of each ``factor`` x
    ``factor`` block, rounded half up; a partial last row or column of blocks is dropped."""
    h, w, c = image.shape
    h2, w2 = h // factor, w // factor
    s = image[: h2 * factor, : w2 * factor].astype(np.uint32).reshape(h2, factor, w2 * factor, c).sum(axis=1)
    s = s.reshape(h2, w2, factor, c).sum(axis=2)
    return ((s + (factor * factor) // 2) // (factor * factor)).astype(np.uint8)


def pyramid_levels(image: np.ndarray, n_levels: int = 3, factor: int = 4) -> list[np.ndarray]:
    """``image`` (H, W, 3) uint8 and up to ``n_levels - 1`` successive :func:`block_mean`
    reductions by ``factor`` (fewer when a level would be smaller than ``factor`` px)."""
    levels = [np.ascontiguousarray(image, dtype=np.uint8)]
    while len(levels) < n_levels and min(levels[-1].shape[:2]) >= factor:
        levels.append(block_mean(levels[-1], factor))
    return levels


def _jpeg_split(stream: bytes) -> tuple[bytes, bytes]:
    """Split a JPEG stream into ``(quantization tables, abbreviated stream without them)``.

    The abbreviated stream keeps its own (optimized) Huffman tables; APPn segments are dropped.
    """
    i, tables, body = 2, [], [b"\xff\xd8"]
    while True:
        marker = stream[i : i + 2]
        if marker == b"\xff\xda":  # start of scan: the rest is entropy-coded data + EOI
            body.append(stream[i:])
            break
        length = int.from_bytes(stream[i + 2 : i + 4], "big")
        seg = stream[i : i + 2 + length]
        if marker == b"\xff\xdb":
            tables.append(seg)
        elif not 0xE0 <= marker[1] <= 0xEF:
            body.append(seg)
        i += 2 + length
    return b"".join(tables), b"".join(body)


class _TileEncoder:
    """Square RGB tiles as abbreviated YCbCr 4:2:0 JPEG sharing one set of quantization tables
    (the TIFF ``JPEGTables``, as in scanner files), with optimized Huffman tables per tile;
    edge tiles are padded with ``background``."""

    def __init__(self, quality: int, tile: int, background: tuple[int, int, int]) -> None:
        self.quality, self.tile, self.background = int(quality), int(tile), background
        self.dqt: bytes | None = None

    def encode(self, tile: np.ndarray) -> bytes:
        import imagecodecs

        ts = self.tile
        if tile.shape[:2] != (ts, ts):
            pad = np.empty((ts, ts, 3), dtype=np.uint8)
            pad[...] = self.background
            pad[: tile.shape[0], : tile.shape[1]] = tile
            tile = pad
        enc = imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tile),
            level=self.quality,
            outcolorspace="ycbcr",
            subsampling=(2, 2),
            optimize=True,
        )
        dqt, body = _jpeg_split(bytes(enc))
        if self.dqt is None:
            self.dqt = dqt
        elif dqt != self.dqt:  # cannot happen: the quality fixes the tables
            raise RuntimeError("JPEG quantization tables differ between tiles")
        return body

    def level(self, img: np.ndarray) -> list[bytes]:
        h, w = img.shape[:2]
        ts = self.tile
        return [self.encode(img[y : y + ts, x : x + ts]) for y in range(0, h, ts) for x in range(0, w, ts)]

    @property
    def jpegtables(self) -> bytes:
        return b"\xff\xd8" + (self.dqt or b"") + b"\xff\xd9"


def _aperio_descriptions(
    levels: Sequence[np.ndarray], tile: int, quality: int, mpp: float | None, magnification: float | None
) -> tuple[list[str], np.ndarray, str]:
    """``(ImageDescription of each level's page, thumbnail (at most 256 px), its page's
    description)`` as Aperio writes them."""
    tail = (f"|AppMag = {magnification:g}" if magnification is not None else "") + (
        f"|MPP = {mpp:g}" if mpp is not None else ""
    )
    thumb = levels[-1]
    while max(thumb.shape[:2]) > 256:
        thumb = block_mean(thumb, 2)
    head = "Aperio Image Library v10.0.0\n"
    h0, w0 = levels[0].shape[:2]
    base = f"{head}{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile})"
    pages = [f"{base} JPEG/RGB Q={quality}{tail}"]
    pages += [f"{base} -> {lev.shape[1]}x{lev.shape[0]} JPEG/RGB Q={quality}{tail}" for lev in levels[1:]]
    return pages, thumb, f"{head}{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]} - {tail}"


def _write_pages(
    tif: Any, levels: list[np.ndarray], enc: _TileEncoder, aperio: tuple[list[str], np.ndarray, str] | None
) -> None:
    """Each level as a tiled page (pre-encoded tiles), with Aperio's thumbnail page second."""
    tiles = [enc.level(lev) for lev in levels]  # first: the shared JPEGTables come from the tiles
    common = {
        "dtype": np.uint8,
        "tile": (enc.tile, enc.tile),
        "photometric": "rgb",  # tifffile tags it YCbCr 2x2, as the tiles are encoded
        "compression": "jpeg",
        "jpegtables": enc.jpegtables,
        "metadata": None,  # no description of tifffile's own
    }
    for i, (lev, level_tiles) in enumerate(zip(levels, tiles)):
        page = {"subfiletype": 1} if i else {}  # level 0 without the tag, as scanners write it
        if aperio is not None:
            page["description"] = aperio[0][i]
        tif.write(iter(level_tiles), shape=lev.shape, **page, **common)
        if i == 0 and aperio is not None:
            tif.write(
                aperio[1],
                photometric="rgb",
                rowsperstrip=16,
                compression="jpeg",
                compressionargs={"level": 90},
                description=aperio[2],
                metadata=None,
            )


def write_pyramidal_tiff(
    path: str | os.PathLike,
    levels: Sequence[np.ndarray],
    *,
    mpp: float | None = 0.5,
    magnification: float | None = 20.0,
    quality: int = 90,
    tile_size: int = 256,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Path:
    """Write pyramid levels as a tiled, JPEG-compressed pyramidal TIFF, atomically.

    Parameters
    ----------
    path : path
        The file written (folders are created); it appears only once complete.
    levels : sequence of (H_l, W_l, 3) uint8
        Level 0 first, each level smaller (e.g. :func:`pyramid_levels`); OpenSlide reports
        ``level_downsamples`` from their sizes.
    mpp, magnification : float, optional
        Level-0 micrometres per pixel and objective power. With either, the file is
        Aperio-compatible (OpenSlide vendor ``aperio``, reporting what is given): level 0 as the
        first page, a stripped thumbnail (at most 256 px) as the second, then each reduced
        level (``subfiletype=1``), every page described as Aperio does. With neither, a generic
        TIFF without resolution (OpenSlide vendor ``generic-tiff``).
    quality : int
        JPEG quality of the tiles (1-100).
    tile_size : int
        Tile side in pixels (a multiple of 16).
    background : (r, g, b)
        Colour that pads the edge tiles beyond each level's size.

    Returns
    -------
    Path
        ``path``. Tiles are YCbCr 4:2:0 JPEG sharing one quantization table (``JPEGTables``)
        with optimized Huffman tables per tile; the same input gives the same bytes.
    """
    import tifffile

    path = Path(path)
    levels = [np.ascontiguousarray(lev, dtype=np.uint8) for lev in levels]
    if not levels or any(lev.ndim != 3 or lev.shape[2] != 3 for lev in levels):
        raise InputError(
            f"levels must be (H, W, 3) uint8 arrays, level 0 first; got {[lev.shape for lev in levels]}"
        )
    described = mpp is not None or magnification is not None
    aperio = _aperio_descriptions(levels, tile_size, quality, mpp, magnification) if described else None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tifffile.TiffWriter(tmp) as tif:
            _write_pages(tif, levels, _TileEncoder(quality, tile_size, background), aperio)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
