"""The paper's ablation grid (Tables III-VII, IX) as resumable run directories.

A *variant* is a name and the :class:`~deref.model.ModelConfig` fields it changes from a base
configuration. :data:`PAPER_GRID` holds the paper's: DeReF itself (``deref``, the reference),
without V_explore, without decoupling, regional cross-attention replaced by concat + MLP and by
plain cross-attention, without random feature reorganization, without the MoE, the four
decoupling distances, a fixed segment count ``s`` instead of a random one, and 2 / 4 / 6 / 8
experts. :func:`read_grid` reads a custom grid from a small JSON (or YAML) file.

:func:`run_grid` trains every variant (and every repeated round) into a run directory of its
own with :func:`deref.training.train_cross_validation`:

- ``out_dir/<variant>`` (``out_dir/<variant>/r<k>`` with ``repeats > 1``);
- **resumable**: a run folder whose ``run.json`` is complete is never retrained (it must have
  been trained with the same model and training configuration on the same folds, or the grid
  refuses); a half-written folder left by a killed grid is moved aside to
  ``out_dir/_incomplete/`` and the variant retrained;
- round ``r`` trains with seed ``seed + 1000 r`` and, for ``r >= 1``, folds re-drawn by
  :func:`deref.data.splits.make_folds` with seed ``seed + r`` (folds read from split files are
  kept in every round: only the training seed changes);
- a variant whose configuration equals an earlier one's (``distance_mse`` and ``experts_4``
  are the full model with the default settings) is trained once and recorded as the same run;
- ``out_dir/grid.json`` records the variants, their configurations, seeds, folds and which
  runs finished; at the end the comparison of :mod:`deref.compare` (the ``deref`` variant as
  reference) is written into ``out_dir/comparison/`` (with repeats: one folder per round, and
  ``rounds.csv/.md/.json``: the mean ± std over rounds of every variant's figures).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deref.compare import Comparison, compare_runs
from deref.data.cohort import Cohort
from deref.data.splits import Fold, make_folds
from deref.errors import CheckpointError, ConfigError, DataError
from deref.model import ModelConfig
from deref.runs import RunDir, write_json
from deref.training import FOLD_RESULT, FoldRunner, TrainConfig, train_cross_validation

log = logging.getLogger(__name__)

__all__ = [
    "REFERENCE",
    "PAPER_GRID",
    "PAPER_DISTANCES",
    "PAPER_FIXED_SEGMENTS",
    "PAPER_EXPERTS",
    "COHORT_FIELDS",
    "GRID_FORMAT",
    "GridRun",
    "GridResult",
    "check_variant",
    "paper_variants",
    "read_grid",
    "grid_variants",
    "select_variants",
    "resolve_variants",
    "run_grid",
]

#: The full model, the reference of every comparison of a grid.
REFERENCE = "deref"
PAPER_DISTANCES: tuple[str, ...] = ("l1", "kl", "cosine", "mse")
#: The paper's fixed segment counts (Table VI); only those that divide ``c2`` can be built.
PAPER_FIXED_SEGMENTS: tuple[int, ...] = (2, 8, 16, 32, 64)
PAPER_EXPERTS: tuple[int, ...] = (2, 4, 6, 8)

#: The paper's grid: variant -> the ModelConfig fields it changes (Tables III-VII).
PAPER_GRID: dict[str, dict[str, Any]] = {
    REFERENCE: {},
    "no_explore": {"use_explore": False},
    "no_decoupling": {"decouple": False},
    "rca_concat_mlp": {"rca_mode": "concat_mlp"},
    "rca_cross_attention": {"rca_mode": "cross_attention"},
    "no_rfr": {"reorg_train": "none", "reorg_eval": "none"},
    "no_moe": {"fusion": "concat"},
    **{f"distance_{d}": {"distance": d} for d in PAPER_DISTANCES},
    **{
        f"fixed_s{s}": {"reorg_train": "fixed", "reorg_eval": "fixed", "fixed_segments": s}
        for s in PAPER_FIXED_SEGMENTS
    },
    **{f"experts_{n}": {"n_experts": n} for n in PAPER_EXPERTS},
}

#: Fields a variant may not change: they are set by the cohort (or the training config), and a
#: model of other input sizes could not be trained on it.
COHORT_FIELDS: tuple[str, ...] = (
    "m1_kind",
    "m1_sizes",
    "m1_names",
    "wsi_dim",
    "n_bins",
    "mri_encoder",
    "mri_grid",
    "allow_missing",
)
GRID_FORMAT = "deref-ablate/1"
#: TrainConfig fields that do not change what a run learns (a finished run is kept whatever they are).
_NEUTRAL_TRAIN_FIELDS = ("device", "bag_cache_mb", "eval_batch_size")
_INCOMPLETE = "_incomplete"


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------
_FIELD_TYPES = {f.name: str(f.type).replace(" ", "") for f in dataclasses.fields(ModelConfig)}


def _typed_value(value: Any, type_name: str) -> Any:
    """``value`` as the declared type (ints allowed for floats, lists for tuples); raises
    ``TypeError`` when it is not of that type (``"false"`` is not a bool)."""
    if type_name.endswith("|None"):
        return None if value is None else _typed_value(value, type_name.removesuffix("|None"))
    if type_name == "bool" and isinstance(value, bool):
        return value
    if type_name == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if type_name == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_name == "str" and isinstance(value, str):
        return value
    if type_name.startswith("tuple[") and isinstance(value, (list, tuple)):
        inner = type_name.removeprefix("tuple[").removesuffix(",...]")
        return tuple(_typed_value(v, inner) for v in value)
    raise TypeError(type_name)


def check_variant(name: str, changes: Mapping[str, Any], where: str = "grid") -> dict[str, Any]:
    """A variant's changes, each a known :class:`ModelConfig` field of its declared type.

    Raises
    ------
    ConfigError
        An unknown field, a field set by the cohort (:data:`COHORT_FIELDS`) or a value of the
        wrong type; the message names ``where``, the variant and the field.
    """
    if not isinstance(changes, Mapping):
        raise ConfigError(
            f"{where}: variant {name!r}: expected a mapping of model config fields to values, "
            f"got {type(changes).__name__}"
        )
    out = {}
    for key, value in changes.items():
        if key not in _FIELD_TYPES:
            raise ConfigError(
                f"{where}: variant {name!r}: unknown model config field {key!r}; known: "
                f"{', '.join(sorted(_FIELD_TYPES))}"
            )
        if key in COHORT_FIELDS:
            raise ConfigError(
                f"{where}: variant {name!r}: field {key!r} is set by the cohort and the training "
                "settings, not by a variant"
            )
        try:
            out[key] = _typed_value(value, _FIELD_TYPES[key])
        except TypeError:
            raise ConfigError(
                f"{where}: variant {name!r}: field {key!r} = {value!r} ({type(value).__name__}); "
                f"expected {_FIELD_TYPES[key]}"
            ) from None
    return out


def paper_variants(base: ModelConfig) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """:data:`PAPER_GRID` for ``base``: every variant, except the fixed segment counts that do
    not divide ``base.c2`` (each skipped with a note, in the returned notes)."""
    if base.model_type != "deref":
        raise ConfigError(
            f"the paper's grid ablates DeReF; model {base.model_type!r} has none of its switches "
            "(use a grid file to compare baselines)"
        )
    out, notes = {}, []
    for name, changes in PAPER_GRID.items():
        s = changes.get("fixed_segments")
        if s is not None and base.c2 % s:
            notes.append(f"{name} skipped: {s} segments do not divide c2 = {base.c2}")
            continue
        out[name] = dict(changes)
    return out, notes


def read_grid(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A custom grid, ``{"variants": {"name": {"field": value, ...}, ...}}``, from a JSON file
    (``.yaml`` / ``.yml`` with PyYAML installed); each variant checked by :func:`check_variant`.

    Raises
    ------
    ConfigError
        The file is missing, malformed, has no ``variants`` mapping, or a variant is invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: grid file not found (or use --grid paper)")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f"{p}: reading a YAML grid needs PyYAML (pip install pyyaml); or write it as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})".replace("\n", " ")) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict) or not data["variants"]:
        raise ConfigError(f'{p}: expected {{"variants": {{"name": {{"field": value, ...}}, ...}}}}')
    extra = sorted(set(data) - {"variants"})
    if extra:
        raise ConfigError(f"{p}: unknown key(s) {extra}; a grid file holds only 'variants'")
    return {str(name): check_variant(str(name), ch, str(p)) for name, ch in data["variants"].items()}


def grid_variants(spec: str | os.PathLike, base: ModelConfig) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``"paper"`` (:func:`paper_variants`) or a grid file (:func:`read_grid`), with the
    reference added when the file does not name it; returns the variants and notes."""
    if str(spec) == "paper":
        return paper_variants(base)
    variants = read_grid(spec)
    notes = []
    if REFERENCE not in variants:
        variants = {REFERENCE: {}, **variants}
        notes.append(f"{REFERENCE} (the base configuration) added as the reference")
    return variants, notes


