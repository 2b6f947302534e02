"""DICOM MR series folders as NIfTI images, and the reverse (for tests and users).

:func:`read_dicom_series` reads every file of a folder with pydicom, requires one
``SeriesInstanceUID`` and one slice geometry, sorts the slices by their position along the
slice normal and builds the voxel-to-world affine from the headers alone:

- ``ImageOrientationPatient`` gives the row direction (along increasing column index) and
  the column direction (along increasing row index); their cross product is the slice normal;
- ``PixelSpacing`` is (spacing between rows, spacing between columns) in mm;
- the slice step is the mean difference of ``ImagePositionPatient`` between sorted slices
  (checked uniform), so no ``SliceThickness`` or ``SpacingBetweenSlices`` is trusted;
- DICOM's patient coordinates are LPS, NIfTI's world is RAS: ``diag(-1, -1, 1)`` converts.

Voxel ``(i, j, k)`` of the returned image is column ``i``, row ``j`` of slice ``k``.
``RescaleSlope`` / ``RescaleIntercept`` are applied per slice (float32 output); without
rescaling the stored integer type is kept, so a round trip is exact.

:func:`write_dicom_series` writes a 3-D NIfTI image as an uncompressed MR series (one file
per slice, explicit VR little endian). Integer data within int16/uint16 is stored as is;
other data is quantized to int16 with a rescale slope and intercept (lossy: steps of
``range / 65535``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deref.errors import DataError, one_line

#: LPS (DICOM) <-> RAS (NIfTI): flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Tolerances on the slice geometry: direction cosines, and positions relative to the step.
ORIENTATION_ATOL = 1e-4
SPACING_RTOL = 1e-3


def is_dicom_series(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder (a DICOM series folder wherever a NIfTI file is accepted)."""
    return Path(path).is_dir()


def _read_files(folder: Path, what: str) -> list:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise DataError(f"{what} {folder}: DICOM series folder holds no file")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types
            raise DataError(
                f"{what} {folder}: {f.name} is not a readable DICOM file: {one_line(exc)}"
            ) from exc
        slices.append((f, ds))
    uids: dict[str, int] = {}
    for _, ds in slices:
        uid = str(ds.get("SeriesInstanceUID", ""))
        uids[uid] = uids.get(uid, 0) + 1
    if len(uids) > 1:
        listed = ", ".join(f"{u or '(none)'} ({n} files)" for u, n in uids.items())
        raise DataError(f"{what} {folder}: DICOM folder holds {len(uids)} series: {listed}; expected one")
    return slices


