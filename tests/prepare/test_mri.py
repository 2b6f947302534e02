"""MRI: the real volume through ``deref mri``, grid checks, orientation, channels, weights."""

from __future__ import annotations

import csv
import json

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
    # The single-volume form takes a DICOM series folder as well: the same volume, the same vector.
    from deref.prepare.dicom import write_dicom_series

    write_dicom_series(anatomical["img"], tmp_path / "dicom" / "t1")
    argv = ["mri", str(tmp_path / "dicom" / "t1"), "--mask", str(anatomical["mask"]), "--random-weights"]
    assert main([*argv, "--grid", "32", "--out", str(tmp_path / "out_dicom")]) == 0
    with h5py.File(tmp_path / "out_dicom" / "t1.h5") as f:  # patient named after the folder
        assert np.abs(f["features"][:] - feats).max() < 1e-5
        assert f.attrs["sequence_files"] == json.dumps({"t1": str((tmp_path / "dicom" / "t1").resolve())})


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
    with pytest.raises(DataError, match="sequence 'short'.*short.nii.gz: field of view does not cover"):
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
    with pytest.raises(DataError, match=r"cases.csv, line 1: no column\(s\) \['t1'\]"):
        cases_from_table(table, ["t1"])
    # The MRI manifest: case_id, a mask column, DICOM folders; an empty cell fails only its patient.
    (tmp_path / "P2" / "t2").mkdir()
    table.write_text("case_id,mask,art,t2\nP1,P1/mask.nii.gz,P1/art.nii.gz,\nP2,,P2/art.nii.gz,P2/t2\n")
    p1, p2 = cases_from_table(table)
    assert p1.problems == [
        f"patient P1 sequence 't2': no file (case table {table}, line 2, column 't2' is empty)"
    ] and list(p1.sequences) == ["art"]
    assert p2.problems == [] and p2.sequences["t2"].is_dir() and p2.mask is None
    table.write_text("case_id,art\nP1,P1/art.nii.gz\n,P2/art.nii.gz\n")
    with pytest.raises(DataError, match=r"cases.csv, line 3, column 'case_id': empty patient id"):
        cases_from_table(table)
    table.write_text("id,art\nP1,P1/art.nii.gz\n")
    with pytest.raises(DataError, match=r"cases.csv, line 1: no patient column; expected one of patient"):
        cases_from_table(table)
    # Patient folders: DICOM series sub-folders are sequences; a missing one fails that patient.
    (tmp_path / "P2" / "t2.nii.gz").unlink()
    (tmp_path / "P1" / "pv.nii.gz").unlink()
    by_folder = cases_from_folders(tmp_path, ["art", "pv", "t2"])
    assert by_folder[1].sequences["t2"] == tmp_path / "P2" / "t2" and by_folder[1].problems == []
    assert by_folder[0].problems == [
        f"patient P1 sequence {n!r} {tmp_path / 'P1' / n}[.nii|.nii.gz|/]: file not found"
        for n in ("pv", "t2")
    ]


# --------------------------------------------------------------- resampling onto the mask's grid
def _linear(world: np.ndarray) -> np.ndarray:
    """A linear intensity in world mm: trilinear interpolation reproduces it exactly."""
    return 0.3 * world[..., 0] - 0.2 * world[..., 1] + 0.5 * world[..., 2] + 7.0


def _on_grid(shape, affine) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return _linear(nib.affines.apply_affine(affine, idx)).astype(np.float32)


