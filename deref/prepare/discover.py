"""What the preparation pipeline decides about slides before reading them: which files are
slides (discovery, one DICOM series counted once), how a batch is sharded across machines,
and the level-0 resolution tiling works from.

Opening and reading slides is :mod:`deref.slides`. Every failure here is a one-line
:class:`~deref.errors.DataError` naming the file or argument, so a batch can write it to its
manifest and go on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deref.errors import DataError
from deref.slides import SlideInfo, open_slide

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

#: Micrometres per pixel at 1x by the usual convention (20x ~ 0.5 um/px, 40x ~ 0.25 um/px).
MPP_AT_1X: float = 10.0


def slide_stem(path: str | os.PathLike) -> str:
    """The slide's name without its extension (``a.ome.tiff`` -> ``a``); names output files."""
    name = Path(path).name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return Path(name).stem


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


def _dicom_series_key(path: Path) -> tuple[str, str] | None:
    """Series a DICOM instance belongs to (OpenSlide opens a whole series from any instance)."""
    try:
        slide = open_slide(path, check_pixels=False)
    except DataError:  # the error surfaces when the file is tiled
        return None
    try:
        uid = slide.properties.get("dicom.SeriesInstanceUID")
    finally:
        slide.close()
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
