"""Cohort tables: survival labels, slides and genomic profiles per patient, and gene families.

A cohort table (MCAT layout) has one row per whole-slide image: ``case_id``, ``slide_id``,
the survival time (``survival_months``), ``censorship`` (1 = censored, no event observed),
optional clinical columns (``age``, ``is_female``, ``site``, ``oncotree_code``, ...) and the
genomic columns ``<GENE>_rnaseq``, ``<GENE>_cnv``, ``<GENE>_mut``. Genomic columns are chosen
by these name suffixes, never by position, so index columns (``Unnamed: 0``) or a reordered
table never shift the features.

Every check reports *where* the problem is: the file, the CSV line (the header is line 1,
the first data row line 2; one record per line is assumed), the column, and what was
expected. :func:`check_table` returns the problems as :class:`Problem` objects (the
``deref validate`` linter prints them all); :func:`load_cohort` raises one
:class:`~deref.errors.DataError` listing them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deref.data.bags import Bag, find_bag, load_patient_bag
from deref.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Name suffixes of genomic columns, in the order a gene's columns are grouped.
GENOMIC_SUFFIXES: tuple[str, ...] = ("_mut", "_cnv", "_rnaseq")
#: Columns every cohort table must have (besides the time and censorship columns).
ID_COLUMNS: tuple[str, ...] = ("case_id",)
#: At most this many problems are spelled out in one DataError message.
MAX_LISTED = 20

_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, printed as ``file:row: column: problem; expected ...``.

    ``row`` is a line number of the file (header = line 1) or None when the problem is not
    tied to a line; ``column`` is a column name (or another field name) or None.
    """

    file: str
    row: int | None
    column: str | None
    problem: str
    expected: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        parts = [where]
        if self.column is not None:
            parts.append(self.column)
        text = ": ".join(parts) + f": {self.problem}"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


