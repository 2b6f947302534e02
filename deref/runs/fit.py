"""A run and a cohort: the run's own cohort, and the one run <-> cohort <-> bags fit check.

``deref validate --run``, the ``Predictor`` (before scoring another cohort) and the dashboard's
"Load a run / cohort" all call :func:`run_fit_problems`; each :class:`~deref.data.cohort.Problem`
names the file, the field and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from deref.data.cohort import Problem
from deref.runs.info import RunInfo

_SHOWN = 5


def _examples(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (" ..." if len(items) > _SHOWN else "")


def run_consistency_problems(info: RunInfo, run_json: str) -> list[Problem]:
    """What is inconsistent inside the run itself (config vs recorded columns and bins)."""
    problems: list[Problem] = []
    cfg, cols = info.model, info.data.m1_columns
    sizes = tuple(len(g) for g in cols)
    if cols and cfg.model_type != "snn" and sizes != tuple(cfg.m1_sizes):
        problems.append(
            Problem(
                run_json,
                None,
                "model.m1_sizes",
                f"{list(cfg.m1_sizes)} but data.m1_columns has {list(sizes)} columns",
                "the same group sizes",
            )
        )
    for f in info.folds:
        if f.n_bins != cfg.n_bins:
            problems.append(
                Problem(
                    run_json,
                    None,
                    f"folds[{f.index}].bin_edges",
                    f"{f.n_bins} time bins but the model config says n_bins = {cfg.n_bins}",
                    "n_bins + 1 edges",
                )
            )
            break
    return problems


def _family_problems(info: RunInfo, families: Sequence, run_json: str) -> list[Problem]:
    run_cols = info.data.m1_columns
    names = info.data.m1_names or info.model.m1_names
    if info.model.mri_encoder == "resnet3d":  # ROI cubes: checked by m1_source_problems
        return []
    if not run_cols:
        sizes = tuple(f.size for f in families)
        if info.model.model_type != "snn" and sizes != tuple(info.model.m1_sizes):
            return [
                Problem(
                    run_json,
                    None,
                    "model.m1_sizes",
                    f"{list(info.model.m1_sizes)}",
                    f"the data's family sizes {list(sizes)}",
                )
            ]
        return []
    if len(families) != len(run_cols):
        return [
            Problem(
                run_json,
                None,
                "data.m1_columns",
                f"the run has {len(run_cols)} gene families ({', '.join(names)}) but the cohort maps {len(families)}",
                "the same gene families",
            )
        ]
    problems = []
    for fam, group in zip(families, run_cols):
        if tuple(fam.columns) != tuple(group):
            added = [c for c in fam.columns if c not in set(group)]
            removed = [c for c in group if c not in set(fam.columns)]
            detail = (
                f"{len(added)} column(s) not in the run, {len(removed)} of the run's missing"
                if added or removed
                else "same columns in another order"
            )
            problems.append(
                Problem(
                    run_json,
                    None,
                    f"data.m1_columns ({fam.name})",
                    f"family columns from the data differ from the run's: {detail}",
                    "exactly the run's columns, in its order",
                )
            )
    return problems


def _bag_problems(
    info: RunInfo,
    bag_dir: str | Path | None,
    slides: Mapping[str, Sequence[str]] | None,
    run_json: str,
) -> list[Problem]:
    from deref.data.bags import find_bag, peek_bag_shape
    from deref.errors import DataError

    if not info.needs_wsi:
        return []
    if bag_dir is None:
        return [
            Problem(
                "bags",
                None,
                None,
                f"the run's model ({info.model.model_type}) reads slides; no bag folder was given",
                "a folder of .h5/.pt bags (--bags)",
            )
        ]
    all_slides = [s for ss in (slides or {}).values() for s in ss]
    found = []
    for slide in all_slides:
        try:
            found.append((slide, find_bag(slide, bag_dir)))
        except DataError:
            continue
        break
    if all_slides and not found:
        return [
            Problem(
                str(bag_dir), None, None, "no patient's slide has a bag file here", "one bag per slide_id"
            )
        ]
    problems = []
    for slide, path in found:
        try:
            _, d = peek_bag_shape(path)
        except DataError as exc:
            problems.append(Problem(str(path), None, None, str(exc), "a readable bag"))
            continue
        if info.data.wsi_dim is not None and d != info.data.wsi_dim:
            problems.append(
                Problem(
                    str(path),
                    None,
                    "features",
                    f"bag of slide {slide} has D = {d} features per patch",
                    f"wsi_dim = {info.data.wsi_dim}, as the run was trained ({run_json})",
                )
            )
    return problems


def run_fit_problems(
    info: RunInfo,
    *,
    run_json: str,
    table: str,
    genomic_columns: Sequence[str] | None = None,
    families: Sequence | None = None,
    bag_dir: str | Path | None = None,
    slides: Mapping[str, Sequence[str]] | None = None,
    check_bags: bool = True,
) -> list[Problem]:
    """Everything that keeps a run's models from reading a cohort (empty = it fits).

    Parameters
    ----------
    info
        The run (``RunDir(path).info``).
    run_json, table
        File names for the messages.
    genomic_columns
        The cohort table's genomic columns (None: not checked).
    families
        The cohort's gene families (``GeneFamily``), None: not checked.
    bag_dir, slides
        The bag folder and ``{case_id: [slide_id, ...]}``; checked only when the run reads
        slides and ``check_bags``. The first slide with a bag is opened (its header only) for
        the feature dimension.
    """
    problems = run_consistency_problems(info, run_json)
    if genomic_columns is not None and info.data.m1_columns:
        present = set(genomic_columns)
        names = info.data.m1_names or info.model.m1_names
        for i, group in enumerate(info.data.m1_columns):
            name = names[i] if i < len(names) else f"group {i}"
            missing = [c for c in group if c not in present]
            if missing:
                problems.append(
                    Problem(
                        table,
                        1,
                        missing[0],
                        f"{len(missing)} column(s) of the run's gene family {name!r} are not genomic columns "
                        f"of the table: {_examples(missing)}",
                        f"the columns the run was trained on ({run_json})",
                    )
                )
    if families is not None:
        problems.extend(_family_problems(info, families, run_json))
    if check_bags:
        problems.extend(_bag_problems(info, bag_dir, slides, run_json))
    return problems


def m1_source_problems(info: RunInfo, kind: str, cubes, source: str, run_json: str) -> list[Problem]:
    """Modality 1 of the run against a cohort's: ``kind`` (``"genomic"`` or ``"mri"``) and, for MRI,
    its ROI cubes (``deref.data.mri.MriCubes``: grid and sequences; None for frozen vectors);
    ``source`` names the cohort table in the messages."""
    cfg, src = info.model, str(source)
    if cfg.m1_kind != kind:
        return [
            Problem(
                src,
                None,
                None,
                f"the cohort's modality 1 is {kind}",
                f"{cfg.m1_kind}, as the run ({run_json})",
            )
        ]
    if kind != "mri":
        return []
    if cfg.mri_encoder != "resnet3d":
        if cubes is not None:
            return [
                Problem(
                    str(cubes.folder),
                    None,
                    None,
                    "the cohort gives MRI ROI cubes",
                    f"the frozen per-sequence vectors the run reads (--mri-features; {run_json})",
                )
            ]
        return []
    if cubes is None:
        return [
            Problem(
                src,
                None,
                None,
                "the cohort gives frozen MRI vectors",
                f"the {cfg.mri_grid}^3 ROI cubes the run's 3D ResNet reads (--mri-cubes; {run_json})",
            )
        ]
    if cubes.grid != cfg.mri_grid or tuple(cubes.sequences) != tuple(cfg.m1_names):
        return [
            Problem(
                str(cubes.folder),
                None,
                None,
                f"{cubes.grid}^3 cubes of sequences {list(cubes.sequences)}",
                f"{cfg.mri_grid}^3 cubes of {list(cfg.m1_names)}, as the run was trained ({run_json})",
            )
        ]
    return []


def cohort_fit_problems(info: RunInfo, cohort, *, run_json: str, check_bags: bool = True) -> list[Problem]:
    """:func:`run_fit_problems` for a loaded :class:`~deref.data.cohort.Cohort`, and its modality 1
    against the run's (:func:`m1_source_problems`)."""
    kind = getattr(cohort, "m1_kind", "genomic")
    cubes = getattr(cohort, "mri_cubes", None)
    return m1_source_problems(info, kind, cubes, str(cohort.source), run_json) + run_fit_problems(
        info,
        run_json=run_json,
        table=str(cohort.source),
        genomic_columns=list(cohort.genomic.columns),
        families=None,  # the Predictor reads the run's own columns; only their presence matters
        bag_dir=cohort.bag_dir,
        slides=cohort.slides,
        check_bags=check_bags,
    )


