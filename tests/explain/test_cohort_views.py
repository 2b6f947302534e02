"""Cohort views: linear CKA (against the HSIC formula, invariances), t-SNE, gate summaries,
decoupled features of a run (batched = one at a time, out-of-fold), and top patches."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from deref.errors import ConfigError, InputError
from deref.explain.attribution import explain_patient
from deref.explain.cohort_views import (
    cka_matrix,
    decoupled_features,
    expert_labels,
    gate_summary,
    linear_cka,
    top_patches_cohort,
    tsne_embedding,
)
from deref.inference import Predictor


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Direct formula: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, H = I - 11^T/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))


def orthogonal(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(p, p)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- CKA
@pytest.mark.parametrize("n, p, q", [(50, 8, 5), (12, 30, 20)])  # features- and Gram-side branches
def test_linear_cka_matches_the_hsic_formula(n, p, q):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, p))
    y = x[:, :q] @ rng.normal(size=(q, q)) + 0.5 * rng.normal(size=(n, q))
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert 0.0 <= linear_cka(x, y) <= 1.0


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 16))
    y = np.tanh(x @ rng.normal(size=(16, 16))) + 0.1 * rng.normal(size=(40, 16))
    base = linear_cka(x, y)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ orthogonal(16, 2), y) == pytest.approx(base, rel=1e-10)  # rotation
    assert linear_cka(x, 7.5 * y) == pytest.approx(base, rel=1e-10)  # isotropic scaling
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(base, rel=1e-10)  # translation (centring)
    stretched = x * np.linspace(1, 5, 16)  # not invariant to anisotropic scaling
    assert abs(linear_cka(stretched, y) - base) > 1e-3
    assert np.isnan(linear_cka(np.ones((10, 3)), y[:10]))
    with pytest.raises(InputError):
        linear_cka(x, y[:30])


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_averages_groups():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(30, 4, 8))
    feats[:, 1] = feats[:, 0] @ orthogonal(8, 4) * 2.0  # feature 1 = rotated, scaled feature 0
    m = cka_matrix(feats)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m, m.T)
    np.testing.assert_allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(1.0, abs=1e-10)
    assert m[0, 2] == pytest.approx(linear_cka(feats[:, 0], feats[:, 2]))
    groups = np.repeat([0, 1], [20, 10])
    expected = (20 * cka_matrix(feats[:20]) + 10 * cka_matrix(feats[20:])) / 30
    np.testing.assert_allclose(cka_matrix(feats, groups=groups), expected)


# ----------------------------------------------------------------------------- t-SNE
@pytest.fixture
def one_openmp_thread():
    """scikit-learn's t-SNE runs OpenMP threads; on busy shared cores two threads mostly wait."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def test_tsne_shapes_labels_and_determinism(one_openmp_thread):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(15, 4, 16)) + 6.0 * np.arange(4).reshape(1, 4, 1)  # four far-apart clouds
    names = ["specific_genomic", "specific_wsi", "share", "explore"]
    ids = [f"P{i:02d}" for i in range(15)]
    df = tsne_embedding(
        feats, seed=0, perplexity=30.0, case_ids=ids, feature_names=names
    )  # perplexity capped
    assert list(df.columns) == ["x", "y", "feature", "case_id"] and len(df) == 60
    assert df["feature"].tolist()[:4] == names and df["case_id"].tolist()[:4] == ["P00"] * 4
    assert np.isfinite(df[["x", "y"]].to_numpy()).all()
    again = tsne_embedding(feats, seed=0, perplexity=30.0, case_ids=ids, feature_names=names)
    pd.testing.assert_frame_equal(df, again)
    # the four clouds stay apart: each point's nearest neighbour has the same feature
    xy = df[["x", "y"]].to_numpy()
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (df["feature"].to_numpy()[d.argmin(1)] == df["feature"].to_numpy()).mean() > 0.95
    with pytest.raises(InputError):
        tsne_embedding(feats[:, 0])


# ----------------------------------------------------------------------------- gates
def test_gate_summary_overall_and_by_group():
    rng = np.random.default_rng(0)
    gates = rng.dirichlet(np.ones(4), size=20)
    groups = np.array(["low"] * 10 + ["high"] * 10)
    df = gate_summary(gates, groups, expert_names=["a", "b", "c", "d"])
    assert list(df.columns) == ["group", "expert", "mean", "std", "sem", "n"]
    assert df["group"].unique().tolist() == ["all", "low", "high"]
    overall = df[df["group"] == "all"].set_index("expert")["mean"]
    np.testing.assert_allclose(overall.to_numpy(), gates.mean(axis=0))
    assert df.groupby("group")["mean"].sum().to_numpy() == pytest.approx(np.ones(3))
    high = df[df["group"] == "high"].set_index("expert")
    np.testing.assert_allclose(high["mean"].to_numpy(), gates[10:].mean(axis=0))
    assert (high["n"] == 10).all()
    assert gate_summary(gates)["group"].unique().tolist() == ["all"]
    with pytest.raises(InputError):
        gate_summary(gates, groups[:5])


