"""Cross-validation folds: MCAT split files, checks against a cohort, stratified fold making.

An MCAT split folder holds ``splits_0.csv`` .. ``splits_<k-1>.csv``, each with the header
``,train,val``: a row index, then the training and validation case ids (the shorter column
blank padded).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deref.data.cohort import Problem, raise_problems, read_table
from deref.errors import ConfigError, DataError
from deref.survival import event_of

log = logging.getLogger(__name__)

_SPLIT_RE = re.compile(r"^splits_(\d+)\.csv$")


@dataclass
class Fold:
    """One cross-validation fold.

    Attributes
    ----------
    index
        Fold number ``k`` (``splits_<k>.csv``).
    train, val
        Case ids of the training and validation patients.
    source
        The split file it was read from, if any (named in error messages).
    """

    index: int
    train: list[str]
    val: list[str]
    source: Path | None = None

    @property
    def name(self) -> str:
        return str(self.source) if self.source is not None else f"fold {self.index}"


def _ids(series: pd.Series) -> list[str]:
    return [str(x).strip() for x in series.dropna().tolist() if str(x).strip()]


def read_mcat_splits(directory: str | os.PathLike) -> list[Fold]:
    """Read every ``splits_<k>.csv`` of an MCAT split folder, ordered by ``k``.

    Raises
    ------
    DataError
        Missing folder, no split file, a gap in the numbering, a file without ``train`` /
        ``val`` columns, a case listed twice in one column (all problems at once).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: split folder not found")
    files = {}
    for p in directory.iterdir():
        m = _SPLIT_RE.match(p.name)
        if m and p.is_file():
            files[int(m.group(1))] = p
    if not files:
        raise DataError(f"{directory}: no splits_<k>.csv file; expected splits_0.csv, splits_1.csv, ...")
    problems: list[Problem] = []
    expected = list(range(len(files)))
    if sorted(files) != expected:
        problems.append(
            Problem(
                str(directory),
                None,
                None,
                f"split files numbered {sorted(files)}",
                f"splits_0.csv .. splits_{len(files) - 1}.csv without gaps",
            )
        )
    folds = []
    for k in sorted(files):
        path = files[k]
        df = read_table(path, dtype=str)
        missing = [c for c in ("train", "val") if c not in df.columns]
        if missing:
            problems.append(
                Problem(
                    str(path), 1, ", ".join(missing), f"missing column(s) {missing}", "header ',train,val'"
                )
            )
            continue
        train, val = _ids(df["train"]), _ids(df["val"])
        for col, ids in (("train", train), ("val", val)):
            s = pd.Series(ids)
            dup = sorted(set(s[s.duplicated()]))
            if dup:
                problems.append(
                    Problem(str(path), None, col, f"case(s) listed twice: {dup[:5]}", "each case once")
                )
        folds.append(Fold(index=k, train=train, val=val, source=path))
    raise_problems(problems, f"{directory}: split files")
    return folds


def _listed(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} cases)" if len(ids) > limit else "")


def _unknown_case_problems(fold: Fold, table_set: set[str]) -> list[Problem]:
    """Cases of a fold's train or val column that the cohort table lacks."""
    problems = []
    for col, ids in (("train", fold.train), ("val", fold.val)):
        unknown = [c for c in ids if c not in table_set]
        if unknown:
            problems.append(
                Problem(
                    fold.name,
                    None,
                    col,
                    f"{len(unknown)} case(s) not in the cohort table: {_listed(unknown)}",
                    "case ids of the table",
                )
            )
    return problems


def _membership_problems(fold: Fold, table: Sequence[str]) -> list[Problem]:
    """Train/val overlap, and table cases the fold leaves out."""
    tr, va = set(fold.train), set(fold.val)
    problems = []
    overlap = sorted(tr & va)
    if overlap:
        problems.append(
            Problem(
                fold.name,
                None,
                "train, val",
                f"{len(overlap)} case(s) in both train and val: {_listed(overlap)}",
                "disjoint training and validation sets",
            )
        )
    absent = [c for c in table if c not in tr and c not in va]
    if absent:
        problems.append(
            Problem(
                fold.name,
                None,
                None,
                f"{len(absent)} table case(s) in neither train nor val: {_listed(absent)}",
                "every patient of the table in the fold",
            )
        )
    return problems


