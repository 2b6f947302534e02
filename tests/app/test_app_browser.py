"""The real dashboard in headless Chromium: server on 127.0.0.1, cohort table and plotly charts,
a patient deep link, the other pages, screenshots kept in test-artifacts/, no error text anywhere."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
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
#: Text that must never be on a page: a traceback or an exception's name (KeyError, ...).
ERROR_TEXT = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], port: int, log_path: Path, extra: list[str] = (), address: str = "127.0.0.1"
) -> subprocess.Popen:
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
        address,
        "--browser.gatherUsageStats",
        "false",
        *extra,
    ]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"streamlit did not answer on port {port}: {log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def serve(**deref_env: str):
    """A Streamlit server of ``app/main.py`` on a free port of 127.0.0.1 with only ``deref_env`` of
    the ``DEREF_*`` variables set; yields its address, stops it afterwards."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    env["DEREF_PRECOMPUTE_MAX"] = "0"  # no background precomputation competing with the test's clicks
    env.update(deref_env)
    port = free_port()
    proc = start_server(env, port, ARTIFACTS / "streamlit-server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def server(small_demo: Path):
    with serve(DEREF_DEMO_DIR=str(small_demo), DEREF_RUNS_ROOT=str(small_demo / "no-runs-here")) as url:
        yield url


@pytest.fixture
def mri_server(small_mri_demo: Path):
    """The small MRI + WSI demo's run, served through ``DEREF_RUN`` (no genomic demo anywhere)."""
    with serve(
        DEREF_RUN=str(small_mri_demo / "run"),
        DEREF_DEMO_DIR=str(small_mri_demo / "no-demo-here"),
        DEREF_MRI_DEMO_DIR=str(small_mri_demo),
        DEREF_RUNS_ROOT=str(small_mri_demo / "no-runs-here"),
    ) as url:
        yield url


def wait_ready(page, timeout_ms: int = 120_000) -> None:
    """Until the script run is over (no running indicator) and at least one plotly chart is drawn."""
    page.wait_for_selector(".js-plotly-plot", timeout=timeout_ms)
    # main.py writes this marker after the page's script is done
    page.wait_for_selector(".deref-run-done", state="attached", timeout=timeout_ms)
    page.wait_for_timeout(500)


def assert_no_error(page, name: str) -> None:
    text = page.inner_text("body")
    assert not page.locator("[data-testid='stException']").count(), f"{name}: an exception box is shown"
    bad = ERROR_TEXT.search(text)
    assert bad is None, f"{name}: error text {bad.group(0)!r} on the page"
    assert not page.locator("[data-testid='stAlertContentError']").count(), (
        f"{name}: an error message is shown"
    )


# Where the marker of patch j of the Attention overlay is on the screen (plotly's decoded data).
FIND_PATCH = """j => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(
      g => g._fullData && g._fullData.some(t => t.type === 'image'));
  if (!gd) return null;
  const tr = gd._fullData.find(t => t.type === 'scattergl');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, bb = gd.getBoundingClientRect();
  return {n: tr.x.length, x: bb.left + xa._offset + xa.l2p(tr.x[j]), y: bb.top + ya._offset + ya.l2p(tr.y[j])};
}"""


def click_a_patch(page) -> None:
    """A click on the slide opens that patch: the inspect panel names it and the rank box follows."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some("
        "g => g._fullData && g._fullData.some(t => t.type === 'image'))",
        timeout=60_000,
    )
    shown = int(re.search(r"patch (\d+) · score", page.inner_text("body")).group(1))  # rank 1
    j = 1 if shown == 0 else 0
    target = page.evaluate(FIND_PATCH, j)
    assert target is not None and target["n"] >= 2
    page.mouse.move(target["x"], target["y"])
    page.wait_for_timeout(300)
    page.mouse.click(target["x"], target["y"])
    # the inspect panel's caption (the hover label reads "patch j · score" too, so wait for the rank box)
    page.wait_for_function(
        "() => { const b = document.querySelector(\"[data-testid='stNumberInput'] input\"); return b && b.value !== '1'; }",
        timeout=30_000,
    )
    wait_ready(page)
    assert f"patch {j} · score" in " ".join(
        page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
    )
    box = page.locator("[data-testid='stNumberInput'] input")
    assert box.count() == 1 and int(box.input_value()) > 1  # the rank box follows the click
    page.screenshot(path=str(ARTIFACTS / "attention-clicked.png"), full_page=True)
    assert_no_error(page, "attention after a click")


def test_dashboard_in_a_real_browser(server, small_demo):
    from playwright.sync_api import sync_playwright

    pred = pd.read_csv(small_demo / "run" / "predictions.csv", dtype={"case_id": str})
    case = pred["case_id"].iloc[3]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            page.goto(server, wait_until="domcontentloaded")
            page.wait_for_selector("[data-testid='stDataFrame']", timeout=120_000)
            wait_ready(page)
            assert page.get_by_role("heading", name="Cohort").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "cohort.png"), full_page=True)
            assert_no_error(page, "cohort")

            page.goto(f"{server}/?patient={case}", wait_until="domcontentloaded")
            page.wait_for_selector("[data-testid='stMetric']", timeout=120_000)
            wait_ready(page)
            assert case in page.inner_text("body")
            assert page.locator(".js-plotly-plot").count() >= 3
            page.screenshot(path=str(ARTIFACTS / "patient.png"), full_page=True)
            assert_no_error(page, "patient")

            # the Model page (cohort-wide features, t-SNE) is covered by AppTest; set
            # DEREF_BROWSER_ALL_PAGES=1 to draw and screenshot it here too
            pages = ("stratification", "attention") + (
                ("model",) if os.environ.get("DEREF_BROWSER_ALL_PAGES") else ()
            )
            for name in pages:
                page.goto(f"{server}/{name}", wait_until="domcontentloaded")
                wait_ready(page)
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
                assert_no_error(page, name)
                if name == "attention":
                    click_a_patch(page)

            page.goto(f"{server}/?patient=NO-SUCH-PATIENT", wait_until="domcontentloaded")
            wait_ready(page)
            assert "NO-SUCH-PATIENT" in page.inner_text("body")
            assert_no_error(page, "unknown patient")
        finally:
            browser.close()


# ----------------------------------------------------------------------------- the MRI viewer
#: The MRI viewer's figure (its click grids are the traces named after the panels): the overlay
#: heatmaps (how many of their values are not NaN), the crosshair shapes, where the drawn
#: heatmaps are, and the screen pixel of click-grid point ``j`` of panel ``panel`` (null: none).
MRI_STATE = """([panel, j]) => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(
      g => g._fullData && g._fullData.some(t => t.type === 'scatter' && t.name === 'axial'));
  if (!gd) return null;
  const finite = z => { let n = 0, ok = 0;
    const walk = a => { for (const v of a) { if (v !== null && typeof v === 'object') walk(v);
                                             else { n++; if (v !== null && !Number.isNaN(v)) ok++; } } };
    walk(z || []); return [n, ok]; };
  const overlays = gd._fullData.filter(t => t.type === 'heatmap' && / overlay$/.test(t.name)).map(t => {
    const [n, ok] = finite(t.z);
    return {name: t.name, visible: t.visible, opacity: t.opacity, n, finite: ok}; });
  const shapes = {};
  for (const s of gd._fullLayout.shapes || []) if (/ crosshair /.test(s.name)) shapes[s.name] = [s.x0, s.y0];
  const grid = gd._fullData.find(t => t.type === 'scatter' && t.name === panel);
  let target = null;
  if (grid && j !== null) {
    const xa = gd._fullLayout[grid.xaxis.replace('x', 'xaxis')], ya = gd._fullLayout[grid.yaxis.replace('y', 'yaxis')];
    const bb = gd.getBoundingClientRect();
    target = {x: bb.left + xa._offset + xa.d2p(grid.x[j]), y: bb.top + ya._offset + ya.d2p(grid.y[j]),
              gx: Number(grid.x[j]), gy: Number(grid.y[j])};
  }
  return {overlays, shapes, target, images: gd.querySelectorAll('.hm image').length,
          grid: grid ? {x: Array.from(grid.x, Number), y: Array.from(grid.y, Number)} : null};
}"""
#: The voxel axes (i, j, k = 0, 1, 2) along each panel's screen x and y, written out here (not read
#: from deref.figures.mri) so that the test checks the viewer's geometry.
PANEL_AXES = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}
CROSSHAIR = re.compile(r"Crosshair at voxel \((\d+), (\d+), (\d+)\) of the (\d+)³ ROI cube")


def mri_caption(page) -> tuple[tuple[int, int, int], int]:
    """The crosshair voxel and the cube side the viewer's caption states."""
    text = " ".join(page.locator("[data-testid='stCaptionContainer']").all_inner_texts())
    m = CROSSHAIR.search(text)
    assert m is not None, f"no crosshair caption under the MRI viewer: {text[:300]!r}"
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))), int(m.group(4))


