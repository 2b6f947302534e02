"""DICOM MR series: round trips of the real NIfTI and of an oblique float volume, headers in
LPS, and every malformed folder named."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from deref.errors import DataError
from deref.prepare.dicom import read_dicom_series, write_dicom_series


@pytest.fixture(scope="module")
def anatomical(shared_data):
    path = shared_data / "mri" / "anatomical.nii"
    if not path.exists():
        pytest.skip(f"{path} not present (the real LAS big-endian int16 NIfTI of ../shared/data/mri)")
    return nib.load(path)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_real_nifti_round_trip_gives_the_same_ras_voxels_and_affine(anatomical, tmp_path):
    assert nib.aff2axcodes(anatomical.affine) == ("L", "A", "S")
    assert anatomical.get_data_dtype() == np.dtype(">i2")
    files = write_dicom_series(anatomical, tmp_path / "t1", patient_id="P001")
    assert len(files) == anatomical.shape[2]
    # The headers are LPS: voxel (0, 0, k) of the NIfTI at RAS (x, y, z) is at (-x, -y, z).
    for k in (0, 7):
        ds = pydicom.dcmread(files[k])
        ras = nib.affines.apply_affine(anatomical.affine, [0, 0, k])
        assert np.allclose(np.asarray(ds.ImagePositionPatient, float), ras * [-1, -1, 1], atol=1e-6)
        assert ds.Modality == "MR" and ds.Rows == anatomical.shape[1] and ds.Columns == anatomical.shape[0]
        assert np.array_equal(ds.pixel_array.T, np.asanyarray(anatomical.dataobj)[:, :, k])
    back = read_dicom_series(tmp_path / "t1")
    a, b = nib.as_closest_canonical(anatomical), nib.as_closest_canonical(back)
    assert b.shape == a.shape and np.asarray(b.dataobj).dtype == np.int16
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert np.abs(a.affine - b.affine).max() < 1e-4
    assert np.allclose(back.header.get_zooms(), (2.0, 2.0, 2.0))


def test_oblique_float_volume_and_rescaling(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.2, -0.35, 0.5) @ np.diag([0.8, 0.9, 3.0])
    affine[:3, 3] = [-12.5, 40.25, 7.0]
    data = rng.normal(100.0, 20.0, (10, 12, 6)).astype(np.float32)
    write_dicom_series(nib.Nifti1Image(data, affine), tmp_path / "s")
    back = read_dicom_series(tmp_path / "s")
    assert np.abs(back.affine - affine).max() < 1e-4
    step = (data.max() - data.min()) / 65535
    assert np.abs(back.get_fdata() - data).max() <= step  # int16 quantization through the slope
    assert 0 < step < 0.01 and float(
        pydicom.dcmread(tmp_path / "s" / "0000.dcm").RescaleSlope
    ) == pytest.approx(step, rel=1e-6)
    # Slices stored in shuffled file order are sorted by position along the normal.
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for i, f in enumerate(sorted((tmp_path / "s").iterdir())):
        shutil.copy(f, shuffled / f"{(7 * i) % 6}_{i}.dcm")
    again = read_dicom_series(shuffled)
    assert np.array_equal(again.get_fdata(), back.get_fdata()) and np.allclose(again.affine, back.affine)


def _series(folder, shape=(6, 5, 4), uid=None):
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return write_dicom_series(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), folder, uid)


def test_malformed_series_folders_are_named(tmp_path):
    _series(tmp_path / "a", uid="1.2.3.4")
    _series(tmp_path / "b", uid="1.2.3.5")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    for f in (tmp_path / "b").iterdir():
        shutil.copy(f, mixed / f"b_{f.name}")
    with pytest.raises(DataError, match=r"holds 2 series: 1\.2\.3\.4 \(4 files\), 1\.2\.3\.5 \(4 files\)"):
        read_dicom_series(mixed, "patient P sequence 't2'")
    gap = tmp_path / "gap"
    shutil.copytree(tmp_path / "a", gap)
    (gap / "0001.dcm").unlink()
    with pytest.raises(DataError, match="slice spacing varies from 2 to 4 mm"):
        read_dicom_series(gap)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tmp_path / "a" / "0000.dcm", one)
    with pytest.raises(DataError, match="a 2-D image"):
        read_dicom_series(one)
    junk = tmp_path / "junk"
    shutil.copytree(tmp_path / "a", junk)
    (junk / "notes.txt").write_text("not dicom")
    with pytest.raises(DataError, match="notes.txt is not a readable DICOM file"):
        read_dicom_series(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no file"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(DataError, match="not empty"):
        _series(tmp_path / "a")
