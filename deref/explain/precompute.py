"""Every patient's dashboard results, computed ahead into the run's explanation cache.

``deref precompute RUN`` (and its Ray twin, :mod:`deref.scale.precompute`) calls
:func:`precompute_patient` for each patient: what the Patient page and the Attention page ask
for is then read from disk, so a cohort of thousands opens with every patient instant and a
precomputed run never loads a fold model for the Patient page.

What is stored (all under ``RUN/explanations/``, written atomically and read with
``allow_pickle=False`` by :class:`deref.explain.cache.ExplanationCache`; an unreadable or
stale entry is a miss):

``fold_<k>/<case>__output__<hash>.npz`` (and ``output-m1``, ``output-wsi``)
    :class:`PatientOutput`: the model's output for one patient and one "what if"
    (``drop``), exactly what ``Predictor.predict_patient`` returns, as plain arrays, with the
    bag's layout (coordinates, slide of each patch, per-slide attributes). The key is the
    attributions' (``_CacheSlot``): the fold's weights SHA-256, its ``preprocessing.json`` and
    the patient's bag files (size and modification time), the cohort's fingerprint, plus the
    drop, the precision and the fold's recalibration.
``fold_<k>/<case>__grad__<hash>.npz``, ``__ig__``
    The attributions of every target (``explain_patient``, which caches itself).
``slides/<slide>__thumbnail__<hash>.npz``
    The slide's thumbnail (``image`` (H, W, 3) uint8, ``level0_dims`` in the meta) at
    ``thumb_px`` (the Attention page's canvas, :data:`CANVAS_PX`); key: the slide file's stamp
    (resolved path, size, modification time) and the size.
``slides/<slide>__patches__<hash>.npz``
    Patch pixels for the top-k galleries: ``xy`` (n, 2) level-0 corners, ``index`` (n,) the
    patch's index in the slide's patch list, ``images`` (n, S, S, 3) uint8; key: the slide file's
    stamp, the read size and level, and the output size. The patches of every map the Attention
    page draws (class-token attention, each target's gradient attribution, or a peer's own
    attention and co-attention), the ``top_k`` highest and the ``top_k`` lowest of each (the
    page's "Order" switch), are kept; a gallery is served from it when every patch it shows is
    there (:func:`cached_top_patches`).
``precompute_manifest.csv``
    One row per patient (``deref precompute``).

This module imports no torch at import time. The dashboard reads the stores without loading a
fold model: :func:`load_patient_output` (no torch at all), :func:`load_attribution` (the
attributions' own cache slot, keyed without the model), :func:`load_thumbnail`,
:func:`cached_top_patches` and :func:`cached_patches_at`; on a miss it computes as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deref.errors import ConfigError, DataError, DeRefError, InputError, one_line
from deref.explain.cache import CACHE_DIR, CacheKey, ExplanationCache, bag_files, file_stamp
from deref.prepare import ManifestRow

log = logging.getLogger(__name__)

#: Longer side (px) of the cached slide thumbnail and of the Attention page's heatmap canvas.
CANVAS_PX = 1280
#: Bump when the meaning or numbers of a stored output change (invalidates stored ones).
OUTPUT_VERSION = 1
#: Cache method name of each "what if".
OUTPUT_METHODS: dict[str | None, str] = {None: "output", "m1": "output-m1", "wsi": "output-wsi"}
SLIDES_DIR = "slides"
MANIFEST_NAME = "precompute_manifest.csv"
_STORE_VERSION = 1
_ATTRIBUTION_METHODS = ("grad", "ig")

__all__ = [
    "CANVAS_PX",
    "MANIFEST_NAME",
    "PatientOutput",
    "PrecomputeSettings",
    "cached_patches_at",
    "cached_top_patches",
    "load_attribution",
    "load_patient_output",
    "load_thumbnail",
    "manifest_path",
    "page_maps",
    "patient_output",
    "plain_attrs",
    "precompute_context",
    "precompute_patient",
    "precompute_run",
    "slide_thumbnail",
    "store_patches",
]


@dataclass(frozen=True)
class PrecomputeSettings:
    """What :func:`precompute_patient` computes: the attribution ``methods`` (IG with
    ``steps`` points; ``bf16`` autocast, None = the predictor's setting, which is what the
    dashboard reads), the ``top_k`` highest and (``lowest``) lowest patches of each map,
    thumbnails of ``thumb_px``."""

    methods: tuple[str, ...] = ("grad", "ig")
    steps: int = 32
    top_k: int = 24
    thumb_px: int = CANVAS_PX
    bf16: bool | None = None
    #: False: only the highest ``top_k`` of each map (the gallery's default order), which halves
    #: the stored patch pixels of a large cohort at most
    lowest: bool = True

    def __post_init__(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        object.__setattr__(self, "methods", methods)
        unknown = [m for m in methods if m not in _ATTRIBUTION_METHODS]
        if unknown:
            raise InputError(
                f"unknown attribution method(s) {unknown}; expected some of {list(_ATTRIBUTION_METHODS)}"
            )
        for name in ("steps", "top_k", "thumb_px"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name}={getattr(self, name)}; expected at least 1")


# ----------------------------------------------------------------------------- model output
@dataclass
class PatientOutput:
    """One patient's model output for one "what if" (``drop``), as plain numpy.

    The fields of ``Predictor.predict_patient``'s ``SurvivalOutput`` for this one patient
    (``risk``, ``risk_std``, ``hazards`` (K,), ``survival`` (K,), ``segments``, ``risk_per_s``
    (S,), ``survival_per_s`` (S, K) when more than one segment count, ``features`` (F, C2),
    ``gate``, ``wsi_attention`` (rows, N), ``co_attention`` (G, N)), the names the pages show
    (``feature_names``, ``attention_labels``, ``gate_labels``, ``m1_names``) and the bag's
    layout: ``coords`` (N, 2) (None without a bag with coordinates, or without the slide),
    ``slide_index`` (N,) (None when the bag does not say), ``slide_ids``, ``patch_attrs`` (one
    dict of plain values per slide). ``from_cache``: read from the explanation cache.
    """

    case_id: str
    fold: int
    drop: str | None
    risk: float
    risk_std: float
    hazards: np.ndarray
    survival: np.ndarray
    segments: tuple[int, ...]
    risk_per_s: np.ndarray | None
    survival_per_s: np.ndarray | None
    features: np.ndarray | None
    feature_names: tuple[str, ...]
    gate: np.ndarray | None
    wsi_attention: np.ndarray | None
    coords: np.ndarray | None
    slide_index: np.ndarray | None
    slide_ids: list[str]
    patch_attrs: list[dict]
    model_type: str
    attention_labels: tuple[str, ...] | None = None
    co_attention: np.ndarray | None = None
    gate_labels: tuple[str, ...] | None = None
    m1_names: tuple[str, ...] = ()
    from_cache: bool = False

    @property
    def n_patches(self) -> int:
        return 0 if self.coords is None else int(len(self.coords))


_OUTPUT_ARRAYS = (
    "hazards",
    "survival",
    "risk_per_s",
    "survival_per_s",
    "features",
    "gate",
    "wsi_attention",
    "coords",
    "slide_index",
    "co_attention",
)
_OUTPUT_NAMES = ("feature_names", "attention_labels", "gate_labels", "m1_names")


def plain_attrs(attrs: dict) -> dict:
    """A slide's bag attributes as plain Python values (numpy scalars and CLAM's small arrays such
    as ``downsample`` (x, y) included), for the pages and ``patch_geometry``."""
    out: dict = {}
    for k, v in attrs.items():
        if isinstance(v, (str, bool, int, float, np.integer, np.floating)):
            out[k] = v.item() if isinstance(v, np.generic) else v
        elif isinstance(v, (list, tuple, np.ndarray)) and 0 < np.size(v) <= 4:
            a = np.asarray(v)
            if a.dtype.kind in "iuf":
                out[k] = a.reshape(-1).tolist()
    return out


def _fold_for(run, case_id: str, fold: int | None) -> int:
    """``Predictor.fold_for`` without the predictor (no torch): ``fold`` checked against the
    run's folds, else the fold that held the patient out, else the first fold."""
    folds = run.fold_indices
    if fold is not None:
        if int(fold) not in folds:
            raise ConfigError(f"fold {fold} is not in run {run.path} (folds {folds})")
        return int(fold)
    return int(run.info.validation_folds().get(str(case_id), folds[0]))


