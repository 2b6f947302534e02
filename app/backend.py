"""The dashboard's cached backend: every model call and every heavy computation goes through here.

Caching design
--------------
* ``st.cache_resource`` (one object per process, shared by every session and tab, never
  copied): the :class:`LoadedRun` of each run directory -- its ``Predictor`` with every fold
  model loaded once, on the GPU when there is one, plus a re-entrant lock that serializes all
  model calls on it (the predictor's bag and modality-1 caches are plain dicts) -- and the
  :class:`~deref.data.cohort.Cohort` objects the models read from.
* ``st.cache_data`` (per argument values, returned as copies): predictions, the cohort table,
  cutoffs and stratification reports, metrics, one patient's model output (and its "what if"
  variants), attributions, cohort-level decoupled features, t-SNE / CKA, thumbnails, top-k
  patches, the inspected patch and the exported figure bytes.

The models of the run in use are loaded in a background thread right after the first page is
drawn (:func:`prewarm`), so the Cohort page never waits for torch and opening a patient rarely
waits for the checkpoints. Every function takes plain strings (run directory, cohort table, bag
folder), so cache keys are cheap to hash; "Clear caches and reload" in the sidebar drops them all
(a run directory rewritten on disk is otherwise served from the caches). Nothing here imports a page; pages never touch a model directly. The app holds no
model math: everything below calls the ``deref`` library and reshapes its outputs for display.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from deref.access import ENV_DATA_ROOTS, AccessError, DataRoots, component_problem
from deref.errors import CheckpointError, ConfigError, DataError, DeRefError
from deref.explain.precompute import CANVAS_PX as _CANVAS_PX
from deref.runs import RunInfo

log = logging.getLogger("deref.app")

REPO = Path(__file__).resolve().parents[1]

#: Environment variables the app reads (all optional).
ENV_DEMO_DIR = "DEREF_DEMO_DIR"  # where the default demo lives / is built (default assets/demo)
ENV_MRI_DEMO_DIR = "DEREF_MRI_DEMO_DIR"  # the MRI + WSI demo (default assets/demo-mri)
ENV_RUN = "DEREF_RUN"  # default run directory (instead of the demo's)
ENV_TABLE = "DEREF_TABLE"  # default cohort table (instead of the run's own)
ENV_BAG_DIR = "DEREF_BAG_DIR"  # default bag folder
ENV_SLIDE_DIR = "DEREF_SLIDE_DIR"  # default slide folder
ENV_RUNS_ROOT = "DEREF_RUNS_ROOT"  # folder scanned for runs in the sidebar picker (default runs/)
ENV_NO_PREWARM = "DEREF_NO_PREWARM"  # set: do not load the models in the background at start
ENV_TORCH_THREADS = "DEREF_TORCH_THREADS"  # torch intra-op threads of the server (default: cores // 2)


# --------------------------------------------------------------------------------------------
# where things are
# --------------------------------------------------------------------------------------------
def demo_dir() -> Path:
    """The default demo folder: ``$DEREF_DEMO_DIR`` or ``<repo>/assets/demo``."""
    return Path(os.environ.get(ENV_DEMO_DIR) or REPO / "assets" / "demo")


def mri_demo_dir() -> Path:
    """The MRI + WSI demo folder: ``$DEREF_MRI_DEMO_DIR`` or ``<repo>/assets/demo-mri``."""
    return Path(os.environ.get(ENV_MRI_DEMO_DIR) or REPO / "assets" / "demo-mri")


def runs_root() -> Path:
    return Path(os.environ.get(ENV_RUNS_ROOT) or REPO / "runs")


def data_roots() -> DataRoots:
    """The folders this server may open (:mod:`deref.access`): ``$DEREF_DATA_ROOTS`` when set,
    else the demo folders, the runs root and the folders of ``DEREF_RUN`` / ``DEREF_TABLE`` /
    ``DEREF_BAG_DIR`` / ``DEREF_SLIDE_DIR`` when they are set."""
    env = os.environ.get
    table = env(ENV_TABLE)
    defaults = (
        str(demo_dir()),
        str(mri_demo_dir()),
        str(runs_root()),
        env(ENV_RUN),
        str(Path(table).parent) if table else None,
        env(ENV_BAG_DIR),
        env(ENV_SLIDE_DIR),
    )
    return _roots(env(ENV_DATA_ROOTS, ""), defaults)


@functools.lru_cache(maxsize=16)
def _roots(configured: str, defaults: tuple[str | None, ...]) -> DataRoots:
    """The roots of one configuration (the environment is the key: the link names and the
    Load form's options ask for them many times per script run)."""
    return DataRoots.from_env(defaults)


def discover_runs() -> list[str]:
    """Run directories the picker offers: the demo's, ``$DEREF_RUN``, ``runs/*`` and the runs
    directly inside each data root, with a run.json, inside a data root."""
    roots = data_roots()
    found: list[str] = []
    candidates = [demo_dir() / "run", mri_demo_dir() / "run"]
    if os.environ.get(ENV_RUN):
        candidates.insert(0, Path(os.environ[ENV_RUN]))
    for root in (runs_root(), *roots.roots):
        if root.is_dir():
            candidates += [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    for p in candidates:
        if (p / "run.json").is_file() and roots.contains(p):
            s = str(p.resolve())
            if s not in found:
                found.append(s)
    return found


def run_link(run_dir: str) -> str:
    """The run's name relative to its data root: what links, the picker and pages show."""
    try:
        return data_roots().name_of(run_dir)
    except AccessError:
        return Path(run_dir).name


@dataclass(frozen=True)
class Source:
    """What the app shows: a run directory and a cohort (None = the run's own training cohort).

    ``slide_dir`` only matters for thumbnails and patches (bags and predictions do not need it).
    """

    run_dir: str
    table: str | None = None
    bag_dir: str | None = None
    slide_dir: str | None = None

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.run_dir, self.table, self.bag_dir)

    @property
    def own_cohort(self) -> bool:
        return self.table is None


def resolve_run_dir(text: str) -> Path:
    """A run directory from user text (a link, the Load form): a name relative to a data root (or
    the repository), or a path inside one. Anything else -- outside every root, missing, not a
    run, unreadable -- is one :class:`~deref.access.AccessError` that reveals nothing."""
    return data_roots().resolve(text, "that run", kind="run", bases=(REPO,))


def run_table(run_dir: str) -> tuple[str | None, str | None]:
    """The cohort table and bag folder recorded in run.json."""
    data = run_info(run_dir).data
    return data.table, data.bag_dir


def make_source(
    run_dir: str, table: str | None = None, bag_dir: str | None = None, slide_dir: str | None = None
) -> Source:
    """Normalize a user's choice: the run's own table (and bag folder) becomes ``table=None``."""
    roots = data_roots()
    run_dir = str(roots.check(run_dir, "that run", kind="run"))
    own_table, own_bags = run_table(run_dir)
    # another cohort, bag or slide folder must lie inside a data root (the run's own recorded
    # data is what it was trained on: sharing the run shares it)
    t = str(roots.resolve(table, "that cohort table", kind="file", bases=(REPO,))) if table else None
    b = str(roots.resolve(bag_dir, "that bag folder", kind="dir", bases=(REPO,))) if bag_dir else None
    if t is not None and own_table and Path(own_table).resolve() == Path(t):
        if b is None or (own_bags and Path(own_bags).resolve() == Path(b)):
            t, b = None, None
    if t is None:
        b = None
    if slide_dir is not None:
        slide_dir = str(roots.resolve(slide_dir, "that slide folder", kind="dir", bases=(REPO,)))
    else:
        base = Path(t) if t else (Path(own_table) if own_table else None)
        if base is not None and (base.parent / "slides").is_dir():
            slide_dir = str(base.parent / "slides")
    return Source(run_dir, t, b, slide_dir)


# --------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _demo_lock() -> threading.Lock:
    return threading.Lock()


def demo_ready() -> bool:
    """A complete demo of the current build is in the demo folder (``deref.demo`` imports no torch)."""
    from deref.demo import demo_is_built

    return demo_is_built(demo_dir())


def build_demo(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Build the default demo once per process (other sessions wait for the first)."""
    from deref.demo import build_demo as _build

    with _demo_lock():
        if not demo_ready():
            # Our own folder: a demo of an older build there is replaced (only its files).
            _build(demo_dir(), progress=progress, overwrite=True)


def mri_demo_ready() -> bool:
    """A complete MRI + WSI demo of the current build is in :func:`mri_demo_dir`."""
    from deref.demo import mri_demo_is_built

    return mri_demo_is_built(mri_demo_dir())


def build_mri_demo(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Build the MRI + WSI demo once per process (``deref demo --pair mri-wsi``'s code)."""
    import deref.demo

    with _demo_lock():
        if not mri_demo_ready():
            deref.demo.build_mri_demo(mri_demo_dir(), progress=progress, overwrite=True)


# --------------------------------------------------------------------------------------------
# resources: one per process
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run's predictor with every fold model loaded, and the lock serializing its model calls."""

    run_dir: str
    predictor: Any
    lock: threading.RLock = field(default_factory=threading.RLock)


#: How many times a model was loaded in this process (the tests and the benchmark read it).
MODEL_LOADS: dict[str, int] = {}
#: Run directory -> the device its models were loaded on.
MODEL_DEVICES: dict[str, str] = {}


def _configure_torch_threads() -> None:
    """Fewer intra-op threads than cores: the server answers one patient at a time per session,
    and on a shared 2-core machine two spinning OpenMP threads made a 50 ms forward take 1–2 s
    (measured: single-patient forwards 30–120 ms with 1 thread, 0.2–2 s with 2 under load)."""
    import torch

    n = os.environ.get(ENV_TORCH_THREADS)
    threads = int(n) if n and n.isdigit() and int(n) > 0 else max(1, (os.cpu_count() or 2) // 2)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@st.cache_resource(show_spinner="Loading the model (once per process)…", max_entries=4)
def loaded_run(run_dir: str) -> LoadedRun:
    from deref.inference import Predictor

    _configure_torch_threads()
    pred = Predictor.from_run(run_dir, device="auto")
    lr = LoadedRun(run_dir, pred)
    with lr.lock:
        for k in pred.run.fold_indices:
            pred.fold(k)
    MODEL_LOADS[run_dir] = MODEL_LOADS.get(run_dir, 0) + 1
    MODEL_DEVICES[run_dir] = str(pred.device)
    log.info("loaded run %s (%d folds) on %s", run_dir, len(pred.run.fold_indices), pred.device)
    return lr


@st.cache_resource(show_spinner="Reading the cohort…", max_entries=8)
def cohort(run_dir: str, table: str | None, bag_dir: str | None):
    """The Cohort the run reads: its own (paths in run.json) or the given table / bag folder.

    Same resolution as ``Predictor.load_cohort`` (families JSON, else signatures; the run's time
    and censorship columns), without importing the model code: the Cohort page needs no model.
    """
    from deref.runs.fit import load_run_cohort

    info = run_info(run_dir)
    if not (table or info.data.table):
        raise CheckpointError(f"{run_dir}: run.json names no cohort table; pick one in the Load section")
    return load_run_cohort(info, table, bag_dir)


_PREWARMED: set[str] = set()
_PREWARM_LOCK = threading.Lock()


def prewarm(source: Source) -> None:
    """Load the run's models in a background thread (once per process), after the first page is
    drawn, so that opening a patient does not wait for torch and the checkpoints (nor the
    Stratification page for lifelines)."""
    if os.environ.get(ENV_NO_PREWARM):
        return
    with _PREWARM_LOCK:
        if source.run_dir in _PREWARMED:
            return
        _PREWARMED.add(source.run_dir)

    def work() -> None:
        try:
            loaded_run(source.run_dir)
        except Exception:  # noqa: BLE001 - the page that needs the model reports the error
            log.warning("prewarming %s failed", source.run_dir, exc_info=True)
            return
        # the survival statistics and static figures load lazily (the Cohort page needs neither)
        for name in ("lifelines", "matplotlib.figure"):
            try:
                importlib.import_module(name)
            except ImportError:  # noqa: PERF203 - reported by the page that needs it
                log.warning("prewarming: cannot import %s", name, exc_info=True)
        precompute_patients(source)

    threading.Thread(target=work, name="deref-prewarm", daemon=True).start()


#: Cohorts up to this size are precomputed in the background after the models load (default 0:
#: never). Opt-in: on a small server the precomputation competes with the first users for the
#: CPU (measured with benchmarks/bench_load.py, 4 sessions on 2 cores: page-ready p95 39 s with it
#: running, 19 s without); it pays when the server starts well before they arrive.
ENV_PRECOMPUTE_MAX = "DEREF_PRECOMPUTE_MAX"


def precompute_patients(source: Source) -> int:
    """Fill the caches every session shares with each patient's page results -- the model output,
    its two "what if" variants and the gradient attributions (also written to the run's explanation
    cache on disk) -- in the background, highest risk first, exactly as the Patient and Attention
    pages ask for them. Concurrent users then read results instead of queueing for the model
    (issue 17's load test). One model call at a time, each under the run's lock, so a live request
    waits for at most one. Returns how many patients were done."""
    limit = int(os.environ.get(ENV_PRECOMPUTE_MAX, "0") or 0)
    try:
        table = cohort_table(*source.key)
    except Exception:  # noqa: BLE001 - the pages report it
        return 0
    if limit <= 0 or len(table) > limit:
        return 0
    order = table.sort_values("risk", ascending=False, na_position="last").index
    info = run_info(source.run_dir)
    done = 0
    for case in order:
        try:
            v = patient_view(*source.key, case)
            patient_view(*source.key, case, "m1")
            if info.needs_wsi:
                patient_view(*source.key, case, "wsi")
            if info.has_decoupled_features:
                patient_attribution(*source.key, case, "grad", v.fold, source.slide_dir)
            done += 1
        except Exception:  # noqa: BLE001 - that patient's page reports it; the others go on
            log.debug("precomputing %s failed", case, exc_info=True)
        time.sleep(0.005)  # let live requests take the lock between patients
    log.info("precomputed %d patients of %s", done, source.run_dir)
    return done


# --------------------------------------------------------------------------------------------
# data: copies per call
# --------------------------------------------------------------------------------------------
def _run(run_dir: str):
    """The run directory, checked (``deref.runs.RunDir``: JSON and CSV only, no torch)."""
    from deref.runs import RunDir

    return RunDir(run_dir)


@st.cache_data(show_spinner=False, max_entries=16)
def run_info(run_dir: str) -> RunInfo:
    """run.json, parsed and checked by ``RunDir`` (a frozen ``deref.runs.RunInfo``)."""
    return _run(run_dir).info


@st.cache_data(show_spinner=False, max_entries=16)
def train_risks(run_dir: str) -> pd.DataFrame | None:
    path = Path(run_dir) / "train_risks.csv"
    return _run(run_dir).read_csv("train_risks.csv") if path.is_file() else None


@st.cache_data(show_spinner="Checking the run against the cohort…", max_entries=16)
def compatibility(run_dir: str, table: str | None, bag_dir: str | None) -> list[str]:
    """Everything that keeps the run's models from reading this cohort (empty = fine): the
    library's one fit check (``deref.runs.fit.cohort_fit_problems``), one message per problem."""
    from deref.runs.fit import cohort_fit_problems

    info = run_info(run_dir)
    co = cohort(run_dir, table, bag_dir)
    return [str(p) for p in cohort_fit_problems(info, co, run_json=str(Path(run_dir) / "run.json"))]


def _require_fit(run_dir: str, table: str | None, bag_dir: str | None) -> None:
    problems = compatibility(run_dir, table, bag_dir)
    if problems:
        raise ConfigError("the run does not fit this cohort:\n  " + "\n  ".join(problems))


@st.cache_data(show_spinner="Predicting the cohort…", max_entries=16)
def predictions(run_dir: str, table: str | None, bag_dir: str | None) -> pd.DataFrame:
    """Out-of-fold predictions: predictions.csv for the run's own cohort, else predicted now.

    Patients of another table that were in one of the run's validation folds keep that fold's
    model; everyone else gets the mean over the fold models (``fold = -1``).
    """
    if table is None:
        df = _run(run_dir).read_csv("predictions.csv")
    else:
        _require_fit(run_dir, table, bag_dir)
        lr = loaded_run(run_dir)
        co = cohort(run_dir, table, bag_dir)
        with lr.lock:
            df = lr.predictor.predict(co, fold="oof")
    df["case_id"] = df["case_id"].astype(str)
    return df


@st.cache_data(show_spinner=False, max_entries=64)
def cutoffs(run_dir: str, table: str | None, bag_dir: str | None, rule: str, cutoffs_from: str = "training"):
    """Cutoffs of a rule (``median``, ``tertiles``, ``quantiles:...``, ``thresholds:...``)."""
    from deref.stratify import compute_cutoffs

    pred = predictions(run_dir, table, bag_dir)
    # patients scored by the mean of the fold models (fold -1) are cut at every fold's training
    # risks together (``Cutoffs.pooled``)
    tr = train_risks(run_dir) if cutoffs_from == "training" else None
    return compute_cutoffs(rule, train_risks=tr, pred_df=pred, cutoffs_from=cutoffs_from)


@st.cache_data(show_spinner=False, max_entries=64)
def risk_groups(
    run_dir: str, table: str | None, bag_dir: str | None, rule: str, cutoffs_from: str = "training"
) -> pd.Series:
    """Risk group of each patient (indexed by case_id, ordered categorical low -> high)."""
    from deref.stratify import assign_groups

    pred = predictions(run_dir, table, bag_dir)
    g = assign_groups(pred, cutoffs(run_dir, table, bag_dir, rule, cutoffs_from))
    g.index = pred["case_id"].to_numpy()
    return g


@st.cache_data(show_spinner="Kaplan–Meier, log-rank and Cox fits…", max_entries=64)
def report(run_dir: str, table: str | None, bag_dir: str | None, rule: str, cutoffs_from: str = "training"):
    """The cohort's ``deref.report.StratificationReport``: cutoffs (from the training folds'
    risks unless ``cutoffs_from="cohort"``), Kaplan–Meier and tests, figures, files, provenance."""
    from deref.report import stratification_report

    return stratification_report(
        predictions(run_dir, table, bag_dir),
        rule=rule,
        train_risks=train_risks(run_dir) if cutoffs_from == "training" else None,
        cutoffs_from=cutoffs_from,
        time_unit=time_unit(run_dir),
        run_name=run_name(run_dir),
        cohort_name=cohort_name(Source(run_dir, table, bag_dir)),
        run_created=run_info(run_dir).created,
    )


def time_unit(run_dir: str) -> str:
    return run_info(run_dir).time_unit


def cohort_name(source: Source) -> str:
    try:
        table = source.table or run_table(source.run_dir)[0]
    except (DeRefError, OSError):  # the run vanished or broke: the page says so below
        table = None
    if not table:
        return "cohort"
    p = Path(table)
    if p.stem.lower() in ("cohort", "table", "clinical", "data") and p.parent.name:
        # a generic file name: name the cohort by its folders (".../small-40/cohort/cohort.csv")
        return f"{p.parent.parent.name}/{p.parent.name}" if p.parent.parent.name else p.parent.name
    return p.stem


def run_name(run_dir: str) -> str:
    try:
        return run_info(run_dir).name or Path(run_dir).name
    except (DeRefError, OSError):  # the run vanished or broke: the page says so below
        return Path(run_dir).name


@st.cache_data(show_spinner=False, max_entries=16)
def cohort_table(run_dir: str, table: str | None, bag_dir: str | None) -> pd.DataFrame:
    """One row per patient: survival, prediction, percentile, fold, modalities, clinical columns."""
    from deref.metrics import percentile

    co = cohort(run_dir, table, bag_dir)
    pred = predictions(run_dir, table, bag_dir).set_index("case_id")
    pts = co.patients.copy()
    pts.index = pts.index.astype(str)
    out = pd.DataFrame(index=pts.index)
    out.index.name = "case_id"
    out["time"] = pts["time"]
    out["event"] = pts["event"].astype(int)
    out["risk"] = pred["risk"].reindex(out.index)
    out["risk_std"] = pred["risk_std"].reindex(out.index) if "risk_std" in pred else np.nan
    out["percentile"] = percentile(out["risk"].to_numpy(float), out["risk"].to_numpy(float))
    out["fold"] = pred["fold"].reindex(out.index)
    mods = co.modalities.copy()
    mods.index = mods.index.astype(str)
    present = []
    for case in out.index:
        m = []
        for m1 in ("genomic", "mri"):
            if m1 in mods and bool(mods.at[case, m1]):
                m.append("MRI" if m1 == "mri" else m1)
        if "wsi" in mods and bool(mods.at[case, "wsi"]):
            m.append(f"WSI×{int(mods.at[case, 'n_bags'])}" if "n_bags" in mods else "WSI")
        present.append(", ".join(m) or "none")
    out["modalities"] = present
    if co.allow_missing:
        out["missing"] = [
            ", ".join("WSI" if m == "wsi" else m for m in co.missing_inputs(c)) for c in out.index
        ]
    out["n_slides"] = pts["n_slides"].astype(int)
    clinical = [c for c in pts.columns if c not in ("time", "censorship", "event", "n_slides")]
    for c in clinical:
        out[c] = pts[c]
    return out


@st.cache_data(show_spinner=False, max_entries=32)
def missing_inputs(run_dir: str, table: str | None, bag_dir: str | None) -> dict[str, list[str]]:
    """``{case_id: [missing input, ...]}`` of the patients that lack one (cohorts loaded with
    ``allow_missing``); empty otherwise."""
    co = cohort(run_dir, table, bag_dir)
    if not co.allow_missing:
        return {}
    out = {str(c): co.missing_inputs(c) for c in co.case_ids}
    return {c: ["WSI" if m == "wsi" else m for m in v] for c, v in out.items() if v}


@st.cache_data(show_spinner="Computing per-fold metrics (Harrell, Uno, td-AUC, IBS)…", max_entries=16)
def metrics_report(run_dir: str, table: str | None, bag_dir: str | None):
    """``(MetricsReport, note)``: IPCW weights from each fold's training patients when the run's
    own cohort is shown (else, or when those patients have no outcome here, the pooled cohort)."""
    from deref.metrics import evaluate_run_predictions

    pred = predictions(run_dir, table, bag_dir).dropna(subset=["risk"])
    tr = train_risks(run_dir) if table is None else None
    return evaluate_run_predictions(pred, tr, run_info(run_dir).bin_edges())


@dataclass(frozen=True)
class CurvesVsNull:
    """The run's survival curves against the Kaplan–Meier null (the training folds' KM curve for
    every patient), pooled over the out-of-fold predictions: integrated Brier scores, their
    difference with its 95% paired-bootstrap CI, and D-calibration's p-value."""

    ibs: float
    ibs_null: float
    difference: float
    lower: float
    upper: float
    d_calibration_p: float

    @property
    def worse_than_null(self) -> bool:
        return bool(np.isfinite(self.difference) and self.difference > 0)


def curves_vs_null(run_dir: str, table: str | None, bag_dir: str | None) -> CurvesVsNull | None:
    """From :func:`metrics_report`'s pooled row; None when the IBS is not estimable here."""
    pooled = metrics_report(run_dir, table, bag_dir)[0].pooled
    if not (np.isfinite(pooled.ibs) and np.isfinite(pooled.ibs_null)):
        return None
    return CurvesVsNull(
        pooled.ibs,
        pooled.ibs_null,
        pooled.ibs_minus_null,
        pooled.ibs_minus_null_lower,
        pooled.ibs_minus_null_upper,
        pooled.d_calibration_p,
    )


@st.cache_data(show_spinner=False, max_entries=64)
def calibration(
    run_dir: str, table: str | None, bag_dir: str | None, t: float, n_groups: int = 4
) -> pd.DataFrame:
    """Predicted vs observed (Kaplan–Meier) survival at time ``t`` in quantile groups of S(t)
    (``deref.metrics.calibration`` on each patient's fold bins; fold -1: the mean edges)."""
    from deref.metrics import calibration as _calibration

    pred = predictions(run_dir, table, bag_dir)
    info = run_info(run_dir)
    return _calibration(pred, info.bin_edges(), float(t), int(n_groups), horizons=info.horizons())


# --------------------------------------------------------------------------------------------
# one patient
# --------------------------------------------------------------------------------------------
@dataclass
class PatientView:
    """One patient's model output, as plain arrays (picklable for st.cache_data)."""

    case_id: str
    fold: int
    drop: str | None
    risk: float
    risk_std: float
    hazards: np.ndarray  # (K,)
    survival: np.ndarray  # (K,)
    segments: tuple[int, ...]
    risk_per_s: np.ndarray | None  # (S,)
    survival_per_s: np.ndarray | None  # (S, K)
    features: np.ndarray | None  # (F, C2)
    feature_names: tuple[str, ...]
    gate: np.ndarray | None  # (N,)
    wsi_attention: np.ndarray | None  # (2, N_patches)
    coords: np.ndarray | None  # (N_patches, 2)
    slide_index: np.ndarray | None
    slide_ids: list[str]
    patch_attrs: list[dict]  # per slide: patch_size, patch_level, downsample... (plain values)
    bin_edges: list[float]
    horizon: float | None = None  # the fold's largest training time: curves drawn interpolated
    model_type: str = "deref"
    attention_labels: tuple[str, ...] | None = None  # names of wsi_attention's rows (peers)
    co_attention: np.ndarray | None = None  # (G, N_patches) MCAT / MOTCat co-attention
    gate_labels: tuple[str, ...] | None = None  # a peer's gate columns (MoME's router)
    m1_names: tuple[str, ...] = ()


@st.cache_data(show_spinner=False, max_entries=512)
def patient_view(
    run_dir: str,
    table: str | None,
    bag_dir: str | None,
    case_id: str,
    drop: str | None = None,
    fold: int | None = None,
) -> PatientView:
    """``predict_patient`` for one patient (and one "what if"), plus survival per segment count.

    Read from the run's explanation cache when ``deref precompute`` (or an earlier visit) stored
    it -- no model is loaded then -- else computed by the run's models and stored
    (``deref.explain.precompute.patient_output``). The band: the model's survival curve for each
    reorganization segment count (``SurvivalOutput.survival_per_s``); the page draws their min
    and max.
    """
    from deref.explain.precompute import load_patient_output, patient_output

    _require_fit(run_dir, table, bag_dir)
    co = cohort(run_dir, table, bag_dir)
    if case_id not in co.patients.index:
        raise DataError(f"patient {case_id!r} is not in the cohort {co.source.name}")
    # the dashboard's predictor: device auto, float32, recalibrated curves (loaded_run)
    out = load_patient_output(_run(run_dir), co, case_id, fold=fold, drop=drop)
    if out is None:
        lr = loaded_run(run_dir)
        with lr.lock:
            out = patient_output(lr.predictor, co, case_id, fold=fold, drop=drop)
    k = out.fold
    return PatientView(
        case_id=case_id,
        fold=k,
        drop=drop,
        risk=out.risk,
        risk_std=out.risk_std,
        hazards=out.hazards,
        survival=out.survival,
        segments=out.segments,
        risk_per_s=out.risk_per_s,
        survival_per_s=out.survival_per_s,
        features=out.features,
        feature_names=out.feature_names,
        gate=out.gate,
        wsi_attention=out.wsi_attention,
        coords=out.coords,
        slide_index=out.slide_index,
        slide_ids=out.slide_ids,
        patch_attrs=out.patch_attrs,
        bin_edges=list(run_info(run_dir).bin_edges().get(k) or []),  # floats (the last one inf)
        horizon=run_info(run_dir).horizons().get(k),
        model_type=out.model_type,
        attention_labels=out.attention_labels,
        co_attention=out.co_attention,
        m1_names=out.m1_names,
        gate_labels=out.gate_labels,
    )


# --------------------------------------------------------------------------------------------
# explanations (deref.explain.attribution / deref.explain.cohort_views)
# --------------------------------------------------------------------------------------------
@dataclass
class AttributionView:
    """``explain_patient``'s result as plain arrays (see ``deref.explain.attribution``)."""

    method: str
    fold: int
    patch_scores: dict[str, np.ndarray]  # target -> (N,), bag order (all slides)
    family_scores: dict[str, np.ndarray]  # target -> (G,)
    family_names: list[str]
    cls_attention: np.ndarray | None  # (2, N)
    convergence_delta: dict[str, float] | None  # IG only
    target_values: dict[str, float]
    baseline: str
    from_cache: bool


@st.cache_data(show_spinner="Computing attributions…", max_entries=128)
def patient_attribution(
    run_dir: str,
    table: str | None,
    bag_dir: str | None,
    case_id: str,
    method: str = "grad",
    fold: int | None = None,
    slide_dir: str | None = None,
) -> AttributionView:
    """Attributions of the risk and of each decoupled feature (read from / written to the run's
    explanation cache by the library; a stored entry is read without loading the run's models)."""
    from deref.explain.attribution import explain_patient
    from deref.explain.precompute import load_attribution

    co = cohort(run_dir, table, bag_dir)
    # stored by `deref precompute` or an earlier visit: no model is loaded (the dashboard's predictor
    # computes in float32)
    res = load_attribution(_run(run_dir), co, case_id, method=method, fold=fold, slide_dir=slide_dir)
    if res is None:
        lr = loaded_run(run_dir)
        with lr.lock:
            res = explain_patient(lr.predictor, co, case_id, method=method, fold=fold, slide_dir=slide_dir)
    return AttributionView(
        method=res.method,
        fold=int(res.fold),
        patch_scores={str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in res.patch_scores.items()},
        family_scores={str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in res.family_scores.items()},
        family_names=[str(n) for n in res.family_names],
        cls_attention=None if res.cls_attention is None else np.asarray(res.cls_attention),
        convergence_delta=None
        if res.convergence_delta is None
        else {str(k): float(v) for k, v in res.convergence_delta.items()},
        target_values={str(k): float(v) for k, v in (res.target_values or {}).items()},
        baseline=str(res.baseline),
        from_cache=bool(res.from_cache),
    )


@st.cache_data(show_spinner="Voxel attributions through the 3D backbone…", max_entries=64)
def voxel_attribution(
    run_dir: str,
    table: str | None,
    bag_dir: str | None,
    case_id: str,
    target: str = "risk",
    method: str = "grad",
    fold: int | None = None,
):
    """An MRI run's voxel attribution of ``target`` for one patient
    (``deref.explain.mri.VoxelAttribution``: cubes, tumour mask, scores per voxel and per sequence)."""
    from deref.explain.mri import explain_voxels

    lr = loaded_run(run_dir)
    co = cohort(run_dir, table, bag_dir)
    with lr.lock:
        return explain_voxels(lr.predictor, co, case_id, target, method, fold=fold)


@st.cache_resource(max_entries=64)
def mri_view(
    run_dir: str,
    table: str | None,
    bag_dir: str | None,
    case_id: str,
    sequence: str,
    target: str,
    method: str,
):
    """The viewer's :class:`deref.figures.MriView` of one sequence with its voxel attribution (kept
    per process: its window presets are computed once)."""
    from deref.figures import MriView

    att = voxel_attribution(run_dir, table, bag_dir, case_id, target, method)
    s = att.sequences.index(sequence)
    spacing = (att.spacing_mm,) * 3
    return MriView(
        att.cubes[s], spacing, mask=att.inside, overlay=att.scores[s], sequence=sequence, case_id=case_id
    )


@st.cache_data(show_spinner="Decoupled features of every patient…", max_entries=16)
def cohort_features(run_dir: str, table: str | None, bag_dir: str | None, fold: int | str = "oof"):
    """Every patient's decoupled features and gates (``deref.explain.cohort_views.DecoupledFeatures``,
    plain arrays): held-out (``"oof"``) or all by fold ``k``."""
    from deref.explain.cohort_views import decoupled_features

    lr = loaded_run(run_dir)
    co = cohort(run_dir, table, bag_dir)
    with lr.lock:
        return decoupled_features(lr.predictor, co, fold=fold)


@st.cache_data(show_spinner="t-SNE of the decoupled features…", max_entries=16)
def tsne(run_dir: str, table: str | None, bag_dir: str | None, fold: int) -> pd.DataFrame:
    """``x, y, feature, case_id`` of the patients fold model ``fold`` held out: one model's
    feature space, held-out patients only (a subset of the cohort's held-out features)."""
    from deref.explain.cohort_views import tsne_embedding

    cf = cohort_features(run_dir, table, bag_dir, "oof")
    sel = np.flatnonzero(cf.folds == int(fold))
    if sel.size < 2:
        raise DataError(
            f"fold {fold} holds out {sel.size} patient(s) of this cohort; a t-SNE needs at least 2"
        )
    return tsne_embedding(
        cf.features[sel], case_ids=[cf.case_ids[i] for i in sel], feature_names=cf.feature_names
    )


@st.cache_data(show_spinner="CKA between the decoupled features…", max_entries=16)
def cka(run_dir: str, table: str | None, bag_dir: str | None) -> np.ndarray:
    """(F, F) linear CKA over the held-out features, within each fold model, averaged."""
    from deref.explain.cohort_views import cka_matrix

    cf = cohort_features(run_dir, table, bag_dir, "oof")
    return np.asarray(cka_matrix(cf.features, groups=cf.folds))


@st.cache_data(show_spinner=False, max_entries=16)
def gate_summary(run_dir: str, table: str | None, bag_dir: str | None, rule: str) -> pd.DataFrame:
    """Mean held-out gate weight per expert, overall and by risk group (``group, expert, mean, std, sem, n``)."""
    from deref.explain.cohort_views import gate_summary as _gate_summary

    cf = cohort_features(run_dir, table, bag_dir, "oof")
    groups = (
        risk_groups(run_dir, table, bag_dir, rule).reindex(cf.case_ids).astype(object).fillna("not predicted")
    )
    return _gate_summary(cf.gates, groups.to_numpy(), cf.expert_names)


# --------------------------------------------------------------------------------------------
# slides
# --------------------------------------------------------------------------------------------
#: Longer side (px) of the cached slide thumbnail and of the Attention page's heatmap canvas: one
#: size, so that ``render_heatmap`` draws on the cached thumbnail without resizing it on every rerun
#: (the library's, which ``deref precompute`` stores thumbnails at).
CANVAS_PX = _CANVAS_PX


@dataclass
class Thumbnail:
    image: np.ndarray | None  # (H, W, 3) uint8
    level0_dims: tuple[int, int] | None
    error: str | None


def slide_path(source: Source, slide_id: str) -> Path | None:
    if not source.slide_dir or component_problem(slide_id):
        return None  # a slide id is a file name inside the slide folder, never a path
    return Path(source.slide_dir) / slide_id


@st.cache_data(show_spinner="Reading the slide thumbnail…", max_entries=64)
def thumbnail(path: str | None, max_size: int = CANVAS_PX, run_dir: str | None = None) -> Thumbnail:
    """The slide's thumbnail: the one ``deref precompute`` stored in ``run_dir``'s explanation
    cache, else read through OpenSlide; or the reason it could not be read."""
    from deref.slides import read_thumbnail

    if path is None:
        return Thumbnail(None, None, "no slide folder is set for this cohort (Load section)")
    if run_dir is not None:
        from deref.explain.precompute import load_thumbnail

        hit = load_thumbnail(run_dir, path, max_size)
        if hit is not None:
            return Thumbnail(hit[0], hit[1], None)
    try:
        img, dims = read_thumbnail(path, max_size)
    except DataError as exc:
        return Thumbnail(None, None, str(exc))
    return Thumbnail(np.asarray(img), dims, None)


@st.cache_data(show_spinner="Reading patches at full resolution…", max_entries=64)
def top_patches(
    path: str | None,
    scores: np.ndarray,
    coords: np.ndarray,
    k: int,
    patch_size: int,
    patch_level: int,
    run_dir: str | None = None,
):
    """Top-k patches (PatchView list) at full resolution: from the patch pixels ``deref
    precompute`` stored in ``run_dir``'s explanation cache when it holds all ``k``, else read
    from the slide; images None without a slide."""
    from deref.explain.patches import top_k_patches

    if path is not None and run_dir is not None:
        from deref.explain.precompute import cached_top_patches

        hit = cached_top_patches(run_dir, path, scores, coords, k, patch_size, patch_level)
        if hit is not None:
            return hit
    return top_k_patches(scores, coords, k, patch_size, patch_level, path)


@st.cache_data(show_spinner="Reading the patch at full resolution…", max_entries=256)
def patch_view(
    path: str | None,
    scores: np.ndarray,
    coords: np.ndarray,
    index: int,
    patch_size: int,
    patch_level: int,
    run_dir: str | None = None,
):
    """Patch ``index`` alone (a PatchView) at full resolution (from ``run_dir``'s stored patch
    pixels when it is there, else read from the slide); image None without a slide."""
    from deref.explain.patches import patches_at

    if path is not None and run_dir is not None:
        from deref.explain.precompute import cached_patches_at

        hit = cached_patches_at(run_dir, path, scores, coords, [int(index)], patch_size, patch_level)
        if hit is not None:
            return hit[0]
    return patches_at(scores, coords, [int(index)], patch_size, patch_level, path)[0]


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
@st.cache_data(show_spinner="Rendering the figure…", max_entries=64)
def km_export(
    run_dir: str,
    table: str | None,
    bag_dir: str | None,
    rule: str,
    cutoffs_from: str,
    fmt: str,
    what: str = "km",
) -> bytes:
    """KM figure (``what="km"``) or risk box plot (``"box"``) as PNG (300 dpi) / SVG / PDF bytes,
    or the numbers behind it (``fmt="csv"``), with run / cohort / rule / date recorded
    (``StratificationReport.export``)."""
    return report(run_dir, table, bag_dir, rule, cutoffs_from).export(fmt, what)


def _drop_caches() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def clear_all() -> None:
    """Drop every cached value and resource and the remembered file stamps (an administrator's
    "clear caches" button); :func:`refresh_if_changed` drops the caches by itself."""
    _drop_caches()
    with _STAMP_LOCK:
        _STAMPS.clear()


_STAMPS: dict[tuple, tuple] = {}
_STAMP_LOCK = threading.Lock()


def _stat(path: Path) -> tuple:
    try:
        st_ = path.stat()
        return (st_.st_mtime_ns, st_.st_size, st_.st_ino)
    except OSError:
        return ("missing",)


def source_stamp(source: Source) -> tuple:
    """What changes when the run or its cohort is rewritten on disk (stat only, no reading):
    run.json, the out-of-fold predictions, every fold's weights and the cohort table."""
    run = Path(source.run_dir)
    files = [run / "run.json", run / "predictions.csv", *sorted(run.glob("fold_*/model.safetensors"))]
    table = source.table
    if table is None:
        try:
            table = run_table(source.run_dir)[0]  # cached; a rewritten run.json changes its own stamp
        except (DeRefError, OSError):  # a missing or broken run.json is already in the stamp
            table = None
    if table:
        files.append(Path(table))
    return tuple((str(f), _stat(f)) for f in files)


def refresh_if_changed(source: Source) -> bool:
    """Drop the caches when the source's files changed on disk since this process last looked
    (a run retrained or deleted, weights replaced, the table rewritten): nobody has to clear
    anything, and a restored file is picked up the same way. True when the caches were dropped."""
    stamp = source_stamp(source)
    with _STAMP_LOCK:
        before = _STAMPS.get(source.key)
        _STAMPS[source.key] = stamp
    if before is None or before == stamp:
        return False
    log.info("%s changed on disk: caches dropped", source.run_dir)
    _drop_caches()
    return True


def model_status() -> str:
    """One line for the sidebar, without importing torch: devices of the loaded models."""
    if not MODEL_LOADS:
        return "no model loaded yet"
    devices = sorted(set(MODEL_DEVICES.values()))
    return f"models on **{', '.join(devices)}** · model loads in this server: {sum(MODEL_LOADS.values())}"


@st.cache_data(show_spinner=False, max_entries=16)
def feature_names(run_dir: str) -> tuple[str, ...]:
    return tuple(_run(run_dir).config.feature_names)


def patch_geometry(patch_attrs: dict):
    """How one slide's patches sit on it (``deref.explain.patches.PatchGeometry``: ``read_size``
    pixels read at ``level``, ``extent0`` level-0 pixels per patch side)."""
    from deref.explain.patches import patch_geometry as _geometry

    return _geometry(patch_attrs)


def overlay_image(
    scores: np.ndarray,
    coords: np.ndarray,
    patch_attrs: dict,
    thumb: Thumbnail,
    *,
    opacity: float,
    cmap: str,
    normalization: str,
    clip: tuple[float, float],
    threshold: float | None,
    smooth_sigma: float,
    canvas: int = CANVAS_PX,
):
    """The heatmap of the Attention page's fragment: ``render_heatmap`` over the thumbnail (or a
    blank canvas), as a (H, W, 3) uint8 array and the HeatmapResult (colour scale, patch boxes).
    Never hands a level-0 image to the browser: the canvas is the thumbnail (at most ``canvas`` px)."""
    from deref.explain.heatmap import render_heatmap

    res = render_heatmap(
        scores,
        coords,
        patch_geometry(patch_attrs).extent0,
        thumb.level0_dims,
        thumb.image,
        thumbnail_size=canvas,
        normalization=normalization,
        clip=clip,
        threshold=threshold,
        cmap=cmap,
        opacity=opacity,
        smooth_sigma=smooth_sigma,
    )
    return res.rgba[..., :3], res


# ------------------------------------------------------------------------------------ compare
def comparison_dir() -> Path:
    """Where the demo's comparison runs live (``deref ablate`` output): ``<demo>/comparison``."""
    return demo_dir() / "comparison"


def build_demo_comparison(progress: Callable[[str, int, int], None] | None = None) -> None:
    """Train the demo comparison once per process (``deref.demo.build_demo_comparison``: DeReF,
    three ablations, two baselines on the demo's folds; resumable)."""
    import deref.demo

    with _demo_lock():
        deref.demo.build_demo_comparison(demo_dir(), progress=progress)
    comparison.clear()


def comparison_runs() -> list[str]:
    """The demo comparison's finished runs (every ``run.json`` under :func:`comparison_dir`)."""
    root = comparison_dir()
    if not root.is_dir():
        return []
    return [str(p.parent.resolve()) for p in sorted(root.glob("*/run.json"))]


@st.cache_data(show_spinner="Comparing runs (paired bootstrap over patients)…", max_entries=8)
def comparison(run_dirs: tuple[str, ...], reference: str, n_resamples: int = 2000):
    """``deref.compare.Comparison`` of ``run_dirs`` against ``reference`` (seed 0, recorded)."""
    from deref.compare import compare_runs

    return compare_runs(list(run_dirs), reference=reference, n_resamples=n_resamples, seed=0)


@st.cache_data(show_spinner=False, max_entries=8)
def comparison_files(run_dirs: tuple[str, ...], reference: str, n_resamples: int = 2000) -> dict[str, bytes]:
    """The files ``deref compare`` writes (table CSV/Markdown/LaTeX, forest PNG/SVG/PDF, JSON)."""
    return comparison(run_dirs, reference, n_resamples).files()
