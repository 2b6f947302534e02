"""Slides -> tiles -> features -> a short training run of the core on the produced bags."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from deref.cli.main import main
from deref.model.config import GENE_FAMILIES
from deref.prepare.tile import tile_slides
from deref.runs import RunDir


@pytest.mark.slow
def test_tiled_and_extracted_bags_train_the_core(synthetic, slides_dir, tv_weights, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    names = [f"P{i:02d}" for i in range(12)]
    for i, name in enumerate(names):
        src = synthetic["path"] if i % 2 else slides_dir / "cmu-1-small-region.svs"
        shutil.copy(src, slides / f"{name}.svs")
    rows = tile_slides(sorted(slides.glob("*.svs")), tmp_path / "tiles")
    assert all(r.status == "ok" for r in rows)
    feats = tmp_path / "feats"
    args = [
        "extract",
        "--patches",
        str(tmp_path / "tiles"),
        "--weights",
        str(tv_weights),
        "--out",
        str(feats),
    ]
    assert main([*args, "--input-size", "32", "--batch-size", "16", "--workers", "1", "--threads", "1"]) == 0
    assert len(list(feats.glob("*.h5"))) == len(names)

    rng = np.random.default_rng(0)
    genes = [f"G{f}{g}" for f in range(6) for g in range(3)]
    table = pd.DataFrame(
        {
            "case_id": names,
            "slide_id": [f"{n}.svs" for n in names],
            "survival_months": rng.uniform(1, 60, len(names)).round(2),
            "censorship": [0, 0, 0, 0, 0, 1] * (len(names) // 6),
            **{f"{g}_rnaseq": rng.normal(size=len(names)) for g in genes},
        }
    )
    table.to_csv(tmp_path / "cohort.csv", index=False)
    sig = pd.DataFrame({fam: genes[3 * i : 3 * i + 3] for i, fam in enumerate(GENE_FAMILIES)})
    sig.to_csv(tmp_path / "signatures.csv", index=False)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(tmp_path / "cohort.csv"),
            "--signatures",
            str(tmp_path / "signatures.csv"),
            "--bags",
            str(feats),
            "--folds",
            "2",
            "--epochs",
            "1",
            "--out",
            str(run),
            "--set",
            "landmarks=16",
            "--set",
            "snn_hidden=16",
        ]
    )
    assert code == 0
    r = RunDir(run)
    assert r.config.wsi_dim == 1024
    preds = r.predictions()
    assert sorted(preds["case_id"]) == names and np.isfinite(preds["risk"]).all()
