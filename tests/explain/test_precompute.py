"""``deref precompute``: every patient's dashboard results in the run's explanation cache.

On a private copy of the small demo run (without the explanations other tests wrote into the
shared one), a few patients spanning several folds: after ``deref precompute`` every patient's
model outputs, attributions, thumbnails and gallery patches are cache hits with the fold models'
forward patched to raise, their numbers equal uncached calls, a second run skips everyone, and a
patient whose bag file is gone fails alone (exit status 3). A CLAM-SB run (no decoupled features)
precomputes its attention galleries the same way.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deref.cli.main import main as cli
from deref.explain.attribution import explain_patient, find_slide_paths
from deref.explain.patches import patch_geometry, top_k_patches
from deref.explain.precompute import (
    CANVAS_PX,
    OUTPUT_METHODS,
    PrecomputeSettings,
    cached_patches_at,
    cached_top_patches,
    load_attribution,
    load_patient_output,
    load_thumbnail,
    manifest_path,
    page_maps,
    patient_output,
    precompute_patient,
)
from deref.inference import Predictor
from deref.runs import RunDir
from deref.slides import read_thumbnail

PATIENTS = ("DEMO-0001", "DEMO-0002", "DEMO-0003", "DEMO-0004", "DEMO-0005", "DEMO-0006")
STEPS = "4"  # IG points: plumbing only (the numbers are compared at the same setting)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _manifest(run: Path) -> pd.DataFrame:
    return pd.read_csv(manifest_path(run), dtype={"patient": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def run(small_demo, tmp_path_factory) -> Path:
    """A private copy of the small demo run, precomputed for PATIENTS by the command."""
    dst = tmp_path_factory.mktemp("precompute") / "run"
    shutil.copytree(small_demo / "run", dst, ignore=shutil.ignore_patterns("explanations"))
    assert cli(["precompute", str(dst), "--patients", ",".join(PATIENTS), "--steps", STEPS]) == 0
    return dst


def _forward_raises(predictor: Predictor) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a cache hit ran the model")

    for k in predictor.run.fold_indices:
        predictor.fold(k).model.forward = boom


@pytest.fixture(scope="module")
def blocked(run):
    """A predictor whose fold models raise when run, and the run's cohort."""
    predictor = Predictor.from_run(run, device="cpu")
    _forward_raises(predictor)
    return predictor, predictor.load_cohort()


def test_the_command_writes_a_manifest_row_per_patient(run):
    m = _manifest(run)
    assert m["patient"].tolist() == list(PATIENTS)
    assert set(m["status"]) == {"ok"} and (m["patches"] > 0).all() and not m["error"].any()
    folds = {RunDir(run).info.validation_folds()[c] for c in PATIENTS}
    assert len(folds) >= 2  # the patients span several fold models


def _galleries(po, att, run):
    """``(slide path, scores, coords, geometry)`` of every map and slide the Attention page shows."""
    maps = page_maps(po, None if att is None else att.patch_scores, "grad")
    paths = find_slide_paths(po.slide_ids, None, Path(RunDir(run).info.data.table).parent / "slides")
    for si, path in enumerate(paths):
        sel = np.ones(po.n_patches, bool) if po.slide_index is None else po.slide_index == si
        geo = patch_geometry(po.patch_attrs[si] if si < len(po.patch_attrs) else po.patch_attrs[0])
        for scores in maps.values():
            yield path, np.asarray(scores, float)[sel], po.coords[sel], geo


