"""Feature extraction: end to end on generated and real slides, resume after a kill, shards."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from prepare_helpers import REPO

from deref.cli.main import main
from deref.prepare.tile import tile_slides

FAST = ["--input-size", "32", "--batch-size", "4", "--workers", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def tiled(synthetic, tmp_path_factory):
    """Three copies of the generated slide, tiled (about 33 patches each)."""
    root = tmp_path_factory.mktemp("extract")
    (root / "slides").mkdir()
    slides = [shutil.copy(synthetic["path"], root / "slides" / f"{name}.svs") for name in ("s1", "s2", "s3")]
    rows = tile_slides(slides, root / "tiles")
    assert [r.status for r in rows] == ["ok"] * 3
    return root


def extract(argv: list[str]) -> int:
    """``deref extract`` in this process, with one torch thread (see conftest)."""
    return main(["extract", *argv, "--threads", "1"])


def _bags(out: Path) -> dict[str, dict]:
    bags = {}
    for p in sorted(out.glob("*.h5")):
        with h5py.File(p) as f:
            bags[p.stem] = {"features": f["features"][:], "coords": f["coords"][:], "attrs": dict(f.attrs)}
    return bags


def _set_attr(path: Path, key: str, value) -> None:
    with h5py.File(path, "a") as f:  # the tiler stores attrs on the file and on coords
        f.attrs[key] = value
        f["coords"].attrs[key] = value


def _manifest(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _only(tiled: Path, tmp_path: Path, *stems: str) -> Path:
    d = tmp_path / "patches"
    d.mkdir()
    for stem in stems:
        shutil.copy(tiled / "tiles" / "patches" / f"{stem}.h5", d)
    return d


def test_tile_then_extract_generated_slide(synthetic, tiled, tv_weights, tmp_path):
    from PIL import Image

    from deref.prepare.backbones import build_backbone

    out = tmp_path / "feats"
    patches = _only(tiled, tmp_path, "s1")
    assert (
        extract(
            [
                "--patches",
                str(patches),
                "--weights",
                str(tv_weights),
                "--out",
                str(out),
                "--input-size",
                "64",
                "--batch-size",
                "16",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    bag = _bags(out)["s1"]
    with h5py.File(patches / "s1.h5") as f:
        coords = f["coords"][:]
    assert bag["features"].shape == (len(coords), 1024) and bag["features"].dtype == np.float32
    assert np.array_equal(bag["coords"], coords)
    a = bag["attrs"]
    assert a["backbone"] == "resnet50_trunc" and not a["unusable_for_science"] and a["patch_size"] == 256
    assert a["weights_sha256"] and a["magnification"] == 20.0 and a["input_size"] == 64
    # Independent reading path: crop the patch from the drawn image, resize, run the model.
    model = build_backbone("resnet50_trunc", tv_weights)
    idx = [0, len(coords) // 2, len(coords) - 1]
    crops = []
    for i in idx:
        x, y = coords[i]
        crop = Image.fromarray(synthetic["image"][y : y + 256, x : x + 256])
        crops.append(np.asarray(crop.resize((64, 64), Image.Resampling.BILINEAR)))
    batch = torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        expected = model(batch).numpy()
    # The slide stores JPEG tiles, the drawn image is lossless: close, not identical.
    corr = [np.corrcoef(g, e)[0, 1] for g, e in zip(bag["features"][idx], expected)]
    assert min(corr) > 0.98


def test_float16_features(tiled, tmp_path):
    patches = _only(tiled, tmp_path, "s1")
    common = [
        "--patches",
        str(patches),
        "--random-weights",
        "--backbone",
        "resnet18",
        "--input-size",
        "32",
        "--workers",
        "0",
    ]
    assert extract([*common, "--out", str(tmp_path / "f32")]) == 0
    assert extract([*common, "--out", str(tmp_path / "f16"), "--dtype", "float16"]) == 0
    full, half = _bags(tmp_path / "f32")["s1"]["features"], _bags(tmp_path / "f16")["s1"]["features"]
    assert half.dtype == np.float16
    assert np.allclose(half.astype(np.float32), full, rtol=2e-3, atol=1e-3 * np.abs(full).max())


def test_tile_then_extract_real_slide(slides_dir, tmp_path, capsys):
    rows = tile_slides([slides_dir / "cmu-1-small-region.svs"], tmp_path / "tiles")
    assert rows[0].status == "ok"
    out = tmp_path / "feats"
    args = ["--patches", str(tmp_path / "tiles"), "--random-weights", "--out", str(out), "--input-size", "32"]
    assert extract([*args, "--batch-size", "32", "--workers", "2"]) == 0
    assert "UNUSABLE FOR SCIENCE" in capsys.readouterr().err
    bag = _bags(out)["cmu-1-small-region"]
    assert bag["features"].shape == (rows[0].patches, 1024) and np.isfinite(bag["features"]).all()
    assert bag["attrs"]["unusable_for_science"] and bag["attrs"]["weights_file"] == "none (random weights)"
    assert bag["attrs"]["slide_mpp"] == pytest.approx(0.499) and bag["attrs"]["downsample"] == 1.0


def test_bad_slides_are_reported_and_the_batch_goes_on(tiled, tmp_path, capsys):
    patches = tmp_path / "patches"
    shutil.copytree(tiled / "tiles" / "patches", patches)
    _set_attr(patches / "s2.h5", "slide_path", "/nonexistent/s2.svs")
    _set_attr(patches / "s3.h5", "patch_level", 7)  # not a level of the slide: reading fails
    out = tmp_path / "out"
    args = [
        "--patches",
        str(patches),
        "--random-weights",
        "--backbone",
        "resnet18",
        "--out",
        str(out),
        "--input-size",
        "32",
        "--workers",
        "2",
    ]
    assert extract(args) == 3
    rows = {Path(r["output"] or r["slide"]).stem: r for r in _manifest(out / "extract_manifest.csv")}
    assert rows["s1"]["status"] == "ok"
    assert rows["s2"]["status"] == "failed" and "does not exist; pass --slides DIR" in rows["s2"]["error"]
    assert rows["s3"]["status"] == "failed" and "patch_level 7 but" in rows["s3"]["error"]
    assert all("\n" not in r["error"] for r in rows.values())
    assert not (out / "s3.h5").exists() and not list(out.glob(".*tmp*"))
    # --slides points at the moved slides; a bag of another backbone is not silently reused.
    assert extract([*args, "--slides", str(tiled / "slides")]) == 3
    assert _manifest(out / "extract_manifest.csv")[1]["status"] == "ok"
    assert (
        extract(["--patches", str(patches), "--random-weights", "--out", str(out), "--input-size", "32"]) == 3
    )
    assert "holds resnet18 features, not resnet50_trunc" in capsys.readouterr().err


def test_a_patch_that_cannot_be_read_is_one_line(tiled):
    from deref.errors import DataError
    from deref.prepare.backbones import build_backbone
    from deref.prepare.extract import ExtractConfig, PatchDataset, extract_features

    class Flaky(PatchDataset):
        def read(self, i):
            if i == 5:
                raise OSError("JPEGLib: Bogus marker length\nmore")
            return super().read(i)

    with h5py.File(tiled / "tiles" / "patches" / "s1.h5") as f:
        coords = f["coords"][:]
    ds = Flaky(tiled / "slides" / "s1.svs", coords, 0, 256, 32)
    model = build_backbone("resnet18", random_weights=True)
    with pytest.raises(DataError) as info:
        extract_features(ds, model, ExtractConfig(batch_size=4, workers=1))
    msg = str(info.value)
    assert "cannot read patch 5 at" in msg and "Bogus marker length more" in msg and "\n" not in msg


def test_shards_partition_the_slides(tiled, tmp_path):
    out = tmp_path / "out"
    done = []
    for k in (1, 2):
        assert (
            extract(
                [
                    "--patches",
                    str(tiled / "tiles"),
                    "--random-weights",
                    "--backbone",
                    "resnet18",
                    "--out",
                    str(out),
                    "--shard",
                    f"{k}/2",
                    "--input-size",
                    "32",
                    "--workers",
                    "0",
                ]
            )
            == 0
        )
        rows = _manifest(out / f"extract_manifest.shard-{k}-of-2.csv")
        done.append({Path(r["output"]).stem for r in rows if r["status"] == "ok"})
    assert done[0].isdisjoint(done[1]) and done[0] | done[1] == {"s1", "s2", "s3"}
    assert sorted(p.stem for p in out.glob("*.h5")) == ["s1", "s2", "s3"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_files(tiled, tv_weights, tmp_path):
    cmd = ["--patches", str(tiled / "tiles"), "--weights", str(tv_weights), *FAST]
    ref = tmp_path / "ref"
    assert extract([*cmd, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deref.cli.main", "extract", *cmd, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("s*.h5")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    finished = sorted(p.stem for p in out.glob("*.h5"))
    assert 1 <= len(finished) < 3, f"the kill should land between slides, got {finished}"
    for bag in _bags(out).values():  # what looks finished is finished
        assert bag["features"].shape[0] == bag["coords"].shape[0]
    assert extract([*cmd, "--out", str(out)]) == 0
    statuses = {Path(r["output"]).stem: r["status"] for r in _manifest(out / "extract_manifest.csv")}
    assert all(statuses[s] == "skipped" for s in finished) and list(statuses.values()).count("ok") == 3 - len(
        finished
    )
    a, b = _bags(ref), _bags(out)
    assert sorted(a) == sorted(b) == ["s1", "s2", "s3"]
    for stem in a:
        assert a[stem]["features"].tobytes() == b[stem]["features"].tobytes()  # bitwise
        assert np.array_equal(a[stem]["coords"], b[stem]["coords"])
