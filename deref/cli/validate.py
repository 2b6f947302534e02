"""``deref validate``: lint a cohort table, its bags, its splits and its fit to a run; list every problem."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from deref.cli.common import add_mri_args, add_survival_column_args
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
from deref.errors import CheckpointError, DeRefError, one_line
from deref.runs import RunDir, RunInfo
from deref.runs.fit import run_fit_problems
from deref.survival import event_of

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
    add_mri_args(p)
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="a patient without an MRI sequence or a slide's bag is listed as a missing input, not a problem "
        "(as `deref train --allow-missing` treats it)",
    )
    add_survival_column_args(p)
    p.set_defaults(func=run)


@dataclass
class _Report:
    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # missing inputs, with --allow-missing

    def add(self, item: Problem | str) -> None:
        self.problems.append(str(item))

    def add_error(self, exc: DeRefError) -> None:
        listed = getattr(exc, "problems", None)
        if listed:
            self.problems.extend(str(p) for p in listed)
        else:
            self.problems.append(one_line(exc))


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
    problems = check_table(
        df,
        info.path,
        args.time_col,
        args.censorship_col,
        require_genomic=not (args.mri_manifest or args.mri_features or args.mri_cubes),
    )
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
        first = pd.DataFrame({"case": cases[valid], "censorship": df[args.censorship_col][valid]})
        first = first.drop_duplicates("case")
        events = event_of(first, what=str(info.path))
        if np.isin(events, (0.0, 1.0)).all():
            info.events = {c: int(e) for c, e in zip(first["case"], events)}
    return info


def _mri_groups(args: argparse.Namespace, table: _Table, rep: _Report) -> list[GeneFamily] | None:
    """The MRI cohort's groups (one per sequence) after checking the manifest and every patient's
    feature file; every problem is reported."""
    from deref.data.mri import mri_groups, read_mri_cubes, read_mri_manifest

    if args.mri_features and args.mri_cubes:
        rep.add("--mri-features (frozen vectors) or --mri-cubes (ROI cubes, end to end), not both")
        return None
    if not (args.mri_manifest and (args.mri_features or args.mri_cubes)):
        rep.add(
            "--mri-manifest and --mri-features (or --mri-cubes) go together (the manifest and its `deref mri` output)"
        )
        return None
    if args.signatures or args.families:
        rep.add("an MRI cohort's modality 1 is the MRI: give no --signatures / --families")
        return None
    try:
        allow = bool(args.allow_missing)
        manifest = read_mri_manifest(args.mri_manifest, allow_missing=allow)
        if args.mri_cubes:
            cubes = read_mri_cubes(manifest, args.mri_cubes, table.case_ids, allow_missing=allow)
            args._mri_cubes = cubes  # for the run fit check
            for g, name in enumerate(cubes.sequences):
                for i in np.flatnonzero(np.isnan(cubes.data[:, g, 0])) if cubes.size else []:
                    rep.missing.append(f"case {cubes.case_ids[i]}: no {name} cube (a missing sequence)")
            return [GeneFamily(name=s, columns=[], n_values=cubes.size) for s in manifest.sequences]
        frame, groups = mri_groups(manifest, args.mri_features, table.case_ids, allow_missing=allow)
        for g in groups:
            for case in frame.index[frame[g.columns].isna().all(axis=1)]:
                rep.missing.append(f"case {case}: no {g.name} vector (a missing sequence)")
        return groups
    except DeRefError as exc:
        rep.add_error(exc)
        return None


def _families(args: argparse.Namespace, table: _Table, rep: _Report) -> list[GeneFamily] | None:
    if args.mri_manifest or args.mri_features or args.mri_cubes:
        return _mri_groups(args, table, rep)
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
        if args.allow_missing:
            rep.missing.append(f"case {case}: no slide_id (a missing slide)")
            continue
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
            if args.allow_missing:
                rep.missing.append(f"case {case}: {exc} (a missing slide)")
                continue
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


def _read_run(args: argparse.Namespace, rep: _Report) -> RunInfo | None:
    """The run's typed ``run.json``; a missing or malformed file is a problem naming it."""
    run_json = Path(args.run) / "run.json"
    if not run_json.is_file():
        rep.add(Problem(str(run_json), None, None, "run file not found", "a run folder holding run.json"))
        return None
    try:
        return RunDir(args.run).info
    except (CheckpointError, OSError) as exc:
        text = one_line(exc).removeprefix(f"{run_json}: ")
        expected = None if "expected" in text else "a run.json as `deref train` writes it"
        rep.add(Problem(str(run_json), None, None, text, expected))
        return None


