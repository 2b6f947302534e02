"""The dashboard on an end-to-end MRI + WSI run (a 3D ResNet trained on the demo's ROI cubes)
whose cohort has missing inputs (``--allow-missing``): every page works and says which patients
lack what."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from tests.app.test_app_pages import frame, problems

NO_T2, NO_SLIDE = "LC-0003", "LC-0007"


@pytest.fixture(scope="module")
def e2e_missing_run(small_mri_demo, tmp_path_factory):
    """The small MRI demo's cohort with LC-0003's t2 cube and LC-0007's slide bags removed, and a
    1-epoch end-to-end DeReF run on it with ``allow_missing``."""
    import h5py
    import numpy as np

    from deref.data.cohort import load_cohort
    from deref.data.splits import make_folds
    from deref.demo import MRI_DEMO_MODEL
    from deref.model import ModelConfig
    from deref.training import TrainConfig, train_cross_validation

    root = tmp_path_factory.mktemp("e2e") / "cohort"
    shutil.copytree(small_mri_demo / "cohort", root, ignore=shutil.ignore_patterns("mri_features"))
    path = root / "mri_cubes" / f"{NO_T2}.h5"
    with h5py.File(path, "r+") as f:
        seqs = json.loads(f.attrs["sequences"])
        keep = [i for i, s in enumerate(seqs) if s != "t2"]
        cubes = f["cubes"][()][keep]
        del f["cubes"]
        f["cubes"] = cubes
        f.attrs["sequences"] = json.dumps([seqs[i] for i in keep])
    slides = pd.read_csv(root / "cohort.csv", dtype={"case_id": str}).query("case_id == @NO_SLIDE")[
        "slide_id"
    ]
    for s in slides:
        (root / "bags" / f"{s.rsplit('.', 1)[0]}.h5").unlink()
    co = load_cohort(
        root / "cohort.csv",
        bag_dir=root / "bags",
        mri_manifest=root / "mri_manifest.csv",
        mri_cubes=root / "mri_cubes",
        allow_missing=True,
    )
    assert co.missing_inputs(NO_T2) == ["t2"] and co.missing_inputs(NO_SLIDE) == ["wsi"]
    model = dict(MRI_DEMO_MODEL, mri_encoder="resnet3d", mri_grid=co.mri_cubes.grid, resnet3d_width=8)
    cfg = ModelConfig(**model, m1_sizes=co.m1_sizes, m1_names=tuple(f.name for f in co.families))
    train_cross_validation(
        co,
        make_folds(co.patients, k=3, seed=0),
        cfg,
        TrainConfig(epochs=1, batch_size=4),
        root.parent / "run",
    )
    assert np.isfinite(pd.read_csv(root.parent / "run" / "predictions.csv")["risk"]).all()
    return root.parent / "run"


def _warned(at) -> bool:
    return any("lack an input" in str(w.value) for w in at.warning)


@pytest.mark.slow
def test_every_page_on_an_end_to_end_run_with_missing_inputs(make_app, app_env, e2e_missing_run):
    app_env(DEREF_RUN=e2e_missing_run)
    at = make_app("views/cohort.py")
    assert not problems(at) and _warned(at)
    table = frame(at, "missing").set_index("case_id")
    assert table.loc[NO_T2, "missing"] == "t2" and table.loc[NO_SLIDE, "missing"] == "WSI"
    assert (table.drop([NO_T2, NO_SLIDE])["missing"] == "").all()
    for page in ("views/model.py", "views/stratification.py"):
        at = make_app(page)
        assert not problems(at) and _warned(at), page
    at = make_app("views/patient.py", query={"patient": NO_T2})
    assert not problems(at)
    assert any(f"{NO_T2} has no t2" in str(w.value) for w in at.warning)
    at = make_app("views/attention.py")
    at.selectbox(key="patient_select").select(NO_T2).run()
    assert not problems(at)
    assert at.selectbox(key="mri_sequence").options == ["arterial", "delay", "hepatobiliary", "t1"]
    assert any("mri_slices" in c.proto.id for c in at.get("plotly_chart"))
    at.selectbox(key="patient_select").select(NO_SLIDE).run()
    assert not problems(at)
    assert any("no slide input" in str(i.value) for i in at.info)
    assert any("mri_slices" in c.proto.id for c in at.get("plotly_chart"))  # the MRI still shows