def _output_slot(run, cohort, case_id: str, k: int, drop: str | None, bf16: bool, recalibrate: bool):
    """``(cache, key)`` of one stored output (the key scheme of the attributions' cache slot)."""
    if drop not in OUTPUT_METHODS:
        raise ConfigError(f"drop={drop!r}; expected 'm1', 'wsi' or None")
    recal = run.info.fold(k).recalibration if recalibrate else None
    settings = {
        "version": OUTPUT_VERSION,
        "drop": drop,
        "bf16": bool(bf16),
        "recalibration": None if recal is None else dataclasses.asdict(recal),
        "train_data": run.info.data.fingerprint,
    }
    fold_dir = run.fold_dir(k)
    cache = ExplanationCache(run.path)
    key = cache.key(
        fold=k,
        case_id=str(case_id),
        method=OUTPUT_METHODS[drop],
        settings=settings,
        weights=fold_dir / "model.safetensors",
        extra_files=[fold_dir / "preprocessing.json", *bag_files(cohort, str(case_id))],
        data_fingerprint=cohort.fingerprint,
    )
    return cache, key


def load_patient_output(
    run,
    cohort,
    case_id: str,
    *,
    fold: int | None = None,
    drop: str | None = None,
    bf16: bool = False,
    recalibrate: bool = True,
) -> PatientOutput | None:
    """The stored :class:`PatientOutput` of a patient (``run``: a ``deref.runs.RunDir``), or
    None; loads no model and imports no torch. ``bf16`` / ``recalibrate``: those of the
    predictor that would compute it (the dashboard's: False / True)."""
    k = _fold_for(run, case_id, fold)
    cache, key = _output_slot(run, cohort, str(case_id), k, drop, bf16, recalibrate)
    hit = cache.load(key)
    return None if hit is None else _output_from_cache(*hit)