def test_sequence_on_a_coarser_shifted_grid_is_resampled_onto_the_mask_grid(anatomical, tmp_path, model_1ch):
    fine_aff, shape = anatomical["img"].affine, anatomical["img"].shape  # 2 mm, LAS
    box = np.zeros(shape, np.uint8)
    box[12:20, 16:24, 9:15] = 1
    nib.save(nib.Nifti1Image(box, fine_aff), tmp_path / "mask.nii.gz")
    nib.save(nib.Nifti1Image(_on_grid(shape, fine_aff), fine_aff), tmp_path / "fine.nii.gz")
    # 3 mm RAS voxels, shifted off the fine grid, covering the fine volume with room to spare.
    coarse_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse_aff[:3, 3] = [-40.3, -47.9, -21.6]
    coarse_shape = (28, 32, 22)
    nib.save(nib.Nifti1Image(_on_grid(coarse_shape, coarse_aff), coarse_aff), tmp_path / "coarse.nii.gz")
    config = MriConfig(grid=32, margin_mm=6.0, norm="none")
    seqs = {"fine": tmp_path / "fine.nii.gz", "coarse": tmp_path / "coarse.nii.gz"}
    vol = preprocess_case(MriCase("p", seqs, tmp_path / "mask.nii.gz"), config)
    assert vol.notes["resampled_sequences"] == ["coarse"] and vol.notes["grid_of"] == "mask"
    assert np.abs(vol.data[1] - vol.data[0]).max() < 1e-3  # the same cube from either grid
    # ... and it is the linear intensity at the cube's own world coordinates.
    idx = (np.arange(32) - 15.5) * vol.spacing_mm
    world = vol.center_ras_mm + np.stack(np.meshgrid(idx, idx, idx, indexing="ij"), axis=-1)
    assert np.abs(vol.data[1] - _linear(world)).max() < 1e-3
    assert vol.data[0].std() > 1.0  # a varying intensity, so the agreement is not vacuous
    per = MriConfig(grid=32, margin_mm=6.0, norm="none", per_sequence=True)
    rows = process_cases([MriCase("p", seqs, tmp_path / "mask.nii.gz")], tmp_path / "out", model_1ch, per)
    assert rows[0].status == "ok", rows[0].error
    with h5py.File(tmp_path / "out" / "p.h5") as f:
        assert f.attrs["resampled_sequences"] == '["coarse"]' and f.attrs["grid_of"] == "mask"
    # Without a mask the first sequence's grid is the reference.
    free = preprocess_case(MriCase("q", seqs), config)
    assert free.notes["resampled_sequences"] == ["coarse"] and free.notes["grid_of"] == "sequence fine"
    assert np.abs(free.data[1] - free.data[0]).max() < 1e-3
    # The fine volume does not cover the coarse one's larger field of view: an error, not a guess.
    with pytest.raises(
        DataError, match=r"patient q sequence 'fine' .*fine.nii.gz: field of view does not cover"
    ):
        preprocess_case(MriCase("q", {"coarse": seqs["coarse"], "fine": seqs["fine"]}), config)


# ------------------------------------------------------------------------------- bad inputs
TWO_UIDS = ("1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2")


@pytest.fixture(scope="module")
def bad_cohort(anatomical, tmp_path_factory):
    """An MRI manifest (case_id, t1, mask) of good patients and one of each bad input."""
    from deref.prepare.dicom import write_dicom_series

    d = tmp_path_factory.mktemp("cohort")
    img, data = anatomical["img"], anatomical["data"].astype(np.float32)
    box = np.zeros(data.shape, np.uint8)
    box[12:20, 16:24, 9:15] = 1

    def save(arr, name, affine=img.affine):
        nib.save(nib.Nifti1Image(arr, affine), d / name)

    save(box, "mask.nii.gz")
    for name, dx in (("shifted_mask.nii.gz", -30.0), ("far_mask.nii.gz", 500.0)):
        aff = img.affine.copy()
        aff[0, 3] += dx
        save(box, name, aff)
    save(np.zeros_like(box), "empty_mask.nii.gz")
    nan_in, nan_out = data.copy(), data.copy()
    nan_in[(15, 16, 16), (19, 19, 20), (11, 11, 12)] = np.nan
    nan_out[(0, 32), (0, 40), (0, 24)] = np.nan
    save(nan_in, "nan_inside.nii.gz")
    save(nan_out, "nan_outside.nii.gz")
    save(data[:, :, 12], "flat.nii.gz")
    write_dicom_series(img, d / "dicom" / "t1")
    write_dicom_series(img, d / "mixed", TWO_UIDS[0])
    write_dicom_series(nib.Nifti1Image(data[..., :4], img.affine), d / "other", TWO_UIDS[1])
    for f in (d / "other").iterdir():
        f.rename(d / "mixed" / f"other_{f.name}")
    vol = anatomical["volume"]
    rows = [
        ("good", vol, "mask.nii.gz"),
        ("dicom", "dicom/t1", "mask.nii.gz"),
        ("nan_out", "nan_outside.nii.gz", "mask.nii.gz"),
        ("partial", vol, "shifted_mask.nii.gz"),
        ("outside", vol, "far_mask.nii.gz"),
        ("empty", vol, "empty_mask.nii.gz"),
        ("nan_in", "nan_inside.nii.gz", "mask.nii.gz"),
        ("flat", "flat.nii.gz", "mask.nii.gz"),
        ("mixed", "mixed", "mask.nii.gz"),
        ("missing", "nope.nii.gz", "mask.nii.gz"),
        ("nocell", "", "mask.nii.gz"),
    ]
    table = d / "mri_manifest.csv"
    table.write_text("case_id,t1,mask\n" + "".join(f"{p},{s},{m}\n" for p, s, m in rows))
    return table


