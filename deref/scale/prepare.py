"""``deref tile|extract|mri --ray``: the preparation pipeline spread over a Ray cluster.

Each slide (MRI patient) runs where a worker is free, through the very functions the sequential
commands call (:func:`deref.prepare.tile.tile_one`, the extraction loop, :func:`process_cases`),
so the files are the same, byte for byte, given the same thread count. A worker writes its
outputs itself (atomic renames in the shared output folder); the driver returns the manifest
rows in input order.

Faults: a bad slide is a ``failed`` row, as without Ray. A worker that dies in the middle of a
slide (killed, out of memory, node lost) leaves at most a temporary file, which the next attempt
removes; the slide is redone on another worker up to ``max_retries`` times, then reported
``failed`` with the reason, and the other slides finish either way.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deref.errors import DataError, one_line
from deref.prepare import ManifestRow
from deref.scale import RayOptions, connect, gather, sweep_partial, worker_count, worker_died

log = logging.getLogger(__name__)


def _lost_row(item: str, attempts: int, exc: BaseException) -> ManifestRow:
    return ManifestRow(
        item,
        "failed",
        0,
        0.0,
        f"{item}: its worker was lost {attempts} time(s) ({type(exc).__name__}: {one_line(exc)[:200]})",
    )


# --------------------------------------------------------------------------------------------
# tiling: one task per slide
# --------------------------------------------------------------------------------------------
def _tile_task(slide: str, out_dir: str, config, overwrite: bool) -> ManifestRow:
    from deref.prepare.discover import slide_stem
    from deref.prepare.tile import QC_DIR, tile_one

    stem = slide_stem(slide)
    sweep_partial(
        [Path(out_dir) / "patches", Path(out_dir) / QC_DIR],
        [f"{stem}.h5", f"{stem}_thumbnail.png", f"{stem}_mask.png"],
    )
    return tile_one(slide, out_dir, config, overwrite)


def tile_slides_ray(
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config,
    options: RayOptions,
    *,
    overwrite: bool = False,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """:func:`deref.prepare.tile.tile_slides` with one Ray task per slide."""
    ray = connect(options.address)
    task = ray.remote(num_cpus=options.cpus_per_worker, max_retries=options.max_retries)(_tile_task)
    out = str(Path(out_dir).resolve())
    refs = {task.remote(str(Path(s).resolve()), out, config, overwrite): i for i, s in enumerate(slides)}
    return _collect(ray, refs, [str(s) for s in slides], options.max_retries + 1, on_result)


def _collect(
    ray,
    refs,
    items: list[str],
    attempts: int,
    on_result,
    rows: dict[int, ManifestRow] | None = None,
    prefix: str = "",
) -> list[ManifestRow]:
    """Rows of the tasks ``refs`` (ref -> item index) in item order; ``rows`` holds the items
    decided before anything ran; ``prefix`` starts an error's item name (``"patient "``)."""
    rows = {} if rows is None else rows

    def done(i: int, row: ManifestRow) -> None:
        rows[i] = row
        if on_result:
            on_result(row)

    def error(i: int, exc: BaseException) -> None:
        rows[i] = (
            _lost_row(items[i], attempts, exc)
            if worker_died(exc)
            else ManifestRow(
                items[i], "failed", 0, 0.0, f"{prefix}{items[i]}: {type(exc).__name__}: {one_line(exc)}"
            )
        )
        if on_result:
            on_result(rows[i])

    gather(ray, refs, done, error)
    return [rows[i] for i in range(len(items))]


# --------------------------------------------------------------------------------------------
# extraction: a pool of actors, each holding the backbone
# --------------------------------------------------------------------------------------------
class ExtractWorker:
    """One extraction worker (a Ray actor): builds the backbone once and extracts one slide per
    call, reading its patches with OpenSlide in its own process."""

    def __init__(
        self, backbone: str, weights: str | None, random_weights: bool, config, threads: int
    ) -> None:
        import torch

        from deref.prepare.backbones import build_backbone
        from deref.prepare.extract import resolve_device

        torch.set_num_threads(max(1, int(config.threads or threads)))
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = build_backbone(backbone, weights, random_weights=random_weights).to(self.device)

    def pid(self) -> int:
        return os.getpid()

    def extract(self, patch_file: str, out_dir: str) -> ManifestRow:
        from deref.prepare.extract import _extract_all

        stem = Path(patch_file).stem
        sweep_partial([out_dir], [f"{stem}.h5"])
        return _extract_all([patch_file], out_dir, self.model, self.config, self.device, None, None, None)[0]


def extract_slides_ray(
    patch_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    backbone: str,
    weights: str | None,
    config,
    options: RayOptions,
    *,
    random_weights: bool = False,
    on_result: Callable[[ManifestRow], None] | None = None,
    on_dispatch: Callable[[str, int], None] | None = None,
) -> list[ManifestRow]:
    """Extract every patch file on a pool of :class:`ExtractWorker` actors; one row each, in order.

    ``on_dispatch(patch_file, worker_pid)`` is called when a slide is handed to a worker.
    A worker that dies is replaced by a new actor and its slide goes back to the queue.
    """
    ray = connect(options.address)
    files = [str(Path(p).resolve()) for p in patch_files]
    out = str(Path(out_dir).resolve())
    Path(out).mkdir(parents=True, exist_ok=True)
    if not files:
        return []
    n, gpus = worker_count(ray, options, len(files))
    actor_cls = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=gpus, max_restarts=0)(ExtractWorker)
    threads = max(1, int(options.cpus_per_worker))

    def new_actor():
        a = actor_cls.remote(backbone, weights, random_weights, config, threads)
        return a, a.pid.remote()

    return run_on_pool(
        ray, new_actor, n, files, lambda a, f: a.extract.remote(f, out), options, on_result, on_dispatch
    )


