"""MRI volumes to one feature vector per patient (modality 1 of the MRI variant of DeReF).

For each patient, :func:`preprocess_case` turns one or more NIfTI sequences or DICOM series
folders (:mod:`deref.prepare.dicom`; orientation and spacing always from the headers), and an
optional tumour mask, into a ``(C, G, G, G)`` float32 array:

1. **Grids.** The sequences must be **co-registered by the user** (one world space; this
   module does not register images). The mask's voxel grid is the reference (the first
   sequence's without a mask). A sequence on another grid (shape, or affine beyond
   ``affine_atol`` mm) is resampled onto it in world coordinates (trilinear, anti-aliased
   when coarsening); the mask is never resampled. The names are recorded in
   ``MriVolume.notes`` and the bag attribute ``resampled_sequences``. A sequence whose field
   of view does not cover the mask's bounding box (or the whole reference volume without a
   mask) is a :class:`DataError` naming patient, sequence and file, as is a mask lying outside
   the volume, an empty mask, a 2-D image, NaN voxels inside the crop (NaN outside it
   becomes 0 and is counted in the notes) and a DICOM folder holding several series.
2. **Orientation.** Volumes are reoriented to canonical RAS (``nibabel.as_closest_canonical``).
3. **Crop.** A cube around the mask's bounding box (its longest side in millimetres plus
   ``margin_mm`` on each side; the whole volume without a mask), so the tumour keeps its
   shape and aspect ratio. Parts of the cube outside the volume are filled with 0 after
   normalization.
4. **Resample.** The cube is sampled on a ``G x G x G`` grid (trilinear, after a Gaussian
   anti-aliasing filter when the cube is downsampled). The default G = 64 keeps a CPU run of
   the 3D ResNet-50 under a second per patient; ``--grid 96`` or ``128`` resolves more detail
   at 3.4x or 8x the cost.
5. **Intensity.** Per sequence, values are clipped to the 0.5-99.5th percentiles of the voxels
   inside the mask (inside the volume without a mask), then z-scored with their mean and
   standard deviation (``norm="minmax"`` scales to [0, 1] instead, ``"none"`` leaves them).

:func:`build_mri_backbone` gives a MONAI 3D ResNet-50 with global average pooling (2048-d).
Sequences enter as channels (one vector per patient, ``features`` (1, 2048)), or with
``per_sequence`` one at a time through a one-channel network (``features`` (S, 2048), one
row per sequence, for a model with one modality-1 token per sequence). Each patient's bag is
``<out>/<patient>.h5``, written atomically with :func:`deref.data.bags.write_bag_h5`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deref.errors import DataError, one_line
from deref.prepare import ManifestRow

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MANIFEST_NAME = "mri_manifest.csv"
MRI_FEATURE_DIM = 2048
#: ``attrs["content"]`` of a file ``deref mri`` writes: per-sequence vectors, or ROI cubes.
VECTORS, CUBES = "vectors", "cubes"


@dataclass(frozen=True)
class MriConfig:
    """Preprocessing and network settings (see the module docstring)."""

    grid: int = 64
    margin_mm: float = 10.0
    norm: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    per_sequence: bool = False
    affine_atol: float = 1e-3
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.grid < 16:
            raise DataError(f"grid must be >= 16 voxels (the network downsamples 32x), got {self.grid}")
        if self.margin_mm < 0:
            raise DataError(f"margin must be >= 0 mm, got {self.margin_mm}")
        if self.norm not in ("zscore", "minmax", "none"):
            raise DataError(f"normalization {self.norm!r}: expected zscore, minmax or none")

    def to_json(self) -> str:
        """The settings a feature file records (``attrs["preprocess"]``); run-time switches
        (``overwrite``, ``device``) are left out."""
        return json.dumps(asdict(self) | {"overwrite": None, "device": None})

    @classmethod
    def from_json(cls, text: str | bytes, **changes) -> MriConfig:
        """The settings a feature file was made with (:meth:`to_json`), optionally changed."""
        raw = json.loads(text.decode() if isinstance(text, bytes) else text)
        cfg = {k: v for k, v in raw.items() if v is not None}
        if "clip_percentiles" in cfg:
            cfg["clip_percentiles"] = tuple(cfg["clip_percentiles"])
        return cls(**(cfg | changes))


@dataclass
class MriCase:
    """One patient: sequence name -> NIfTI file or DICOM series folder (the channel order), an
    optional mask; ``problems`` (e.g. an empty case-table cell) fail the patient when processed."""

    patient: str
    sequences: dict[str, Path]
    mask: Path | None = None
    problems: list[str] = field(default_factory=list)


def nifti_stem(path: str | os.PathLike) -> str:
    """The name of a NIfTI file without ``.nii``/``.nii.gz`` (a DICOM folder's name as is)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if Path(path).is_dir() else Path(name).stem


def _load(path: Path, what: str):
    """A 3-D image from a NIfTI file or a DICOM series folder; errors name ``what`` and ``path``."""
    import nibabel as nib

    from deref.prepare.dicom import is_dicom_series, read_dicom_series

    if is_dicom_series(path):
        img = read_dicom_series(path, what)
    elif not path.is_file():
        raise DataError(f"{what} {path}: file not found")
    else:
        try:
            img = nib.load(str(path))
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types
            raise DataError(f"{what} {path}: not a readable NIfTI file: {one_line(exc)}") from exc
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = shape[:3]
    if len(shape) == 2 or (len(shape) == 3 and min(shape) == 1):
        raise DataError(f"{what} {path}: a 2-D image of shape {shape}; expected a 3-D volume")
    if len(shape) != 3:
        raise DataError(f"{what} {path}: expected a 3-D volume, got shape {shape}")
    aff = np.asarray(img.affine, np.float64)
    if not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise DataError(f"{what} {path}: its affine is singular or not finite; cannot place it in the world")
    return img


def _same_grid(a, b, atol: float) -> bool:
    return (
        tuple(a.shape) == tuple(b.shape)
        and float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max()) <= atol
    )


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of the box ``lo``..``hi``."""
    return np.array(
        [[(lo, hi)[b][i] for i, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], np.float64
    )


def _to_voxels(img, world: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.affines.apply_affine(np.linalg.inv(np.asarray(img.affine, np.float64)), world)


def _check_covers(img, box_world: np.ndarray, what: str, path: Path, ref_what: str) -> None:
    """``img``'s field of view (voxel centres +-0.5 voxel) must hold the box ``box_world`` (8, 3)."""
    vox = _to_voxels(img, box_world)
    lo, hi = vox.min(axis=0), vox.max(axis=0)
    extent = np.asarray(img.shape[:3], np.float64) - 0.5
    tol = 1e-3
    if np.any(hi < -0.5 - tol) or np.any(lo > extent + tol):
        raise DataError(
            f"{what} {path}: {ref_what} lies outside the volume (no overlap in world coordinates); "
            "the sequences and the mask must be co-registered"
        )
    if np.any(lo < -0.5 - tol) or np.any(hi > extent + tol):
        raise DataError(
            f"{what} {path}: field of view does not cover {ref_what} (voxel box {np.round(lo, 1).tolist()}.."
            f"{np.round(hi, 1).tolist()} of a {list(img.shape[:3])} volume); cannot resample it onto that grid"
        )


