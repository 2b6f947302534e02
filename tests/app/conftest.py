"""Fixtures of the dashboard tests: the shared small demo (tests/conftest.py) and AppTest factories."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "app" / "main.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ENV_VARS = (
    "DEREF_RUN",
    "DEREF_TABLE",
    "DEREF_BAG_DIR",
    "DEREF_SLIDE_DIR",
    "DEREF_DEMO_DIR",
    "DEREF_RUNS_ROOT",
    "DEREF_NO_PREWARM",
)


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, small_demo: Path) -> Callable[..., None]:
    """Point the app at the small demo (``DEREF_DEMO_DIR``); keyword arguments set more variables."""

    def configure(**env: str) -> None:
        for var in ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("DEREF_DEMO_DIR", str(small_demo))
        monkeypatch.setenv("DEREF_RUNS_ROOT", str(small_demo / "no-runs-here"))
        # no background model loading between AppTest runs (the browser test covers it)
        monkeypatch.setenv("DEREF_NO_PREWARM", "1")
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))

    configure()
    return configure


@pytest.fixture
def make_app(app_env):
    """``make_app(page=None, query=None)`` -> an AppTest that has run once (on ``page`` if given)."""
    from streamlit.testing.v1 import AppTest

    def make(page: str | None = None, query: dict | None = None, timeout: float = 180):
        at = AppTest.from_file(str(MAIN), default_timeout=timeout)
        for k, v in (query or {}).items():
            at.query_params[k] = v
        at.run()
        if page is not None:
            at.switch_page(page)
            at.run()
        return at

    return make