def load_run_cohort(
    info: RunInfo, table: str | os.PathLike | None = None, bag_dir: str | os.PathLike | None = None
):
    """The cohort a run was trained on (its recorded table, families and columns), or another
    table / bag folder scored by the run.

    Families come from the run's families JSON when it still exists, else its signatures table;
    the run's time and censorship columns are used.
    """
    from deref.data.cohort import load_cohort
    from deref.errors import DataError

    data = info.data
    table = table or data.table
    if not table:
        raise DataError(f"run {info.name!r} names no cohort table; pass one")
    kwargs: dict = {}
    families = data.extra.get("families_json")
    if data.extra.get("mri_manifest"):  # an MRI cohort: modality 1 from the manifest's features
        kwargs["mri_manifest"] = data.extra["mri_manifest"]
        if data.extra.get("mri_cubes"):  # end to end: the ROI cubes
            kwargs["mri_cubes"] = data.extra["mri_cubes"]
        else:
            kwargs["mri_features"] = data.extra.get("mri_features")
    elif families and Path(families).exists():
        kwargs["families_json"] = families
    elif data.extra.get("signatures"):
        kwargs["signatures"] = data.extra["signatures"]
    if info.model.allow_missing or data.extra.get("allow_missing"):
        kwargs["allow_missing"] = True
    return load_cohort(
        table,
        bag_dir=bag_dir if bag_dir is not None else data.bag_dir,
        time_col=data.time_col,
        censorship_col=str(data.extra.get("censorship_col", "censorship")),
        **kwargs,
    )
