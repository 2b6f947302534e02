"""Run directories: the typed ``run.json`` (:mod:`deref.runs.info`), the directory and its
checkpoints (:mod:`deref.runs.directory`), and the one run <-> cohort <-> bags fit check
(:mod:`deref.runs.fit`).

Importing this package loads neither torch nor safetensors; they load with the weights.
"""

from deref.runs.directory import (
    FoldCheckpoint,
    RunDir,
    file_sha256,
    load_weights,
    read_json,
    save_checkpoint,
    write_json,
    write_run_info,
)
from deref.runs.info import (
    GENOMIC_ONLY_MODELS,
    RUN_FORMAT,
    CIndexSummary,
    DataInfo,
    FoldInfo,
    RunInfo,
    RunMetrics,
    time_unit_of,
)
from deref.survival import MEAN_OF_FOLDS

__all__ = [
    "GENOMIC_ONLY_MODELS",
    "MEAN_OF_FOLDS",
    "RUN_FORMAT",
    "CIndexSummary",
    "DataInfo",
    "FoldCheckpoint",
    "FoldInfo",
    "RunDir",
    "RunInfo",
    "RunMetrics",
    "file_sha256",
    "load_weights",
    "read_json",
    "save_checkpoint",
    "time_unit_of",
    "write_json",
    "write_run_info",
]