def select_variants(
    variants: Mapping[str, Mapping[str, Any]], only: Sequence[str] | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The variants named in ``only`` (all when None), in the grid's order; the reference is
    always kept (a note says so when ``only`` leaves it out). An unknown name is a ConfigError."""
    if only is None:
        return {k: dict(v) for k, v in variants.items()}, []
    wanted = [n.strip() for n in only if n.strip()]
    unknown = [n for n in wanted if n not in variants]
    if unknown:
        raise ConfigError(f"--only: unknown variant(s) {unknown}; the grid has {', '.join(variants)}")
    notes = []
    if REFERENCE not in wanted:
        notes.append(f"{REFERENCE} kept: it is the reference of the comparison")
    keep = set(wanted) | {REFERENCE}
    return {k: dict(v) for k, v in variants.items() if k in keep}, notes


def resolve_variants(
    base: ModelConfig, variants: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, ModelConfig], dict[str, str]]:
    """Every variant's configuration (``base`` with its checked changes, validated by
    :class:`ModelConfig`) and the aliases: variant -> the earlier variant of the same
    configuration (trained once).

    Raises
    ------
    ConfigError
        A variant is invalid (named with its field), or the reference changes anything.
    """
    if REFERENCE not in variants:
        raise ConfigError(f"the grid has no {REFERENCE!r} variant (the reference of the comparison)")
    if variants[REFERENCE]:
        raise ConfigError(
            f"variant {REFERENCE!r} is the base configuration; it cannot change {dict(variants[REFERENCE])}"
        )
    configs: dict[str, ModelConfig] = {}
    aliases: dict[str, str] = {}
    order = [REFERENCE, *(n for n in variants if n != REFERENCE)]
    for name in order:
        changes = check_variant(name, variants[name])
        try:
            cfg = base.replace(**changes)
        except ConfigError as exc:
            raise ConfigError(f"variant {name!r}: {exc}") from None
        same = next((n for n, c in configs.items() if c == cfg and n not in aliases), None)
        if same is not None:
            aliases[name] = same
        configs[name] = cfg
    return configs, aliases


# --------------------------------------------------------------------------------------------
# the grid's runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridRun:
    """One run of a grid.

    Attributes
    ----------
    variant : str
    round : int
        The repeat (0 .. repeats - 1).
    path : Path
        Its run directory (the aliased variant's for an alias).
    seed : int
        Its training seed (``seed + 1000 * round``).
    status : str
        ``"trained"`` (this call), ``"kept"`` (finished before), ``"same as <variant>"``.
    """

    variant: str
    round: int
    path: Path
    seed: int
    status: str


@dataclass(frozen=True)
class GridResult:
    """What :func:`run_grid` did and found.

    Attributes
    ----------
    out_dir : Path
    runs : tuple[GridRun, ...]
        Every run of every round, in training order.
    comparisons : tuple[Comparison, ...]
        One per round (the reference against every other trained variant).
    rounds : pandas.DataFrame or None
        With repeats: per variant, the mean ± std over rounds (:func:`rounds_frame`).
    notes : tuple[str, ...]
        Everything skipped, aliased, moved aside or kept.
    """

    out_dir: Path
    runs: tuple[GridRun, ...]
    comparisons: tuple[Comparison, ...]
    rounds: pd.DataFrame | None
    notes: tuple[str, ...]

    @property
    def trained(self) -> list[tuple[str, int]]:
        return [(r.variant, r.round) for r in self.runs if r.status == "trained"]

    def summary_lines(self) -> list[str]:
        """The comparison table(s) the CLI prints."""
        lines = []
        for k, comp in enumerate(self.comparisons):
            if len(self.comparisons) > 1:
                lines.append(f"round {k}:")
            lines += comp.summary_lines()
        if self.rounds is not None:
            lines.append(f"over {len(self.comparisons)} rounds (mean ± std):")
            lines += _rounds_lines(self.rounds)
        return lines


def _round_dir(out: Path, variant: str, r: int, repeats: int) -> Path:
    return out / variant if repeats == 1 else out / variant / f"r{r}"


def _fold_map(folds: Sequence[Fold]) -> dict[str, int]:
    return {str(c): int(f.index) for f in folds for c in f.val}


def _finished(path: Path) -> RunDir | None:
    """The run in ``path`` when its ``run.json`` is complete (training writes it last)."""
    try:
        rd = RunDir(path)
    except (CheckpointError, ConfigError, DataError):
        return None
    return rd if rd.has_file("predictions.csv") else None


def _mismatch(rd: RunDir, model: ModelConfig, train: TrainConfig, folds: Sequence[Fold]) -> str | None:
    """How a finished run differs from what the grid asks for (None: it is that run)."""
    # training fills the cohort's fields in (and an inner grid may choose some per fold): the
    # other fields are what a variant is
    a, b = rd.info.model.to_dict(), model.to_dict()
    skip = set(COHORT_FIELDS) | set(train.grid)
    diff = [k for k in b if k not in skip and a.get(k) != b[k]]
    if diff:
        return f"model config differs in {', '.join(f'{k} ({a.get(k)!r} vs {b[k]!r})' for k in diff[:3])}"
    try:
        done = TrainConfig.from_dict(rd.info.train).to_dict()
    except ConfigError as exc:
        return f"its training config cannot be read ({exc})"
    asked = train.to_dict()
    diff = [k for k in asked if k not in _NEUTRAL_TRAIN_FIELDS and done.get(k) != asked[k]]
    if diff:
        return f"training config differs in {', '.join(f'{k} ({done.get(k)!r} vs {asked[k]!r})' for k in diff[:3])}"
    if rd.info.validation_folds() != _fold_map(folds):
        return "it was trained on other folds"
    return None


def _move_aside(out: Path, path: Path) -> Path:
    rel = path.relative_to(out)
    dest = out / _INCOMPLETE / "-".join(rel.parts)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest))
    return dest


def _round_folds(
    cohort: Cohort, folds: Sequence[Fold], seed: int, repeats: int
) -> tuple[list[list[Fold]], list[int | None], list[str]]:
    """The folds of every round, the seed each was drawn with (None: as given) and notes."""
    from_files = any(f.source is not None for f in folds)
    rounds, seeds, notes = [list(folds)], [None], []
    for r in range(1, repeats):
        if from_files:
            rounds.append(list(folds))
            seeds.append(None)
        else:
            rounds.append(make_folds(cohort.patients, k=len(folds), seed=seed + r))
            seeds.append(seed + r)
    if from_files and repeats > 1:
        notes.append(
            "the folds come from split files: every round keeps them, only the training seed changes"
        )
    return rounds, seeds, notes


@dataclass
class _Plan:
    """What a grid trains (the record written to ``grid.json``)."""

    out: Path
    configs: dict[str, ModelConfig]
    aliases: dict[str, str]
    changes: dict[str, dict[str, Any]]
    train: TrainConfig
    seed: int
    repeats: int
    folds: list[list[Fold]]
    fold_seeds: list[int | None]
    notes: list[str]
    status: dict[tuple[str, int], str] = dataclasses.field(default_factory=dict)
    complete: bool = False
    fold_runner: FoldRunner | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def seed_of(self, r: int) -> int:
        return self.seed + 1000 * r

    def path(self, variant: str, r: int) -> Path:
        return _round_dir(self.out, self.aliases.get(variant, variant), r, self.repeats)

    def write(self) -> None:
        rounds = []
        for r in range(self.repeats):
            runs = {
                v: {
                    "path": str(self.path(v, r).relative_to(self.out)),
                    "status": self.status.get((v, r), "pending"),
                }
                for v in self.configs
            }
            rounds.append(
                {"round": r, "seed": self.seed_of(r), "folds_seed": self.fold_seeds[r], "runs": runs}
            )
        write_json(
            self.out / "grid.json",
            {
                "format": GRID_FORMAT,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "reference": REFERENCE,
                "seed": self.seed,
                "repeats": self.repeats,
                "train": self.train.to_dict(),
                "variants": {
                    v: {
                        "changes": self.changes.get(v, {}),
                        "same_as": self.aliases.get(v),
                        "config": c.to_dict(),
                    }
                    for v, c in self.configs.items()
                },
                "rounds": rounds,
                "complete": self.complete,
                "comparison": "comparison" if self.complete else None,
                "notes": list(self.notes),
            },
        )


def _train_round(
    plan: _Plan,
    r: int,
    cohort: Cohort,
    data_info: dict[str, Any] | None,
    progress: Callable[[str, int, int], None] | None,
    notify: Callable[[str], None],
    counter: list[int],
) -> list[GridRun]:
    """Train (or keep) every variant of round ``r``; ``counter`` = [done, total] over the grid.
    With a fold runner (Ray) the variants train at the same time (a driver thread each, waiting
    on the cluster); otherwise one after the other."""
    train = dataclasses.replace(plan.train, seed=plan.seed_of(r))
    tag = f" (round {r})" if plan.repeats > 1 else ""

    def one(variant: str, cfg: ModelConfig) -> GridRun:
        path = plan.path(variant, r)
        if variant in plan.aliases:
            status = f"same as {plan.aliases[variant]}"
            notify(f"{variant}{tag}: the configuration of {plan.aliases[variant]}, trained once")
        else:
            status = _train_one(plan, path, variant, cfg, train, r, cohort, data_info, progress, notify, tag)
        with plan.lock:
            plan.status[(variant, r)] = "finished" if status in ("trained", "kept") else status
            plan.write()
            counter[0] += 1
            if progress is not None:
                progress("grid", counter[0], counter[1])
        return GridRun(variant, r, path, train.seed, status)

    items = list(plan.configs.items())
    if plan.fold_runner is None or len(items) == 1:
        return [one(v, c) for v, c in items]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="grid") as pool:
        futures = [pool.submit(one, v, c) for v, c in items]
        return [f.result() for f in futures]


def _train_one(
    plan: _Plan,
    path: Path,
    variant: str,
    cfg: ModelConfig,
    train: TrainConfig,
    r: int,
    cohort: Cohort,
    data_info: dict[str, Any] | None,
    progress: Callable[[str, int, int], None] | None,
    notify: Callable[[str], None],
    tag: str,
) -> str:
    folds = plan.folds[r]
    done = _finished(path)
    if done is not None:
        why = _mismatch(done, cfg, train, folds)
        if why is not None:
            raise ConfigError(
                f"{path}: a finished run of variant {variant!r}, but not the one this grid asks for: {why}; "
                "use another --out or remove that folder"
            )
        notify(f"{variant}{tag}: finished earlier, kept ({path})")
        return "kept"
    resume = path.exists() and any(path.glob(f"fold_*/{FOLD_RESULT}"))
    if path.exists() and not resume:
        dest = _move_aside(plan.out, path)
        note = f"{variant}{tag}: an unfinished run folder was moved aside to {dest}"
        with plan.lock:
            plan.notes.append(note)
        notify(note)
    if resume:
        notify(f"{variant}{tag}: resuming ({path}): its finished folds are kept")
    else:
        notify(f"{variant}{tag}: training ({path})")
    label = f"{variant}{tag}"
    train_cross_validation(
        cohort,
        folds,
        cfg,
        train,
        path,
        name=variant,
        data_info=data_info,
        progress=(lambda what, d, t: progress(f"{label}: {what}", d, t)) if progress is not None else None,
        fold_runner=plan.fold_runner,
        resume=resume,
    )
    return "trained"


# --------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------
def _write_comparison(comp: Comparison, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in comp.files().items():
        (folder / name).write_bytes(data)
    write_json(folder / "comparison.json", comp.to_dict())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.mean()) if v.size else float("nan")), (
        float(v.std(ddof=1)) if v.size > 1 else float("nan")
    )


def rounds_frame(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """Per variant, over the rounds: the mean ± std (sample) of the fold-mean Harrell C, of the
    pooled out-of-fold C and of ``delta_c`` (reference minus the variant; NaN for the
    reference), and each round's pooled C and ``delta_c`` (columns ``pooled_c_r<k>``,
    ``delta_c_r<k>``)."""
    names = [r.name for r in comparisons[0].runs]
    rows = []
    for name in names:
        fold_c, pooled, delta = [], [], []
        for comp in comparisons:
            run = next(r for r in comp.runs if r.name == name)
            pair = next((p for p in comp.pairs if p.other == name), None)
            fold_c.append(run.mean["harrell"])
            pooled.append(run.pooled_harrell)
            delta.append(pair.delta_c if pair is not None else float("nan"))
        row: dict[str, Any] = {"variant": name, "rounds": len(comparisons)}
        for key, vals in (("cindex", fold_c), ("pooled_c", pooled), ("delta_c", delta)):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(vals)
        row.update({f"pooled_c_r{k}": v for k, v in enumerate(pooled)})
        row.update({f"delta_c_r{k}": v for k, v in enumerate(delta)})
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, signed: bool = False) -> str:
    if not np.isfinite(mean):
        return "–"
    m = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return m + (f" ± {std:.3f}" if np.isfinite(std) else "")


def _rounds_lines(df: pd.DataFrame) -> list[str]:
    width = max(len(v) for v in df["variant"])
    return [
        f"  {row.variant:<{width}}  C {_pm(row.cindex_mean, row.cindex_std)}  pooled "
        f"{_pm(row.pooled_c_mean, row.pooled_c_std)}  ΔC {_pm(row.delta_c_mean, row.delta_c_std, True)}"
        for row in df.itertuples()
    ]


def _rounds_markdown(df: pd.DataFrame) -> str:
    lines = [
        f"| variant | C-index (mean of folds) | pooled OOF C | ΔC to {REFERENCE} |",
        "| --- | --- | --- | --- |",
    ]
    for row in df.itertuples():
        lines.append(
            f"| {row.variant} | {_pm(row.cindex_mean, row.cindex_std)} | {_pm(row.pooled_c_mean, row.pooled_c_std)} "
            f"| {_pm(row.delta_c_mean, row.delta_c_std, True)} |"
        )
    return "\n".join(lines) + f"\n\nmean ± std (sample) over {int(df['rounds'].iloc[0])} rounds\n"


def _compare(
    plan: _Plan, n_resamples: int, bootstrap_seed: int
) -> tuple[list[Comparison], pd.DataFrame | None]:
    folder = plan.out / "comparison"
    trained = [v for v in plan.configs if v not in plan.aliases]
    comps = []
    for r in range(plan.repeats):
        paths = [plan.path(v, r) for v in trained]
        comp = compare_runs(paths, reference=paths[0], n_resamples=n_resamples, seed=bootstrap_seed)
        if plan.aliases:
            same = "; ".join(f"{a} = {b}" for a, b in plan.aliases.items())
            comp = dataclasses.replace(
                comp, notes=(*comp.notes, f"the same configuration, trained once: {same}")
            )
        _write_comparison(comp, folder if plan.repeats == 1 else folder / f"r{r}")
        comps.append(comp)
    if plan.repeats == 1:
        return comps, None
    df = rounds_frame(comps)
    df.to_csv(folder / "rounds.csv", index=False)
    (folder / "rounds.md").write_text(_rounds_markdown(df))
    write_json(folder / "rounds.json", {"reference": REFERENCE, "rows": df.to_dict(orient="records")})
    return comps, df


# --------------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------------
def run_grid(
    cohort: Cohort,
    folds: Sequence[Fold],
    base_model: ModelConfig,
    base_train: TrainConfig,
    out_dir: str | os.PathLike,
    variants: Mapping[str, Mapping[str, Any]],
    *,
    repeats: int = 1,
    seed: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    notify: Callable[[str], None] | None = None,
    data_info: dict[str, Any] | None = None,
    n_resamples: int = 2000,
    bootstrap_seed: int = 0,
    notes: Sequence[str] = (),
    fold_runner: FoldRunner | None = None,
) -> GridResult:
    """Train every variant (every round) into its run directory, resumably, and compare them.

    Parameters
    ----------
    cohort, folds
        The cohort and the folds of round 0 (``folds`` from split files, with ``Fold.source``,
        are kept in every round; otherwise round ``r >= 1`` re-draws ``len(folds)`` folds with
        ``make_folds(cohort.patients, seed=seed + r)``).
    base_model, base_train
        The full model's configuration (what the variants change) and the training settings.
    out_dir
        The grid's folder: ``<variant>[/r<k>]`` run directories, ``grid.json``, ``comparison/``.
    variants
        Name -> ModelConfig changes (:data:`PAPER_GRID`, :func:`grid_variants`); it must hold
        :data:`REFERENCE` without changes.
    repeats
        Rounds of cross-validation (Table IX); round ``r`` trains with seed ``seed + 1000 r``.
    seed
        The base seed (default: ``base_train.seed``).
    progress
        ``progress(label, done, total)``: the training's (label prefixed by the variant) and the
        grid's (label ``"grid"``, after every run finished or kept).
    notify
        Receives one line per event (training, kept, moved aside, aliased); default: the log.
    data_info
        Provenance recorded in each run (see :func:`train_cross_validation`).
    n_resamples, bootstrap_seed
        The paired bootstrap of the comparisons.
    notes
        Notes to record in ``grid.json`` (e.g. the skipped variants of :func:`paper_variants`).
    fold_runner
        How folds are trained (:data:`deref.training.FoldRunner`; ``deref.scale.train`` for Ray).
        With one, the variants of a round are trained at the same time, so every fold of the
        round queues on the cluster at once.

    Returns
    -------
    GridResult

    Raises
    ------
    ConfigError
        An invalid variant (named with its field), ``repeats < 1``, or a finished run folder
        trained with another configuration or on other folds.
    """
    if repeats < 1:
        raise ConfigError(f"repeats = {repeats}; expected at least 1")
    say = notify or log.info
    base_seed = base_train.seed if seed is None else int(seed)
    configs, aliases = resolve_variants(base_model, variants)
    round_folds, fold_seeds, fold_notes = _round_folds(cohort, folds, base_seed, repeats)
    recorded = [*notes, *fold_notes]
    recorded += [f"{a}: the same configuration as {b}, trained once" for a, b in aliases.items()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _Plan(
        out=out,
        configs=configs,
        aliases=aliases,
        changes={k: check_variant(k, v) for k, v in variants.items()},
        train=base_train,
        seed=base_seed,
        repeats=repeats,
        folds=round_folds,
        fold_seeds=fold_seeds,
        notes=recorded,
    )
    for note in recorded[len(notes) :]:
        say(note)
    plan.write()
    counter = [0, len(configs) * repeats]
    runs = []
    plan.fold_runner = fold_runner
    for r in range(repeats):
        runs += _train_round(plan, r, cohort, data_info, progress, say, counter)
    comps, rounds = _compare(plan, n_resamples, bootstrap_seed)
    plan.complete = True
    plan.write()
    return GridResult(
        out_dir=out, runs=tuple(runs), comparisons=tuple(comps), rounds=rounds, notes=tuple(plan.notes)
    )
