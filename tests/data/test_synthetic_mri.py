"""The synthetic MRI + WSI demo cohort: layout, NIfTI volumes, planted region, truth, determinism."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import openslide
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from deref.data import synthetic_mri as mri
from deref.errors import ConfigError, DataError

SHAPE, SPACING = (24, 24, 20), (2.0, 2.0, 2.5)
SLIDE = (1024, 1024)
N_SMALL, SEED_SMALL = 6, 5
OTHER_SEQUENCES = [s for s in mri.SEQUENCES if s != mri.PLANTED_SEQUENCE]


def _make(out: Path, workers: int = 1, seed: int = SEED_SMALL, **kw) -> mri.MriDemoCohort:
    return mri.make_mri_demo_cohort(
        out,
        N_SMALL,
        seed,
        shape=SHAPE,
        spacing_mm=SPACING,
        slide_size=SLIDE,
        wsi_dim=8,
        workers=workers,
        **kw,
    )


def _digest(out: Path) -> dict[str, str]:
    """Hashes of every table, volume and slide file, and of every bag's arrays."""
    h: dict[str, str] = {}
    files = [out / n for n in ("cohort.csv", "mri_manifest.csv", "truth.csv")]
    files += sorted((out / "mri").rglob("*.nii.gz")) + sorted((out / "slides").iterdir())
    for p in files:
        h[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((out / "bags").iterdir()):
        with h5py.File(p, "r") as f:
            d = hashlib.sha256()
            for key in ("features", "coords", "phenotype"):
                d.update(key.encode() + f[key][()].tobytes())
        h[f"bags/{p.name}"] = d.hexdigest()
    return h


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    calls: list[tuple[int, int]] = []
    cohort = _make(tmp_path_factory.mktemp("mri_demo") / "cohort", progress=lambda d, t: calls.append((d, t)))
    return cohort, calls


@pytest.fixture(scope="module")
def sim160():
    return mri.simulate_mri_demo(160, 0)


def _case_files(cohort: mri.MriDemoCohort, case_id: str) -> dict[str, nib.Nifti1Image]:
    folder = cohort.mri_dir / case_id
    return {n: nib.load(folder / f"{n}.nii.gz") for n in (*mri.SEQUENCES, "mask", "planted")}


def test_layout_tables_and_manifest(small):
    cohort, calls = small
    out = cohort.out_dir
    table = pd.read_csv(cohort.table)
    assert list(table.columns) == ["case_id", "slide_id", "survival_months", "censorship", "age", "is_female"]
    assert not [c for c in table.columns if c.endswith(("_rnaseq", "_cnv", "_mut"))]
    assert len(table) == cohort.n_slides >= N_SMALL and table["case_id"].nunique() == N_SMALL
    assert sorted(p.name for p in cohort.slides_dir.iterdir()) == sorted(table["slide_id"])
    assert sorted(p.stem for p in cohort.bags_dir.iterdir()) == sorted(
        Path(s).stem for s in table["slide_id"]
    )
    manifest = pd.read_csv(cohort.manifest)
    assert list(manifest.columns) == ["case_id", *mri.SEQUENCES, "mask"]
    assert list(manifest["case_id"]) == sorted(table["case_id"].unique())
    for _, row in manifest.iterrows():
        for col in (*mri.SEQUENCES, "mask"):
            assert row[col] == f"mri/{row['case_id']}/{col}.nii.gz"
            assert (out / row[col]).is_file()
        assert (out / "mri" / row["case_id"] / "planted.nii.gz").is_file()
    meta = json.loads(cohort.meta.read_text())
    assert (
        meta["n_patients"] == N_SMALL and meta["shape"] == list(SHAPE) and meta["spacing_mm"] == list(SPACING)
    )
    assert meta["planted_sequence"] == "hepatobiliary" and meta["sequences"] == list(mri.SEQUENCES)
    assert meta["cindex"] == pytest.approx(cohort.cindex) and meta["oracle_cindex"] == cohort.oracle_cindex
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "demo.json")
    assert cohort.meta.stat().st_mtime_ns >= newest  # written last
    total = cohort.n_slides + N_SMALL
    assert calls[0] == (0, total) and calls[-1] == (total, total) and len(calls) == total + 1


