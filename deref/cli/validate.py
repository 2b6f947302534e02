"""``deref validate``: lint a cohort table, its bags, its splits and its fit to a run; list every problem."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from deref.data.bags import find_bag, read_bag
from deref.data.cohort import (
    GeneFamily,
    Problem,
    check_table,
    genomic_columns,
    map_families,
    read_families_json,
    read_signatures,
    read_table,
)
from deref.data.splits import Fold, fold_problems, read_mcat_splits
from deref.errors import DeRefError
from deref.model.config import ModelConfig

EPILOG = """\
examples:
  deref validate tcga_blca_all_clean.csv.zip --signatures signatures.csv
  deref validate tcga_blca_all_clean.csv.zip --signatures signatures.csv \\
      --bags features/blca --splits splits/5foldcv/tcga_blca --wsi-dim 1024
  deref validate tcga_blca_all_clean.csv.zip --bags features/blca --run runs/blca_fold0

Every problem is printed on its own line as
  FILE:LINE: COLUMN: problem; expected ...
followed by "N problems" (exit status 1), or by a short summary (exit status 0).
Bags are read in full (NaN/Inf check), so checking many large bags takes a while.
"""

_ID_DTYPES = {"case_id": str, "slide_id": str}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check a cohort table, bags, splits and run fit; list every problem",
        description="Check a cohort table and, optionally, its gene families, WSI bags, "
        "cross-validation splits and the run it is meant for. Lists every problem found.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("table", metavar="COHORT_TABLE", help="cohort table (CSV, or zip holding one CSV)")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("--signatures", metavar="SIG", help="signatures table (one column per gene family)")
    fam.add_argument("--families", metavar="JSON", help="families.json written by `deref genomics`")
    p.add_argument("--bags", metavar="DIR", help="folder of WSI bags (<slide>.h5 or <slide>.pt)")
    p.add_argument("--splits", metavar="DIR", help="folder of MCAT split files splits_<k>.csv")
    p.add_argument("--run", metavar="RUN_DIR", help="run folder with run.json to check the data against")
    p.add_argument("--wsi-dim", metavar="D", type=int, help="expected width of the bag features")
    p.add_argument(
        "--time-col", default="survival_months", help="survival time column (default: %(default)s)"
    )
    p.add_argument(
        "--censorship-col",
        default="censorship",
        help="censorship column, 1 = censored (default: %(default)s)",
    )
    p.set_defaults(func=run)


@dataclass
class _Report:
    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def add(self, item: Problem | str) -> None:
        self.problems.append(str(item))

    def add_error(self, exc: DeRefError) -> None:
        listed = getattr(exc, "problems", None)
        if listed:
            self.problems.extend(str(p) for p in listed)
        else:
            self.problems.append(" ".join(str(exc).split()))


@dataclass
class _Table:
    path: Path
    df: pd.DataFrame | None = None
    case_ids: list[str] = field(default_factory=list)
    slides: list[tuple[str, str, int]] = field(default_factory=list)  # (case, slide, line)
    no_slide: list[tuple[str, int]] = field(default_factory=list)
    events: dict[str, int] | None = None


def _check_table(args: argparse.Namespace, rep: _Report) -> _Table:
    info = _Table(path=Path(args.table))
    try:
        df = read_table(info.path, dtype=_ID_DTYPES)
    except DeRefError as exc:
        rep.add_error(exc)
        return info
    info.df = df
    problems = check_table(df, info.path, args.time_col, args.censorship_col)
    for p in problems:
        rep.add(p)
    if "case_id" not in df.columns:
        return info
    lines = np.asarray(df.index) + 2
    cases = df["case_id"].astype(str).str.strip()
    valid = df["case_id"].notna().to_numpy() & (cases != "").to_numpy()
    info.case_ids = list(dict.fromkeys(cases[valid]))
    if "slide_id" in df.columns:
        seen = set()
        has = set()
        for c, s, ln, ok in zip(cases, df["slide_id"], lines, valid):
            if not ok:
                continue
            if pd.notna(s) and str(s).strip():
                key = (c, str(s).strip())
                if key not in seen:
                    seen.add(key)
                    info.slides.append((c, key[1], int(ln)))
                    has.add(c)
        first_line = {c: int(ln) for c, ln, ok in zip(cases[::-1], lines[::-1], valid[::-1]) if ok}
        info.no_slide = [(c, first_line[c]) for c in info.case_ids if c not in has]
    if args.censorship_col in df.columns:
        cens = pd.to_numeric(df[args.censorship_col], errors="coerce")
        first = pd.DataFrame({"case": cases[valid], "cens": cens[valid]}).drop_duplicates("case")
        if first["cens"].isin([0, 1]).all():
            info.events = {c: int(1 - v) for c, v in zip(first["case"], first["cens"])}
    return info


def _families(args: argparse.Namespace, table: _Table, rep: _Report) -> list[GeneFamily] | None:
    columns = [] if table.df is None else [str(c) for c in table.df.columns]
    if args.signatures:
        try:
            sig = read_signatures(args.signatures)
        except DeRefError as exc:
            rep.add_error(exc)
            return None
        if table.df is None:
            return None
        families = map_families(columns, sig)
        for f in families:
            if not f.columns:
                rep.add(
                    Problem(
                        str(args.signatures),
                        None,
                        f.name,
                        f"none of the family's {len(f.genes_unmapped)} genes has a column in {table.path}",
                        "genes with <GENE>_rnaseq, _cnv or _mut columns",
                    )
                )
        return families
    if args.families:
        try:
            return read_families_json(args.families, columns if table.df is not None else None)
        except DeRefError as exc:
            rep.add_error(exc)
            return None
    return None


def _check_bags(
    args: argparse.Namespace, table: _Table, rep: _Report, expected_dim: int | None
) -> dict[str, Any]:
    stats: dict[str, Any] = {"found": 0, "read": 0, "dims": Counter()}
    bag_dir = Path(args.bags)
    if not bag_dir.is_dir():
        rep.add(
            Problem(str(bag_dir), None, None, "bag folder not found", "a folder of <slide>.h5 / <slide>.pt")
        )
        return stats
    for case, line in table.no_slide:
        rep.add(
            Problem(
                str(table.path),
                line,
                "slide_id",
                f"case {case} has no slide_id, so no WSI bag",
                "a slide for every patient when bags are used",
            )
        )
    dims: dict[Path, int] = {}
    progress = tqdm(
        table.slides,
        desc="checking bags",
        unit="bag",
        file=sys.stderr,
        disable=None if len(table.slides) > 20 else True,
    )
    for case, slide, line in progress:
        try:
            path = find_bag(slide, bag_dir)
        except DeRefError as exc:
            rep.add(
                Problem(str(table.path), line, "slide_id", f"case {case}: {exc}", "one bag file per slide")
            )
            continue
        stats["found"] += 1
        try:
            bag = read_bag(path)
        except DeRefError as exc:
            rep.add_error(exc)
            continue
        stats["read"] += 1
        dims[path] = bag.dim
        del bag
    counts = Counter(dims.values())
    stats["dims"] = counts
    if expected_dim is None and counts:
        expected_dim, n_common = counts.most_common(1)[0]
        reason = f"like {n_common} other bag(s)"
    else:
        reason = "--wsi-dim / the run's wsi_dim"
    if expected_dim is not None:
        for path, d in dims.items():
            if d != expected_dim:
                rep.add(f"{path}: features are {d}-dimensional; expected {expected_dim} ({reason})")
    stats["dim"] = expected_dim
    return stats


def _check_splits(args: argparse.Namespace, table: _Table, rep: _Report) -> list[Fold]:
    try:
        folds = read_mcat_splits(args.splits)
    except DeRefError as exc:
        rep.add_error(exc)
        return []
    if table.df is not None and table.case_ids:
        for p in fold_problems(folds, table.case_ids, table.events):
            rep.add(p)
    return folds


def _read_run(args: argparse.Namespace, rep: _Report) -> tuple[ModelConfig | None, list[list[str]] | None]:
    path = Path(args.run) / "run.json"
    if not path.is_file():
        rep.add(Problem(str(path), None, None, "run file not found", "a run folder holding run.json"))
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        rep.add(Problem(str(path), None, None, f"not readable JSON ({exc})", "a JSON object"))
        return None, None
    if not isinstance(data, dict):
        rep.add(Problem(str(path), None, None, "not a JSON object", "keys 'model' and 'data'"))
        return None, None
    config = None
    if "model" not in data:
        rep.add(Problem(str(path), None, "model", "missing key", "a model configuration"))
    else:
        try:
            config = ModelConfig.from_dict(data["model"])
        except (DeRefError, TypeError) as exc:
            rep.add(
                Problem(str(path), None, "model", f"invalid model configuration: {exc}", "a ModelConfig dict")
            )
    columns = None
    m1 = (data.get("data") or {}).get("m1_columns") if isinstance(data.get("data"), dict) else None
    if m1 is None:
        rep.add(Problem(str(path), None, "data.m1_columns", "missing key", "column names per gene family"))
    elif not (
        isinstance(m1, list) and all(isinstance(g, list) and all(isinstance(c, str) for c in g) for g in m1)
    ):
        rep.add(Problem(str(path), None, "data.m1_columns", "malformed", "a list of lists of column names"))
    else:
        columns = m1
    return config, columns


def _check_run_fit(
    args: argparse.Namespace,
    table: _Table,
    rep: _Report,
    config: ModelConfig | None,
    m1_columns: list[list[str]] | None,
    families: list[GeneFamily] | None,
) -> None:
    run_json = str(Path(args.run) / "run.json")
    if config is not None and m1_columns is not None and tuple(len(g) for g in m1_columns) != config.m1_sizes:
        rep.add(
            Problem(
                run_json,
                None,
                "model.m1_sizes",
                f"{list(config.m1_sizes)} but data.m1_columns has {[len(g) for g in m1_columns]} columns",
                "the same group sizes",
            )
        )
    if m1_columns is not None and table.df is not None:
        present = set(genomic_columns(str(c) for c in table.df.columns))
        names = list(config.m1_names) if config is not None else []
        for i, group in enumerate(m1_columns):
            name = names[i] if i < len(names) else f"group {i}"
            missing = [c for c in group if c not in present]
            if missing:
                rep.add(
                    Problem(
                        str(table.path),
                        1,
                        missing[0],
                        f"{len(missing)} column(s) of the run's family {name!r} are not genomic columns of "
                        f"the table: {missing[:5]}" + (" ..." if len(missing) > 5 else ""),
                        f"the columns the run was trained on ({run_json})",
                    )
                )
    if families is not None and m1_columns is not None:
        if len(families) != len(m1_columns):
            rep.add(
                Problem(
                    run_json,
                    None,
                    "data.m1_columns",
                    f"{len(m1_columns)} groups but the given families have {len(families)}",
                    "the same number of families",
                )
            )
        for fam, group in zip(families, m1_columns):
            if fam.columns != group:
                added = [c for c in fam.columns if c not in set(group)]
                removed = [c for c in group if c not in set(fam.columns)]
                detail = (
                    f"{len(added)} column(s) not in the run, {len(removed)} of the run's missing"
                    if added or removed
                    else "same columns in another order"
                )
                rep.add(
                    Problem(
                        run_json,
                        None,
                        f"data.m1_columns ({fam.name})",
                        f"family columns from the data differ from the run's: {detail}",
                        "exactly the run's columns, in its order",
                    )
                )
    elif families is not None and config is not None:
        sizes = tuple(f.size for f in families)
        if sizes != config.m1_sizes:
            rep.add(
                Problem(
                    run_json,
                    None,
                    "model.m1_sizes",
                    f"{list(config.m1_sizes)}",
                    f"the data's sizes {list(sizes)}",
                )
            )


def run(args: argparse.Namespace) -> int:
    rep = _Report()
    table = _check_table(args, rep)
    families = _families(args, table, rep)

    config = m1_columns = None
    if args.run:
        config, m1_columns = _read_run(args, rep)
    expected_dim = args.wsi_dim
    if config is not None:
        if expected_dim is not None and expected_dim != config.wsi_dim:
            rep.add(
                Problem(
                    str(Path(args.run) / "run.json"),
                    None,
                    "model.wsi_dim",
                    f"{config.wsi_dim}",
                    f"--wsi-dim {expected_dim}",
                )
            )
        expected_dim = config.wsi_dim if expected_dim is None else expected_dim
    if args.run:
        _check_run_fit(args, table, rep, config, m1_columns, families)

    bag_stats = None
    if args.bags:
        bag_stats = _check_bags(args, table, rep, expected_dim)
    folds: list[Fold] = []
    if args.splits:
        folds = _check_splits(args, table, rep)

    if rep.problems:
        for line in rep.problems:
            print(line)
        n = len(rep.problems)
        print(f"{n} problem{'s' if n != 1 else ''}")
        return 1

    n_events = sum(table.events.values()) if table.events else 0
    print(f"OK: {table.path}")
    print(
        f"  patients {len(table.case_ids)}, events {n_events} (censored {len(table.case_ids) - n_events}), "
        f"slides {len(table.slides)}"
    )
    if table.df is not None:
        print(f"  genomic columns {len(genomic_columns(str(c) for c in table.df.columns))}")
    if families is not None:
        print("  families: " + ", ".join(f"{f.name} {f.size}" for f in families))
    elif m1_columns is not None:
        print(f"  run's families sizes: {[len(g) for g in m1_columns]}")
    if bag_stats is not None:
        print(f"  bags found {bag_stats['found']}/{len(table.slides)}, features {bag_stats.get('dim')}-d")
    if folds:
        sizes = ", ".join(f"{len(f.train)}/{len(f.val)}" for f in folds)
        print(f"  splits: {len(folds)} folds, train/val {sizes}")
    if config is not None:
        print(f"  run: {config.model_type}, wsi_dim {config.wsi_dim}, m1_sizes {list(config.m1_sizes)}")
    return 0