def patient_output(
    predictor,
    cohort,
    case_id: str,
    *,
    fold: int | None = None,
    drop: str | None = None,
    use_cache: bool = True,
) -> PatientOutput:
    """What one patient page needs from the model (``predictor.predict_patient`` of the patient
    and ``drop``, with attention), read from / written to the run's explanation cache.

    ``fold``: default the fold that held the patient out (else the first). A hit runs no model.
    """
    case_id = str(case_id)
    k = predictor.fold_for(case_id, fold)
    if case_id not in cohort.slides:
        raise DataError(f"{cohort.source}: case {case_id!r} is not in the table")
    slot = None
    if use_cache:
        slot = _output_slot(predictor.run, cohort, case_id, k, drop, predictor.bf16, predictor.recalibrate)
        hit = slot[0].load(slot[1])
        if hit is not None:
            return _output_from_cache(*hit)
    result = _compute_output(predictor, cohort, case_id, k, drop)
    if slot is not None:
        slot[0].save(slot[1], *_output_to_cache(result))
    return result


def _compute_output(predictor, cohort, case_id: str, k: int, drop: str | None) -> PatientOutput:
    from deref.model import attention_labels

    out, inputs = predictor.predict_patient(cohort, case_id, fold=k, drop=drop, return_attention=True)
    model = predictor.fold(k).model

    def arr(x):
        return None if x is None else x.detach().cpu().numpy()[0]

    surv_s = None
    if out.survival_per_s is not None and len(out.segments) > 1:
        surv_s = out.survival_per_s[0].numpy()  # (S, K): one survival curve per segment count
    bag = inputs.bags[0] if inputs.bags else None
    attrs: list[dict] = []
    slide_ids: list[str] = []
    if bag is not None:
        slide_ids = list(bag.slide_ids or cohort.slides.get(case_id, []))
        attrs = [plain_attrs(a) for a in bag.attrs.get("per_slide") or [bag.attrs]]
    att = out.wsi_attention
    return PatientOutput(
        case_id=case_id,
        fold=k,
        drop=drop,
        risk=float(out.risk[0]),
        risk_std=float(out.risk_std[0]) if out.risk_std is not None else 0.0,
        hazards=arr(out.hazards),
        survival=arr(out.survival),
        segments=tuple(int(s) for s in out.segments),
        risk_per_s=arr(out.risk_per_s),
        survival_per_s=surv_s,
        features=arr(out.features),
        feature_names=tuple(out.feature_names),
        gate=arr(out.gate),
        wsi_attention=arr(att) if drop != "wsi" else None,
        coords=None if bag is None or bag.coords is None or drop == "wsi" else np.asarray(bag.coords),
        slide_index=None if bag is None or bag.slide_index is None else np.asarray(bag.slide_index),
        slide_ids=slide_ids,
        patch_attrs=attrs,
        model_type=predictor.config.model_type,
        attention_labels=None if att is None else attention_labels(model, int(att.shape[1])),
        co_attention=arr(out.co_attention) if drop != "wsi" else None,
        gate_labels=getattr(model, "gate_names", None),
        m1_names=tuple(predictor.config.m1_names),
    )


