"""MRI: the real volume through ``deref mri``, grid checks, orientation, channels, weights."""

from __future__ import annotations

import csv

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from deref.cli.main import main
from deref.errors import DataError
from deref.prepare.mri import (
    MriCase,
    MriConfig,
    build_mri_backbone,
    cases_from_folders,
    cases_from_table,
    mri_features,
    preprocess_case,
    process_cases,
)

SMALL = MriConfig(grid=32, margin_mm=6.0)


@pytest.fixture(scope="module")
def anatomical(shared_data, tmp_path_factory):
    """The real volume and a mask made from it (brightest quarter of the voxels)."""
    path = shared_data / "mri" / "anatomical.nii"
    if not path.exists():
        pytest.skip(f"{path} not present")
    img = nib.load(path)
    data = img.get_fdata()
    mask = (data > np.percentile(data, 75)).astype(np.uint8)
    mask_path = tmp_path_factory.mktemp("mri") / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, img.affine), mask_path)
    return {"volume": path, "mask": mask_path, "img": img, "data": data, "mask_data": mask}


@pytest.fixture(scope="module")
def model_1ch():
    return build_mri_backbone(1, random_weights=True)


def test_real_volume_through_the_cli(anatomical, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "mri",
                str(anatomical["volume"]),
                "--mask",
                str(anatomical["mask"]),
                "--patient",
                "P001",
                "--random-weights",
                "--grid",
                "32",
                "--out",
                str(out),
                "--save-crops",
            ]
        )
        == 0
    )
    assert "UNUSABLE FOR SCIENCE" in capsys.readouterr().err
    with h5py.File(out / "P001.h5") as f:
        feats = f["features"][:]
        attrs = dict(f.attrs)
    assert feats.shape == (1, 2048) and np.isfinite(feats).all() and feats.std() > 0
    assert attrs["modality"] == "mri" and attrs["unusable_for_science"] and attrs["feature_rows"] == "patient"
    crop = nib.load(out / "crops" / "P001.nii.gz")
    assert crop.shape == (32, 32, 32, 1) and nib.aff2axcodes(crop.affine) == ("R", "A", "S")
    with open(out / "mri_manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["patient"] == "P001" and rows[0]["status"] == "ok" and rows[0]["vectors"] == "1"


def test_mask_on_another_grid_is_an_error_not_a_resample(anatomical, tmp_path, model_1ch):
    img, mask = anatomical["img"], anatomical["mask_data"]
    wrong_shape = tmp_path / "shape.nii.gz"
    nib.save(nib.Nifti1Image(mask[:-1], img.affine), wrong_shape)
    shifted = img.affine.copy()
    shifted[0, 3] += 2.0
    wrong_affine = tmp_path / "affine.nii.gz"
    nib.save(nib.Nifti1Image(mask, shifted), wrong_affine)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(mask), img.affine), empty)
    cases = [
        MriCase(name, {"t1": anatomical["volume"]}, m)
        for name, m in (
            ("a", wrong_shape),
            ("b", wrong_affine),
            ("c", empty),
            ("d", tmp_path / "missing.nii"),
        )
    ]
    rows = process_cases(cases, tmp_path / "out", model_1ch, SMALL)
    errors = {r.item: r.error for r in rows}
    assert all(r.status == "failed" for r in rows)
    assert "shape (32, 41, 25) does not match" in errors["a"] and "no silent resampling" in errors["a"]
    assert "affine differs" in errors["b"] and "by up to 2 mm" in errors["b"]
    assert "empty" in errors["c"] and "file not found" in errors["d"]
    assert not list((tmp_path / "out").glob("*.h5"))


def test_orientation_does_not_change_the_result(anatomical, tmp_path):
    img, data, mask = anatomical["img"], anatomical["data"], anatomical["mask_data"]
    # The same volume stored with the first axis flipped and the last two swapped (LAS -> RSA).
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    swap = np.eye(4)[[0, 2, 1, 3]]
    affine = img.affine @ flip @ swap
    d2 = np.transpose(data[::-1], (0, 2, 1))
    m2 = np.transpose(mask[::-1], (0, 2, 1))
    for arr, name in ((d2, "vol.nii.gz"), (m2, "mask.nii.gz")):
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), tmp_path / name)
    assert nib.aff2axcodes(affine) != nib.aff2axcodes(img.affine)
    a = preprocess_case(MriCase("a", {"t1": anatomical["volume"]}, anatomical["mask"]), SMALL)
    b = preprocess_case(MriCase("b", {"t1": tmp_path / "vol.nii.gz"}, tmp_path / "mask.nii.gz"), SMALL)
    assert np.allclose(a.data, b.data, atol=1e-4) and np.array_equal(a.inside, b.inside)


