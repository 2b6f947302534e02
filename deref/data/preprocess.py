"""Preprocessing fitted on a training fold only: survival time bins and genomic standardization.

Fitting on the training patients alone (never the whole table, as the reference code does)
keeps validation labels and values out of the model: the tests check that the bins and the
scaler do not change when the validation patients' data change.

Time bins (MCAT convention, training fold only)
-----------------------------------------------
``n_bins`` quantile bins (as ``pandas.qcut``: linear interpolation) of the *uncensored*
training times; the outer edges are then stretched to ``0`` and ``+inf``, so that every
patient, including validation patients with a time outside the training range, falls in a
bin. Intervals are closed on the left, ``[e_j, e_{j+1})``, like MCAT's ``pd.cut(...,
right=False)``; a time equal to an inner edge goes to the upper bin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deref.data.cohort import Cohort, GeneFamily
from deref.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def fit_bins(times: np.ndarray, censorship: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Edges of ``n_bins`` quantile bins of the uncensored ``times``.

    Parameters
    ----------
    times
        ``(n,)`` survival times of the training patients (>= 0).
    censorship
        ``(n,)`` 1 = censored, 0 = event observed.
    n_bins
        Number of bins.

    Returns
    -------
    numpy.ndarray
        ``(n_bins + 1,)`` float64 edges, increasing; ``edges[0] = 0`` and
        ``edges[-1] = +inf`` (see the module docstring).

    Raises
    ------
    DataError
        NaN or negative times, fewer uncensored patients than bins, or so many tied
        uncensored times that two quantile edges coincide (a bin would be empty).
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins = {n_bins}; expected at least 1")
    times = np.asarray(times, dtype=float).ravel()
    censorship = np.asarray(censorship).ravel()
    if times.shape != censorship.shape:
        raise DataError(f"{times.shape[0]} times but {censorship.shape[0]} censorship values")
    if np.isnan(times).any() or (times < 0).any():
        raise DataError("survival times hold NaN or negative values; expected times >= 0")
    uncensored = times[censorship == 0]
    if len(uncensored) < n_bins:
        raise DataError(
            f"{len(uncensored)} uncensored patient(s) in the training fold; expected at least "
            f"n_bins = {n_bins} to form quantile time bins"
        )
    edges = np.quantile(uncensored, np.linspace(0.0, 1.0, n_bins + 1))
    inner = edges[1:-1]
    if n_bins > 1 and ((np.diff(inner) <= 0).any() or inner[0] <= 0):
        raise DataError(
            f"quantile edges {np.round(edges, 4).tolist()} of the uncensored training times are "
            f"not distinct; expected {n_bins} non-empty bins (use fewer bins)"
        )
    edges = edges.astype(np.float64)
    edges[0] = 0.0
    edges[-1] = np.inf
    return edges


def assign_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each time: ``j`` such that ``edges[j] <= t < edges[j+1]``.

    Parameters
    ----------
    times
        ``(n,)`` survival times.
    edges
        ``(n_bins + 1,)`` edges from :func:`fit_bins`.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 in ``[0, n_bins)``; times below ``edges[1]`` (including any below
        ``edges[0]``) are bin 0, times from ``edges[-2]`` on are the last bin.
    """
    times = np.asarray(times, dtype=float)
    edges = np.asarray(edges, dtype=float)
    if np.isnan(times).any():
        raise DataError("survival times hold NaN; expected numbers")
    n_bins = len(edges) - 1
    return np.clip(np.searchsorted(edges[1:-1], times, side="right"), 0, n_bins - 1).astype(np.int64)


