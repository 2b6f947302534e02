"""``deref precompute RUN --ray``: the explanation cache filled by a pool of actors on a two-node
cluster holds the very entries the sequential command writes, and every patient's dashboard
results are then read without running a model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.cli.main import main

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]

PATIENTS = ("DEMO-0001", "DEMO-0002", "DEMO-0007", "DEMO-0012")


def _copy(small_demo: Path, dst: Path) -> Path:
    shutil.copytree(small_demo / "run", dst, ignore=shutil.ignore_patterns("explanations"))
    return dst


def _entries(run: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every cache entry by folder and name without its key hash (the key covers the run's own
    file paths, which differ between the two copies)."""
    out = {}
    for p in sorted((run / "explanations").rglob("*.npz")):
        with np.load(p, allow_pickle=False) as data:
            out[str(p.parent.relative_to(run) / p.name.rsplit("__", 1)[0])] = {
                k: data[k] for k in data.files if k != "__meta__"
            }
    return out


def test_precompute_on_ray_writes_what_the_sequential_command_writes(ray_cluster, small_demo, tmp_path):
    from deref.explain.precompute import load_attribution, load_patient_output, manifest_path
    from deref.runs import RunDir

    seq, on_ray = _copy(small_demo, tmp_path / "seq"), _copy(small_demo, tmp_path / "ray")
    args = ["--patients", ",".join(PATIENTS), "--steps", "4"]
    assert main(["precompute", str(seq), *args]) == 0
    assert main(["precompute", str(on_ray), *args, "--ray", ray_cluster]) == 0
    rows = pd.read_csv(manifest_path(on_ray), dtype={"patient": str}, keep_default_na=False)
    assert list(rows["patient"]) == list(PATIENTS) and set(rows["status"]) == {"ok"}

    a, b = _entries(seq), _entries(on_ray)
    assert sorted(a) == sorted(b) and len(a) >= 5 * len(PATIENTS)  # outputs x3, grad, ig (+ slides)
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            np.testing.assert_allclose(a[name][k], b[name][k], rtol=0, atol=1e-6, err_msg=f"{name}:{k}")

    # what the dashboard reads: stored outputs and attributions, without a model
    from deref.runs.fit import load_run_cohort

    run = RunDir(on_ray)
    cohort = load_run_cohort(run.info)
    for case in PATIENTS:
        assert load_patient_output(run, cohort, case) is not None
        assert load_attribution(run, cohort, case, method="ig", steps=4) is not None

    # rerun: everything is there already
    assert main(["precompute", str(on_ray), *args, "--ray", ray_cluster]) == 0
    again = pd.read_csv(manifest_path(on_ray), dtype={"patient": str}, keep_default_na=False)
    assert set(again["status"]) == {"skipped"}
