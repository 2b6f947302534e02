"""MRI volumes to one feature vector per patient (modality 1 of the MRI variant of DeReF).

For each patient, :func:`preprocess_case` turns one or more co-registered NIfTI sequences
(and an optional tumour mask) into a ``(C, G, G, G)`` float32 array:

1. **Checks.** Every sequence and the mask must share one voxel grid: same shape and same
   affine (within ``affine_atol`` mm). A mismatch is a :class:`DataError`, never a silent
   resample: resampling a mask onto another grid is a registration decision the user makes.
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


@dataclass
class MriCase:
    """One patient: sequence name -> NIfTI file (the channel order), optional mask."""

    patient: str
    sequences: dict[str, Path]
    mask: Path | None = None


def nifti_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _load(path: Path, what: str):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{what} {path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types
        raise DataError(f"{what} {path}: not a readable NIfTI file: {one_line(exc)}") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise DataError(f"{what} {path}: expected a 3-D volume, got shape {tuple(shape)}")
    return img


def _same_grid(ref, ref_path: Path, other, other_path: Path, what: str, atol: float) -> None:
    if tuple(other.shape) != tuple(ref.shape):
        raise DataError(
            f"{what} {other_path}: shape {tuple(other.shape)} does not match {ref_path} "
            f"{tuple(ref.shape)}; resample or re-export it on the same grid (no silent resampling)"
        )
    diff = float(np.abs(np.asarray(other.affine) - np.asarray(ref.affine)).max())
    if diff > atol:
        raise DataError(
            f"{what} {other_path}: affine differs from {ref_path} by up to {diff:.4g} mm; "
            "register it to the same grid (no silent resampling)"
        )


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
            sub = ndi.gaussian_filter(sub, sigma, mode="nearest")
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
    (G, G, G) marks the voxels the intensities were normalized over (mask, or volume)."""

    data: np.ndarray
    inside: np.ndarray
    sequences: list[str]
    spacing_mm: float
    center_ras_mm: np.ndarray
    mask_voxels: int
    notes: dict = field(default_factory=dict)


def _load_checked(case: MriCase, config: MriConfig) -> tuple[list, object | None]:
    """The sequences' images and the mask's (or None), after checking they share one grid."""
    names = list(case.sequences)
    imgs = [_load(Path(p), f"patient {case.patient} sequence {n!r}") for n, p in case.sequences.items()]
    ref, ref_path = imgs[0], Path(case.sequences[names[0]])
    for img, n in zip(imgs[1:], names[1:]):
        what = f"patient {case.patient} sequence {n!r}"
        _same_grid(ref, ref_path, img, Path(case.sequences[n]), what, config.affine_atol)
    if case.mask is None:
        return imgs, None
    mask_img = _load(Path(case.mask), f"patient {case.patient} mask")
    _same_grid(ref, ref_path, mask_img, Path(case.mask), f"patient {case.patient} mask", config.affine_atol)
    return imgs, mask_img


