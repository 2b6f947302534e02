"""Voxel attributions of an MRI + WSI run: which voxels of which sequence move the risk or a
decoupled feature.

An MRI run trained end to end (``mri_encoder="resnet3d"``) reads the ROI cubes themselves (the
cohort's :class:`deref.data.mri.MriCubes`): the pipeline *cube -> 3D ResNet -> DeReF* is one model,
differentiated as is. An MRI run in frozen-feature mode reads, per sequence, the 2048-d vector that ``deref mri``
computed from the ROI cube with a 3D ResNet-50. To attribute to voxels, the cube is rebuilt from
the files exactly as ``deref mri`` built it (the preprocessing settings are stored in the feature
file), the backbone is rebuilt from the stored provenance (the weights file, or the seeded random
initialization), and the recomputed vectors are checked against the stored ones (a patient whose
files changed since is an error, not a silent mismatch). The pipeline *cube -> backbone ->
standardization (the fold's training statistics) -> DeReF* is then differentiated end to end.

Targets are those of :mod:`deref.explain.attribution` (``"risk"`` and each decoupled feature's
first-order contribution to the risk, ``<g_f, V_f>``), so the voxel maps answer the same question
as the patch and sequence bars. Methods:

- ``"grad"``: gradient x (input - baseline), one forward and one backward;
- ``"ig"``: Integrated Gradients from the baseline, ``steps`` Gauss-Legendre points (the backbone
  runs once per point per sequence), with its completeness error ``convergence_delta``.

The baseline is the all-zero cube: after ``deref mri``'s z-scoring, the mean intensity inside the
tumour (every voxel at the average). A feature with no path from the MRI (the pathology-specific
one) gets exact zeros on every voxel (not special-cased: its gradient is zero).

Layer 5 (beside :mod:`deref.explain.attribution`); torch, nibabel and MONAI load here.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deref.errors import ConfigError, DataError
from deref.explain.attribution import RISK, _check_model, _check_targets, _risk_direction, _target_matrix

__all__ = ["VoxelAttribution", "MriInputs", "mri_inputs", "explain_voxels"]


@dataclass
class MriInputs:
    """One patient's ROI cubes as ``deref mri`` built them, and the backbone that read them."""

    case_id: str
    sequences: list[str]
    cubes: np.ndarray  # (S, G, G, G) float32, z-scored
    inside: np.ndarray  # (G, G, G) bool: the tumour mask on the cube
    spacing_mm: float
    backbone: torch.nn.Module | None  # None: the run's own 3D ResNet reads the cubes (end to end)
    stored: np.ndarray | None  # (S, 2048) the feature file's vectors (frozen mode)


@dataclass
class VoxelAttribution:
    """Voxel scores of one patient for one target.

    ``scores`` (S, G, G, G) aligned with ``cubes``; ``sequence_scores`` (S,) their sums (the
    per-sequence bar); ``target_value`` the target at the input; ``convergence_delta`` for IG
    (``sum(scores) - (T(x) - T(baseline))``), else None.
    """

    case_id: str
    fold: int
    target: str
    method: str
    sequences: list[str]
    cubes: np.ndarray
    inside: np.ndarray
    scores: np.ndarray
    sequence_scores: np.ndarray
    target_value: float
    spacing_mm: float
    baseline: str = "the all-zero cube (every voxel at the tumour's mean intensity after z-scoring)"
    convergence_delta: float | None = None
    missing_sequences: tuple[str, ...] = ()  # absent (``allow_missing``): zero cube and scores


def _feature_attrs(cohort, case_id: str) -> dict:
    import h5py

    if cohort.mri_features is None or cohort.mri is None:
        raise ConfigError(f"{cohort.source}: not an MRI cohort (no MRI manifest and features)")
    path = Path(cohort.mri_features) / f"{case_id}.h5"
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            attrs["_features"] = np.asarray(f["features"][()], dtype=np.float32)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: patient {case_id}: cannot read the MRI feature file ({exc})") from exc
    if attrs.get("feature_rows") != "sequence":
        raise DataError(
            f"{path}: patient {case_id}: vectors are not per sequence (rerun `deref mri --per-sequence`)"
        )
    return attrs | {"_path": str(path)}


