"""On-disk cache of per-patient explanations, next to the run that made them.

Layout: ``RUN/explanations/<fold>/<case>__<method>__<hash>.npz`` (``fold_<k>`` folders). The
hash covers everything the numbers depend on:

* the fold's weights: the SHA-256 of ``model.safetensors`` (computed once per process and
  file version, i.e. per path, size and modification time), plus the fold's
  ``preprocessing.json`` and the patient's bag files (size and modification time);
* the cohort's fingerprint (its table's content), the fold, the patient;
* the method and its settings (steps, reorganization, precision, baseline, and
  ``ATTRIBUTION_VERSION`` of the attribution code).

A retrained or edited model, another table or a rewritten bag therefore gets a new name, and
stale files are never read (they stay until the folder is deleted). Files are written under
a temporary name and renamed (a killed process never leaves a half-written entry), hold only
numeric and string arrays plus one JSON string, and are read with ``allow_pickle=False``. An
unreadable entry counts as a miss. A run folder that cannot be written is not an error: the
explanation is returned uncached and a warning is logged.

``deref.explain.precompute`` keeps the dashboard's model outputs in the same fold folders
(methods ``output``, ``output-m1``, ``output-wsi``) and per-slide thumbnails and patch pixels in
``RUN/explanations/slides/`` (compressed: ``save(..., compress=True)``), under the same rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deref.fileio import file_sha256

log = logging.getLogger(__name__)

CACHE_DIR = "explanations"
_META = "__meta__"

__all__ = [
    "CACHE_DIR",
    "CacheKey",
    "ExplanationCache",
    "bag_files",
    "file_stamp",
    "safe_name",
    "weights_fingerprint",
]

_sha_lock = threading.Lock()
_sha_memo: dict[tuple[str, int, int], str] = {}


def file_stamp(path: str | os.PathLike) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file (``[path, None, None]`` when it does not exist)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return [str(p), None, None]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def weights_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, memoized per (path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        hit = _sha_memo.get(memo_key)
    if hit is not None:
        return hit
    digest = file_sha256(p)
    with _sha_lock:
        _sha_memo[memo_key] = digest
    return digest


def bag_files(cohort, case_id: str) -> list[Path]:
    """The patient's bag files (what the explanation keys stamp; a missing one is left out:
    reading the bag reports it)."""
    from deref.data.bags import find_bag
    from deref.errors import DataError

    if cohort.bag_dir is None:
        return []
    out = []
    for s in cohort.slides.get(case_id, []):
        try:
            out.append(find_bag(s, cohort.bag_dir))
        except DataError:
            continue
    return out


def safe_name(text: str) -> str:
    """A file-name-safe version of a case id (the hash keeps distinct ids distinct)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))[:80] or "_"


@dataclass(frozen=True)
class CacheKey:
    """Where one explanation lives, and the settings it was made with."""

    fold: int
    case_id: str
    method: str
    digest: str
    description: dict[str, Any]

    @property
    def filename(self) -> str:
        return f"{safe_name(self.case_id)}__{self.method}__{self.digest}.npz"


class ExplanationCache:
    """Explanations of one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.root = Path(run_dir) / CACHE_DIR

    def key(
        self,
        *,
        fold: int,
        case_id: str,
        method: str,
        settings: dict[str, Any],
        weights: str | os.PathLike,
        extra_files: Sequence[str | os.PathLike] = (),
        data_fingerprint: str | None = None,
    ) -> CacheKey:
        """The key of an explanation (hashes the weights file; see the module docstring)."""
        description = {
            "fold": int(fold),
            "case_id": str(case_id),
            "method": str(method),
            "settings": settings,
            "weights_sha256": weights_fingerprint(weights),
            "files": [file_stamp(p) for p in extra_files],
            "data": data_fingerprint,
        }
        blob = json.dumps(description, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:20]
        return CacheKey(int(fold), str(case_id), str(method), digest, description)

    def path(self, key: CacheKey) -> Path:
        return self.root / f"fold_{key.fold}" / key.filename

    def load(self, key: CacheKey) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, meta)`` stored under ``key``, or None (missing or unreadable)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name != _META}
                meta = json.loads(str(data[_META][()]))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable cached explanation %s (%s)", path, exc)
            return None
        if meta.get("__key__") != key.digest:
            return None
        return arrays, meta

    def save(
        self, key: CacheKey, arrays: dict[str, np.ndarray], meta: dict[str, Any], *, compress: bool = False
    ) -> Path | None:
        """Write atomically; returns the path, or None when the folder is not writable.

        ``compress``: zip-deflate the arrays (``np.savez_compressed``; for images such as slide
        thumbnails and patch pixels); :meth:`load` reads either."""
        path = self.path(key)
        payload = {name: np.asarray(a) for name, a in arrays.items()}
        if any(a.dtype == object for a in payload.values()):
            raise TypeError("cached arrays must be numeric or string arrays (no Python objects)")
        payload[_META] = np.array(
            json.dumps({**meta, "__key__": key.digest, "__key_description__": key.description}, default=str)
        )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                (np.savez_compressed if compress else np.savez)(f, **payload)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning(
                "cannot cache the explanation in %s (%s); continuing without the cache", path.parent, exc
            )
            return None
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("fold_*/*.npz"))
