"""A synthetic MRI + WSI demo cohort (liver-cancer-like) with planted, documented survival signal.

:func:`make_mri_demo_cohort` writes, deterministically from a seed, a cohort laid out exactly as
real MRI + WSI data would be (see ``assets/DEMO_MRI.md`` for the full description):

* ``cohort.csv`` — MCAT-layout survival table, one row per slide: ``case_id, slide_id,
  survival_months, censorship, age, is_female`` (no genomic columns: the MRI replaces them);
* ``mri_manifest.csv`` — one row per patient: ``case_id``, one column per sequence
  (:data:`SEQUENCES`) and ``mask``, paths relative to the manifest;
* ``mri/<case_id>/<sequence>.nii.gz`` — float32 NIfTI volumes (RAS affine from the spacing) of
  a liver-like organ with vessels, a tumour ellipsoid and noise, five contrasts;
  ``mri/<case_id>/mask.nii.gz`` the tumour (uint8) and ``mri/<case_id>/planted.nii.gz`` the
  truth: the voxels of the planted region (uint8);
* ``slides/`` and ``bags/`` — the slides and CLAM bags of :mod:`deref.data.synthetic`, with its
  planted risky phenotype;
* ``truth.csv`` — per patient the planted components and the true log-risk;
* ``demo.json`` — parameters, the oracle C-index and the C-index of each modality's terms alone
  (written last: a folder with ``demo.json`` is complete).

The planted signal::

    log_risk = B_MRI * (f - F0) + B_WSI * (r - R0) + B_INT * (f - F0) * (r - R0)

``f``: the fraction of the tumour's voxels occupied by the planted region, a compact region in
the tumour's superior half (voxels above the mask's centroid) that is hypo-intense in the
``hepatobiliary`` sequence only and invisible in the other four; ``r``: the fraction of the
patient's patches (all slides together) with the risky phenotype.

:func:`simulate_mri_demo` computes the tables, the volume parameters (and the voxel counts
behind ``f``), the slide layouts and the C-indices without writing anything.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deref.data import synthetic as wsi
from deref.errors import ConfigError, DataError

# --------------------------------------------------------------------------- constants
#: Version of the generator; bumped whenever the same arguments would give different files.
MRI_DEMO_VERSION = 1

#: The five sequences of the paper's liver-cancer cohort, in manifest (token) order.
SEQUENCES = ("arterial", "delay", "hepatobiliary", "t1", "t2")
#: The one sequence in which the planted region is visible.
PLANTED_SEQUENCE = "hepatobiliary"
DEFAULT_SHAPE = (48, 48, 40)
DEFAULT_SPACING_MM = (1.5, 1.5, 2.0)
MANIFEST_NAME = "mri_manifest.csv"
CASE_PREFIX = "LC"
#: Level-0 slide size (width, height): 10 x 8 patches of 256 px (about 35 patches a slide), smaller
#: than the genomic demo's so that the whole 160-patient cohort builds in well under a minute.
SLIDE_SIZE = (2560, 2048)

# Tissue labels of the label map a case is painted from.
BACKGROUND, LIVER, VESSEL, TUMOUR, PLANTED = range(5)
#: Relative signal per label (background, liver, vessel, tumour, planted) per sequence. The
#: planted column equals the tumour column everywhere except in the planted sequence.
CONTRAST: dict[str, tuple[float, float, float, float, float]] = {
    "arterial": (0.35, 0.45, 1.00, 0.85, 0.85),  # arterial hyper-enhancement of the tumour
    "delay": (0.30, 0.60, 0.75, 0.40, 0.40),  # wash-out
    "hepatobiliary": (0.30, 0.90, 0.30, 0.45, 0.15),  # hepatocyte uptake; planted region darker
    "t1": (0.70, 0.55, 0.15, 0.38, 0.38),  # fat bright, flow voids dark
    "t2": (0.55, 0.28, 0.45, 0.62, 0.62),  # tumour and fluid bright
}
#: Intensity scale of each sequence (arbitrary scanner units).
SEQUENCE_SCALE = {"arterial": 900.0, "delay": 800.0, "hepatobiliary": 1000.0, "t1": 700.0, "t2": 1200.0}
#: Rician noise sd, anatomical texture sd, tumour texture sd and bias-field sd (relative).
NOISE_SD = 0.025
TEXTURE_SD = 0.04
TUMOUR_TEXTURE_SD = 0.05
BIAS_SD = 0.05
#: gzip level of the ``.nii.gz`` files (1: fast; voxel values are integers, which compress well).
NIFTI_COMPRESSLEVEL = 1

# Planted signal -------------------------------------------------------------------------
B_MRI = 9.0
B_WSI = 5.0
B_INT = 35.0
#: Planted fraction target: F_LO + (F_HI - F_LO) * Beta(a, b); F0 is its mean.
PLANTED_RANGE = (0.02, 0.45)
PLANTED_BETA = (1.3, 1.3)
F0 = PLANTED_RANGE[0] + (PLANTED_RANGE[1] - PLANTED_RANGE[0]) * PLANTED_BETA[0] / sum(PLANTED_BETA)
#: Centre of the risky fraction and its distribution: those of the genomic demo.
R0 = wsi.R0
FRACTION_BETA = wsi.FRACTION_BETA
SECOND_SLIDE_SD = wsi.SECOND_SLIDE_SD
TWO_SLIDE_PROB = wsi.TWO_SLIDE_PROB

# Survival (the paper's Table I: 160 patients, 1.4-35.1 months, median 19.2, 2 censored) -----
#: Proportional hazards with cumulative baseline hazard
#: ``L(t) = HAZARD_SCALE * ((t - T_LO) / (T_HI - t)) ** HAZARD_SHAPE`` on ``(T_LO, T_HI)`` months.
T_LO, T_HI = 1.2, 39.0
HAZARD_SHAPE = 1.6
HAZARD_SCALE = 0.95
#: Share of patients censored (exactly ``round(share * n)``, chosen independently of the risk).
CENSORED_SHARE = 0.0125

# Seed-sequence stream tags (distinct from deref.data.synthetic's 1..8).
_S_CASE, _S_RENDER, _S_CLINICAL, _S_FRACTION, _S_SURVIVAL, _S_SLIDES = range(101, 107)

_CASE_RE = re.compile(rf"^{CASE_PREFIX}-\d{{4}}$")
_STEM_RE = re.compile(rf"^{CASE_PREFIX}-\d{{4}}-\d{{2}}$")
_rng = wsi._rng  # one seed-stream convention for both demos


# --------------------------------------------------------------------------- arguments
def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _check_args(n_patients, seed, shape, spacing_mm, slide_size) -> tuple:
    """Validated ``(n, seed, shape, spacing, slide_size)``; a :class:`ConfigError` names the argument."""
    if not _is_int(n_patients) or not 2 <= n_patients <= 9999:
        raise ConfigError(f"MRI demo: n_patients must be an integer in 2..9999, got {n_patients!r}")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(f"MRI demo: seed must be an integer in 0..2**32-1, got {seed!r}")
    try:
        shape_t = tuple(shape)
        spacing_t = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise ConfigError(
            f"MRI demo: shape and spacing_mm must be 3 numbers each, got {shape!r} and {spacing_mm!r}"
        ) from None
    if len(shape_t) != 3 or not all(_is_int(v) and 16 <= v <= 512 for v in shape_t):
        raise ConfigError(f"MRI demo: shape must be 3 integers in 16..512 voxels, got {shape!r}")
    if len(spacing_t) != 3 or not all(math.isfinite(s) and 0.1 <= s <= 10.0 for s in spacing_t):
        raise ConfigError(f"MRI demo: spacing_mm must be 3 numbers in 0.1..10 mm, got {spacing_mm!r}")
    try:
        size = wsi._check_args(2, 0, slide_size)
    except DataError as exc:
        raise ConfigError(f"MRI demo: {exc}") from None
    return int(n_patients), int(seed), tuple(int(v) for v in shape_t), spacing_t, size


def slide_seed(seed: int) -> int:
    """The seed handed to :mod:`deref.data.synthetic`'s slide machinery.

    Parameters
    ----------
    seed
        The MRI demo's seed.

    Returns
    -------
    int
        The seed of the slide layouts, textures and embeddings (0..2**32-1), derived from ``seed``
        so that the MRI demo's slides are not the genomic demo's.
    """
    return int(np.random.SeedSequence([int(seed), _S_SLIDES, 2]).generate_state(1)[0])


def ras_affine(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The volumes' affine.

    Parameters
    ----------
    shape, spacing_mm
        Voxel grid ``(X, Y, Z)`` and voxel size in mm.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)``: RAS axes (diagonal ``spacing_mm``), world origin at the grid's centre.
    """
    aff = np.diag([*(float(s) for s in spacing_mm), 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing_mm)]
    return aff