def mri_inputs(cohort, case_id: str, *, atol: float = 1e-3) -> MriInputs:
    """Rebuild ``case_id``'s cubes and backbone from the files and the feature file's provenance.

    Raises
    ------
    DataError
        No feature file, vectors not per sequence, or recomputed vectors that differ from the
        stored ones by more than ``atol`` (relative to their scale): the files, settings or
        weights changed since ``deref mri`` ran.
    """
    from deref.prepare.mri import MriCase, MriConfig, build_mri_backbone, preprocess_case

    if getattr(cohort, "mri_cubes", None) is not None:  # end to end: the cached cubes are the input
        cubes, inside = cohort.mri_cubes.cube(case_id)
        seqs = list(cohort.mri_cubes.sequences)
        spacing = cohort.mri_cubes.spacing_mm.get(case_id, 1.0)
        return MriInputs(case_id, seqs, cubes, inside, float(spacing), None, None)
    attrs = _feature_attrs(cohort, case_id)
    manifest = cohort.mri
    if case_id not in manifest.files:
        raise DataError(f"{manifest.path}: patient {case_id} has no row")
    config = MriConfig.from_json(attrs["preprocess"])
    sequences = json.loads(attrs["sequences"])
    case = MriCase(case_id, {s: manifest.files[case_id][s] for s in sequences}, manifest.masks.get(case_id))
    vol = preprocess_case(case, config)
    weights = attrs.get("weights_file", "")
    random_weights = bool(attrs.get("unusable_for_science")) or not weights or weights.startswith("none")
    backbone = build_mri_backbone(1, None if random_weights else weights, random_weights=random_weights)
    with torch.inference_mode():
        again = backbone(torch.from_numpy(vol.data)[:, None]).float().numpy()
    stored = attrs["_features"]
    scale = max(float(np.abs(stored).max()), 1e-6)
    err = float(np.abs(again - stored).max()) / scale
    if err > atol:
        raise DataError(
            f"{attrs['_path']}: patient {case_id}: the MRI vectors recomputed from the files differ from the "
            f"stored ones (relative {err:.2e} > {atol:g}); the volumes, settings or weights changed since `deref mri` ran"
        )
    return MriInputs(case_id, sequences, vol.data, vol.inside, float(vol.spacing_mm), backbone, stored)


_INPUTS: OrderedDict[tuple[str, str], MriInputs] = OrderedDict()
_INPUTS_LOCK = threading.Lock()
_INPUTS_KEEP = 8


def _cached_inputs(cohort, case_id: str) -> MriInputs:
    """:func:`mri_inputs` of the last few patients (rebuilding a patient's cubes and backbone and
    checking its vectors costs seconds; every target and method of that patient reuses them)."""
    key = (cohort.fingerprint, case_id)
    with _INPUTS_LOCK:
        hit = _INPUTS.get(key)
        if hit is not None:
            _INPUTS.move_to_end(key)
            return hit
    found = mri_inputs(cohort, case_id)
    with _INPUTS_LOCK:
        _INPUTS[key] = found
        while len(_INPUTS) > _INPUTS_KEEP:
            _INPUTS.popitem(last=False)
    return found


def _m1_from_cubes(cubes: torch.Tensor, backbone, pre, sequences: list[str]) -> list[torch.Tensor]:
    """Differentiable ``cube -> backbone -> the fold's standardization`` per sequence: (1, 2048)
    each; without a backbone (end to end) the flattened cubes themselves, (1, G**3) each."""
    if backbone is None:
        if list(pre.m1_names) != list(sequences):
            raise DataError(
                f"the fold's modality-1 groups {list(pre.m1_names)} differ from the cubes' {sequences}"
            )
        return [cubes[s].reshape(1, -1) for s in range(cubes.shape[0])]
    feats = backbone(cubes[:, None])  # (S, 2048)
    std = pre.standardizer
    index = {c: i for i, c in enumerate(std.columns)}
    out = []
    for s, (name, cols) in enumerate(zip(pre.m1_names, pre.m1_columns)):
        if name != sequences[s]:
            raise DataError(
                f"the fold's modality-1 groups {list(pre.m1_names)} differ from the file's {sequences}"
            )
        idx = [index[c] for c in cols]
        mean = torch.as_tensor(std.mean_[idx], dtype=feats.dtype)
        sd = torch.as_tensor(std.std_[idx], dtype=feats.dtype)
        out.append(((feats[s] - mean) / sd)[None])
    return out