def test_same_seed_same_files_whatever_the_workers(small, tmp_path):
    cohort, _ = small
    again = _make(tmp_path / "again", workers=2)
    assert _digest(again.out_dir) == _digest(cohort.out_dir)
    params = mri.case_params(SEED_SMALL + 1, 0)
    assert params != mri.case_params(SEED_SMALL, 0)
    other, _ = mri.render_case(params, SEED_SMALL + 1, SHAPE, SPACING)
    mine = nib.load(cohort.mri_dir / "LC-0001" / "hepatobiliary.nii.gz").get_fdata()
    assert not np.array_equal(other["hepatobiliary"], mine)


def test_existing_cohort_needs_overwrite(small, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(small[0].out_dir, out)
    with pytest.raises(DataError, match="overwrite"):
        _make(out)
    (out / "mri" / "LC-0001" / "t2.nii.gz").write_bytes(b"stale")
    (out / "demo.json").unlink()  # an interrupted build
    again = _make(out, overwrite=True)
    assert _digest(again.out_dir) == _digest(small[0].out_dir)
    assert json.loads(again.meta.read_text()) == json.loads(small[0].meta.read_text())


def test_volumes_are_ras_nifti_with_the_asked_grid(small):
    cohort, _ = small
    expected = mri.ras_affine(SHAPE, SPACING)
    for case_id in pd.read_csv(cohort.manifest)["case_id"]:
        imgs = _case_files(cohort, case_id)
        for name, img in imgs.items():
            assert img.shape == SHAPE, (case_id, name)
            assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
            assert img.header.get_zooms() == pytest.approx(SPACING)
            np.testing.assert_allclose(img.affine, expected, atol=1e-6)
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            want = np.float32 if name in mri.SEQUENCES else np.uint8
            assert img.get_data_dtype() == want, (case_id, name)
        for name in mri.SEQUENCES:
            data = np.asarray(imgs[name].dataobj)
            assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 100
        mask = np.asarray(imgs["mask"].dataobj)
        assert set(np.unique(mask)) == {0, 1}


def test_sequences_have_different_contrasts(small):
    """Mean tumour / mean liver intensity follows each sequence's contrast (bright or dark)."""
    cohort, _ = small
    imgs = _case_files(cohort, "LC-0002")
    geom = mri.case_geometry(mri.case_params(SEED_SMALL, 1), SHAPE, SPACING)
    mask = np.asarray(imgs["mask"].dataobj).astype(bool)
    np.testing.assert_array_equal(geom.tumour, mask)
    liver = geom.labels == mri.LIVER
    ratio = {}
    for name in mri.SEQUENCES:
        d = np.asarray(imgs[name].dataobj)
        ratio[name] = d[mask].mean() / d[liver].mean()
    assert ratio["arterial"] > 1.5 and ratio["t2"] > 1.5  # hyper-enhancing / T2-bright tumour
    assert ratio["hepatobiliary"] < 0.6 and ratio["delay"] < 0.8 and ratio["t1"] < 0.8


def _world_z(img: nib.Nifti1Image, voxels: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.nonzero(voxels), axis=1)
    return nib.affines.apply_affine(img.affine, ijk)[:, 2]


def test_planted_region_is_in_the_superior_half_of_the_tumour(small):
    cohort, _ = small
    truth = pd.read_csv(cohort.truth).set_index("case_id")
    for case_id in truth.index:
        imgs = _case_files(cohort, case_id)
        mask = np.asarray(imgs["mask"].dataobj).astype(bool)
        planted = np.asarray(imgs["planted"].dataobj).astype(bool)
        assert planted.any() and not (planted & ~mask).any(), case_id
        centroid = _world_z(imgs["mask"], mask).mean()
        assert _world_z(imgs["planted"], planted).min() > centroid, case_id
        assert planted.sum() == truth.loc[case_id, "planted_voxels"]
        assert mask.sum() == truth.loc[case_id, "tumour_voxels"]
        assert truth.loc[case_id, "planted_fraction"] == pytest.approx(planted.sum() / mask.sum())
        assert planted.sum() <= (_world_z(imgs["mask"], mask) > centroid).sum()


def test_planted_region_is_visible_in_the_hepatobiliary_sequence_only(small):
    cohort, _ = small
    for case_id in ("LC-0001", "LC-0004"):
        imgs = _case_files(cohort, case_id)
        mask = np.asarray(imgs["mask"].dataobj).astype(bool)
        planted = np.asarray(imgs["planted"].dataobj).astype(bool)
        rest = mask & ~planted
        for name in mri.SEQUENCES:
            d = np.asarray(imgs[name].dataobj)
            ratio = d[planted].mean() / d[rest].mean()
            if name == mri.PLANTED_SEQUENCE:
                assert ratio < 0.5, (case_id, name, ratio)  # 0.15 / 0.45 planted
            else:
                assert abs(ratio - 1.0) < 0.15, (case_id, name, ratio)  # bias field, texture


def test_planting_changes_only_hepatobiliary_voxels_of_the_region():
    params = mri.case_params(SEED_SMALL, 2)
    with_region, geom = mri.render_case(params, SEED_SMALL, SHAPE, SPACING)
    without, _ = mri.render_case(params, SEED_SMALL, SHAPE, SPACING, plant=False)
    for name in OTHER_SEQUENCES:
        np.testing.assert_array_equal(with_region[name], without[name])
    hbp, base = with_region[mri.PLANTED_SEQUENCE], without[mri.PLANTED_SEQUENCE]
    changed = hbp != base
    assert changed.sum() > 0.9 * geom.planted.sum() and not (changed & ~geom.planted).any()
    assert (hbp[geom.planted] < base[geom.planted]).mean() > 0.95
    assert np.median(hbp[geom.planted] / base[geom.planted]) == pytest.approx(0.15 / 0.45, abs=0.08)


def test_geometry_tumour_in_organ_and_params_independent_of_cohort_size():
    for i in range(12):
        geom = mri.case_geometry(mri.case_params(7, i), mri.DEFAULT_SHAPE, mri.DEFAULT_SPACING_MM)
        assert geom.tumour.sum() > 100 and not (geom.tumour & ~geom.organ).any()
        edge = np.zeros_like(geom.tumour)
        edge[[0, -1]] = edge[:, [0, -1]] = edge[:, :, [0, -1]] = True
        assert not (geom.tumour & edge).any()  # the tumour lies inside the field of view
    a, b = mri.simulate_mri_demo(4, 3, slide_size=SLIDE), mri.simulate_mri_demo(6, 3, slide_size=SLIDE)
    assert a.cases == b.cases[:4]


def test_manifest_is_read_by_prepare_mri(small):
    from deref.prepare.mri import cases_from_table

    cohort, _ = small
    cases = cases_from_table(cohort.manifest)
    assert [c.patient for c in cases] == [f"LC-{i:04d}" for i in range(1, N_SMALL + 1)]
    for c in cases:
        assert list(c.sequences) == list(mri.SEQUENCES)
        assert all(Path(p).is_file() for p in c.sequences.values())
        assert Path(c.mask) == cohort.mri_dir / c.patient / "mask.nii.gz"


def test_truth_reproduces_the_formula_from_the_files(small):
    cohort, _ = small
    truth = pd.read_csv(cohort.truth)
    table = pd.read_csv(cohort.table)
    risky: dict[str, list[int]] = {}
    for _, row in table.iterrows():
        with h5py.File(cohort.bags_dir / f"{Path(row['slide_id']).stem}.h5", "r") as f:
            ph = f["phenotype"][()]
            assert f["features"].shape == (ph.size, 8)
        acc = risky.setdefault(row["case_id"], [0, 0])
        acc[0] += int(ph.sum())
        acc[1] += int(ph.size)
    r = np.array([risky[c][0] / risky[c][1] for c in truth["case_id"]])
    np.testing.assert_allclose(truth["risky_fraction"], r, rtol=1e-12)
    f = truth["planted_voxels"] / truth["tumour_voxels"]
    f0 = 0.02 + 0.43 * 0.5
    eta = 9.0 * (f - f0) + 5.0 * (r - 0.35) + 35.0 * (f - f0) * (r - 0.35)
    np.testing.assert_allclose(truth["log_risk"], eta, rtol=1e-9, atol=1e-12)
    parts = truth[["component_mri", "component_wsi", "component_interaction"]].sum(axis=1)
    np.testing.assert_allclose(parts, truth["log_risk"], atol=1e-12)
    np.testing.assert_allclose(truth["event_time"], mri.event_times(eta, _exp_draws(len(truth))), rtol=1e-12)
    per_case = table.drop_duplicates("case_id").set_index("case_id").loc[truth["case_id"]]
    np.testing.assert_allclose(per_case["survival_months"], truth["survival_months"])


def _exp_draws(n: int) -> np.ndarray:
    """The unit-exponential draws of the survival stream (its first draws), independently re-derived."""
    ss = np.random.SeedSequence([SEED_SMALL, 105, 2])
    return np.random.default_rng(ss).exponential(1.0, n)


def test_event_times_follow_the_baseline_hazard():
    eta = np.array([-2.0, 0.0, 1.5])
    e = np.array([0.3, 1.0, 2.5])
    t = mri.event_times(eta, e)
    cum = mri.HAZARD_SCALE * ((t - mri.T_LO) / (mri.T_HI - t)) ** mri.HAZARD_SHAPE * np.exp(eta)
    np.testing.assert_allclose(cum, e, rtol=1e-10)


def test_cindices_match_lifelines(sim160):
    t = sim160.truth
    event = 1 - t["censorship"]
    for key, col in (("oracle", "log_risk"), ("mri", "component_mri"), ("wsi", "component_wsi")):
        want = concordance_index(t["survival_months"], -t[col], event)
        assert sim160.cindex[key] == pytest.approx(want, abs=1e-9), key
    both = concordance_index(t["survival_months"], -(t["component_mri"] + t["component_wsi"]), event)
    assert sim160.cindex["no_interaction"] == pytest.approx(both, abs=1e-9)
    c = sim160.cindex
    assert 0.75 <= c["oracle"] <= 0.82
    assert 0.6 < c["mri"] < c["oracle"] - 0.07 and 0.6 < c["wsi"] < c["oracle"] - 0.07
    assert max(c["mri"], c["wsi"]) < c["no_interaction"] < c["oracle"]


def test_survival_is_shaped_like_the_papers_cohort(sim160):
    t = sim160.truth
    assert sim160.n_patients == 160 and int(t["censorship"].sum()) == 2 and sim160.censored_fraction == 0.0125
    months = t["survival_months"]
    assert mri.T_LO <= months.min() < 3.0 and 30.0 < months.max() <= mri.T_HI
    assert 16.0 <= months.median() <= 23.0
    cens = t[t["censorship"] == 1]
    assert (cens["survival_months"] < cens["event_time"]).all()
    big = mri.simulate_mri_demo(400, 1, shape=(16, 16, 16), slide_size=SLIDE).truth
    assert int(big["censorship"].sum()) == 5
    assert 16.0 <= big["survival_months"].median() <= 23.0


def test_planted_fraction_and_terms_spread(sim160):
    t = sim160.truth
    assert 0.0 < t["planted_fraction"].min() and t["planted_fraction"].max() <= 0.5
    assert t["planted_fraction"].mean() == pytest.approx(mri.F0, abs=0.03)
    assert 0.7 < t["component_mri"].std() < 1.4 and 0.7 < t["component_wsi"].std() < 1.4
    assert abs(np.corrcoef(t["planted_fraction"], t["risky_fraction"])[0, 1]) < 0.2


def test_slides_open_with_openslide(small):
    cohort, _ = small
    table = pd.read_csv(cohort.table)
    with openslide.OpenSlide(cohort.slides_dir / table["slide_id"][0]) as slide:
        assert slide.dimensions == SLIDE
        assert slide.properties.get("openslide.vendor") == "aperio"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_patients": 1}, "n_patients"),
        ({"n_patients": 2.5}, "n_patients"),
        ({"seed": -1}, "seed"),
        ({"shape": (8, 24, 24)}, "shape"),
        ({"shape": (24, 24)}, "shape"),
        ({"shape": "big"}, "shape"),
        ({"spacing_mm": (0.0, 1.0, 1.0)}, "spacing_mm"),
        ({"spacing_mm": (1.0, float("nan"), 1.0)}, "spacing_mm"),
        ({"slide_size": (1000, 1024)}, "slide_size"),
        ({"wsi_dim": 1}, "wsi_dim"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_name_themselves(tmp_path, kwargs, name):
    args = {"n_patients": 3, "shape": SHAPE, "spacing_mm": SPACING, "slide_size": SLIDE, **kwargs}
    with pytest.raises(ConfigError, match=name):
        mri.make_mri_demo_cohort(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
