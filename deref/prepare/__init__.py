"""Data preparation: whole-slide images to patch features, MRI volumes to vectors.

The pipeline, in the order a user runs it:

1. :mod:`deref.prepare.tile` (``deref tile``): tissue mask (:mod:`~deref.prepare.tissue`) and
   patch coordinates at a target magnification, one CLAM-layout ``.h5`` per slide;
2. :mod:`deref.prepare.extract` (``deref extract``): patch features from a backbone of
   :mod:`~deref.prepare.backbones`, written beside the coordinates (resumable, shardable);
3. :mod:`deref.prepare.mri` (``deref mri``): one vector per patient (or per sequence) from NIfTI or DICOM sequences.

Batch functions never stop at a bad input: each input gets a :class:`ManifestRow` (status
``ok``, ``skipped``, ``empty`` or ``failed`` with a one-line error), written as a CSV manifest.
This module imports nothing heavy, so the CLI can load it without torch or OpenSlide.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Exit status of a batch command that finished but could not process some inputs.
EXIT_SOME_FAILED = 3

STATUSES = ("ok", "skipped", "empty", "failed")


@dataclass
class ManifestRow:
    """The outcome of one input of a batch run.

    ``status``: ``ok`` (written), ``skipped`` (a finished output already existed), ``empty``
    (readable but nothing to write, e.g. no tissue patch), ``failed`` (``error`` says why).
    """

    item: str
    status: str
    patches: int = 0
    seconds: float = 0.0
    error: str = ""
    output: str = ""


def write_manifest(
    path: str | os.PathLike,
    rows: Sequence[ManifestRow],
    *,
    id_column: str = "slide",
    count_column: str = "patches",
) -> Path:
    """Write ``rows`` as CSV (``id_column, status, count_column, seconds, error, output``),
    atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([id_column, "status", count_column, "seconds", "error", "output"])
        for r in rows:
            w.writerow([r.item, r.status, r.patches, f"{r.seconds:.3f}", r.error, r.output])
    os.replace(tmp, path)
    return path


def summarize(rows: Sequence[ManifestRow], *, noun: str = "slide", counted: str | None = "patches") -> str:
    """One line: how many inputs ended in each status, items written, total seconds."""
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    parts = [f"{counts[s]} {s}" for s in STATUSES]
    text = f"{len(rows)} {noun}{'' if len(rows) == 1 else 's'}: " + ", ".join(parts)
    if counted:
        text += f"; {sum(r.patches for r in rows if r.status == 'ok'):,} {counted} written"
    return text + f"; {sum(r.seconds for r in rows):.1f} s"


def exit_status(rows: Sequence[ManifestRow]) -> int:
    """0 when no input failed, :data:`EXIT_SOME_FAILED` otherwise."""
    return EXIT_SOME_FAILED if any(r.status == "failed" for r in rows) else 0
