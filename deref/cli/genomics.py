"""``deref genomics``: map gene-family signatures onto a cohort table's genomic columns."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from deref.data.cohort import (
    GENOMIC_SUFFIXES,
    GeneFamily,
    gene_of,
    genomic_columns,
    map_families,
    read_signatures,
    read_table,
)
from deref.errors import DataError

EPILOG = """\
examples:
  deref genomics tcga_blca_all_clean.csv.zip --signatures signatures.csv --out runs/blca_genes
  deref train ... --families runs/blca_genes/families.json

A gene G of a family maps to the table columns G_mut, G_cnv and G_rnaseq that exist.
Writes OUT/families.json ({family: [column, ...]}, accepted by `deref validate --families`
and load_cohort(families_json=...)) and OUT/genomics_report.csv (one row per gene and per
unused column).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "genomics",
        help="map gene families onto a table's genomic columns; write families.json",
        description="Report how a signatures table (one column per gene family) maps onto the "
        "genomic columns of a cohort table, and write the family -> columns mapping.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", metavar="TABLE", help="cohort table (CSV, or zip holding one CSV)")
    p.add_argument(
        "--signatures", metavar="SIG", required=True, help="signatures table (one column per family)"
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.set_defaults(func=run)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def report_frame(families: list[GeneFamily], columns: list[str]) -> pd.DataFrame:
    """One row per (family, gene) with its status and columns, plus one per unused column."""
    genomic = genomic_columns(columns)
    rows = []
    for fam in families:
        by_gene: dict[str, list[str]] = {}
        for c in fam.columns:
            by_gene.setdefault(gene_of(c), []).append(c)
        for g in fam.genes_mapped:
            cols = by_gene.get(g, [])
            rows.append((fam.name, g, "mapped", len(cols), ";".join(cols)))
        for g in fam.genes_unmapped:
            rows.append((fam.name, g, "unmapped", 0, ""))
    used = {c for f in families for c in f.columns}
    for c in genomic:
        if c not in used:
            rows.append(("", gene_of(c), "unused", 1, c))
    return pd.DataFrame(rows, columns=["family", "gene", "status", "n_columns", "columns"])


def run(args: argparse.Namespace) -> int:
    table = Path(args.table)
    df = read_table(table)
    columns = [str(c) for c in df.columns]
    genomic = genomic_columns(columns)
    if not genomic:
        raise DataError(f"{table}: no genomic column; expected columns named <GENE>_rnaseq, _cnv or _mut")
    families = map_families(columns, read_signatures(args.signatures))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mapping = {f.name: f.columns for f in families}
    _write_atomic(out / "families.json", json.dumps(mapping, indent=1) + "\n")
    report = report_frame(families, columns)
    _write_atomic(out / "genomics_report.csv", report.to_csv(index=False))

    width = max([len("family")] + [len(f.name) for f in families])
    print(
        f"{'family':<{width}}  {'genes':>6}  {'mapped':>6}  {'unmapped':>8}  {'repeats':>7}  {'columns':>7}"
    )
    for f in families:
        n_genes = len(f.genes_mapped) + len(f.genes_unmapped)
        print(
            f"{f.name:<{width}}  {n_genes:>6}  {len(f.genes_mapped):>6}  {len(f.genes_unmapped):>8}  "
            f"{f.n_duplicates:>7}  {len(f.columns):>7}"
        )
    used = {c for f in families for c in f.columns}
    unused = [c for c in genomic if c not in used]
    by_suffix = ", ".join(f"{sum(c.endswith(s) for c in genomic)} {s}" for s in GENOMIC_SUFFIXES)
    print(
        f"genomic columns: {len(genomic)} in the table ({by_suffix}); "
        f"{len(used)} used by a family, {len(unused)} unused"
    )
    if unused:
        print(f"unused columns: {', '.join(unused[:10])}" + (" ..." if len(unused) > 10 else ""))
    print(f"wrote {out / 'families.json'} and {out / 'genomics_report.csv'}")
    empty = [f.name for f in families if not f.columns]
    if empty:
        raise DataError(
            f"{args.signatures}: famil{'ies' if len(empty) > 1 else 'y'} {empty} map to no column of "
            f"{table}; families.json is written but cannot be loaded until every family has a column"
        )
    return 0
