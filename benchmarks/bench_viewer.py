"""Speed of the MRI viewer's figure (issue 12, item 5). Printed, never asserted.

    python benchmarks/bench_viewer.py [--json] [--repeats N]

Progress and a readable summary go to stderr; with ``--json`` the last line of stdout is ONE
JSON object with every figure measured.

What one slice change costs: the crosshair moves to another voxel and
``deref.figures.mri.orthogonal_slices_figure`` rebuilds the three panels (grey image under the
auto window, the tumour mask's contour, the voxel-attribution overlay thresholded at 20 %, the
crosshair, the click grids), then the figure is serialized as ``st.plotly_chart`` sends it
(``plotly.io.to_json``, no validation). Window presets are computed once per volume (the page
caches them) and are not counted. Volumes: a 64^3 cube (1.5 mm) and a 256 x 256 x 64 stack
(0.8 x 0.8 x 3 mm), each with an ellipsoid tumour and a signed smooth attribution.

Figures (target from the issue in brackets):
- ``viewer_slice_ms`` [<= 150 ms]: the larger of the two volumes' medians of build +
  serialization for one slice change;
- ``viewer_build_ms_<vol>`` / ``viewer_json_ms_<vol>``: the medians of the two parts;
  ``viewer_slice_ms_<vol>`` their sum per run; ``viewer_payload_kb_<vol>``: the JSON size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VOLUMES = {"64": ((64, 64, 64), (1.5, 1.5, 1.5)), "256x256x64": ((256, 256, 64), (0.8, 0.8, 3.0))}


def log(msg: str) -> None:
    print(f"[bench_viewer] {msg}", file=sys.stderr, flush=True)


def synthetic_view(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0):
    """An MRI-like volume (smooth background, bright ellipsoid tumour, noise), its mask and a
    signed smooth attribution peaking inside the tumour."""
    from deref.figures.mri import MriView

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    centre = (0.2, -0.15, 0.1)
    t2 = sum(((g - c) / 0.25) ** 2 for g, c in zip(grids, centre))
    mask = t2 <= 1.0
    volume = 300 * np.exp(-r2) + 250 * mask + rng.normal(0, 20, shape).astype(np.float32)
    overlay = np.exp(-t2) - 0.4 * np.exp(-sum(((g + c) / 0.3) ** 2 for g, c in zip(grids, centre)))
    return MriView(
        volume.astype(np.float32), spacing, mask=mask, overlay=overlay.astype(np.float32), sequence="T2"
    )


def measure(view, repeats: int) -> dict[str, float]:
    """Median build, serialization and total ms of ``repeats`` slice changes through the tumour."""
    import plotly.io as pio

    from deref.figures.mri import orthogonal_slices_figure, tumour_center, window_presets

    window = window_presets(view.volume, view.mask)["auto (1–99%)"]
    c = np.array(tumour_center(view.mask))
    shape = np.array(view.shape)
    rng = np.random.default_rng(1)
    points = [
        tuple(int(v) for v in np.clip(c + rng.integers(-4, 5, 3), 0, shape - 1)) for _ in range(repeats + 1)
    ]
    build, ser, size = [], [], 0
    for n, p in enumerate(points):
        t0 = time.perf_counter()
        fig = orthogonal_slices_figure(view, p, window=window, overlay_threshold=0.2, overlay_opacity=0.5)
        t1 = time.perf_counter()
        payload = pio.to_json(fig, validate=False)
        t2 = time.perf_counter()
        if n:  # the first run warms up imports and caches
            build.append((t1 - t0) * 1e3)
            ser.append((t2 - t1) * 1e3)
            size = len(payload)
    total = [b + s for b, s in zip(build, ser)]
    return {
        "build": statistics.median(build),
        "json": statistics.median(ser),
        "total": statistics.median(total),
        "kb": size / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--repeats", type=int, default=9, help="timed slice changes per volume (median)")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    for name, (shape, spacing) in VOLUMES.items():
        log(f"volume {name} {shape}, spacing {spacing} mm ...")
        m = measure(synthetic_view(shape, spacing), max(1, args.repeats))
        results[f"viewer_build_ms_{name}"] = round(m["build"], 1)
        results[f"viewer_json_ms_{name}"] = round(m["json"], 1)
        results[f"viewer_slice_ms_{name}"] = round(m["total"], 1)
        results[f"viewer_payload_kb_{name}"] = round(m["kb"], 1)
        log(f"  build {m['build']:.1f} ms + json {m['json']:.1f} ms = {m['total']:.1f} ms, {m['kb']:.0f} kB")
    results["viewer_slice_ms"] = max(v for k, v in results.items() if k.startswith("viewer_slice_ms_"))
    log(f"viewer_slice_ms = {results['viewer_slice_ms']} (target <= 150 ms)")
    if args.json:
        print(json.dumps(results), flush=True)
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