#: patient -> what its one-line error must say (patient, sequence or mask, file, the problem).
EXPECTED_ERRORS = {
    "partial": [
        "patient partial sequence 't1'",
        "anatomical.nii",
        "field of view does not cover",
        "shifted_mask",
    ],
    "outside": ["patient outside sequence 't1'", "anatomical.nii", "lies outside the volume", "far_mask"],
    "empty": ["patient empty mask", "empty_mask.nii.gz", "empty (no voxel > 0)"],
    "nan_in": [
        "patient nan_in sequence 't1'",
        "nan_inside.nii.gz",
        "3 NaN/infinite voxel(s) inside the crop",
    ],
    "flat": ["patient flat sequence 't1'", "flat.nii.gz", "a 2-D image of shape (33, 41)"],
    "mixed": ["patient mixed sequence 't1'", "mixed", "holds 2 series", *TWO_UIDS],
    "missing": ["patient missing sequence 't1'", "nope.nii.gz: file not found"],
    "nocell": ["patient nocell sequence 't1': no file", "mri_manifest.csv, line 12, column 't1' is empty"],
}
GOOD = ("good", "dicom", "nan_out")


def _check_rows(rows: dict, out) -> None:
    assert set(rows) == set(GOOD) | set(EXPECTED_ERRORS)
    for p in GOOD:
        assert rows[p][0] == "ok", rows[p][1]
    for p, parts in EXPECTED_ERRORS.items():
        status, error = rows[p]
        assert status == "failed" and "\n" not in error
        for part in parts:
            assert part in error, (p, part, error)
    assert sorted(f.name for f in out.iterdir() if f.suffix == ".h5") == sorted(f"{p}.h5" for p in GOOD)
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no half-written file
    feats = {}
    for p in GOOD:
        with h5py.File(out / f"{p}.h5") as f:
            feats[p] = f["features"][:]
    # The same volume as NIfTI and as a DICOM series, and with NaN outside the crop: one vector.
    assert np.abs(feats["dicom"] - feats["good"]).max() < 1e-5
    assert np.abs(feats["nan_out"] - feats["good"]).max() < 1e-5


def test_every_bad_input_fails_its_patient_only(bad_cohort, tmp_path, model_1ch):
    cases = cases_from_table(bad_cohort)
    assert [c.patient for c in cases][:3] == list(GOOD) and cases[1].sequences["t1"].is_dir()
    rows = process_cases(cases, tmp_path / "out", model_1ch, SMALL)
    _check_rows({r.item: (r.status, r.error) for r in rows}, tmp_path / "out")
    nan_out = next(c for c in cases if c.patient == "nan_out")
    assert preprocess_case(nan_out, SMALL).notes["nonfinite_outside_crop"] == {"t1": 2}


