"""The survival-data edge: predictions and survival columns validated once, trusted below.

Every table that carries survival data into the statistics (``deref.metrics``,
``deref.stratify``, the figures) passes through :func:`survival_frame` or
:func:`survival_arrays` first; the numeric core below them does not re-check its input
(the shape torchsurv's ``tools/validators.py`` gives its metrics).

Conventions (MCAT's layout, which our run directories keep):

- ``censorship`` is 1 for a censored patient; ``event = 1 - censorship``. A table may carry
  either column (or both, which must agree); :func:`event_of` resolves it, here only.
- ``surv_0 .. surv_{K-1}``: S(t) at the end of each of the K time bins.
- ``fold``: the fold whose model scored the patient; :data:`MEAN_OF_FOLDS` when the mean of
  the fold models did (a patient in no validation fold).

Torch-free and light (numpy, pandas), so statistics and the app can import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deref.errors import DataError

# ``fold`` of a prediction made by the mean of the fold models (a patient in no validation fold)
MEAN_OF_FOLDS = -1

_SURV_COLUMN = re.compile(r"^surv_(\d+)$")
_LISTED = 5


def surv_column_names(n_bins: int) -> list[str]:
    """``["surv_0", ..., "surv_{n_bins-1}"]``: the survival columns of a predictions table."""
    return [f"surv_{k}" for k in range(n_bins)]


def surv_columns_of(df: pd.DataFrame) -> list[str]:
    """The ``surv_0 .. surv_{K-1}`` columns of a predictions table, in bin order (may be empty).

    Raises
    ------
    DataError
        The numbering has a gap (``surv_0, surv_2``).
    """
    cols = sorted((int(m.group(1)), c) for c in df.columns if (m := _SURV_COLUMN.match(str(c))))
    idx = [i for i, _ in cols]
    if idx != list(range(len(idx))):
        raise DataError(
            f"survival columns must be surv_0..surv_{{K-1}} without gaps, got {[c for _, c in cols]}"
        )
    return [c for _, c in cols]


def _ids(df: pd.DataFrame) -> np.ndarray:
    if "case_id" in df.columns:
        return df["case_id"].astype(str).to_numpy()
    return np.array([f"row {i}" for i in range(len(df))])


def event_of(df: pd.DataFrame, what: str = "predictions") -> np.ndarray:
    """The event indicator (1 = death observed) of each row, as float (NaN where unreadable).

    From ``event``, else ``1 - censorship``; where both are present they must agree.
    """
    has_e, has_c = "event" in df.columns, "censorship" in df.columns
    if not (has_e or has_c):
        raise DataError(f"{what}: needs an 'event' or 'censorship' column; has {list(df.columns)}")
    if has_e:
        e = pd.to_numeric(df["event"], errors="coerce").to_numpy(dtype=float)
    if has_c:
        c = 1.0 - pd.to_numeric(df["censorship"], errors="coerce").to_numpy(dtype=float)
        if not has_e:
            return c
        both = np.isfinite(e) & np.isfinite(c)
        clash = both & (e != c)
        if clash.any():
            raise DataError(
                f"{what}: 'event' and 'censorship' disagree for case(s) {_ids(df)[clash][:_LISTED].tolist()}; "
                "expected event = 1 - censorship"
            )
    return e


def _check_time(t: np.ndarray, ids: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(t)
    if bad.any():
        raise DataError(
            f"{what}: missing or infinite survival time for case(s) {ids[bad][:_LISTED].tolist()}"
        )
    neg = t < 0
    if neg.any():
        raise DataError(f"{what}: negative survival time for case(s) {ids[neg][:_LISTED].tolist()}")


def _check_event(e: np.ndarray, ids: np.ndarray, what: str) -> None:
    bad = ~np.isin(e, (0.0, 1.0))
    if bad.any():
        raise DataError(f"{what}: censorship/event must be 0 or 1 (case(s) {ids[bad][:_LISTED].tolist()})")


def _check_risk(r: np.ndarray, ids: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(r)
    if bad.any():
        raise DataError(
            f"{what}: {int(bad.sum())} NaN or infinite risk(s), e.g. case(s) {ids[bad][:_LISTED].tolist()}"
        )


def risk_values(df: pd.DataFrame, what: str = "training risks") -> np.ndarray:
    """The finite ``risk`` column of a risk-only table (``train_risks.csv``: no survival columns)."""
    if "risk" not in df.columns:
        raise DataError(f"{what}: no 'risk' column; has {list(df.columns)}")
    r = pd.to_numeric(df["risk"], errors="coerce").to_numpy(dtype=float)
    _check_risk(r, _ids(df), what)
    return r


def survival_arrays(
    time: Sequence[float] | np.ndarray,
    event: Sequence[float] | np.ndarray,
    risk: Sequence[float] | np.ndarray | None = None,
    *,
    what: str = "test",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(time float, event bool, risk float | None)`` checked: same length, time finite and
    >= 0, event in {0, 1}, risk finite."""
    t = np.asarray(time, dtype=float).ravel()
    e_raw = np.asarray(event).ravel()
    if t.shape != e_raw.shape:
        raise DataError(f"{what}: time has {t.size} values but event has {e_raw.size}")
    ids = np.array([f"position {i}" for i in range(t.size)])
    _check_time(t, ids, what)
    e = pd.to_numeric(pd.Series(e_raw), errors="coerce").to_numpy(dtype=float)
    _check_event(e, ids, what)
    r = None
    if risk is not None:
        r = np.asarray(risk, dtype=float).ravel()
        if r.shape != t.shape:
            raise DataError(f"{what}: risk has {r.size} values but time has {t.size}")
        _check_risk(r, ids, what)
    return t, e.astype(bool), r


