"""MRI cohorts: the MRI manifest and the per-sequence feature vectors that `deref mri` writes.

An MRI + WSI cohort is the survival table (MCAT layout, one row per slide, no genomic
columns needed) plus an **MRI manifest**: a CSV with one row per patient, a ``case_id``
column (``patient`` / ``patient_id`` are accepted), one column per sequence (a NIfTI file or a
DICOM series folder) and a ``mask`` column (the tumour mask); paths are relative to the
manifest. ``deref mri MANIFEST --per-sequence --out FEATURES`` turns it into
``FEATURES/<case_id>.h5``: one 2048-d row per sequence (attrs ``sequences``, the row order).

:func:`mri_groups` reads those vectors into the cohort's modality-1 frame: one group (one
token of DeReF's modality-1 encoder) per sequence, with columns ``<sequence>:<j>``, exactly as
gene families are groups of genomic columns, so standardization, training, prediction and
attribution treat MRI sequences the way they treat gene families.

Layer 2: numpy, pandas, h5py; nothing from :mod:`deref.prepare` (which reads the same manifest
to run the network, through :func:`read_mri_manifest`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deref.data.cohort import GeneFamily, Problem, raise_problems
from deref.errors import DataError, one_line
from deref.fileio import file_sha256

__all__ = ["MriManifest", "read_mri_manifest", "mri_groups", "mri_column", "MANIFEST_ID_COLUMNS"]

#: Accepted names of the manifest's patient column, in order of preference.
MANIFEST_ID_COLUMNS = ("case_id", "patient", "patient_id")
MASK_COLUMN = "mask"


def mri_column(sequence: str, j: int) -> str:
    """The name of feature ``j`` of ``sequence`` in the cohort's modality-1 frame."""
    return f"{sequence}:{j}"


@dataclass(frozen=True)
class MriManifest:
    """The MRI manifest of a cohort.

    Attributes
    ----------
    path
        The manifest CSV.
    sequences
        Sequence names in column order (the order of the modality-1 tokens).
    files
        ``{case_id: {sequence: path}}`` (absolute paths; a file or a DICOM folder).
    masks
        ``{case_id: mask path or None}``.
    fingerprint
        SHA-256 of the manifest's bytes.
    """

    path: Path
    sequences: tuple[str, ...]
    files: dict[str, dict[str, Path]]
    masks: dict[str, Path | None]
    fingerprint: str

    @property
    def case_ids(self) -> list[str]:
        return list(self.files)


def _manifest_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"MRI manifest {path}: {one_line(exc)}") from exc


