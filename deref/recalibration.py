"""Post-hoc recalibration of a discrete-time model's hazards.

An overfit survival model ranks patients usefully but its hazards saturate: curves that stay
at 1 and then fall to 0. A recalibration map ``h -> h'`` applied to every hazard keeps the
model but corrects how confident its curves are. It is fitted on held-out patients the
model did not train on — in :mod:`deref.training`, the inner validation part(s) of each
outer training fold, scored by the inner model at the kept epoch — and never on the outer
validation fold. Three maps, all monotone increasing in the hazard:

- ``"temperature"``: ``logit h' = logit(h) / T`` (one parameter, ``T > 0``; ``T > 1`` softens).
- ``"affine"``: ``logit h'_k = a * logit(h_k) + b_k`` (a temperature ``1 / a`` and one shift
  per time bin: Platt scaling of each bin's conditional event probability). With ``a -> 0``
  every patient gets the same hazards: the discrete Kaplan–Meier curve of the fitting sample,
  so a model with no usable signal falls back to the null curve instead of beating it badly.
- ``"isotonic"``: a non-decreasing step map of the hazard (pool-adjacent-violators), pooled
  over bins, interpolated linearly between its knots.

Each is fitted by the model's own loss, the discrete-time likelihood of the person-bins at
risk: a patient in bin ``y`` is at risk in bins ``0..y``; the outcome of bin ``y`` is 1 for an
event and 0 for a censoring (MCAT's convention: a patient censored in bin ``y`` survived it),
0 in the earlier bins. The parametric maps carry a small ridge pull towards the identity
(``ridge``) so a tiny or event-free sample cannot push them to infinity.

Only the curves change. The risk score (``-sum_k S_k`` of the raw model) and therefore the
C-index and the risk groups stay the model's own: recalibration is a statement about how
sure the curves are, not about who is at higher risk.

Layer 1: numpy and scipy (the optimizer), nothing of the package above :mod:`deref.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deref.errors import ConfigError, DataError

__all__ = [
    "RECALIBRATIONS",
    "Recalibration",
    "fit_recalibration",
    "person_bins",
    "hazards_from_survival",
    "survival_from_hazards",
    "discrete_nll",
]

#: ``TrainConfig.recalibration`` values; ``"none"`` keeps the model's curves.
RECALIBRATIONS = ("none", "temperature", "affine", "isotonic")
_EPS = 1e-6


def _logit(h: np.ndarray) -> np.ndarray:
    h = np.clip(h, _EPS, 1 - _EPS)
    return np.log(h) - np.log1p(-h)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def hazards_from_survival(surv) -> np.ndarray:
    """``h_k = 1 - S_k / S_{k-1}`` (``S_{-1} = 1``; ``h = 1`` once ``S`` has reached 0), shape kept
    (the last axis is the time bins)."""
    s = np.asarray(surv, dtype=float)
    prev = np.concatenate([np.ones_like(s[..., :1]), s[..., :-1]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(prev > 0, 1.0 - s / np.where(prev > 0, prev, 1.0), 1.0)
    return np.clip(h, 0.0, 1.0)


def survival_from_hazards(hazards) -> np.ndarray:
    """``S_k = prod_{j <= k} (1 - h_j)`` along the last axis."""
    return np.cumprod(1.0 - np.asarray(hazards, dtype=float), axis=-1)


def person_bins(bins, censorship, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The discrete-time risk sets: ``(patient row, bin, outcome)`` of every person-bin at risk.

    A patient in bin ``y`` is at risk in bins ``0..y``; the outcome is 1 only in bin ``y`` and
    only for an event (``censorship == 0``).
    """
    y = np.asarray(bins, dtype=int)
    c = np.asarray(censorship, dtype=int)
    if y.shape != c.shape or y.ndim != 1:
        raise DataError(f"bins {y.shape} and censorship {c.shape} must be two equal 1-D arrays")
    if len(y) and (y.min() < 0 or y.max() >= n_bins):
        raise DataError(f"time bins must lie in 0..{n_bins - 1}; got {y.min()}..{y.max()}")
    rows = np.repeat(np.arange(len(y)), y + 1)
    cols = np.concatenate([np.arange(v + 1) for v in y]) if len(y) else np.zeros(0, dtype=int)
    outcome = ((cols == y[rows]) & (c[rows] == 0)).astype(float)
    return rows, cols, outcome


