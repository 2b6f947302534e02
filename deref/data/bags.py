"""WSI bags on disk: CLAM-layout ``.h5`` (``features`` N x D, ``coords`` N x 2, attrs) and ``.pt``.

Writers are atomic: a file is written under a temporary name in the same folder and renamed
when complete, so a killed process never leaves a half-written bag that looks finished.

Readers check at the boundary (missing or corrupt file, no features, empty bag, NaN/Inf,
wrong width, coords shape) and raise :class:`~deref.errors.DataError` naming the file.
``.pt`` files are loaded with ``torch.load(weights_only=True)`` so that a file cannot run code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deref.errors import DataError


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


# --------------------------------------------------------------------------- reading
#: Whole-slide image file suffixes stripped from a slide id to name its bag.
WSI_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".czi",
    ".dcm",
    ".svslide",
    ".qptiff",
    ".isyntax",
    ".h5",
    ".pt",
)
BAG_SUFFIXES: tuple[str, ...] = (".h5", ".pt")
_CHUNK_ROWS = 8192


@dataclass
class Bag:
    """A bag of patch embeddings of one slide (or of all slides of one patient).

    Attributes
    ----------
    features
        ``(N, D)`` float32 patch embeddings.
    coords
        ``(N, 2)`` int64 level-0 pixel coordinates (x, y) of each patch's top-left corner,
        or None when the file has none.
    attrs
        File and ``coords`` attributes (patch_size, patch_level, ...), as plain Python
        values. For a patient's concatenated bag: the attributes shared by all its slides,
        plus ``per_slide`` (one dict per slide).
    path
        The file read, or None for a concatenated bag (see ``paths``).
    slide_index
        ``(N,)`` int64 index into ``slide_ids`` of the slide each patch comes from; None for
        a single-slide bag.
    slide_ids
        Slide ids of a concatenated bag, in order; None for a single-slide bag.
    paths
        Files of a concatenated bag, in order.
    """

    features: np.ndarray
    coords: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    slide_index: np.ndarray | None = None
    slide_ids: list[str] | None = None
    paths: list[Path] | None = None

    @property
    def n(self) -> int:
        """Number of patches ``N``."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width ``D``."""
        return int(self.features.shape[1])


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise DataError(
                    f"{path}: no 'features' dataset (found {sorted(f.keys())}); expected a CLAM bag "
                    "with 'features' (N x D) and optionally 'coords' (N x 2)"
                )
            if not isinstance(f["features"], h5py.Dataset):
                raise DataError(f"{path}: 'features' is a group; expected an N x D dataset")
            features = f["features"][()]
            coords = None
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            if "coords" in f and isinstance(f["coords"], h5py.Dataset):
                coords = f["coords"][()]
                attrs.update({k: _plain(v) for k, v in f["coords"].attrs.items()})
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: unreadable or corrupt HDF5 bag ({exc})") from exc
    return features, coords, attrs


def _to_numpy(value: Any, path: Path, name: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"{path}: '{name}' is a {type(value).__name__}; expected a tensor")


def _read_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # weights_only: tensors and plain containers only; a pickle that would run code
            # is refused before anything in it is executed.
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: refused to load: the file is not a plain tensor file (it would need to "
            f"unpickle arbitrary objects: {first[:200]}); expected a tensor N x D or a dict "
            "with 'features'"
        ) from exc
    except Exception as exc:  # torch raises many types for corrupt files
        raise DataError(f"{path}: unreadable or corrupt .pt bag ({type(exc).__name__}: {exc})") from exc
    attrs: dict[str, Any] = {}
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise DataError(
                f"{path}: dict without 'features' (keys {sorted(map(str, obj))}); expected "
                "{'features': N x D tensor, 'coords': N x 2 tensor (optional)}"
            )
        features = _to_numpy(obj["features"], path, "features")
        if obj.get("coords") is not None:
            coords = _to_numpy(obj["coords"], path, "coords")
        for k, v in obj.items():
            if k not in ("features", "coords") and isinstance(v, (int, float, str, bool)):
                attrs[str(k)] = v
    else:
        features = _to_numpy(obj, path, "features")
    return features, coords, attrs


