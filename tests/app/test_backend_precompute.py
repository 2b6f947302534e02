"""The dashboard's backend on a precomputed run: the Patient page's model output, the Attention
page's thumbnail and galleries come from the run's explanation cache without loading a model or
opening the slide, and equal what the backend computes without the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from deref.cli.main import main as cli

CASES = ("DEMO-0001", "DEMO-0004")


@pytest.fixture(scope="module")
def precomputed(small_demo, tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("backend-precompute") / "run"
    shutil.copytree(small_demo / "run", run, ignore=shutil.ignore_patterns("explanations"))
    assert cli(["precompute", str(run), "--patients", ",".join(CASES), "--methods", "grad"]) == 0
    return run


def _no_model(*args, **kwargs):
    raise AssertionError("the backend loaded a model")


def _no_slide(*args, **kwargs):
    raise AssertionError("the backend opened the slide")


def test_patient_view_reads_the_precomputed_output(precomputed, small_demo, monkeypatch):
    from app import backend

    src = backend.Source(str(precomputed), slide_dir=str(small_demo / "cohort" / "slides"))
    backend.clear_all()
    with monkeypatch.context() as m:
        m.setattr(backend, "loaded_run", _no_model)
        cached = {(c, d): backend.patient_view(*src.key, c, d) for c in CASES for d in (None, "m1", "wsi")}
    backend.clear_all()
    shutil.rmtree(precomputed / "explanations" / "fold_0", ignore_errors=True)  # some misses
    for (case, drop), v in cached.items():
        new = backend.patient_view(*src.key, case, drop)  # computed by the run's models
        assert (v.fold, v.segments, v.slide_ids, v.patch_attrs) == (
            new.fold,
            new.segments,
            new.slide_ids,
            new.patch_attrs,
        )
        assert (v.bin_edges, v.horizon, v.feature_names, v.m1_names) == (
            new.bin_edges,
            new.horizon,
            new.feature_names,
            new.m1_names,
        )
        assert v.risk == pytest.approx(new.risk, abs=1e-6)
        for name in (
            "hazards",
            "survival",
            "risk_per_s",
            "survival_per_s",
            "features",
            "gate",
            "wsi_attention",
            "coords",
            "slide_index",
        ):
            a, b = getattr(v, name), getattr(new, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    assert cached[(CASES[0], "wsi")].coords is None and cached[(CASES[0], None)].coords is not None


def test_thumbnail_and_galleries_come_from_the_store(precomputed, small_demo, monkeypatch):
    import deref.explain.patches
    import deref.slides
    from app import backend

    slides = small_demo / "cohort" / "slides"
    backend.clear_all()
    v = backend.patient_view(str(precomputed), None, None, CASES[0])
    att = backend.patient_attribution(str(precomputed), None, None, CASES[0], "grad", v.fold, str(slides))
    path = str(slides / v.slide_ids[0])
    geo = backend.patch_geometry(v.patch_attrs[0])
    scores = att.patch_scores["share"]
    backend.clear_all()
    with monkeypatch.context() as m:
        m.setattr(deref.slides, "read_thumbnail", _no_slide)
        m.setattr(deref.slides, "read_regions", _no_slide)
        m.setattr(deref.explain.patches, "read_regions", _no_slide)
        thumb = backend.thumbnail(path, run_dir=str(precomputed))
        top = backend.top_patches(path, -scores, v.coords, 8, geo.read_size, geo.level, str(precomputed))
        one = backend.patch_view(path, scores, v.coords, 3, geo.read_size, geo.level, str(precomputed))
    backend.clear_all()
    ref = backend.thumbnail(path)
    assert thumb.error is None and thumb.level0_dims == ref.level0_dims
    assert np.array_equal(thumb.image, ref.image)
    want = backend.top_patches(path, -scores, v.coords, 8, geo.read_size, geo.level)
    assert [(p.index, p.score, p.x, p.y) for p in top] == [(p.index, p.score, p.x, p.y) for p in want]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(top, want))
    ref_one = backend.patch_view(path, scores, v.coords, 3, geo.read_size, geo.level)
    assert one.index == ref_one.index and np.array_equal(np.asarray(one.image), np.asarray(ref_one.image))


def _page_problems(at) -> list[str]:
    """Exceptions, errors, and warnings that say a model was loaded or a slide opened (the demo's
    own warnings, such as its 2-epoch curves being worse than the null, are not problems)."""
    warned = [str(w.value) for w in at.warning]
    bad = ("loaded a model", "opened the slide", "Slide not available", "AssertionError")
    return (
        [str(e.value) for e in at.exception]
        + [str(e.value) for e in at.error]
        + [w for w in warned if any(b in w for b in bad)]
    )


def test_precomputed_pages_open_without_loading_a_model(
    make_app, app_env, precomputed, small_demo, monkeypatch
):
    """The Patient and Attention pages of a precomputed patient: every model call and every slide
    read is served from the run's explanation cache."""
    import deref.explain.patches
    import deref.slides
    from app import backend

    app_env(DEREF_RUN=str(precomputed), DEREF_SLIDE_DIR=str(small_demo / "cohort" / "slides"))
    backend.clear_all()
    monkeypatch.setattr(backend, "loaded_run", _no_model)
    monkeypatch.setattr(deref.slides, "read_thumbnail", _no_slide)
    monkeypatch.setattr(deref.explain.patches, "read_regions", _no_slide)
    at = make_app("views/patient.py", query={"patient": CASES[1]})
    assert not _page_problems(at), _page_problems(at)
    assert at.selectbox(key="patient_select").value == CASES[1]
    assert len(at.get("plotly_chart")) >= 3  # curves, gate, features, contributions: all drawn
    at.switch_page("views/attention.py").run()
    assert not _page_problems(at), _page_problems(at)
    assert len(at.get("image")) >= 2  # the inspected patch and the gallery, from the store
    backend.clear_all()
