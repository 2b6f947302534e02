"""The dashboard's audit trail (:mod:`deref.audit`): one JSON line per run opened, patient viewed,
slide viewed and figure or table exported, with the user (or "local") and the session id.

A rerun of the same page for the same patient (a slider moved) is not a new view: each session
remembers the last event of each kind and records only a change.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from app import backend
from deref.audit import ENV_AUDIT_LOG, AuditLog

log = logging.getLogger(__name__)
K_VIEWER = "viewer"
_K_LAST = "_audit_last"


def log_path() -> Path:
    """``$DEREF_AUDIT_LOG``, else ``<runs root>/.audit/deref-audit.jsonl`` (under a data root)."""
    env = os.environ.get(ENV_AUDIT_LOG)
    return Path(env) if env else backend.runs_root() / ".audit" / "deref-audit.jsonl"


def session_id() -> str:
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        return ctx.session_id if ctx is not None else ""
    except Exception:  # noqa: BLE001 - outside a Streamlit run (tests of the library)
        return ""


def user() -> str:
    viewer = st.session_state.get(K_VIEWER)
    return viewer.user if viewer is not None else "local"


def record(
    action: str, *, run_dir: str | None = None, case_id: str | None = None, once: bool = True, **detail
):
    """Append an event (``once``: unless it repeats this session's last event of that action)."""
    run = backend.run_link(run_dir) if run_dir else None
    key = (run, case_id, tuple(sorted((k, str(v)) for k, v in detail.items())))
    last = st.session_state.setdefault(_K_LAST, {})
    slot = (action, str(detail.get("page", "")))  # one slot per action and page
    if once and last.get(slot) == key:
        return
    last[slot] = key
    try:
        AuditLog(log_path()).record(
            action, user=user(), session=session_id(), run=run, case_id=case_id, **detail
        )
    except OSError:  # the page goes on; the server log says the trail could not be written
        log.exception("audit trail %s not written", log_path())


def exported(data, run_dir: str | None, what: str, file_name: str, case_id: str | None = None):
    """A download button's ``data``: produced (``data`` may be a callable, called then) and the
    export recorded when the user downloads it. Who and which session are taken now, at render
    time: the download itself is served outside the script run."""
    who, sid = user(), session_id()
    run = backend.run_link(run_dir) if run_dir else None
    path = log_path()

    def produce():
        payload = data() if callable(data) else data
        try:
            AuditLog(path).record(
                "export", user=who, session=sid, run=run, case_id=case_id, what=what, file=file_name
            )
        except OSError:
            log.exception("audit trail %s not written", path)
        return payload

    return produce