def test_every_result_is_a_cache_hit_without_running_the_model(run, blocked):
    predictor, cohort = blocked
    with pytest.raises(AssertionError, match="ran the model"):  # the patch bites on a miss
        patient_output(predictor, cohort, PATIENTS[0], use_cache=False)
    for case in PATIENTS:
        for drop in OUTPUT_METHODS:
            po = patient_output(predictor, cohort, case, drop=drop)
            assert po.from_cache and po.drop == drop
            assert load_patient_output(RunDir(run), cohort, case, drop=drop) is not None  # no predictor
        for method in ("grad", "ig"):
            att = explain_patient(predictor, cohort, case, method=method, steps=int(STEPS))
            assert att.from_cache, (case, method)
            lean = load_attribution(
                RunDir(run), cohort, case, method=method, steps=int(STEPS)
            )  # no predictor
            assert lean is not None and lean.targets == att.targets and lean.slide_paths == att.slide_paths
            assert all(np.array_equal(lean.patch_scores[t], att.patch_scores[t]) for t in att.targets)
        po = patient_output(predictor, cohort, case)
        grad = explain_patient(predictor, cohort, case, method="grad")
        n_maps = 0
        for path, scores, coords, geo in _galleries(po, grad, run):
            assert load_thumbnail(run, path, CANVAS_PX) is not None
            k = min(24, len(scores))
            for order in (scores, -scores):  # the page's "highest" and "lowest"
                views = cached_top_patches(run, path, order, coords, k, geo.read_size, geo.level)
                assert views is not None and len(views) == k
            n_maps += 1
        assert n_maps == 7  # three class-token maps, four target maps (not the genomics-specific one)


def test_cached_numbers_equal_uncached_calls(run, blocked):
    """Outputs against ``predict_patient`` and an uncached ``patient_output``; attributions,
    thumbnails and patch pixels against the same calls without the cache (1e-6)."""
    cached_pred, cohort = blocked
    fresh = Predictor.from_run(run, device="cpu")
    for case in PATIENTS[:2]:
        for drop in OUTPUT_METHODS:
            hit = patient_output(cached_pred, cohort, case, drop=drop)
            new = patient_output(fresh, cohort, case, drop=drop, use_cache=False)
            out, _ = fresh.predict_patient(cohort, case, drop=drop)
            assert hit.risk == pytest.approx(float(out.risk[0]), abs=1e-6)
            np.testing.assert_allclose(hit.survival, out.survival[0].numpy(), atol=1e-6)
            np.testing.assert_allclose(hit.hazards, out.hazards[0].numpy(), atol=1e-6)
            for name in ("risk_per_s", "survival_per_s", "features", "gate", "wsi_attention", "coords"):
                a, b = getattr(hit, name), getattr(new, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
            assert (hit.segments, hit.slide_ids, hit.patch_attrs) == (
                new.segments,
                new.slide_ids,
                new.patch_attrs,
            )
        for method in ("grad", "ig"):
            hit = explain_patient(cached_pred, cohort, case, method=method, steps=int(STEPS))
            new = explain_patient(fresh, cohort, case, method=method, steps=int(STEPS), use_cache=False)
            for t in new.targets:
                np.testing.assert_allclose(hit.patch_scores[t], new.patch_scores[t], atol=1e-6)
                np.testing.assert_allclose(hit.family_scores[t], new.family_scores[t], atol=1e-6)
        po = patient_output(cached_pred, cohort, case)
        grad = explain_patient(cached_pred, cohort, case, method="grad")
        for path, scores, coords, geo in _galleries(po, grad, run):
            img, dims = load_thumbnail(run, path, CANVAS_PX)
            ref, ref_dims = read_thumbnail(path, CANVAS_PX)
            assert dims == ref_dims and np.array_equal(img, np.asarray(ref))
            got = cached_top_patches(run, path, scores, coords, 24, geo.read_size, geo.level)
            want = top_k_patches(scores, coords, 24, geo.read_size, geo.level, path)
            assert [(v.index, v.score, v.x, v.y) for v in got] == [(v.index, v.score, v.x, v.y) for v in want]
            assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(got, want))
            one = cached_patches_at(run, path, scores, coords, [want[0].index], geo.read_size, geo.level)
            assert one[0].index == want[0].index and np.array_equal(
                np.asarray(one[0].image), np.asarray(want[0].image)
            )
            break  # one map per patient: the patches are shared by every map


def test_a_second_run_skips_every_patient(run):
    assert cli(["precompute", str(run), "--patients", ",".join(PATIENTS), "--steps", STEPS]) == 0
    assert set(_manifest(run)["status"]) == {"skipped"}