# --------------------------------------------------------------------------- case geometry
@dataclass(frozen=True)
class MriCaseParams:
    """The random parameters of one patient's volumes, relative to the field of view.

    Lengths are fractions of the half field of view ``H`` (per axis for the organ; of the smallest
    half-extent for the tumour and vessels) so any ``shape`` / ``spacing_mm`` gives the same anatomy.

    Attributes
    ----------
    organ_centre, organ_radii
        Liver ellipsoid centre and radii (fractions of ``H`` per axis).
    organ_amps, organ_phases
        Harmonics 2..5 of the organ's outline in the axial plane.
    tumour_offset
        Tumour centre in organ-normalized coordinates (``|offset| <= 0.2``).
    tumour_radii, tumour_angle
        Tumour semi-axes (fractions of ``min(H)``) and rotation in the axial plane (rad).
    planted_target
        The planted fraction aimed at (the realized ``f`` is the voxel count ratio).
    planted_offset, planted_stretch
        Seed point of the planted region (in tumour radii from its centre, ``z > 0``) and the
        axis scaling of the distance that grows it.
    vessels
        Hepatic vessels: ``(p0, p1, radius)`` segments, ends in organ-normalized coordinates.
    aorta
        ``(x, y, radius)`` of a vertical vessel beside the organ (fractions of ``H``).
    """

    case_id: str
    case_index: int
    organ_centre: tuple[float, float, float]
    organ_radii: tuple[float, float, float]
    organ_amps: tuple[float, ...]
    organ_phases: tuple[float, ...]
    tumour_offset: tuple[float, float, float]
    tumour_radii: tuple[float, float, float]
    tumour_angle: float
    planted_target: float
    planted_offset: tuple[float, float, float]
    planted_stretch: tuple[float, float, float]
    vessels: tuple[tuple[tuple[float, float, float], tuple[float, float, float], float], ...]
    aorta: tuple[float, float, float]


