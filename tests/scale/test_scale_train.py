"""``deref train|ablate --ray``: folds as tasks on a two-node cluster give the sequential run's
predictions; finished folds are kept when a run or a grid is resumed; the default commands
never import Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.cli.main import main

REPO = Path(__file__).resolve().parents[2]
SMALL = [f"--set={kv}" for kv in ("c1=32", "landmarks=16", "snn_hidden=32", "expert_hidden=16")]


def _train_args(demo: Path, out: Path, *extra: str) -> list[str]:
    c = demo / "cohort"
    return [
        "train",
        str(c / "cohort.csv"),
        "--signatures",
        str(c / "signatures.csv"),
        "--bags",
        str(c / "bags"),
        "--folds",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--no-track-validation",
        *SMALL,
        "--out",
        str(out),
        *extra,
    ]


def _preds(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "predictions.csv").sort_values("case_id").reset_index(drop=True)


def _numeric(df: pd.DataFrame) -> np.ndarray:
    return df[[c for c in df.columns if c == "risk" or c.startswith("surv_")]].to_numpy(float)


@pytest.mark.xdist_group("ray")
@pytest.mark.slow
def test_train_on_ray_equals_the_sequential_run_and_resumes(ray_cluster, small_demo, tmp_path):
    seq, on_ray = tmp_path / "seq", tmp_path / "ray"
    assert main(_train_args(small_demo, seq)) == 0
    assert main(_train_args(small_demo, on_ray, "--ray", ray_cluster)) == 0
    a, b = _preds(seq), _preds(on_ray)
    assert list(a["case_id"]) == list(b["case_id"]) and len(a) == 40
    np.testing.assert_allclose(_numeric(a), _numeric(b), rtol=0, atol=1e-6)
    info = json.loads((on_ray / "run.json").read_text())
    assert [f["index"] for f in info["folds"]] == [0, 1] and all(f["weights_sha256"] for f in info["folds"])

    # resumed: both folds finished with the same settings, so nothing is retrained
    stamps = {k: os.stat(on_ray / f"fold_{k}" / "model.safetensors").st_mtime_ns for k in (0, 1)}
    assert main(_train_args(small_demo, on_ray, "--ray", ray_cluster, "--resume")) == 0
    assert {k: os.stat(on_ray / f"fold_{k}" / "model.safetensors").st_mtime_ns for k in (0, 1)} == stamps
    np.testing.assert_allclose(_numeric(_preds(on_ray)), _numeric(b), rtol=0, atol=0)

    # a fold whose weights changed since is trained again; the other is kept
    (on_ray / "fold_1" / "model.safetensors").write_bytes(b"not the weights it recorded")
    assert main(_train_args(small_demo, on_ray, "--ray", ray_cluster, "--resume")) == 0
    assert os.stat(on_ray / "fold_0" / "model.safetensors").st_mtime_ns == stamps[0]
    np.testing.assert_allclose(_numeric(_preds(on_ray)), _numeric(b), rtol=0, atol=1e-6)

    # other settings: no fold is kept
    assert main(_train_args(small_demo, on_ray, "--ray", ray_cluster, "--resume", "--epochs", "1")) == 0
    assert os.stat(on_ray / "fold_0" / "model.safetensors").st_mtime_ns != stamps[0]


@pytest.mark.xdist_group("ray")
@pytest.mark.slow
def test_ablate_on_ray_trains_the_variants_at_once_and_keeps_finished_folds(
    ray_cluster, small_demo, tmp_path
):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"variants": {"deref": {}, "no_moe": {"fusion": "concat"}}}))
    args = _train_args(small_demo, tmp_path / "grid", "--grid", str(grid), "--resamples", "200")
    args[0] = "ablate"
    assert main([*args, "--ray", ray_cluster]) == 0
    seq = _train_args(small_demo, tmp_path / "seq-no-moe", "--set=fusion=concat")
    assert main(seq) == 0
    np.testing.assert_allclose(
        _numeric(_preds(tmp_path / "grid" / "no_moe")),
        _numeric(_preds(tmp_path / "seq-no-moe")),
        atol=1e-6,
        rtol=0,
    )
    # a variant killed after one fold: the rerun keeps that fold and trains the other
    run = tmp_path / "grid" / "no_moe"
    (run / "run.json").unlink()
    (run / "fold_1" / "fold_result.json").unlink()
    kept = os.stat(run / "fold_0" / "model.safetensors").st_mtime_ns
    assert main([*args, "--ray", ray_cluster]) == 0
    assert os.stat(run / "fold_0" / "model.safetensors").st_mtime_ns == kept
    assert (run / "run.json").is_file() and not (tmp_path / "grid" / "_incomplete").exists()
    np.testing.assert_allclose(
        _numeric(_preds(run)), _numeric(_preds(tmp_path / "seq-no-moe")), atol=1e-6, rtol=0
    )


def test_the_default_commands_do_not_import_ray(small_demo, tmp_path):
    code = f"""
import sys
from deref.cli.main import main
rc = main(["tile", {str(small_demo / "cohort" / "slides" / "DEMO-0001-01.svs")!r}, "--out", {str(tmp_path / "t")!r}, "--workers", "1"])
main(["evaluate", {str(small_demo / "run")!r}])
import app.backend
print(rc, "ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 False"