def _count_nonfinite_rows(features: np.ndarray) -> int:
    if features.dtype.kind != "f":
        return 0
    bad = 0
    for start in range(0, features.shape[0], _CHUNK_ROWS):
        chunk = features[start : start + _CHUNK_ROWS]
        bad += int((~np.isfinite(chunk)).any(axis=1).sum())
    return bad


def read_bag(path: str | os.PathLike, expected_dim: int | None = None) -> Bag:
    """Read and check one WSI bag.

    Parameters
    ----------
    path
        A CLAM ``.h5`` (datasets ``features`` (N, D) and optionally ``coords`` (N, 2);
        attributes on the file and/or on ``coords``) or a ``.pt`` file (a tensor (N, D) or a
        dict with ``features`` and optionally ``coords``). ``.pt`` files are loaded with
        ``torch.load(weights_only=True)``: a pickle that would run code is refused.
    expected_dim
        When given, ``D`` must equal it.

    Returns
    -------
    Bag
        ``features`` as float32 (N, D), ``coords`` as int64 (N, 2) or None.

    Raises
    ------
    DataError
        Missing file, unknown suffix, unreadable or corrupt file, no ``features``, features
        not 2-D, an empty bag (N = 0), NaN/Inf features (with the number of rows), ``D``
        different from ``expected_dim``, ``coords`` not of shape (N, 2).
    """
    path = Path(path)
    features, coords, attrs = _read_arrays(path)
    features = _checked_features(features, path, expected_dim)
    if coords is not None:
        coords = _checked_coords(coords, features.shape[0], path)
    return Bag(features=features, coords=coords, attrs=attrs, path=path)