def raise_problems(problems: Sequence[Problem], what: str) -> None:
    """Raise one :class:`DataError` listing ``problems`` (at most :data:`MAX_LISTED`).

    The error carries the full list as its ``problems`` attribute. Does nothing when the
    list is empty.
    """
    if not problems:
        return
    lines = [str(p) for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more (run `deref validate` to list all)")
    n = len(problems)
    err = DataError(f"{what}: {n} problem{'s' if n != 1 else ''}:\n  " + "\n  ".join(lines))
    err.problems = list(problems)  # type: ignore[attr-defined]
    raise err


def _line(row_index: int) -> int:
    """CSV line of a data row whose 0-based position in the file is ``row_index``."""
    return int(row_index) + 2


def _show(value: object) -> str:
    """A cell value for a message: strings quoted, numbers plain (no ``np.int64(...)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value) if isinstance(value, str) else f"{value}"


def _lines_text(lines: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in lines[:limit])
    word = "line" if len(lines) == 1 else "lines"
    return f"{word} {shown}" + (f", ... ({len(lines)} rows)" if len(lines) > limit else "")


# --------------------------------------------------------------------------- reading
def _read_file_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a CSV file or a zip holding one CSV")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _unwrap(data: bytes, path: Path, depth: int = 0) -> bytes:
    """The CSV bytes inside ``data``: itself, or the single member of a zip / a gzip stream."""
    if data[:4] == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                if len(members) != 1:
                    names = [m.filename for m in members]
                    raise DataError(
                        f"{path}: zip holds {len(members)} files {names}; expected exactly one CSV"
                    )
                # Read in memory: member names may hold '../' (the MCAT zips do), never extract.
                inner = zf.read(members[0])
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: corrupt zip file ({exc})") from exc
        if depth < 2 and (inner[:4] == _ZIP_MAGIC or inner[:2] == _GZIP_MAGIC):
            return _unwrap(inner, path, depth + 1)
        return inner
    if data[:2] == _GZIP_MAGIC:
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file ({exc})") from exc
        return _unwrap(inner, path, depth + 1) if depth < 2 else inner
    return data


def _parse_csv(data: bytes, path: Path, dtype: Any = None) -> pd.DataFrame:
    try:
        text_head = data[:1_000_000].decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        # The cut may split a character; only the first line matters here.
        text_head = data[:1_000_000].decode("utf-8-sig", errors="ignore").splitlines()
    if not text_head or not text_head[0].strip():
        raise DataError(f"{path}:1: empty file or empty header line; expected a CSV header")
    header = next(csv.reader([text_head[0]]))
    seen: dict[str, int] = {}
    dups = []
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 2:
            dups.append(name)
    if dups:
        raise DataError(
            f"{path}:1: duplicate column name(s) {dups[:10]}; expected each column once "
            "(pandas would rename the copies and they would be silently dropped)"
        )
    try:
        df = pd.read_csv(
            io.BytesIO(data), low_memory=False, skip_blank_lines=False, encoding="utf-8-sig", dtype=dtype
        )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file; expected a CSV header and rows") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({str(exc).strip()})") from exc
    blank = df.isna().all(axis=1)
    if blank.any():
        log.debug("%s: ignoring %d blank line(s)", path, int(blank.sum()))
        df = df.loc[~blank]
    return df


def _load_table_bytes(path: str | os.PathLike, dtype: Any = None) -> tuple[pd.DataFrame, str]:
    path = Path(path)
    raw = _read_file_bytes(path)
    fingerprint = hashlib.sha256(raw).hexdigest()
    return _parse_csv(_unwrap(raw, path), path, dtype), fingerprint


def read_table(path: str | os.PathLike, dtype: Any = None) -> pd.DataFrame:
    """Read a CSV table, or a zip (or gzip) holding one CSV, entirely in memory.

    Parameters
    ----------
    path
        A ``.csv`` file, a zip archive with exactly one member (the MCAT ``*.csv.zip``
        files, whose member name holds ``../``: it is read, never extracted), or a gzip file.

    Returns
    -------
    pandas.DataFrame
        One row per non-blank CSV record. The index is the 0-based position of the record
        among the data lines, so the record's line in the file is ``index + 2``.

    Raises
    ------
    DataError
        Missing or unreadable file, a zip with zero or several members, a corrupt archive,
        text that is not UTF-8 CSV, an empty file, or duplicate column names.

    Other Parameters
    ----------------
    dtype
        Passed to :func:`pandas.read_csv` (e.g. ``{"case_id": str}`` so that ids are never
        parsed as numbers).
    """
    return _load_table_bytes(path, dtype)[0]


def genomic_columns(columns: Iterable[str]) -> list[str]:
    """The genomic columns among ``columns``: names ending in ``_rnaseq``, ``_cnv`` or ``_mut``.

    Chosen by name only, in the table's order; any other column (clinical, index, labels)
    is never a feature.
    """
    return [c for c in columns if isinstance(c, str) and c.endswith(GENOMIC_SUFFIXES)]


# --------------------------------------------------------------------------- gene families
@dataclass
class GeneFamily:
    """A gene family (one modality-1 token) and the table columns it maps to.

    Attributes
    ----------
    name
        Family name (a column header of the signatures table).
    columns
        Table columns of the family, ``d_g`` of them: for the family's genes, first the
        ``_mut`` columns, then ``_cnv``, then ``_rnaseq``; within each suffix group in
        the table's column order.
    genes_mapped
        Distinct genes of the family with at least one column, in signature order.
    genes_unmapped
        Distinct genes of the family with no column in the table.
    n_duplicates
        Entries of the family that repeat a gene already listed (counted once).
    n_values
        Input width of a group that has no table columns (an MRI sequence's ROI cube: ``G**3``
        voxels), else None.
    """

    name: str
    columns: list[str]
    genes_mapped: list[str] = field(default_factory=list)
    genes_unmapped: list[str] = field(default_factory=list)
    n_duplicates: int = 0
    n_values: int | None = None

    @property
    def size(self) -> int:
        """Input width ``d_g``: the number of columns (or :attr:`n_values`)."""
        return len(self.columns) if self.n_values is None else self.n_values


def read_signatures(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a signatures table: one column per gene family, gene symbols down each column.

    Columns are ragged (blank padded); blanks are dropped and symbols stripped of spaces.
    Repeated symbols within a family are kept here (:func:`map_families` counts them once).

    Returns
    -------
    dict
        ``{family: [gene, ...]}`` in the table's column order.

    Raises
    ------
    DataError
        Unreadable file, no columns, an unnamed column, or a family with no gene.
    """
    path = Path(path)
    df = read_table(path, dtype=str)
    if df.shape[1] == 0:
        raise DataError(f"{path}:1: no columns; expected one column per gene family")
    out: dict[str, list[str]] = {}
    problems = []
    for name in df.columns:
        if str(name).startswith("Unnamed:"):
            problems.append(
                Problem(
                    str(path), 1, str(name), "column without a family name", "a family name in the header"
                )
            )
            continue
        genes = [str(g).strip() for g in df[name].dropna().tolist()]
        genes = [g for g in genes if g]
        if not genes:
            problems.append(Problem(str(path), None, str(name), "family lists no gene", "gene symbols"))
        out[str(name)] = genes
    raise_problems(problems, f"{path}: signatures table")
    return out


def map_families(columns: Sequence[str], signatures: Mapping[str, Sequence[str]]) -> list[GeneFamily]:
    """Map each family's genes onto the table's genomic columns.

    A gene ``G`` maps to whichever of ``G_mut``, ``G_cnv``, ``G_rnaseq`` exist in
    ``columns``. A family's columns are grouped by suffix in that order (``_mut``, ``_cnv``,
    ``_rnaseq``) and kept in the table's column order within a group, so the result only
    depends on the table's column order, not on the order genes are listed in. A gene listed
    twice in a family contributes its columns once.

    Parameters
    ----------
    columns
        The table's columns (all of them, or only the genomic ones).
    signatures
        ``{family: [gene, ...]}``, e.g. from :func:`read_signatures`.

    Returns
    -------
    list of GeneFamily
        One per family, in the order of ``signatures``. A family may have no column.
    """
    genomic = genomic_columns(columns)
    by_suffix = {s: [c for c in genomic if c.endswith(s)] for s in GENOMIC_SUFFIXES}
    present = {c for c in genomic}
    families = []
    for name, genes in signatures.items():
        distinct = list(dict.fromkeys(genes))
        gene_set = set(distinct)
        cols = [c for s in GENOMIC_SUFFIXES for c in by_suffix[s] if c[: -len(s)] in gene_set]
        mapped = [g for g in distinct if any(g + s in present for s in GENOMIC_SUFFIXES)]
        mapped_set = set(mapped)
        unmapped = [g for g in distinct if g not in mapped_set]
        families.append(
            GeneFamily(
                name=str(name),
                columns=cols,
                genes_mapped=mapped,
                genes_unmapped=unmapped,
                n_duplicates=len(genes) - len(distinct),
            )
        )
    return families


def gene_of(column: str) -> str:
    """The gene symbol of a genomic column (``TP53_rnaseq`` -> ``TP53``); other names unchanged."""
    for s in GENOMIC_SUFFIXES:
        if column.endswith(s):
            return column[: -len(s)]
    return column


def read_families_json(path: str | os.PathLike, columns: Sequence[str] | None = None) -> list[GeneFamily]:
    """Read ``families.json`` (``{family: [column, ...]}``, as ``deref genomics`` writes it).

    Parameters
    ----------
    path
        The JSON file.
    columns
        When given, the table's columns: every listed column must be one of its genomic
        columns.

    Raises
    ------
    DataError
        Unreadable JSON, a wrong layout, or columns the table lacks (all listed per family).
    """
    path = Path(path)
    raw = _read_file_bytes(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in data.values()
    ):
        raise DataError(f"{path}: expected an object {{family: [column, ...]}} of lists of column names")
    problems = []
    genomic = set(genomic_columns(columns)) if columns is not None else None
    families = []
    for name, cols in data.items():
        if len(set(cols)) != len(cols):
            dup = sorted({c for c in cols if cols.count(c) > 1})
            problems.append(Problem(str(path), None, name, f"lists column(s) twice: {dup[:5]}", "each once"))
        if not cols:
            problems.append(Problem(str(path), None, name, "family has no column", "at least one column"))
        if genomic is not None:
            missing = [c for c in cols if c not in genomic]
            if missing:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        name,
                        f"{len(missing)} column(s) not among the table's genomic columns: {missing[:5]}",
                        "columns of the cohort table ending in _rnaseq, _cnv or _mut",
                    )
                )
        genes = list(dict.fromkeys(gene_of(c) for c in cols))
        families.append(GeneFamily(name=name, columns=list(cols), genes_mapped=genes))
    raise_problems(problems, f"{path}: gene families")
    return families