def _resample_onto(data: np.ndarray, src_affine: np.ndarray, ref) -> np.ndarray:
    """``data`` (on ``src_affine``) resampled onto ``ref``'s grid in world coordinates: trilinear,
    Gaussian anti-aliasing along source axes the target grid is coarser on; NaN outside
    (the volume's extent is its voxel centres +-1 voxel, edge values)."""
    from scipy import ndimage as ndi

    m = np.linalg.inv(np.asarray(src_affine, np.float64)) @ np.asarray(ref.affine, np.float64)
    step = np.abs(m[:3, :3]).max(axis=1)  # target step in source voxels, per source axis
    sigma = np.maximum(0.0, (step - 1.0) / 2.0)
    src = data.astype(np.float32)
    if np.any(sigma > 0):
        src = ndi.gaussian_filter(src, sigma, mode="nearest")
    src = np.pad(src, 1, mode="edge")
    return ndi.affine_transform(
        src, m[:3, :3], offset=m[:3, 3] + 1.0, output_shape=tuple(ref.shape[:3]), order=1, cval=np.nan
    ).astype(np.float32)


def _finite_data(img, crop_world: np.ndarray, what: str, path: Path, notes: dict, name: str) -> np.ndarray:
    """The voxels of ``img`` (float32); NaN/inf inside the crop's footprint is an error, outside
    it they become 0 (counted in ``notes['nonfinite_outside_crop']``)."""
    data = np.asarray(img.get_fdata(dtype=np.float32))
    bad = ~np.isfinite(data)
    if not bad.any():
        return data
    vox = _to_voxels(img, crop_world)
    lo = np.maximum(0, np.floor(vox.min(axis=0)).astype(int) - 1)
    hi = np.minimum(np.asarray(data.shape), np.ceil(vox.max(axis=0)).astype(int) + 2)
    inside = int(bad[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].sum())
    if inside:
        raise DataError(
            f"{what} {path}: {inside} NaN/infinite voxel(s) inside the crop "
            f"({int(bad.sum())} in the volume); expected finite intensities"
        )
    log.warning("%s %s: %d NaN/infinite voxel(s) outside the crop set to 0", what, path, int(bad.sum()))
    notes.setdefault("nonfinite_outside_crop", {})[name] = int(bad.sum())
    return np.where(bad, np.float32(0), data)