# ----------------------------------------------------------------------------- with a run
@pytest.fixture(scope="module")
def run_copy(small_demo, tmp_path_factory):
    dst = tmp_path_factory.mktemp("cohort-views") / "run"
    shutil.copytree(small_demo / "run", dst)
    return dst


@pytest.fixture(scope="module")
def predictor(run_copy):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread on shared cores mostly waits
    yield Predictor.from_run(run_copy, device="cpu")
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(predictor):
    return predictor.load_cohort()


def test_decoupled_features_out_of_fold_equal_one_patient_at_a_time(predictor, cohort):
    res = decoupled_features(predictor, cohort, batch_size=8)
    case_ids, feats, gates, risks = res  # unpacks as the four main results
    n = len(cohort.case_ids)
    assert case_ids == cohort.case_ids and len(res) == n
    assert feats.shape == (n, 4, predictor.config.c2) and gates.shape == (n, 4) and risks.shape == (n,)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, atol=1e-5)
    assert res.feature_names == ("specific_genomic", "specific_wsi", "share", "explore")
    assert res.expert_names == list(res.feature_names)
    summary = gate_summary(
        gates, np.where(risks > np.median(risks), "high", "low"), expert_names=res.expert_names
    )
    assert summary["expert"].tolist()[:4] == list(res.feature_names)
    val = predictor.validation_folds()
    assert res.folds.tolist() == [val[c] for c in case_ids]
    preds = predictor.run.predictions().set_index("case_id").loc[case_ids]
    np.testing.assert_allclose(risks, preds["risk"].to_numpy(), atol=1e-5)
    for i in (0, n - 1):
        out, _ = predictor.predict_patient(cohort, case_ids[i])
        np.testing.assert_allclose(feats[i], out.features[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(gates[i], out.gate[0].numpy(), atol=1e-6)
    one = decoupled_features(predictor, cohort, case_ids[:3], fold=2)
    assert one.folds.tolist() == [2, 2, 2]
    with pytest.raises(ConfigError):
        decoupled_features(predictor, cohort, fold="mean")
    with pytest.raises(InputError, match="NOPE"):
        decoupled_features(predictor, cohort, ["NOPE"])


def test_top_patches_across_the_cohort(predictor, cohort):
    ids = cohort.case_ids[:4]
    df = top_patches_cohort(
        predictor, cohort, "specific_wsi", k=10, case_ids=ids, per_patient=4, use_cache=False
    )
    assert list(df.columns) == [
        "rank",
        "case_id",
        "fold",
        "patch",
        "slide_id",
        "slide_path",
        "x",
        "y",
        "patch_size",
        "patch_level",
        "score",
    ]
    assert len(df) == 10 and df["rank"].tolist() == list(range(1, 11))
    assert (np.diff(df["score"].to_numpy()) <= 0).all()
    assert df.groupby("case_id").size().max() <= 4
    every = []
    for c in ids:
        a = explain_patient(predictor, cohort, c, targets=["specific_wsi"], use_cache=False)
        every += list(np.sort(a.patch_scores["specific_wsi"])[::-1][:4])
        rows = df[df["case_id"] == c]
        np.testing.assert_allclose(rows["score"], a.patch_scores["specific_wsi"][rows["patch"]], rtol=1e-6)
        np.testing.assert_array_equal(rows[["x", "y"]].to_numpy(), a.coords[rows["patch"]])
    np.testing.assert_allclose(df["score"], np.sort(every)[::-1][:10], rtol=1e-6)
    att = top_patches_cohort(predictor, cohort, "attention", k=3, case_ids=ids[:2], use_cache=False)
    last_layer = [predictor.predict_patient(cohort, c)[0].wsi_attention[0, -1].numpy() for c in ids[:2]]
    np.testing.assert_allclose(att["score"], np.sort(np.concatenate(last_layer))[::-1][:3], rtol=1e-5)
    with pytest.raises(InputError):
        top_patches_cohort(predictor, cohort, "nope", k=3)


def test_expert_labels_follow_the_feature_major_gate():
    names = ("sp_m1", "sp_wsi", "share", "explore")
    assert expert_labels(4, names) == list(names)
    assert expert_labels(8, names)[:3] == ["sp_m1 #1", "sp_m1 #2", "sp_wsi #1"]
    assert expert_labels(8, names)[-1] == "explore #2"
    assert expert_labels(6, names) == [f"expert_{i}" for i in range(1, 7)]  # not per feature
