"""Finding and opening whole-slide images, and reading their resolution.

Every failure is a :class:`~deref.errors.DataError` whose message is one line naming the file
and what is wrong with it (not a slide format, a format OpenSlide cannot decode, pixels that
cannot be read, no usable resolution), so a batch can write it to its manifest and go on.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deref.errors import DataError

log = logging.getLogger(__name__)

#: File name endings searched for when a folder is given (what OpenSlide 4 reads).
SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)

#: Resolutions outside this range (micrometres per pixel) are not microscope scans; they
#: come from TIFF resolution tags left at a default such as 72 dpi (352.8 um/px).
PLAUSIBLE_MPP: tuple[float, float] = (0.05, 20.0)

#: Micrometres per pixel at 1x by the usual convention (20x ~ 0.5 um/px, 40x ~ 0.25 um/px).
MPP_AT_1X: float = 10.0


def one_line(text: object) -> str:
    """``text`` as a single line (OpenSlide and libtiff messages sometimes hold newlines)."""
    return " ".join(str(text).split())


def slide_stem(path: str | os.PathLike) -> str:
    """The slide's name without its extension (``a.ome.tiff`` -> ``a``); names output files."""
    name = Path(path).name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return Path(name).stem


@dataclass(frozen=True)
class SlideInfo:
    """What tiling needs to know about one slide.

    ``mpp`` is micrometres per level-0 pixel (None when the file has none usable);
    ``objective_power`` the scanner's magnification (None when absent); ``mpp_note`` says
    why a resolution tag present in the file was not used.
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


def open_slide(path: str | os.PathLike, *, check_pixels: bool = True):
    """Open ``path`` with OpenSlide, raising a one-line :class:`DataError` on any failure.

    With ``check_pixels`` a small region of the smallest level is decoded, so that files whose
    headers open but whose tiles are corrupt fail here rather than halfway through a batch.
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
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
    except openslide.OpenSlideError as exc:
        raise DataError(f"{path}: OpenSlide cannot open this {vendor} file: {one_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: OpenSlide cannot open this {vendor} file: {one_line(exc)}") from exc
    if check_pixels:
        level = slide.level_count - 1
        w, h = slide.level_dimensions[level]
        try:
            slide.read_region((0, 0), level, (max(1, min(w, 16)), max(1, min(h, 16))))
        except Exception as exc:  # noqa: BLE001
            slide.close()
            raise DataError(
                f"{path}: {vendor} file opens but its pixels cannot be decoded (level {level}): "
                f"{one_line(exc)}"
            ) from exc
    return slide