def _smooth(x: np.ndarray, sigma: list[float]) -> np.ndarray:
    """Gaussian filter; NaN voxels (outside a resampled field of view) are left out of their
    neighbours' averages (normalized convolution) instead of spreading into them."""
    from scipy import ndimage as ndi

    valid = np.isfinite(x)
    if valid.all():
        return ndi.gaussian_filter(x, sigma, mode="nearest")
    num = ndi.gaussian_filter(np.where(valid, x, 0.0).astype(np.float32), sigma, mode="nearest")
    den = ndi.gaussian_filter(valid.astype(np.float32), sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, num / den, np.nan).astype(np.float32)


def _sample_cube(
    data: np.ndarray, center: np.ndarray, side_mm: float, zooms: np.ndarray, grid: int, order: int = 1
) -> np.ndarray:
    """Sample ``data`` (voxel array, spacing ``zooms`` mm) on a ``grid``^3 cube of side
    ``side_mm`` centred on voxel coordinate ``center``; NaN outside the volume."""
    from scipy import ndimage as ndi

    step_mm = side_mm / grid
    offsets = (np.arange(grid) - (grid - 1) / 2.0) * step_mm
    axes = [center[i] + offsets / zooms[i] for i in range(3)]
    lo = [max(0, int(np.floor(a.min())) - 4) for a in axes]
    hi = [min(data.shape[i], int(np.ceil(axes[i].max())) + 5) for i in range(3)]
    if any(h <= low for low, h in zip(lo, hi)):
        return np.full((grid,) * 3, np.nan, np.float32)
    sub = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
    if order > 0:
        sigma = [max(0.0, (step_mm / zooms[i] - 1.0) / 2.0) for i in range(3)]
        if any(s > 0 for s in sigma):
            sub = _smooth(sub, sigma)
    coords = np.meshgrid(*[a - lo[i] for i, a in enumerate(axes)], indexing="ij")
    return ndi.map_coordinates(sub, coords, order=order, mode="constant", cval=np.nan).astype(np.float32)


def _normalize(x: np.ndarray, inside: np.ndarray, config: MriConfig) -> np.ndarray:
    valid = inside & np.isfinite(x)
    if config.norm != "none" and valid.any():
        vals = x[valid]
        lo, hi = np.percentile(vals, config.clip_percentiles)
        x = np.clip(x, lo, hi)
        vals = np.clip(vals, lo, hi)
        if config.norm == "zscore":
            x = (x - vals.mean()) / max(float(vals.std()), 1e-6)
        else:
            x = (x - lo) / max(float(hi - lo), 1e-6)
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


