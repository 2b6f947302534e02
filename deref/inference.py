"""Prediction from a run directory: ``Predictor.from_run(path).predict(cohort)``.

The predictor loads each fold's model once, standardizes modality 1 with that fold's
training statistics, reads bags lazily (with a bounded in-memory cache), and predicts
batches of patients, sorted by bag size to limit padding, on the GPU when present (bf16
autocast optional). Predictions are deterministic: DeReF's default evaluation averages the
reorganization over every segment count and reports the spread as ``risk_std``.

A fold trained with ``recalibration`` (:mod:`deref.recalibration`) stores a hazard map fitted
on inner validation patients; :meth:`Predictor.forward` applies it to every curve it returns
(hazards, survival, survival per segment count), never to the risk. ``recalibrate=False``
gives the raw model's curves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from deref.data.bags import Bag
from deref.data.cohort import Cohort, raise_problems
from deref.data.preprocess import Preprocessing
from deref.errors import ConfigError, DataError, InputError
from deref.model import SurvivalOutput, collate_bags
from deref.recalibration import Recalibration, hazards_from_survival, survival_from_hazards
from deref.runs import MEAN_OF_FOLDS, FoldCheckpoint, RunDir
from deref.survival import surv_column_names

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA if available, else MPS if available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class BagStore:
    """Patient bags read on demand from a cohort's bag folder, with an LRU cache of ``max_bytes``."""

    def __init__(self, cohort: Cohort, wsi_dim: int | None, max_bytes: int = 2 << 30) -> None:
        self.cohort = cohort
        self.wsi_dim = wsi_dim
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, Bag] = OrderedDict()
        self._bytes = 0
        self._sizes: dict[str, int] = {}

    def get(self, case_id: str) -> Bag:
        bag = self._cache.get(case_id)
        if bag is not None:
            self._cache.move_to_end(case_id)
            return bag
        bag = self.cohort.patient_bag(case_id, expected_dim=self.wsi_dim)
        self._sizes[case_id] = bag.n
        nbytes = bag.features.nbytes
        if nbytes <= self.max_bytes:
            self._cache[case_id] = bag
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.features.nbytes
        return bag

    def size(self, case_id: str) -> int:
        """Number of patches (reads the bag header on first use; 1 for a missing slide)."""
        if case_id not in self._sizes and "wsi" in self.cohort.missing_inputs(case_id):
            self._sizes[case_id] = 1
        if case_id not in self._sizes:
            from deref.data.bags import find_bag, peek_bag_shape

            n = 0
            for s in self.cohort.slides.get(case_id, []):
                n += peek_bag_shape(find_bag(s, self.cohort.bag_dir))[0]
            self._sizes[case_id] = n
        return self._sizes[case_id]


@dataclass
class PatientInputs:
    """Model inputs of a batch: ``m1`` list of (B, d_g), ``wsi`` (B, N, D) + ``mask``, ids, bags."""

    case_ids: list[str]
    m1: list[torch.Tensor]
    wsi: torch.Tensor | None
    mask: torch.Tensor | None
    bags: list[Bag] | None

    def to(self, device: torch.device) -> PatientInputs:
        return PatientInputs(
            self.case_ids,
            [x.to(device) for x in self.m1],
            None if self.wsi is None else self.wsi.to(device),
            None if self.mask is None else self.mask.to(device),
            self.bags,
        )


def m1_matrix(cohort: Cohort, pre: Preprocessing, case_ids: Sequence[str]) -> list[np.ndarray]:
    """Modality-1 arrays, one ``(n, d_g)`` per group, rows in ``case_ids`` order: standardized
    frame columns (gene families, MRI vectors), or the ROI cubes of an end-to-end MRI cohort.

    The cohort must hold the columns ``pre`` was fitted on: the cohort it was fitted on does,
    and :class:`Predictor` checks another one first (:meth:`Predictor.check_cohort`).
    """
    unknown = [c for c in case_ids if c not in cohort.genomic.index]
    if unknown:
        raise DataError(f"{cohort.source}: case id(s) not in the table: {unknown[:5]}")
    return pre.m1_inputs(cohort, case_ids)


def assemble(
    case_ids: Sequence[str],
    m1_all: dict[str, list[np.ndarray]] | list[np.ndarray],
    m1_rows: dict[str, int],
    bags: BagStore | None,
    needs_wsi: bool,
) -> PatientInputs:
    """Build a batch from precomputed standardized modality-1 rows and lazily read bags."""
    rows = [m1_rows[c] for c in case_ids]
    m1 = [torch.from_numpy(np.ascontiguousarray(g[rows])) for g in m1_all]
    if not needs_wsi or bags is None:
        return PatientInputs(list(case_ids), m1, None, None, None)
    patient_bags = [bags.get(c) for c in case_ids]
    wsi, mask = collate_bags([torch.from_numpy(b.features) for b in patient_bags])
    return PatientInputs(list(case_ids), m1, wsi, mask, patient_bags)


