"""Shared widgets: the sidebar's Load section (run and cohort pickers), the patient picker, and
messages that turn errors into clear text on the page instead of a traceback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import streamlit as st

from app import backend
from app.backend import Source
from deref.errors import DeRefError, InputError, one_line

log = logging.getLogger(__name__)

#: What the library and the file system raise on purpose: shown as a message, not logged as a bug.
EXPECTED_ERRORS = (DeRefError, OSError)

# session_state keys shared by every page (widget state is mirrored here, so it survives a
# page switch: Streamlit forgets the state of widgets a page does not draw)
K_SOURCE = "source"  # backend.Source in use
K_PATIENT = "patient"  # selected case_id
K_COMPARE = "compare_patient"
K_RULE = "rule"  # cutoff rule spec, e.g. "median"
K_LOAD_ERROR = "load_error"
K_QP_DONE = "query_params_applied"
K_QP_PATIENT = "query_patient_applied"

RULES = {
    "median": "Median (2 groups)",
    "tertiles": "Tertiles (3 groups)",
    "quartiles": "Quartiles (4 groups)",
}


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def explain_error(exc: BaseException) -> str:
    """One readable line for an exception (library errors already say what and where)."""
    if isinstance(exc, DeRefError):
        return one_line(exc)
    if isinstance(exc, FileNotFoundError):
        return one_line(f"file not found: {exc.filename or exc}")
    if isinstance(exc, OSError):
        return one_line(f"{type(exc).__name__}: {exc}")
    return one_line(f"unexpected {type(exc).__name__}: {exc} (details in the server log)")


def reported(exc: BaseException, what: str) -> str:
    """:func:`explain_error`, for an ``except`` block at a boundary that must keep the app
    working (the Load form, a link, the default run): an unexpected exception is logged with its
    traceback first."""
    if not isinstance(exc, EXPECTED_ERRORS):
        log.exception("%s failed", what)
    return explain_error(exc)


@contextmanager
def guard(what: str, *, warn: bool = False) -> Iterator[None]:
    """Show an exception raised inside the block as a one-line ``st.error`` (or ``st.warning``)
    and go on; an unexpected one (not a library or file error) is logged with its traceback.

    Streamlit's own control flow (``st.stop``, ``st.rerun``, ``st.switch_page``) derives from
    BaseException and passes through.
    """
    try:
        yield
    except EXPECTED_ERRORS as exc:
        (st.warning if warn else st.error)(f"**{what}:** {explain_error(exc)}")
    except Exception as exc:  # noqa: BLE001 - the page must keep working whatever happens
        log.exception("%s failed", what)
        (st.warning if warn else st.error)(f"**{what}:** {explain_error(exc)}")


# --------------------------------------------------------------------------------------------
# the source (run + cohort)
# --------------------------------------------------------------------------------------------
def default_source() -> Source | None:
    """From the environment (DEREF_RUN / DEREF_TABLE / DEREF_BAG_DIR) or the demo; None while
    the demo is not built."""
    env_run = os.environ.get(backend.ENV_RUN)
    if env_run:
        return backend.make_source(
            str(backend.resolve_run_dir(env_run)),
            os.environ.get(backend.ENV_TABLE) or None,
            os.environ.get(backend.ENV_BAG_DIR) or None,
            os.environ.get(backend.ENV_SLIDE_DIR) or None,
        )
    if not backend.demo_ready():
        return None
    return backend.make_source(
        str(backend.demo_dir() / "run"), slide_dir=os.environ.get(backend.ENV_SLIDE_DIR) or None
    )


def _progress_status(label: str, build) -> None:
    """Run ``build(progress)`` inside a status box with a progress bar fed by the build."""
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="starting")

        def progress(stage: str, done: int, total: int) -> None:
            frac = min(max(done / total, 0.0), 1.0) if total else 0.0
            bar.progress(frac, text=f"{stage}: {done}/{total}")

        build(progress)
        status.update(label="Demo built", state="complete", expanded=False)


def open_source(new: Source) -> None:
    """Show ``new`` from now on (the patient choice reset, the link updated) and rerun."""
    st.session_state[K_SOURCE] = new
    st.session_state.pop(K_LOAD_ERROR, None)
    st.session_state.pop(K_PATIENT, None)
    st.query_params.pop("patient", None)
    st.query_params["run"] = backend.run_link(new.run_dir)
    st.session_state[K_QP_DONE] = st.query_params["run"]
    st.rerun()


def mri_demo_button() -> None:
    """The sidebar's MRI + WSI demo, beside today's: opened when built, else built first (visible
    progress, a few minutes on a laptop) and then opened."""
    ready = backend.mri_demo_ready()
    label = "Open the MRI + WSI demo" if ready else "Build and open the MRI + WSI demo"
    help_ = (
        None
        if ready
        else "first time only: a synthetic liver cohort (160 patients), MRI vectors, a DeReF run"
    )
    if not st.sidebar.button(label, key="mri_demo", help=help_, icon=":material/neurology:"):
        return
    try:
        if not ready:
            _progress_status(
                f"Building the MRI + WSI demo in {backend.mri_demo_dir()} (first time only)…",
                backend.build_mri_demo,
            )
        new = backend.make_source(str(backend.mri_demo_dir() / "run"))
    except Exception as exc:  # noqa: BLE001 - the rest of the app keeps working
        st.session_state[K_LOAD_ERROR] = f"MRI demo: {reported(exc, 'MRI demo build')}"
        return
    open_source(new)


def demo_comparison_button() -> None:
    """On the Compare page: train the demo comparison (first time only, with progress), then rerun."""
    if not (backend.demo_dir() / "run" / "run.json").exists() or backend.comparison_runs()[1:]:
        return
    if st.button(
        "Build the demo comparison",
        key="build_comparison",
        icon=":material/compare_arrows:",
        help="first time only: `deref ablate` trains DeReF without V_explore, without decoupling and without the "
        "MoE, the SNN and ABMIL baselines and the paper's peers CLAM-SB, MCAT and MOTCat, on the demo's folds "
        "(a few minutes on a laptop)",
    ):
        _progress_status(
            f"Training the demo comparison in {backend.comparison_dir()} (first time only)…",
            backend.build_demo_comparison,
        )
        st.session_state["compare_pick_demo"] = True  # the page's run picker takes the new runs
        st.rerun()


def build_demo_with_progress() -> None:
    """Build the default demo (first start on a fresh machine), showing its progress."""
    _progress_status(
        f"Building the demo cohort and run in {backend.demo_dir()} (first start only, a few minutes)…",
        backend.build_demo,
    )


def apply_query_params() -> bool:
    """``?run=…`` picks the run (once per session; a bad one is an error, the rest keeps
    working); ``?patient=…`` picks the patient. True when a new patient link arrived."""
    qp = st.query_params
    run = qp.get("run")
    if run and st.session_state.get(K_QP_DONE) != run:
        st.session_state[K_QP_DONE] = run
        try:
            st.session_state[K_SOURCE] = backend.make_source(str(backend.resolve_run_dir(run)))
            st.session_state.pop(K_LOAD_ERROR, None)
        except Exception as exc:  # noqa: BLE001 - a bad link must not break the app
            # never the link's text: the answer must not echo a probed path
            st.session_state[K_LOAD_ERROR] = f"the run in the link: {reported(exc, 'run link')}"
    patient = qp.get("patient")
    if patient and st.session_state.get(K_QP_PATIENT) != patient:
        # a new deep link (or a page switch carrying ?patient=): it wins over the old choice
        st.session_state[K_QP_PATIENT] = patient
        st.session_state[K_PATIENT] = str(patient)
        return True
    return False


def current_source() -> Source | None:
    src = st.session_state.get(K_SOURCE)
    if src is None:
        try:
            src = default_source()
        except Exception as exc:  # noqa: BLE001 - the Load section stays usable
            st.session_state[K_LOAD_ERROR] = f"default run: {reported(exc, 'default run')}"
            return None
        if src is not None:
            st.session_state[K_SOURCE] = src
    return src


@dataclass(frozen=True)
class _LoadChoice:
    """What the Load form was submitted with (text as typed)."""

    run_text: str
    own: bool
    table: str
    bags: str
    slides: str


def _load_form(source: Source | None) -> _LoadChoice | None:
    """The Load form's widgets; the choice when it was submitted, else None."""
    known = backend.discover_runs()
    if source is not None and source.run_dir not in known:
        known = [source.run_dir, *known]  # the run in use stays listed even if it vanished from disk
    with st.form("load_form", border=False):
        options = known + ["other…"]
        current = source.run_dir if source is not None and source.run_dir in known else None
        choice = st.selectbox(
            "Run directory",
            options,
            index=options.index(current) if current else 0,
            key="load_run",
            format_func=lambda r: r if r == "other…" else backend.run_link(r),
            help="any folder `deref train` or `deref demo` wrote (it holds run.json), under a shared data root",
        )
        other = st.text_input(
            "…or a name under a data root", value="", placeholder="blca-deref", key="load_run_path"
        )
        own = st.checkbox(
            "Use the run's own cohort (from run.json)",
            value=source is None or source.own_cohort,
            key="load_own",
        )
        table = st.text_input(
            "Cohort table (MCAT CSV)", value=(source.table or "") if source else "", key="load_table"
        )
        bags = st.text_input(
            "Bag folder (.h5 / .pt)", value=(source.bag_dir or "") if source else "", key="load_bags"
        )
        slides = st.text_input(
            "Slide folder (for thumbnails)",
            value=(source.slide_dir or "") if source else "",
            key="load_slides",
            help="optional: without it the attention is drawn on a blank canvas",
        )
        if not st.form_submit_button("Load", type="primary", key="load_submit"):
            return None
    run_text = other.strip() or (choice if choice != "other…" else "")
    return _LoadChoice(run_text, own, table.strip(), bags.strip(), slides.strip())