@dataclass
class MriVolume:
    """Preprocessed channels (C, G, G, G) of one patient and how they were made; ``inside``
    (G, G, G) marks the voxels the intensities were normalized over (mask, or volume).
    ``notes`` holds ``side_mm``, ``source_spacing_mm``, ``grid_of`` (the reference grid: the
    mask, else the first sequence) and ``resampled_sequences`` (those moved onto it)."""

    data: np.ndarray
    inside: np.ndarray
    sequences: list[str]
    spacing_mm: float
    center_ras_mm: np.ndarray
    mask_voxels: int
    notes: dict = field(default_factory=dict)


@dataclass
class _Crop:
    """The reference grid (canonical RAS) and the cube around the mask on it."""

    canon: object
    mask: np.ndarray | None
    center: np.ndarray
    side: float
    zooms: np.ndarray
    box_world: np.ndarray  # (8, 3) corners of the mask's bounding box (the whole volume without one)
    crop_world: np.ndarray  # (8, 3) corners of the cube


def _crop(ref, mask_img, case: MriCase, config: MriConfig) -> _Crop:
    import nibabel as nib

    canon = nib.as_closest_canonical(ref)
    zooms = np.asarray(canon.header.get_zooms()[:3], np.float64)
    shape = np.asarray(canon.shape[:3])
    mask, lo, hi = None, np.zeros(3), (shape - 1).astype(np.float64)
    if mask_img is not None:
        mask = np.asarray(canon.dataobj) > 0
        if not mask.any():
            raise DataError(f"patient {case.patient} mask {case.mask}: empty (no voxel > 0)")
        idx = np.argwhere(mask)
        lo, hi = idx.min(axis=0).astype(np.float64), idx.max(axis=0).astype(np.float64)
    center = (lo + hi) / 2.0
    side = float(((hi - lo + 1) * zooms).max() + 2 * config.margin_mm)
    half = side / 2.0 / zooms
    aff = np.asarray(canon.affine, np.float64)
    return _Crop(
        canon=canon,
        mask=mask,
        center=center,
        side=side,
        zooms=zooms,
        box_world=nib.affines.apply_affine(aff, _corners(lo, hi)),
        crop_world=nib.affines.apply_affine(aff, _corners(center - half, center + half)),
    )