def test_a_patient_without_its_bag_fails_alone(run, small_demo, tmp_path):
    """Another bag folder (every key changes: the others are computed again) without one bag."""
    cohort = tmp_path / "cohort"
    shutil.copytree(small_demo / "cohort" / "bags", cohort / "bags")
    shutil.copy(small_demo / "cohort" / "cohort.csv", cohort / "cohort.csv")
    (cohort / "bags" / "DEMO-0003-01.h5").unlink()
    args = ["precompute", str(run), "--table", str(cohort / "cohort.csv"), "--bags", str(cohort / "bags")]
    args += ["--slides", str(small_demo / "cohort" / "slides"), "--patients", "DEMO-0001,DEMO-0003,DEMO-0002"]
    assert cli([*args, "--methods", "grad"]) == 3
    m = _manifest(run).set_index("patient")
    assert m.loc["DEMO-0003", "status"] == "failed"
    assert m.loc["DEMO-0003", "error"].startswith("DEMO-0003: ") and "\n" not in m.loc["DEMO-0003", "error"]
    assert m.loc[["DEMO-0001", "DEMO-0002"], "status"].tolist() == ["ok", "ok"]


def test_settings_are_checked():
    from deref.errors import InputError

    with pytest.raises(InputError, match="unknown attribution method"):
        PrecomputeSettings(methods=("grad", "shap"))
    with pytest.raises(InputError, match="top_k"):
        PrecomputeSettings(top_k=0)
    assert PrecomputeSettings(methods="ig").methods == ("ig",)


def test_a_peer_run_precomputes_its_attention_galleries(small_demo, tmp_path):
    """CLAM-SB (no decoupled features): outputs, thumbnails and the top patches of its own
    attention, as the Attention page ranks them; no attribution entry."""
    from tests.test_peers_e2e import _train

    peer = tmp_path / "clam"
    _train(small_demo, "clam_sb", peer)
    predictor = Predictor.from_run(peer, device="cpu")
    cohort = predictor.load_cohort()
    settings = PrecomputeSettings(methods=("grad",))
    rows = [precompute_patient(predictor, cohort, c, settings) for c in PATIENTS[:2]]
    assert [r.status for r in rows] == ["ok", "ok"], rows
    _forward_raises(predictor)
    for case in PATIENTS[:2]:
        assert precompute_patient(predictor, cohort, case, settings).status == "skipped"
        po = patient_output(predictor, cohort, case)
        maps = list(_galleries(po, None, peer))
        assert maps and po.wsi_attention is not None
        for path, scores, coords, geo in maps:
            assert cached_top_patches(peer, path, scores, coords, 24, geo.read_size, geo.level) is not None
    assert not list((peer / "explanations").rglob("*__grad__*.npz"))


def test_an_output_round_trips_through_the_cache_with_every_field(tmp_path):
    """Names a peer gives (attention rows, router columns, co-attention) and missing arrays
    survive the plain-file cache."""
    from deref.explain.cache import ExplanationCache
    from deref.explain.precompute import PatientOutput, _output_from_cache, _output_to_cache

    po = PatientOutput(
        case_id="C-1",
        fold=2,
        drop="m1",
        risk=-1.25,
        risk_std=0.5,
        hazards=np.array([0.1, 0.2], np.float32),
        survival=np.array([0.9, 0.7], np.float32),
        segments=(2, 4),
        risk_per_s=np.array([-1.0, -1.5], np.float32),
        survival_per_s=None,
        features=None,
        feature_names=(),
        gate=np.array([0.25, 0.75], np.float32),
        wsi_attention=np.ones((3, 5), np.float32),
        coords=np.arange(10, dtype=np.int64).reshape(5, 2),
        slide_index=None,
        slide_ids=["s1.svs"],
        patch_attrs=[{"patch_size": 256, "downsample": [1.0, 1.0]}],
        model_type="clam_mb",
        attention_labels=("branch 1", "branch 2", "branch 3"),
        co_attention=np.zeros((2, 5), np.float32),
        gate_labels=("expert a", "expert b"),
        m1_names=("fam 1", "fam 2"),
    )
    cache = ExplanationCache(tmp_path)
    key = cache.key(fold=2, case_id="C-1", method="output-m1", settings={}, weights=__file__)
    cache.save(key, *_output_to_cache(po))
    back = _output_from_cache(*cache.load(key))
    assert back.from_cache
    for f in dataclasses.fields(PatientOutput):
        a, b = getattr(po, f.name), getattr(back, f.name)
        if f.name == "from_cache":
            continue
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b and type(a) is type(b), f.name
