"""``deref tile|extract|mri --ray`` on a two-node cluster of this machine: byte-identical files to
the sequential commands, the same reports of broken slides, a killed worker's slide redone
elsewhere, a killed driver's run finished by a rerun."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from benchmarks.bench_scale import generated_slide
from deref.cli.main import main

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: resnet18 with random (seeded) weights: what the arithmetic is does not matter here, only that
#: both paths do the same. One thread everywhere (the Ray workers have one CPU each).
FAST = [
    "--backbone",
    "resnet18",
    "--random-weights",
    "--input-size",
    "32",
    "--batch-size",
    "8",
    "--threads",
    "1",
]
#: Slower (about 0.5 s a slide): a driver killed after the first bag has work left to kill.
SLOW = [
    "--backbone",
    "resnet18",
    "--random-weights",
    "--input-size",
    "128",
    "--batch-size",
    "4",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("generated")
    return [generated_slide(d / f"gen{i}.svs", i) for i in range(4)]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "manifest" not in p.name
    }


def _manifest(path: Path) -> list[tuple]:
    with open(path, newline="") as fh:
        return [tuple(r.values())[:3] + (r["error"], r["output"]) for r in csv.DictReader(fh)]


def _no_partial(root: Path) -> None:
    left = [str(p) for p in root.rglob("*") if ".tmp-" in p.name]
    assert left == [], f"half-written files left: {left}"


def test_cluster_listens_on_loopback_only(ray_cluster):
    import ray

    assert ray.is_initialized() and ray_cluster.startswith("127.0.0.1:")
    listening = set()
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if not (name.startswith(("ray", "gcs_server", "raylet")) or "ray::" in name):
            continue
        try:
            listening |= {
                c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            }
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_tile_and_extract_on_two_nodes_equal_the_sequential_commands(
    ray_cluster, shared_data, generated, tmp_path
):
    slides_dir = shared_data / "slides"
    if not slides_dir.is_dir():
        pytest.skip(f"{slides_dir} not present")
    out = tmp_path / "out"
    tile = ["tile", str(slides_dir), *map(str, generated), "--out", str(out / "tiles")]
    extract = ["extract", "--patches", str(out / "tiles"), "--out", str(out / "feats"), *FAST]

    assert main([*tile, "--workers", "1"]) == 3  # broken, unopenable, unreadable and boxes.tiff fail
    assert main([*extract, "--workers", "0"]) == 0
    seq = tmp_path / "sequential"
    shutil.move(out, seq)
    assert main([*tile, "--ray", ray_cluster]) == 3
    assert main([*extract, "--ray", ray_cluster]) == 0

    a, b = _files(seq), _files(out)
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("feats/")]) >= 5
    differ = [k for k in a if a[k] != b[k]]
    assert differ == [], f"not byte-identical: {differ}"
    for name in ("tiles/tile_manifest.csv", "feats/extract_manifest.csv"):
        assert _manifest(seq / name) == _manifest(out / name)  # same rows, statuses and errors
    rows = {Path(r[0]).name: r for r in _manifest(out / "tiles/tile_manifest.csv")}
    assert rows["cmu-1-small-region.svs"][1] == "ok" and rows["gen0.svs"][1] == "ok"
    for bad in ("broken.svs", "unopenable.tiff", "unreadable.svs"):
        assert rows[bad][1] == "failed" and bad in rows[bad][3]
    _no_partial(out)


def _clean_bags(patches: Path, out: Path, argv: list[str]) -> dict[str, bytes]:
    assert main(["extract", "--patches", str(patches), "--out", str(out), *argv, "--workers", "0"]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.h5"))}


@pytest.fixture(scope="module")
def tiled(generated, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiled")
    assert main(["tile", *map(str, generated), "--out", str(root / "tiles"), "--workers", "1"]) == 0
    return root / "tiles" / "patches"


def test_a_worker_killed_mid_slide_has_its_slide_redone_elsewhere(ray_cluster, tiled, tmp_path):
    from deref.prepare.extract import ExtractConfig, list_patch_files
    from deref.scale import RayOptions
    from deref.scale.prepare import extract_slides_ray

    two = tmp_path / "two"
    two.mkdir()
    for f in list_patch_files(tiled)[:2]:
        shutil.copy(f, two)
    files = list_patch_files(two)
    # the slide must take long enough to be killed in the middle: full-size input (~1 s a slide)
    clean = _clean_bags(
        two, tmp_path / "clean", [*SLOW[:3], "--input-size", "224", "--batch-size", "4", "--threads", "1"]
    )
    dispatched: list[tuple[str, int]] = []
    killed: list[int] = []

    def kill_when_busy(pid: int) -> None:
        """Kill the worker once it has spent CPU on the slide (it is then in the middle of it)."""
        proc = psutil.Process(pid)
        start = sum(proc.cpu_times()[:2])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(proc.cpu_times()[:2]) - start < 0.2:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def on_dispatch(item: str, pid: int) -> None:
        dispatched.append((Path(item).stem, pid))
        if len(dispatched) == 1:
            threading.Thread(target=kill_when_busy, args=(pid,), daemon=True).start()

    config = ExtractConfig(batch_size=4, workers=0, threads=1, input_size=224)
    out = tmp_path / "feats"
    rows = extract_slides_ray(
        files,
        out,
        "resnet18",
        None,
        config,
        RayOptions(address=ray_cluster),
        random_weights=True,
        on_dispatch=on_dispatch,
    )
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    assert len(killed) == 1
    first, first_pid = dispatched[0]
    redo = [pid for stem, pid in dispatched[1:] if stem == first]
    assert redo and redo[0] != first_pid  # redone by another worker process
    for f in files:
        assert (out / f.name).read_bytes() == clean[f.name]  # identical to a clean run
    _no_partial(out)


def test_a_killed_driver_is_finished_by_running_the_command_again(ray_cluster, tiled, tmp_path):
    clean = _clean_bags(tiled, tmp_path / "clean", SLOW)
    out = tmp_path / "feats"
    argv = ["extract", "--patches", str(tiled), "--out", str(out), *SLOW, "--ray", ray_cluster]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "deref", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("*.h5")) and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, (
            f"the driver ended before it could be killed: {driver.stderr.read()[-1500:]}"
        )
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait(30)
    done_before = {p.name for p in out.glob("*.h5")}
    assert 1 <= len(done_before) < len(clean)

    assert main(argv) == 0
    rows = {Path(r[4]).name or Path(r[0]).stem: r for r in _manifest(out / "extract_manifest.csv")}
    skipped = {name for name, r in rows.items() if r[1] == "skipped"}
    assert done_before <= skipped and len(skipped) < len(clean)  # only what was missing was redone
    assert {p.name: p.read_bytes() for p in sorted(out.glob("*.h5"))} == clean
    _no_partial(out)


def test_mri_on_two_nodes_equals_the_sequential_command(ray_cluster, shared_data, tmp_path):
    nifti = sorted((shared_data / "mri").glob("*.nii*")) if (shared_data / "mri").is_dir() else []
    if not nifti:
        pytest.skip("no NIfTI volume in ../shared/data/mri")
    import nibabel as nib

    vol = nib.load(str(nifti[0]))
    data = np.asarray(vol.dataobj, dtype=np.float32)
    data = data[..., 0] if data.ndim == 4 else data
    mask = np.zeros(data.shape, np.uint8)
    c = [s // 2 for s in data.shape]
    mask[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 2 : c[2] + 2] = 1
    root = tmp_path / "mri"
    rows = []
    for p in ("P1", "P2", "P3"):
        (root / p).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, vol.affine), str(root / p / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(mask, vol.affine), str(root / p / "mask.nii.gz"))
        rows.append(p)
    (root / "P3" / "mask.nii.gz").write_bytes(b"not a volume")  # one bad patient
    argv = ["mri", "--root", str(root), "--sequences", "t1", "--cubes", "--grid", "16"]
    assert main([*argv, "--out", str(tmp_path / "seq")]) == 3
    assert main([*argv, "--out", str(tmp_path / "ray"), "--ray", ray_cluster]) == 3
    a, b = _files(tmp_path / "seq"), _files(tmp_path / "ray")
    assert sorted(a) == sorted(b) == ["P1.h5", "P2.h5"]
    assert all(a[k] == b[k] for k in a)
    ma, mb = (
        _manifest(tmp_path / "seq" / "mri_manifest.csv"),
        _manifest(tmp_path / "ray" / "mri_manifest.csv"),
    )
    assert [r[:4] for r in ma] == [r[:4] for r in mb] and ma[2][1] == "failed" and "P3" in ma[2][3]
