"""Concurrent browser sessions on one server (benchmarks/bench_load.py): each page shows its own
session's patient (no state leaks), no error, one model load in the process. The timing and memory
figures are printed (measured, not asserted: see the benchmark's targets).

The suite runs 4 sessions (12 Chromium tabs on the suite's 2 cores take 2.5 minutes, a quarter of
its budget); ``DEREF_LOAD_SESSIONS=12`` runs the issue's twelve."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.app.test_app_browser import CHROMIUM

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_concurrent_sessions_each_see_their_own_patient(small_demo: Path, capsys):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.async_api", reason="playwright (python package) not installed")
    from benchmarks.bench_load import measure

    sessions = int(os.environ.get("DEREF_LOAD_SESSIONS", "4"))
    res = measure(small_demo, sessions=sessions, seconds=4, timeout_s=240)  # one walk each
    with capsys.disabled():
        print("\nbench_load:", json.dumps(res))
    assert res["errors"] == 0, res["error_examples"]
    assert res["model_loads"] == 1
    assert res["steps"] >= sessions * 4  # every session opened its patient and walked the pages
