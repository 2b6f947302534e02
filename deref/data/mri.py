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

__all__ = [
    "MriManifest",
    "MriCubes",
    "read_mri_manifest",
    "read_mri_cubes",
    "mri_groups",
    "mri_column",
    "MANIFEST_ID_COLUMNS",
]

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
    path: str | os.PathLike,
    sequences: tuple[str, ...] | list[str] | None = None,
    *,
    allow_missing: bool = False,
) -> MriManifest:
    """Read and check an MRI manifest (see the module notes).

    ``sequences`` picks and orders the sequence columns (default: every column but the patient
    and mask columns, in file order). Every problem is reported at once, each naming the file,
    the line, the patient and the column: no patient column, a missing sequence column, a blank
    cell, a patient listed twice. Paths are not opened here (``deref mri`` reads them). With
    ``allow_missing`` a blank sequence cell is a missing sequence (absent from ``files[case]``).
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
        for c in [] if allow_missing else blank:
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
            if "cubes" in f and "features" not in f:
                raise DataError(
                    f"{path}: holds ROI cubes (`deref mri --cubes`), not vectors; pass its folder as the MRI "
                    "cubes (--mri-cubes) to train the 3D ResNet end to end"
                )
            feats = np.asarray(f["features"][()], dtype=np.float32)
            raw = f.attrs.get("sequences")
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable MRI feature file ({one_line(exc)})") from exc
    if isinstance(raw, bytes):
        raw = raw.decode()
    names = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else None
    return feats, names


def _in_order(
    rows: np.ndarray,
    names: list[str],
    sequences: tuple[str, ...],
    case_id: str,
    src: str,
    what: str,
    allow_missing: bool,
) -> tuple[np.ndarray | None, Problem | None]:
    """A file's per-sequence ``rows`` (one per name of ``names``) in the manifest's ``sequences``
    order, NaN rows for absent sequences (with ``allow_missing``; else a problem), or the problem
    of a non-finite row."""
    absent = [s for s in sequences if s not in names]
    if absent and not allow_missing:
        return None, Problem(
            src,
            None,
            "sequences",
            f"patient {case_id}: no {what} for sequence(s) {absent} (has {names})",
            "every sequence of the manifest (or --allow-missing)",
        )
    out = np.full((len(sequences), rows.shape[1]), np.nan, np.float32)
    for i, s in enumerate(sequences):
        if s in names:
            out[i] = rows[names.index(s)]
    bad = [s for s, row in zip(sequences, out) if s in names and not np.isfinite(row).all()]
    if bad:
        kind = "voxels" if what == "cube" else "values"
        return None, Problem(
            src,
            None,
            f"{what}s" if what == "cube" else "features",
            f"patient {case_id}: non-finite {kind} in {bad}",
            "finite numbers",
        )
    return out, None


def _patient_vectors(
    case_id: str, feature_dir: Path, sequences: tuple[str, ...], allow_missing: bool = False
) -> tuple[np.ndarray | None, Problem | None]:
    """``(S, D)`` vectors of one patient in ``sequences`` order (NaN rows for missing sequences
    with ``allow_missing``; None for a patient without a file), or the problem that prevents it."""
    path = feature_dir / f"{case_id}.h5"
    src = str(path)
    if not path.is_file():
        if allow_missing:
            return None, None
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
    return _in_order(feats, names, sequences, case_id, src, "vector", allow_missing)


def _each_patient(manifest: MriManifest, case_ids, allow_missing: bool, read, folder: Path):
    """``({case_id: what read(case_id, folder, sequences, allow_missing) gives}, problems)`` over
    ``case_ids``; a patient without a manifest row is a problem unless ``allow_missing``."""
    problems: list[Problem] = []
    found: dict = {}
    for c in case_ids:
        if c not in manifest.files:
            if not allow_missing:
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
        got, problem = read(c, folder, manifest.sequences, allow_missing)
        if problem is not None:
            problems.append(problem)
        elif got is not None:
            found[c] = got
    return found, problems


def mri_groups(
    manifest: MriManifest, feature_dir: str | os.PathLike, case_ids: list[str], *, allow_missing: bool = False
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
        naming the patient, the sequence and the file. With ``allow_missing``, a patient without
        a feature file, a manifest row or a sequence's vector is not an error: those groups are
        NaN in the frame (a missing input; :attr:`deref.data.cohort.Cohort.missing`).
    """
    feature_dir = Path(feature_dir)
    if not feature_dir.is_dir():
        raise DataError(
            f"MRI feature folder {feature_dir}: not found (run `deref mri --per-sequence --out` first)"
        )
    rows, problems = _each_patient(manifest, case_ids, allow_missing, _patient_vectors, feature_dir)
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
    absent = np.full((len(manifest.sequences), dim), np.nan, np.float32)
    data = (
        np.stack([rows.get(c, absent).reshape(-1) for c in case_ids])
        if case_ids
        else np.zeros((0, len(cols)), np.float32)
    )
    frame = pd.DataFrame(data, index=pd.Index(case_ids, name="case_id"), columns=cols, dtype=np.float32)
    groups = [GeneFamily(name=s, columns=[mri_column(s, j) for j in range(dim)]) for s in manifest.sequences]
    return frame, groups