@torch.no_grad()
def family_tokens(model: torch.nn.Module, m1: Sequence[torch.Tensor]) -> torch.Tensor:
    """The modality-1 tokens ``(B, G, C1)`` of standardized profiles (one ``(B, d_g)`` per group)."""
    dev = next(model.parameters()).device
    return model.m1_encoder.tokens([torch.as_tensor(x, dtype=torch.float32).to(dev) for x in m1]).float()


def mean_family_tokens(
    model: torch.nn.Module, m1: Sequence[torch.Tensor | np.ndarray], batch_size: int = 256
) -> torch.Tensor:
    """``(G, C1)`` mean family token over patients (``m1``: one ``(n, d_g)`` array per group)."""
    n = int(np.shape(m1[0])[0])
    if n == 0:
        raise InputError("no patients to average the family tokens over")
    total = None
    for start in range(0, n, batch_size):
        part = family_tokens(model, [torch.as_tensor(np.asarray(x[start : start + batch_size])) for x in m1])
        s = part.double().sum(dim=0)
        total = s if total is None else total + s
    return (total / n).float()


class Predictor:
    """Loads a run once and predicts batches of patients with any of its fold models."""

    def __init__(
        self, run: RunDir, device: str | torch.device = "auto", bf16: bool = False, recalibrate: bool = True
    ) -> None:
        self.run = run
        self.device = resolve_device(device)
        self.bf16 = bf16
        self.recalibrate = recalibrate
        self._folds: dict[int, FoldCheckpoint] = {}
        self._m1_cache: dict[tuple[int, str], tuple[list[np.ndarray], dict[str, int]]] = {}
        self._bag_stores: dict[str, BagStore] = {}
        self._token_baselines: dict[int, torch.Tensor] = {}
        self._fitting: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_run(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        bf16: bool = False,
        recalibrate: bool = True,
    ) -> Predictor:
        return cls(RunDir(path), device=device, bf16=bf16, recalibrate=recalibrate)

    # ------------------------------------------------------------ loading
    @property
    def config(self):
        return self.run.config

    @property
    def needs_wsi(self) -> bool:
        return self.run.info.needs_wsi

    def fold(self, k: int) -> FoldCheckpoint:
        if k not in self._folds:
            self._folds[k] = self.run.load_fold(k, self.device)
        return self._folds[k]

    def load_cohort(self, table: str | None = None, bag_dir: str | None = None) -> Cohort:
        """The cohort the run was trained on (paths from run.json), or another table."""
        from deref.runs.fit import load_run_cohort

        return load_run_cohort(self.run.info, table, bag_dir)

    def validation_folds(self) -> dict[str, int]:
        """case_id -> the fold whose validation set holds it (from the run's splits)."""
        return self.run.info.validation_folds()

    def fold_for(self, case_id: str, fold: int | None = None) -> int:
        """``fold`` (checked against the run's folds), else the fold whose validation set held
        ``case_id``, else the first fold."""
        folds = self.run.fold_indices
        if fold is not None:
            if int(fold) not in folds:
                raise ConfigError(f"fold {fold} is not in run {self.run.path} (folds {folds})")
            return int(fold)
        return int(self.validation_folds().get(str(case_id), folds[0]))

    def family_token_baseline(self, k: int, cohort: Cohort | None = None) -> torch.Tensor:
        """``(G, C1)`` mean family token of fold ``k``'s training patients: the "no genomics"
        input of :meth:`predict_patient` and the genomic baseline of ``deref.explain``.

        The training patients' profiles come from ``cohort`` when it holds all of them (the
        run's own cohort usually), else from the run's own table (:meth:`load_cohort`).
        Computed once per fold model.
        """
        with self._lock:
            hit = self._token_baselines.get(k)
        if hit is not None:
            return hit
        train_ids = list(self.run.info.fold(k).train_ids)
        if not train_ids:
            raise ConfigError(f"{self.run.path}: run.json lists no training patients for fold {k}")
        source = cohort
        if source is None or not all(c in source.genomic.index for c in train_ids):
            source = self.load_cohort()
        self.check_cohort(source)
        tokens = mean_family_tokens(
            self.fold(k).model, m1_matrix(source, self.fold(k).preprocessing, train_ids)
        )
        with self._lock:
            self._token_baselines[k] = tokens
        return tokens

    def check_cohort(self, cohort: Cohort) -> None:
        """Raise :class:`~deref.errors.DataError` listing everything that keeps the run's models
        from reading ``cohort``'s genomic table (``deref.runs.fit.cohort_fit_problems``; bags are
        checked as they are read). Checked once per cohort table."""
        from deref.runs.fit import cohort_fit_problems

        key = (str(cohort.source), cohort.fingerprint)
        if key in self._fitting:
            return
        run_json = str(self.run.path / "run.json")
        problems = cohort_fit_problems(self.run.info, cohort, run_json=run_json, check_bags=False)
        raise_problems(problems, f"{cohort.source}: cannot be scored by run {self.run.path}")
        self._fitting.add(key)

    def _m1(self, cohort: Cohort, k: int) -> tuple[list[np.ndarray], dict[str, int]]:
        key = (k, cohort.fingerprint)
        if key not in self._m1_cache:
            ids = cohort.case_ids
            self._m1_cache[key] = (
                m1_matrix(cohort, self.fold(k).preprocessing, ids),
                {c: i for i, c in enumerate(ids)},
            )
        return self._m1_cache[key]

    def bag_store(self, cohort: Cohort) -> BagStore | None:
        if not self.needs_wsi:
            return None
        if cohort.bag_dir is None:
            raise DataError(f"{cohort.source}: this model needs WSI bags; no bag folder was given")
        key = f"{cohort.fingerprint}:{cohort.bag_dir}"
        if key not in self._bag_stores:
            self._bag_stores[key] = BagStore(cohort, self.config.wsi_dim)
        return self._bag_stores[key]

    def inputs(self, cohort: Cohort, case_ids: Sequence[str], k: int) -> PatientInputs:
        """Fold ``k``'s model inputs for ``case_ids`` (the cohort checked first)."""
        self.check_cohort(cohort)
        m1_all, rows = self._m1(cohort, k)
        return assemble(case_ids, m1_all, rows, self.bag_store(cohort), self.needs_wsi)

    # ------------------------------------------------------------ predicting
    def forward(
        self,
        inputs: PatientInputs,
        k: int,
        *,
        segments: int | str | None = None,
        return_attention: bool = False,
        m1_tokens: torch.Tensor | None = None,
    ) -> SurvivalOutput:
        model = self.fold(k).model
        x = inputs.to(self.device)
        kwargs = {}
        if m1_tokens is not None:
            kwargs["m1_tokens"] = m1_tokens
        if segments is not None and self.config.model_type == "deref":
            kwargs["segments"] = segments
        if return_attention:
            kwargs["return_attention"] = True
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            out = model(x.m1, x.wsi, x.mask, **kwargs)
        out = _to_cpu_float(out)
        recal = self.run.info.fold(k).recalibration if self.recalibrate else None
        return out if recal is None else _recalibrated(out, recal)

    def predict(
        self,
        cohort: Cohort,
        case_ids: Sequence[str] | None = None,
        fold: int | str = "oof",
        batch_size: int = 8,
        segments: int | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """Predictions per patient: case_id, fold, time, censorship, event, risk, risk_std, surv_k.

        ``fold``: an int (that fold's model for everyone), ``"oof"`` (each patient by the fold
        that held it out; patients in no validation fold get the mean over all folds), or
        ``"mean"`` (mean over all folds for everyone: an external cohort).

        Raises
        ------
        DataError
            The cohort lacks columns the run was trained on (:meth:`check_cohort`, before any
            patient is scored), or a patient's bag is missing or of another width.
        """
        self.check_cohort(cohort)
        ids = list(cohort.case_ids if case_ids is None else case_ids)
        val_fold = self.validation_folds()
        all_folds = self.run.fold_indices
        plan: dict[int | str, list[str]] = {}
        for c in ids:
            if isinstance(fold, int):
                plan.setdefault(fold, []).append(c)
            elif fold == "oof" and c in val_fold:
                plan.setdefault(val_fold[c], []).append(c)
            elif fold in ("oof", "mean"):
                plan.setdefault("mean", []).append(c)
            else:
                raise ConfigError(f"fold={fold!r}; expected an int, 'oof' or 'mean'")
        done = 0
        rows: list[pd.DataFrame] = []
        for key, members in plan.items():
            folds = all_folds if key == "mean" else [int(key)]
            parts = [self._predict_fold(cohort, members, k, batch_size, segments) for k in folds]
            frame = parts[0].copy()
            if len(parts) > 1:
                cols = ["risk"] + surv_column_names(self.config.n_bins)
                frame[cols] = np.mean([p[cols].to_numpy() for p in parts], axis=0)
                frame["risk_std"] = np.std([p["risk"].to_numpy() for p in parts], axis=0)
                frame["fold"] = MEAN_OF_FOLDS
            rows.append(frame)
            done += len(members)
            if progress:
                progress(done, len(ids))
        out = pd.concat(rows).set_index("case_id").loc[ids].reset_index()
        pts = cohort.patients.loc[ids]
        out.insert(2, "time", pts["time"].to_numpy())
        out.insert(3, "censorship", pts["censorship"].to_numpy())
        out.insert(4, "event", pts["event"].to_numpy())
        if self.config.allow_missing or cohort.allow_missing:
            out["missing"] = [";".join(cohort.missing_inputs(c)) for c in ids]
        return out

    def forward_batches(
        self, cohort: Cohort, ids: Sequence[str], k: int, batch_size: int, segments: int | str | None = None
    ) -> Iterator[tuple[list[str], SurvivalOutput]]:
        """``(case ids, output)`` of fold ``k``'s model over ``ids`` in batches, bags sorted by
        size to limit padding (the batched model gives each patient what it gives alone)."""
        store = self.bag_store(cohort)
        order = sorted(ids, key=store.size) if store is not None else list(ids)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            yield batch, self.forward(self.inputs(cohort, batch, k), k, segments=segments)

    def _predict_fold(self, cohort, ids, k, batch_size, segments) -> pd.DataFrame:
        risks, stds, survs, names = [], [], [], []
        for batch, out in self.forward_batches(cohort, ids, k, batch_size, segments):
            names += batch
            risks.append(out.risk.numpy())
            stds.append(out.risk_std.numpy() if out.risk_std is not None else np.zeros(len(batch)))
            survs.append(out.survival.numpy())
        frame = pd.DataFrame(
            {"case_id": names, "fold": k, "risk": np.concatenate(risks), "risk_std": np.concatenate(stds)}
        )
        surv = np.concatenate(survs)
        for j, col in enumerate(surv_column_names(surv.shape[1])):
            frame[col] = surv[:, j]
        return frame

    def predict_patient(
        self,
        cohort: Cohort,
        case_id: str,
        fold: int | None = None,
        *,
        drop: str | None = None,
        return_attention: bool = True,
    ) -> tuple[SurvivalOutput, PatientInputs]:
        """Full output for one patient (features, gates, per-s risks, attention).

        ``fold`` defaults to the fold that held the patient out (else fold 0). ``drop``
        ("m1" or "wsi") replaces that modality by a neutral input for a what-if. Without
        genomics (DeReF): every family token at the mean token of the fold's training
        patients, the IG baseline of ``deref.explain`` (the all-zero standardized profile
        is no neutral point: a trained SNN maps it to near-zero tokens, which the token
        encoder's LayerNorm blows up); other models get the training-mean profile (zeros
        after standardization). Without the slide: a one-patch bag holding the training
        fold's mean patch embedding.
        """
        k = self.fold_for(case_id, fold)
        inputs = self.inputs(cohort, [case_id], k)
        tokens = None
        if drop == "m1" and self.config.model_type == "deref":
            tokens = self.family_token_baseline(k, cohort).unsqueeze(0)
        elif drop == "m1":
            inputs.m1 = [torch.zeros_like(x) for x in inputs.m1]
        elif drop == "wsi":
            mean = self.fold(k).wsi_mean
            if mean is None or inputs.wsi is None:
                raise ConfigError("this run stores no mean patch embedding; cannot drop the slide")
            inputs.wsi = torch.from_numpy(mean).view(1, 1, -1).clone()
            inputs.mask = torch.ones(1, 1, dtype=torch.bool)
        elif drop is not None:
            raise ConfigError(f"drop={drop!r}; expected 'm1', 'wsi' or None")
        out = self.forward(
            inputs,
            k,
            return_attention=return_attention and self.needs_wsi and drop != "wsi",
            m1_tokens=tokens,
        )
        return out, inputs


def _recalibrated(out: SurvivalOutput, recal: Recalibration) -> SurvivalOutput:
    """``out`` with its curves passed through the fold's hazard map (the risk unchanged)."""
    hazards = recal.apply_hazards(hazards_from_survival(out.survival.numpy()))
    survival = survival_from_hazards(hazards)
    vals = {name: getattr(out, name) for name in out.__dataclass_fields__}
    vals["hazards"] = torch.from_numpy(hazards).float()
    vals["survival"] = torch.from_numpy(survival).float()
    vals["logits"] = torch.logit(vals["hazards"], eps=1e-7)
    if out.survival_per_s is not None:
        vals["survival_per_s"] = torch.from_numpy(recal.apply_survival(out.survival_per_s.numpy())).float()
    return SurvivalOutput(**vals)


def _to_cpu_float(out: SurvivalOutput) -> SurvivalOutput:
    return out._map(lambda t: t.detach().float().cpu())