def _unit_ball(rng: np.random.Generator, radius: float) -> tuple[float, float, float]:
    v = rng.standard_normal(3)
    v *= radius * rng.random() ** (1 / 3) / np.linalg.norm(v)
    return tuple(float(x) for x in v)


def case_params(seed: int, case_index: int) -> MriCaseParams:
    """One patient's volume parameters.

    Parameters
    ----------
    seed
        The demo's seed.
    case_index
        0-based patient index (the case id is ``LC-<index + 1>``).

    Returns
    -------
    MriCaseParams
        Drawn from the patient's own seed stream, so independent of ``n_patients``.
    """
    rng = _rng(seed, _S_CASE, case_index)
    centre = (0.2 + rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    radii = (rng.uniform(0.68, 0.76), rng.uniform(0.62, 0.72), rng.uniform(0.70, 0.80))
    amps = tuple(float(rng.uniform(0.0, 0.05 / math.sqrt(k - 1))) for k in range(2, 6))
    phases = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in range(2, 6))
    tumour_offset = _unit_ball(rng, 0.2)
    base = rng.uniform(0.20, 0.32)
    tumour_radii = tuple(float(base * a) for a in rng.uniform(0.85, 1.15, 3))
    a, b = PLANTED_BETA
    target = PLANTED_RANGE[0] + (PLANTED_RANGE[1] - PLANTED_RANGE[0]) * rng.beta(a, b)
    planted_offset = (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.35, 0.6))
    stretch = tuple(float(s) for s in rng.uniform(0.7, 1.4, 3))
    vessels = tuple(
        (_unit_ball(rng, 0.8), _unit_ball(rng, 0.8), float(rng.uniform(0.05, 0.085)))
        for _ in range(int(rng.integers(3, 6)))
    )
    aorta = (float(rng.uniform(-0.75, -0.65)), float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.18, 0.24)))
    return MriCaseParams(
        case_id=f"{CASE_PREFIX}-{case_index + 1:04d}",
        case_index=int(case_index),
        organ_centre=tuple(float(c) for c in centre),
        organ_radii=tuple(float(r) for r in radii),
        organ_amps=amps,
        organ_phases=phases,
        tumour_offset=tumour_offset,
        tumour_radii=tumour_radii,
        tumour_angle=float(rng.uniform(0, math.pi)),
        planted_target=float(target),
        planted_offset=tuple(float(o) for o in planted_offset),
        planted_stretch=stretch,
        vessels=vessels,
        aorta=aorta,
    )


