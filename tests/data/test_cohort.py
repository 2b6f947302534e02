"""Cohort tables, gene families and their checks (real TCGA-BLCA table + small bad tables)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.data.bags import write_bag_h5
from deref.data.cohort import (
    check_table,
    genomic_columns,
    load_cohort,
    map_families,
    read_signatures,
    read_table,
)
from deref.errors import ConfigError, DataError

BLCA_SHA256 = "76b9bdf8b057ee27edb19b1f00d44b9a8afe1e4cfd2103588615b698052c045d"
#: Columns per family when each gene counts once. The data README's table says 478 for
#: Cell Differentiation Markers: it counts the 9 genes listed twice in that family twice.
BLCA_FAMILY_SIZES = [94, 334, 521, 468, 1496, 479]
BLCA_GENES_MAPPED = [82, 307, 494, 416, 1397, 427]
#: Patients with more than one slide, and the most slides of one patient.
MULTI, MAX_SLIDES = 25, 9


@pytest.fixture(scope="module")
def blca_paths(shared_data: Path) -> tuple[Path, Path]:
    tcga = shared_data / "tcga"
    return tcga / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip", tcga / "signatures.csv"


@pytest.fixture(scope="module")
def blca(blca_paths):
    table, sig = blca_paths
    return load_cohort(table, signatures=sig)


# --------------------------------------------------------------------------- small tables
GENES = ["TP53", "KRAS", "EGFR", "MYC"]


def small_frame(n_patients: int = 4) -> pd.DataFrame:
    """One row per slide; patient P1 has two slides with identical values."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_patients):
        rows.append(
            {
                "case_id": f"P{i}",
                "slide_id": f"P{i}-S0.svs",
                "survival_months": 5.0 + 3 * i,
                "censorship": i % 2,
                "age": 50 + i,
            }
        )
    df = pd.DataFrame(rows)
    for g in GENES:
        df[f"{g}_cnv"] = rng.integers(-2, 3, len(df))
        df[f"{g}_rnaseq"] = rng.normal(size=len(df)).round(4)
    dup = df.iloc[[1]].copy()
    dup["slide_id"] = "P1-S1.svs"
    return pd.concat([df.iloc[:2], dup, df.iloc[2:]], ignore_index=True)


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def write_signatures(path: Path) -> Path:
    path.write_text("Suppressors,Oncogenes\nTP53,MYC\nNOTAGENE,KRAS\n,EGFR\n,MYC\n")
    return path