def _size_problems(fold: Fold, events: Mapping[str, int] | pd.Series | None) -> list[Problem]:
    """An empty training or validation set, or a training set without an event."""
    problems = []
    if not fold.train:
        problems.append(Problem(fold.name, None, "train", "empty training fold", "training patients"))
    elif events is not None:
        known = [c for c in set(fold.train) if c in events]
        if known and sum(int(events[c]) for c in known) == 0:
            problems.append(
                Problem(
                    fold.name,
                    None,
                    "train",
                    f"training fold of {len(known)} patients has no event (all censored)",
                    "at least one uncensored patient to fit time bins and the survival loss",
                )
            )
    if not fold.val:
        problems.append(Problem(fold.name, None, "val", "empty validation fold", "validation patients"))
    return problems


def fold_problems(
    folds: Sequence[Fold],
    case_ids: Iterable[str],
    events: Mapping[str, int] | pd.Series | None = None,
) -> list[Problem]:
    """Every problem of ``folds`` against a cohort's patients.

    Parameters
    ----------
    folds
        The folds to check.
    case_ids
        The patients of the cohort table.
    events
        ``{case_id: 1 if the event was observed else 0}``; when given, a training fold with
        no event is a problem.

    Returns
    -------
    list of Problem
        Cases in a fold but not in the table (file + case), table cases missing from a fold
        or in no validation fold, train/val overlap, empty training or validation fold,
        training folds without an event.
    """
    table = list(dict.fromkeys(str(c) for c in case_ids))
    table_set = set(table)
    problems: list[Problem] = []
    for fold in folds:
        problems += _unknown_case_problems(fold, table_set)
        problems += _membership_problems(fold, table)
        problems += _size_problems(fold, events)
    if folds:
        in_some_val = {c for fold in folds for c in fold.val}
        never = [c for c in table if c not in in_some_val]
        if never:
            problems.append(
                Problem(
                    str(folds[0].source.parent) if folds[0].source is not None else "folds",
                    None,
                    "val",
                    f"{len(never)} table case(s) in no validation fold: {_listed(never)}",
                    "every patient validated in one fold",
                )
            )
    return problems


def check_folds(
    folds: Sequence[Fold],
    case_ids: Iterable[str],
    events: Mapping[str, int] | pd.Series | None = None,
) -> None:
    """Raise one :class:`DataError` listing every problem :func:`fold_problems` finds."""
    raise_problems(fold_problems(folds, case_ids, events), "folds")


