"""Patch features: read the tiled patches of each slide, run a backbone, write a bag.

For every patch file ``<patches>/<stem>.h5`` (from :mod:`deref.prepare.tile`, or CLAM's
``create_patches_fp.py``), :func:`extract_slide` writes ``<out>/<stem>.h5`` holding
``features`` (N, dim; float32 or float16) beside the same ``coords`` and attrs, plus the
backbone's provenance (name, weights file and SHA-256, ``unusable_for_science``).

- **Reading.** A :class:`PatchDataset` is read by DataLoader worker processes; each worker
  opens the slide once (lazily, after the fork) and returns uint8 patches already resized to
  the backbone's input size, so little data crosses between processes.
- **Compute.** Batches run on CUDA when present (bf16 autocast, or fp16 where bf16 is not
  supported), else on CPU in fp32, in channels-last layout.
- **Resumable and crash-safe.** Bags are written under a temporary name and renamed when
  complete (:func:`deref.data.bags.write_bag_h5`); a slide whose bag exists and is complete
  is skipped, so rerunning a killed command finishes the job and yields the same files.
- **Sharding.** :func:`deref.prepare.discover.shard` deals the sorted slide list round-robin,
  so ``--shard K/N`` on N machines covers every slide exactly once.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deref.errors import DataError, one_line
from deref.prepare import ManifestRow
from deref.prepare.backbones import FeatureExtractor
from deref.prepare.discover import SLIDE_SUFFIXES
from deref.slides import open_slide, read_rgb

log = logging.getLogger(__name__)

MANIFEST_NAME = "extract_manifest.csv"


@dataclass(frozen=True)
class PatchSource:
    """Where the patches of one slide are, read from a patch ``.h5``.

    Patches are ``read_size`` pixels square at ``level`` from level-0 ``coords`` (N, 2).
    """

    patch_file: Path
    slide_path: Path
    coords: np.ndarray
    level: int
    read_size: int
    attrs: dict

    @property
    def stem(self) -> str:
        return self.patch_file.stem


def _find_slide(stem: str, name: str | None, recorded: str | None, slide_dir: Path | None) -> Path:
    if slide_dir is not None:
        if name and (slide_dir / name).exists():
            return slide_dir / name
        hits = sorted(p for p in slide_dir.glob(f"{stem}.*") if p.name.lower().endswith(SLIDE_SUFFIXES))
        if hits:
            return hits[0]
        raise DataError(f"slide {stem!r}: no {name or stem + '.*'} in --slides folder {slide_dir}")
    if recorded:
        p = Path(recorded)
        if p.exists():
            return p
        raise DataError(f"slide {stem!r}: recorded slide path {p} does not exist; pass --slides DIR")
    raise DataError(f"slide {stem!r}: the patch file does not record the slide's path; pass --slides DIR")


def read_patch_file(path: str | os.PathLike, slide_dir: str | os.PathLike | None = None) -> PatchSource:
    """Read coordinates and reading geometry from a patch ``.h5``.

    Files without ``read_size`` (CLAM's) are read with CLAM's meaning: ``patch_size`` pixels
    at ``patch_level``.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise DataError(f"patch file {path}: no 'coords' dataset")
            ds = f["coords"]
            coords = np.asarray(ds[:], dtype=np.int64).reshape(-1, 2)
            attrs = {**{k: f.attrs[k] for k in f.attrs}, **{k: ds.attrs[k] for k in ds.attrs}}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError variants
        raise DataError(f"patch file {path}: cannot be read: {one_line(exc)}") from exc
    if "patch_level" not in attrs or "patch_size" not in attrs:
        raise DataError(f"patch file {path}: 'coords' lacks the patch_level / patch_size attributes")
    level = int(attrs["patch_level"])
    read_size = int(attrs.get("read_size", attrs["patch_size"]))

    def text(key: str) -> str | None:
        v = attrs.get(key)
        return v.decode() if isinstance(v, bytes) else (str(v) if v is not None else None)

    slide = _find_slide(
        path.stem, text("slide_name"), text("slide_path"), Path(slide_dir) if slide_dir else None
    )
    return PatchSource(path, slide, coords, level, read_size, attrs)


class PatchDataset(torch.utils.data.Dataset):
    """Patches of one slide as (uint8 tensor (3, S, S), error message or "").

    The slide is opened on first use in each process (DataLoader workers each open their
    own handle after the fork). A read failure is returned as a message rather than raised,
    so the caller reports it as one line instead of a worker traceback.
    """

    def __init__(
        self, slide_path: str | os.PathLike, coords: np.ndarray, level: int, read_size: int, out_size: int
    ) -> None:
        self.slide_path = str(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64)
        self.level = int(level)
        self.read_size = int(read_size)
        self.out_size = int(out_size)
        self._slide = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.coords)

    def _handle(self):
        if self._slide is None or self._pid != os.getpid():
            # check_source already decoded pixels of this slide in the parent process
            self._slide = open_slide(self.slide_path, check_pixels=False)
            self._pid = os.getpid()
        return self._slide

    def read(self, i: int) -> np.ndarray:
        """Patch ``i`` as (S, S, 3) uint8 at the output size."""
        x, y = (int(v) for v in self.coords[i])
        rgb = read_rgb(self._handle(), (x, y), self.level, (self.read_size, self.read_size))
        if self.read_size != self.out_size:
            from PIL import Image

            rgb = np.asarray(
                Image.fromarray(rgb).resize((self.out_size, self.out_size), Image.Resampling.BILINEAR)
            )
        return rgb

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            rgb = self.read(i)
        except Exception as exc:  # noqa: BLE001 - reported by the caller, one line
            x, y = self.coords[i]
            return (
                torch.zeros((3, self.out_size, self.out_size), dtype=torch.uint8),
                f"{self.slide_path}: cannot read patch {i} at ({x}, {y}) level {self.level}: {one_line(exc)}",
            )
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), ""

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([t for t, _ in items]), [e for _, e in items]