def error_of(path: Path, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        load_cohort(path, **kw)
    return info.value


# --------------------------------------------------------------------------- real BLCA
def test_blca_patients_slides_events(blca):
    assert len(blca.patients) == 373
    assert blca.n_slides == 437 and sum(len(v) for v in blca.slides.values()) == 437
    assert blca.n_events == 169
    assert int(blca.patients["censorship"].sum()) == 204
    assert (blca.patients["event"] == 1 - blca.patients["censorship"]).all()
    assert blca.patients["time"].min() == pytest.approx(0.49)
    assert blca.patients["time"].max() == pytest.approx(163.2, abs=0.05)
    assert blca.patients["time"].median() == pytest.approx(17.6, abs=0.05)
    for col in ("age", "is_female", "site", "oncotree_code"):
        assert col in blca.patients.columns
    assert (blca.patients["oncotree_code"] == "BLCA").all()
    assert blca.fingerprint == BLCA_SHA256
    assert blca.modalities["genomic"].all() and not blca.modalities["wsi"].any()


def test_blca_genomic_and_families(blca):
    assert blca.genomic.shape == (373, 3062)
    assert blca.genomic.dtypes.unique().tolist() == [np.dtype("float32")]
    assert sum(c.endswith("_rnaseq") for c in blca.genomic_columns) == 2814
    assert sum(c.endswith("_cnv") for c in blca.genomic_columns) == 248
    assert [f.size for f in blca.families] == BLCA_FAMILY_SIZES
    assert [len(f.genes_mapped) for f in blca.families] == BLCA_GENES_MAPPED
    assert [f.n_duplicates for f in blca.families] == [0, 0, 0, 9, 0, 0]
    assert len(blca.families[1].genes_unmapped) == 21
    union = {c for f in blca.families for c in f.columns}
    assert union == set(blca.genomic_columns)
    for f in blca.families:  # suffix groups: _cnv before _rnaseq
        kinds = [c.rsplit("_", 1)[1] for c in f.columns]
        assert kinds == sorted(kinds)
        assert len(set(f.columns)) == f.size


def test_blca_slides_aggregate_to_patients(blca_paths, blca):
    df = read_table(blca_paths[0])
    assert df.shape == (437, 3072)
    multi = blca.patients[blca.patients["n_slides"] > 1]
    assert len(multi) == MULTI and blca.patients["n_slides"].max() == MAX_SLIDES
    counts = df.groupby("case_id").size()
    assert (blca.patients["n_slides"] == counts.loc[blca.patients.index]).all()
    case = multi.index[0]
    assert blca.slides[case] == df.loc[df.case_id == case, "slide_id"].tolist()


def test_blca_zip_is_read_in_memory(blca_paths):
    # The archive member is named '../dataset_csv/...': reading must not write anything.
    with zipfile.ZipFile(blca_paths[0]) as zf:
        assert zf.namelist()[0].startswith("../")
    assert hashlib.sha256(blca_paths[0].read_bytes()).hexdigest() == BLCA_SHA256


# --------------------------------------------------------------------------- reading tables
def test_read_zip_member_with_dotdot_in_memory(tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    zpath = work / "t.csv.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../escaped.csv", "case_id,x\nP0,1\n")
    df = read_table(zpath)
    assert df.to_dict("list") == {"case_id": ["P0"], "x": [1]}
    assert not (tmp_path / "escaped.csv").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "t.csv.zip"]


def test_zip_with_several_members_lists_them(tmp_path):
    zpath = tmp_path / "two.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("one.csv", "a\n1\n")
        zf.writestr("two.csv", "a\n2\n")
    with pytest.raises(DataError, match=r"two\.zip.*2 files.*one\.csv.*two\.csv"):
        read_table(zpath)


def test_read_table_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match=r"bad\.zip: corrupt zip"):
        read_table(tmp_path / "bad.zip")
    (tmp_path / "dup.csv").write_text("case_id,A_rnaseq,A_rnaseq\nP0,1,2\n")
    with pytest.raises(DataError, match=r"dup\.csv:1: duplicate column.*A_rnaseq"):
        read_table(tmp_path / "dup.csv")


# --------------------------------------------------------------------------- genomic columns
def test_genomic_columns_are_chosen_by_name(tmp_path):
    df = small_frame()
    base = load_cohort(write(df, tmp_path / "a.csv"))
    extra = df.copy()
    extra.insert(0, "Unnamed: 0", range(len(extra)))
    extra["censorship_copy"] = extra["censorship"]
    extra = extra[["Unnamed: 0", *reversed(extra.columns[1:].tolist())]]  # reorder columns too
    other = load_cohort(write(extra, tmp_path / "b.csv"))
    assert sorted(other.genomic_columns) == sorted(base.genomic_columns)
    assert len(base.genomic_columns) == 2 * len(GENES)
    pd.testing.assert_frame_equal(other.genomic[base.genomic_columns], base.genomic)
    assert "Unnamed: 0" not in other.patients.columns
    assert genomic_columns(["x_rnaseq", "censorship", "rnaseq", "y_cnv", "z_mut", "w_cnv_z"]) == [
        "x_rnaseq",
        "y_cnv",
        "z_mut",
    ]


def test_map_families_order_and_counts():
    columns = ["case_id", "B_rnaseq", "A_rnaseq", "A_cnv", "C_mut", "B_cnv", "A_mut"]
    fams = map_families(columns, {"F": ["A", "B", "Z", "A", "C"], "G": ["Z"]})
    f, g = fams
    assert f.columns == ["C_mut", "A_mut", "A_cnv", "B_cnv", "B_rnaseq", "A_rnaseq"]
    assert f.genes_mapped == ["A", "B", "C"] and f.genes_unmapped == ["Z"] and f.n_duplicates == 1
    assert g.columns == [] and g.genes_unmapped == ["Z"]