def preprocess_case(case: MriCase, config: MriConfig | None = None) -> MriVolume:
    """Load, check, resample onto the mask's grid, reorient, crop and normalize ``case``.

    Parameters
    ----------
    case
        The patient's sequences (NIfTI files or DICOM series folders), co-registered by the
        user, and an optional tumour mask.
    config
        Preprocessing settings (:class:`MriConfig`).

    Returns
    -------
    MriVolume
        ``data`` (C, G, G, G) float32, one channel per sequence.

    Raises
    ------
    DataError
        One line naming the patient, the sequence (or mask) and the file: a missing or
        unreadable file, a 2-D image, a DICOM folder of several series, an empty mask, a
        sequence whose field of view misses the mask's box, NaN voxels inside the crop.
    """
    import nibabel as nib

    config = config or MriConfig()
    if case.problems:
        raise DataError("; ".join(case.problems))
    if not case.sequences:
        raise DataError(f"patient {case.patient}: no MRI sequence given")
    whats = {n: f"patient {case.patient} sequence {n!r}" for n in case.sequences}
    imgs = {n: _load(Path(p), whats[n]) for n, p in case.sequences.items()}
    mask_img = _load(Path(case.mask), f"patient {case.patient} mask") if case.mask is not None else None
    first = next(iter(case.sequences))
    ref = mask_img if mask_img is not None else imgs[first]
    ref_what = (
        f"the mask's bounding box (mask {case.mask})"
        if mask_img is not None
        else f"the volume of sequence {first!r} ({case.sequences[first]}, the reference grid)"
    )
    crop = _crop(ref, mask_img, case, config)
    notes: dict = {"side_mm": crop.side, "source_spacing_mm": crop.zooms.tolist()}
    notes["grid_of"] = "mask" if mask_img is not None else f"sequence {first}"
    resampled = []
    inside = _inside(crop, config)
    channels = []
    for name, img in imgs.items():
        path = Path(case.sequences[name])
        data = _finite_data(img, crop.crop_world, whats[name], path, notes, name)
        if not _same_grid(img, ref, config.affine_atol):
            _check_covers(img, crop.box_world, whats[name], path, ref_what)
            data = _resample_onto(data, img.affine, ref)
            resampled.append(name)
            log.info("%s %s: resampled onto the grid of %s", whats[name], path, notes["grid_of"])
        vol = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(data, ref.affine)).dataobj)
        cube = _sample_cube(vol, crop.center, crop.side, crop.zooms, config.grid)
        channels.append(_normalize(cube, inside, config))
    notes["resampled_sequences"] = resampled
    return MriVolume(
        data=np.stack(channels),
        inside=inside,
        sequences=list(case.sequences),
        spacing_mm=crop.side / config.grid,
        center_ras_mm=np.asarray(nib.affines.apply_affine(crop.canon.affine, crop.center), np.float64),
        mask_voxels=int(crop.mask.sum()) if crop.mask is not None else 0,
        notes=notes,
    )


def _inside(crop: _Crop, config: MriConfig) -> np.ndarray:
    """(G, G, G) bool: the cube voxels intensities are normalized over (mask, or volume)."""
    if crop.mask is not None:
        cube = _sample_cube(crop.mask.astype(np.float32), crop.center, crop.side, crop.zooms, config.grid)
        return cube > 0.5
    ones = np.ones(tuple(crop.canon.shape[:3]), np.float32)
    return np.isfinite(_sample_cube(ones, crop.center, crop.side, crop.zooms, config.grid, order=0))


# ----------------------------------------------------------------------------- network
def build_mri_backbone(
    in_channels: int, weights: str | os.PathLike | None = None, *, random_weights: bool = False
):
    """A MONAI 3D ResNet-50 (7^3 stride-2 stem, projection shortcuts without bias, no fc)
    with global average pooling: (B, C, G, G, G) -> (B, 2048), in eval mode.

    ``weights``: a local state dict in that layout (e.g. MedicalNet's ResNet-50 converted to
    MONAI names), loaded strictly (``fc.*``/``conv_seg.*`` head keys are ignored). A
    one-channel stem is repeated over ``in_channels`` (divided by their number). Without
    weights, ``random_weights=True`` is required (seeded init, logged warning).
    """
    import torch

    from deref.fileio import file_sha256
    from deref.prepare.backbones import (
        RANDOM_WEIGHTS_SEED,
        ResNetTrunk,
        load_strict,
        read_state_dict,
        torchvision_resnet,
    )

    if weights is None and not random_weights:
        raise DataError(
            "the 3D ResNet-50 needs pretrained weights: pass --weights FILE (a MONAI-layout 3D "
            "ResNet-50 state dict, e.g. MedicalNet's); --random-weights runs without them for smoke tests only"
        )
    if weights is not None and random_weights:
        raise DataError("pass either --weights or --random-weights, not both")
    if weights is not None:
        net = torchvision_resnet(50, num_classes=None, spatial_dims=3, in_channels=in_channels)
        sd = {k: v for k, v in read_state_dict(weights).items() if not k.startswith(("fc.", "conv_seg."))}
        w = sd.get("conv1.weight")
        if w is not None and w.ndim == 5 and w.shape[1] == 1 and in_channels > 1:
            log.info("3D weights have a one-channel stem: repeated over %d sequences", in_channels)
            sd["conv1.weight"] = w.repeat(1, in_channels, 1, 1, 1) / in_channels
        load_strict(net, sd, str(weights))
        prov = {
            "weights_file": str(Path(weights).resolve()),
            "weights_sha256": file_sha256(weights),
            "unusable_for_science": False,
        }
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            net = torchvision_resnet(50, num_classes=None, spatial_dims=3, in_channels=in_channels)
        log.warning(
            "3D ResNet-50 has RANDOM weights: MRI vectors are unusable for science; outputs are "
            "marked unusable_for_science=True"
        )
        prov = {"weights_file": "none (random weights)", "weights_sha256": "", "unusable_for_science": True}
    model = ResNetTrunk(net, 4).eval()
    model.provenance = {"backbone": "resnet50_3d", "feature_dim": MRI_FEATURE_DIM, **prov}
    return model