def _source_of(choice: _LoadChoice) -> Source:
    """The checked source of a Load choice; an :class:`InputError` says what does not fit."""
    if not choice.run_text:
        raise InputError("choose a run directory or type its path")
    new = backend.make_source(
        str(backend.resolve_run_dir(choice.run_text)),
        None if choice.own else (choice.table or None),
        None if choice.own else (choice.bags or None),
        choice.slides or None,
    )
    if not choice.own and not choice.table:
        raise InputError("give a cohort table, or tick “use the run's own cohort”")
    problems = backend.compatibility(*new.key)
    if problems:
        raise InputError("the run does not fit this cohort: " + "; ".join(problems))
    return new


def sidebar_load(source: Source | None) -> None:
    """The Load section: pick a run directory and a cohort, with clear errors."""
    with st.sidebar:
        if source is not None:
            st.caption(
                f"**Run:** {backend.run_name(source.run_dir)}  \n**Cohort:** {backend.cohort_name(source)}"
            )
        with st.expander("Load a run / cohort", expanded=source is None):
            choice = _load_form(source)
            if choice is not None:
                try:
                    new = _source_of(choice)
                except Exception as exc:  # noqa: BLE001 - a bad choice in the form must not break the page
                    st.session_state[K_LOAD_ERROR] = reported(exc, "Load")
                else:
                    open_source(new)
            viewer = st.session_state.get("viewer")
            if viewer is None or viewer.admin:
                if st.button(
                    "Clear caches and reload",
                    key="clear_caches",
                    help="every session's caches: re-read runs and cohorts from disk (administrators)",
                ):
                    backend.clear_all()
                    st.rerun()
            elif st.button(
                "Reset my view",
                key="reset_view",
                help="forget this session's choices (patient, run, settings); a run rewritten on disk is "
                "re-read by itself",
            ):
                reset_session_view()
                st.rerun()
        err = st.session_state.get(K_LOAD_ERROR)
        if err:
            st.error(f"**Load:** {err}")


