"""Cohort-level views of the decoupled features: gates, t-SNE, linear CKA, top patches.

* ``decoupled_features`` runs a run's models over a cohort (batched) and returns the four
  decoupled features, the MoE gate weights and the risks of every patient.
* ``gate_summary`` is the mean gate weight per expert, overall and by risk group (the paper's
  bar chart), given a risk group per patient (``deref.stratify``'s, cut at the training risks).
* ``tsne_embedding`` places the ``F x n`` feature vectors in the plane (the paper's t-SNE).
* ``linear_cka`` / ``cka_matrix``: linear centred kernel alignment between the features
  (Kornblith et al., 2019, "Similarity of neural network representations revisited").
* ``top_patches_cohort``: the highest-scoring patches of a target across patients (gallery).

Which model gives a patient's features (``fold``): ``"oof"`` (default) uses, for each patient,
the fold model that held it out, so every feature, gate and risk is a held-out one (what the
risk groups need). Each fold model has its own feature space, though: for a t-SNE or a CKA
of the representation of *one* model, pass ``fold=k`` (every patient through model ``k``; most
of them are then its training patients), or give ``cka_matrix`` the folds as ``groups`` so that
CKA is computed within each model's held-out patients and averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deref.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = [
    "DecoupledFeatures",
    "TOP_PATCH_COLUMNS",
    "cka_matrix",
    "decoupled_features",
    "expert_labels",
    "gate_summary",
    "linear_cka",
    "top_patches_cohort",
    "tsne_embedding",
]


# ----------------------------------------------------------------------------- features
@dataclass
class DecoupledFeatures:
    """Decoupled features of a cohort; unpacks as ``(case_ids, features, gates, risks)``.

    Attributes
    ----------
    case_ids : list[str]
        n patients, in the order asked for.
    features : (n, F, C2) float32
        In the order of ``feature_names``.
    gates : (n, N) float32
        MoE expert weights (rows sum to one).
    risks : (n,) float32
        The model's risk (higher = worse).
    folds : (n,) int64
        The fold model that produced each row.
    feature_names : tuple[str, ...]
    """

    case_ids: list[str]
    features: np.ndarray
    gates: np.ndarray
    risks: np.ndarray
    folds: np.ndarray
    feature_names: tuple[str, ...]

    def __iter__(self) -> Iterator:
        return iter((self.case_ids, self.features, self.gates, self.risks))

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def expert_names(self) -> list[str]:
        """Labels for the gate columns (:func:`expert_labels`)."""
        return expert_labels(self.gates.shape[1], self.feature_names)


def expert_labels(n_experts: int, feature_names: Sequence[str]) -> list[str]:
    """Labels of the ``n_experts`` MoE gate weights.

    With DeReF's per-feature gate (N a multiple of the F features; ``DenseMoE``) the weights are
    feature-major: weight ``i`` is scored from feature ``i // (N/F)``, so it takes that feature's
    name (``"share"`` when N = F, ``"share #1"``, ``"share #2"`` when N = 2F). Otherwise (a joint
    gate over all features) ``expert_1 .. expert_N``.
    """
    names = [str(n) for n in feature_names]
    if names and n_experts % len(names) == 0:
        per = n_experts // len(names)
        return [names[i // per] + (f" #{i % per + 1}" if per > 1 else "") for i in range(n_experts)]
    return [f"expert_{i + 1}" for i in range(n_experts)]


def decoupled_features(
    predictor,
    cohort,
    case_ids: Sequence[str] | None = None,
    *,
    fold: int | str = "oof",
    batch_size: int = 8,
    segments: int | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DecoupledFeatures:
    """The decoupled features, gates and risks of a cohort's patients (batched forwards).

    ``fold``: ``"oof"`` (each patient by the fold model that held it out; patients in no
    validation fold, e.g. an external cohort, by the first fold) or an int (that model for
    everyone); see the module docstring. Bags are sorted by size within each fold to limit
    padding; the batched model gives each patient exactly what it would give alone.
    """
    cfg = predictor.config
    if cfg.model_type != "deref":
        raise ConfigError(
            f"decoupled features need a DeReF run; {predictor.run.path} is a {cfg.model_type!r} run"
        )
    ids = [str(c) for c in (cohort.case_ids if case_ids is None else case_ids)]
    if not ids:
        raise InputError("no patients given")
    unknown = [c for c in ids if c not in cohort.slides]
    if unknown:
        raise InputError(f"{cohort.source}: case id(s) not in the table: {unknown[:5]}")
    if isinstance(fold, str) and fold != "oof":
        raise ConfigError(f"fold={fold!r}; expected 'oof' or a fold index")
    plan = {c: predictor.fold_for(c, None if fold == "oof" else int(fold)) for c in ids}
    f_dim, c2, n_exp = cfg.n_features, cfg.c2, cfg.n_experts
    feats = np.zeros((len(ids), f_dim, c2), np.float32)
    gates = np.zeros((len(ids), n_exp), np.float32)
    risks = np.zeros(len(ids), np.float32)
    row = {c: i for i, c in enumerate(ids)}
    done = 0
    for k in sorted(set(plan.values())):
        members = [c for c in ids if plan[c] == k]
        for batch, out in predictor.forward_batches(cohort, members, k, batch_size, segments):
            idx = [row[c] for c in batch]
            feats[idx] = out.features.numpy()
            gates[idx] = out.gate.numpy()
            risks[idx] = out.risk.numpy()
            done += len(batch)
            if progress:
                progress(done, len(ids))
    return DecoupledFeatures(
        ids, feats, gates, risks, np.array([plan[c] for c in ids], np.int64), tuple(cfg.feature_names)
    )


# ----------------------------------------------------------------------------- gates
def gate_summary(
    gates: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    expert_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean MoE gate weight per expert, overall and by group.

    Parameters
    ----------
    gates : (n, N)
        Gate weights (``DecoupledFeatures.gates``).
    groups : (n,), optional
        A label per patient (e.g. the risk groups of ``deref.stratify``); groups appear in
        order of first appearance after the overall row set, which is labelled ``"all"``.
    expert_names
        Defaults to ``expert_1 .. expert_N``. With DeReF's per-feature gate (N = F) expert
        ``i`` is weighted by a score of feature ``i``, so feature names are natural labels.

    Returns
    -------
    DataFrame
        Long format, one row per (group, expert): ``group, expert, mean, std, sem, n``.
    """
    g = np.asarray(gates, dtype=float)
    if g.ndim != 2 or g.shape[0] == 0:
        raise InputError(f"gates have shape {g.shape}; expected (n patients, N experts)")
    names = list(expert_names) if expert_names is not None else [f"expert_{i + 1}" for i in range(g.shape[1])]
    if len(names) != g.shape[1]:
        raise InputError(f"{len(names)} expert names for {g.shape[1]} experts")
    parts: list[tuple[str, np.ndarray]] = [("all", np.ones(len(g), bool))]
    if groups is not None:
        labels = np.asarray(groups, dtype=object).ravel()
        if labels.shape[0] != g.shape[0]:
            raise InputError(f"{labels.shape[0]} group labels for {g.shape[0]} patients")
        for lab in pd.unique(labels):
            parts.append((str(lab), labels == lab))
    rows = []
    for lab, sel in parts:
        sub = g[sel]
        n = len(sub)
        std = sub.std(axis=0, ddof=1) if n > 1 else np.full(g.shape[1], np.nan)
        for j, name in enumerate(names):
            rows.append(
                {
                    "group": lab,
                    "expert": name,
                    "mean": sub[:, j].mean(),
                    "std": std[j],
                    "sem": std[j] / np.sqrt(n),
                    "n": n,
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- t-SNE
def tsne_embedding(
    features: np.ndarray,
    seed: int = 0,
    perplexity: float = 30.0,
    *,
    case_ids: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    standardize: bool = False,
) -> pd.DataFrame:
    """t-SNE (scikit-learn, 2-D, PCA initialization) of the ``n x F`` decoupled feature vectors.

    Parameters
    ----------
    features : (n, F, C2)
        ``DecoupledFeatures.features`` (all from one model for a single feature space).
    seed
        ``random_state``: the same inputs and seed give the same coordinates.
    perplexity
        Capped at ``(n * F - 1) / 3`` for small cohorts (t-SNE needs fewer than n*F).
    standardize
        Standardize each of the C2 coordinates over all points first.

    Returns
    -------
    DataFrame
        ``n * F`` rows: ``x, y, feature, case_id`` (patient-major: each patient's F rows together).
    """
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 2:
        raise InputError(f"features have shape {x.shape}; expected (n >= 2 patients, F, C2)")
    n, f, c = x.shape
    names = list(feature_names) if feature_names is not None else [f"feature_{i}" for i in range(f)]
    ids = [str(i) for i in (case_ids if case_ids is not None else range(n))]
    if len(names) != f or len(ids) != n:
        raise InputError(f"{len(names)} feature names / {len(ids)} case ids for features of shape {x.shape}")
    pts = x.reshape(n * f, c)
    if standardize:
        sd = pts.std(axis=0)
        pts = (pts - pts.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    perp = float(min(perplexity, max(1.0, (n * f - 1) / 3.0)))
    emb = TSNE(
        n_components=2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto"
    ).fit_transform(pts)
    return pd.DataFrame(
        {
            "x": emb[:, 0],
            "y": emb[:, 1],
            "feature": np.tile(np.asarray(names, dtype=object), n),
            "case_id": np.repeat(np.asarray(ids, dtype=object), f),
        }
    )


# ----------------------------------------------------------------------------- CKA
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same n examples, ``x`` (n, p), ``y`` (n, q).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``
    (Kornblith et al., 2019, eq. 5); in [0, 1], 1 for ``x`` vs itself, invariant to orthogonal
    transforms and isotropic scaling of either side. Computed in float64 through the
    ``n x n`` Gram matrices when n < p (cheaper), else through the feature products.
    A constant representation (zero after centring) has CKA ``nan``.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise InputError(f"shapes {a.shape} and {b.shape}; expected (n, p) and (n, q) with the same n >= 2")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        ka, kb = a @ a.T, b @ b.T
        hsic, na, nb = (ka * kb).sum(), np.linalg.norm(ka), np.linalg.norm(kb)
    else:
        hsic = np.linalg.norm(b.T @ a) ** 2
        na, nb = np.linalg.norm(a.T @ a), np.linalg.norm(b.T @ b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(hsic / (na * nb))


def cka_matrix(features: np.ndarray, groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """``(F, F)`` linear CKA between the decoupled features over the patients.

    ``features`` (n, F, C2). With ``groups`` (n,) (e.g. ``DecoupledFeatures.folds``), CKA is
    computed within each group (one model's feature space) and averaged, weighted by the
    group sizes; groups of fewer than 3 patients are skipped.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 3:
        raise InputError(f"features have shape {x.shape}; expected (n, F, C2)")
    f = x.shape[1]
    if groups is None:
        parts = [np.arange(x.shape[0])]
    else:
        labels = np.asarray(groups).ravel()
        if labels.shape[0] != x.shape[0]:
            raise InputError(f"{labels.shape[0]} group labels for {x.shape[0]} patients")
        parts = [np.flatnonzero(labels == g) for g in pd.unique(labels)]
        parts = [p for p in parts if len(p) >= 3]
        if not parts:
            raise InputError("no group has 3 or more patients")
    total = np.zeros((f, f))
    weight = 0
    for idx in parts:
        sub = x[idx]
        m = np.ones((f, f))
        for i in range(f):
            for j in range(i + 1, f):
                m[i, j] = m[j, i] = linear_cka(sub[:, i], sub[:, j])
        total += len(idx) * m
        weight += len(idx)
    return total / weight


# ----------------------------------------------------------------------------- top patches
#: Columns of :func:`top_patches_cohort`'s table.
TOP_PATCH_COLUMNS = (
    "rank",
    "case_id",
    "fold",
    "patch",
    "slide_id",
    "slide_path",
    "x",
    "y",
    "patch_size",
    "patch_level",
    "score",
)


def _patient_top_rows(a, target: str, k: int, per_patient: int | None, largest: bool) -> pd.DataFrame:
    """The best ``min(k, per_patient)`` patches of one patient's attribution ``a`` (no rank)."""
    scores = a.cls_attention[-1] if target == "attention" else a.patch_scores[target]
    order = np.argsort(-scores if largest else scores, kind="stable")
    if per_patient is not None:
        order = order[:per_patient]
    order = order[:k]
    slide = a.slide_index[order]
    return pd.DataFrame(
        {
            "case_id": a.case_id,
            "fold": a.fold,
            "patch": order,
            "slide_id": np.asarray(a.slide_ids, dtype=object)[slide],
            "slide_path": np.asarray(a.slide_paths, dtype=object)[slide],
            "x": a.coords[order, 0],
            "y": a.coords[order, 1],
            "patch_size": a.patch_size,
            "patch_level": a.patch_level,
            "score": scores[order].astype(np.float64),
        }
    )


def _ranked(frames: list[pd.DataFrame], k: int, largest: bool) -> pd.DataFrame:
    """The ``k`` best rows of the patients' frames (in patient order), ranked from 1."""
    if not frames:
        return pd.DataFrame(columns=list(TOP_PATCH_COLUMNS))
    df = pd.concat([f.assign(_patient=i) for i, f in enumerate(frames)], ignore_index=True)
    df = df.sort_values(
        ["score", "_patient", "patch"], ascending=[not largest, True, True], kind="stable"
    ).head(k)
    df = df.drop(columns="_patient").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def top_patches_cohort(
    predictor,
    cohort,
    target: str,
    k: int = 16,
    *,
    case_ids: Sequence[str] | None = None,
    method: str = "grad",
    fold: int | None = None,
    per_patient: int | None = None,
    largest: bool = True,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    **explain_kwargs,
) -> pd.DataFrame:
    """The ``k`` highest-scoring patches of ``target`` across patients, for a gallery.

    ``target`` is an attribution target (``"risk"`` or a feature name; scores from
    :func:`~deref.explain.attribution.explain_patient`, in the target's units, so comparable
    across patients) or ``"attention"`` (the class token's attention in the last Nystrom
    layer; a within-patient share, less comparable across bag sizes). ``per_patient`` caps
    how many patches one patient may contribute. Each patient is explained by its own
    out-of-fold model unless ``fold`` is given; explanations are cached.

    Returns
    -------
    DataFrame
        ``k`` rows by decreasing score (ties: patient order, then patch index), the columns
        of ``TOP_PATCH_COLUMNS``: ``rank, case_id, fold, patch, slide_id, slide_path, x, y,
        patch_size, patch_level, score`` (``patch_size`` / ``patch_level`` as the bag records
        them, None when it does not); read a row's pixels with
        ``deref.explain.patches.top_k_patches`` at ``x, y`` from ``slide_path``, with the
        bag's ``patch_geometry`` (its ``read_size`` at ``level``).
    """
    from deref.explain.attribution import available_targets, explain_patient

    if k < 0:
        raise InputError(f"k must be >= 0; got {k}")
    allowed = (*available_targets(predictor.config), "attention")
    if target not in allowed:
        raise InputError(f"unknown target {target!r}; expected one of {list(allowed)}")
    ids = [str(c) for c in (cohort.case_ids if case_ids is None else case_ids)]
    # attention comes with every attribution: ask for the cheapest-to-cache target, the risk
    attr_target = "risk" if target == "attention" else target
    frames = []
    for i, cid in enumerate(ids):
        a = explain_patient(
            predictor,
            cohort,
            cid,
            method=method,
            fold=fold,
            targets=[attr_target],
            use_cache=use_cache,
            **explain_kwargs,
        )
        frames.append(_patient_top_rows(a, target, k, per_patient, largest))
        if progress:
            progress(i + 1, len(ids))
    return _ranked(frames, k, largest)