@dataclass(frozen=True)
class SurvivalFrame:
    """A validated survival table: build it with :func:`survival_frame`, never by hand.

    ``df`` has ``case_id`` (str), ``time`` (float >= 0), ``event`` (int 0/1) and, when the
    input had them, ``fold`` (int), ``risk`` (finite float), ``risk_std`` and ``surv_*``
    (float), then any other columns unchanged. Its index is a fresh ``RangeIndex``.
    """

    df: pd.DataFrame
    surv_columns: tuple[str, ...] = ()

    @property
    def time(self) -> np.ndarray:
        return self.df["time"].to_numpy(dtype=float)

    @property
    def event(self) -> np.ndarray:
        """Boolean event indicator."""
        return self.df["event"].to_numpy().astype(bool)

    @property
    def risk(self) -> np.ndarray:
        if "risk" not in self.df.columns:
            raise DataError("predictions: no 'risk' column")
        return self.df["risk"].to_numpy(dtype=float)

    @property
    def case_ids(self) -> np.ndarray:
        return self.df["case_id"].to_numpy()

    @property
    def has_risk(self) -> bool:
        return "risk" in self.df.columns

    @property
    def has_folds(self) -> bool:
        return "fold" in self.df.columns

    @property
    def surv(self) -> np.ndarray:
        """``(n, K)`` survival at the bins' ends (``K = 0`` when the table has none)."""
        return self.df[list(self.surv_columns)].to_numpy(dtype=float).reshape(len(self.df), -1)

    def __len__(self) -> int:
        return len(self.df)

    def subset(self, mask: np.ndarray | pd.Series) -> SurvivalFrame:
        """The rows where ``mask`` is true (still validated)."""
        m = np.asarray(mask, dtype=bool)
        return SurvivalFrame(self.df.loc[m].reset_index(drop=True), self.surv_columns)


def survival_frame(
    df: pd.DataFrame | SurvivalFrame,
    *,
    what: str = "predictions",
    require_risk: bool = False,
    require_surv: bool = False,
) -> SurvivalFrame:
    """Validate a predictions (or cohort survival) table once; see :class:`SurvivalFrame`.

    Idempotent: a :class:`SurvivalFrame` is returned as it is (after the ``require_*`` checks).

    Raises
    ------
    DataError
        A missing ``time`` / ``event``-or-``censorship`` column (or ``risk``, ``surv_*`` when
        required); a missing, infinite or negative time; an event other than 0/1; a NaN or
        infinite risk; survival columns with a gap or with values outside [0, 1].
        The message names the cases.
    """
    if isinstance(df, SurvivalFrame):
        sf = df
    else:
        if "time" not in df.columns:
            raise DataError(f"{what}: no 'time' column; has {list(df.columns)}")
        out = df.reset_index(drop=True).copy()
        ids = _ids(out)
        out["case_id"] = ids
        t = pd.to_numeric(out["time"], errors="coerce").to_numpy(dtype=float)
        _check_time(t, ids, what)
        e = event_of(out, what)
        _check_event(e, ids, what)
        out["time"] = t
        out["event"] = e.astype(int)
        if "fold" in out.columns:
            fold = pd.to_numeric(out["fold"], errors="coerce")
            if fold.isna().any():
                raise DataError(
                    f"{what}: missing fold for case(s) {ids[fold.isna().to_numpy()][:_LISTED].tolist()}"
                )
            out["fold"] = fold.astype(int)
        if "risk" in out.columns:
            r = pd.to_numeric(out["risk"], errors="coerce").to_numpy(dtype=float)
            _check_risk(r, ids, what)
            out["risk"] = r
        cols = surv_columns_of(out)
        if cols:
            s = out[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
            bad = ~(np.isfinite(s) & (s >= -1e-6) & (s <= 1 + 1e-6))
            if bad.any():
                rows = bad.any(axis=1)
                raise DataError(
                    f"{what}: survival probabilities outside [0, 1] or missing for case(s) "
                    f"{ids[rows][:_LISTED].tolist()}"
                )
            out[cols] = s
        sf = SurvivalFrame(out, tuple(cols))
    if require_risk and not sf.has_risk:
        raise DataError(f"{what}: no 'risk' column; has {list(sf.df.columns)}")
    if require_surv and not sf.surv_columns:
        raise DataError(f"{what}: no surv_0..surv_{{K-1}} columns; has {list(sf.df.columns)}")
    return sf