def read_mri_manifest(
    path: str | os.PathLike, sequences: tuple[str, ...] | list[str] | None = None
) -> MriManifest:
    """Read and check an MRI manifest (see the module notes).

    ``sequences`` picks and orders the sequence columns (default: every column but the patient
    and mask columns, in file order). Every problem is reported at once, each naming the file,
    the line, the patient and the column: no patient column, a missing sequence column, a blank
    cell, a patient listed twice. Paths are not opened here (``deref mri`` reads them).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MRI manifest {path}: file not found")
    cols, rows = _manifest_rows(path)
    src = str(path)
    id_col = next((c for c in MANIFEST_ID_COLUMNS if c in cols), None)
    if id_col is None:
        raise DataError(
            f"MRI manifest {path}: no patient column; expected one of {', '.join(MANIFEST_ID_COLUMNS)} (got {cols})"
        )
    seqs = tuple(sequences) if sequences else tuple(c for c in cols if c not in (id_col, MASK_COLUMN))
    missing = [c for c in seqs if c not in cols]
    if missing or not seqs:
        raise DataError(
            f"MRI manifest {path}: "
            + (f"no column(s) {missing}" if missing else "no sequence column")
            + f"; expected one column per MRI sequence besides {id_col!r} and 'mask' (columns: {cols})"
        )
    problems: list[Problem] = []
    files: dict[str, dict[str, Path]] = {}
    masks: dict[str, Path | None] = {}

    def resolve(v: str) -> Path:
        p = Path(v.strip())
        return p if p.is_absolute() else (path.parent / p)

    for line, r in enumerate(rows, start=2):
        pid = (r.get(id_col) or "").strip()
        if not pid:
            problems.append(
                Problem(src, line, id_col, "blank patient id", "a case id as in the cohort table")
            )
            continue
        if pid in files:
            problems.append(Problem(src, line, id_col, f"patient {pid} listed twice", "one row per patient"))
            continue
        blank = [c for c in seqs if not (r.get(c) or "").strip()]
        for c in blank:
            problems.append(
                Problem(src, line, c, f"patient {pid}: blank sequence path", "a NIfTI file or DICOM folder")
            )
        files[pid] = {c: resolve(r[c]) for c in seqs if c not in blank}
        mask = (r.get(MASK_COLUMN) or "").strip()
        masks[pid] = resolve(mask) if mask else None
    if not rows:
        problems.append(Problem(src, None, None, "no data rows", "one row per patient"))
    raise_problems(problems, f"MRI manifest {path}")
    return MriManifest(path, seqs, files, masks, file_sha256(path))


def _read_vectors(path: Path) -> tuple[np.ndarray, list[str] | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            feats = np.asarray(f["features"][()], dtype=np.float32)
            raw = f.attrs.get("sequences")
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable MRI feature file ({one_line(exc)})") from exc
    if isinstance(raw, bytes):
        raw = raw.decode()
    names = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else None
    return feats, names


def _patient_vectors(
    case_id: str, feature_dir: Path, sequences: tuple[str, ...]
) -> tuple[np.ndarray | None, Problem | None]:
    """``(S, D)`` vectors of one patient in ``sequences`` order, or the problem that prevents it."""
    path = feature_dir / f"{case_id}.h5"
    src = str(path)
    if not path.is_file():
        return None, Problem(src, None, None, f"patient {case_id}: no MRI feature file", "`deref mri` output")
    try:
        feats, names = _read_vectors(path)
    except DataError as exc:
        return None, Problem(
            src, None, None, f"patient {case_id}: {exc}", "an HDF5 bag written by `deref mri`"
        )
    if feats.ndim != 2:
        return None, Problem(
            src, None, "features", f"patient {case_id}: shape {feats.shape}", "(sequences, D)"
        )
    if names is None or feats.shape[0] != len(names):
        return None, Problem(
            src,
            None,
            "features",
            f"patient {case_id}: {feats.shape[0]} row(s) without per-sequence names",
            "one row per sequence: rerun `deref mri --per-sequence`",
        )
    absent = [s for s in sequences if s not in names]
    if absent:
        return None, Problem(
            src,
            None,
            "sequences",
            f"patient {case_id}: no vector for sequence(s) {absent} (has {names})",
            "every sequence of the manifest",
        )
    out = feats[[names.index(s) for s in sequences]]
    bad = [s for s, row in zip(sequences, out) if not np.isfinite(row).all()]
    if bad:
        return None, Problem(
            src, None, "features", f"patient {case_id}: non-finite values in {bad}", "finite numbers"
        )
    return out, None


def mri_groups(
    manifest: MriManifest, feature_dir: str | os.PathLike, case_ids: list[str]
) -> tuple[pd.DataFrame, list[GeneFamily]]:
    """The cohort's modality-1 frame from the MRI feature files of ``case_ids``.

    Returns ``(frame, groups)``: ``frame`` is ``(n_patients, S * D)`` float32 indexed by case id,
    columns :func:`mri_column` (sequence-major); ``groups`` one :class:`GeneFamily` per sequence
    holding its ``D`` columns (a modality-1 token).

    Raises
    ------
    DataError
        Every patient of ``case_ids`` missing from the manifest, without a feature file, or
        whose file lacks a sequence, has non-finite values or another width — all listed at once,
        naming the patient, the sequence and the file.
    """
    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise DataError(
            f"MRI feature folder {feature_dir}: not found (run `deref mri --per-sequence --out` first)"
        )
    problems: list[Problem] = []
    rows: dict[str, np.ndarray] = {}
    for c in case_ids:
        if c not in manifest.files:
            problems.append(
                Problem(
                    str(manifest.path),
                    None,
                    None,
                    f"patient {c} has no row",
                    "a row per patient of the cohort table",
                )
            )
            continue
        vec, problem = _patient_vectors(c, feature_dir, manifest.sequences)
        if problem is not None:
            problems.append(problem)
        else:
            rows[c] = vec
    widths = {v.shape[1] for v in rows.values()}
    if len(widths) > 1:
        problems.append(
            Problem(
                str(feature_dir),
                None,
                None,
                f"feature widths differ between patients: {sorted(widths)}",
                "one width",
            )
        )
    raise_problems(problems, f"MRI features in {feature_dir}")
    dim = widths.pop() if widths else 0
    cols = [mri_column(s, j) for s in manifest.sequences for j in range(dim)]
    data = (
        np.stack([rows[c].reshape(-1) for c in case_ids])
        if case_ids
        else np.zeros((0, len(cols)), np.float32)
    )
    frame = pd.DataFrame(data, index=pd.Index(case_ids, name="case_id"), columns=cols, dtype=np.float32)
    groups = [GeneFamily(name=s, columns=[mri_column(s, j) for j in range(dim)]) for s in manifest.sequences]
    return frame, groups