def test_crop_and_normalization(anatomical):
    vol = preprocess_case(MriCase("a", {"t1": anatomical["volume"]}, anatomical["mask"]), SMALL)
    assert vol.data.shape == (1, 32, 32, 32) and vol.data.dtype == np.float32
    inside = vol.data[0][vol.inside]
    assert abs(inside.mean()) < 0.05 and abs(inside.std() - 1.0) < 0.05  # z-scored within the mask
    idx = np.argwhere(anatomical["mask_data"])
    extent = (idx.max(0) - idx.min(0) + 1) * 2.0  # 2 mm voxels
    assert vol.notes["side_mm"] == pytest.approx(extent.max() + 2 * SMALL.margin_mm)
    assert vol.spacing_mm == pytest.approx(vol.notes["side_mm"] / 32)
    mm = preprocess_case(MriCase("a", {"t1": anatomical["volume"]}, None), MriConfig(grid=32, norm="minmax"))
    assert mm.data.min() >= 0.0 and mm.data.max() <= 1.0


def test_sequences_as_channels_or_one_vector_each(anatomical, tmp_path, model_1ch):
    img, data = anatomical["img"], anatomical["data"]
    nib.save(
        nib.Nifti1Image(np.sqrt(np.clip(data, 0, None)).astype(np.float32), img.affine),
        tmp_path / "t2.nii.gz",
    )
    case = MriCase("p", {"t1": anatomical["volume"], "t2": tmp_path / "t2.nii.gz"}, anatomical["mask"])
    vol = preprocess_case(case, SMALL)
    assert vol.data.shape == (2, 32, 32, 32) and vol.sequences == ["t1", "t2"]
    two = build_mri_backbone(2, random_weights=True)
    assert mri_features(vol, two, SMALL).shape == (1, 2048)
    per = MriConfig(grid=32, margin_mm=6.0, per_sequence=True)
    feats = mri_features(vol, model_1ch, per)
    assert feats.shape == (2, 2048)
    single = mri_features(
        preprocess_case(MriCase("p", {"t1": anatomical["volume"]}, anatomical["mask"]), SMALL),
        model_1ch,
        SMALL,
    )
    assert np.allclose(feats[0], single[0], rtol=1e-4, atol=1e-4)
    nib.save(nib.Nifti1Image(data[:, :, :-2].astype(np.float32), img.affine), tmp_path / "short.nii.gz")
    with pytest.raises(DataError, match="sequence 'short'.*shape"):
        preprocess_case(MriCase("p", {"t1": anatomical["volume"], "short": tmp_path / "short.nii.gz"}), SMALL)


def test_3d_weights_load_strictly(tmp_path):
    from deref.prepare.backbones import torchvision_resnet

    torch.manual_seed(0)
    net = torchvision_resnet(50, num_classes=None, spatial_dims=3, in_channels=1)
    sd = net.state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "medicalnet_style.pth")
    model = build_mri_backbone(3, tmp_path / "medicalnet_style.pth")  # 1-channel stem repeated over 3
    assert not model.provenance["unusable_for_science"] and model.provenance["weights_sha256"]
    assert torch.allclose(model.conv1.weight, sd["conv1.weight"].repeat(1, 3, 1, 1, 1) / 3)
    del sd["layer4.2.conv3.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"missing keys \(layer4.2.conv3.weight\)"):
        build_mri_backbone(1, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="needs pretrained weights"):
        build_mri_backbone(1)


def test_case_tables_and_folders(tmp_path):
    (tmp_path / "P1").mkdir()
    (tmp_path / "P2").mkdir()
    for p in ("P1", "P2"):
        for name in ("art", "pv", "mask"):
            (tmp_path / p / f"{name}.nii.gz").write_bytes(b"")
    cases = cases_from_folders(tmp_path)
    assert [c.patient for c in cases] == ["P1", "P2"]
    assert list(cases[0].sequences) == ["art", "pv"] and cases[0].mask.name == "mask.nii.gz"
    assert list(cases_from_folders(tmp_path, ["pv", "art"])[1].sequences) == ["pv", "art"]
    (tmp_path / "P2" / "t2.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="differ from the first patient's"):
        cases_from_folders(tmp_path)
    table = tmp_path / "cases.csv"
    table.write_text(
        "patient,art,pv,mask\nP1,P1/art.nii.gz,P1/pv.nii.gz,P1/mask.nii.gz\nP2,P2/art.nii.gz,P2/pv.nii.gz,\n"
    )
    cases = cases_from_table(table)
    assert cases[0].sequences["pv"] == tmp_path / "P1" / "pv.nii.gz" and cases[1].mask is None
    with pytest.raises(DataError, match="no column"):
        cases_from_table(table, ["t1"])