# --------------------------------------------------------------------------- table checks
def _numeric(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``(values as float, mask of non-blank entries that are not numbers)``."""
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    return values.astype(float), bad


def _record_lines(df: pd.DataFrame) -> np.ndarray:
    """``(n_rows,)`` CSV line of each row: ``index + 2`` as :func:`read_table` numbers them, else by position."""
    if pd.api.types.is_integer_dtype(df.index):
        return np.asarray(df.index, dtype=np.int64) + 2
    return np.arange(len(df), dtype=np.int64) + 2


def _required_problem(df: pd.DataFrame, src: str, required: list[str]) -> Problem | None:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return None
    return Problem(
        src,
        1,
        ", ".join(missing),
        f"required column(s) missing: {missing}",
        f"a header with {required} (found {len(df.columns)} columns: {list(df.columns[:8])}"
        + (" ...)" if len(df.columns) > 8 else ")"),
    )


def _time_problems(raw: pd.Series, src: str, lines: np.ndarray, col: str) -> tuple[np.ndarray, list[Problem]]:
    """``(times (n,) float with NaN where unreadable, problems)``: not a number, missing, not finite, negative."""
    time, bad = _numeric(raw)
    problems = [
        Problem(src, int(ln), col, f"{_show(value)} is not a number", "a survival time >= 0")
        for ln, value in zip(lines[bad.to_numpy()], raw[bad])
    ]
    tv = time.to_numpy()
    problems += [
        Problem(src, int(ln), col, "missing survival time", "a survival time >= 0")
        for ln in lines[np.isnan(tv) & ~bad.to_numpy()]
    ]
    inf = np.isinf(tv)
    problems += [
        Problem(src, int(ln), col, f"survival time {t} is not finite", "a finite time >= 0")
        for ln, t in zip(lines[inf], tv[inf])
    ]
    with np.errstate(invalid="ignore"):
        neg = tv < 0
    problems += [
        Problem(src, int(ln), col, f"negative survival time {t:g}", "a survival time >= 0")
        for ln, t in zip(lines[neg], tv[neg])
    ]
    return tv, problems


def _censorship_problems(
    raw: pd.Series, src: str, lines: np.ndarray, col: str
) -> tuple[np.ndarray, list[Problem]]:
    """``(censorship (n,) float, problems)``: every value that is not 0 or 1."""
    cens = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(cens, (0.0, 1.0))
    problems = [
        Problem(
            src,
            int(ln),
            col,
            f"censorship {'missing' if pd.isna(value) else _show(value)}",
            "0 (event observed) or 1 (censored)",
        )
        for ln, value in zip(lines[bad], raw.to_numpy()[bad])
    ]
    return cens, problems


def _genomic_problems(
    df: pd.DataFrame, gcols: list[str], src: str, lines: np.ndarray
) -> tuple[np.ndarray | None, list[Problem]]:
    """``(genomic values (n, n_genomic) float or None, problems)``: no genomic column, values
    that are not numbers, blank cells (one problem per column)."""
    if not gcols:
        return None, [
            Problem(
                src, 1, None, "no genomic column", "columns named <GENE>_rnaseq, <GENE>_cnv or <GENE>_mut"
            )
        ]
    block = df[gcols]
    problems: list[Problem] = []
    if all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
        genomic = block.to_numpy(dtype=float)
    else:
        genomic = np.empty(block.shape, dtype=float)
        for j, c in enumerate(gcols):
            values, bad = _numeric(block[c])
            genomic[:, j] = values.to_numpy()
            if bad.any():
                bl = lines[bad.to_numpy()]
                problems.append(
                    Problem(
                        src,
                        int(bl[0]),
                        c,
                        f"{int(bad.sum())} value(s) are not numbers (first {_show(block[c][bad].iloc[0])}; "
                        f"{_lines_text(list(bl))})",
                        "numbers",
                    )
                )
    # Non-numbers were reported above; report only truly blank cells as missing.
    nan = np.isnan(genomic)
    for j in np.flatnonzero(nan.any(axis=0)):
        c = gcols[j]
        blank = nan[:, j] & df[c].isna().to_numpy()
        if blank.any():
            bl = lines[blank]
            problems.append(
                Problem(
                    src,
                    int(bl[0]),
                    c,
                    f"{int(blank.sum())} missing value(s) ({_lines_text(list(bl))})",
                    "a number in every row (no imputation is done)",
                )
            )
    return genomic, problems


def _slide_duplicate_problems(
    slide_raw: pd.Series, case_str: pd.Series, src: str, lines: np.ndarray
) -> list[Problem]:
    """Rows repeating a (case, slide) pair, and slides listed under two patients."""
    slide = slide_raw.astype(str).str.strip()
    has_slide = slide_raw.notna().to_numpy() & (slide != "").to_numpy()
    first_line: dict[tuple[str, str], int] = {}
    owner: dict[str, tuple[str, int]] = {}
    problems = []
    for ln, s, c, hs in zip(lines, slide, case_str, has_slide):
        if not hs:
            continue
        if (c, s) in first_line:
            problems.append(
                Problem(
                    src,
                    int(ln),
                    "slide_id",
                    f"duplicate row: case {c} slide {s} already on line {first_line[(c, s)]}",
                    "one row per slide",
                )
            )
            continue
        first_line[(c, s)] = int(ln)
        if s in owner and owner[s][0] != c:
            problems.append(
                Problem(
                    src,
                    int(ln),
                    "slide_id",
                    f"slide {s} is listed for case {c} and for case {owner[s][0]} (line {owner[s][1]})",
                    "each slide to belong to one patient",
                )
            )
        owner.setdefault(s, (c, int(ln)))
    return problems


def _case_duplicate_problems(
    case_str: pd.Series, blank_case: pd.Series, src: str, lines: np.ndarray
) -> list[Problem]:
    """Rows repeating a patient in a table without ``slide_id`` (one row per patient then)."""
    dup = case_str.duplicated(keep="first").to_numpy() & ~blank_case.to_numpy()
    firsts = {c: int(ln) for ln, c in zip(lines[::-1], case_str[::-1])}
    return [
        Problem(
            src,
            int(ln),
            "case_id",
            f"duplicate row for case {c} (first on line {firsts[c]}); the table has no slide_id column",
            "one row per patient when there is no slide_id column",
        )
        for ln, c in zip(lines[dup], case_str[dup])
    ]


def _disagreement_problems(
    case_str: pd.Series,
    labels: Mapping[str, np.ndarray],
    genomic: np.ndarray | None,
    gcols: list[str],
    src: str,
    lines: np.ndarray,
) -> list[Problem]:
    """Rows of one patient that disagree with the patient's first row on a label (``labels``:
    column -> ``(n,)`` values) or on genomic values."""
    codes, uniques = pd.factorize(case_str)
    if len(uniques) == len(case_str):
        return []
    first_pos = np.full(len(uniques), -1, dtype=np.int64)
    for i in range(len(codes) - 1, -1, -1):
        first_pos[codes[i]] = i
    ref = first_pos[codes]
    rows = np.flatnonzero(ref != np.arange(len(case_str)))
    problems = []
    for col, values in labels.items():
        a, b = values[rows], values[ref[rows]]
        differs = ~np.asarray((a == b) | (pd.isna(a) & pd.isna(b)), dtype=bool)
        problems += [
            Problem(
                src,
                int(lines[r]),
                col,
                f"case {case_str.iloc[r]}: {col} {values[r]:g} disagrees with line "
                f"{int(lines[ref[r]])} ({values[ref[r]]:g})",
                "the same value on every row of a patient",
            )
            for r in rows[differs]
        ]
    if genomic is None:
        return problems
    a, b = genomic[rows], genomic[ref[rows]]
    diff = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    for k in np.flatnonzero(diff.any(axis=1)):
        r = rows[k]
        cols = [gcols[j] for j in np.flatnonzero(diff[k])]
        more = f" and {len(cols) - 5} more" if len(cols) > 5 else ""
        problems.append(
            Problem(
                src,
                int(lines[r]),
                cols[0],
                f"case {case_str.iloc[r]}: genomic values differ from line {int(lines[ref[r]])} "
                f"in {len(cols)} column(s) {cols[:5]}{more}",
                "identical genomic values on every row of a patient",
            )
        )
    return problems


def check_table(
    df: pd.DataFrame,
    source: str | os.PathLike,
    time_col: str = "survival_months",
    censorship_col: str = "censorship",
    *,
    require_genomic: bool = True,
) -> list[Problem]:
    """Every problem of a cohort table (as read by :func:`read_table`).

    Checks: required columns; blank ``case_id``; survival time missing, not a number, not
    finite or negative; censorship not 0 or 1; no genomic column; genomic values that are
    missing or not numbers (one problem per column); duplicate rows (same ``case_id`` and
    ``slide_id``; same ``case_id`` when there is no ``slide_id`` column), a slide listed
    under two patients; rows of one patient that disagree on time, censorship or genomic
    values.

    Parameters
    ----------
    df
        The table, as :func:`read_table` returns it: problem lines are ``index + 2`` (a
        frame with a non-integer index is numbered by position).
    source
        The file named in the problems.
    time_col, censorship_col
        Names of the survival time and censorship columns.
    require_genomic
        False for an MRI cohort (its modality 1 comes from the MRI manifest): no genomic
        column is then no problem (genomic columns present are still checked).

    Returns
    -------
    list of Problem
        In line order. Empty when the table is usable. A table missing required columns returns only that
        problem (nothing else can be checked).
    """
    src = str(source)
    missing = _required_problem(df, src, [*ID_COLUMNS, time_col, censorship_col])
    if missing is not None:
        return [missing]
    if len(df) == 0:
        return [Problem(src, None, None, "table has no data rows", "one row per slide")]
    lines = _record_lines(df)
    blank_case = df["case_id"].isna() | (df["case_id"].astype(str).str.strip() == "")
    problems = [
        Problem(src, int(ln), "case_id", "blank case_id", "a patient identifier")
        for ln in lines[blank_case.to_numpy()]
    ]
    time, time_problems = _time_problems(df[time_col], src, lines, time_col)
    cens, cens_problems = _censorship_problems(df[censorship_col], src, lines, censorship_col)
    gcols = genomic_columns(df.columns)
    genomic, genomic_problems = (
        _genomic_problems(df, gcols, src, lines) if gcols or require_genomic else (None, [])
    )
    problems += time_problems + cens_problems + genomic_problems
    case_str = df["case_id"].astype(str).str.strip()
    if "slide_id" in df.columns:
        problems += _slide_duplicate_problems(df["slide_id"], case_str, src, lines)
        problems += _slide_name_problems(df["slide_id"], src, lines)
    else:
        problems += _case_duplicate_problems(case_str, blank_case, src, lines)
    labels = {time_col: time, censorship_col: cens}
    problems += _disagreement_problems(case_str, labels, genomic, gcols, src, lines)
    # In file order, like a linter; problems not tied to a line first.
    return sorted(problems, key=lambda p: -1 if p.row is None else p.row)


def _slide_name_problems(slide_ids: pd.Series, src: str, lines: np.ndarray) -> list[Problem]:
    """A slide id names a bag and a slide file inside a folder: a path separator or ``..`` in it
    would reach outside that folder (refused at the cohort's edge, deref.access)."""
    from deref.access import component_problem

    out = []
    for ln, value in zip(lines, slide_ids):
        if pd.isna(value) or not str(value).strip():
            continue
        problem = component_problem(str(value).strip())
        if problem:
            out.append(
                Problem(src, int(ln), "slide_id", f"slide_id {value!r} {problem}", "a plain file name")
            )
    return out


# --------------------------------------------------------------------------- cohort
@dataclass
class Cohort:
    """A survival cohort: labels and clinical data per patient, slides, genomic profiles.

    Attributes
    ----------
    patients
        Indexed by ``case_id`` (table order of first appearance). Columns: ``time``
        (float), ``censorship`` (int, 1 = censored), ``event`` (int, ``1 - censorship``),
        ``n_slides``, then the table's other per-patient columns (``age``, ``is_female``,
        ``site``, ``oncotree_code``, ...).
    slides
        ``{case_id: [slide_id, ...]}`` in table order (an empty list for a patient whose
        rows have a blank ``slide_id`` or when the table has no ``slide_id`` column).
    genomic
        ``(n_patients, n_genomic)`` float32 frame, indexed like ``patients``, with every
        genomic column of the table.
    families
        Gene families (modality-1 token groups); empty when neither signatures nor a
        families JSON was given.
    bag_dir
        Folder of WSI bags, or None.
    source
        The cohort table file.
    fingerprint
        SHA-256 of the table file's bytes.
    modalities
        Indexed like ``patients``: ``genomic`` or ``mri`` (bool: modality 1 present), ``wsi``
        (bool: a bag file exists for every slide of the patient; False without ``bag_dir``),
        ``n_bags`` (int).
    m1_kind
        ``"genomic"`` (``genomic`` holds the table's genomic columns, ``families`` the gene
        families) or ``"mri"`` (``genomic`` holds the per-sequence MRI vectors of
        :func:`deref.data.mri.mri_groups`, ``families`` one group per sequence).
    mri
        The MRI manifest (:class:`deref.data.mri.MriManifest`) of an MRI cohort, else None.
    mri_features
        The folder of MRI feature files (``deref mri --per-sequence`` output), else None.
    mri_cubes
        End-to-end MRI cohorts: the ROI cubes (:class:`deref.data.mri.MriCubes`, ``deref mri
        --cubes`` output) modality 1 is read from, for a 3D ResNet trained with the model; then
        ``genomic`` has no column and ``families`` one (column-less) group per sequence.
    """

    patients: pd.DataFrame
    slides: dict[str, list[str]]
    genomic: pd.DataFrame
    families: list[GeneFamily]
    bag_dir: Path | None
    source: Path
    fingerprint: str
    modalities: pd.DataFrame
    m1_kind: str = "genomic"
    mri: Any = None
    mri_features: Path | None = None
    mri_cubes: Any = None
    allow_missing: bool = False
    missing: pd.DataFrame | None = None

    def missing_inputs(self, case_id: str) -> list[str]:
        """The inputs ``case_id`` lacks (group names, ``"wsi"``), in column order; [] when none."""
        if self.missing is None or case_id not in self.missing.index:
            return []
        row = self.missing.loc[case_id]
        return [str(c) for c in row.index[row.to_numpy(dtype=bool)]]

    @property
    def m1_sizes(self) -> tuple[int, ...]:
        """Input width of each modality-1 group: a family's columns, or a cube's ``G**3`` voxels."""
        return tuple(f.size for f in self.families)

    @property
    def mri_encoder(self) -> str:
        """How the model reads this cohort's MRI (``ModelConfig.mri_encoder``): ``"resnet3d"`` for
        ROI cubes, ``"vectors"`` otherwise."""
        return "resnet3d" if self.mri_cubes is not None else "vectors"

    @property
    def m1(self) -> pd.DataFrame:
        """The modality-1 frame (genomic columns, or MRI vectors of an MRI cohort)."""
        return self.genomic

    @property
    def m1_label(self) -> str:
        """What a modality-1 group is, in words: ``gene family`` or ``MRI sequence``."""
        return "MRI sequence" if self.m1_kind == "mri" else "gene family"

    @property
    def case_ids(self) -> list[str]:
        return list(self.patients.index)

    @property
    def n_events(self) -> int:
        return int(self.patients["event"].sum())

    @property
    def n_slides(self) -> int:
        return int(self.patients["n_slides"].sum())

    @property
    def genomic_columns(self) -> list[str]:
        return list(self.genomic.columns)

    def patient_bag(self, case_id: str, expected_dim: int | None = None) -> Bag:
        """All WSI bags of one patient, concatenated (see :func:`load_patient_bag`)."""
        if self.bag_dir is None:
            raise DataError(f"{self.source}: no bag folder was given for this cohort")
        if case_id not in self.slides:
            raise DataError(f"{self.source}: case {case_id!r} is not in the table")
        if self.allow_missing and self.missing is not None and bool(self.missing.at[case_id, "wsi"]):
            if expected_dim is None:
                raise DataError(f"{self.source}: patient {case_id} has no slide and no bag width is known")
            return Bag(
                features=np.full((1, int(expected_dim)), np.nan, np.float32),
                coords=None,
                attrs={"missing": True},
            )
        return load_patient_bag(self.slides[case_id], self.bag_dir, expected_dim)


_ID_DTYPES = {"case_id": str, "slide_id": str}
_RESERVED = {"time", "censorship", "event", "n_slides", "case_id", "slide_id"}


def _slides_of(df: pd.DataFrame, case_ids: list[str]) -> dict[str, list[str]]:
    """``{case_id: [slide_id, ...]}`` in table order; blank slide ids are skipped."""
    slides: dict[str, list[str]] = {c: [] for c in case_ids}
    if "slide_id" in df.columns:
        for c, s in zip(df["case_id"], df["slide_id"]):
            if pd.notna(s) and str(s).strip():
                slides[c].append(str(s).strip())
    return slides


def _patients_frame(
    df: pd.DataFrame,
    first: pd.DataFrame,
    slides: Mapping[str, list[str]],
    time_col: str,
    censorship_col: str,
    path: Path,
) -> pd.DataFrame:
    """One row per patient: time, censorship, event, n_slides, then the per-patient columns.

    A column (other than the labels, genomic and index columns) that varies between the
    slides of one patient is not a patient attribute: it is left out, with a warning.
    """
    case_ids = list(first.index)
    patients = pd.DataFrame(index=pd.Index(case_ids, name="case_id"))
    patients["time"] = pd.to_numeric(first[time_col]).astype(float)
    patients["censorship"] = pd.to_numeric(first[censorship_col]).astype(int)
    # The cohort table is an edge of its own: its event column is resolved here, once.
    patients["event"] = 1 - patients["censorship"]
    patients["n_slides"] = [len(slides[c]) for c in case_ids]
    skip = set(genomic_columns(df.columns)) | {time_col, censorship_col} | _RESERVED
    extras = [c for c in df.columns if c not in skip and not str(c).startswith("Unnamed:")]
    if not extras:
        return patients
    varying = df.groupby("case_id", sort=False)[extras].nunique(dropna=False).max()
    per_slide = [c for c in extras if varying[c] > 1]
    if per_slide:
        log.warning(
            "%s: column(s) %s vary between slides of one patient; not kept as patient attributes",
            path,
            per_slide,
        )
    for c in extras:
        if c not in per_slide:
            patients[c] = first[c]
    return patients


def _cohort_families(
    signatures: str | os.PathLike | None,
    families_json: str | os.PathLike | None,
    gcols: list[str],
    path: Path,
) -> list[GeneFamily]:
    """The gene families from a signatures table or a families JSON (none without either)."""
    if signatures is not None:
        families = map_families(gcols, read_signatures(signatures))
        empty = [f.name for f in families if not f.columns]
        if empty:
            raise DataError(
                f"{signatures}: famil{'ies' if len(empty) > 1 else 'y'} {empty} map to no column of "
                f"{path}; expected genes with <GENE>_rnaseq/_cnv/_mut columns"
            )
        return families
    if families_json is not None:
        return read_families_json(families_json, gcols)
    return []


def _modalities(
    patients: pd.DataFrame, slides: Mapping[str, list[str]], bag_dir: Path | None, path: Path
) -> pd.DataFrame:
    """Per patient: ``genomic``, ``wsi`` (a bag file for every slide) and ``n_bags``."""
    n_bags = np.zeros(len(patients), dtype=np.int64)
    if bag_dir is not None:
        for i, c in enumerate(patients.index):
            for s in slides[c]:
                try:
                    find_bag(s, bag_dir)
                except DataError:
                    continue
                n_bags[i] += 1
        n_missing = int(patients["n_slides"].sum() - n_bags.sum())
        if n_missing:
            log.warning("%s: %d slide(s) have no bag file in %s", path, n_missing, bag_dir)
    n_slides = patients["n_slides"].to_numpy()
    return pd.DataFrame(
        {
            "genomic": np.ones(len(patients), dtype=bool),
            "wsi": (n_bags > 0) & (n_bags == n_slides),
            "n_bags": n_bags,
        },
        index=patients.index,
    )


def _mri_m1(
    patients: pd.DataFrame,
    manifest_path,
    feature_dir,
    cube_dir,
    table_fingerprint: str,
    allow_missing: bool = False,
):
    """An MRI cohort's modality 1: ``(frame, groups, manifest, cubes, fingerprint)``; the fingerprint
    covers the table, the manifest and the feature (or cube) folder the modality-1 values come from."""
    from deref.data.mri import mri_groups, read_mri_cubes, read_mri_manifest

    mri = read_mri_manifest(manifest_path, allow_missing=allow_missing)
    ids = list(patients.index)
    cubes = None
    if cube_dir is not None:
        cubes = read_mri_cubes(mri, cube_dir, ids, allow_missing=allow_missing)
        frame = pd.DataFrame(index=pd.Index(ids, name="case_id"), dtype=np.float32)
        groups = [GeneFamily(name=s, columns=[], n_values=cubes.size) for s in mri.sequences]
        source = f"cubes:{Path(cube_dir).resolve()}"
    else:
        frame, groups = mri_groups(mri, feature_dir, ids, allow_missing=allow_missing)
        source = str(Path(feature_dir).resolve())
    key = f"{table_fingerprint}:{mri.fingerprint}:{source}"
    return frame, groups, mri, cubes, hashlib.sha256(key.encode()).hexdigest()


def _missing_frame(families, genomic: pd.DataFrame, cubes, modalities: pd.DataFrame, bag_dir) -> pd.DataFrame:
    """One bool column per modality-1 group (all of its values NaN) and ``wsi`` (no bag)."""
    cols = {}
    for g, fam in enumerate(families):
        if cubes is not None:
            cols[fam.name] = (
                np.isnan(cubes.data[:, g, :1]).all(axis=1) if cubes.size else np.zeros(len(genomic), bool)
            )
        elif fam.columns:
            cols[fam.name] = genomic[fam.columns].isna().all(axis=1).to_numpy()
        else:
            cols[fam.name] = np.zeros(len(genomic), bool)
    cols["wsi"] = ~modalities["wsi"].to_numpy() if bag_dir is not None else np.zeros(len(genomic), bool)
    return pd.DataFrame(cols, index=genomic.index)


def _check_sources(signatures, families_json, mri_manifest, mri_features, mri_cubes) -> bool:
    """Whether the arguments of :func:`load_cohort` name an MRI cohort (raising ConfigError for a
    combination that does not make sense)."""
    if signatures is not None and families_json is not None:
        raise ConfigError("give either signatures or families_json, not both")
    is_mri = mri_manifest is not None or mri_features is not None or mri_cubes is not None
    if mri_features is not None and mri_cubes is not None:
        raise ConfigError(
            "give the MRI as frozen vectors (mri_features) or as ROI cubes for end-to-end training "
            "(mri_cubes), not both"
        )
    if is_mri and (mri_manifest is None or (mri_features is None and mri_cubes is None)):
        raise ConfigError(
            "an MRI cohort needs both the MRI manifest and the folder of its `deref mri` features "
            "(or of its `deref mri --cubes` cubes)"
        )
    if is_mri and (signatures is not None or families_json is not None):
        raise ConfigError("an MRI cohort's modality 1 is the MRI: give no signatures or families JSON")
    return is_mri


def load_cohort(
    table: str | os.PathLike,
    signatures: str | os.PathLike | None = None,
    families_json: str | os.PathLike | None = None,
    bag_dir: str | os.PathLike | None = None,
    time_col: str = "survival_months",
    censorship_col: str = "censorship",
    *,
    mri_manifest: str | os.PathLike | None = None,
    mri_features: str | os.PathLike | None = None,
    mri_cubes: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> Cohort:
    """Read and check a cohort table and aggregate its per-slide rows to patients.

    Parameters
    ----------
    table
        Cohort table (CSV or zip of one CSV), one row per slide.
    signatures
        Signatures table; families are mapped with :func:`map_families`.
    families_json
        ``{family: [column, ...]}`` (``deref genomics`` output). At most one of
        ``signatures`` / ``families_json``.
    bag_dir
        Folder of WSI bags; only the presence of each slide's file is checked here.
    time_col, censorship_col
        Names of the survival time and censorship (1 = censored) columns.
    mri_manifest, mri_features
        An MRI cohort: the MRI manifest (:func:`deref.data.mri.read_mri_manifest`) and the
        folder of its per-sequence feature files (``deref mri --per-sequence``). Modality 1 is
        then the MRI (one group per sequence) instead of genomics; the table needs no genomic
        column. Both or neither; not with ``signatures`` / ``families_json``.
    mri_cubes
        Instead of ``mri_features``: ROI cubes (``deref mri --cubes``) for end-to-end training.
    allow_missing
        Keep a patient without an MRI sequence or a slide's bag (flagged in :attr:`Cohort.missing`)
        instead of failing. Genomic values stay required.

    Raises
    ------
    DataError
        Any problem :func:`check_table` finds (all of them in one message), a family with no
        column, a families JSON naming absent columns, a missing ``bag_dir``.
    ConfigError
        Both ``signatures`` and ``families_json`` given.
    """
    is_mri = _check_sources(signatures, families_json, mri_manifest, mri_features, mri_cubes)
    path = Path(table)
    df, fingerprint = _load_table_bytes(path, dtype=_ID_DTYPES)
    problems = check_table(df, path, time_col, censorship_col, require_genomic=not is_mri)
    raise_problems(problems, f"{path}: cohort table")

    gcols = genomic_columns(df.columns)
    df = df.assign(case_id=df["case_id"].astype(str).str.strip())
    first = df.drop_duplicates("case_id", keep="first").set_index("case_id")
    slides = _slides_of(df, list(first.index))
    patients = _patients_frame(df, first, slides, time_col, censorship_col, path)
    bags_path = None if bag_dir is None else Path(bag_dir)
    if bags_path is not None and not bags_path.is_dir():
        raise DataError(f"{bags_path}: bag folder not found")
    modalities = _modalities(patients, slides, bags_path, path)
    if is_mri:
        genomic, families, mri, cubes, fingerprint = _mri_m1(
            patients, mri_manifest, mri_features, mri_cubes, fingerprint, allow_missing
        )
        modalities = modalities.rename(columns={"genomic": "mri"})
    else:
        mri = cubes = None
        genomic = first[gcols].astype(np.float32)
        genomic.index.name = "case_id"
        families = _cohort_families(signatures, families_json, gcols, path)
    log.info(
        "%s: %d patients, %d slides, %d events, %d genomic columns, %d families",
        path,
        len(patients),
        int(patients["n_slides"].sum()),
        int(patients["event"].sum()),
        len(gcols),
        len(families),
    )
    return Cohort(
        patients=patients,
        slides=slides,
        genomic=genomic,
        families=families,
        bag_dir=bags_path,
        source=path,
        fingerprint=fingerprint,
        modalities=modalities,
        m1_kind="mri" if is_mri else "genomic",
        mri=mri,
        mri_features=None if mri_features is None else Path(mri_features),
        mri_cubes=cubes,
        allow_missing=allow_missing,
        missing=_missing_frame(families, genomic, cubes, modalities, bags_path),
    )


__all__ = [
    "Cohort",
    "GeneFamily",
    "Problem",
    "GENOMIC_SUFFIXES",
    "check_table",
    "gene_of",
    "genomic_columns",
    "load_cohort",
    "map_families",
    "raise_problems",
    "read_families_json",
    "read_signatures",
    "read_table",
]