def run_on_pool(
    ray,
    factory: Callable[[], tuple[Any, Any]],
    n: int,
    items: list[str],
    call: Callable[[Any, str], Any],
    options: RayOptions,
    on_result: Callable[[ManifestRow], None] | None = None,
    on_dispatch: Callable[[str, int], None] | None = None,
) -> list[ManifestRow]:
    """Run ``call(actor, item)`` (an actor method returning a :class:`ManifestRow`) for every item
    on ``n`` actors made by ``factory() -> (actor, pid ref)``; rows in item order.

    An item whose actor died goes back to the front of the queue (a fresh actor replaces the dead
    one) until it has had ``options.max_retries + 1`` attempts; then it is a ``failed`` row.
    """
    pool = _ActorPool(ray, factory, n)
    rows: dict[int, ManifestRow] = {}
    attempts = [0] * len(items)
    queue = deque(range(len(items)))
    inflight: dict[Any, tuple[Any, int]] = {}

    def finish(i: int, row: ManifestRow) -> None:
        rows[i] = row
        if on_result:
            on_result(row)

    try:
        while queue or inflight:
            while queue and pool.idle:
                actor, pid = pool.take()
                i = queue.popleft()
                attempts[i] += 1
                inflight[call(actor, items[i])] = (actor, i)
                if on_dispatch:
                    on_dispatch(items[i], pid)
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                actor, i = inflight.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker, or a failure outside the item
                    if not worker_died(exc):
                        pool.give_back(actor)
                        finish(
                            i,
                            ManifestRow(
                                items[i],
                                "failed",
                                0,
                                0.0,
                                f"{items[i]}: {type(exc).__name__}: {one_line(exc)}",
                            ),
                        )
                        continue
                    pool.replace(actor)
                    if attempts[i] <= options.max_retries:
                        log.warning(
                            "%s: worker lost (%s); redoing it on another worker",
                            items[i],
                            one_line(exc)[:120],
                        )
                        queue.appendleft(i)
                    else:
                        finish(i, _lost_row(items[i], attempts[i], exc))
                    continue
                pool.give_back(actor)
                finish(i, row)
    finally:
        pool.close()
    return [rows[i] for i in range(len(items))]


class _ActorPool:
    """Idle actors (with their pids); a dead actor is replaced by a fresh one."""

    def __init__(self, ray, factory, n: int) -> None:
        self.ray, self.factory = ray, factory
        self.all = [factory() for _ in range(n)]
        self.pids = {id(a): p for a, p in self.all}
        self.idle = [a for a, _ in self.all]

    def take(self):
        actor = self.idle.pop(0)
        pid = self.pids[id(actor)]
        if not isinstance(pid, int):
            try:
                pid = self.pids[id(actor)] = self.ray.get(pid)
            except Exception as exc:  # noqa: BLE001 - its constructor failed: every worker would
                self.close()
                raise DataError(f"a Ray worker could not start: {one_line(exc)[:600]}") from exc
        return actor, pid

    def give_back(self, actor) -> None:
        self.idle.append(actor)

    def replace(self, actor) -> None:
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        fresh, pid = self.factory()
        self.pids[id(fresh)] = pid
        self.all.append((fresh, pid))
        self.idle.append(fresh)

    def close(self) -> None:
        for a, _ in self.all:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------------------------
# MRI: one task per patient; the backbone is built once per worker process
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _mri_backbone(in_ch: int, weights: str | None, random_weights: bool):
    from deref.prepare.extract import resolve_device
    from deref.prepare.mri import build_mri_backbone

    return build_mri_backbone(in_ch, weights, random_weights=random_weights).to(resolve_device("auto"))


def _mri_task(
    case, out_dir: str, backbone: tuple | None, config, save_crops: bool, threads: int
) -> ManifestRow:
    import torch

    from deref.prepare.mri import process_cases

    torch.set_num_threads(threads)
    sweep_partial([out_dir, Path(out_dir) / "crops"], [f"{case.patient}.h5", case.patient])
    model = None if backbone is None else _mri_backbone(*backbone)
    return process_cases([case], out_dir, model, config, save_crops=save_crops)[0]


def process_cases_ray(
    cases: Sequence,
    out_dir: str | os.PathLike,
    backbone: tuple[int, str | None, bool] | None,
    config,
    options: RayOptions,
    *,
    save_crops: bool = False,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """:func:`deref.prepare.mri.process_cases` with one Ray task per patient. ``backbone`` is
    ``(in_channels, weights, random_weights)`` (built once per worker process), or None for
    ``--cubes``."""
    ray = connect(options.address)
    out = str(Path(out_dir).resolve())
    _, gpus = worker_count(ray, options, max(1, len(cases)))
    task = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=gpus, max_retries=options.max_retries)(
        _mri_task
    )
    threads = max(1, int(options.cpus_per_worker))
    rows: dict[int, ManifestRow] = {}
    refs: dict[Any, int] = {}
    seen: set[str] = set()
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        if case.patient in seen:  # the sequential loop's check, kept before anything runs
            rows[i] = ManifestRow(
                case.patient, "failed", 0, 0.0, one_line(DataError(f"patient {case.patient} listed twice"))
            )
            continue
        seen.add(case.patient)
        refs[task.remote(case, out, backbone, config, save_crops, threads)] = i
    items = [c.patient for c in cases]
    out_rows = _collect(ray, refs, items, options.max_retries + 1, on_result, rows, "patient ")
    log.info("%d patients on Ray in %.1f s", len(cases), time.perf_counter() - t0)
    return out_rows
