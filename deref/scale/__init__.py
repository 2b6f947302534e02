"""Scale-out on Ray: slides, MRI patients, folds and explanations as Ray tasks and actors.

The same commands run on a laptop, a multi-GPU server, a Slurm allocation or a Kubernetes
cluster (KubeRay): ``--ray auto`` connects to the Ray cluster this machine belongs to
(``RAY_ADDRESS``, or one started with ``ray start`` here) and otherwise starts a local one bound
to 127.0.0.1; ``--ray HOST:PORT`` (or ``ray://HOST:10001``) connects to that cluster.

* :mod:`deref.scale.prepare` -- ``deref tile|extract|mri --ray``: one task (tiling, MRI) or one
  actor call (extraction: the backbone loads once per actor, one actor per GPU or per CPU share)
  per slide. Workers read the slides with OpenSlide themselves and write the same atomic,
  resumable files as the sequential commands into the shared output folder; the driver only
  merges the manifest. A slide whose worker dies (node lost, out of memory, killed) is redone
  on another worker, up to ``max_retries`` times.
* :mod:`deref.scale.train` -- ``deref train|ablate --ray``: folds (and a grid's variants) as
  tasks with their own seeds, so the run equals a sequential one; finished folds are kept.
* :mod:`deref.scale.precompute` -- ``deref precompute RUN --ray``: every patient's dashboard
  results into the run's explanation cache.

Every output folder must be visible to every node at the same path (a shared file system).
Ray is imported only by these modules, and only when ``--ray`` is given: the default commands
and the dashboard never import it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deref.errors import ConfigError, one_line

log = logging.getLogger(__name__)

#: With it set to 0, a Ray started on this machine binds its services to the node address
#: given (127.0.0.1 here) instead of every interface (checked with psutil in the tests).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class RayOptions:
    """How the work is spread.

    ``address``: ``"auto"`` (this machine's cluster, else a local one) or a cluster address.
    ``workers``: concurrent workers (actors or tasks in flight; default: the cluster's GPUs when
    it has some and ``use_gpus``, else its CPUs divided by ``cpus_per_worker``).
    ``cpus_per_worker`` / ``gpus_per_worker``: the resources each worker reserves (GPUs: 1 per
    worker by default when the cluster has GPUs and ``use_gpus``). ``max_retries``: how many times
    an item whose worker died is redone elsewhere before it is reported failed.
    """

    address: str = "auto"
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    max_retries: int = 2
    use_gpus: bool = True

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--ray-workers {self.workers}: expected at least 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"--ray-cpus {self.cpus_per_worker}: expected more than 0")
        if self.max_retries < 0:
            raise ConfigError(f"--ray-retries {self.max_retries}: expected 0 or more")


def add_ray_options(p, *, what: str = "slides") -> None:
    """The ``--ray`` options of a command (argparse)."""
    g = p.add_argument_group("Ray (scale-out)")
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        metavar="ADDRESS",
        help=f"spread the {what} over a Ray cluster: auto (this machine's cluster, else a local one on "
        "127.0.0.1) or HOST:PORT / ray://HOST:10001",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        metavar="N",
        help="actors of extraction / precompute (default: the cluster's GPUs, else CPUs / --ray-cpus); "
        "tasks fill the cluster",
    )
    g.add_argument(
        "--ray-cpus", type=float, default=1.0, metavar="C", help="CPUs per worker (default: %(default)g)"
    )
    g.add_argument(
        "--ray-gpus", type=float, metavar="G", help="GPUs per worker (default: 1 when the cluster has GPUs)"
    )
    g.add_argument(
        "--ray-retries",
        type=int,
        default=2,
        metavar="N",
        help="times an item whose worker died is redone elsewhere (default: %(default)s)",
    )


def options_from_args(args) -> RayOptions | None:
    """The :class:`RayOptions` of parsed arguments, or None without ``--ray``."""
    if not getattr(args, "ray", None):
        return None
    return RayOptions(
        address=args.ray,
        workers=args.ray_workers,
        cpus_per_worker=args.ray_cpus,
        gpus_per_worker=args.ray_gpus,
        max_retries=args.ray_retries,
    )


def connect(address: str = "auto"):
    """Connect to (or start) Ray and return the ``ray`` module.

    ``auto``: ``RAY_ADDRESS`` or a cluster started on this machine with ``ray start``; without one,
    a local Ray on 127.0.0.1 only (nothing listens on other interfaces). Anything else is a cluster
    address. Already connected: kept as it is.
    """
    import sys

    if "ray" not in sys.modules:  # read when ray is imported
        os.environ.setdefault(_LOOPBACK_ENV, "0")
    import ray

    if ray.is_initialized():
        return ray
    quiet = {"configure_logging": True, "logging_level": logging.WARNING, "log_to_driver": False}
    if address != "auto":
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            hint = (
                "; the cluster uses token authentication (`ray start` turns it on): set RAY_AUTH_MODE=token "
                "(the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
                if _auth_refused(exc)
                else ""
            )
            raise ConfigError(
                f"--ray {address}: cannot connect to a Ray cluster there ({one_line(exc)}){hint}"
            ) from exc
        return ray
    try:
        ray.init(address="auto", **quiet)
        return ray
    except ConnectionError:
        pass  # no cluster on this machine: start one, bound to the loopback address
    ray.init(_node_ip_address=LOCAL_ADDRESS, include_dashboard=False, **quiet)
    log.info("started a local Ray on %s: %s", LOCAL_ADDRESS, ray.cluster_resources())
    return ray


def _auth_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the cluster wants a token we did not present."""
    e, seen = exc, 0
    while e is not None and seen < 8:
        if "InvalidAuthToken" in str(e) or type(e).__name__ == "AuthenticationError":
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def worker_count(ray, options: RayOptions, n_items: int) -> tuple[int, float]:
    """(workers, GPUs per worker) for ``n_items`` on the connected cluster."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0.0)) if options.use_gpus else 0.0
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if options.workers is not None:
        n = options.workers
    elif per_gpu > 0:
        n = max(1, int(gpus // per_gpu))
    else:
        n = max(1, int(float(res.get("CPU", 1.0)) // options.cpus_per_worker))
    return max(1, min(n, n_items)), per_gpu


def worker_died(exc: BaseException) -> bool:
    """Whether a Ray error means the worker (process or node) was lost, not that the work failed."""
    from ray import exceptions as rex

    lost = (
        rex.RayActorError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.OutOfMemoryError,
        rex.ObjectLostError,
        rex.TaskUnschedulableError,
    )
    return isinstance(exc, lost)


def gather(
    ray,
    refs: dict[Any, int],
    on_done: Callable[[int, Any], None],
    on_error: Callable[[int, BaseException], None],
) -> None:
    """Wait for every object ref of ``refs`` (ref -> item index), in completion order."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            i = refs[ref]
            try:
                value = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - reported per item by the caller
                on_error(i, exc)
            else:
                on_done(i, value)


def sweep_partial(folders: Iterable[os.PathLike | str], names: Sequence[str]) -> list[str]:
    """Remove the temporary files (``.<name>.tmp-*``) a killed worker left for the outputs
    ``names`` (exact file names) in ``folders``; returns what was removed."""
    from pathlib import Path

    starts = tuple(f".{n}.tmp-" for n in names)
    removed = []
    for folder in folders:
        d = Path(folder)
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(starts):
                try:
                    p.unlink()
                    removed.append(str(p))
                except OSError:
                    pass
    return removed
