"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data`` beside the repository (real TCGA tables, slides, MRI).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA}")
    return SHARED_DATA


# ----------------------------------------------------------------------------- demo runs
#: Demo builds are deterministic; tests share them across pytest-xdist workers through a
#: cache folder and a file lock, so each is built once per checkout.
DEMO_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-demos"


def _shared_demo(name: str, pair: str = "genomics-wsi", **kwargs) -> Path:
    import fcntl

    from deref.demo import build_demo, build_mri_demo, demo_is_built, mri_demo_is_built

    build, is_built = (
        (build_mri_demo, mri_demo_is_built) if pair == "mri-wsi" else (build_demo, demo_is_built)
    )
    out = DEMO_CACHE / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(DEMO_CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built(out):
            build(out, overwrite=True, **kwargs)
    return out


@pytest.fixture(scope="session")
def small_demo() -> Path:
    """A 40-patient demo trained 2 epochs (cohort in ``/cohort``, run in ``/run``): fast plumbing."""
    return _shared_demo("small-40", n_patients=40, epochs=2, slide_size=(2048, 1536))


@pytest.fixture(scope="session")
def full_demo() -> Path:
    """The full default demo (what `deref demo` builds): for tests of learned signal (slow)."""
    return _shared_demo("full")


@pytest.fixture(scope="session")
def small_mri_demo() -> Path:
    """A 20-patient MRI + WSI demo (small volumes and slides) trained 2 epochs: fast plumbing."""
    return _shared_demo(
        "mri-small-20", "mri-wsi", n_patients=20, epochs=2, shape=(24, 24, 20), slide_size=(1024, 1024)
    )


@pytest.fixture(scope="session")
def full_mri_demo() -> Path:
    """The default MRI + WSI demo (what `deref demo --pair mri-wsi` builds): learned signal (slow)."""
    return _shared_demo("mri-full", "mri-wsi")