def _output_to_cache(po: PatientOutput) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {name: getattr(po, name) for name in _OUTPUT_ARRAYS if getattr(po, name) is not None}
    meta = {name: (None if getattr(po, name) is None else list(getattr(po, name))) for name in _OUTPUT_NAMES}
    meta.update(
        case_id=po.case_id,
        fold=po.fold,
        drop=po.drop,
        risk=po.risk,
        risk_std=po.risk_std,
        segments=list(po.segments),
        slide_ids=list(po.slide_ids),
        patch_attrs=po.patch_attrs,
        model_type=po.model_type,
    )
    return arrays, meta


def _output_from_cache(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> PatientOutput:
    names = {n: (None if meta[n] is None else tuple(str(x) for x in meta[n])) for n in _OUTPUT_NAMES}
    return PatientOutput(
        case_id=str(meta["case_id"]),
        fold=int(meta["fold"]),
        drop=meta["drop"],
        risk=float(meta["risk"]),
        risk_std=float(meta["risk_std"]),
        segments=tuple(int(s) for s in meta["segments"]),
        slide_ids=[str(s) for s in meta["slide_ids"]],
        patch_attrs=list(meta["patch_attrs"]),
        model_type=str(meta["model_type"]),
        **{name: arrays.get(name) for name in _OUTPUT_ARRAYS},
        **{**names, "m1_names": names["m1_names"] or ()},
        from_cache=True,
    )


# ----------------------------------------------------------------------------- attributions
class _KeyOnly:
    """What the attribution cache's key reads of a ``Predictor`` (the run, the fold of a patient,
    the precision, the evaluation segment counts), without loading a fold model."""

    def __init__(self, run, bf16: bool = False) -> None:
        self.run = run
        self.bf16 = bool(bf16)

    @property
    def config(self):
        return self.run.config

    def fold_for(self, case_id: str, fold: int | None = None) -> int:
        return _fold_for(self.run, case_id, fold)

    def fold(self, k: int):
        from types import SimpleNamespace

        from deref.model.deref import DeReF

        shell = SimpleNamespace(config=self.run.config, training=False)  # an eval-mode model's view

        def segments_for_forward(segments=None):
            return DeReF.segments_for_forward(shell, segments)

        return SimpleNamespace(model=SimpleNamespace(segments_for_forward=segments_for_forward))


def load_attribution(
    run,
    cohort,
    case_id: str,
    *,
    method: str = "grad",
    fold: int | None = None,
    steps: int = 32,
    slide_dir: str | os.PathLike | None = None,
    bf16: bool = False,
):
    """The stored ``explain_patient`` result of every target (``run``: a ``deref.runs.RunDir``;
    the other arguments as ``explain_patient``'s, ``bf16`` the predictor's), or None; loads no
    fold model. A run that cannot be explained raises what ``explain_patient`` raises."""
    from deref.explain import attribution as attr

    key_only = _KeyOnly(run, bf16)
    case_id, targets = attr._check_request(key_only, cohort, case_id, method, None)
    req = attr._request(key_only, case_id, fold, method, steps, None, None)
    have = attr._CacheSlot(key_only, cohort, req).load()
    if have is None or not all(t in have.targets for t in targets):
        return None
    # the key does not cover where the slides are: look them up again (as explain_patient does)
    have = dataclasses.replace(
        have, slide_paths=attr.find_slide_paths(have.slide_ids, cohort.bag_dir, slide_dir)
    )
    return attr._subset(have, targets)


# ----------------------------------------------------------------------------- slide stores
class _SlideStore(ExplanationCache):
    """Per-slide entries (thumbnails, patch pixels) in ``RUN/explanations/slides/``."""

    def path(self, key: CacheKey) -> Path:
        return self.root / SLIDES_DIR / key.filename

    def entries(self) -> list[Path]:
        return sorted((self.root / SLIDES_DIR).glob("*.npz"))

    def slide_key(self, kind: str, slide_path: str | os.PathLike, settings: dict[str, Any]) -> CacheKey:
        description = {
            "kind": kind,
            "slide": file_stamp(slide_path),
            "settings": settings,
            "version": _STORE_VERSION,
        }
        blob = json.dumps(description, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:20]
        return CacheKey(-1, Path(slide_path).name, kind, digest, description)


def _thumb_key(run_dir, slide_path, max_size: int) -> tuple[_SlideStore, CacheKey]:
    store = _SlideStore(run_dir)
    return store, store.slide_key("thumbnail", slide_path, {"max_size": int(max_size)})


def load_thumbnail(
    run_dir: str | os.PathLike, slide_path: str | os.PathLike, max_size: int = CANVAS_PX
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``(image (H, W, 3) uint8, level-0 (W0, H0))`` of a stored thumbnail, or None."""
    store, key = _thumb_key(run_dir, slide_path, max_size)
    hit = store.load(key)
    if hit is None:
        return None
    arrays, meta = hit
    w, h = meta["level0_dims"]
    return arrays["image"], (int(w), int(h))


def slide_thumbnail(
    run_dir: str | os.PathLike, slide_path: str | os.PathLike, max_size: int = CANVAS_PX
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """``(image, level-0 dims, computed)``: the stored thumbnail, else read through OpenSlide
    (``deref.slides.read_thumbnail``) and stored. Raises ``DataError`` for an unreadable slide."""
    hit = load_thumbnail(run_dir, slide_path, max_size)
    if hit is not None:
        return (*hit, False)
    from deref.slides import read_thumbnail

    img, dims = read_thumbnail(slide_path, max_size)
    image = np.asarray(img, dtype=np.uint8)
    store, key = _thumb_key(run_dir, slide_path, max_size)
    store.save(key, {"image": image}, {"level0_dims": [int(dims[0]), int(dims[1])]}, compress=True)
    return image, (int(dims[0]), int(dims[1])), True


def _patch_key(run_dir, slide_path, read_size: int, level: int, out_size: int | None):
    store = _SlideStore(run_dir)
    settings = {"read_size": int(read_size), "level": int(level), "out_size": out_size}
    return store, store.slide_key("patches", slide_path, settings)


def _stored_patches(
    run_dir, slide_path, read_size, level, out_size
) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
    """``{(x, y): (index, image)}`` of a slide's stored patch pixels (empty when none)."""
    store, key = _patch_key(run_dir, slide_path, read_size, level, out_size)
    hit = store.load(key)
    if hit is None:
        return {}
    arrays = hit[0]
    return {
        (int(x), int(y)): (int(i), img)
        for (x, y), i, img in zip(arrays["xy"], arrays["index"], arrays["images"])
    }


def cached_patches_at(
    run_dir: str | os.PathLike,
    slide_path: str | os.PathLike,
    scores: Any,
    coords: Any,
    indices: Sequence[int] | np.ndarray,
    patch_size: int,
    patch_level: int = 0,
    *,
    out_size: int | None = None,
):
    """``deref.explain.patches.patches_at`` served from the stored patch pixels: the same
    ``PatchView`` list, or None when a patch is not stored (the caller then reads the slide)."""
    from PIL import Image

    from deref.explain.heatmap import _check_scores_coords
    from deref.explain.patches import PatchView

    s, c = _check_scores_coords(scores, coords)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= s.size):
        return None
    stored = _stored_patches(run_dir, slide_path, patch_size, patch_level, out_size)
    xy = np.rint(c[idx]).astype(np.int64)
    keys = [(int(x), int(y)) for x, y in xy]
    if not stored or any(k not in stored for k in keys):
        return None
    return [
        PatchView(int(i), float(s[i]), x, y, Image.fromarray(stored[(x, y)][1]))
        for i, (x, y) in zip(idx, keys)
    ]


def cached_top_patches(
    run_dir: str | os.PathLike,
    slide_path: str | os.PathLike,
    scores: Any,
    coords: Any,
    k: int,
    patch_size: int,
    patch_level: int = 0,
    *,
    largest: bool = True,
    out_size: int | None = None,
):
    """``deref.explain.patches.top_k_patches`` served from the stored patch pixels (the same
    views), or None when one of the ``k`` is not stored."""
    from deref.explain.patches import top_k_indices

    chosen = top_k_indices(np.asarray(scores, dtype=np.float64).reshape(-1), k, largest=largest)
    return cached_patches_at(
        run_dir, slide_path, scores, coords, chosen, patch_size, patch_level, out_size=out_size
    )


def store_patches(
    run_dir: str | os.PathLike,
    slide_path: str | os.PathLike,
    coords: np.ndarray,
    indices: Sequence[int],
    read_size: int,
    level: int,
    out_size: int | None = None,
) -> int:
    """Make sure the pixels of patches ``indices`` (of the slide's ``coords``) are stored; reads
    only the missing ones (one slide open) and merges them into the entry. Returns how many
    were read."""
    from deref.explain.patches import patches_at

    stored = _stored_patches(run_dir, slide_path, read_size, level, out_size)
    idx = np.asarray(sorted({int(i) for i in indices}), dtype=np.int64)
    xy = np.rint(np.asarray(coords, dtype=np.float64)[idx]).astype(np.int64) if idx.size else np.zeros((0, 2))
    missing = [int(i) for i, (x, y) in zip(idx, xy) if (int(x), int(y)) not in stored]
    if not missing:
        return 0
    zeros = np.zeros(len(coords))
    for view in patches_at(zeros, coords, missing, read_size, level, slide_path, out_size=out_size):
        stored[(view.x, view.y)] = (view.index, np.asarray(view.image.convert("RGB"), dtype=np.uint8))
    keys = sorted(stored)
    arrays = {
        "xy": np.asarray(keys, dtype=np.int64).reshape(-1, 2),
        "index": np.asarray([stored[k][0] for k in keys], dtype=np.int64),
        "images": np.stack([stored[k][1] for k in keys]).astype(np.uint8),
    }
    store, key = _patch_key(run_dir, slide_path, read_size, level, out_size)
    store.save(key, arrays, {"n": len(keys)}, compress=True)
    return len(missing)


# ----------------------------------------------------------------------------- one patient
def page_maps(po: PatientOutput, patch_scores: dict[str, np.ndarray] | None, method: str = "grad"):
    """The per-patch maps the Attention page offers for this output (``deref.figures.attention_maps``
    with the page's arguments): name -> (N,) scores."""
    from deref.figures.attention import attention_maps

    return attention_maps(
        po.wsi_attention,
        patch_scores,
        method,
        attention_labels=po.attention_labels,
        co_attention=po.co_attention,
        m1_names=po.m1_names,
    )


def _gallery_patches(
    po: PatientOutput, maps: dict[str, np.ndarray], top_k: int, lowest: bool = True
) -> dict[int, set[int]]:
    """Slide -> the indices (into that slide's patches, as the page selects them) of the
    ``top_k`` highest and lowest patches of every map (the page's gallery: at most 24)."""
    from deref.explain.patches import top_k_indices

    out: dict[int, set[int]] = {}
    for si in range(max(1, len(po.slide_ids))):
        sel = np.ones(po.n_patches, bool) if po.slide_index is None else (po.slide_index == si)
        chosen: set[int] = set()
        for scores_all in maps.values():
            scores = np.asarray(scores_all, dtype=float)[sel]
            k = min(top_k, len(scores))
            chosen |= {int(i) for i in top_k_indices(scores, k)}
            if lowest:
                chosen |= {int(i) for i in top_k_indices(-scores, k)}
        if chosen:
            out[si] = chosen
    return out


def _slide_work(predictor, cohort, po: PatientOutput, att, settings: PrecomputeSettings, slide_dir) -> bool:
    """Thumbnails and gallery patches of the patient's slides; True when anything was read."""
    from deref.explain.attribution import find_slide_paths
    from deref.explain.patches import patch_geometry

    if po.coords is None:
        return False
    maps = page_maps(po, None if att is None else att.patch_scores, "grad")
    paths = find_slide_paths(po.slide_ids or ["slide"], cohort.bag_dir, slide_dir)
    run_dir = predictor.run.path
    computed = False
    for si, indices in _gallery_patches(po, maps, settings.top_k, settings.lowest).items():
        path = paths[si] if si < len(paths) else None
        if path is None:
            log.warning(
                "%s: slide %s not found; no thumbnail or patches stored",
                po.case_id,
                po.slide_ids[si : si + 1],
            )
            continue
        try:
            computed |= slide_thumbnail(run_dir, path, settings.thumb_px)[2]
        except DataError as exc:  # the page draws on a blank canvas and reads no patch
            log.warning("%s: %s; no thumbnail or patches stored", po.case_id, one_line(exc))
            continue
        attrs = (
            po.patch_attrs[si] if si < len(po.patch_attrs) else (po.patch_attrs[0] if po.patch_attrs else {})
        )
        geo = patch_geometry(attrs)
        sel = np.ones(po.n_patches, bool) if po.slide_index is None else (po.slide_index == si)
        computed |= (
            store_patches(run_dir, path, po.coords[sel], sorted(indices), geo.read_size, geo.level) > 0
        )
    return computed


def _outputs(predictor, cohort, case_id: str) -> tuple[PatientOutput, bool]:
    """The three outputs (none, without modality 1, without the slide where the run reads one);
    ``(the patient's own output, whether any was computed)``. A "what if" the model cannot do
    (a ``ConfigError``: the page shows a warning for it) is left out."""
    own = patient_output(predictor, cohort, case_id)
    computed = not own.from_cache
    drops = ["m1", "wsi"] if predictor.needs_wsi else ["m1"]
    for drop in drops:
        try:
            computed |= not patient_output(predictor, cohort, case_id, fold=own.fold, drop=drop).from_cache
        except ConfigError as exc:
            log.info("%s: no what-if without %s (%s)", case_id, drop, one_line(exc))
    return own, computed


def precompute_patient(
    predictor, cohort, case_id: str, settings: PrecomputeSettings = PrecomputeSettings(), *, slide_dir=None
) -> ManifestRow:
    """Everything the Patient and Attention pages ask the model and the slides for, for one
    patient, into the run's explanation cache (module docstring). Never raises for a bad patient:
    ``status`` is ``ok``, ``skipped`` (everything was already stored) or ``failed`` (``error``:
    one line naming the patient); ``patches``: the patient's patch count."""
    from deref.explain.attribution import explain_patient

    t0 = time.perf_counter()
    case_id = str(case_id)
    try:
        own, computed = _outputs(predictor, cohort, case_id)
        att = None
        if predictor.run.info.has_decoupled_features:
            for method in settings.methods:
                res = explain_patient(
                    predictor,
                    cohort,
                    case_id,
                    method=method,
                    fold=own.fold,
                    steps=settings.steps,
                    bf16=settings.bf16,
                    slide_dir=slide_dir,
                )
                computed |= not res.from_cache
                att = res if method == "grad" else att
            if att is None:  # the galleries rank the gradient maps, as the page's default does
                att = explain_patient(
                    predictor, cohort, case_id, method="grad", fold=own.fold, slide_dir=slide_dir
                )
                computed |= not att.from_cache
        computed |= _slide_work(predictor, cohort, own, att, settings, slide_dir)
    except Exception as exc:  # noqa: BLE001 - one bad patient must not stop the batch
        if not isinstance(exc, (DeRefError, OSError)):  # not a data problem: keep the traceback
            log.warning("precomputing %s failed unexpectedly", case_id, exc_info=True)
        return ManifestRow(case_id, "failed", 0, time.perf_counter() - t0, f"{case_id}: {one_line(exc)}")
    status = "ok" if computed else "skipped"
    out = str(Path(predictor.run.path) / CACHE_DIR)
    return ManifestRow(case_id, status, own.n_patches, time.perf_counter() - t0, "", out)


# ----------------------------------------------------------------------------- a run
def precompute_context(
    run_dir: str | os.PathLike,
    table: str | None = None,
    bags: str | None = None,
    slide_dir: str | None = None,
):
    """``(predictor, cohort, slide_dir)`` of a run (what each worker builds once): the run's own
    cohort or ``table`` / ``bags``; ``slide_dir`` default: ``slides/`` beside the table when
    it exists (as the dashboard's), else None (next to the bag folder, see ``slide_candidates``)."""
    from deref.inference import Predictor

    predictor = Predictor.from_run(run_dir, device="auto")
    cohort = predictor.load_cohort(table, bags)
    if slide_dir is None:
        base = table or predictor.run.info.data.table
        if base and (Path(base).parent / "slides").is_dir():
            slide_dir = str(Path(base).parent / "slides")
    return predictor, cohort, slide_dir


def precompute_run(
    run_dir: str | os.PathLike,
    settings: PrecomputeSettings = PrecomputeSettings(),
    *,
    table: str | None = None,
    bags: str | None = None,
    slide_dir: str | None = None,
    case_ids: Sequence[str] | None = None,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """:func:`precompute_patient` for every patient of the cohort (or ``case_ids``), in order,
    with one predictor; one row per patient (``on_result`` is called with each)."""
    predictor, cohort, slide_dir = precompute_context(run_dir, table, bags, slide_dir)
    rows = []
    for case_id in cohort.case_ids if case_ids is None else case_ids:
        row = precompute_patient(predictor, cohort, str(case_id), settings, slide_dir=slide_dir)
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows


def manifest_path(run_dir: str | os.PathLike) -> Path:
    """Where ``deref precompute`` writes its manifest: ``RUN/explanations/precompute_manifest.csv``."""
    return Path(run_dir) / CACHE_DIR / MANIFEST_NAME