def _read_arrays(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(features, coords or None, attrs)`` of a ``.h5`` or ``.pt`` bag, unchecked."""
    if not path.exists():
        raise DataError(f"{path}: bag file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file; expected a .h5 or .pt bag")
    suffix = path.suffix.lower()
    if suffix == ".h5":
        return _read_h5(path)
    if suffix == ".pt":
        return _read_pt(path)
    raise DataError(f"{path}: unknown bag format {suffix!r}; expected .h5 or .pt")


def _checked_features(features: Any, path: Path, expected_dim: int | None) -> np.ndarray:
    """``(N, D)`` float32 features: 2-D (a ``(1, N, D)`` batch of one is unwrapped), numeric,
    at least one patch, ``D == expected_dim`` when given, every value finite."""
    features = np.asarray(features)
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 2:
        raise DataError(f"{path}: features have shape {tuple(features.shape)}; expected N x D")
    if features.dtype.kind not in "fiu":
        raise DataError(f"{path}: features have dtype {features.dtype}; expected floating point")
    n, d = features.shape
    if n == 0:
        raise DataError(f"{path}: empty bag (0 patches); expected at least one patch")
    if expected_dim is not None and d != int(expected_dim):
        raise DataError(
            f"{path}: features are {d}-dimensional; expected {int(expected_dim)} "
            "(the feature extractor's width the model was built for)"
        )
    bad_rows = _count_nonfinite_rows(features)
    if bad_rows:
        raise DataError(
            f"{path}: {bad_rows} of {n} patch(es) have NaN or Inf features; expected finite values"
        )
    return np.ascontiguousarray(features, dtype=np.float32)


def _checked_coords(coords: Any, n: int, path: Path) -> np.ndarray:
    """``(N, 2)`` int64 coords (a ``(1, N, 2)`` batch of one is unwrapped)."""
    coords = np.asarray(coords)
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if coords.shape != (n, 2):
        raise DataError(
            f"{path}: coords have shape {tuple(coords.shape)}; expected ({n}, 2) to match {n} patches"
        )
    return np.ascontiguousarray(coords, dtype=np.int64)


def bag_stem(slide_id: str) -> str:
    """The bag file stem of a slide id: the id without a whole-slide image suffix (``.svs``, ...).

    Only known suffixes are removed (TCGA ids hold dots: ``TCGA-..-DX1.8F9F...svs``).
    """
    stem = str(slide_id).strip()
    low = stem.lower()
    for s in WSI_SUFFIXES:
        if low.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)]
    return stem


def bag_candidates(slide_id: str, bag_dir: str | os.PathLike) -> list[Path]:
    """Paths searched for a slide's bag, in order.

    ``<bag_dir>/<stem>.h5``, ``<bag_dir>/<stem>.pt``, then CLAM's feature-extraction layout
    ``<bag_dir>/h5_files/<stem>.h5`` and ``<bag_dir>/pt_files/<stem>.pt`` when those folders
    exist.
    """
    bag_dir = Path(bag_dir)
    stem = bag_stem(slide_id)
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        raise DataError(
            f"slide id {slide_id!r} is not a plain file name; expected no path separators or '..'"
        )
    out = [bag_dir / f"{stem}.h5", bag_dir / f"{stem}.pt"]
    for sub, ext in (("h5_files", ".h5"), ("pt_files", ".pt")):
        if (bag_dir / sub).is_dir():
            out.append(bag_dir / sub / f"{stem}{ext}")
    return out


def find_bag(slide_id: str, bag_dir: str | os.PathLike) -> Path:
    """The bag file of a slide (see :func:`bag_candidates` for the search order).

    Raises
    ------
    DataError
        No candidate exists (the message names every candidate), or ``slide_id`` holds a path.
    """
    candidates = bag_candidates(slide_id, bag_dir)
    for p in candidates:
        if p.is_file():
            return p
    raise DataError(f"slide {slide_id}: no bag file; looked for " + " and ".join(str(p) for p in candidates))


def load_patient_bag(
    slide_ids: Sequence[str], bag_dir: str | os.PathLike, expected_dim: int | None = None
) -> Bag:
    """Read the bags of a patient's slides and concatenate them into one bag.

    Parameters
    ----------
    slide_ids
        The patient's slides (at least one), in order.
    bag_dir
        Folder of bags (see :func:`find_bag`).
    expected_dim
        When given, every bag's ``D`` must equal it; otherwise all must equal the first's.

    Returns
    -------
    Bag
        ``features`` (sum N_i, D); ``coords`` concatenated (None unless every slide has
        coords); ``slide_index`` (sum N_i,) telling which slide each patch comes from;
        ``slide_ids`` and ``paths``.
    """
    if not slide_ids:
        raise DataError(f"no slide given; expected at least one slide id to read from {bag_dir}")
    bags = []
    dim = expected_dim
    for s in slide_ids:
        bag = read_bag(find_bag(s, bag_dir), dim)
        dim = bag.dim if dim is None else dim
        bags.append(bag)
    features = np.concatenate([b.features for b in bags]) if len(bags) > 1 else bags[0].features
    coords = None
    if all(b.coords is not None for b in bags):
        coords = np.concatenate([b.coords for b in bags]) if len(bags) > 1 else bags[0].coords
    slide_index = np.concatenate([np.full(b.n, i, dtype=np.int64) for i, b in enumerate(bags)])
    common = dict(bags[0].attrs)
    for b in bags[1:]:
        common = {k: v for k, v in common.items() if k in b.attrs and b.attrs[k] == v}
    common["per_slide"] = [b.attrs for b in bags]
    return Bag(
        features=features,
        coords=coords,
        attrs=common,
        path=bags[0].path if len(bags) == 1 else None,
        slide_index=slide_index,
        slide_ids=[str(s) for s in slide_ids],
        paths=[b.path for b in bags],
    )


def peek_bag_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(N, D)`` of a bag's features, reading only the header of an ``.h5`` file.

    ``.pt`` files are loaded entirely (they have no header). Raises DataError like
    :func:`read_bag` for missing, unreadable or feature-less files.
    """
    path = Path(path)
    if path.suffix.lower() == ".h5" and path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if "features" not in f or not isinstance(f["features"], h5py.Dataset):
                    raise DataError(f"{path}: no 'features' dataset (found {sorted(f.keys())})")
                shape = f["features"].shape
        except DataError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise DataError(f"{path}: unreadable or corrupt HDF5 bag ({exc})") from exc
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise DataError(f"{path}: features have shape {tuple(shape)}; expected N x D")
        return int(shape[0]), int(shape[1])
    bag = read_bag(path)
    return bag.n, bag.dim


__all__ = [
    "Bag",
    "BAG_SUFFIXES",
    "bag_candidates",
    "bag_stem",
    "find_bag",
    "load_patient_bag",
    "peek_bag_shape",
    "read_bag",
    "write_bag_h5",
]
