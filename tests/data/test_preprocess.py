"""Time bins and standardization fitted on the training fold only (real BLCA fold 0)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from deref.data.bags import write_bag_h5
from deref.data.cohort import load_cohort
from deref.data.preprocess import (
    Preprocessing,
    Standardizer,
    assign_bins,
    fit_bins,
    fit_preprocessing,
)
from deref.data.splits import read_mcat_splits
from deref.errors import DataError


@pytest.fixture(scope="module")
def blca(shared_data: Path):
    tcga = shared_data / "tcga"
    return load_cohort(
        tcga / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip", signatures=tcga / "signatures.csv"
    )


@pytest.fixture(scope="module")
def fold0(shared_data: Path):
    return read_mcat_splits(shared_data / "tcga" / "splits" / "5foldcv" / "tcga_blca")[0]


@pytest.fixture(scope="module")
def prep(blca, fold0) -> Preprocessing:
    return fit_preprocessing(blca, fold0.train)


# --------------------------------------------------------------------------- bins
def test_bins_are_qcut_of_uncensored_training_times(blca, fold0, prep):
    train = blca.patients.loc[fold0.train]
    uncensored = train.loc[train["censorship"] == 0, "time"]
    _, qcut_edges = pd.qcut(uncensored, q=4, retbins=True, labels=False)
    assert prep.bin_edges[0] == 0.0 and np.isinf(prep.bin_edges[-1])
    np.testing.assert_allclose(prep.bin_edges[1:-1], qcut_edges[1:-1])
    # Labels as MCAT's pd.cut(right=False) with the same inner edges.
    expected = pd.cut(train["time"], bins=[-np.inf, *qcut_edges[1:-1], np.inf], right=False, labels=False)
    np.testing.assert_array_equal(prep.bins(train["time"].to_numpy()), expected.to_numpy())
    counts = np.bincount(prep.bins(uncensored.to_numpy()), minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == len(uncensored)


def test_assign_bins_edges_and_outliers():
    edges = np.array([0.0, 10.0, 20.0, 30.0, np.inf])
    times = np.array([0.0, 9.99, 10.0, 19.0, 20.0, 30.0, 500.0, -1.0])
    np.testing.assert_array_equal(assign_bins(times, edges), [0, 0, 1, 1, 2, 3, 3, 0])
    with pytest.raises(DataError):
        assign_bins(np.array([np.nan]), edges)


def test_fit_bins_errors():
    with pytest.raises(DataError, match="2 uncensored patient"):
        fit_bins(np.array([1.0, 2.0, 3.0]), np.array([0, 0, 1]), n_bins=4)
    with pytest.raises(DataError, match="not distinct"):
        fit_bins(np.array([5.0] * 8), np.zeros(8), n_bins=4)
    with pytest.raises(DataError, match="NaN or negative"):
        fit_bins(np.array([1.0, -2.0, 3.0]), np.zeros(3), n_bins=2)


# --------------------------------------------------------------------------- standardizer
def test_standardizer_matches_sklearn_and_handles_constants():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 5.0, size=(50, 6))
    x[:, 2] = 7.0
    ours = Standardizer().fit(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(ours.mean_, ref.mean_)
    np.testing.assert_allclose(ours.transform(x), ref.transform(x), rtol=1e-5, atol=1e-5)
    assert ours.std_[2] == 1.0 and np.all(ours.transform(x)[:, 2] == 0.0)
    back = Standardizer.from_dict(json.loads(json.dumps(ours.to_dict())))
    np.testing.assert_array_equal(back.transform(x), ours.transform(x))


def test_standardizer_frame_columns():
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 3.0]})
    s = Standardizer().fit(df)
    np.testing.assert_array_equal(s.transform(df[["b", "a"]]), s.transform(df))
    with pytest.raises(DataError, match="missing"):
        s.transform(df[["a"]])
    with pytest.raises(DataError, match="NaN"):
        Standardizer().fit(np.array([[1.0], [np.nan]]))


# --------------------------------------------------------------------------- training only
def test_fit_ignores_validation_data(blca, fold0, prep):
    changed = copy.deepcopy(blca)
    val = fold0.val
    changed.patients.loc[val, "time"] = changed.patients.loc[val, "time"] * 3 + 100
    changed.patients.loc[val, "censorship"] = 0
    changed.patients.loc[val, "event"] = 1
    changed.genomic.loc[val] = np.float32(1e4)
    again = fit_preprocessing(changed, fold0.train)
    np.testing.assert_array_equal(again.bin_edges, prep.bin_edges)
    np.testing.assert_array_equal(again.standardizer.mean_, prep.standardizer.mean_)
    np.testing.assert_array_equal(again.standardizer.std_, prep.standardizer.std_)
    whole = fit_preprocessing(changed, blca.case_ids)  # the reference's leak, for contrast
    assert not np.allclose(whole.bin_edges[1:-1], prep.bin_edges[1:-1])


def test_preprocessing_groups_and_transform(blca, fold0, prep):
    assert prep.m1_sizes == (94, 334, 521, 468, 1496, 479)
    assert prep.m1_names == [f.name for f in blca.families]
    assert prep.m1_columns[0] == blca.families[0].columns
    assert prep.table_fingerprint == blca.fingerprint and prep.wsi_dim is None
    arrays = prep.transform_m1(blca.genomic.loc[fold0.train])
    assert [a.shape for a in arrays] == [(298, s) for s in prep.m1_sizes]
    assert all(a.dtype == np.float32 for a in arrays)
    z = np.concatenate(arrays, axis=1)
    assert np.abs(z.mean(axis=0)).max() < 1e-3
    stds = z.std(axis=0)
    assert np.all((np.abs(stds - 1) < 1e-3) | (stds == 0))


def test_preprocessing_json_roundtrip(prep, blca, fold0):
    text = json.dumps(prep.to_dict(), allow_nan=False)  # strictly JSON-safe
    back = Preprocessing.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.bin_edges, prep.bin_edges)
    assert back.m1_columns == prep.m1_columns and back.m1_names == prep.m1_names
    assert back.table_fingerprint == prep.table_fingerprint
    rows = blca.genomic.loc[fold0.val]
    for a, b in zip(back.transform_m1(rows), prep.transform_m1(rows)):
        np.testing.assert_array_equal(a, b)


def test_wsi_dim_read_from_training_bag(tmp_path):
    rows = []
    for i in range(8):
        rows.append(
            {
                "case_id": f"P{i}",
                "slide_id": f"S{i}.svs",
                "survival_months": 1.0 + i,
                "censorship": 0,
                "G_rnaseq": float(i),
                "H_cnv": i % 3,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    write_bag_h5(tmp_path / "bags" / "S5.h5", np.zeros((2, 12)), None)
    (tmp_path / "fam.json").write_text(json.dumps({"F": ["G_rnaseq", "H_cnv"]}))
    cohort = load_cohort(tmp_path / "t.csv", families_json=tmp_path / "fam.json", bag_dir=tmp_path / "bags")
    prep = fit_preprocessing(cohort, [f"P{i}" for i in range(6)])
    assert prep.wsi_dim == 12 and prep.m1_sizes == (2,)
    with pytest.raises(DataError, match="not in the table"):
        fit_preprocessing(cohort, ["P0", "Q1"])