def _world_grid(shape, spacing_mm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable world coordinates (mm) of the voxel centres, as :func:`ras_affine` maps them."""
    aff = ras_affine(shape, spacing_mm)
    axes = [np.arange(n) * aff[k, k] + aff[k, 3] for k, n in enumerate(shape)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _segment_distance2(xyz: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Squared distance (mm^2) of points ``(N, 3)`` to the segment ``p0``-``p1``."""
    d = p1 - p0
    t = np.clip((xyz - p0) @ d / (float(d @ d) or 1.0), 0.0, 1.0)
    return (((xyz - p0) - t[:, None] * d) ** 2).sum(axis=1)


@dataclass(frozen=True)
class CaseGeometry:
    """A case's label map on the voxel grid (``BACKGROUND`` .. ``PLANTED``), ``(X, Y, Z)`` int8.

    ``tumour`` (the mask: tumour and planted labels) and ``planted`` are boolean views of it.
    """

    labels: np.ndarray

    @property
    def tumour(self) -> np.ndarray:
        return self.labels >= TUMOUR

    @property
    def planted(self) -> np.ndarray:
        return self.labels == PLANTED

    @property
    def organ(self) -> np.ndarray:
        return self.labels != BACKGROUND

    @property
    def planted_fraction(self) -> float:
        return float(self.planted.sum() / self.tumour.sum())


def case_geometry(params: MriCaseParams, shape, spacing_mm) -> CaseGeometry:
    """Paint a case's label map: organ, vessels (in the organ, and the aorta beside it), tumour, planted.

    Parameters
    ----------
    params
        The case's parameters.
    shape, spacing_mm
        Voxel grid and voxel size (mm).

    Returns
    -------
    CaseGeometry

    Raises
    ------
    DataError
        The grid is too coarse for the tumour to have a voxel or a superior half.
    """
    grid = _world_grid(shape, spacing_mm)
    X, Y, Z = grid
    half = np.array([n * s / 2.0 for n, s in zip(shape, spacing_mm)])
    oc = np.asarray(params.organ_centre) * half
    orad = np.asarray(params.organ_radii) * half
    u, v, w = (X - oc[0]) / orad[0], (Y - oc[1]) / orad[1], (Z - oc[2]) / orad[2]
    edge = 1.0 + sum(
        a * np.cos(k * np.arctan2(v, u) + p)
        for k, (a, p) in enumerate(zip(params.organ_amps, params.organ_phases), start=2)
    )
    organ = u * u + v * v + w * w <= edge * edge
    labels = np.where(organ, LIVER, BACKGROUND).astype(np.int8)
    hmin = float(half.min())
    inside = np.flatnonzero(organ)  # hepatic vessels only inside the organ
    ijk = np.unravel_index(inside, organ.shape)
    xyz = np.stack([g.ravel()[i] for g, i in zip(grid, ijk)], axis=1)
    for p0, p1, r in params.vessels:
        d2 = _segment_distance2(xyz, oc + np.asarray(p0) * orad, oc + np.asarray(p1) * orad)
        labels.flat[inside[d2 <= (r * hmin) ** 2]] = VESSEL
    ax, ay, ar = params.aorta
    labels[((X - ax * half[0]) ** 2 + (Y - ay * half[1]) ** 2 <= (ar * hmin) ** 2) & ~organ] = VESSEL
    tc = oc + np.asarray(params.tumour_offset) * orad
    trad = np.asarray(params.tumour_radii) * hmin
    c, s = math.cos(params.tumour_angle), math.sin(params.tumour_angle)
    dx, dy, dz = X - tc[0], Y - tc[1], Z - tc[2]
    tu, tv, tw = (dx * c + dy * s) / trad[0], (-dx * s + dy * c) / trad[1], dz / trad[2]
    tumour = tu * tu + tv * tv + tw * tw <= 1.0
    if not tumour.any():
        raise DataError(
            f"MRI demo {params.case_id}: the tumour has no voxel on grid {shape}; use a finer grid"
        )
    labels[tumour] = TUMOUR
    _plant(labels, params, spacing_mm, tc, trad, (c, s))
    return CaseGeometry(labels)


def _plant(labels: np.ndarray, params: MriCaseParams, spacing_mm, tc, trad, rot) -> None:
    """Label the planted region: the ``k`` superior-half tumour voxels nearest a seed point."""
    aff = ras_affine(labels.shape, spacing_mm)
    idx = np.flatnonzero(labels == TUMOUR)
    ijk = np.stack(np.unravel_index(idx, labels.shape), axis=1).astype(float)
    xyz = ijk * np.diag(aff)[:3] + aff[:3, 3]
    superior = xyz[:, 2] > xyz[:, 2].mean()  # above the mask's centroid
    if not superior.any():
        raise DataError(f"MRI demo {params.case_id}: the tumour has no superior half on this grid")
    c, s = rot
    ox, oy, oz = np.asarray(params.planted_offset) * trad
    seed_pt = tc + np.array([ox * c - oy * s, ox * s + oy * c, oz])
    d = ((xyz[superior] - seed_pt) / np.asarray(params.planted_stretch)) ** 2
    k = int(np.clip(round(params.planted_target * idx.size), 1, int(superior.sum())))
    chosen = idx[superior][np.argsort(d.sum(axis=1), kind="stable")[:k]]
    labels.flat[chosen] = PLANTED


# --------------------------------------------------------------------------- rendering
def _smooth(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return f / (f.std() or 1.0)


def render_case(
    params: MriCaseParams, seed: int, shape, spacing_mm, *, plant: bool = True
) -> tuple[dict[str, np.ndarray], CaseGeometry]:
    """Render the five sequences of one case.

    Parameters
    ----------
    params, seed
        The case's parameters and the demo's seed.
    shape, spacing_mm
        Voxel grid and voxel size (mm).
    plant
        False paints the planted voxels as tumour. Every random draw is the same, so the other
        four sequences are identical and ``hepatobiliary`` differs exactly on the planted region.

    Returns
    -------
    tuple[dict[str, numpy.ndarray], CaseGeometry]
        ``{sequence: (X, Y, Z) float32}`` (integer values, in :data:`SEQUENCES` order) and the
        label map.
    """
    geom = case_geometry(params, shape, spacing_mm)
    labels = geom.labels if plant else np.minimum(geom.labels, TUMOUR)
    rng = _rng(seed, _S_RENDER, params.case_index)
    texture = 1.0 + TEXTURE_SD * _smooth(rng, shape, 1.5)
    tumour_texture = np.where(geom.tumour, TUMOUR_TEXTURE_SD * _smooth(rng, shape, 1.0), 0.0)
    X, Y, Z = (g / (n * s / 2.0) for g, n, s in zip(_world_grid(shape, spacing_mm), shape, spacing_mm))
    out = {}
    for name in SEQUENCES:
        scale = SEQUENCE_SCALE[name]
        g = rng.normal(0.0, BIAS_SD, 4)
        bias = np.exp(g[0] * X + g[1] * Y + g[2] * Z + g[3] * (X * X + Y * Y - 0.5))
        signal = np.asarray(CONTRAST[name])[labels] * (texture + tumour_texture) * bias * scale
        n1 = rng.normal(0.0, NOISE_SD * scale, shape)
        n2 = rng.normal(0.0, NOISE_SD * scale, shape)
        out[name] = np.round(np.sqrt((signal + n1) ** 2 + n2**2)).astype(np.float32)
    return out, geom


def _nifti_gz(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A ``.nii.gz`` file's bytes (scanner-space qform and sform, mm; gzip mtime 0: reproducible)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=NIFTI_COMPRESSLEVEL, mtime=0)


def _write_atomic(path: Path, data: bytes) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(data)


def write_mri_case(mri_dir: str | os.PathLike, params: MriCaseParams, seed: int, shape, spacing_mm) -> int:
    """Write one case's volumes, mask and planted region (each file atomically).

    Parameters
    ----------
    mri_dir
        The cohort's ``mri`` folder; files go to ``mri_dir/<case_id>/{<sequence>,mask,planted}.nii.gz``.
    params, seed, shape, spacing_mm
        As in :func:`render_case`.

    Returns
    -------
    int
        Bytes written.
    """
    volumes, geom = render_case(params, seed, shape, spacing_mm)
    aff = ras_affine(shape, spacing_mm)
    folder = Path(mri_dir) / params.case_id
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, vol in volumes.items():
        n += _write_atomic(folder / f"{name}.nii.gz", _nifti_gz(vol, aff))
    n += _write_atomic(folder / "mask.nii.gz", _nifti_gz(geom.tumour.astype(np.uint8), aff))
    n += _write_atomic(folder / "planted.nii.gz", _nifti_gz(geom.planted.astype(np.uint8), aff))
    return n


# --------------------------------------------------------------------------- simulation
@dataclass
class MriDemoSimulation:
    """Everything of an MRI demo cohort except the written volumes, slides and bags.

    Attributes
    ----------
    table
        The MCAT-layout survival table (one row per slide).
    manifest
        The MRI manifest (one row per patient, paths relative to the cohort folder).
    truth
        One row per patient: voxel counts, ``planted_fraction`` (f), ``risky_fraction`` (r), the
        three ``component_*`` terms, ``log_risk``, the latent times and the observed survival.
    cases
        One :class:`MriCaseParams` per patient.
    layouts
        One :class:`deref.data.synthetic.SlideLayout` per slide, in table order.
    oracle_cindex
        Harrell's C of the true log-risk on the observed times and events.
    cindex
        Harrell's C of ``log_risk`` and of parts of it: ``oracle``, ``mri`` (the MRI term alone),
        ``wsi`` (the slide term alone), ``no_interaction`` (both main terms).
    """

    table: pd.DataFrame
    manifest: pd.DataFrame
    truth: pd.DataFrame
    cases: list[MriCaseParams]
    layouts: list
    cindex: dict[str, float]
    seed: int
    n_patients: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    slide_size: tuple[int, int]

    @property
    def oracle_cindex(self) -> float:
        return self.cindex["oracle"]

    @property
    def n_slides(self) -> int:
        return len(self.layouts)

    @property
    def censored_fraction(self) -> float:
        return float(self.truth["censorship"].mean())


def log_risk(planted_fraction, risky_fraction) -> np.ndarray:
    """The planted log-risk (log hazard ratio).

    Parameters
    ----------
    planted_fraction
        ``f``, planted voxels / tumour voxels, array-like ``(n,)``.
    risky_fraction
        ``r``, risky patches / patches, array-like ``(n,)``.

    Returns
    -------
    numpy.ndarray
        ``B_MRI (f - F0) + B_WSI (r - R0) + B_INT (f - F0)(r - R0)``, ``(n,)``.
    """
    f = np.asarray(planted_fraction, dtype=float) - F0
    r = np.asarray(risky_fraction, dtype=float) - R0
    return B_MRI * f + B_WSI * r + B_INT * f * r


def event_times(eta: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Invert the survival model.

    Parameters
    ----------
    eta
        Log-risks, ``(n,)``.
    e
        Unit-exponential draws, ``(n,)``: the cumulative hazard at the event.

    Returns
    -------
    numpy.ndarray
        Event times (months) ``t`` with ``HAZARD_SCALE ((t - T_LO) / (T_HI - t))^HAZARD_SHAPE
        exp(eta) = e``, in ``(T_LO, T_HI)``.
    """
    z = (np.asarray(e, float) * np.exp(-np.asarray(eta, float)) / HAZARD_SCALE) ** (1.0 / HAZARD_SHAPE)
    return (T_LO + T_HI * z) / (1.0 + z)


def _simulate_survival(eta: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Event times from the model; exactly ``round(CENSORED_SHARE * n)`` patients, drawn
    independently of the risk, are lost to follow-up at a uniform time before their event."""
    n = len(eta)
    rng = _rng(seed, _S_SURVIVAL)
    t_event = event_times(eta, rng.exponential(1.0, n))
    k = int(math.floor(CENSORED_SHARE * n + 0.5))
    censored = np.zeros(n, dtype=bool)
    censored[rng.permutation(n)[:k]] = True
    t_cens = np.where(censored, T_LO + rng.uniform(0.1, 0.9, n) * (t_event - T_LO), np.inf)
    return {
        "event_time": t_event,
        "censoring_time": t_cens,
        "survival_months": np.round(np.minimum(t_event, t_cens), 2),
        "censorship": censored.astype(np.int64),
    }


def _harrell(time, censorship, risk) -> float:
    from deref.metrics import harrell_c  # scikit-survival: not for the rendering workers

    try:
        return harrell_c(time, 1 - np.asarray(censorship, dtype=np.int64), risk).cindex
    except DataError:
        return float("nan")


def _slide_layouts(case_ids: list[str], seed: int, size: tuple[int, int]) -> tuple[list, np.ndarray]:
    """One slide layout per slide (a patient's slides together) and the patients' slide counts."""
    n = len(case_ids)
    crng = _rng(seed, _S_FRACTION)
    n_slides = np.where(crng.random(n) < TWO_SLIDE_PROB, 2, 1)
    first = crng.beta(*FRACTION_BETA, size=n)
    second = np.clip(first + crng.normal(0, SECOND_SLIDE_SD, n), 0.0, 1.0)
    sseed = slide_seed(seed)
    layouts = []
    for i, case in enumerate(case_ids):
        for j in range(int(n_slides[i])):
            frac = first[i] if j == 0 else second[i]
            layouts.append(wsi._layout_slide(sseed, i, j, f"{case}-{j + 1:02d}.svs", size, frac))
    return layouts, n_slides


def _truth_frame(cases, geoms, layouts, n_slides, seed) -> pd.DataFrame:
    n = len(cases)
    n_patch = np.zeros(n, dtype=np.int64)
    n_risky = np.zeros(n, dtype=np.int64)
    for lay in layouts:
        n_patch[lay.case_index] += lay.n_patches
        n_risky[lay.case_index] += lay.n_risky
    if (n_patch == 0).any():
        raise DataError("MRI demo: a slide has no tissue patch; use a larger slide_size")
    r = n_risky / n_patch
    tumour = np.array([int(g.tumour.sum()) for g in geoms], dtype=np.int64)
    planted = np.array([int(g.planted.sum()) for g in geoms], dtype=np.int64)
    f = planted / tumour
    eta = log_risk(f, r)
    return pd.DataFrame(
        {
            "case_id": [c.case_id for c in cases],
            "n_slides": n_slides.astype(np.int64),
            "n_patches": n_patch,
            "n_risky_patches": n_risky,
            "risky_fraction": r,
            "tumour_voxels": tumour,
            "planted_voxels": planted,
            "planted_fraction": f,
            "component_mri": B_MRI * (f - F0),
            "component_wsi": B_WSI * (r - R0),
            "component_interaction": B_INT * (f - F0) * (r - R0),
            "log_risk": eta,
            **_simulate_survival(eta, seed),
        }
    )


def _tables(cases, truth: pd.DataFrame, layouts, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(cases)
    rng = _rng(seed, _S_CLINICAL)
    age = np.clip(np.round(rng.normal(57, 11, n)), 25, 88).astype(np.int64)
    is_female = (rng.random(n) < 0.18).astype(np.int64)
    per_patient = pd.DataFrame(
        {
            "case_id": truth["case_id"],
            "survival_months": truth["survival_months"],
            "censorship": truth["censorship"],
            "age": age,
            "is_female": is_female,
        }
    )
    table = per_patient.iloc[[lay.case_index for lay in layouts]].reset_index(drop=True)
    table.insert(1, "slide_id", [lay.slide_id for lay in layouts])
    manifest = pd.DataFrame({"case_id": [c.case_id for c in cases]})
    for name in (*SEQUENCES, "mask"):
        manifest[name] = [f"mri/{c.case_id}/{name}.nii.gz" for c in cases]
    return table, manifest


def simulate_mri_demo(
    n_patients: int = 160,
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    slide_size: tuple[int, int] = SLIDE_SIZE,
) -> MriDemoSimulation:
    """Simulate the MRI demo's tables, volume parameters, slide layouts and C-indices (no files).

    Parameters
    ----------
    n_patients, seed
        Cohort size (2..9999) and seed (0..2**32-1).
    shape, spacing_mm
        Voxel grid of the volumes: ``f`` is counted on it.
    slide_size
        Level-0 ``(width, height)`` of the slides in px (multiples of 256, at least 1024).

    Returns
    -------
    MriDemoSimulation
        The same tables and truth :func:`make_mri_demo_cohort` writes for these arguments.

    Raises
    ------
    ConfigError
        A bad argument (named in the message).
    """
    n, seed, shape, spacing, size = _check_args(n_patients, seed, shape, spacing_mm, slide_size)
    cases = [case_params(seed, i) for i in range(n)]
    geoms = [case_geometry(c, shape, spacing) for c in cases]
    layouts, n_slides = _slide_layouts([c.case_id for c in cases], seed, size)
    truth = _truth_frame(cases, geoms, layouts, n_slides, seed)
    table, manifest = _tables(cases, truth, layouts, seed)
    t, cens = truth["survival_months"], truth["censorship"]
    cindex = {
        "oracle": _harrell(t, cens, truth["log_risk"]),
        "mri": _harrell(t, cens, truth["component_mri"]),
        "wsi": _harrell(t, cens, truth["component_wsi"]),
        "no_interaction": _harrell(t, cens, truth["component_mri"] + truth["component_wsi"]),
    }
    return MriDemoSimulation(
        table=table,
        manifest=manifest,
        truth=truth,
        cases=cases,
        layouts=layouts,
        cindex=cindex,
        seed=seed,
        n_patients=n,
        shape=shape,
        spacing_mm=spacing,
        slide_size=size,
    )


# --------------------------------------------------------------------------- workers
#: State of a rendering worker process (set once by the pool initializer).
_WORKER: dict = {}


def _init_worker(seed: int, wsi_dim: int, out: str, shape, spacing) -> None:
    sseed = slide_seed(seed)
    _WORKER.update(
        seed=seed, sseed=sseed, wsi_dim=wsi_dim, out=Path(out), shape=shape, spacing=spacing, library=None
    )


def _run_task(task) -> int:
    """One unit of work: ``("mri", MriCaseParams)`` or ``("slide", SlideLayout)``; bytes written."""
    w = _WORKER
    kind, item = task
    if kind == "mri":
        return write_mri_case(w["out"] / "mri", item, w["seed"], w["shape"], w["spacing"])
    if w["library"] is None:  # built on the first slide: a worker that only writes volumes skips it
        w["library"] = wsi.texture_library(w["sseed"])
    return wsi.write_slide_and_bag(
        item, w["sseed"], w["wsi_dim"], w["out"] / "slides", w["out"] / "bags", w["library"]
    )


def _render_all(sim: MriDemoSimulation, wsi_dim: int, out: Path, workers: int, progress) -> None:
    """Write every volume set, slide and bag, in this process or in ``workers`` processes."""
    tasks = [("slide", lay) for lay in sim.layouts] + [("mri", c) for c in sim.cases]
    total, done = len(tasks), 0
    if progress is not None:
        progress(0, total)
    initargs = (sim.seed, wsi_dim, str(out), sim.shape, sim.spacing_mm)
    if workers == 1:
        saved = dict(_WORKER)
        try:
            _init_worker(*initargs)
            for task in tasks:
                _run_task(task)
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            _WORKER.clear()
            _WORKER.update(saved)
        return
    counter = iter(range(1, total + 1))

    def tick() -> None:
        n = next(counter)
        if progress is not None:
            progress(n, total)

    with wsi.render_pool(min(workers, total), _init_worker, initargs) as pool:
        wsi.run_in_pool(pool, _run_task, tasks, tick)


# --------------------------------------------------------------------------- the cohort
@dataclass
class MriDemoCohort:
    """Paths and facts of a written MRI demo cohort."""

    out_dir: Path
    table: Path
    manifest: Path
    mri_dir: Path
    slides_dir: Path
    bags_dir: Path
    truth: Path
    meta: Path
    n_patients: int
    n_slides: int
    cindex: dict[str, float]
    censored_fraction: float
    wsi_dim: int
    seed: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    @property
    def oracle_cindex(self) -> float:
        return self.cindex["oracle"]


_TABLES = ("cohort.csv", MANIFEST_NAME, "truth.csv")
_MRI_FILES = {f"{n}.nii.gz" for n in (*SEQUENCES, "mask", "planted")}


def _existing_files(out: Path) -> list[Path]:
    """Files in ``out`` that this generator (or the genomic demo) writes."""
    found = [out / n for n in ("demo.json", *_TABLES, "signatures.csv") if (out / n).exists()]
    for sub, suffix in (("slides", ".svs"), ("bags", ".h5")):
        d = out / sub
        if d.is_dir():
            found += [p for p in sorted(d.iterdir()) if p.suffix == suffix and _STEM_RE.match(p.stem)]
            found += [p for p in sorted(d.iterdir()) if p.suffix == suffix and wsi._STEM_RE.match(p.stem)]
    mri = out / "mri"
    if mri.is_dir():
        for d in sorted(p for p in mri.iterdir() if p.is_dir() and _CASE_RE.match(p.name)):
            found += [p for p in sorted(d.iterdir()) if p.name in _MRI_FILES]
    return found


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    existing = _existing_files(out)
    if existing and not overwrite:
        raise DataError(
            f"{out}: already holds a demo cohort ({existing[0].relative_to(out)} and {len(existing) - 1} more "
            "file(s)); pass overwrite=True to replace it, or choose another folder"
        )
    for p in existing:  # demo.json first: an interrupted overwrite is never taken for complete
        p.unlink()
    for sub in ("slides", "bags", "mri"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def make_mri_demo_cohort(
    out_dir: str | os.PathLike,
    n_patients: int = 160,
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing_mm: tuple[float, float, float] = DEFAULT_SPACING_MM,
    slide_size: tuple[int, int] = SLIDE_SIZE,
    wsi_dim: int = 64,
    workers: int = 2,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> MriDemoCohort:
    """Write the MRI + WSI demo cohort under ``out_dir`` (layout in the module notes).

    Parameters
    ----------
    out_dir
        Output folder (created). Files of an earlier demo there are an error unless
        ``overwrite``; then only those files are replaced.
    n_patients, seed, shape, spacing_mm, slide_size
        As in :func:`simulate_mri_demo`. Everything written is a deterministic function of these
        and ``wsi_dim``, whatever ``workers`` is.
    wsi_dim
        Width of the patch embeddings in the bags (>= 2).
    workers
        Processes writing volumes and slides (1 = in this process).
    overwrite
        Replace an earlier demo's files in ``out_dir``.
    progress
        Called as ``progress(done, total)`` after each slide or patient volume set (and once with 0).

    Returns
    -------
    MriDemoCohort

    Raises
    ------
    ConfigError
        A bad argument (named in the message).
    DataError
        ``out_dir`` already holds a demo and ``overwrite`` is false.
    """
    if not _is_int(wsi_dim) or wsi_dim < 2:
        raise ConfigError(f"MRI demo: wsi_dim must be an integer >= 2, got {wsi_dim!r}")
    if not _is_int(workers) or workers < 1:
        raise ConfigError(f"MRI demo: workers must be an integer >= 1, got {workers!r}")
    sim = simulate_mri_demo(n_patients, seed, shape=shape, spacing_mm=spacing_mm, slide_size=slide_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _prepare_out_dir(out, overwrite)
    _render_all(sim, int(wsi_dim), out, int(workers), progress)
    table, manifest, truth = (out / name for name in _TABLES)
    sim.table.to_csv(table, index=False)
    sim.manifest.to_csv(manifest, index=False)
    sim.truth.to_csv(truth, index=False)
    meta = out / "demo.json"
    meta.write_text(json.dumps(_demo_meta(sim, int(wsi_dim)), indent=2) + "\n")
    return MriDemoCohort(
        out_dir=out,
        table=table,
        manifest=manifest,
        mri_dir=out / "mri",
        slides_dir=out / "slides",
        bags_dir=out / "bags",
        truth=truth,
        meta=meta,
        n_patients=sim.n_patients,
        n_slides=sim.n_slides,
        cindex=dict(sim.cindex),
        censored_fraction=sim.censored_fraction,
        wsi_dim=int(wsi_dim),
        seed=sim.seed,
        shape=sim.shape,
        spacing_mm=sim.spacing_mm,
    )


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _demo_meta(sim: MriDemoSimulation, wsi_dim: int) -> dict:
    """The content of ``demo.json``."""
    t = sim.truth
    return {
        "generator": "deref.data.synthetic_mri",
        "version": MRI_DEMO_VERSION,
        "slide_generator_version": wsi.DEMO_VERSION,
        "pair": "mri-wsi",
        "seed": sim.seed,
        "slide_seed": slide_seed(sim.seed),
        "n_patients": sim.n_patients,
        "n_slides": sim.n_slides,
        "n_patches": int(t["n_patches"].sum()),
        "wsi_dim": wsi_dim,
        "slide_size": list(sim.slide_size),
        "shape": list(sim.shape),
        "spacing_mm": list(sim.spacing_mm),
        "sequences": list(SEQUENCES),
        "planted_sequence": PLANTED_SEQUENCE,
        "planted_region": "superior half of the tumour (voxels above the mask's centroid); mri/<case>/planted.nii.gz",
        "oracle_cindex": _finite(sim.cindex["oracle"]),
        "cindex": {k: _finite(v) for k, v in sim.cindex.items()},
        "censored_fraction": sim.censored_fraction,
        "survival_months": {
            "min": float(t["survival_months"].min()),
            "median": float(t["survival_months"].median()),
            "max": float(t["survival_months"].max()),
        },
        "log_risk": (
            f"{B_MRI} * (f - {F0:.4f}) + {B_WSI} * (r - {R0}) + {B_INT} * (f - {F0:.4f}) * (r - {R0}); "
            f"f = planted voxels / tumour voxels ({PLANTED_SEQUENCE} only), "
            "r = fraction of the patient's patches with phenotype 1"
        ),
        "coefficients": {"mri": B_MRI, "wsi": B_WSI, "interaction": B_INT, "f0": F0, "r0": R0},
        "survival": {
            "model": "proportional hazards, L(t) = scale * ((t - t_lo) / (t_hi - t)) ** shape",
            "shape": HAZARD_SHAPE,
            "scale": HAZARD_SCALE,
            "t_lo_months": T_LO,
            "t_hi_months": T_HI,
            "censored_share": CENSORED_SHARE,
        },
        "documentation": "assets/DEMO_MRI.md",
    }


__all__ = [
    "CONTRAST",
    "CaseGeometry",
    "MriCaseParams",
    "MriDemoCohort",
    "MriDemoSimulation",
    "PLANTED_SEQUENCE",
    "SEQUENCES",
    "case_geometry",
    "case_params",
    "event_times",
    "log_risk",
    "make_mri_demo_cohort",
    "ras_affine",
    "render_case",
    "simulate_mri_demo",
    "slide_seed",
    "write_mri_case",
]
