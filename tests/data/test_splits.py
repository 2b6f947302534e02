"""Cross-validation folds: the MCAT BLCA split files, fold checks, stratified fold making."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.data.cohort import load_cohort
from deref.data.splits import (
    Fold,
    check_folds,
    fold_problems,
    inner_splits,
    make_folds,
    read_mcat_splits,
    write_mcat_splits,
)
from deref.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def blca(shared_data: Path):
    return load_cohort(shared_data / "tcga" / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip")


@pytest.fixture(scope="module")
def blca_splits(shared_data: Path) -> Path:
    return shared_data / "tcga" / "splits" / "5foldcv" / "tcga_blca"


def patients(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    event = (rng.random(n) < 0.4).astype(int)
    return pd.DataFrame(
        {"time": rng.exponential(20, n).round(2), "event": event, "censorship": 1 - event},
        index=pd.Index([f"P{i:03d}" for i in range(n)], name="case_id"),
    )


# --------------------------------------------------------------------------- MCAT files
def test_blca_mcat_splits(blca, blca_splits):
    folds = read_mcat_splits(blca_splits)
    assert [(f.index, len(f.train), len(f.val)) for f in folds] == [
        (0, 298, 75),
        (1, 298, 75),
        (2, 298, 75),
        (3, 299, 74),
        (4, 299, 74),
    ]
    assert folds[0].source == blca_splits / "splits_0.csv"
    check_folds(folds, blca.case_ids, blca.patients["event"])
    vals = [c for f in folds for c in f.val]
    assert sorted(vals) == sorted(blca.case_ids)  # each patient validated exactly once
    assert all(len(set(f.train) | set(f.val)) == 373 for f in folds)


def test_write_read_roundtrip(tmp_path):
    folds = make_folds(patients(), k=4, seed=3)
    paths = write_mcat_splits(folds, tmp_path)
    assert [p.name for p in paths] == [f"splits_{k}.csv" for k in range(4)]
    text = paths[0].read_text().splitlines()
    assert text[0] == ",train,val"
    assert text[-1].endswith(",")  # val blank padded, as MCAT's files
    back = read_mcat_splits(tmp_path)
    assert [(f.train, f.val) for f in back] == [(f.train, f.val) for f in folds]


def test_read_splits_errors(tmp_path):
    with pytest.raises(DataError, match="split folder not found"):
        read_mcat_splits(tmp_path / "absent")
    with pytest.raises(DataError, match="no splits_<k>.csv"):
        read_mcat_splits(tmp_path)
    (tmp_path / "splits_0.csv").write_text(",train,val\n0,A,B\n1,C,\n")
    (tmp_path / "splits_2.csv").write_text(",training,val\n0,A,B\n")
    with pytest.raises(DataError) as info:
        read_mcat_splits(tmp_path)
    msg = str(info.value)
    assert "numbered [0, 2]" in msg
    assert "splits_2.csv:1: train: missing column(s) ['train']" in msg


# --------------------------------------------------------------------------- fold checks
def test_fold_problems_name_file_and_case(tmp_path):
    ids = ["A", "B", "C", "D", "E"]
    events = {"A": 1, "B": 0, "C": 0, "D": 1, "E": 0}
    src = tmp_path / "splits_0.csv"
    folds = [
        Fold(0, train=["A", "B", "X9"], val=["B", "C"], source=src),  # X9 unknown, B overlaps, D/E absent
        Fold(1, train=["B", "C", "E"], val=["A", "D"]),  # no event in train
        Fold(2, train=[], val=[]),
    ]
    msgs = [str(p) for p in fold_problems(folds, ids, events)]
    assert f"{src}: train: 1 case(s) not in the cohort table: X9; expected case ids of the table" in msgs
    assert (
        f"{src}: train, val: 1 case(s) in both train and val: B; expected disjoint training and validation sets"
        in msgs
    )
    assert any(m.startswith(f"{src}: 2 table case(s) in neither train nor val: D, E") for m in msgs)
    assert any(m.startswith("fold 1: train: training fold of 3 patients has no event") for m in msgs)
    assert "fold 2: train: empty training fold; expected training patients" in msgs
    assert "fold 2: val: empty validation fold; expected validation patients" in msgs
    assert any("1 table case(s) in no validation fold: E" in m for m in msgs)
    with pytest.raises(DataError, match="X9"):
        check_folds(folds, ids, events)


def test_blca_split_against_other_table(blca, shared_data):
    brca = read_mcat_splits(shared_data / "tcga" / "splits" / "5foldcv" / "tcga_brca")
    msgs = [str(p) for p in fold_problems(brca[:1], blca.case_ids, blca.patients["event"])]
    assert any("splits_0.csv: train: 764 case(s) not in the cohort table" in m for m in msgs)
    assert not any("no event" in m for m in msgs)  # unknown cases are not counted as censored


# --------------------------------------------------------------------------- making folds
def test_make_folds_partition_and_balance():
    pts = patients(103)
    folds = make_folds(pts, k=5, seed=0)
    sizes = [len(f.val) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103
    assert sorted(c for f in folds for c in f.val) == sorted(pts.index)
    for f in folds:
        assert not set(f.train) & set(f.val) and len(f.train) + len(f.val) == 103
    events = [int(pts.loc[f.val, "event"].sum()) for f in folds]
    assert max(events) - min(events) <= 4  # dealt per (event x time bin) stratum
    check_folds(folds, pts.index, pts["event"])


def test_make_folds_deterministic_and_order_free():
    pts = patients(60)
    a = make_folds(pts, k=5, seed=7)
    b = make_folds(pts.sample(frac=1.0, random_state=1), k=5, seed=7)
    c = make_folds(pts, k=5, seed=8)
    assert [f.val for f in a] == [f.val for f in b]
    assert [f.val for f in a] != [f.val for f in c]
    by_censorship = make_folds(pts.drop(columns=["event"]), k=5, seed=7)
    assert [f.val for f in by_censorship] == [f.val for f in a]


def test_make_folds_on_blca(blca):
    folds = make_folds(blca.patients, k=5, seed=0)
    assert sorted(len(f.val) for f in folds) == [74, 74, 75, 75, 75]
    check_folds(folds, blca.case_ids, blca.patients["event"])
    events = [int(blca.patients.loc[f.val, "event"].sum()) for f in folds]
    assert sum(events) == 169 and max(events) - min(events) <= 2


def test_make_folds_errors():
    with pytest.raises(ConfigError):
        make_folds(patients(10), k=1)
    with pytest.raises(DataError, match="3 patients cannot be split into 5 folds"):
        make_folds(patients(3), k=5)
    with pytest.raises(DataError, match="expected 'time'"):
        make_folds(patients(10).drop(columns=["time"]))
    clash = patients(10)
    clash.loc["P003", "censorship"] = clash.loc["P003", "event"]  # event = 1 - censorship broken
    with pytest.raises(DataError, match=r"'event' and 'censorship' disagree for case\(s\) \['P003'\]"):
        make_folds(clash)
    unknown = patients(10).drop(columns=["event"]).astype({"censorship": float})
    unknown.loc["P004", "censorship"] = 0.5
    with pytest.raises(DataError, match=r"event/censorship must be 0 or 1; case\(s\) \['P004'\]"):
        make_folds(unknown)


# --------------------------------------------------------------------------- inner splits
def _stratum(pts: pd.DataFrame, n_bins: int = 4) -> pd.Series:
    """Event x quantile bin of the uncensored times of ``pts`` (an independent computation)."""
    unc = pts.loc[pts["event"] == 1, "time"].to_numpy()
    inner_edges = np.quantile(unc, np.linspace(0, 1, n_bins + 1))[1:-1]
    b = np.searchsorted(inner_edges, pts["time"].to_numpy(), side="left")
    return pd.Series(pts["event"].to_numpy() * n_bins + b, index=pts.index)


def _check_inner(folds, pts: pd.DataFrame, fraction: float = 0.2) -> None:
    for fold in folds:
        (inner,) = inner_splits(fold, pts, fraction=fraction, seed=fold.index)
        outer_val = set(fold.val)
        assert outer_val.isdisjoint(inner.train) and outer_val.isdisjoint(inner.val), fold.index
        assert sorted(inner.train + inner.val) == sorted(fold.train)  # a partition of the training fold
        assert len(inner.val) == round(fraction * len(fold.train))
        # stratified: each event x time-bin stratum of the training fold gives its share (within 1)
        strata = _stratum(pts.loc[fold.train])
        in_val = strata.index.isin(inner.val)
        for s in strata.unique():
            members = strata == s
            assert abs(in_val[members.to_numpy()].sum() - fraction * members.sum()) < 1 + 1e-9, (
                fold.index,
                s,
            )
        for k_inner in inner_splits(fold, pts, k=3, seed=fold.index):
            assert outer_val.isdisjoint(k_inner.train) and outer_val.isdisjoint(k_inner.val)
            assert set(k_inner.train) | set(k_inner.val) == set(fold.train)


def test_inner_split_never_holds_an_outer_validation_patient_blca(blca, blca_splits):
    _check_inner(read_mcat_splits(blca_splits), blca.patients)


def test_inner_split_never_holds_an_outer_validation_patient_demo(small_demo):
    c = small_demo / "cohort"
    cohort = load_cohort(c / "cohort.csv", signatures=c / "signatures.csv")
    _check_inner(read_mcat_splits(small_demo / "run" / "splits"), cohort.patients)


def test_inner_split_stratum_counts_by_hand():
    # 10 training patients: 4 events (times 1..4) and 6 censored; 2 bins of the event times
    pts = pd.DataFrame(
        {"time": [1, 2, 3, 4, 1.5, 2.5, 3.5, 5, 6, 7], "event": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]},
        index=[f"c{i}" for i in range(10)],
    )
    pts["censorship"] = 1 - pts["event"]
    fold = Fold(0, train=list(pts.index[:10]), val=["outer"])
    (inner,) = inner_splits(fold, pts.reindex(list(pts.index) + ["outer"]).fillna(1), fraction=0.5, n_bins=2)
    # median event time 2.5: strata event/early {c0,c1}, event/late {c2,c3}, censored/early {c4},
    # censored/late {c5..c9}; halves by largest remainder: 1, 1, 0 or 1, 2 or 3 -> 5 in all
    val = set(inner.val)
    assert len(val) == 5 and "outer" not in val
    assert len(val & {"c0", "c1"}) == 1 and len(val & {"c2", "c3"}) == 1
    assert len(val & {"c5", "c6", "c7", "c8", "c9"}) in (2, 3)


def test_inner_split_deterministic_and_order_free():
    pts = patients(60, seed=2)
    fold = make_folds(pts, k=5, seed=0)[1]
    a = inner_splits(fold, pts, seed=4)[0]
    b = inner_splits(fold, pts.sample(frac=1, random_state=1), seed=4)[0]
    c = inner_splits(Fold(1, train=fold.train[::-1], val=fold.val), pts, seed=4)[0]
    assert a.val == b.val == c.val and a.train == b.train
    assert inner_splits(fold, pts, seed=5)[0].val != a.val
    with pytest.raises(ConfigError, match="fraction"):
        inner_splits(fold, pts, fraction=1.0)
    with pytest.raises(ConfigError, match="inner folds"):
        inner_splits(fold, pts, k=0)