def discrete_nll(hazards, bins, censorship) -> float:
    """Mean discrete-time NLL per patient of ``hazards`` ``(n, K)`` (the training loss with
    ``alpha = 0``: ``-sum`` over person-bins of ``y log h + (1 - y) log(1 - h)``)."""
    h = np.clip(np.asarray(hazards, dtype=float), _EPS, 1 - _EPS)
    rows, cols, y = person_bins(bins, censorship, h.shape[1])
    p = h[rows, cols]
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum() / max(len(h), 1))


@dataclass(frozen=True)
class Recalibration:
    """A fitted hazard map (see the module notes), stored in a fold's ``run.json`` record.

    Attributes
    ----------
    kind
        ``"temperature"``, ``"affine"`` or ``"isotonic"``.
    params
        ``{"scale": a}`` (temperature ``T = 1 / a``), ``{"scale": a, "shift": [b_k]}``, or
        ``{"x": [...], "y": [...]}`` (the isotonic knots).
    n_patients, n_events
        The fitting sample (inner validation patients).
    nll_before, nll_after
        Its mean discrete-time NLL with the raw and the recalibrated hazards.
    source
        Where it was fitted, in words.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    n_patients: int = 0
    n_events: int = 0
    nll_before: float = float("nan")
    nll_after: float = float("nan")
    source: str = ""

    def apply_hazards(self, hazards) -> np.ndarray:
        """The recalibrated hazards (any shape whose last axis is the ``K`` bins)."""
        h = np.asarray(hazards, dtype=float)
        if self.kind == "isotonic":
            x, y = np.asarray(self.params["x"], float), np.asarray(self.params["y"], float)
            return np.clip(np.interp(h, x, y), 0.0, 1.0)
        z = _logit(h) * float(self.params["scale"])
        if self.kind == "affine":
            shift = np.asarray(self.params["shift"], dtype=float)
            if shift.shape[0] != h.shape[-1]:
                raise DataError(
                    f"recalibration has {shift.shape[0]} bin shifts; hazards have {h.shape[-1]} bins"
                )
            z = z + shift
        return _sigmoid(z)

    def apply_survival(self, surv) -> np.ndarray:
        """Recalibrated ``S_k`` from the model's ``S_k`` (hazards recovered from the ratios)."""
        return survival_from_hazards(self.apply_hazards(hazards_from_survival(surv)))

    @property
    def temperature(self) -> float | None:
        """``1 / a`` of the parametric maps (None for isotonic)."""
        a = self.params.get("scale")
        return None if a is None else 1.0 / float(a)

    def describe(self) -> str:
        """One line for the CLI and the dashboard."""
        what = {
            "temperature": f"temperature T = {self.temperature:.3g}" if self.kind == "temperature" else "",
            "affine": (
                f"temperature T = {self.temperature:.3g} and a shift per bin "
                f"({', '.join(f'{b:+.2f}' for b in self.params.get('shift', []))})"
                if self.kind == "affine"
                else ""
            ),
            "isotonic": f"isotonic map ({len(self.params.get('x', []))} knots)",
        }[self.kind]
        return (
            f"{self.kind} recalibration: {what}; fitted on {self.source or 'held-out patients'} "
            f"({self.n_patients} patients, {self.n_events} events; NLL {self.nll_before:.3f} -> "
            f"{self.nll_after:.3f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.params.items()},
            "n_patients": self.n_patients,
            "n_events": self.n_events,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recalibration:
        kind = str(d.get("kind"))
        if kind not in RECALIBRATIONS[1:]:
            raise ConfigError(f"recalibration kind {kind!r}; expected one of {RECALIBRATIONS[1:]}")
        return cls(
            kind=kind,
            params=dict(d.get("params") or {}),
            n_patients=int(d.get("n_patients", 0)),
            n_events=int(d.get("n_events", 0)),
            nll_before=float(d.get("nll_before", float("nan"))),
            nll_after=float(d.get("nll_after", float("nan"))),
            source=str(d.get("source", "")),
        )


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------
def _fit_parametric(z: np.ndarray, cols: np.ndarray, y: np.ndarray, n_bins: int, shifts: bool, ridge: float):
    """``(a, b)`` minimizing the person-bin NLL of ``sigmoid(a z + b[cols])`` plus
    ``ridge / 2 * (log(a)^2 + |b|^2)``; ``a = exp(alpha)`` keeps the map increasing."""
    from scipy.optimize import minimize

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        alpha, b = theta[0], (theta[1:] if shifts else np.zeros(n_bins))
        a = np.exp(alpha)
        u = a * z + b[cols]
        # -[y log s(u) + (1-y) log(1 - s(u))] = softplus(u) - y u
        loss = np.logaddexp(0.0, u) - y * u
        r = _sigmoid(u) - y
        grad_alpha = float((r * z).sum() * a) + ridge * alpha
        value = float(loss.sum()) + 0.5 * ridge * (alpha**2 + float((b**2).sum()))
        if not shifts:
            return value, np.array([grad_alpha])
        grad_b = np.bincount(cols, weights=r, minlength=n_bins) + ridge * b
        return value, np.concatenate([[grad_alpha], grad_b])

    theta0 = np.zeros(1 + (n_bins if shifts else 0))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B")
    a = float(np.exp(res.x[0]))
    b = res.x[1:] if shifts else np.zeros(n_bins)
    return a, b


def _pava(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of ``y`` on ``x``: knots ``(x, fitted y)``
    at each block's first and last ``x`` (pool-adjacent-violators, unit weights)."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order], y[order]
    # ties in x share one value: start from per-unique-x means with their counts as weights
    ux, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, len(xs)))
    sums = np.add.reduceat(ys, start)
    means, weights, lo, hi = [], [], [], []
    for i in range(len(ux)):
        means.append(sums[i] / counts[i])
        weights.append(float(counts[i]))
        lo.append(i)
        hi.append(i)
        while len(means) > 1 and means[-2] > means[-1]:
            w = weights[-2] + weights[-1]
            m = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            means[-2:], weights[-2:] = [m], [w]
            lo[-2:], hi[-2:] = [lo[-2]], [hi[-1]]
    kx, ky = [], []
    for m, a, b in zip(means, lo, hi):
        kx += [ux[a]] if a == b else [ux[a], ux[b]]
        ky += [m] if a == b else [m, m]
    return np.asarray(kx, dtype=float), np.asarray(ky, dtype=float)