def _time_bins(time: np.ndarray, event: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bins of uncensored times, applied to every patient (ties tolerated)."""
    from deref.data.preprocess import assign_bins

    uncensored = time[event == 1]
    if len(uncensored) < 2 or n_bins <= 1:
        return np.zeros(len(time), dtype=np.int64)
    edges = np.unique(np.quantile(uncensored, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        return np.zeros(len(time), dtype=np.int64)
    edges[0], edges[-1] = 0.0, np.inf
    return assign_bins(time, edges)


def _strata(patients_df: pd.DataFrame, n_bins: int) -> tuple[list[str], np.ndarray]:
    """Case ids (sorted) and their stratum ``event x time bin`` (``n_bins`` quantile bins of
    the uncensored times of ``patients_df``)."""
    if "time" not in patients_df.columns or not (
        "event" in patients_df.columns or "censorship" in patients_df.columns
    ):
        raise DataError(
            f"patients table has columns {list(patients_df.columns)[:8]}; expected 'time' and 'event' "
            "(or 'censorship')"
        )
    ids = [str(c) for c in patients_df.index]
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    ids = [ids[i] for i in order]
    time = patients_df["time"].to_numpy(dtype=float)[order]
    event_raw = event_of(patients_df.assign(case_id=patients_df.index.astype(str)), what="patients table")
    bad = ~np.isin(event_raw, (0.0, 1.0))
    if bad.any():
        cases = [str(c) for c in patients_df.index[bad][:5]]
        raise DataError(f"patients table: event/censorship must be 0 or 1; case(s) {cases} are not")
    event = event_raw.astype(np.int64)[order]
    bins = _time_bins(time, event, n_bins)
    return ids, event * max(n_bins, 1) + bins


def make_folds(patients_df: pd.DataFrame, k: int = 5, seed: int = 0, n_bins: int = 4) -> list[Fold]:
    """Stratified ``k``-fold split of patients on (event, time bin).

    Patients are grouped in strata ``event x time bin`` (``n_bins`` quantile bins of the
    uncensored times); each stratum is shuffled with ``numpy.random.default_rng(seed)``
    (after sorting by case id, so the result does not depend on row order) and dealt to the
    folds in turn, continuing across strata, so fold sizes differ by at most one and every
    stratum is spread evenly.

    Parameters
    ----------
    patients_df
        Indexed by case id, with ``time`` and ``event`` (or ``censorship``) columns, e.g.
        ``Cohort.patients``.
    k, seed, n_bins
        Number of folds, random seed, time bins used for stratification.

    Returns
    -------
    list of Fold
        ``k`` folds; each patient is in exactly one validation fold. Ids are sorted.
    """
    if k < 2:
        raise ConfigError(f"k = {k}; expected at least 2 folds")
    ids, strata = _strata(patients_df, n_bins)
    if len(ids) < k:
        raise DataError(f"{len(ids)} patients cannot be split into {k} folds")
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(ids), dtype=np.int64)
    pos = 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        members = members[rng.permutation(len(members))]
        assignment[members] = (pos + np.arange(len(members))) % k
        pos += len(members)
    folds = []
    for f in range(k):
        val = sorted(ids[i] for i in np.flatnonzero(assignment == f))
        train = sorted(ids[i] for i in np.flatnonzero(assignment != f))
        folds.append(Fold(index=f, train=train, val=val))
    return folds


def inner_splits(
    fold: Fold,
    patients_df: pd.DataFrame,
    *,
    fraction: float = 0.2,
    k: int = 1,
    seed: int = 0,
    n_bins: int = 4,
) -> list[Fold]:
    """Inner validation split(s) carved from ``fold``'s training patients only.

    The outer validation patients of ``fold`` are dropped before anything is computed: the
    strata (event x ``n_bins`` quantile bins of the uncensored times) come from the outer
    training patients alone. With ``k = 1`` one split holds out ``fraction`` of them: each
    stratum, shuffled with ``default_rng(seed)``, gives its share (by largest remainder, so
    the total is ``round(fraction * n)`` and each stratum is within one of its share). With
    ``k >= 2`` they are split into ``k`` stratified folds (:func:`make_folds`).

    Returns
    -------
    list of Fold
        ``k`` folds (one for ``k = 1``), indexed ``0 .. k-1``; ``train`` and ``val`` partition
        ``fold.train`` and are sorted.
    """
    train = [str(c) for c in fold.train]
    sub = patients_df.loc[train]
    if k >= 2:
        return make_folds(sub, k=k, seed=seed, n_bins=n_bins)
    if k != 1:
        raise ConfigError(f"inner folds k = {k}; expected 1 (one split) or >= 2")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"inner fraction = {fraction}; expected a number in (0, 1)")
    ids, strata = _strata(sub, n_bins)
    n_val = round(fraction * len(ids))
    if n_val < 1 or n_val >= len(ids):
        raise DataError(
            f"{fold.name}: {len(ids)} training patients cannot give an inner validation split of "
            f"fraction {fraction}"
        )
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    done = 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        members = members[rng.permutation(len(members))]
        take = round(fraction * (done + len(members))) - round(fraction * done)
        chosen += members[:take].tolist()
        done += len(members)
    val_set = {ids[i] for i in chosen}
    return [
        Fold(
            index=0,
            train=sorted(c for c in ids if c not in val_set),
            val=sorted(val_set),
        )
    ]


def write_mcat_splits(folds: Sequence[Fold], directory: str | os.PathLike) -> list[Path]:
    """Write ``splits_<index>.csv`` files in MCAT's layout (``,train,val``, val blank padded).

    Returns the written paths. Each file is written under a temporary name and renamed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fold in folds:
        n = max(len(fold.train), len(fold.val))
        df = pd.DataFrame(
            {
                "train": pd.Series(list(fold.train) + [None] * (n - len(fold.train)), dtype=object),
                "val": pd.Series(list(fold.val) + [None] * (n - len(fold.val)), dtype=object),
            }
        )
        path = directory / f"splits_{fold.index}.csv"
        tmp = directory / f".{path.name}.tmp-{os.getpid()}"
        try:
            df.to_csv(tmp, index=True)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        paths.append(path)
    return paths


__all__ = [
    "Fold",
    "check_folds",
    "fold_problems",
    "inner_splits",
    "make_folds",
    "read_mcat_splits",
    "write_mcat_splits",
]
