"""``deref precompute RUN --ray``: every patient's dashboard results, spread over a Ray cluster.

A pool of actors, each loading the run (its predictor, cohort and slides) once, computes
patients one call at a time with :func:`deref.explain.precompute.precompute_patient`, which
writes into the run's explanation cache (atomic files, so two workers never corrupt an entry).
A worker that dies has its patient redone by a fresh actor, as in extraction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from deref.prepare import ManifestRow
from deref.scale import RayOptions, connect, worker_count
from deref.scale.prepare import run_on_pool


class PrecomputeWorker:
    """One worker (a Ray actor): the run's context once, then one patient per call."""

    def __init__(self, run_dir: str, table, bags, slide_dir, settings, threads: int) -> None:
        import torch

        from deref.explain.precompute import precompute_context

        torch.set_num_threads(threads)
        self.settings = settings
        self.predictor, self.cohort, self.slide_dir = precompute_context(run_dir, table, bags, slide_dir)

    def pid(self) -> int:
        return os.getpid()

    def run(self, case_id: str) -> ManifestRow:
        from deref.explain.precompute import precompute_patient

        return precompute_patient(
            self.predictor, self.cohort, case_id, self.settings, slide_dir=self.slide_dir
        )


def precompute_ray(
    run_dir: str | os.PathLike,
    case_ids: Sequence[str],
    settings,
    options: RayOptions,
    *,
    table: str | None = None,
    bags: str | None = None,
    slide_dir: str | None = None,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """:func:`deref.explain.precompute.precompute_run` over a pool of :class:`PrecomputeWorker`
    actors; one row per patient, in order."""
    ray = connect(options.address)
    if not case_ids:
        return []
    n, gpus = worker_count(ray, options, len(case_ids))
    cls = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=gpus, max_restarts=0)(PrecomputeWorker)
    threads = max(1, int(options.cpus_per_worker))
    args = (
        str(Path(run_dir).resolve()),
        _abs(table),
        _abs(bags),
        _abs(slide_dir),
        settings,
        threads,
    )

    def new_actor():
        a = cls.remote(*args)
        return a, a.pid.remote()

    return run_on_pool(ray, new_actor, n, list(case_ids), lambda a, c: a.run.remote(c), options, on_result)


def _abs(path) -> str | None:
    return None if path is None else str(Path(path).resolve())