def _check_run(
    args: argparse.Namespace, table: _Table, families: list[GeneFamily] | None, rep: _Report
) -> RunInfo | None:
    """The run's fit to the table and its families (the one fit check of :mod:`deref.runs.fit`).

    Bags are not part of it here: :func:`_check_bags` reads every bag against the run's width.
    """
    info = _read_run(args, rep)
    if info is None:
        return None
    run_json = str(Path(args.run) / "run.json")
    if args.wsi_dim is not None and args.wsi_dim != info.model.wsi_dim:
        rep.add(
            Problem(run_json, None, "model.wsi_dim", f"{info.model.wsi_dim}", f"--wsi-dim {args.wsi_dim}")
        )
    genomic = None if table.df is None else genomic_columns(str(c) for c in table.df.columns)
    if args.mri_manifest and families is not None:  # the MRI vectors are the modality-1 columns
        genomic = [c for f in families for c in f.columns]
    problems = run_fit_problems(
        info,
        run_json=run_json,
        table=str(table.path),
        genomic_columns=genomic,
        families=families,
        check_bags=False,
    )
    if args.mri_manifest and families is not None:  # vectors or cubes, as the run reads them
        from deref.runs.fit import m1_source_problems

        cubes = getattr(args, "_mri_cubes", None)
        problems = m1_source_problems(info, "mri", cubes, str(table.path), run_json) + problems
    for p in problems:
        rep.add(p)
    return info


def _print_summary(
    table: _Table,
    families: list[GeneFamily] | None,
    info: RunInfo | None,
    bag_stats: dict[str, Any] | None,
    folds: list[Fold],
    m1_label: str = "families",
) -> None:
    n_events = sum(table.events.values()) if table.events else 0
    print(f"OK: {table.path}")
    print(
        f"  patients {len(table.case_ids)}, events {n_events} (censored {len(table.case_ids) - n_events}), "
        f"slides {len(table.slides)}"
    )
    if table.df is not None and m1_label == "families":
        print(f"  genomic columns {len(genomic_columns(str(c) for c in table.df.columns))}")
    if families is not None:
        print(f"  {m1_label}: " + ", ".join(f"{f.name} {f.size}" for f in families))
    elif info is not None and info.data.m1_columns:
        print(f"  run's families sizes: {[len(g) for g in info.data.m1_columns]}")
    if bag_stats is not None:
        print(f"  bags found {bag_stats['found']}/{len(table.slides)}, features {bag_stats.get('dim')}-d")
    if folds:
        sizes = ", ".join(f"{len(f.train)}/{len(f.val)}" for f in folds)
        print(f"  splits: {len(folds)} folds, train/val {sizes}")
    if info is not None:
        cfg = info.model
        print(f"  run: {cfg.model_type}, wsi_dim {cfg.wsi_dim}, m1_sizes {list(cfg.m1_sizes)}")


def run(args: argparse.Namespace) -> int:
    rep = _Report()
    table = _check_table(args, rep)
    families = _families(args, table, rep)
    info = _check_run(args, table, families, rep) if args.run else None
    expected_dim = args.wsi_dim
    if expected_dim is None and info is not None:
        expected_dim = info.model.wsi_dim
    bag_stats = _check_bags(args, table, rep, expected_dim) if args.bags else None
    folds = _check_splits(args, table, rep) if args.splits else []
    if rep.problems:
        for line in rep.problems:
            print(line)
        n = len(rep.problems)
        print(f"{n} problem{'s' if n != 1 else ''}")
        return 1
    _print_summary(
        table, families, info, bag_stats, folds, "MRI sequences" if args.mri_manifest else "families"
    )
    if rep.missing:
        print(f"  missing inputs (--allow-missing): {len(rep.missing)}")
        for line in rep.missing[:10]:
            print(f"    {line}")
    return 0