def reset_session_view() -> None:
    """Forget this session's choices (what a non-administrator's reset clears: nothing shared)."""
    for key in list(st.session_state.keys()):
        if key not in ("viewer", "script_runs"):
            del st.session_state[key]
    st.query_params.clear()


def require_source() -> Source:
    """The source in use, or stop the page with a message saying what to do."""
    src = st.session_state.get(K_SOURCE)
    if src is None:
        st.info("No run is loaded. Pick a run directory in the sidebar's **Load** section.")
        st.stop()
    problems = []
    try:
        backend.data_roots().check(src.run_dir, "the run in use", kind="run")
    except Exception as exc:  # noqa: BLE001 - moved, deleted or unreadable: one line, no path
        st.error(f"**Run:** {reported(exc, 'run check')} It is shown again as soon as it is back on disk.")
        st.stop()
    try:
        problems = backend.compatibility(*src.key)
    except Exception as exc:  # noqa: BLE001 - the page says why it cannot show the cohort
        st.error(f"**Cohort:** {reported(exc, 'cohort check')}")
        st.stop()
    if problems:
        st.error("**The run does not fit this cohort:**\n\n" + "\n".join(f"- {p}" for p in problems))
        st.stop()
    return src


# --------------------------------------------------------------------------------------------
# patients
# --------------------------------------------------------------------------------------------
def _mirror(key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state.get(key)
    if state_key == K_PATIENT:
        _set_patient_param(st.session_state[state_key])


def _set_patient_param(case_id: str | None) -> None:
    st.session_state[K_QP_PATIENT] = case_id
    if case_id is None:
        st.query_params.pop("patient", None)
    elif st.query_params.get("patient") != case_id:
        st.query_params["patient"] = case_id


def patient_picker(
    source: Source,
    *,
    label: str = "Patient",
    key: str = "patient_select",
    state_key: str = K_PATIENT,
    allow_none: bool = False,
) -> str | None:
    """A searchable patient selector (type to filter) mirrored into ``session_state[state_key]``.

    An unknown patient (from a deep link) is reported and the highest-risk patient is shown.
    """
    table = backend.cohort_table(*source.key)
    ids = list(table.index)
    wanted = st.session_state.get(state_key)
    if wanted is not None and wanted not in ids:
        st.warning(
            f"Patient **{wanted}** is not in the cohort {backend.cohort_name(source)}; "
            "showing the highest-risk patient instead. Pick another one below."
        )
        wanted = None
        if state_key == K_PATIENT:
            _set_patient_param(None)
    if wanted is None and not allow_none and ids:
        risks = table["risk"].to_numpy(float)
        wanted = ids[int(np.nanargmax(risks))] if np.isfinite(risks).any() else ids[0]
    st.session_state[state_key] = wanted
    # the widget follows the mirrored value (set by a deep link, a table click or another page).
    # Always assigned: after a page switch the key still holds the old page's value, but the new
    # page's widget is another widget and would start at its first option without it.
    st.session_state[key] = wanted
    options = ([None] if allow_none else []) + ids

    # every option's label at once (a table.loc per option and picker took ~10 ms a rerun)
    labels = {
        c: f"{c}  ·  risk {r:.3f} ({p:.0f}th pct)"
        for c, r, p in zip(ids, table["risk"].to_numpy(float), table["percentile"].to_numpy(float))
    }

    def fmt(c: str | None) -> str:
        return "—" if c is None else labels[c]

    choice = st.selectbox(
        label,
        options,
        key=key,
        format_func=fmt,
        help="type to search by case id",
        on_change=_mirror,
        args=(key, state_key),
    )
    if state_key == K_PATIENT and choice is not None and st.query_params.get("patient") != choice:
        _set_patient_param(choice)
    return choice


def open_patient(case_id: str, page: str = "views/patient.py") -> None:
    """Select a patient everywhere and go to its page."""
    st.session_state[K_PATIENT] = case_id
    st.session_state[K_QP_PATIENT] = case_id
    st.switch_page(page, query_params={"patient": case_id})


def rule_picker(key: str = "rule_select") -> str:
    """Cutoff rule (median / tertiles / quartiles / custom), mirrored into ``session_state['rule']``."""
    current = st.session_state.get(K_RULE, "median")
    kinds = list(RULES) + ["custom quantiles", "custom thresholds"]
    kind_now = (
        current
        if current in RULES
        else ("custom quantiles" if current.startswith("quantiles:") else "custom thresholds")
    )
    kind = st.radio(
        "Cutoff rule",
        kinds,
        index=kinds.index(kind_now),
        key=f"{key}_kind",
        horizontal=True,
        format_func=lambda k: RULES.get(k, k),
    )
    if kind in RULES:
        spec = kind
    elif kind == "custom quantiles":
        default = current.partition(":")[2] if current.startswith("quantiles:") else "0.25, 0.75"
        text = st.text_input(
            "Quantiles of the training risks (comma-separated, in (0, 1))", default, key=f"{key}_q"
        )
        spec = "quantiles:" + ",".join(x.strip() for x in text.split(",") if x.strip())
    else:
        default = current.partition(":")[2] if current.startswith("thresholds:") else "-2.5"
        text = st.text_input("Absolute risk thresholds (comma-separated)", default, key=f"{key}_t")
        spec = "thresholds:" + ",".join(x.strip() for x in text.split(",") if x.strip())
    st.session_state[K_RULE] = spec
    return spec


def page_header(title: str, source: Source | None) -> None:
    st.title(title)
    if source is not None:
        st.caption(
            f"run **{backend.run_name(source.run_dir)}** · cohort **{backend.cohort_name(source)}** · "
            f"`{backend.run_link(source.run_dir)}`"
        )
        _missing_note(source)


def _missing_note(source: Source) -> None:
    """Every page says when patients lack an input (cohorts loaded with ``--allow-missing``)."""
    try:
        missing = backend.missing_inputs(*source.key)
    except DeRefError:
        return  # the page's own guard reports a cohort that does not load
    if missing:
        shown = ", ".join(f"{c} ({', '.join(m)})" for c, m in list(missing.items())[:5])
        st.warning(
            f"{len(missing)} patient(s) lack an input: {shown}{' …' if len(missing) > 5 else ''}. Their "
            "predictions put the training fold's mean token in its place (column **missing** on the Cohort page).",
            icon=":material/report:",
        )