def test_bad_inputs_through_the_cli_manifest(bad_cohort, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["mri", "--table", str(bad_cohort), "--random-weights", "--grid", "32", "--margin-mm", "6"]
    assert main([*argv, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "deref mri: patient nan_in sequence 't1'" in err
    with open(out / "mri_manifest.csv", newline="") as fh:
        manifest = {r["patient"]: (r["status"], r["error"]) for r in csv.DictReader(fh)}
    _check_rows(manifest, out)
    # A rerun skips the finished patients and retries the failed ones.
    assert main([*argv, "--out", str(out)]) == 3
    with open(out / "mri_manifest.csv", newline="") as fh:
        again = {r["patient"]: r["status"] for r in csv.DictReader(fh)}
    assert {p for p, s in again.items() if s == "skipped"} == set(GOOD)
    assert {p for p, s in again.items() if s == "failed"} == set(EXPECTED_ERRORS)


def test_resumable_and_a_crash_leaves_no_partial_bag(anatomical, tmp_path, model_1ch, monkeypatch):
    out = tmp_path / "out"
    case = MriCase("P1", {"t1": anatomical["volume"]}, anatomical["mask"])

    def crash(self, key, value):
        raise KeyboardInterrupt  # the process dies while the bag is being written

    with monkeypatch.context() as m:
        m.setattr(h5py.AttributeManager, "__setitem__", crash)
        with pytest.raises(KeyboardInterrupt):
            process_cases([case], out, model_1ch, SMALL)
    assert not list(out.iterdir())  # neither P1.h5 nor its temporary file
    with monkeypatch.context() as m:
        m.setattr(
            h5py.AttributeManager, "__setitem__", lambda *a: (_ for _ in ()).throw(OSError("disk full"))
        )
        (row,) = process_cases([case], out, model_1ch, SMALL)
    assert row.status == "failed" and "OSError: disk full" in row.error and not list(out.iterdir())
    assert process_cases([case], out, model_1ch, SMALL)[0].status == "ok"
    assert process_cases([case], out, model_1ch, SMALL)[0].status == "skipped"
    (out / "P1.h5").write_bytes(b"truncated by a crash of an older version")
    (row,) = process_cases([case], out, model_1ch, SMALL)
    assert row.status == "ok" and row.patches == 1  # an unreadable bag is redone, not trusted
    with h5py.File(out / "P1.h5") as f:
        assert f["features"].shape == (1, 2048)


def test_outside_a_resampled_field_of_view_does_not_spread_into_the_cube():
    from deref.prepare.mri import _smooth

    x = np.full((20, 20, 20), 5.0, np.float32)
    x[:8] = np.nan  # outside the field of view of a resampled sequence
    y = _smooth(x, [2.0, 2.0, 2.0])
    assert np.isnan(y[:8]).all() and np.abs(y[8:] - 5.0).max() < 1e-5  # neither NaN nor a pull to 0
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[None, None, :], (20, 20, 20)).copy()
    assert np.allclose(_smooth(ramp, [0.0, 0.0, 0.0]), ramp)


def test_cubes_mode_caches_the_preprocessed_cubes_and_fails_bad_patients_alone(bad_cohort, tmp_path, capsys):
    """``deref mri --cubes``: no network; each good patient's file holds exactly the cubes
    ``preprocess_case`` gives (NIfTI and DICOM alike), each bad input one line, resumable."""
    out = tmp_path / "cubes"
    argv = [
        "mri",
        "--table",
        str(bad_cohort),
        "--cubes",
        "--grid",
        "32",
        "--margin-mm",
        "6",
        "--out",
        str(out),
    ]
    assert main(argv) == 3
    with open(out / "mri_manifest.csv", newline="") as fh:
        rows = {r["patient"]: (r["status"], r["error"]) for r in csv.DictReader(fh)}
    assert {p for p, (s, _) in rows.items() if s == "ok"} == set(GOOD)
    for p, parts in EXPECTED_ERRORS.items():
        assert rows[p][0] == "failed" and all(part in rows[p][1] for part in parts), (p, rows[p])
    assert sorted(f.name for f in out.iterdir() if f.suffix == ".h5") == sorted(f"{p}.h5" for p in GOOD)
    cases = {c.patient: c for c in cases_from_table(bad_cohort)}
    cubes = {}
    for p in GOOD:
        with h5py.File(out / f"{p}.h5") as f:
            assert f.attrs["content"] == "cubes" and f.attrs["grid"] == 32 and "features" not in f
            cubes[p] = f["cubes"][()]
            inside = f["inside"][()].astype(bool)
        vol = preprocess_case(cases[p], SMALL)
        np.testing.assert_array_equal(cubes[p], vol.data)
        np.testing.assert_array_equal(inside, vol.inside)
    assert np.abs(cubes["dicom"] - cubes["good"]).max() < 1e-5
    capsys.readouterr()
    assert main(argv) == 3  # a rerun skips the finished patients
    assert "3 skipped" in capsys.readouterr().out
    assert main([*argv, "--random-weights"]) == 1  # cubes run no network: weights make no sense
    assert "--cubes writes the preprocessed cubes" in capsys.readouterr().err
