"""Run directories and checkpoints: weights in safetensors, everything else in JSON/CSV.

Layout of a run directory (``RUN/``)::

    run.json                 format, name, created, package version, model config, training
                             config, data provenance (table, signatures/families, bag folder,
                             fingerprints, modality-1 columns), folds (bins, metrics, history),
                             cohort-level metrics (headline = fixed last epoch)
    fold_<k>/model.safetensors   weights of fold k (never pickled)
    fold_<k>/preprocessing.json  bins, genomic standardizer, columns, WSI mean patch (fold k's
                                 training patients only)
    splits/splits_<k>.csv    the folds used, in MCAT's layout
    predictions.csv          out-of-fold predictions: case_id, fold, time, censorship, event,
                             risk, risk_std, surv_0..surv_{K-1}
    train_risks.csv          each fold model's risks on its own training patients
                             (fold, case_id, risk): cutoffs for risk groups come from these

Loading never unpickles: weights through ``safetensors``, the rest JSON and CSV.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deref import __version__
from deref.data.preprocess import Preprocessing
from deref.errors import CheckpointError, ConfigError
from deref.fileio import file_sha256
from deref.model import build_model
from deref.runs.info import RUN_FORMAT, RunInfo

if TYPE_CHECKING:  # torch and safetensors load with the weights: run.json and the CSVs need neither
    import torch


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _finite_or_none(float(obj))
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON stays strict."""
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary name + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def save_checkpoint(
    fold_dir: Path, model: torch.nn.Module, preprocessing: Preprocessing, extra: dict | None = None
) -> str:
    """Write ``model.safetensors`` and ``preprocessing.json`` of one fold (atomically); returns
    the weights' SHA-256, which run.json records (``FoldInfo.weights_sha256``) and loading checks."""
    from safetensors.torch import save_file

    fold_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = fold_dir / f".model.safetensors.tmp-{os.getpid()}"
    save_file(state, str(tmp), metadata={"format": RUN_FORMAT, "package_version": __version__})
    os.replace(tmp, fold_dir / "model.safetensors")
    payload = preprocessing.to_dict()
    if extra:
        payload.update(extra)
    write_json(fold_dir / "preprocessing.json", payload)
    return file_sha256(fold_dir / "model.safetensors")


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load safetensors weights strictly, naming any missing, unexpected or misshapen tensor."""
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a corrupt file
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit this model config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it saved with another configuration?"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(v.shape)}; the config expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model


RUN_INFO_FILE = "run.json"


def write_run_info(run_dir: str | os.PathLike, info: RunInfo) -> Path:
    """Write a run's ``run.json`` (atomically) from its typed :class:`RunInfo`."""
    path = Path(run_dir) / RUN_INFO_FILE
    write_json(path, info.to_dict())
    return path


@dataclass
class FoldCheckpoint:
    """One fold's model and preprocessing, loaded."""

    index: int
    model: torch.nn.Module
    preprocessing: Preprocessing
    wsi_mean: np.ndarray | None


class RunDir:
    """A run directory on disk (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: run directory not found")
        self.info: RunInfo = RunInfo.from_dict(
            read_json(self.path / RUN_INFO_FILE), str(self.path / RUN_INFO_FILE)
        )
        if not self.info.name:
            self.info = dataclasses.replace(self.info, name=self.path.name)

    @property
    def config(self):
        """The run's :class:`~deref.model.ModelConfig`."""
        return self.info.model

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fold_indices(self) -> list[int]:
        return self.info.fold_indices

    def has_file(self, name: str) -> bool:
        return (self.path / name).is_file()

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold_{k}"

    def _check_digest(self, k: int, weights: Path) -> None:
        """The weights are the ones training wrote: their SHA-256 equals run.json's record (runs
        written before it was recorded are not checked). A swapped, tampered or truncated file is
        refused, naming it: safetensors executes no code, but a silently replaced model is wrong."""
        expected = next((f.weights_sha256 for f in self.info.folds if f.index == k), None)
        if expected is None:
            return
        if not weights.is_file():
            raise CheckpointError(f"{weights}: weights file missing")
        actual = file_sha256(weights)
        if actual != expected:
            raise CheckpointError(
                f"{weights}: SHA-256 {actual[:16]}… differs from the {expected[:16]}… run.json recorded when "
                "training wrote it (the file was replaced, edited or truncated); refusing to load it"
            )

    def load_fold(self, k: int, device: str | torch.device = "cpu") -> FoldCheckpoint:
        if k not in self.fold_indices:
            raise CheckpointError(f"{self.path}: no fold {k}; folds are {self.fold_indices}")
        pre_json = read_json(self.fold_dir(k) / "preprocessing.json")
        try:
            pre = Preprocessing.from_dict(pre_json)
        except ConfigError as exc:
            raise CheckpointError(f"{self.fold_dir(k) / 'preprocessing.json'}: {exc}") from exc
        cfg = self.config
        if cfg.model_type != "snn" and tuple(pre.m1_sizes) != tuple(cfg.m1_sizes):
            raise CheckpointError(
                f"{self.fold_dir(k)}: preprocessing has group sizes {pre.m1_sizes}; the model config expects {cfg.m1_sizes}"
            )
        model = build_model(cfg)
        weights = self.fold_dir(k) / "model.safetensors"
        self._check_digest(k, weights)
        load_weights(model, weights)
        model.to(device).eval()
        mean = pre_json.get("wsi_mean")
        return FoldCheckpoint(k, model, pre, None if mean is None else np.asarray(mean, dtype=np.float32))

    def read_csv(self, name: str):
        import pandas as pd

        path = self.path / name
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (was the run finished?)")
        try:
            return pd.read_csv(path, dtype={"case_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: cannot be read as CSV ({exc})") from exc

    def predictions(self):
        return self.read_csv("predictions.csv")

    def train_risks(self):
        return self.read_csv("train_risks.csv")
