"""Speed and memory of the dashboard (issues 6 and 15). Printed, never asserted.

    python benchmarks/bench_app.py [--json] [--demo DIR] [--repeats N] [--no-browser] [--bytecode]

Progress and a readable summary go to stderr; with ``--json`` the last line of stdout is ONE
JSON object with every figure measured, and which demo it measured: ``demo`` (its folder) and
``demo_name`` (``assets/demo``, the full demo, or ``small-40``, the 40-patient test demo of
``.cache/test-demos`` used when the full one is not built).

Figures (targets in brackets: issue 6's, then issue 15's):
- ``cold_start_s`` [<= 5 s; <= 4 s]: ``streamlit run app/main.py`` started to the Cohort page
  rendered in headless Chromium (table and plotly charts drawn, script run finished), demo
  already built. ``server_ready_s``: the part until the server answers ``/_stcore/health``
  (Streamlit's own start, before any of the app's code runs). The server runs with the
  environment's bytecode setting (this project's sets ``PYTHONDONTWRITEBYTECODE=1``: every
  module of the repository is compiled from source at each start); ``--bytecode`` lets it write
  and reuse bytecode under ``.cache/pycache-bench``, as a deployed server does
  (``bytecode_cache`` in the JSON says which).
- ``patient_switch_ms`` [<= 500 ms; <= 150 ms]: on the Patient page, another patient picked in the
  selector until the page shows its numbers (risk, percentile, group...: one model call),
  median over ``repeats`` patients never shown before; ``patient_switch_full_ms`` until the
  whole page is done (the two "what if" runs, the plots and the feature attributions too);
  ``patient_switch_cached_ms`` / ``patient_switch_cached_full_ms`` the same for patients shown
  before (everything from the caches).
- ``overlay_ms`` [<= 300 ms]: what the Attention page's fragment does when the opacity slider
  moves, on a 20,000-patch slide (``benchmarks.bench_explain.heatmap_case``: 120,000 x 80,000 px
  slide, its thumbnail at the 1,280-px canvas size as ``backend.thumbnail`` caches it):
  ``backend.overlay_image`` (render_heatmap on that canvas),
  and the clickable plotly figure (JPEG of the canvas, one invisible marker per patch centre, the
  selected patch's outline) serialized as ``st.plotly_chart`` sends it; median over opacities.
  ``overlay_payload_kb`` is that figure's size; the browser's transfer and paint are not included.
- ``km_export_ms`` [<= 1 s; <= 150 ms]: the PDF the Stratification page's download button produces
  (``StratificationReport.export``: matplotlib Kaplan–Meier figure + ``export_figure``; the
  stratification itself is cached), median of repeats after a first one (the dashboard itself
  caches each export's bytes: this is the first download of a report).
- ``rss_mb``: resident memory of the server process after opening every page;
  ``rss_mb_5_tabs`` with five more tabs open at once (one per page); ``model_loads`` how many
  times a model was loaded in the server (read from the sidebar) [one model whatever the tabs].
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def find_demo(arg: str | None) -> Path:
    from deref.demo import demo_is_built

    candidates = (
        [Path(arg)] if arg else [REPO / "assets" / "demo", REPO / ".cache" / "test-demos" / "small-40"]
    )
    for c in candidates:
        if demo_is_built(c):
            return c.resolve()
    raise SystemExit(
        f"no built demo in {', '.join(map(str, candidates))}: run `deref demo --out assets/demo` first"
    )


# ----------------------------------------------------------------------------- in-process figures
def measure_overlay(repeats: int) -> dict[str, float]:
    from app import backend
    from benchmarks.bench_explain import heatmap_case

    scores, coords, ps, dims, thumb = heatmap_case()
    thumb = thumb.copy()
    thumb.thumbnail((backend.CANVAS_PX, backend.CANVAS_PX))  # what backend.thumbnail() caches
    t = backend.Thumbnail(np.asarray(thumb), dims, None)
    attrs = {"patch_size": ps, "patch_level": 0}

    import plotly.io as pio

    from deref.figures import slide_overlay_figure

    sizes = []

    def once(opacity: float) -> None:
        img, res = backend.overlay_image(
            scores,
            coords,
            attrs,
            t,
            opacity=opacity,
            cmap="jet",
            normalization="percentile",
            clip=(1.0, 99.0),
            threshold=None,
            smooth_sigma=0.0,
        )
        fig = slide_overlay_figure(
            img, res.boxes, scores, int(np.argmax(scores))
        )  # JPEG + clickable patch centres
        sizes.append(len(pio.to_json(fig, validate=False)))  # what st.plotly_chart serializes

    once(0.5)
    times = []
    for op in np.linspace(0.1, 0.9, max(repeats, 3)):
        t0 = time.perf_counter()
        once(float(op))
        times.append(time.perf_counter() - t0)
    return {
        "overlay_ms": round(1000 * statistics.median(times), 1),
        "overlay_patches": int(len(scores)),
        "overlay_payload_kb": round(statistics.median(sizes) / 1024, 1),
    }


def measure_export(demo: Path, repeats: int) -> dict[str, float]:
    import pandas as pd

    from deref.report import stratification_report

    pred = pd.read_csv(demo / "run" / "predictions.csv")
    train = pd.read_csv(demo / "run" / "train_risks.csv")
    # what the download button runs (backend.km_export): the report's PDF export
    rep = stratification_report(
        pred, rule="median", train_risks=train, run_name="demo-deref", cohort_name="demo"
    )

    def once() -> int:
        return len(rep.export("pdf", "km"))

    once()
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        size = once()
        times.append(time.perf_counter() - t0)
    return {"km_export_ms": round(1000 * statistics.median(times), 1), "km_export_pdf_bytes": size}


# ----------------------------------------------------------------------------- the real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    total = p.memory_info().rss
    for c in p.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def wait_ready(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_selector(".js-plotly-plot", timeout=timeout_ms)
    # main.py writes this marker after the page's script is done
    page.wait_for_selector(".deref-run-done", state="attached", timeout=timeout_ms)


def first_metric(page) -> str:
    return " | ".join(page.locator("[data-testid='stMetricValue']").all_inner_texts())


def pick_patient(page, case: str, timeout_ms: int = 300_000) -> tuple[float, float]:
    """Select ``case`` in the Patient page's selector. Seconds until its numbers are shown
    (the metrics row changed), and until the whole page is done (the script run is over)."""
    before = first_metric(page)
    run = int(page.locator(".deref-run-done").first.get_attribute("data-run") or 0)
    box = page.locator("[data-testid='stMain'] [data-testid='stSelectbox']").first
    box.click()
    page.keyboard.type(case)
    t0 = time.perf_counter()
    page.keyboard.press("Enter")
    page.wait_for_function(
        """(old) => {
            const now = Array.from(document.querySelectorAll('[data-testid="stMetricValue"]')).map(e => e.innerText).join(" | ");
            return now && now !== old;
        }""",
        arg=before,
        timeout=timeout_ms,
        polling=10,
    )
    t_numbers = time.perf_counter() - t0
    page.wait_for_function(  # main.py's end-of-run marker counts the script runs
        "(n) => { const m = document.querySelector('.deref-run-done'); return m && +m.dataset.run > n; }",
        arg=run,
        timeout=timeout_ms,
        polling=10,
    )
    return t_numbers, time.perf_counter() - t0


def demo_name(demo: Path) -> str:
    """``assets/demo`` (the full demo), ``small-40`` (a test demo, by its folder's name) or the
    folder given with ``--demo``."""
    if demo == (REPO / "assets" / "demo").resolve():
        return "assets/demo"
    if demo.parent == (REPO / ".cache" / "test-demos").resolve():
        return demo.name
    return str(demo)


def server_env(demo: Path, bytecode: bool) -> dict[str, str]:
    """The server's environment: this one without ``DEREF_*``, on ``demo``, no precomputation;
    with ``bytecode``, bytecode written to and read from ``.cache/pycache-bench``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    env["DEREF_DEMO_DIR"] = str(demo)
    env["DEREF_PRECOMPUTE_MAX"] = "0"  # patients "never shown before" must not be precomputed
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(REPO / ".cache" / "pycache-bench")
    return env


def measure_browser(demo: Path, repeats: int, bytecode: bool = False) -> dict[str, float]:
    import pandas as pd
    from playwright.sync_api import sync_playwright

    env = server_env(demo, bytecode)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app" / "main.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    time.sleep(0.05)
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("server did not start")
            out["server_ready_s"] = round(time.perf_counter() - t0, 2)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("[data-testid='stDataFrame']", timeout=300_000)
            wait_ready(page)
            out["cold_start_s"] = round(time.perf_counter() - t0, 2)
            log(f"cold start {out['cold_start_s']} s (server answering after {out['server_ready_s']} s)")

            pred = pd.read_csv(demo / "run" / "predictions.csv", dtype={"case_id": str})
            ids = list(pred.sort_values("risk")["case_id"])
            page.goto(f"{url}/patient?patient={ids[0]}", wait_until="domcontentloaded")
            page.wait_for_selector("[data-testid='stMetricValue']", timeout=300_000)
            wait_ready(page)
            fresh = [pick_patient(page, c) for c in ids[1 : 1 + repeats]]
            cached = [pick_patient(page, c) for c in ids[0 : min(repeats, 3)]]
            out["patient_switch_ms"] = round(1000 * statistics.median(t[0] for t in fresh), 1)
            out["patient_switch_full_ms"] = round(1000 * statistics.median(t[1] for t in fresh), 1)
            out["patient_switch_cached_ms"] = round(1000 * statistics.median(t[0] for t in cached), 1)
            out["patient_switch_cached_full_ms"] = round(1000 * statistics.median(t[1] for t in cached), 1)
            log(
                f"patient switch: numbers {out['patient_switch_ms']} ms, whole page {out['patient_switch_full_ms']} ms; "
                f"cached {out['patient_switch_cached_ms']} / {out['patient_switch_cached_full_ms']} ms"
            )

            pages = ["", "patient", "stratification", "attention", "model"]
            for name in pages[2:]:
                page.goto(f"{url}/{name}", wait_until="domcontentloaded")
                wait_ready(page)
            out["rss_mb"] = rss_mb(proc.pid)
            log(f"rss after every page {out['rss_mb']} MB")

            tabs = []
            for name in pages:
                tab = browser.new_page(viewport={"width": 1300, "height": 900})
                tab.goto(f"{url}/{name}", wait_until="domcontentloaded")
                tabs.append(tab)
            for tab in tabs:
                wait_ready(tab)
            out["rss_mb_5_tabs"] = rss_mb(proc.pid)
            text = tabs[0].inner_text("[data-testid='stSidebar']")
            loads = [int(s) for s in text.split("model loads in this server:")[-1].split()[:1] if s.isdigit()]
            out["model_loads"] = loads[0] if loads else -1
            log(f"rss with 5 more tabs {out['rss_mb_5_tabs']} MB, model loads {out['model_loads']}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            browser.close()
    return out


def device_name() -> str:
    """Where the server's models run: ``cuda`` (with the GPU's name), ``mps`` or ``cpu``."""
    from deref.inference import resolve_device

    dev = resolve_device("auto")
    if dev.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument(
        "--demo", default=None, help="built demo folder (default assets/demo, else the test demo)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true", help="skip the figures that need Chromium")
    ap.add_argument(
        "--bytecode",
        action="store_true",
        help="let the server write and reuse bytecode (.cache/pycache-bench), as a deployed one does",
    )
    args = ap.parse_args()

    demo = find_demo(args.demo)
    import pandas as pd

    results: dict[str, object] = {
        "demo": str(demo),
        "demo_name": demo_name(demo),
        "patients": int(len(pd.read_csv(demo / "run" / "predictions.csv"))),
        "device": device_name(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    log(f"demo {results['demo_name']} ({results['patients']} patients), device {results['device']}")
    results.update(measure_overlay(args.repeats))
    log(f"overlay {results['overlay_ms']} ms")
    results.update(measure_export(demo, args.repeats))
    log(f"km export (pdf) {results['km_export_ms']} ms")
    if args.no_browser or not Path(CHROMIUM).exists():
        log(f"skipping the browser figures ({CHROMIUM} missing or --no-browser)")
    else:
        results["bytecode_cache"] = bool(args.bytecode or not os.environ.get("PYTHONDONTWRITEBYTECODE"))
        results.update(measure_browser(demo, args.repeats, args.bytecode))
    if args.json:
        print(json.dumps(results))
    else:
        for k, v in results.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