def slide_info(slide, path: str | os.PathLike) -> SlideInfo:
    """Read dimensions, levels, mpp and objective power of an open OpenSlide ``slide``."""
    props = dict(slide.properties)
    mpp_x = _float_property(props, "openslide.mpp-x")
    mpp_y = _float_property(props, "openslide.mpp-y")
    mpp = None
    note = ""
    if mpp_x is not None:
        mpp = mpp_x if mpp_y is None else (mpp_x + mpp_y) / 2.0
        if not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
            dpi = 25400.0 / mpp
            note = (
                f"its resolution tags give {mpp:.4g} um/px ({dpi:.0f} dpi, a default rather than a "
                f"scan resolution; expected {PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} um/px)"
            )
            mpp = None
    power = _float_property(props, "openslide.objective-power")
    return SlideInfo(
        path=Path(path),
        vendor=str(props.get("openslide.vendor", "unknown")),
        dimensions=tuple(int(v) for v in slide.dimensions),
        level_count=int(slide.level_count),
        level_dimensions=tuple(tuple(int(v) for v in d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=mpp,
        objective_power=power,
        mpp_note=note,
    )


@dataclass(frozen=True)
class Resolution:
    """The level-0 resolution tiling works from, and where it came from."""

    mpp: float
    source: str  # "slide", "objective-power" or "--mpp"


def resolve_mpp(info: SlideInfo, override: float | None = None) -> Resolution:
    """Level-0 micrometres per pixel: ``override`` if given, else the slide's mpp, else
    ``10 / objective power``; a slide with none of these is a :class:`DataError`."""
    if override is not None:
        if not override > 0:
            raise DataError(f"--mpp must be > 0, got {override}")
        return Resolution(float(override), "--mpp")
    if info.mpp is not None:
        return Resolution(info.mpp, "slide")
    if info.objective_power is not None:
        return Resolution(MPP_AT_1X / info.objective_power, "objective-power")
    what = (
        f"no objective power, and {info.mpp_note}"
        if info.mpp_note
        else f"the {info.vendor} file records neither mpp nor objective power"
    )
    raise DataError(f"{info.path}: no usable resolution: {what}; pass --mpp (micrometres per level-0 pixel)")


def read_rgb(slide, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """``read_region`` as an (H, W, 3) uint8 array, transparent pixels made white.

    OpenSlide returns non-premultiplied RGBA; areas outside the scanned region (MRXS, some
    NDPI) are transparent and must read as background, not black tissue.
    """
    rgba = np.asarray(slide.read_region(location, level, size))
    alpha = rgba[..., 3]
    rgb = rgba[..., :3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255.0
    return (rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _dicom_series_key(path: Path) -> tuple[str, str] | None:
    """Series a DICOM instance belongs to (OpenSlide opens a whole series from any instance)."""
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as s:
            uid = s.properties.get("dicom.SeriesInstanceUID")
    except Exception:  # noqa: BLE001 - the error surfaces when the file is tiled
        return None
    return (str(path.parent.resolve()), uid) if uid else None


def discover_slides(inputs: Iterable[str | os.PathLike], *, recursive: bool = False) -> list[Path]:
    """Slide files named in ``inputs`` (files, or folders searched for :data:`SLIDE_SUFFIXES`).

    Files given explicitly are kept whatever their extension (a bad one is reported when it is
    tiled). DICOM instances of one series found in a folder count once (the first by name).
    Raises :class:`DataError` for a missing input, an empty result, or two slides that would
    write the same output name.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            hits = sorted(
                q for q in p.glob(pattern) if q.is_file() and q.name.lower().endswith(SLIDE_SUFFIXES)
            )
            seen: set[tuple[str, str]] = set()
            for q in hits:
                if q.suffix.lower() == ".dcm":
                    key = _dicom_series_key(q)
                    if key is not None:
                        if key in seen:
                            log.debug("%s: same DICOM series as an earlier file, skipped", q)
                            continue
                        seen.add(key)
                found.append(q)
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not found:
        raise DataError(
            "no slide files found in "
            + ", ".join(str(i) for i in inputs)
            + f" (looked for {', '.join(SLIDE_SUFFIXES)})"
        )
    unique: list[Path] = []
    by_stem: dict[str, Path] = {}
    for p in found:
        stem = slide_stem(p)
        if stem in by_stem:
            if by_stem[stem].resolve() == p.resolve():
                continue
            raise DataError(
                f"two slides would write the same output name {stem!r}: {by_stem[stem]} and {p}; "
                "rename one or tile them into different --out folders"
            )
        by_stem[stem] = p
        unique.append(p)
    return unique


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> ``(K, N)``; anything else is a :class:`DataError`."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise DataError(f"--shard {text!r}: expected K/N, e.g. 1/4 (K from 1 to N)") from None
    if n < 1 or not 1 <= k <= n:
        raise DataError(f"--shard {text!r}: expected 1 <= K <= N, e.g. 1/4 ... 4/4")
    return k, n


def shard(items: Sequence, k: int, n: int, key=str) -> list:
    """The ``k``-th of ``n`` deterministic parts of ``items`` (1-based ``k``).

    Items are sorted by ``key`` and dealt round-robin, so the parts are disjoint, cover every
    item, differ in size by at most one, and do not depend on the order the items were listed
    in (every machine sharing a folder computes the same split).
    """
    ordered = sorted(items, key=key)
    return ordered[k - 1 :: n]


def write_pyramidal_tiff(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    magnification: float | None = 20.0,
    levels: int = 3,
    factor: int = 4,
    tile: int = 256,
    compression: str = "jpeg",
) -> Path:
    """Write an (H, W, 3) uint8 image as a tiled pyramidal TIFF that OpenSlide opens with
    ``levels`` levels (each ``factor`` times smaller, block-averaged).

    With ``mpp`` or ``magnification`` the file is Aperio-like (OpenSlide vendor ``aperio``,
    reporting both); with neither it is a generic TIFF without resolution. For demos and tests.
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pyramid = [np.ascontiguousarray(image, dtype=np.uint8)]
    for _ in range(1, levels):
        prev = pyramid[-1]
        h, w = prev.shape[0] // factor * factor, prev.shape[1] // factor * factor
        if h < factor or w < factor:
            break
        small = prev[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3))
        pyramid.append((small + 0.5).astype(np.uint8))
    aperio = mpp is not None or magnification is not None
    h0, w0 = pyramid[0].shape[:2]
    meta = ""
    if magnification is not None:
        meta += f"|AppMag = {magnification:g}"
    if mpp is not None:
        meta += f"|MPP = {mpp:g}"
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(pyramid):
            kw: dict = {}
            if aperio:
                kw["description"] = (
                    f"Aperio Image Library v10.0.0\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) "
                    f"JPEG/RGB Q=90{meta}"
                )
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if i else 0,
                metadata=None,
                **kw,
            )
            if i == 0 and aperio:
                # Aperio files carry a stripped thumbnail as their second page.
                step = max(1, max(h0, w0) // 256)
                thumb = np.ascontiguousarray(pyramid[0][::step, ::step])
                tif.write(
                    thumb,
                    photometric="rgb",
                    compression=compression,
                    metadata=None,
                    description=f"Aperio Image Library v10.0.0\n{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]}{meta}",
                )
    return path