def preprocess_case(case: MriCase, config: MriConfig | None = None) -> MriVolume:
    """Check, reorient, crop, resample and normalize the sequences of ``case``."""
    import nibabel as nib

    config = config or MriConfig()
    if not case.sequences:
        raise DataError(f"patient {case.patient}: no MRI sequence given")
    imgs, mask_img = _load_checked(case, config)
    canon = [nib.as_closest_canonical(img) for img in imgs]
    zooms = np.asarray(canon[0].header.get_zooms()[:3], np.float64)
    shape = np.asarray(canon[0].shape[:3])
    mask = None
    lo, hi = np.zeros(3, int), shape - 1
    if mask_img is not None:
        mask = np.asarray(nib.as_closest_canonical(mask_img).dataobj) > 0
        if not mask.any():
            raise DataError(f"patient {case.patient} mask {case.mask}: empty (no voxel > 0)")
        idx = np.argwhere(mask)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
    center = (lo + hi) / 2.0
    side = float(((hi - lo + 1) * zooms).max() + 2 * config.margin_mm)
    if mask is not None:
        inside = _sample_cube(mask.astype(np.float32), center, side, zooms, config.grid, order=1) > 0.5
    else:
        ones = np.ones(tuple(shape), np.float32)
        inside = np.isfinite(_sample_cube(ones, center, side, zooms, config.grid, order=0))
    channels = []
    for img in canon:
        cube = _sample_cube(np.asarray(img.get_fdata(dtype=np.float32)), center, side, zooms, config.grid)
        channels.append(_normalize(cube, inside, config))
    return MriVolume(
        data=np.stack(channels),
        inside=inside,
        sequences=list(case.sequences),
        spacing_mm=side / config.grid,
        center_ras_mm=np.asarray(nib.affines.apply_affine(canon[0].affine, center), np.float64),
        mask_voxels=int(mask.sum()) if mask is not None else 0,
        notes={"side_mm": side, "source_spacing_mm": zooms.tolist()},
    )


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
def cases_from_table(path: str | os.PathLike, sequences: Sequence[str] | None = None) -> list[MriCase]:
    """Cases from a CSV: a ``patient`` (or ``patient_id`` / ``case_id``) column, an optional
    ``mask`` column, and one column per sequence (``sequences`` picks and orders them; all
    other columns otherwise). Relative paths are relative to the CSV's folder; an empty mask
    cell means no mask."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"case table {path}: {one_line(exc)}") from exc
    if not rows:
        raise DataError(f"case table {path}: no rows")
    cols = list(rows[0])
    id_col = next((c for c in ("patient", "patient_id", "case_id") if c in cols), None)
    if id_col is None:
        raise DataError(
            f"case table {path}: no patient column; expected one of patient, patient_id, case_id; got {cols}"
        )
    seq_cols = list(sequences) if sequences else [c for c in cols if c not in (id_col, "mask")]
    missing = [c for c in seq_cols if c not in cols]
    if missing:
        raise DataError(f"case table {path}: no column(s) {missing} (columns: {cols})")
    if not seq_cols:
        raise DataError(f"case table {path}: no sequence column besides {id_col!r} and 'mask'")

    def resolve(v: str) -> Path:
        p = Path(v)
        return p if p.is_absolute() else path.parent / p

    cases = []
    for i, r in enumerate(rows, start=2):
        pid = (r.get(id_col) or "").strip()
        if not pid:
            raise DataError(f"case table {path}, line {i}: empty {id_col}")
        empty = [c for c in seq_cols if not (r.get(c) or "").strip()]
        if empty:
            raise DataError(f"case table {path}, line {i}: patient {pid}: empty path in {empty}")
        mask = (r.get("mask") or "").strip()
        cases.append(
            MriCase(pid, {c: resolve(r[c].strip()) for c in seq_cols}, resolve(mask) if mask else None)
        )
    return cases


def cases_from_folders(
    root: str | os.PathLike, sequences: Sequence[str] | None = None, mask_name: str = "mask"
) -> list[MriCase]:
    """Cases from ``root/<patient>/<sequence>.nii[.gz]`` with an optional
    ``root/<patient>/<mask_name>.nii[.gz]``. Without ``sequences``, every other NIfTI file of
    a patient is a sequence (alphabetical order); they must be the same for every patient."""
    root = Path(root)
    cases = []
    first: list[str] | None = None
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {nifti_stem(f): f for f in sorted(d.iterdir()) if f.name.lower().endswith(NIFTI_SUFFIXES)}
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
        missing = [n for n in names if n not in files]
        if missing:
            raise DataError(f"{d}: no {', '.join(m + '.nii[.gz]' for m in missing)}")
        cases.append(MriCase(d.name, {n: files[n] for n in names}, mask))
    if not cases:
        raise DataError(f"{root}: no patient folders holding NIfTI files")
    return cases


# ------------------------------------------------------------------------------- batch
def output_path(patient: str, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{patient}.h5"


def process_case(
    case: MriCase, out_dir: str | os.PathLike, model, config: MriConfig, save_crops: bool = False
) -> Path:
    """Preprocess ``case``, compute its vector(s) and write ``<out>/<patient>.h5``."""
    from deref.data.bags import write_bag_h5

    vol = preprocess_case(case, config)
    feats = mri_features(vol, model, config)
    attrs = {
        **model.provenance,
        "modality": "mri",
        "patient": case.patient,
        "sequences": json.dumps(vol.sequences),
        "feature_rows": "sequence" if config.per_sequence else "patient",
        "sequence_files": json.dumps({k: str(Path(v).resolve()) for k, v in case.sequences.items()}),
        "mask_file": str(Path(case.mask).resolve()) if case.mask else "",
        "mask_voxels": vol.mask_voxels,
        "spacing_mm": vol.spacing_mm,
        "center_ras_mm": vol.center_ras_mm,
        "preprocess": json.dumps(asdict(config) | {"overwrite": None, "device": None}),
    }
    if save_crops:
        import nibabel as nib

        affine = np.diag([vol.spacing_mm] * 3 + [1.0])
        affine[:3, 3] = vol.center_ras_mm - vol.spacing_mm * (config.grid - 1) / 2.0
        crop_path = Path(out_dir) / "crops" / f"{case.patient}.nii.gz"
        crop_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.moveaxis(vol.data, 0, -1), affine), str(crop_path))
    return write_bag_h5(output_path(case.patient, out_dir), feats, None, attrs)


def _finished(path: Path) -> int | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["features"].shape[0])
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
) -> list[ManifestRow]:
    """Process every case; one manifest row each (``patches`` = vectors written), never
    raising for a bad case. Patients whose bag exists are skipped unless ``config.overwrite``."""
    config = config or MriConfig()
    from deref.prepare.extract import resolve_device

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
            n = None if config.overwrite or not out.exists() else _finished(out)
            if n is not None:
                row = ManifestRow(case.patient, "skipped", n, 0.0, "", str(out))
            else:
                process_case(case, out_dir, model, config, save_crops)
                n = len(case.sequences) if config.per_sequence else 1
                row = ManifestRow(case.patient, "ok", n, time.perf_counter() - t0, "", str(out))
                log.info("patient %s: %d vector(s) in %.2f s", case.patient, n, row.seconds)
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