@dataclass
class Standardizer:
    """Per-column standardization ``(x - mean) / std`` fitted on training rows.

    ``std`` is the population standard deviation (ddof = 0, as scikit-learn's
    ``StandardScaler``); a constant column gets ``std = 1`` so it maps to 0.

    Attributes
    ----------
    mean_, std_
        ``(d,)`` float64 statistics (after :meth:`fit`).
    columns
        Column names when fitted on a DataFrame; a DataFrame passed to :meth:`transform`
        must then have them (it is reordered accordingly).
    """

    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None
    columns: list[str] | None = None

    def fit(self, x: np.ndarray | pd.DataFrame, *, allow_nan: bool = False) -> Standardizer:
        """Fit on ``x`` ``(n, d)``; returns ``self``. ``allow_nan``: NaN marks a missing value
        (a missing input of ``load_cohort(allow_missing=True)``), left out of each column's
        statistics (a column with no value gets mean 0, std 1); NaN stays NaN in
        :meth:`transform`."""
        if isinstance(x, pd.DataFrame):
            self.columns = [str(c) for c in x.columns]
            arr = x.to_numpy(dtype=np.float64)
        else:
            self.columns = None
            arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(
                f"cannot fit a standardizer on an array of shape {arr.shape}; expected (n >= 1, d)"
            )
        bad = ~np.isfinite(arr) & ~(np.isnan(arr) if allow_nan else False)
        if bad.any():
            raise DataError("values to standardize hold NaN or Inf; expected finite numbers")
        if allow_nan and np.isnan(arr).any():
            present = ~np.isnan(arr)
            count = present.sum(axis=0)
            filled = np.where(present, arr, 0.0)
            self.mean_ = filled.sum(axis=0) / np.maximum(count, 1)
            var = (np.where(present, arr - self.mean_, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
            std = np.sqrt(var)
        else:
            self.mean_ = arr.mean(axis=0)
            std = arr.std(axis=0)
        std[~(std > 0)] = 1.0
        self.std_ = std
        return self

    def transform(self, x: np.ndarray | pd.DataFrame) -> np.ndarray:
        """``(x - mean) / std`` as float32 ``(n, d)``."""
        if self.mean_ is None or self.std_ is None:
            raise ConfigError("Standardizer.transform called before fit")
        if isinstance(x, pd.DataFrame):
            if self.columns is not None:
                missing = [c for c in self.columns if c not in x.columns]
                if missing:
                    raise DataError(
                        f"{len(missing)} column(s) the standardizer was fitted on are missing: {missing[:5]}"
                    )
                x = x[self.columns]
            arr = x.to_numpy(dtype=np.float64)
        else:
            arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(self.mean_):
            raise DataError(f"array of shape {arr.shape} to standardize; expected (n, {len(self.mean_)})")
        return ((arr - self.mean_) / self.std_).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        if self.mean_ is None or self.std_ is None:
            raise ConfigError("Standardizer.to_dict called before fit")
        return {"columns": self.columns, "mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            std = np.asarray(data["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"standardizer: expected 'mean' and 'std' lists of numbers ({exc})") from exc
        cols = data.get("columns")
        if mean.shape != std.shape or mean.ndim != 1 or (cols is not None and len(cols) != len(mean)):
            raise ConfigError(
                f"standardizer: mean {mean.shape}, std {std.shape}, "
                f"{'no' if cols is None else len(cols)} columns; expected equal lengths"
            )
        return cls(mean_=mean, std_=std, columns=None if cols is None else [str(c) for c in cols])


def _edge_to_json(x: float) -> float | str:
    return "inf" if math.isinf(x) and x > 0 else float(x)


@dataclass
class Preprocessing:
    """Everything fitted on a training fold that the model's inputs depend on.

    Attributes
    ----------
    bin_edges
        ``(n_bins + 1,)`` time-bin edges (:func:`fit_bins`).
    standardizer
        Fitted on the training patients' values of every column of ``m1_columns``; None for
        ROI cubes (``cube_grid``), which ``deref mri`` already z-scored within the tumour.
    m1_columns
        Column names per modality-1 token (gene family), in model input order (empty lists for
        cubes).
    m1_names
        Family names, one per group.
    wsi_dim
        Width ``D`` of the WSI bags, or None when unknown.
    table_fingerprint
        SHA-256 of the cohort table it was fitted on, or None.
    cube_grid
        End-to-end MRI: the side ``G`` of the ROI cubes (one ``G**3`` group per sequence in
        ``m1_names``), else None.
    """

    bin_edges: np.ndarray
    standardizer: Standardizer | None
    m1_columns: list[list[str]]
    m1_names: list[str] = field(default_factory=list)
    wsi_dim: int | None = None
    table_fingerprint: str | None = None
    cube_grid: int | None = None

    @property
    def n_bins(self) -> int:
        return len(self.bin_edges) - 1

    @property
    def m1_sizes(self) -> tuple[int, ...]:
        """``d_g`` per group (the model config's ``m1_sizes``)."""
        if self.cube_grid is not None:
            return (self.cube_grid**3,) * len(self.m1_names)
        return tuple(len(c) for c in self.m1_columns)

    def bins(self, times: np.ndarray) -> np.ndarray:
        """Bin labels ``(n,)`` of ``times`` (see :func:`assign_bins`)."""
        return assign_bins(times, self.bin_edges)

    def m1_inputs(self, cohort: Cohort, case_ids: Sequence[str]) -> list[np.ndarray]:
        """The model's modality-1 inputs of ``case_ids``: one float32 ``(n, d_g)`` array per group
        (standardized frame columns, or the ROI cubes of an end-to-end MRI cohort)."""
        ids = list(case_ids)
        if self.cube_grid is None:
            return self.transform_m1(cohort.genomic.loc[ids])
        cubes = cohort.mri_cubes
        if cubes is None:
            raise DataError(
                f"{cohort.source}: this fold reads MRI ROI cubes ({self.cube_grid}^3); the cohort has none "
                "(load it with the cube folder, --mri-cubes)"
            )
        if cubes.grid != self.cube_grid or list(cubes.sequences) != list(self.m1_names):
            raise DataError(
                f"MRI cubes in {cubes.folder}: {cubes.grid}^3 cubes of {list(cubes.sequences)}; this fold "
                f"was trained on {self.cube_grid}^3 cubes of {list(self.m1_names)}"
            )
        return cubes.groups(ids)

    def transform_m1(self, genomic: pd.DataFrame) -> list[np.ndarray]:
        """Standardized modality-1 inputs from a ``(n, columns)`` frame (e.g. ``Cohort.genomic``).

        Returns one float32 array ``(n, d_g)`` per group.
        """
        z = pd.DataFrame(
            self.standardizer.transform(genomic), index=genomic.index, columns=self.standardizer.columns
        )
        return [np.ascontiguousarray(z[cols].to_numpy(dtype=np.float32)) for cols in self.m1_columns]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``+inf`` edges written as the string ``"inf"``)."""
        return {
            "n_bins": self.n_bins,
            "bin_edges": [_edge_to_json(x) for x in self.bin_edges.tolist()],
            "standardizer": None if self.standardizer is None else self.standardizer.to_dict(),
            "m1_names": list(self.m1_names),
            "m1_columns": [list(c) for c in self.m1_columns],
            "wsi_dim": self.wsi_dim,
            "table_fingerprint": self.table_fingerprint,
            "cube_grid": self.cube_grid,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        try:
            edges = np.asarray([float(x) for x in data["bin_edges"]], dtype=np.float64)
            cube_grid = None if data.get("cube_grid") is None else int(data["cube_grid"])
            raw = data["standardizer"]
            std = None if raw is None and cube_grid is not None else Standardizer.from_dict(raw)
            m1_columns = [[str(c) for c in group] for group in data["m1_columns"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessing: missing or malformed field ({exc!r})") from exc
        if len(edges) < 2 or (np.diff(edges) <= 0).any():
            raise ConfigError(f"preprocessing: bin_edges {edges.tolist()}; expected >= 2 increasing edges")
        if "n_bins" in data and int(data["n_bins"]) != len(edges) - 1:
            raise ConfigError(f"preprocessing: n_bins {data['n_bins']} but {len(edges)} bin edges")
        if std is not None and std.columns is not None:
            missing = sorted({c for g in m1_columns for c in g} - set(std.columns))
            if missing:
                raise ConfigError(f"preprocessing: m1 column(s) {missing[:5]} are not standardized")
        names = [str(n) for n in data.get("m1_names", [])]
        wsi_dim = data.get("wsi_dim")
        return cls(
            bin_edges=edges,
            standardizer=std,
            m1_columns=m1_columns,
            m1_names=names,
            wsi_dim=None if wsi_dim is None else int(wsi_dim),
            table_fingerprint=data.get("table_fingerprint"),
            cube_grid=cube_grid,
        )


def fit_preprocessing(
    cohort: Cohort,
    train_ids: Sequence[str],
    families: Sequence[GeneFamily] | None = None,
    n_bins: int = 4,
    wsi_dim: int | None = None,
) -> Preprocessing:
    """Fit time bins and the genomic standardizer on the training patients only.

    Parameters
    ----------
    cohort
        The cohort.
    train_ids
        Case ids of the training fold.
    families
        Gene families (default ``cohort.families``); their columns, in order, become
        ``m1_columns``.
    n_bins
        Number of time bins.
    wsi_dim
        Bag width to record; when None and the cohort has a bag folder, read from the header
        of the first training patient's bag that exists.
    """
    from deref.data.bags import find_bag, peek_bag_shape

    families = list(cohort.families if families is None else families)
    if not families:
        raise ConfigError(f"{cohort.source}: no gene families to fit preprocessing on")
    train_ids = list(dict.fromkeys(str(c) for c in train_ids))
    unknown = [c for c in train_ids if c not in cohort.patients.index]
    if unknown:
        raise DataError(f"{cohort.source}: {len(unknown)} training case(s) not in the table: {unknown[:5]}")
    if not train_ids:
        raise DataError("empty training fold; expected training patients")
    pts = cohort.patients.loc[train_ids]
    edges = fit_bins(pts["time"].to_numpy(), pts["censorship"].to_numpy(), n_bins)
    cubes = getattr(cohort, "mri_cubes", None)
    if cubes is not None:
        standardizer = None
    else:
        columns = list(dict.fromkeys(c for f in families for c in f.columns))
        missing = [c for c in columns if c not in cohort.genomic.columns]
        if missing:
            raise DataError(f"{cohort.source}: family column(s) not in the table: {missing[:5]}")
        allow_nan = bool(getattr(cohort, "allow_missing", False))
        standardizer = Standardizer().fit(cohort.genomic.loc[train_ids, columns], allow_nan=allow_nan)
    if wsi_dim is None and cohort.bag_dir is not None:
        for c in train_ids:
            for s in cohort.slides.get(c, []):
                try:
                    wsi_dim = peek_bag_shape(find_bag(s, cohort.bag_dir))[1]
                except DataError:
                    continue
                break
            if wsi_dim is not None:
                break
    return Preprocessing(
        bin_edges=edges,
        standardizer=standardizer,
        m1_columns=[list(f.columns) for f in families],
        m1_names=[f.name for f in families],
        wsi_dim=wsi_dim,
        table_fingerprint=cohort.fingerprint,
        cube_grid=None if cubes is None else cubes.grid,
    )


__all__ = ["Preprocessing", "Standardizer", "assign_bins", "fit_bins", "fit_preprocessing"]
