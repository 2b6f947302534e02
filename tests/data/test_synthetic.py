"""The synthetic demo cohort: layout on disk, slides OpenSlide opens, planted signal, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
from lifelines.utils import concordance_index

from deref.data import synthetic as demo
from deref.errors import DataError
from deref.model.config import GENE_FAMILIES

SMALL = (2048, 1536)  # 8 x 6 patches: fast, still several levels
N_SMALL, SEED_SMALL = 24, 3


def _digest(out: Path) -> dict[str, str]:
    """Hashes of every table and slide file, and of every bag's arrays."""
    h: dict[str, str] = {}
    for name in ("cohort.csv", "signatures.csv", "truth.csv"):
        h[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    for p in sorted((out / "slides").iterdir()):
        h[f"slides/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((out / "bags").iterdir()):
        with h5py.File(p, "r") as f:
            d = hashlib.sha256()
            for key in ("features", "coords", "phenotype"):
                a = f[key][()]
                d.update(key.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
        h[f"bags/{p.name}"] = d.hexdigest()
    return h


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    calls: list[tuple[int, int]] = []
    cohort = demo.make_demo_cohort(
        out,
        N_SMALL,
        SEED_SMALL,
        wsi_dim=16,
        workers=1,
        progress=lambda d, t: calls.append((d, t)),
        slide_size=SMALL,
    )
    return cohort, calls


def _bag(cohort: demo.DemoCohort, slide_id: str) -> dict[str, np.ndarray]:
    with h5py.File(cohort.bags_dir / f"{Path(slide_id).stem}.h5", "r") as f:
        return {
            "features": f["features"][()],
            "coords": f["coords"][()],
            "phenotype": f["phenotype"][()],
            "attrs": dict(f["coords"].attrs),
        }


def _patch_stats(slide: openslide.OpenSlide, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: tissue fraction, mean brightness and mean (blue - red) of its tissue pixels."""
    tissue, bright, purple = [], [], []
    bg = np.asarray(demo.BACKGROUND, dtype=float)
    for x, y in coords:
        a = np.asarray(slide.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"), dtype=float)
        is_tissue = np.abs(a - bg).sum(axis=-1) > 12
        tissue.append(is_tissue.mean())
        t = a[is_tissue]
        bright.append(t.mean())
        purple.append((t[:, 2] - t[:, 0]).mean())
    return np.array(tissue), np.array(bright), np.array(purple)


def _lifelines_cindex(truth: pd.DataFrame) -> float:
    """Harrell's C of the true log-risk by lifelines, an implementation independent of the
    generator's (scikit-survival's): lifelines ranks by predicted survival, hence ``-risk``."""
    return concordance_index(truth["survival_months"], -truth["log_risk"], 1 - truth["censorship"])


# --------------------------------------------------------------------------- planted signal
def test_default_cohort_oracle_cindex_in_target_range():
    sim = demo.simulate_demo()  # n_patients=300, seed=0, default slides; no rendering
    assert 0.75 <= sim.oracle_cindex <= 0.85
    assert 0.40 <= sim.censored_fraction <= 0.55
    assert sim.n_patients == 300 and 310 <= sim.n_slides <= 350  # ~10% of patients with two slides
    per_slide = np.array([lay.n_patches for lay in sim.layouts])
    assert 50 <= per_slide.min() and per_slide.max() <= 168  # a 14 x 12 grid
    t = sim.truth
    assert sim.oracle_cindex == pytest.approx(_lifelines_cindex(t), abs=1e-12)


def test_truth_components_add_up_and_follow_from_the_table(small):
    cohort, _ = small
    t = pd.read_csv(cohort.truth)
    parts = t[[c for c in t.columns if c.startswith("component_")]].sum(axis=1)
    np.testing.assert_allclose(t["log_risk"], parts, atol=1e-9)
    np.testing.assert_allclose(
        t["log_risk"],
        demo.log_risk(t["oncogene_score"], t["suppressor_score"], t["risky_fraction"], t["cytokine_score"]),
        atol=1e-9,
    )
    # Each genomic score is the mean of the family's _rnaseq columns, from the written files.
    table = pd.read_csv(cohort.table).drop_duplicates("case_id").set_index("case_id").loc[t["case_id"]]
    sig = pd.read_csv(cohort.signatures, keep_default_na=False)
    for fam, col in (
        (demo.ONCOGENE_FAMILY, "oncogene_score"),
        (demo.SUPPRESSOR_FAMILY, "suppressor_score"),
        (demo.MODIFIER_FAMILY, "cytokine_score"),
    ):
        genes = [g for g in sig[fam] if g]
        np.testing.assert_allclose(table[[f"{g}_rnaseq" for g in genes]].mean(axis=1), t[col], atol=1e-9)
    # The risky fraction is the share of phenotype-1 patches in the patient's bags.
    tab = pd.read_csv(cohort.table)
    for case, n_patches, n_risky in t[["case_id", "n_patches", "n_risky_patches"]].itertuples(index=False):
        bags = [_bag(cohort, s) for s in tab.loc[tab["case_id"] == case, "slide_id"]]
        assert sum(len(b["phenotype"]) for b in bags) == n_patches
        assert sum(int(b["phenotype"].sum()) for b in bags) == n_risky
    np.testing.assert_allclose(t["risky_fraction"], t["n_risky_patches"] / t["n_patches"])
    # Observed data follow from the latent times; the oracle is recomputable from truth.csv.
    np.testing.assert_array_equal(t["censorship"], (t["followup_time"] < t["event_time"]).astype(int))
    assert cohort.oracle_cindex == pytest.approx(_lifelines_cindex(t), abs=1e-12)
    meta = json.loads(cohort.meta.read_text())
    assert meta["oracle_cindex"] == pytest.approx(cohort.oracle_cindex)
    assert meta["seed"] == SEED_SMALL and meta["n_slides"] == cohort.n_slides


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_whatever_the_workers(small, tmp_path):
    cohort, _ = small
    again = demo.make_demo_cohort(
        tmp_path / "again", N_SMALL, SEED_SMALL, wsi_dim=16, workers=2, slide_size=SMALL
    )
    assert again.oracle_cindex == cohort.oracle_cindex
    assert _digest(again.out_dir) == _digest(cohort.out_dir)


def test_fast_path_gives_the_written_tables(small):
    cohort, _ = small
    sim = demo.simulate_demo(N_SMALL, SEED_SMALL, slide_size=SMALL)
    pd.testing.assert_frame_equal(pd.read_csv(cohort.table), sim.table, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(cohort.truth), sim.truth, check_dtype=False, rtol=1e-12)
    assert sim.oracle_cindex == cohort.oracle_cindex
    other = demo.simulate_demo(N_SMALL, SEED_SMALL + 1, slide_size=SMALL)
    assert not other.table.equals(sim.table)


# --------------------------------------------------------------------------- tables
def test_table_has_the_mcat_layout(small):
    cohort, _ = small
    tab = pd.read_csv(cohort.table)
    assert list(tab.columns[:8]) == list(demo.CLINICAL_COLUMNS)
    assert len(tab) == cohort.n_slides and tab["case_id"].nunique() == cohort.n_patients == N_SMALL
    assert tab["case_id"].str.fullmatch(r"DEMO-\d{4}").all()
    assert tab["slide_id"].str.fullmatch(r"DEMO-\d{4}-0[12]\.svs").all() and tab["slide_id"].is_unique
    assert (tab["slide_id"].str[:9] == tab["case_id"]).all()
    assert set(tab["censorship"]) <= {0, 1} and (tab["survival_months"] > 0).all()
    gcols = [c for c in tab.columns if c.endswith(("_rnaseq", "_cnv"))]
    assert len(gcols) == len(tab.columns) - 8 and 100 <= len(gcols) <= 160
    cnv = tab[[c for c in gcols if c.endswith("_cnv")]]
    assert len(cnv.columns) > 20 and cnv.dtypes.map(pd.api.types.is_integer_dtype).all()
    assert cnv.isin([-2, -1, 0, 1, 2]).all().all() and cnv.stack().nunique() == 5
    assert np.isfinite(tab[gcols].to_numpy(dtype=float)).all()
    # A patient's rows repeat its clinical and genomic values (real MCAT tables do).
    multi = tab[tab.duplicated("case_id", keep=False)]
    assert len(multi) >= 2
    assert (multi.drop(columns="slide_id").groupby("case_id").nunique() == 1).all().all()


def test_signatures_name_the_six_families(small):
    cohort, _ = small
    sig = pd.read_csv(cohort.signatures, keep_default_na=False)
    assert tuple(sig.columns) == tuple(GENE_FAMILIES)
    cols = set(pd.read_csv(cohort.table, nrows=1).columns)
    for fam in GENE_FAMILIES:
        genes = [g for g in sig[fam] if g]
        assert 8 <= len(genes) <= 22 and len(set(genes)) == len(genes)
        assert all(f"{g}_rnaseq" in cols for g in genes)
    assert any(c.endswith("_cnv") and c[:-4] in set(sig.to_numpy().ravel()) for c in cols)


# --------------------------------------------------------------------------- slides and bags
def test_slides_open_with_openslide_as_20x_aperio(small):
    cohort, _ = small
    paths = sorted(cohort.slides_dir.iterdir())
    assert len(paths) == cohort.n_slides
    with openslide.OpenSlide(paths[0]) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert s.level_count >= 2 and s.dimensions == SMALL
        assert s.level_downsamples[1] == pytest.approx(4.0)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.5
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == 0.5
        assert s.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
        assert "thumbnail" in s.associated_images
        region = s.read_region((512, 256), 1, (300, 200))
        assert region.size == (300, 200)


def test_slide_pixels_match_the_rendered_pyramid(small):
    cohort, _ = small
    sim = demo.simulate_demo(N_SMALL, SEED_SMALL, slide_size=SMALL)
    lay = sim.layouts[0]
    levels = demo.render_slide(lay, SEED_SMALL)
    with openslide.OpenSlide(cohort.slides_dir / lay.slide_id) as s:
        for k, lev in enumerate(levels[: s.level_count]):
            got = np.asarray(s.read_region((0, 0), k, s.level_dimensions[k]).convert("RGB"), dtype=float)
            assert np.abs(got - lev).mean() < 4.0  # JPEG Q60


def test_bags_match_the_slides(small):
    cohort, _ = small
    tab = pd.read_csv(cohort.table)
    for sid in tab["slide_id"]:
        b = _bag(cohort, sid)
        n = len(b["coords"])
        assert n > 0 and b["features"].shape == (n, 16) and b["features"].dtype == np.float32
        assert b["phenotype"].shape == (n,) and set(np.unique(b["phenotype"])) <= {0, 1}
        assert b["attrs"]["patch_size"] == 256 and b["attrs"]["patch_level"] == 0
        assert b["attrs"]["mpp"] == 0.5 and b["attrs"]["magnification"] == 20
        c = b["coords"]
        assert (c % 256 == 0).all() and (c >= 0).all()
        assert (c[:, 0] + 256 <= SMALL[0]).all() and (c[:, 1] + 256 <= SMALL[1]).all()
        assert len(np.unique(c, axis=0)) == n


def test_coords_lie_on_tissue_and_risky_patches_look_risky(small):
    cohort, _ = small
    tab = pd.read_csv(cohort.table)
    compared = 0
    for sid in tab["slide_id"]:
        b = _bag(cohort, sid)
        with openslide.OpenSlide(cohort.slides_dir / sid) as s:
            tissue, bright, purple = _patch_stats(s, b["coords"])
            outside = np.asarray(s.read_region((0, 0), 0, (64, 64)).convert("RGB"), dtype=float)
        assert tissue.min() >= 0.4  # patches kept where >= 50% of the patch is tissue
        assert np.abs(outside - demo.BACKGROUND).max() <= 12  # the slide corner is glass
        risky = b["phenotype"] == 1
        if risky.any() and (~risky).any():
            compared += 1
            # Every risky patch is darker than every normal one, and more purple on average.
            assert bright[risky].max() < bright[~risky].min()
            assert purple[risky].mean() > purple[~risky].mean() + 5
    assert compared >= 5


def test_features_carry_the_phenotype(small):
    cohort, _ = small
    proto = demo.phenotype_prototypes(SEED_SMALL, 16)
    feats, phen = [], []
    for sid in pd.read_csv(cohort.table)["slide_id"]:
        b = _bag(cohort, sid)
        feats.append(b["features"])
        phen.append(b["phenotype"])
    f, p = np.concatenate(feats), np.concatenate(phen).astype(bool)
    diff = f[p].mean(axis=0) - f[~p].mean(axis=0)
    assert np.linalg.norm(diff - (proto[1] - proto[0])) < 0.5
    # Projected on the prototype axis the phenotypes barely overlap.
    axis = (proto[1] - proto[0]) / np.linalg.norm(proto[1] - proto[0])
    proj = f @ axis
    assert ((proj > (proj[p].mean() + proj[~p].mean()) / 2) == p).mean() > 0.95


# --------------------------------------------------------------------------- API behaviour
def test_progress_reports_every_slide(small):
    cohort, calls = small
    assert calls[0] == (0, cohort.n_slides) and calls[-1] == (cohort.n_slides, cohort.n_slides)
    assert [d for d, _ in calls] == list(range(cohort.n_slides + 1))


def test_existing_demo_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "d"
    first = demo.make_demo_cohort(out, 6, 1, wsi_dim=8, workers=1, slide_size=(1024, 1024))
    (out / "bags" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already holds a demo cohort"):
        demo.make_demo_cohort(out, 3, 1, wsi_dim=8, workers=1, slide_size=(1024, 1024))
    second = demo.make_demo_cohort(out, 3, 1, wsi_dim=8, workers=1, slide_size=(1024, 1024), overwrite=True)
    assert first.n_slides >= 6 and len(list(out.glob("slides/*.svs"))) == second.n_slides
    assert len(list(out.glob("bags/*.h5"))) == second.n_slides
    assert (out / "bags" / "notes.txt").read_text() == "mine"  # only the generator's own files go


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_patients": 1}, "n_patients"),
        ({"seed": -1}, "seed"),
        ({"wsi_dim": 0}, "wsi_dim"),
        ({"slide_size": (1000, 1024)}, "multiple of 256"),
        ({"slide_size": (512, 1024)}, ">= 1024"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    args = {"n_patients": 4, "seed": 0, "wsi_dim": 8, "workers": 1, "slide_size": (1024, 1024)} | kwargs
    with pytest.raises(DataError, match=message):
        demo.make_demo_cohort(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