def mri_features(volume: MriVolume, model, config: MriConfig, device=None) -> np.ndarray:
    """Features of one patient: (1, 2048) with sequences as channels, or (S, 2048) per sequence."""
    import torch

    from deref.prepare.extract import resolve_device

    device = device or resolve_device(config.device)
    x = torch.from_numpy(volume.data)
    batch = x[:, None] if config.per_sequence else x[None]
    with torch.inference_mode():
        return model(batch.to(device)).float().cpu().numpy()


# ------------------------------------------------------------------------------ inputs
ID_COLUMNS = ("patient", "patient_id", "case_id")


def _table_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"case table {path}: {one_line(exc)}") from exc
    if not rows:
        raise DataError(f"case table {path}: no rows (expected a header and one row per patient)")
    return rows


def cases_from_table(path: str | os.PathLike, sequences: Sequence[str] | None = None) -> list[MriCase]:
    """Cases from the MRI manifest of a cohort: one row per patient, one column per sequence.

    Parameters
    ----------
    path
        A CSV with a ``patient`` (or ``patient_id`` / ``case_id``) column, an optional
        ``mask`` column and one column per sequence. Cells are NIfTI files or DICOM series
        folders, relative to the CSV's folder unless absolute; an empty mask cell means no mask.
    sequences
        The sequence columns in channel order (default: every other column, in table order).

    Returns
    -------
    list of MriCase
        One per row. An empty sequence cell does not stop the table: that patient's case
        carries the problem (file, line, patient, column) and fails when processed.

    Raises
    ------
    DataError
        An unreadable table, no patient column, a missing sequence column, an empty patient cell.
    """
    path = Path(path)
    rows = _table_rows(path)
    cols = list(rows[0])
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    if id_col is None:
        raise DataError(
            f"case table {path}, line 1: no patient column; expected one of {', '.join(ID_COLUMNS)}; got {cols}"
        )
    seq_cols = list(sequences) if sequences else [c for c in cols if c not in (id_col, "mask")]
    missing = [c for c in seq_cols if c not in cols]
    if missing:
        raise DataError(f"case table {path}, line 1: no column(s) {missing} (columns: {cols})")
    if not seq_cols:
        raise DataError(f"case table {path}, line 1: no sequence column besides {id_col!r} and 'mask'")

    def resolve(v: str) -> Path:
        p = Path(v)
        return p if p.is_absolute() else path.parent / p

    cases = []
    for i, r in enumerate(rows, start=2):
        pid = (r.get(id_col) or "").strip()
        if not pid:
            raise DataError(f"case table {path}, line {i}, column {id_col!r}: empty patient id")
        problems = [
            f"patient {pid} sequence {c!r}: no file (case table {path}, line {i}, column {c!r} is empty)"
            for c in seq_cols
            if not (r.get(c) or "").strip()
        ]
        seqs = {c: resolve(r[c].strip()) for c in seq_cols if (r.get(c) or "").strip()}
        mask = (r.get("mask") or "").strip()
        cases.append(MriCase(pid, seqs, resolve(mask) if mask else None, problems))
    return cases