def far_grid_point(grid: dict, cx: int, cy: int, side: int) -> int:
    """A click-grid point away from the crosshair lines and from the panel's edges (where the
    orientation letters are): the index maximising its distance to both lines."""
    best, best_d = -1, -1
    for j, (x, y) in enumerate(zip(grid["x"], grid["y"])):
        if not (2 <= x <= side - 3 and 2 <= y <= side - 3):
            continue
        d = min(abs(x - cx), abs(y - cy))
        if d > best_d:
            best, best_d = j, d
    assert best >= 0 and best_d >= 2, f"no click-grid point away from the crosshair ({cx}, {cy})"
    return best


def assert_crosshair(shapes: dict, point: tuple[int, int, int]) -> None:
    """Every panel's two crosshair lines go through ``point`` (on that panel's screen axes)."""
    want = {}
    for name, (ax_x, ax_y) in PANEL_AXES.items():
        want[f"{name} crosshair x"] = point[ax_x]
        want[f"{name} crosshair y"] = point[ax_y]
    got = {k: v[0] if k.endswith(" x") else v[1] for k, v in shapes.items()}
    assert got == want, f"crosshair lines {got}, expected through {point}: {want}"


def click_mri_panel(page, panel: str, point: tuple[int, int, int], side: int) -> tuple[int, int, int]:
    """Click ``panel`` at a click-grid point away from the crosshair (its pixel from plotly's axes);
    the caption and the crosshair lines must move to the voxel under it. Returns that voxel."""
    ax_x, ax_y = PANEL_AXES[panel]
    grid = page.evaluate(MRI_STATE, [panel, None])["grid"]
    target = page.evaluate(MRI_STATE, [panel, far_grid_point(grid, point[ax_x], point[ax_y], side)])["target"]
    expected = list(point)
    expected[ax_x], expected[ax_y] = target["gx"], target["gy"]
    expected = tuple(expected)
    assert expected != point and expected[ax_x] != point[ax_x] and expected[ax_y] != point[ax_y]
    page.mouse.move(target["x"], target["y"])
    page.wait_for_timeout(300)
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function(
        "w => [...document.querySelectorAll(\"[data-testid='stCaptionContainer']\")]"
        ".some(c => c.innerText.includes(w))",
        arg="Crosshair at voxel ({}, {}, {})".format(*expected),
        timeout=30_000,
    )
    page.wait_for_timeout(500)
    assert mri_caption(page)[0] == expected
    assert_crosshair(page.evaluate(MRI_STATE, [panel, None])["shapes"], expected)
    return expected