@dataclass(frozen=True)
class ExtractConfig:
    """How to extract. ``workers`` = reader processes (0 reads in the main process);
    ``precision`` "auto" = bf16/fp16 autocast on CUDA, fp32 on CPU; ``dtype`` of the stored
    features; ``input_size`` overrides the backbone's (None keeps it); ``threads`` = torch
    CPU threads while extracting on CPU (None: the cores left over by the readers, at least
    1, because OpenMP threads competing with readers for cores slow down many times)."""

    batch_size: int = 64
    workers: int = 1
    threads: int | None = None
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float32"
    input_size: int | None = None
    overwrite: bool = False
    slide_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise DataError(f"workers must be >= 0, got {self.workers}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise DataError(f"precision {self.precision!r}: expected auto, fp32, bf16 or fp16")
        if self.dtype not in ("float32", "float16"):
            raise DataError(f"features dtype {self.dtype!r}: expected float32 or float16")
        if self.threads is not None and self.threads < 1:
            raise DataError(f"threads must be >= 1, got {self.threads}")
        if self.input_size is not None and self.input_size < 16:
            raise DataError(f"input size must be >= 16 pixels, got {self.input_size}")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    return dev


def default_workers(device: torch.device) -> int:
    """Reader processes worth starting: on CPU one (a patch reads in ~1-2 ms, the default
    backbone needs ~100 ms of CPU per patch), with CUDA up to 8 to keep the GPU fed."""
    if device.type == "cuda":
        return max(1, min(8, os.cpu_count() or 1))
    return 1


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def output_path(patch_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{Path(patch_file).stem}.h5"


def finished_bag(path: Path, n_coords: int, backbone: str) -> tuple[bool, str]:
    """Whether ``path`` is a complete bag of ``n_coords`` features from ``backbone``; the
    second value says why not when it exists but does not fit."""
    import h5py

    if not path.exists():
        return False, ""
    try:
        with h5py.File(path, "r") as f:
            n = int(f["features"].shape[0])
            made_by = f.attrs.get("backbone", "")
    except Exception as exc:  # noqa: BLE001 - unreadable: redo it
        log.warning("%s exists but cannot be read (%s); extracting again", path, one_line(exc))
        return False, ""
    made_by = made_by.decode() if isinstance(made_by, bytes) else str(made_by)
    if made_by != backbone:
        return (
            False,
            f"{path} exists but holds {made_by or 'unknown'} features, not {backbone}; pass --overwrite or another --out",
        )
    if n != n_coords:
        return False, f"{path} exists with {n} features for {n_coords} patches; pass --overwrite to redo it"
    return True, ""


def extract_features(
    dataset: PatchDataset,
    model: FeatureExtractor,
    config: ExtractConfig,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Features (N, dim) float32 of every patch of ``dataset``, in order.

    Raises :class:`DataError` (one line) when a patch cannot be read.
    """
    device = device or resolve_device(config.device)
    amp = autocast_dtype(device, config.precision)
    n = len(dataset)
    out = np.empty((n, model.dim), np.float32)
    if n == 0:
        return out
    workers = min(config.workers, max(1, -(-n // config.batch_size)))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    ctx = torch.autocast(device_type=device.type, dtype=amp) if amp is not None else nullcontext()
    i = 0
    try:
        with torch.inference_mode():
            for batch, errors in loader:
                bad = next((e for e in errors if e), "")
                if bad:
                    raise DataError(bad)
                with ctx:
                    feats = model(batch.to(device, non_blocking=True))
                out[i : i + len(batch)] = feats.float().cpu().numpy()
                i += len(batch)
                if on_batch:
                    on_batch(len(batch))
    finally:
        dataset.close()
    return out


def check_source(source: PatchSource) -> None:
    """Open the slide (decoding a few pixels) and check the patch geometry against it, so a
    wrong level or coordinates outside the slide fail with a reason instead of blank patches."""
    slide = open_slide(source.slide_path)
    try:
        if not 0 <= source.level < slide.level_count:
            raise DataError(
                f"{source.patch_file}: patch_level {source.level} but {source.slide_path} has "
                f"{slide.level_count} level(s)"
            )
        w, h = slide.dimensions
        if len(source.coords):
            xmax, ymax = source.coords.max(axis=0)
            xmin, ymin = source.coords.min(axis=0)
            if xmin < 0 or ymin < 0 or xmax >= w or ymax >= h:
                raise DataError(
                    f"{source.patch_file}: coords span ({xmin}, {ymin})-({xmax}, {ymax}), outside "
                    f"{source.slide_path} ({w} x {h}); were they made for another slide?"
                )
    finally:
        slide.close()


def extract_slide(
    source: PatchSource,
    out_dir: str | os.PathLike,
    model: FeatureExtractor,
    config: ExtractConfig,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Extract and write the bag of one slide; returns its path."""
    from deref.data.bags import write_bag_h5

    check_source(source)
    size = config.input_size or model.spec.input_size
    ds = PatchDataset(source.slide_path, source.coords, source.level, source.read_size, size)
    feats = extract_features(ds, model, config, device, on_batch)
    attrs = {k: v for k, v in source.attrs.items()}
    attrs.update(model.provenance())
    attrs.update({"input_size": size, "patch_file": str(source.patch_file.resolve())})
    return write_bag_h5(
        output_path(source.patch_file, out_dir), feats, source.coords, attrs, features_dtype=config.dtype
    )


def list_patch_files(patches: str | os.PathLike) -> list[Path]:
    """Patch ``.h5`` files of a tiling output folder (or of its ``patches/`` subfolder)."""
    root = Path(patches)
    if not root.is_dir():
        raise DataError(f"--patches {root}: not a folder")
    if (root / "patches").is_dir():
        root = root / "patches"
    files = sorted(p for p in root.glob("*.h5") if not p.name.startswith("."))
    if not files:
        raise DataError(f"--patches {root}: no .h5 patch files (run `deref tile` first)")
    return files


def extract_slides(
    patch_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: FeatureExtractor,
    config: ExtractConfig | None = None,
    *,
    on_slide: Callable[[str, int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_result: Callable[[ManifestRow], None] | None = None,
) -> list[ManifestRow]:
    """Extract every slide of ``patch_files`` in order; one manifest row each, never raising
    for a bad slide. Finished bags are skipped unless ``config.overwrite``."""
    config = config or ExtractConfig()
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = model.to(device)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) - config.workers))
    try:
        return _extract_all(patch_files, out_dir, model, config, device, on_slide, on_batch, on_result)
    finally:
        torch.set_num_threads(threads_before)


def _extract_all(
    patch_files, out_dir, model, config, device, on_slide, on_batch, on_result
) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    for pf in patch_files:
        pf = Path(pf)
        t0 = time.perf_counter()
        out = output_path(pf, out_dir)
        try:
            source = read_patch_file(pf, config.slide_dir)
            n = len(source.coords)
            done, why = (False, "") if config.overwrite else finished_bag(out, n, model.spec.name)
            if why:
                raise DataError(why)
            if done:
                row = ManifestRow(str(source.slide_path), "skipped", n, 0.0, "", str(out))
            elif n == 0:
                row = ManifestRow(str(source.slide_path), "empty", 0, 0.0, f"{pf}: no patches to extract", "")
            else:
                if on_slide:
                    on_slide(pf.stem, n)
                extract_slide(source, out_dir, model, config, device, on_batch)
                secs = time.perf_counter() - t0
                log.info("%s: %d patches in %.1f s (%.1f patches/s)", pf.stem, n, secs, n / max(secs, 1e-9))
                row = ManifestRow(str(source.slide_path), "ok", n, secs, "", str(out))
        except DataError as exc:
            row = ManifestRow(str(pf), "failed", 0, time.perf_counter() - t0, one_line(exc), "")
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            log.debug("unexpected failure on %s:\n%s", pf, traceback.format_exc())
            row = ManifestRow(
                str(pf),
                "failed",
                0,
                time.perf_counter() - t0,
                f"{pf}: {type(exc).__name__}: {one_line(exc)}",
                "",
            )
        rows.append(row)
        if on_result:
            on_result(row)
    return rows