def _volumes_of(folder: Path) -> dict[str, Path]:
    """NIfTI files (by stem) and DICOM series sub-folders (by name) of a patient folder."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir() or f.name.lower().endswith(NIFTI_SUFFIXES):
            name = nifti_stem(f)
            if name in found:
                raise DataError(f"{folder}: {found[name].name} and {f.name} both name sequence {name!r}")
            found[name] = f
    return found


def cases_from_folders(
    root: str | os.PathLike, sequences: Sequence[str] | None = None, mask_name: str = "mask"
) -> list[MriCase]:
    """Cases from patient folders.

    Parameters
    ----------
    root
        Holds ``<patient>/<sequence>.nii[.gz]`` or ``<patient>/<sequence>/`` (a DICOM series
        folder), and optionally ``<patient>/<mask_name>.nii[.gz]`` (or a DICOM folder).
    sequences
        Sequence names in channel order. Without them, every other volume of a patient is a
        sequence (alphabetical order); they must then be the same for every patient.
    mask_name
        The mask's name.

    Returns
    -------
    list of MriCase
        One per patient folder holding a volume; a patient lacking a named sequence gets a
        case that fails when processed (naming patient, sequence and the file expected).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of patient folders")
    cases = []
    first: list[str] | None = None
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _volumes_of(d)
        if not files:
            continue
        mask = files.pop(mask_name, None)
        names = list(sequences) if sequences else sorted(files)
        if first is None:
            first = names
        elif not sequences and names != first:
            raise DataError(
                f"{d}: sequences {names} differ from the first patient's {first}; pass --sequences to choose"
            )
        problems = [
            f"patient {d.name} sequence {n!r} {d / n}[.nii|.nii.gz|/]: file not found"
            for n in names
            if n not in files
        ]
        cases.append(MriCase(d.name, {n: files[n] for n in names if n in files}, mask, problems))
    if not cases:
        raise DataError(f"{root}: no patient folders holding NIfTI files or DICOM series folders")
    return cases