def test_signatures_ragged_and_families(tmp_path):
    sig = read_signatures(write_signatures(tmp_path / "sig.csv"))
    assert sig == {"Suppressors": ["TP53", "NOTAGENE"], "Oncogenes": ["MYC", "KRAS", "EGFR", "MYC"]}
    cohort = load_cohort(write(small_frame(), tmp_path / "t.csv"), signatures=tmp_path / "sig.csv")
    sup, onc = cohort.families
    assert sup.columns == ["TP53_cnv", "TP53_rnaseq"] and sup.genes_unmapped == ["NOTAGENE"]
    assert onc.columns == ["KRAS_cnv", "EGFR_cnv", "MYC_cnv", "KRAS_rnaseq", "EGFR_rnaseq", "MYC_rnaseq"]
    assert onc.n_duplicates == 1
    # The family's columns read the patient's own values (P3 is the table's last row).
    last = pd.read_csv(tmp_path / "t.csv").iloc[-1]
    np.testing.assert_allclose(
        cohort.genomic.loc["P3", onc.columns].to_numpy(), last[onc.columns].to_numpy(float), rtol=1e-6
    )


def test_families_json_roundtrip_and_errors(tmp_path):
    table = write(small_frame(), tmp_path / "t.csv")
    (tmp_path / "fam.json").write_text(json.dumps({"A": ["TP53_cnv", "MYC_rnaseq"], "B": ["KRAS_cnv"]}))
    cohort = load_cohort(table, families_json=tmp_path / "fam.json")
    assert [f.columns for f in cohort.families] == [["TP53_cnv", "MYC_rnaseq"], ["KRAS_cnv"]]
    assert cohort.families[0].genes_mapped == ["TP53", "MYC"]
    (tmp_path / "bad.json").write_text(json.dumps({"A": ["TP53_cnv", "GONE_rnaseq", "age"]}))
    err = error_of(table, families_json=tmp_path / "bad.json")
    assert "bad.json" in str(err) and "GONE_rnaseq" in str(err) and "'age'" in str(err)
    with pytest.raises(ConfigError):
        load_cohort(table, signatures=tmp_path / "x", families_json=tmp_path / "fam.json")


def test_family_without_columns_is_an_error(tmp_path):
    table = write(small_frame(), tmp_path / "t.csv")
    (tmp_path / "sig.csv").write_text("Good,Empty\nTP53,NOPE1\n,NOPE2\n")
    err = error_of(table, signatures=tmp_path / "sig.csv")
    assert "sig.csv" in str(err) and "Empty" in str(err)


def test_case_ids_stay_strings(tmp_path):
    df = small_frame()
    df["case_id"] = ["007", "010", "010", "011", "012"]
    cohort = load_cohort(write(df, tmp_path / "t.csv"))
    assert cohort.case_ids == ["007", "010", "011", "012"]
    assert cohort.slides["010"] == ["P1-S0.svs", "P1-S1.svs"]
    assert cohort.patients.loc["010", "n_slides"] == 2


def test_modalities_from_bag_folder(tmp_path):
    table = write(small_frame(), tmp_path / "t.csv")
    bags = tmp_path / "bags"
    for s in ("P0-S0", "P1-S0", "P2-S0"):
        write_bag_h5(bags / f"{s}.h5", np.ones((3, 4)), np.zeros((3, 2)))
    cohort = load_cohort(table, bag_dir=bags)
    assert cohort.modalities["wsi"].to_dict() == {"P0": True, "P1": False, "P2": True, "P3": False}
    assert cohort.modalities["n_bags"].to_dict() == {"P0": 1, "P1": 1, "P2": 1, "P3": 0}
    assert cohort.patient_bag("P0").features.shape == (3, 4)


# --------------------------------------------------------------------------- bad tables
def test_missing_required_columns_listed(tmp_path):
    df = small_frame().drop(columns=["censorship", "survival_months"])
    err = error_of(write(df, tmp_path / "t.csv"))
    msg = str(err)
    assert "t.csv:1" in msg and "'survival_months'" in msg and "'censorship'" in msg