def _geometry(slices: list, folder: Path, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row/column cosines (3,), (3,), pixel spacing (2,) shared by every slice."""
    first = None
    for f, ds in slices:
        missing = [
            t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if t not in ds
        ]
        if missing:
            raise DataError(f"{what} {folder}: {f.name} has no {', '.join(missing)}; cannot place the slice")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{what} {folder}: {f.name} is a multi-frame image; expected one slice per file")
        geo = (
            np.asarray(ds.ImageOrientationPatient, np.float64),
            np.asarray(ds.PixelSpacing, np.float64),
            (int(ds.Rows), int(ds.Columns)),
        )
        if first is None:
            first = (f, geo)
            continue
        if not np.allclose(geo[0], first[1][0], atol=ORIENTATION_ATOL) or geo[2] != first[1][2]:
            raise DataError(
                f"{what} {folder}: {f.name} has another orientation or size than {first[0].name}; "
                "expected one slice geometry per series"
            )
        if not np.allclose(geo[1], first[1][1], rtol=SPACING_RTOL):
            raise DataError(
                f"{what} {folder}: {f.name} has pixel spacing {geo[1]} != {first[1][1]} of {first[0].name}"
            )
    iop, spacing, _ = first[1]
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DataError(
            f"{what} {folder}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors"
        )
    return row / np.linalg.norm(row), col / np.linalg.norm(col), spacing


def _slice_step(positions: np.ndarray, normal: np.ndarray, folder: Path, what: str) -> np.ndarray:
    """The world step (3,) between sorted slices, checked uniform and along the normal."""
    if len(positions) < 2:
        raise DataError(f"{what} {folder}: a 2-D image (one slice); expected a 3-D series of several slices")
    steps = np.diff(positions, axis=0)
    dist = steps @ normal
    if np.any(dist <= 1e-6 * max(1.0, float(np.abs(dist).max()))):
        raise DataError(f"{what} {folder}: two slices share one position; expected one slice per position")
    step = positions[-1] - positions[0]
    step = step / (len(positions) - 1)
    if np.abs(steps - step).max() > SPACING_RTOL * np.linalg.norm(step) + 1e-4:
        raise DataError(
            f"{what} {folder}: slice spacing varies from {dist.min():.4g} to {dist.max():.4g} mm; "
            "expected uniform spacing (missing slices?)"
        )
    return step


def read_dicom_series(folder: str | os.PathLike, what: str = "DICOM series"):
    """Read one DICOM series folder as a RAS-world ``nibabel.Nifti1Image``.

    Parameters
    ----------
    folder
        A folder holding the files of exactly one series (one slice per file).
    what
        How errors name the volume (``"patient P1 sequence 't1'"``).

    Returns
    -------
    nibabel.Nifti1Image
        Shape (columns, rows, slices); the affine maps voxels to RAS millimetres.

    Raises
    ------
    DataError
        An unreadable file, several series (naming each UID), one slice, inconsistent
        geometry, missing position headers or non-uniform slice spacing.
    """
    import nibabel as nib

    folder = Path(folder)
    slices = _read_files(folder, what)
    row, col, spacing = _geometry(slices, folder, what)
    normal = np.cross(row, col)
    positions = np.asarray([np.asarray(ds.ImagePositionPatient, np.float64) for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    step = _slice_step(positions, normal, folder, what)
    planes, rescaled = [], False
    for f, ds in slices:
        try:
            px = np.asarray(ds.pixel_array)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{what} {folder}: {f.name}: cannot decode the pixels: {one_line(exc)}") from exc
        if px.ndim != 2:
            raise DataError(f"{what} {folder}: {f.name}: pixels of shape {px.shape}; expected one grey slice")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0 or inter != 0.0:
            rescaled = True
        planes.append((px, slope, inter))
    if rescaled:
        data = np.stack([px.astype(np.float32) * s + b for px, s, b in planes], axis=-1)
    else:
        data = np.stack([px for px, _, _ in planes], axis=-1)
    data = np.ascontiguousarray(np.transpose(data, (1, 0, 2)))  # (rows, cols, k) -> (i=col, j=row, k)
    lps = np.eye(4)
    lps[:3, 0] = row * spacing[1]
    lps[:3, 1] = col * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return nib.Nifti1Image(data, LPS_TO_RAS @ lps)


def _pixels(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored integers, slope, intercept for ``data``."""
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(f"{int((~finite).sum())} NaN/infinite voxels cannot be written as DICOM pixels")
    if np.issubdtype(data.dtype, np.integer) or np.array_equal(data, np.round(data)):
        lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if lo >= -32768 and hi <= 32767:
            return data.astype("<i2"), 1.0, 0.0
        if lo >= 0 and hi <= 65535:
            return data.astype("<u2"), 1.0, 0.0
    lo, hi = float(data.min()), float(data.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((data.astype(np.float64) - lo) / slope - 32768.0)
    return stored.clip(-32768, 32767).astype("<i2"), slope, lo + 32768.0 * slope


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def write_dicom_series(
    img,
    folder: str | os.PathLike,
    series_uid: str | None = None,
    *,
    patient_id: str = "ANONYMOUS",
    description: str = "",
) -> list[Path]:
    """Write a 3-D NIfTI image as an MR series, one file per slice (``0000.dcm``, ...).

    Parameters
    ----------
    img
        A nibabel spatial image of shape (X, Y, Z), Z >= 2; its first two voxel axes must
        be orthogonal in world space (DICOM slices have no shear).
    folder
        Created if needed; must hold no file (one folder is one series).
    series_uid
        The ``SeriesInstanceUID`` (a new one by default).
    patient_id, description
        ``PatientID`` / ``PatientName`` and ``SeriesDescription``.

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3 or data.shape[2] < 2:
        raise DataError(f"{folder}: expected a 3-D image of several slices, got shape {data.shape}")
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder}: not empty; a DICOM series needs a folder of its own")
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(img.affine, np.float64)
    v0, v1, v2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    s0, s1 = float(np.linalg.norm(v0)), float(np.linalg.norm(v1))
    if abs(v0 @ v1) > 1e-6 * s0 * s1:
        raise DataError(f"{folder}: the image's first two axes are not orthogonal; DICOM slices cannot shear")
    stored, slope, inter = _pixels(data)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    iop = [_ds(v) for v in np.concatenate([v0 / s0, v1 / s1])]
    thickness = _ds(float(np.abs(v2 @ np.cross(v0 / s0, v1 / s1))))
    paths = []
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.Modality = patient_id, patient_id, "MR"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 1, k + 1
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * v2]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(s1), _ds(s0)]  # (between rows = along j, between columns = along i)
        ds.SliceThickness = thickness
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if stored.dtype == np.dtype("<i2") else 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(inter)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