# ------------------------------------------------------------------------------- batch
def output_path(patient: str, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{patient}.h5"


def _volume_attrs(case: MriCase, vol: MriVolume, config: MriConfig) -> dict:
    """What every MRI file records: the files, the crop (``spacing_mm``, ``center_ras_mm``),
    ``grid_of``, ``resampled_sequences`` (JSON list) and the preprocessing settings."""
    return {
        "modality": "mri",
        "patient": case.patient,
        "sequences": json.dumps(vol.sequences),
        "sequence_files": json.dumps({k: str(Path(v).resolve()) for k, v in case.sequences.items()}),
        "mask_file": str(Path(case.mask).resolve()) if case.mask else "",
        "mask_voxels": vol.mask_voxels,
        "spacing_mm": vol.spacing_mm,
        "center_ras_mm": vol.center_ras_mm,
        "grid_of": vol.notes.get("grid_of", ""),
        "resampled_sequences": json.dumps(vol.notes.get("resampled_sequences", [])),
        "preprocess": config.to_json(),
    }


def write_cubes_h5(path: str | os.PathLike, vol: MriVolume, attrs: dict) -> Path:
    """Write one patient's ROI cubes atomically: ``cubes`` (S, G, G, G) float32 (one per
    sequence, in ``attrs["sequences"]`` order), ``inside`` (G, G, G) uint8 (the tumour mask on
    the cube), ``attrs["content"] = "cubes"``. :func:`deref.data.mri.read_mri_cubes` reads them."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cubes", data=np.ascontiguousarray(vol.data, dtype=np.float32))
            f.create_dataset("inside", data=vol.inside.astype(np.uint8))
            for k, v in (attrs | {"content": CUBES, "grid": int(vol.data.shape[-1])}).items():
                f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def process_case(
    case: MriCase,
    out_dir: str | os.PathLike,
    model,
    config: MriConfig,
    save_crops: bool = False,
    *,
    cubes_dir: str | os.PathLike | None = None,
) -> Path:
    """Preprocess ``case`` and write ``<out>/<patient>.h5`` atomically: its vector(s) through
    ``model``, or with ``model=None`` its ROI cubes (:func:`write_cubes_h5`, for a 3D ResNet
    trained end to end). ``cubes_dir`` also writes the cubes there beside the vectors.

    The file's attributes record the provenance of the weights (vectors), the files, the crop
    (``spacing_mm``, ``center_ras_mm``), ``grid_of`` and ``resampled_sequences`` (JSON list).
    """
    from deref.data.bags import write_bag_h5

    vol = preprocess_case(case, config)
    base = _volume_attrs(case, vol, config)
    if model is None:
        return write_cubes_h5(output_path(case.patient, out_dir), vol, base)
    if cubes_dir is not None:
        write_cubes_h5(output_path(case.patient, cubes_dir), vol, base)
    feats = mri_features(vol, model, config)
    attrs = {
        **model.provenance,
        **base,
        "content": VECTORS,
        "feature_rows": "sequence" if config.per_sequence else "patient",
    }
    if save_crops:
        import nibabel as nib

        affine = np.diag([vol.spacing_mm] * 3 + [1.0])
        affine[:3, 3] = vol.center_ras_mm - vol.spacing_mm * (config.grid - 1) / 2.0
        crop_path = Path(out_dir) / "crops" / f"{case.patient}.nii.gz"
        crop_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = crop_path.with_name(f".{crop_path.name[: -len('.nii.gz')]}.tmp-{os.getpid()}.nii.gz")
        try:
            nib.save(nib.Nifti1Image(np.moveaxis(vol.data, 0, -1), affine), str(tmp))
            os.replace(tmp, crop_path)
        finally:
            tmp.unlink(missing_ok=True)
    return write_bag_h5(output_path(case.patient, out_dir), feats, None, attrs)


def _finished(path: Path, dataset: str = "features") -> int | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f[dataset].shape[0])
    except Exception:  # noqa: BLE001
        return None


def process_cases(
    cases: Sequence[MriCase],
    out_dir: str | os.PathLike,
    model,
    config: MriConfig | None = None,
    *,
    save_crops: bool = False,
    on_result: Callable[[ManifestRow], None] | None = None,
    cubes_dir: str | os.PathLike | None = None,
) -> list[ManifestRow]:
    """Process every case; one manifest row each (``patches`` = vectors, or cubes with
    ``model=None``, written), never raising for a bad case. Patients whose file exists are
    skipped unless ``config.overwrite``; ``cubes_dir`` also writes the cubes (see
    :func:`process_case`)."""
    config = config or MriConfig()
    from deref.prepare.extract import resolve_device

    if model is not None:
        model = model.to(resolve_device(config.device))
    seen: set[str] = set()
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        out = output_path(case.patient, out_dir)
        try:
            if case.patient in seen:
                raise DataError(f"patient {case.patient} listed twice")
            seen.add(case.patient)
            dataset = "features" if model is not None else "cubes"
            n = None if config.overwrite or not out.exists() else _finished(out, dataset)
            if n is not None:
                row = ManifestRow(case.patient, "skipped", n, 0.0, "", str(out))
            else:
                process_case(case, out_dir, model, config, save_crops, cubes_dir=cubes_dir)
                n = len(case.sequences) if config.per_sequence or model is None else 1
                row = ManifestRow(case.patient, "ok", n, time.perf_counter() - t0, "", str(out))
                log.info(
                    "patient %s: %d %s in %.2f s",
                    case.patient,
                    n,
                    "cube(s)" if model is None else "vector(s)",
                    row.seconds,
                )
        except DataError as exc:
            row = ManifestRow(case.patient, "failed", 0, time.perf_counter() - t0, one_line(exc), "")
        except Exception as exc:  # noqa: BLE001 - one bad patient must not stop the batch
            log.debug("unexpected failure on %s:\n%s", case.patient, traceback.format_exc())
            row = ManifestRow(
                case.patient,
                "failed",
                0,
                time.perf_counter() - t0,
                f"patient {case.patient}: {type(exc).__name__}: {one_line(exc)}",
                "",
            )
        rows.append(row)
        if on_result:
            on_result(row)
    return rows
