"""DeReF Studio: ``streamlit run app/main.py``.

With no configuration the dashboard opens the demo run and cohort (``assets/demo``, built once
with visible progress when missing). Environment variables (all optional): ``DEREF_RUN`` (a run
directory), ``DEREF_TABLE`` / ``DEREF_BAG_DIR`` / ``DEREF_SLIDE_DIR`` (another cohort),
``DEREF_DEMO_DIR`` (where the demo lives), ``DEREF_RUNS_ROOT`` (runs offered in the sidebar).
``DEREF_NO_PREWARM=1`` keeps the models from loading in the background after the first page.
Deep links: ``?patient=<case_id>&run=<run name under a data root>``.

Sharing with a team (``app.auth``, ``deref.access``, ``deref.audit``): the server binds 127.0.0.1;
``DEREF_DATA_ROOTS`` confines what it opens; ``[auth]`` in ``.streamlit/secrets.toml`` turns on
sign-in; every run, patient, slide and export viewed is appended to the audit trail
(``DEREF_AUDIT_LOG``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # `streamlit run app/main.py` puts app/ first, not the repository
    sys.path.insert(0, str(_REPO))

import streamlit as st  # noqa: E402
import streamlit.delta_generator  # noqa: E402

# Streamlit checks once per process whether it runs under `streamlit run` by walking the whole
# call stack with inspect.stack(), which reads the source of every frame: 0.1-0.3 s of the cold
# start. This script is only ever run by `streamlit run`, so the answer is known.
streamlit.delta_generator._use_warning_has_been_displayed = True

from app import audit_trail, auth, backend, components  # noqa: E402

st.set_page_config(page_title="DeReF Studio", page_icon=":material/genetics:", layout="wide")

# closed by default: a refusal or the sign-in screen is all that renders until the viewer may see
viewer = auth.gate()
st.session_state[audit_trail.K_VIEWER] = viewer

st.session_state["script_runs"] = st.session_state.get("script_runs", 0) + 1
new_patient_link = components.apply_query_params()
source = components.current_source()
if source is not None:
    backend.refresh_if_changed(source)  # a run or table rewritten on disk is re-read
    audit_trail.record("open_run", run_dir=source.run_dir)
if (
    source is None
    and st.session_state.get(components.K_SOURCE) is None
    and not st.session_state.get(components.K_LOAD_ERROR)
):
    # first start on a fresh machine: build the demo, then show it
    try:
        components.build_demo_with_progress()
        source = components.current_source()
    except Exception as exc:  # noqa: BLE001 - the sidebar can still load another run
        st.error(f"**The demo could not be built:** {components.reported(exc, 'demo build')}")

PAGES = {
    "cohort": st.Page("views/cohort.py", title="Cohort", icon=":material/groups:", default=True),
    "patient": st.Page("views/patient.py", title="Patient", icon=":material/person:"),
    "stratification": st.Page(
        "views/stratification.py", title="Stratification", icon=":material/monitoring:"
    ),
    "attention": st.Page("views/attention.py", title="Attention", icon=":material/biotech:"),
    "model": st.Page("views/model.py", title="Model", icon=":material/model_training:"),
    "compare": st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
}
page = st.navigation(list(PAGES.values()))
if new_patient_link and page.url_path == PAGES["cohort"].url_path and source is not None:
    # a deep link to the app's root (?patient=…) opens that patient's page
    st.switch_page(PAGES["patient"], query_params=dict(st.query_params))
auth.sidebar_identity(viewer)
components.sidebar_load(source)
components.mri_demo_button()
status = st.sidebar.empty()
status.caption(f"DeReF Studio · {backend.model_status()}")
page.run()
if source is not None:
    backend.prewarm(source)  # after the page is drawn: load the models in the background
with status.container():
    st.caption(f"DeReF Studio · {backend.model_status()}")
    # marks a finished script run for the browser test and the benchmark
    st.html(f'<span class="deref-run-done" data-run="{st.session_state["script_runs"]}"></span>')
