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


@pytest.fixture(scope="session")
def compare_root(small_demo, tmp_path_factory):
    """Two SNN baselines trained on the demo run's own folds, in a runs folder; and one on
    other folds (cannot be paired)."""
    import torch

    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds, read_mcat_splits
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    torch.set_num_threads(1)
    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    folds = read_mcat_splits(small_demo / "run" / "splits")
    cfg = ModelConfig(model_type="snn", m1_sizes=tuple(f.size for f in cohort.families))
    root = tmp_path_factory.mktemp("runs")
    for name, epochs in (("snn-3", 3), ("snn-1", 1)):
        train_cross_validation(cohort, folds, cfg, TrainConfig(epochs=epochs, batch_size=8), root / name)
    other = make_folds(cohort.patients, k=5, seed=7)
    train_cross_validation(cohort, other, cfg, TrainConfig(epochs=1, batch_size=8), root / "snn-other-folds")
    return root