def test_mri_viewer_click_moves_the_crosshair(mri_server):
    """Attention page of the MRI + WSI run: the voxel overlay is drawn, a click on the axial and
    then on the sagittal panel moves the crosshair to the voxel under it (caption and the six
    crosshair lines; the sagittal click keeps the axial click's i), no error anywhere."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2600})
            page.goto(f"{mri_server}/attention", wait_until="domcontentloaded")
            wait_ready(page)
            page.wait_for_function(f"() => ({MRI_STATE})(['axial', null]) !== null", timeout=120_000)
            page.wait_for_timeout(500)
            assert_no_error(page, "attention (MRI run)")
            state = page.evaluate(MRI_STATE, ["axial", None])
            overlays = {o["name"]: o for o in state["overlays"]}
            assert set(overlays) == {"axial overlay", "coronal overlay", "sagittal overlay"}
            assert all(o["visible"] is True and o["opacity"] == 0.5 for o in overlays.values())
            assert sum(o["finite"] for o in overlays.values()) > 0, f"the overlay is all NaN: {overlays}"
            assert state["images"] >= 6, f"{state['images']} heatmaps drawn, expected 3 images + 3 overlays"
            point, side = mri_caption(page)
            assert_crosshair(state["shapes"], point)
            page.screenshot(path=str(ARTIFACTS / "mri-viewer.png"), full_page=True)

            moved = click_mri_panel(page, "axial", point, side)
            assert moved[2] == point[2]  # the axial slice (k) stays
            again = click_mri_panel(page, "sagittal", moved, side)
            assert again[0] == moved[0]  # the sagittal slice (i) stays
            state = page.evaluate(MRI_STATE, ["axial", None])
            assert sum(o["finite"] for o in state["overlays"]) > 0
            page.screenshot(path=str(ARTIFACTS / "mri-viewer-clicked.png"), full_page=True)
            assert_no_error(page, "attention (MRI run) after two clicks")
        finally:
            browser.close()


# ----------------------------------------------------------------------------- the Compare page
@pytest.fixture
def compare_server(small_demo: Path, compare_root: Path, tmp_path: Path):
    """A demo folder whose ``comparison/`` holds the demo run and two baselines on its folds."""
    demo = tmp_path / "demo"
    (demo / "comparison").mkdir(parents=True)
    for name in ("cohort", "run", "demo_summary.json"):
        if (small_demo / name).exists():
            (demo / name).symlink_to(small_demo / name)
    (demo / "comparison" / "deref").symlink_to(small_demo / "run")
    for name in ("snn-3", "snn-1"):
        (demo / "comparison" / name).symlink_to(compare_root / name)
    # the symlinks lead to the shared demo and baselines: those folders are shared (data roots)
    roots = os.pathsep.join(str(p) for p in (demo, small_demo, compare_root))
    with serve(
        DEREF_DEMO_DIR=str(demo), DEREF_RUNS_ROOT=str(demo / "no-runs-here"), DEREF_DATA_ROOTS=roots
    ) as url:
        yield url


#: The screen pixel of the first "largest disagreement" point of the Compare page's scatter, and
#: its case id (null when the figure is not drawn yet).
SCATTER_POINT = """() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(
      g => g._fullData && g._fullData.some(t => t.name === 'largest disagreement'));
  if (!gd) return null;
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.find(t => t.name === 'largest disagreement');
  const xa = gd._fullLayout[t.xaxis.replace('x', 'xaxis')], ya = gd._fullLayout[t.yaxis.replace('y', 'yaxis')];
  const bb = gd.getBoundingClientRect();
  return {x: bb.left + xa._offset + xa.d2p(t.x[0]), y: bb.top + ya._offset + ya.d2p(t.y[0]), id: t.customdata[0]};
}"""


def test_compare_page_in_a_real_browser(compare_server):
    """The demo comparison is drawn (table, forest plot, per-fold, KM small multiples, scatter) and
    a click on the patient the runs disagree on most opens that patient's page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 3200})
            page.goto(f"{compare_server}/compare", wait_until="domcontentloaded")
            wait_ready(page)
            page.wait_for_function(f"({SCATTER_POINT})() !== null", timeout=120_000)
            assert page.locator(".js-plotly-plot").count() >= 4
            assert "paired by patient and fold" in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
            assert_no_error(page, "compare")
            point = page.evaluate(SCATTER_POINT)
            page.mouse.click(point["x"], point["y"])
            page.get_by_role("heading", name="Patient").first.wait_for(timeout=120_000)
            page.wait_for_selector("[data-testid='stMetric']", timeout=120_000)
            wait_ready(page)
            assert point["id"] in page.inner_text("body")
            assert_no_error(page, "patient from compare")
        finally:
            browser.close()
