"""Every dashboard page driven through streamlit.testing.v1.AppTest on the small demo."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def problems(at) -> list[str]:
    """Exceptions and error messages on the page (main area and sidebar)."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}; metrics are {[m.label for m in at.metric]}")


def frame(at, *columns: str) -> pd.DataFrame:
    """The first table on the page with these columns (plain st.dataframe has no key in AppTest)."""
    for df in at.dataframe:
        value = df.value
        if all(c in value.columns for c in columns):
            return value
    raise AssertionError(f"no table with columns {columns}")


def predictions(demo: Path) -> pd.DataFrame:
    return pd.read_csv(demo / "run" / "predictions.csv", dtype={"case_id": str})


# ------------------------------------------------------------------------------------ pages
def test_cohort_page_lists_every_patient(make_app, small_demo):
    at = make_app()
    assert not problems(at)
    pred = predictions(small_demo)
    assert metric(at, "Patients") == str(len(pred))
    assert metric(at, "Events") == str(int(pred["event"].sum()))
    table = at.dataframe(key="cohort_table").value
    assert set(table["case_id"]) == set(pred["case_id"])
    assert {"risk", "risk_group", "fold", "modalities", "age"} <= set(table.columns)
    assert len(at.get("plotly_chart")) >= 2  # risk distribution + risk vs time
    # search narrows the table
    at.text_input(key="cohort_search").input(pred["case_id"].iloc[3]).run()
    assert list(at.dataframe(key="cohort_table").value["case_id"]) == [pred["case_id"].iloc[3]]
    # clicking a row (the table's selection state) opens that patient's page
    at.session_state["cohort_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert [t.value for t in at.title] == ["Patient"]
    assert at.selectbox(key="patient_select").value == pred["case_id"].iloc[3]


def test_patient_page_numbers_follow_the_selected_patient(make_app, small_demo):
    pred = predictions(small_demo).set_index("case_id")
    at = make_app("views/patient.py")
    assert not problems(at)
    first = at.selectbox(key="patient_select").value
    shown = (metric(at, "Risk"), metric(at, "Percentile in the cohort"), metric(at, "Observed (months)"))
    # the page recomputes the held-out fold model's risk: it must match predictions.csv
    assert float(shown[0]) == pytest.approx(pred.loc[first, "risk"], abs=1e-4)
    other = pred.index[pred.index != first][0]
    at.selectbox(key="patient_select").select(other).run()
    assert not problems(at)
    now = (metric(at, "Risk"), metric(at, "Percentile in the cohort"), metric(at, "Observed (months)"))
    assert now != shown
    assert float(now[0]) == pytest.approx(pred.loc[other, "risk"], abs=1e-4)
    assert at.query_params["patient"] == [other] or at.query_params["patient"] == other
    assert len(at.get("plotly_chart")) >= 3  # survival with band, hazards, gate (+ features)
    what_if = frame(at, "input", "change")
    assert list(what_if["input"]) == ["both modalities", "without genomics", "without the slide(s)"]
    assert what_if["change"].iloc[0] == 0 and np.isfinite(what_if["risk"]).all()
    # the "what if" rows are the model run again without a modality: not the first row again
    both = what_if["risk"].iloc[0]
    assert (what_if["risk"].iloc[1:] != both).all() and (what_if["change"].iloc[1:] != 0).all()
    assert np.allclose(what_if["change"], what_if["risk"] - both)


def test_deep_link_opens_the_patient(make_app, small_demo):
    pred = predictions(small_demo)
    case = pred["case_id"].iloc[7]
    at = make_app(query={"patient": case})
    assert not problems(at)
    assert at.selectbox(key="patient_select").value == case
    assert float(metric(at, "Risk")) == pytest.approx(pred.set_index("case_id").loc[case, "risk"], abs=1e-4)


def test_unknown_patient_in_the_link_is_a_message(make_app):
    at = make_app(query={"patient": "NOT-A-PATIENT"})
    assert not problems(at)
    assert any("NOT-A-PATIENT" in str(w.value) for w in at.warning)
    assert metric(at, "Risk")  # the page still works, on another patient


def test_bad_run_in_the_link_keeps_the_app_working(make_app):
    at = make_app(query={"run": "/no/such/run"})
    assert not at.exception
    errors = [str(e.value) for e in at.sidebar.error]
    assert any("not available on this server" in e for e in errors), errors
    assert not any("/no/such/run" in e for e in errors)  # the probed path is never echoed
    assert metric(at, "Patients")  # the default run is still shown


def test_stratification_cutoffs_move_patients_between_groups(make_app, small_demo):
    at = make_app("views/stratification.py")
    assert not problems(at)
    groups = frame(at, "group", "n", "events", "median survival")
    assert list(groups["group"]) == ["low", "high"]
    assert groups["n"].sum() == len(predictions(small_demo))
    assert metric(at, "Log-rank").startswith("p = ")
    at.radio(key="rule_select_kind").set_value("tertiles").run()
    assert list(frame(at, "group", "n", "events", "median survival")["group"]) == [
        "low",
        "intermediate",
        "high",
    ]
    assert frame(at, "p_holm").shape[0] == 3
    at.radio(key="rule_select_kind").set_value("custom quantiles").run()
    at.text_input(key="rule_select_q").input("0.25").run()
    low_25 = int(frame(at, "group", "n", "events", "median survival").set_index("group").loc["low", "n"])
    at.text_input(key="rule_select_q").input("0.75").run()
    low_75 = int(frame(at, "group", "n", "events", "median survival").set_index("group").loc["low", "n"])
    assert low_75 > low_25  # patients moved from high to low
    # a bad custom rule is a message, the page keeps its controls
    at.text_input(key="rule_select_q").input("0.9, 0.2").run()
    assert not at.exception and any("increase" in str(e.value) for e in at.error)
    at.radio(key="rule_select_kind").set_value("median").run()
    assert len(at.get("download_button")) >= 5 and not problems(at)


def test_stratification_group_without_events(make_app, app_env, small_demo, tmp_path):
    """A cohort where the low-risk group has no event: KM shown, HR not estimable, a note."""
    run = tmp_path / "run"
    run.mkdir()
    for f in ("run.json", "train_risks.csv"):
        shutil.copy(small_demo / "run" / f, run / f)
    from deref.stratify import assign_groups, compute_cutoffs

    pred = predictions(small_demo)
    train = pd.read_csv(small_demo / "run" / "train_risks.csv", dtype={"case_id": str})
    low = (assign_groups(pred, compute_cutoffs("median", train_risks=train)) == "low").to_numpy()
    pred.loc[low, ["event", "censorship"]] = [0, 1]
    pred.to_csv(run / "predictions.csv", index=False)
    app_env(DEREF_RUN=run)
    at = make_app("views/stratification.py")
    assert not at.exception
    assert any("no events" in str(w.value) for w in at.warning)
    assert metric(at, "Hazard ratio") == "not estimable"


def test_attention_page_draws_the_overlay_and_patches(make_app):
    at = make_app("views/attention.py")
    assert not problems(at)
    assert len(at.get("image")) >= 2  # the inspected patch + the top-k gallery
    targets = at.selectbox(key="att_target").options
    assert any("class-token attention" in t for t in targets)
    assert any("shared feature" in t for t in targets)  # attribution targets

    def overlay_spec():
        charts = [c for c in at.get("plotly_chart") if "ov_click_" in c.proto.id]
        assert len(charts) == 1  # the clickable overlay
        return json.loads(charts[0].proto.spec)

    spec = overlay_spec()
    image = next(t for t in spec["data"] if t["type"] == "image")
    assert image["source"].startswith("data:image/jpeg;base64,")
    centres = next(t for t in spec["data"] if t["type"] == "scattergl")

    def decode(a):  # plotly's binary array encoding
        if isinstance(a, dict):
            shape = [int(v) for v in str(a.get("shape", "-1")).split(",")]
            return np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"]).reshape(shape)
        return np.asarray(a)

    xs, ys = decode(centres["x"]), decode(centres["y"])
    assert len(xs) == len(ys) >= 20  # one clickable marker per patch of the slide
    at.slider(key="ov_opacity").set_value(0.9).run()
    assert not problems(at)
    assert next(t for t in overlay_spec()["data"] if t["type"] == "image")["source"] != image["source"]
    at.selectbox(key="ov_norm").set_value("raw").run()
    at.slider(key="ov_sigma").set_value(2.0).run()
    assert not problems(at)
    assert len(at.get("plotly_chart")) >= 4  # gene-family bars per decoupled feature


def test_attention_without_the_slide_uses_a_blank_canvas(make_app, app_env, small_demo, tmp_path):
    app_env(DEREF_RUN=small_demo / "run", DEREF_SLIDE_DIR=tmp_path)
    at = make_app("views/attention.py")
    assert not problems(at)
    assert any("Slide not available" in str(w.value) for w in at.warning)
    assert len(at.get("image")) >= 1  # the overlay on a blank canvas
    assert frame(at, "rank", "patch", "x", "y").shape[0] >= 1  # patches by coordinates


def test_model_page_metrics_and_provenance(make_app):
    at = make_app("views/model.py")
    assert not problems(at)
    table = frame(at, "harrell", "uno")
    assert {"harrell", "uno", "td_auc", "ibs"} <= set(table.columns)
    assert list(table["fold"])[:5] == ["0", "1", "2", "3", "4"]
    assert 0 <= float(metric(at, "Harrell C")) <= 1
    keys = {c.proto.id for c in at.get("plotly_chart")}
    assert len(keys) >= 5  # calibration, curves, gates, t-SNE, CKA
    assert frame(at, "train", "validation").shape[0] == 5
    assert len(at.get("json")) >= 3
    # the page leads with the curves against the Kaplan–Meier null, as the library computes them
    from deref.metrics import evaluate_run_predictions
    from deref.runs import RunDir

    run = RunDir(Path(os.environ["DEREF_DEMO_DIR"]) / "run")
    pooled = evaluate_run_predictions(run.predictions(), run.train_risks(), run.info.bin_edges())[0].pooled
    assert metric(at, "IBS of the curves") == f"{pooled.ibs:.3f}"
    assert metric(at, "IBS of the KM null") == f"{pooled.ibs_null:.3f}"
    assert metric(at, "Curves − null") == f"{pooled.ibs_minus_null:+.3f}"
    assert {"ibs_null", "d_calibration_p"} <= set(table.columns)


def _share(app_env, *folders) -> None:
    """Serve these folders (DEREF_DATA_ROOTS): the Load form opens nothing outside a data root."""
    app_env(DEREF_DATA_ROOTS=os.pathsep.join(str(f) for f in folders))


def test_load_section_reports_a_cohort_that_does_not_fit(make_app, app_env, small_demo, tmp_path):
    _share(app_env, small_demo, tmp_path)
    table = pd.read_csv(small_demo / "cohort" / "cohort.csv")
    drop = [c for c in table.columns if c.startswith("ONC")][:5]
    bad = tmp_path / "cohort.csv"
    table.drop(columns=drop).to_csv(bad, index=False)
    at = make_app()
    at.checkbox(key="load_own").uncheck()
    at.text_input(key="load_table").input(str(bad))
    at.text_input(key="load_bags").input(str(small_demo / "cohort" / "bags"))
    at.button(key="load_submit").click().run()
    assert not at.exception
    errors = " ".join(str(e.value) for e in at.sidebar.error)
    # the shared fit check (deref.runs.fit) names the gene family and the dropped columns
    assert "gene family" in errors and "are not genomic columns of the table" in errors
    assert any(c in errors for c in drop), errors
    assert metric(at, "Patients")  # the previous run and cohort are still shown


def test_one_model_in_memory(make_app, app_env, small_demo, tmp_path):
    """Two pages that need the model load it once. On a private copy of the run: the shared
    demo run's explanation stores (written by other tests' pages) would let the pages draw
    without the model."""
    from app import backend

    run = tmp_path / "run"
    shutil.copytree(small_demo / "run", run, ignore=shutil.ignore_patterns("explanations"))
    app_env(DEREF_RUN=run)
    make_app("views/patient.py")
    make_app("views/attention.py")
    assert backend.MODEL_LOADS.get(str(run.resolve())) == 1


# ------------------------------------------------------------------------------------ export
def test_exports_are_real_files_with_provenance(app_env, small_demo):
    """The bytes the download buttons hand out (they call backend.km_export)."""
    import io

    from PIL import Image

    from app import backend

    src = backend.make_source(str(small_demo / "run"))
    sizes = {}
    for rule in ("median", "quartiles"):
        png = backend.km_export(*src.key, rule, "training", "png")
        svg = backend.km_export(*src.key, rule, "training", "svg")
        pdf = backend.km_export(*src.key, rule, "training", "pdf")
        csv = backend.km_export(*src.key, rule, "training", "csv")
        assert png.startswith(b"\x89PNG") and b"<svg" in svg[:2000] and pdf.startswith(b"%PDF")
        img = Image.open(io.BytesIO(png))
        assert round(img.info["dpi"][0]) == 300
        assert "run" in img.info.get("Description", "") and rule in img.info.get("Description", "")
        assert rule.encode() in svg and b"date" in svg
        table = pd.read_csv(io.BytesIO(csv))
        assert {"km", "at_risk", "group", "logrank"} <= set(table["section"])
        sizes[rule] = (len(png), len(svg), len(pdf))
    assert all(a != b for a, b in zip(sizes["median"], sizes["quartiles"]))  # the file follows the figure
    stem = backend.report(*src.key, "quartiles", "training").file_stem("km")
    assert stem == f"{backend.run_name(src.run_dir)}_km_quartiles"


def test_load_check_names_a_feature_dimension_mismatch(app_env, small_demo, tmp_path):
    """Bags whose embedding width differs from the model's wsi_dim are refused with both numbers."""
    from app import backend

    _share(app_env, small_demo, tmp_path)
    from deref.data.bags import write_bag_h5

    table = pd.read_csv(small_demo / "cohort" / "cohort.csv", dtype={"case_id": str, "slide_id": str})
    bags = tmp_path / "bags"
    for slide in table["slide_id"]:
        write_bag_h5(
            bags / f"{Path(slide).stem}.h5",
            np.zeros((3, 7), np.float32),
            np.zeros((3, 2)),
            {"patch_size": 256},
        )
    shutil.copy(small_demo / "cohort" / "cohort.csv", tmp_path / "cohort.csv")
    src = backend.make_source(str(small_demo / "run"), str(tmp_path / "cohort.csv"), str(bags))
    problems_found = backend.compatibility(*src.key)
    assert any("D = 7" in p and "wsi_dim" in p for p in problems_found), problems_found


def test_another_cohort_table_is_predicted_by_the_run(make_app, app_env, small_demo, tmp_path):
    """A cohort given in the Load section is scored by the run's models (held-out fold when the
    patient was in a validation fold): the numbers match predictions.csv."""
    _share(app_env, small_demo, tmp_path)
    table = pd.read_csv(small_demo / "cohort" / "cohort.csv", dtype={"case_id": str, "slide_id": str})
    keep = table["case_id"].drop_duplicates().iloc[:12]
    table[table["case_id"].isin(keep)].to_csv(tmp_path / "subset.csv", index=False)
    at = make_app()
    at.checkbox(key="load_own").uncheck()
    at.text_input(key="load_table").input(str(tmp_path / "subset.csv"))
    at.text_input(key="load_bags").input(str(small_demo / "cohort" / "bags"))
    at.button(key="load_submit").click().run()
    assert not problems(at)
    assert metric(at, "Patients") == "12"
    shown = at.dataframe(key="cohort_table").value.set_index("case_id")["risk"]
    ref = predictions(small_demo).set_index("case_id")["risk"].reindex(shown.index)
    np.testing.assert_allclose(shown.to_numpy(float), ref.to_numpy(float), atol=1e-4)


def test_first_start_builds_the_demo_with_visible_progress(make_app, app_env, tmp_path, monkeypatch):
    """No demo yet: the app builds it through the real ``deref.demo.build_demo`` (a 16-patient,
    one-epoch recipe with small slides, so the test stays quick), shows its progress, then opens
    what the build wrote."""
    import functools

    import deref.demo

    stages: list[tuple[str, int, int]] = []
    real_build = deref.demo.build_demo

    def small_build(out_dir, progress=None, **kwargs):
        def spy(stage: str, done: int, total: int) -> None:
            stages.append((stage, done, total))
            progress(stage, done, total)

        return real_build(out_dir, progress=spy, n_patients=16, epochs=1, slide_size=(1024, 1024), **kwargs)

    monkeypatch.setattr(deref.demo, "build_demo", functools.wraps(real_build)(small_build))
    demo = tmp_path / "demo"
    app_env(DEREF_DEMO_DIR=demo)
    at = make_app(timeout=300)
    assert [(s.label, s.state) for s in at.status] == [("Demo built", "complete")]
    assert len(at.get("progress")) == 1
    assert not problems(at)
    # the progress bar was fed by the real build: the cohort's slides, then every fold's epoch
    names = [s for s, _, _ in stages]
    assert names[0].startswith("demo cohort") and stages[-1][1] == stages[-1][2]
    assert {f"fold {k} epoch 1/1" for k in range(5)} <= {n.split(":")[0] for n in names}
    # the app opened what the build wrote: its 16 patients with their out-of-fold risks
    assert deref.demo.demo_is_built(demo)
    built = predictions(demo).set_index("case_id")
    assert len(built) == 16 and metric(at, "Patients") == "16"
    shown = at.dataframe(key="cohort_table").value.set_index("case_id")["risk"]
    np.testing.assert_allclose(shown.to_numpy(float), built["risk"].reindex(shown.index), atol=1e-6)


# ------------------------------------------------------------------------------------ errors
def test_guard_shows_one_line_and_logs_an_unexpected_error(caplog):
    """A library error is shown as it is, not logged; anything else is shown on one line and
    logged on the server with its traceback."""
    import logging

    from streamlit.testing.v1 import AppTest

    def page():
        from app import components
        from deref.errors import DataError

        with components.guard("Library"):
            raise DataError("table.csv:3: time\n-1; expected >= 0")
        with components.guard("Bug", warn=True):
            raise RuntimeError("first line\nsecond line")

    with caplog.at_level(logging.INFO, logger="app.components"):
        at = AppTest.from_function(page).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["**Library:** table.csv:3: time -1; expected >= 0"]
    assert [w.value for w in at.warning] == [
        "**Bug:** unexpected RuntimeError: first line second line (details in the server log)"
    ]
    logged = [r for r in caplog.records if r.name == "app.components"]
    assert [r.getMessage() for r in logged] == ["Bug failed"]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError


@pytest.fixture
def genomic_run(small_demo, tmp_path) -> Path:
    """An SNN (genomics only) run trained on the small demo's cohort."""
    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))
    folds = make_folds(cohort.patients, k=5, seed=0)
    out = tmp_path / "snn-run"
    train_cross_validation(
        cohort, folds, cfg, TrainConfig(epochs=2), out, data_info={"signatures": str(c / "signatures.csv")}
    )
    return out