def _target(
    model, m1, inputs, target: str, g: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(T, g)``: the target's value and the risk direction ``g = d risk / d V`` it reads the
    features along — computed at this input unless given (it is held at the patient's own
    features for every point of an IG path, as in :mod:`deref.explain.attribution`)."""
    out = model(m1, inputs.wsi, inputs.mask, validate=False)
    if target != RISK and g is None:
        g = _risk_direction(model, out.features, out.segments).detach()
    return _target_matrix(out, (target,), model.config.feature_names, g)[0, 0], g


def explain_voxels(
    predictor,
    cohort,
    case_id: str,
    target: str = RISK,
    method: str = "grad",
    *,
    fold: int | None = None,
    steps: int = 32,
) -> VoxelAttribution:
    """Voxel attribution of ``target`` for ``case_id`` with fold ``fold``'s model (default: the
    fold that held the patient out). See the module notes for targets, methods and baseline."""
    if method not in ("grad", "ig"):
        raise ConfigError(f"method {method!r}; expected 'grad' or 'ig'")
    if predictor.run.info.m1_kind != "mri":
        raise ConfigError(f"run {predictor.run.path} is not an MRI run: no voxels to attribute")
    k = predictor.fold_for(case_id, fold)
    model = predictor.fold(k).model
    _check_model(model)
    (target,) = _check_targets((target,), model.config)
    mri = _cached_inputs(cohort, case_id)
    pre = predictor.fold(k).preprocessing
    inputs = predictor.inputs(cohort, [case_id], k)
    x = torch.from_numpy(mri.cubes).float()

    direction: list[torch.Tensor | None] = [None]  # g at the patient's own input, then held

    def value_and_grad(c: torch.Tensor) -> tuple[float, torch.Tensor]:
        c = c.clone().requires_grad_(True)
        with torch.enable_grad():
            m1 = _m1_from_cubes(c, mri.backbone, pre, mri.sequences)
            t, direction[0] = _target(model, m1, inputs, target, direction[0])
            (g,) = torch.autograd.grad(t, c, allow_unused=True)
        return float(t.detach()), (torch.zeros_like(c) if g is None else g)

    value, grad = value_and_grad(x)
    delta = None
    if method == "grad":
        scores = (x * grad).numpy()
    else:
        nodes, weights = np.polynomial.legendre.leggauss(int(steps))
        alphas, weights = (nodes + 1) / 2, weights / 2
        total = torch.zeros_like(x)
        for a, w in zip(alphas, weights):
            total += float(w) * value_and_grad(x * float(a))[1]
        scores = (x * total).numpy()
        base_value = value_and_grad(torch.zeros_like(x))[0]
        delta = float(scores.sum() - (value - base_value))
    absent = tuple(s for s, c in zip(mri.sequences, mri.cubes) if np.isnan(c).all())
    scores = np.nan_to_num(scores, nan=0.0)
    return VoxelAttribution(
        case_id=case_id,
        fold=k,
        target=target,
        method=method,
        sequences=mri.sequences,
        cubes=np.nan_to_num(mri.cubes, nan=0.0) if absent else mri.cubes,
        inside=mri.inside,
        scores=scores.astype(np.float32),
        sequence_scores=scores.reshape(len(mri.sequences), -1).sum(axis=1),
        missing_sequences=absent,
        target_value=value,
        spacing_mm=mri.spacing_mm,
        convergence_delta=delta,
    )
