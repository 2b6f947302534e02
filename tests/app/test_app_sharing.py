"""Safe to share: deep links name runs under data roots and probes all get one answer that names
nothing; every view and export lands in the audit trail once; a run rewritten on disk is re-read
without anyone clearing caches; a swapped weight file is refused by its recorded SHA-256."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from deref.access import NOT_AVAILABLE
from deref.audit import read_audit
from tests.app.test_app_pages import metric, problems
from tests.run_helpers import record_weight_digests


def _page_text(at) -> str:
    """Every text element of the page (main area and sidebar)."""
    parts = []
    for kind in (
        "markdown",
        "caption",
        "error",
        "warning",
        "info",
        "success",
        "title",
        "header",
        "subheader",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
        parts += [str(e.value) for e in getattr(at.sidebar, kind)]
    return "\n".join(parts)


@pytest.fixture
def shared(app_env, small_demo, tmp_path) -> dict[str, Path]:
    """A data root holding a copy of the demo run, plus a secret folder beside it (not shared)."""
    root = tmp_path / "shared"
    runs = root / "runs"
    runs.mkdir(parents=True)
    shutil.copytree(small_demo / "run", runs / "demo-run")
    secret = tmp_path / "secret"
    shutil.copytree(small_demo / "run", secret / "stolen-run")
    (runs / "escape").symlink_to(secret / "stolen-run")
    audit = tmp_path / "audit" / "audit.jsonl"
    app_env(
        DEREF_DATA_ROOTS=os.pathsep.join([str(root), str(small_demo)]),
        DEREF_RUNS_ROOT=str(runs),
        DEREF_AUDIT_LOG=str(audit),
    )
    return {"root": root, "runs": runs, "secret": secret, "audit": audit}


@pytest.mark.parametrize("probe", ["secret", "dotdot", "symlink", "missing", "etc", "exists-not-a-run"])
def test_run_links_outside_a_root_all_get_one_answer(make_app, shared, small_demo, probe):
    secret = shared["secret"]
    link = {
        "secret": str(secret / "stolen-run"),
        "dotdot": "runs/../../secret/stolen-run",
        "symlink": "runs/escape",
        "missing": "runs/no-such-run",
        "etc": "/etc",
        "exists-not-a-run": str(secret),
    }[probe]
    at = make_app(query={"run": link})
    assert not at.exception
    errors = [str(e.value) for e in at.sidebar.error]
    assert errors == [f"**Load:** the run in the link: that run: {NOT_AVAILABLE}"], errors
    text = _page_text(at)
    assert str(secret) not in text and "stolen" not in text and "/etc" not in text
    assert metric(at, "Patients")  # the default run still shows


def test_a_link_names_a_run_relative_to_its_root(make_app, shared):
    at = make_app(query={"run": "runs/demo-run"})
    assert not problems(at)
    assert at.query_params["run"] == ["runs/demo-run"] or at.query_params.get("run") in (
        "runs/demo-run",
        ["runs/demo-run"],
    )
    assert str(shared["root"]) not in _page_text(at)  # the page shows names, not server paths
    at = make_app("views/model.py", query={"run": "runs/demo-run"})
    assert not problems(at)
    assert "`runs/demo-run`" in _page_text(at) and str(shared["root"]) not in _page_text(at)


def test_the_load_form_opens_nothing_outside_a_root(make_app, shared, small_demo):
    at = make_app()
    at.text_input(key="load_run_path").input(str(shared["secret"] / "stolen-run"))
    at.button(key="load_submit").click().run()
    assert [str(e.value) for e in at.sidebar.error] == [f"**Load:** that run: {NOT_AVAILABLE}"]
    at.text_input(key="load_run_path").input("")
    at.checkbox(key="load_own").uncheck()
    at.text_input(key="load_table").input("/etc/passwd")
    at.button(key="load_submit").click().run()
    assert [str(e.value) for e in at.sidebar.error] == [f"**Load:** that cohort table: {NOT_AVAILABLE}"]


def test_a_walk_writes_one_audit_line_per_view(make_app, shared, small_demo):
    pred = pd.read_csv(small_demo / "run" / "predictions.csv", dtype={"case_id": str})
    b = pred["case_id"].iloc[5]
    at = make_app("views/patient.py", query={"run": "runs/demo-run"})
    assert not problems(at)
    a = at.selectbox(key="patient_select").value
    at.run()  # a rerun of the same view is not a new view
    at.selectbox(key="patient_select").set_value(b).run()
    at.switch_page("views/attention.py").run()  # the patient follows to the next page
    assert not problems(at) and at.selectbox(key="patient_select").value == b

    def views(page):
        log = read_audit(shared["audit"])
        v = log[log["action"] == "view_patient"]
        return [c for c, d in zip(v["case_id"], v["detail"]) if d["page"] == page]

    assert views("patient") == [a, b]
    assert views("attention") == [b]
    seen = len(read_audit(shared["audit"]))
    at.slider(key="ov_opacity").set_value(0.9).run()  # a control moved: still the same view
    at.run()
    log = read_audit(shared["audit"])
    assert len(log) == seen
    assert set(log["user"]) == {"local"} and log["session"].nunique() == 1 and (log["session"] != "").all()
    slides = log[log["action"] == "view_slide"]
    assert list(slides["case_id"])[-1] == b and slides["detail"].iloc[-1]["slide"]
    assert list(log["action"]).count("open_run") == 1 and set(log["run"]) == {"runs/demo-run"}


def test_an_export_is_audited_when_downloaded(shared, small_demo):
    from app import audit_trail

    produce = audit_trail.exported(lambda: b"png-bytes", str(shared["runs"] / "demo-run"), "km png", "km.png")
    assert not shared["audit"].exists()  # rendering the button records nothing
    assert produce() == b"png-bytes"
    log = read_audit(shared["audit"])
    assert list(log["action"]) == ["export"] and log["run"].iloc[0] == "runs/demo-run"
    assert log["detail"].iloc[0] == {"what": "km png", "file": "km.png"}


def test_a_run_rewritten_on_disk_is_re_read_without_clearing(make_app, shared):
    run = shared["runs"] / "demo-run"
    at = make_app(query={"run": "runs/demo-run"})
    before = at.dataframe(key="cohort_table").value.set_index("case_id")["risk"]
    pred = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    pred["risk"] = pred["risk"] + 100.0
    pred.to_csv(run / "predictions.csv", index=False)
    at.run()
    after = at.dataframe(key="cohort_table").value.set_index("case_id")["risk"]
    assert (after.loc[before.index] - before).round(6).eq(100.0).all()


def test_a_tampered_weight_file_is_refused_then_recovered(make_app, shared, small_demo):
    run = shared["runs"] / "demo-run"
    weights = run / "fold_0" / "model.safetensors"
    good = weights.read_bytes()
    record_weight_digests(run)  # a cached demo may predate the digest
    pred = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    case = pred.loc[pred["fold"] == 0, "case_id"].iloc[0]
    weights.write_bytes(good[: len(good) // 2])  # truncated
    at = make_app("views/patient.py", query={"run": "runs/demo-run", "patient": case})
    errors = [str(e.value) for e in at.error]
    assert any("model.safetensors" in e and "SHA-256" in e and "refusing" in e for e in errors), errors
    weights.write_bytes(good)  # restored: picked up without a restart or a cache clear
    at.run()
    assert not problems(at)
    assert metric(at, "Risk")


# ----------------------------------------------------------------------------- faults while running
def _one_line_problem(at) -> str:
    found = problems(at) + [str(w.value) for w in at.warning]
    assert found, "expected a message on the page"
    for text in found:
        assert "Traceback" not in text and "\n" not in text.split("**", 2)[-1].strip(), text
    return " | ".join(found)


def test_the_run_deleted_then_restored(make_app, shared):
    run = shared["runs"] / "demo-run"
    at = make_app(query={"run": "runs/demo-run"})
    assert not problems(at)
    moved = shared["root"] / "moved-away"
    run.rename(moved)
    at.run()
    text = _one_line_problem(at)
    assert f"the run in use: {NOT_AVAILABLE}" in text and str(shared["root"]) not in text, text
    at.switch_page("views/compare.py").run()  # another page still draws (its own message at most)
    assert not at.exception
    moved.rename(run)
    at.switch_page("views/cohort.py").run()
    assert not problems(at) and metric(at, "Patients") == "40"


def test_a_corrupted_explanation_cache_file_is_recomputed(make_app, shared):
    at = make_app("views/attention.py", query={"run": "runs/demo-run"})
    assert not problems(at)
    cache = sorted((shared["runs"] / "demo-run" / "explanations").rglob("*.npz"))
    assert cache, "the Attention page writes the explanation cache"
    for f in cache:
        f.write_bytes(b"not an npz at all")
    from app import backend

    backend.clear_all()  # a new process: nothing in memory, only the corrupted files on disk
    at = make_app("views/attention.py", query={"run": "runs/demo-run"})
    assert not problems(at)
    assert at.selectbox(key="att_target").options


def test_a_slide_removed_draws_on_a_blank_canvas(make_app, app_env, shared, small_demo, tmp_path):
    slides = tmp_path / "slides"
    shutil.copytree(small_demo / "cohort" / "slides", slides)
    app_env(
        DEREF_DATA_ROOTS=os.pathsep.join([str(shared["root"]), str(small_demo), str(slides)]),
        DEREF_RUNS_ROOT=str(shared["runs"]),
        DEREF_AUDIT_LOG=str(shared["audit"]),
        DEREF_SLIDE_DIR=str(slides),
        DEREF_RUN=str(shared["runs"] / "demo-run"),
    )
    at = make_app("views/attention.py")
    assert not problems(at) and not any("Slide not available" in str(w.value) for w in at.warning)
    for f in slides.iterdir():
        f.unlink()
    from app import backend

    backend.thumbnail.clear()
    at.run()
    assert not problems(at)
    assert any("Slide not available" in str(w.value) for w in at.warning)
    assert len(at.get("image")) >= 1  # the scores still drawn, from the patch coordinates


def test_a_cohort_table_rewritten_with_a_bad_row_then_restored(
    make_app, app_env, shared, small_demo, tmp_path
):
    table = tmp_path / "cohort" / "cohort.csv"
    table.parent.mkdir()
    shutil.copy(small_demo / "cohort" / "cohort.csv", table)
    app_env(
        DEREF_DATA_ROOTS=os.pathsep.join([str(shared["root"]), str(small_demo), str(tmp_path)]),
        DEREF_RUNS_ROOT=str(shared["runs"]),
        DEREF_TABLE=str(table),
        DEREF_BAG_DIR=str(small_demo / "cohort" / "bags"),
        DEREF_RUN=str(shared["runs"] / "demo-run"),
    )
    at = make_app()
    assert not problems(at) and metric(at, "Patients") == "40"
    good = table.read_text()
    df = pd.read_csv(table, dtype=str)
    df.loc[6, "survival_months"] = "soon"
    df.to_csv(table, index=False)
    at.run()
    text = _one_line_problem(at)
    assert "cohort.csv" in text and ":8:" in text and "survival_months" in text, text
    at.switch_page("views/model.py").run()  # the run's own pages do not need the broken table
    assert not at.exception
    table.write_text(good)
    at.switch_page("views/cohort.py").run()
    assert not problems(at) and metric(at, "Patients") == "40"