def test_bad_time_values_name_line_and_column(tmp_path):
    df = small_frame()
    df["survival_months"] = df["survival_months"].astype(object)
    df.loc[0, "survival_months"] = None
    df.loc[3, "survival_months"] = -1.5
    df.loc[4, "survival_months"] = "soon"
    err = error_of(write(df, tmp_path / "t.csv"))
    msg = str(err)
    assert "t.csv:2: survival_months: missing survival time; expected a survival time >= 0" in msg
    assert "t.csv:5: survival_months: negative survival time -1.5" in msg
    assert "t.csv:6: survival_months: 'soon' is not a number" in msg
    assert len(err.problems) == 3


def test_censorship_must_be_zero_or_one(tmp_path):
    df = small_frame()
    df.loc[3, "censorship"] = 2
    msg = str(error_of(write(df, tmp_path / "t.csv")))
    assert "t.csv:5: censorship: censorship 2" in msg and "0 (event observed) or 1 (censored)" in msg


def test_nan_in_genomic_column(tmp_path):
    df = small_frame()
    df["KRAS_rnaseq"] = df["KRAS_rnaseq"].astype(float)
    df.loc[[3, 4], "KRAS_rnaseq"] = np.nan
    df["EGFR_cnv"] = df["EGFR_cnv"].astype(object)
    df.loc[0, "EGFR_cnv"] = "amp"
    err = error_of(write(df, tmp_path / "t.csv"))
    msg = str(err)
    assert "t.csv:5: KRAS_rnaseq: 2 missing value(s) (lines 5, 6)" in msg
    assert "t.csv:2: EGFR_cnv: 1 value(s) are not numbers (first 'amp'" in msg


def test_no_genomic_columns(tmp_path):
    df = small_frame()
    df = df[[c for c in df.columns if not c.endswith(("_cnv", "_rnaseq"))]]
    msg = str(error_of(write(df, tmp_path / "t.csv")))
    assert "t.csv:1: no genomic column; expected columns named <GENE>_rnaseq" in msg


def test_duplicate_and_conflicting_rows(tmp_path):
    df = small_frame()
    df = pd.concat([df, df.iloc[[4]]], ignore_index=True)  # exact duplicate of line 6 at line 7
    df.loc[2, "survival_months"] = 99.0  # P1's second slide disagrees
    df.loc[2, "TP53_rnaseq"] = 123.0
    err = error_of(write(df, tmp_path / "t.csv"))
    msg = str(err)
    assert "t.csv:7: slide_id: duplicate row: case P3 slide P3-S0.svs already on line 6" in msg
    assert "t.csv:4: survival_months: case P1: survival_months 99 disagrees with line 3 (8)" in msg
    assert "t.csv:4: TP53_rnaseq: case P1: genomic values differ from line 3" in msg


def test_slide_of_two_patients(tmp_path):
    df = small_frame()
    df.loc[4, "slide_id"] = "P0-S0.svs"
    msg = str(error_of(write(df, tmp_path / "t.csv")))
    assert "t.csv:6: slide_id: slide P0-S0.svs is listed for case P3 and for case P0 (line 2)" in msg


def test_all_problems_collected(tmp_path):
    df = small_frame()
    df.loc[0, "censorship"] = 5
    df.loc[3, "survival_months"] = -2
    df["case_id"] = df["case_id"].astype(object)
    df.loc[4, "case_id"] = None
    problems = check_table(df.set_axis(range(len(df))), "x.csv")
    assert {(p.row, p.column) for p in problems} == {
        (2, "censorship"),
        (5, "survival_months"),
        (6, "case_id"),
    }


def test_blank_lines_keep_line_numbers(tmp_path):
    text = write(small_frame(), tmp_path / "t.csv").read_text().splitlines()
    text.insert(2, "")  # a blank line 3
    text[5] = text[5].replace(",11.0,", ",-11.0,")  # P2, now on line 6
    (tmp_path / "t.csv").write_text("\n".join(text) + "\n")
    assert "t.csv:6: survival_months: negative" in str(error_of(tmp_path / "t.csv"))