def test_a_genomic_only_run_offers_no_slide_views(make_app, app_env, genomic_run):
    """A baseline's missing decoupled features are information, not an error box; a run that reads
    no slide offers no "without the slide" what-if."""
    app_env(DEREF_RUN=genomic_run)
    at = make_app("views/patient.py")
    assert not problems(at)
    what_if = frame(at, "input", "change")
    assert list(what_if["input"]) == ["both modalities", "without genomics"]
    assert at.radio(key="whatif").options == ["both modalities", "without genomics"]
    at = make_app("views/model.py")
    assert not problems(at)
    infos = [str(i.value) for i in at.info]
    assert any("(snn) has no decoupled features" in i for i in infos), infos
    assert not any(c.proto.id.endswith(("mean_gates", "tsne", "cka")) for c in at.get("plotly_chart"))


def _worse_than_null_flagged(at) -> bool:
    return any("worse than no model at all" in str(w.value) for w in at.warning)


def test_a_run_whose_curves_are_worse_than_the_null_is_flagged(make_app, app_env, small_demo, tmp_path):
    """The Patient page warns when the run's curves score worse than the training folds' KM curve
    (and still draws the curve); whether it warns follows the library's pooled IBS comparison."""
    from deref.metrics import evaluate_run_predictions
    from deref.runs import RunDir

    run = tmp_path / "run"
    shutil.copytree(small_demo / "run", run, ignore=shutil.ignore_patterns("explanations"))
    pred = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    surv = [c for c in pred.columns if c.startswith("surv_")]
    # curves that say the opposite of what happened: certain death for the long survivors,
    # certain survival for the early deaths
    long = pred["time"] > pred["time"].median()
    pred.loc[long, surv] = 0.0
    pred.loc[~long, surv] = 1.0
    pred.to_csv(run / "predictions.csv", index=False)
    report, _ = evaluate_run_predictions(pred, RunDir(run).train_risks(), RunDir(run).info.bin_edges())
    assert report.pooled.ibs > report.pooled.ibs_null  # the poisoned curves really are worse
    app_env(DEREF_RUN=run)
    at = make_app("views/patient.py")
    assert _worse_than_null_flagged(at)
    assert any(c.proto.id.endswith("survival_curve") for c in at.get("plotly_chart"))  # still drawn
    # the demo's own run: flagged exactly when the library says its curves are worse
    own = RunDir(small_demo / "run")
    report, _ = evaluate_run_predictions(own.predictions(), own.train_risks(), own.info.bin_edges())
    app_env()
    at = make_app("views/patient.py")
    assert not problems(at)
    assert _worse_than_null_flagged(at) == bool(report.pooled.ibs_minus_null > 0)


