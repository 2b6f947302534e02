"""WSI bags on disk: CLAM-layout ``.h5`` (``features`` N x D, ``coords`` N x 2, attrs) and ``.pt``.

Writers are atomic: a file is written under a temporary name in the same folder and renamed
when complete, so a killed process never leaves a half-written bag that looks finished.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def write_bag_h5(
    path: str | os.PathLike,
    features: np.ndarray | None,
    coords: np.ndarray | None,
    attrs: dict[str, Any] | None = None,
    *,
    features_dtype: str = "float32",
) -> Path:
    """Write a CLAM-layout bag atomically.

    ``features`` (N, D) is stored as ``features_dtype`` ("float32" or "float16"); ``coords``
    (N, 2) are level-0 pixel coordinates of the patches' top-left corners (stored int64).
    ``attrs`` (patch_size, patch_level, downsample, mpp, magnification, ...) are stored as
    attributes of the ``coords`` dataset, where CLAM keeps them, and of the file.
    Either array may be None (a coords-only file from tiling, say).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            if features is not None:
                f.create_dataset("features", data=np.asarray(features, dtype=features_dtype))
            if coords is not None:
                ds = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
                for k, v in (attrs or {}).items():
                    if v is not None:
                        ds.attrs[k] = v
            for k, v in (attrs or {}).items():
                if v is not None:
                    f.attrs[k] = v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
