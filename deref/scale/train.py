"""``deref train|ablate --ray``: the folds of a run (and the variants of a grid) as Ray tasks.

Each task builds its own :class:`deref.training.CohortTrainer` from the cohort, the model and
training configurations, and trains one fold with the fold's own seed (``seed + k``), exactly
as the sequential loop does, so the run's predictions are the same (to the last bits that a
different thread count can change). A fold's task writes its checkpoint and its result
(``fold_<k>/fold_result.json``) into the run folder itself: a resumed run or grid keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deref.scale import RayOptions, connect, gather, worker_count, worker_died

log = logging.getLogger(__name__)


def _train_fold_task(cohort, model_config, train_config, fold, fold_dir: str, threads: int):
    import torch

    from deref.training import CohortTrainer

    torch.set_num_threads(threads)
    trainer = CohortTrainer(cohort, model_config, train_config)
    result = trainer.train_fold(fold, Path(fold_dir))
    log.info("fold %d trained in %.1f s", fold.index, result.info.seconds)
    return result


class RayFoldRunner:
    """A :data:`deref.training.FoldRunner` that trains the folds as Ray tasks (one GPU each when
    the cluster has GPUs, else ``cpus_per_worker`` CPUs). The cohort is put in the object store
    once per runner and cohort."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        self._cohort_refs: dict[int, Any] = {}

    def __call__(self, trainer, jobs: Sequence[tuple[Any, Path]]) -> list:
        ray = connect(self.options.address)
        if not jobs:
            return []
        _, gpus = worker_count(ray, self.options, len(jobs))
        task = ray.remote(
            num_cpus=self.options.cpus_per_worker, num_gpus=gpus, max_retries=self.options.max_retries
        )(_train_fold_task)
        key = id(trainer.cohort)
        if key not in self._cohort_refs:
            self._cohort_refs[key] = ray.put(trainer.cohort)
        threads = max(1, int(self.options.cpus_per_worker))
        refs = {
            task.remote(
                self._cohort_refs[key],
                trainer.model_config,
                trainer.cfg,
                fold,
                str(Path(d).resolve()),
                threads,
            ): i
            for i, (fold, d) in enumerate(jobs)
        }
        results: list = [None] * len(jobs)
        errors: list[tuple[int, BaseException]] = []

        def done(i: int, r) -> None:
            results[i] = r
            if trainer.progress is not None:
                trainer.progress("folds", sum(x is not None for x in results), len(jobs))

        gather(ray, refs, done, lambda i, exc: errors.append((i, exc)))
        if errors:  # every other fold has finished and is kept for a resumed run
            i, exc = min(errors, key=lambda e: e[0])
            fold = jobs[i][0]
            if worker_died(exc):
                raise RuntimeError(
                    f"fold {fold.index}: its Ray worker was lost {self.options.max_retries + 1} time(s): {exc}"
                ) from exc
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc)
        return results
