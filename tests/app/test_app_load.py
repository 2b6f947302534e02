"""Twelve concurrent browser sessions on one server (benchmarks/bench_load.py): each page shows
its own session's patient (no state leaks), no error, one model load in the process. The timing
and memory figures are printed (measured, not asserted: see the benchmark's targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.test_app_browser import CHROMIUM

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_twelve_sessions_each_see_their_own_patient(small_demo: Path, capsys):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.async_api", reason="playwright (python package) not installed")
    from benchmarks.bench_load import measure

    res = measure(small_demo, sessions=12, seconds=4, timeout_s=240)  # one walk each: the CI budget
    with capsys.disabled():
        print("\nbench_load:", json.dumps(res))
    assert res["errors"] == 0, res["error_examples"]
    assert res["model_loads"] == 1
    assert res["steps"] >= 12 * 3  # every session opened its patient and walked the pages
