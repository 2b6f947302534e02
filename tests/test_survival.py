"""The survival-data edge (deref.survival): what it accepts, what it refuses, and its names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deref.errors import DataError
from deref.survival import (
    MEAN_OF_FOLDS,
    event_of,
    risk_values,
    surv_column_names,
    surv_columns_of,
    survival_arrays,
    survival_frame,
)


def _pred(**over) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "case_id": ["A", "B", "C", "D"],
            "fold": ["0", "0", "1", str(MEAN_OF_FOLDS)],
            "time": [1.5, 3.0, 0.0, 7.25],
            "censorship": [0, 1, 0, 1],
            "risk": [0.2, -0.1, 1.3, 0.0],
            "surv_1": [0.5, 0.8, 0.1, 0.9],
            "surv_0": [0.9, 0.95, 0.4, 1.0],
        }
    )
    for k, v in over.items():
        df[k] = v
    return df


def test_a_valid_frame_is_typed_once_and_keeps_its_columns():
    sf = survival_frame(_pred(extra=list("wxyz")))
    assert sf.df["event"].tolist() == [1, 0, 1, 0]  # event = 1 - censorship
    assert sf.df["fold"].tolist() == [0, 0, 1, -1] and sf.df["fold"].dtype.kind == "i"
    assert sf.surv_columns == ("surv_0", "surv_1")  # in bin order, not file order
    np.testing.assert_array_equal(sf.surv, [[0.9, 0.5], [0.95, 0.8], [0.4, 0.1], [1.0, 0.9]])
    np.testing.assert_array_equal(sf.event, [True, False, True, False])
    np.testing.assert_array_equal(sf.time, [1.5, 3.0, 0.0, 7.25])
    assert sf.df["extra"].tolist() == list("wxyz")
    assert survival_frame(sf) is sf  # idempotent: a validated frame is not re-checked
    sub = sf.subset(sf.df["fold"] == 0)
    assert sub.case_ids.tolist() == ["A", "B"] and sub.surv_columns == sf.surv_columns


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": [1.0, -2.0, 0.0, 1.0]}, "negative survival time for case(s) ['B']"),
        ({"time": [1.0, np.nan, 0.0, 1.0]}, "missing or infinite survival time for case(s) ['B']"),
        ({"censorship": [0, 2, 0, 1]}, "censorship/event must be 0 or 1 (case(s) ['B'])"),
        ({"risk": [0.0, 0.0, np.inf, 0.0]}, "1 NaN or infinite risk(s), e.g. case(s) ['C']"),
        ({"surv_1": [0.5, 1.2, 0.1, 0.9]}, "outside [0, 1] or missing for case(s) ['B']"),
        ({"fold": ["0", None, "1", "1"]}, "missing fold for case(s) ['B']"),
        ({"event": [1, 1, 1, 0]}, "'event' and 'censorship' disagree for case(s) ['B']"),
    ],
)
def test_bad_values_are_refused_naming_the_cases(change, message):
    with pytest.raises(DataError) as err:
        survival_frame(_pred(**change), what="predictions.csv")
    assert str(err.value).startswith("predictions.csv: ") and message in str(err.value)


def test_missing_columns_are_named():
    with pytest.raises(DataError, match="no 'time' column"):
        survival_frame(_pred().drop(columns="time"))
    with pytest.raises(DataError, match="needs an 'event' or 'censorship' column"):
        survival_frame(_pred().drop(columns="censorship"))
    with pytest.raises(DataError, match="no 'risk' column"):
        survival_frame(_pred().drop(columns="risk"), require_risk=True)
    with pytest.raises(DataError, match="no surv_0"):
        survival_frame(_pred().drop(columns=["surv_0", "surv_1"]), require_surv=True)


def test_survival_column_names_and_gaps():
    assert surv_column_names(3) == ["surv_0", "surv_1", "surv_2"]
    assert surv_columns_of(pd.DataFrame(columns=["surv_10", "x", *surv_column_names(10)])) == [
        f"surv_{k}" for k in range(11)
    ]
    with pytest.raises(DataError, match="without gaps"):
        surv_columns_of(pd.DataFrame(columns=["surv_0", "surv_2"]))


def test_event_of_prefers_event_and_checks_agreement():
    both = pd.DataFrame({"event": [1, 0], "censorship": [0, 1]})
    np.testing.assert_array_equal(event_of(both), [1.0, 0.0])
    np.testing.assert_array_equal(event_of(pd.DataFrame({"censorship": [1, 0]})), [0.0, 1.0])


def test_arrays_and_risk_values():
    t, e, r = survival_arrays([1, 2], [1, 0], [0.5, 0.1])
    assert t.dtype == float and e.dtype == bool and e.tolist() == [True, False] and r.tolist() == [0.5, 0.1]
    with pytest.raises(DataError, match="time has 2 values but event has 3"):
        survival_arrays([1, 2], [1, 0, 1])
    with pytest.raises(DataError, match=r"case\(s\) \['position 1'\]"):
        survival_arrays([1, 2], [1, 0], [0.5, np.nan])
    assert risk_values(pd.DataFrame({"risk": ["0.5", 2]})).tolist() == [0.5, 2.0]
    with pytest.raises(DataError, match="training risks: 1 NaN or infinite risk"):
        risk_values(pd.DataFrame({"case_id": ["X"], "risk": ["oops"]}))