def test_an_mri_run_speaks_of_mri_sequences(make_app, app_env, small_mri_demo):
    """Every page works from the run's modalities: MRI sequences instead of gene families, and
    the Attention page's MRI viewer with the voxel attribution."""
    app_env(DEREF_RUN=small_mri_demo / "run")
    at = make_app("views/cohort.py")
    assert not problems(at)
    mods = frame(at, "modalities")
    assert (
        set(mods["modalities"]) <= {"MRI, WSI×1", "MRI, WSI×2"}
        and mods["modalities"].str.startswith("MRI").all()
    )
    at = make_app("views/patient.py")
    assert not problems(at)
    labels = ["both modalities", "without the MRI", "without the slide(s)"]
    assert at.radio(key="whatif").options == labels
    assert list(frame(at, "input", "change")["input"]) == labels
    at = make_app("views/model.py")
    assert not problems(at)
    at = make_app("views/attention.py")
    assert not problems(at)
    heads = [h.value for h in at.subheader]
    assert (
        "MRI sequences per decoupled feature" in heads and "Gene families per decoupled feature" not in heads
    )
    charts = {c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")}
    assert any("mri_slices" in c.proto.id for c in at.get("plotly_chart")), charts
    assert any("mri_sequence_bar" in c.proto.id for c in at.get("plotly_chart"))
    assert at.selectbox(key="mri_sequence").options == ["arterial", "delay", "hepatobiliary", "t1", "t2"]


def test_the_mri_demo_is_offered_beside_the_default_one(
    make_app, app_env, small_mri_demo, tmp_path, monkeypatch
):
    """The sidebar opens the MRI + WSI demo; not built yet, it is built first with visible progress
    (here by a stand-in that copies the small MRI demo, through the app's own build path)."""
    import deref.demo

    target = tmp_path / "demo-mri"
    calls: list[int] = []

    def build(out_dir, progress=None, **kwargs):
        calls.append(1)
        progress("demo cohort: MRI vectors", 1, 1)
        shutil.copytree(small_mri_demo, out_dir)

    monkeypatch.setattr(deref.demo, "build_mri_demo", build)
    app_env(DEREF_MRI_DEMO_DIR=target)
    at = make_app()
    button = at.sidebar.button(key="mri_demo")
    assert button.label == "Build and open the MRI + WSI demo"
    at = button.click().run(timeout=120)
    assert calls == [1] and not problems(at)
    assert (target / "run" / "run.json").is_file()  # built by the app's own path, then opened
    assert at.session_state["source"].run_dir == str((target / "run").resolve())
    assert metric(at, "Patients") == "20"
    at = make_app()
    assert at.sidebar.button(key="mri_demo").label == "Open the MRI + WSI demo"  # built: no second build


def test_a_recalibrated_run_says_so_on_the_model_and_patient_pages(make_app, app_env, small_demo, tmp_path):
    """Curves recalibrated on inner data are labelled as such, with the fitted map per fold."""
    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))
    out = tmp_path / "recal-run"
    train_cross_validation(
        cohort,
        make_folds(cohort.patients, k=5, seed=0),
        cfg,
        TrainConfig(epochs=2, batch_size=8, recalibration="temperature"),
        out,
        data_info={"signatures": str(c / "signatures.csv")},
    )
    app_env(DEREF_RUN=out)
    at = make_app("views/model.py")
    assert not problems(at)
    captions = " ".join(str(x.value) for x in at.caption)
    assert "Recalibrated (temperature) in 5 of 5 folds" in captions and "Curves interpolated" in captions
    folds = frame(at, "fold", "recalibration")
    assert folds["recalibration"].str.startswith("temperature recalibration: temperature T =").all()
    at = make_app("views/patient.py")
    assert not problems(at)
    captions = " ".join(str(x.value) for x in at.caption)
    assert "curves are recalibrated: temperature recalibration" in captions
