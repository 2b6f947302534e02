"""Helpers of tests that edit a run directory on disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def record_weight_digests(run: Path, folds: tuple[int, ...] | None = None) -> None:
    """Record the SHA-256 of the folds' weights in run.json (all folds, or ``folds``), as training
    does when it writes them: for runs edited by a test, or cached before the digest existed."""
    from deref.fileio import file_sha256
    from deref.runs import RunDir, write_run_info

    info = RunDir(run).info
    new = tuple(
        dataclasses.replace(f, weights_sha256=file_sha256(run / f"fold_{f.index}" / "model.safetensors"))
        if folds is None or f.index in folds
        else f
        for f in info.folds
    )
    write_run_info(run, dataclasses.replace(info, folds=new))