def fit_recalibration(
    kind: str,
    hazards,
    bins: Sequence[int],
    censorship: Sequence[int],
    *,
    ridge: float = 0.1,
    source: str = "",
) -> Recalibration:
    """Fit a hazard map on held-out patients.

    Parameters
    ----------
    kind
        ``"temperature"``, ``"affine"`` or ``"isotonic"``.
    hazards
        ``(n, K)`` the model's hazards for the fitting patients.
    bins, censorship
        Their time bin (0-based, from the fold's own edges) and censorship (1 = censored).
    ridge
        Pull of the parametric maps towards the identity (in units of the summed NLL).
    source
        Where the patients come from, for the record.

    Raises
    ------
    ConfigError
        Unknown ``kind``. DataError: shapes that disagree, bins outside ``0..K-1``, no patient.
    """
    if kind not in RECALIBRATIONS[1:]:
        raise ConfigError(f"recalibration {kind!r}; expected one of {RECALIBRATIONS[1:]}")
    h = np.asarray(hazards, dtype=float)
    if h.ndim != 2 or h.shape[0] != len(bins) or h.shape[0] == 0:
        raise DataError(
            f"recalibration needs (n, K) hazards for n >= 1 patients; got {h.shape} for {len(bins)}"
        )
    if not np.isfinite(h).all():
        raise DataError("recalibration: the model's hazards hold non-finite values")
    rows, cols, y = person_bins(bins, censorship, h.shape[1])
    n_events = int((np.asarray(censorship) == 0).sum())
    if kind == "isotonic":
        x, fy = _pava(h[rows, cols], y)
        params: dict[str, Any] = {"x": x.tolist(), "y": np.clip(fy, 0.0, 1.0).tolist()}
    else:
        a, b = _fit_parametric(_logit(h[rows, cols]), cols, y, h.shape[1], kind == "affine", ridge)
        params = {"scale": a} if kind == "temperature" else {"scale": a, "shift": b.tolist()}
    fitted = Recalibration(kind=kind, params=params, n_patients=len(h), n_events=n_events, source=source)
    return Recalibration(
        kind=kind,
        params=params,
        n_patients=len(h),
        n_events=n_events,
        nll_before=discrete_nll(h, bins, censorship),
        nll_after=discrete_nll(fitted.apply_hazards(h), bins, censorship),
        source=source,
    )
