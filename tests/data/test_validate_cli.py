"""``deref validate`` (lists every problem) and ``deref genomics`` (families.json), driven as a user would."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deref.cli import genomics, validate
from deref.data.bags import write_bag_h5
from deref.data.cohort import load_cohort
from deref.errors import DeRefError
from deref.model.config import tiny_config
from deref.runs import DataInfo, FoldInfo, RunInfo

LINE = re.compile(r"^[^:]+(:\d+)?: .+")


def cli(argv: list[str]) -> int:
    """Run one of this package's subcommands the way ``deref.cli.main`` does."""
    parser = argparse.ArgumentParser(prog="deref")
    sub = parser.add_subparsers(dest="command")
    validate.register(sub)
    genomics.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DeRefError as exc:
        print(f"deref {args.command}: error: {exc}")
        return 1


@pytest.fixture(scope="module")
def tcga(shared_data: Path) -> dict[str, Path]:
    t = shared_data / "tcga"
    return {
        "table": t / "datasets_csv_sig" / "tcga_blca_all_clean.csv.zip",
        "sig": t / "signatures.csv",
        "splits": t / "splits" / "5foldcv" / "tcga_blca",
    }


def tiny_cohort(tmp_path: Path) -> dict[str, Path]:
    """3 patients, 4 slides (P1 has two), 2 families, bags of width 8 for every slide."""
    rows = [
        ("P0", "P0-A.svs", 10.0, 0),
        ("P1", "P1-A.svs", 20.0, 1),
        ("P1", "P1-B.svs", 20.0, 1),
        ("P2", "P2-A.svs", 30.0, 0),
    ]
    df = pd.DataFrame(rows, columns=["case_id", "slide_id", "survival_months", "censorship"])
    for g, v in (("TP53", [1, 2, 2, 3]), ("KRAS", [0, 1, 1, 0]), ("MYC", [5, 6, 6, 7])):
        df[f"{g}_rnaseq"] = np.asarray(v, dtype=float) / 10
        df[f"{g}_cnv"] = v
    table = tmp_path / "cohort.csv"
    df.to_csv(table, index=False)
    sig = tmp_path / "sig.csv"
    sig.write_text("Suppressors,Oncogenes\nTP53,KRAS\n,MYC\n")
    bags = tmp_path / "bags"
    rng = np.random.default_rng(0)
    for slide in ("P0-A", "P1-A", "P1-B", "P2-A"):
        n = 3 + len(slide)
        write_bag_h5(bags / f"{slide}.h5", rng.normal(size=(n, 8)), np.zeros((n, 2)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_json(run_dir, tiny_run_info())
    return {"table": table, "sig": sig, "bags": bags, "run": run_dir}


def tiny_run_info() -> RunInfo:
    """A one-fold run trained on :func:`tiny_cohort`'s families and 8-d bags."""
    config = tiny_config(m1_sizes=(2, 4), m1_names=("Suppressors", "Oncogenes"), wsi_dim=8)
    edges = (0.0, *np.linspace(12.0, 28.0, config.n_bins - 1), math.inf)
    return RunInfo(
        name="tiny",
        model=config,
        folds=(FoldInfo(index=0, bin_edges=edges, train_ids=("P0", "P1"), val_ids=("P2",)),),
        data=DataInfo(
            m1_names=config.m1_names,
            m1_columns=(("TP53_cnv", "TP53_rnaseq"), ("KRAS_cnv", "MYC_cnv", "KRAS_rnaseq", "MYC_rnaseq")),
            wsi_dim=8,
        ),
    )


def write_run_json(run_dir: Path, info: RunInfo) -> None:
    (run_dir / "run.json").write_text(json.dumps(info.to_dict(), default=str))


# --------------------------------------------------------------------------- validate
def test_validate_real_blca_ok(tcga, capsys):
    rc = cli(
        ["validate", str(tcga["table"]), "--signatures", str(tcga["sig"]), "--splits", str(tcga["splits"])]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "patients 373, events 169 (censored 204), slides 437" in out
    assert "Cell Differentiation Markers 468" in out and "Tumor Suppressor Genes 94" in out
    assert "5 folds, train/val 298/75, 298/75, 298/75, 299/74, 299/74" in out


def test_validate_tiny_ok_with_bags_and_run(tmp_path, capsys):
    p = tiny_cohort(tmp_path)
    argv = [
        "validate",
        str(p["table"]),
        "--signatures",
        str(p["sig"]),
        "--bags",
        str(p["bags"]),
        "--run",
        str(p["run"]),
    ]
    rc = cli([*argv, "--wsi-dim", "8"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bags found 4/4, features 8-d" in out and "Suppressors 2, Oncogenes 4" in out


def test_validate_lists_every_problem(tmp_path, capsys):
    p = tiny_cohort(tmp_path)
    df = pd.read_csv(p["table"])
    df.loc[0, "censorship"] = 3  # line 2
    df.loc[3, "survival_months"] = -1  # line 5
    df.to_csv(p["table"], index=False)
    (p["bags"] / "P1-B.h5").unlink()  # missing bag (line 4)
    nan = np.ones((4, 8))
    nan[2, 0] = np.nan
    write_bag_h5(p["bags"] / "P2-A.h5", nan, None)  # NaN bag
    write_bag_h5(p["bags"] / "P1-A.h5", np.ones((4, 6)), None)  # wrong width
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "splits_0.csv").write_text(",train,val\n0,P0,P2\n1,P9,\n")  # P9 unknown, P1 absent
    rc = cli(
        [
            "validate",
            str(p["table"]),
            "--signatures",
            str(p["sig"]),
            "--bags",
            str(p["bags"]),
            "--splits",
            str(splits),
            "--wsi-dim",
            "8",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert lines[-1] == f"{len(lines) - 1} problems"
    body = "\n".join(lines[:-1])
    t = str(p["table"])
    assert f"{t}:2: censorship: censorship 3; expected 0 (event observed) or 1 (censored)" in body
    assert f"{t}:5: survival_months: negative survival time -1" in body
    assert f"{t}:4: slide_id: case P1: slide P1-B.svs: no bag file" in body
    assert f"{p['bags'] / 'P2-A.h5'}: 1 of 4 patch(es) have NaN or Inf" in body
    assert f"{p['bags'] / 'P1-A.h5'}: features are 6-dimensional; expected 8" in body
    assert f"{splits / 'splits_0.csv'}: train: 1 case(s) not in the cohort table: P9" in body
    assert "1 table case(s) in neither train nor val: P1" in body
    assert all(LINE.match(line) for line in lines[:-1])
    assert len(lines) - 1 == 8


def test_validate_dims_compared_across_bags_without_expected(tmp_path, capsys):
    p = tiny_cohort(tmp_path)
    write_bag_h5(p["bags"] / "P2-A.h5", np.ones((4, 16)), None)
    assert cli(["validate", str(p["table"]), "--bags", str(p["bags"])]) == 1
    out = capsys.readouterr().out
    assert "P2-A.h5: features are 16-dimensional; expected 8 (like 3 other bag(s))" in out


def test_validate_run_mismatch(tmp_path, capsys):
    p = tiny_cohort(tmp_path)
    info = tiny_run_info()
    oncogenes = (*info.data.m1_columns[1], "GONE_rnaseq")
    data = dataclasses.replace(info.data, m1_columns=(info.data.m1_columns[0], oncogenes), wsi_dim=1024)
    info = dataclasses.replace(info, model=dataclasses.replace(info.model, wsi_dim=1024), data=data)
    write_run_json(p["run"], info)
    rc = cli(
        [
            "validate",
            str(p["table"]),
            "--signatures",
            str(p["sig"]),
            "--bags",
            str(p["bags"]),
            "--run",
            str(p["run"]),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "model.m1_sizes: [2, 4] but data.m1_columns has [2, 5] columns" in out
    assert (
        f"{p['table']}:1: GONE_rnaseq: 1 column(s) of the run's gene family 'Oncogenes' are not genomic "
        "columns of the table: GONE_rnaseq" in out
    )
    assert "data.m1_columns (Oncogenes): family columns from the data differ from the run's" in out
    assert "features are 8-dimensional; expected 1024" in out


def test_validate_unreadable_table_and_missing_run(tmp_path, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04not a zip")
    assert cli(["validate", str(bad), "--run", str(tmp_path / "norun")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{bad}: corrupt zip")
    assert f"{tmp_path / 'norun' / 'run.json'}: run file not found" in lines[1]
    assert lines[-1] == "2 problems"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"model": {}, "data": {}}', "format None; expected 'deref-run/1'"),
        ('["a list"]', "not a JSON object; expected a run.json as `deref train` writes it"),
    ],
)
def test_validate_malformed_run_json_is_a_problem_naming_the_file(tmp_path, capsys, content, message):
    p = tiny_cohort(tmp_path)
    (p["run"] / "run.json").write_text(content)
    assert cli(["validate", str(p["table"]), "--signatures", str(p["sig"]), "--run", str(p["run"])]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{p['run'] / 'run.json'}: ") and message in lines[0]
    assert lines[-1] == "1 problem"


# --------------------------------------------------------------------------- genomics
def test_genomics_writes_families_json(tcga, tmp_path, capsys):
    out_dir = tmp_path / "genes"
    rc = cli(["genomics", str(tcga["table"]), "--signatures", str(tcga["sig"]), "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"Cell Differentiation Markers\s+443\s+416\s+27\s+9\s+468", out)
    assert "3062 in the table (0 _mut, 248 _cnv, 2814 _rnaseq); 3062 used by a family, 0 unused" in out
    mapping = json.loads((out_dir / "families.json").read_text())
    assert [len(v) for v in mapping.values()] == [94, 334, 521, 468, 1496, 479]
    report = pd.read_csv(out_dir / "genomics_report.csv")
    assert (report["status"] == "unmapped").sum() == 21 + 19 + 27 + 139 + 25
    assert report.loc[report["family"] == "Oncogenes", "status"].value_counts().to_dict() == {
        "mapped": 307,
        "unmapped": 21,
    }
    by_json = load_cohort(tcga["table"], families_json=out_dir / "families.json")
    by_sig = load_cohort(tcga["table"], signatures=tcga["sig"])
    assert [f.columns for f in by_json.families] == [f.columns for f in by_sig.families]


def test_genomics_family_without_columns_fails_after_report(tmp_path, capsys):
    p = tiny_cohort(tmp_path)
    (tmp_path / "sig2.csv").write_text("Good,Empty\nTP53,NOPE\n")
    rc = cli(
        [
            "genomics",
            str(p["table"]),
            "--signatures",
            str(tmp_path / "sig2.csv"),
            "--out",
            str(tmp_path / "g"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "['Empty'] map to no column" in out
    assert (tmp_path / "g" / "genomics_report.csv").is_file()


def test_main_entry_point_registers_both(tmp_path, capsys):
    from deref.cli.main import main

    p = tiny_cohort(tmp_path)
    assert main(["validate", str(p["table"]), "--signatures", str(p["sig"])]) == 0
    assert (
        main(["genomics", str(p["table"]), "--signatures", str(p["sig"]), "--out", str(tmp_path / "g")]) == 0
    )
    assert main(["validate", str(tmp_path / "absent.csv")]) == 1