# ------------------------------------------------------------------------------- ROI cubes
@dataclass(frozen=True)
class MriCubes:
    """The ROI cubes of an MRI cohort (``deref mri --cubes``), read once into memory.

    ``data`` ``(n_patients, S, G**3)`` float32 (each sequence's cube flattened C-order, the
    model's modality-1 input in end-to-end mode), rows in ``case_ids`` order; ``inside``
    ``(n_patients, G**3)`` bool (the tumour mask on each cube); ``spacing_mm`` per patient.
    """

    folder: Path
    sequences: tuple[str, ...]
    grid: int
    case_ids: tuple[str, ...]
    data: np.ndarray
    inside: np.ndarray
    spacing_mm: dict[str, float]
    center_ras_mm: dict[str, tuple[float, float, float]]

    @property
    def size(self) -> int:
        """Values per sequence cube, ``G**3``."""
        return self.grid**3

    def rows(self, case_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.case_ids)}
        missing = [c for c in case_ids if c not in index]
        if missing:
            raise DataError(f"MRI cubes in {self.folder}: no cubes for patient(s) {missing[:5]}")
        return np.asarray([index[c] for c in case_ids], dtype=np.int64)

    def groups(self, case_ids: list[str] | tuple[str, ...]) -> list[np.ndarray]:
        """One ``(n, G**3)`` float32 array per sequence for ``case_ids`` (the model's ``m1``); views
        of :attr:`data` (no copy) when ``case_ids`` is the cohort's order, as training and the
        predictor ask (they copy the rows of each batch)."""
        rows = self.rows(case_ids)
        block = self.data if np.array_equal(rows, np.arange(len(self.case_ids))) else self.data[rows]
        return [block[:, s] for s in range(len(self.sequences))]

    def cube(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(cubes (S, G, G, G), inside (G, G, G))`` of one patient."""
        i = int(self.rows([case_id])[0])
        g = self.grid
        return self.data[i].reshape(len(self.sequences), g, g, g), self.inside[i].reshape(g, g, g)


def _patient_cubes(case_id: str, folder: Path, sequences: tuple[str, ...], allow_missing: bool = False):
    """``(cubes (S, G**3), inside (G**3,), attrs)`` of one patient (NaN rows for missing sequences
    with ``allow_missing``; None without a file), or the problem preventing it."""
    import h5py

    path = folder / f"{case_id}.h5"
    src = str(path)
    if not path.is_file():
        if allow_missing:
            return None, None
        return None, Problem(
            src, None, None, f"patient {case_id}: no MRI cube file", "`deref mri --cubes` output"
        )
    try:
        with h5py.File(path, "r") as f:
            if "cubes" not in f:
                what = "vectors (`deref mri --per-sequence`)" if "features" in f else "no 'cubes' dataset"
                return None, Problem(
                    src,
                    None,
                    "cubes",
                    f"patient {case_id}: holds {what}",
                    "ROI cubes from `deref mri --cubes`",
                )
            cubes = np.asarray(f["cubes"][()], dtype=np.float32)
            inside = (
                np.asarray(f["inside"][()], dtype=bool) if "inside" in f else np.ones(cubes.shape[1:], bool)
            )
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as exc:
        return None, Problem(
            src, None, None, f"patient {case_id}: {one_line(exc)}", "an HDF5 file of `deref mri --cubes`"
        )
    names = json.loads(attrs.get("sequences", "[]"))
    if cubes.ndim != 4 or len(set(cubes.shape[1:])) != 1 or cubes.shape[0] != len(names):
        return None, Problem(
            src,
            None,
            "cubes",
            f"patient {case_id}: shape {cubes.shape} for sequences {names}",
            "(S, G, G, G)",
        )
    out, problem = _in_order(
        cubes.reshape(len(names), -1), names, sequences, case_id, src, "cube", allow_missing
    )
    return (None, problem) if problem is not None else ((out, inside.reshape(-1), attrs), None)


def read_mri_cubes(
    manifest: MriManifest, folder: str | os.PathLike, case_ids: list[str], *, allow_missing: bool = False
) -> MriCubes:
    """The ROI cubes of ``case_ids`` from ``folder`` (``deref mri --cubes`` output).

    Raises
    ------
    DataError
        Every patient missing from the manifest, without a cube file, whose file holds vectors,
        lacks a sequence or has non-finite voxels, and cubes of different sizes — all listed at
        once, naming the patient, the sequence and the file. With ``allow_missing``, a patient
        without a row, a file or a sequence's cube gets NaN cubes there (a missing input).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MRI cube folder {folder}: not found (run `deref mri --cubes --out` first)")
    found, problems = _each_patient(manifest, case_ids, allow_missing, _patient_cubes, folder)
    sizes = {v[0].shape[1] for v in found.values()}
    if len(sizes) > 1:
        grids = sorted(round(s ** (1 / 3)) for s in sizes)
        problems.append(
            Problem(str(folder), None, None, f"cube sizes differ between patients: {grids}", "one --grid")
        )
    raise_problems(problems, f"MRI cubes in {folder}")
    size = sizes.pop() if sizes else 0
    grid = round(size ** (1 / 3))
    ids = tuple(case_ids)
    n_seq = len(manifest.sequences)
    absent = (np.full((n_seq, size), np.nan, np.float32), np.zeros(size, bool), {})
    got = [found.get(c, absent) for c in ids]
    data = np.stack([g[0] for g in got]) if ids else np.zeros((0, n_seq, 0), np.float32)
    inside = np.stack([g[1] for g in got]) if ids else np.zeros((0, 0), bool)
    spacing = {c: float(g[2].get("spacing_mm", 1.0)) for c, g in zip(ids, got)}
    center = {
        c: tuple(float(x) for x in np.ravel(g[2].get("center_ras_mm", (0.0, 0.0, 0.0))))
        for c, g in zip(ids, got)
    }
    return MriCubes(folder, manifest.sequences, grid, ids, data, inside, spacing, center)
