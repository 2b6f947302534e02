"""The real dashboard in headless Chromium: server on 127.0.0.1, cohort table and plotly charts,
a patient deep link, the other pages, screenshots kept in test-artifacts/, no error text anywhere."""

from __future__ import annotations

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


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
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


@pytest.fixture
def server(small_demo: Path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    env["DEREF_DEMO_DIR"] = str(small_demo)
    env["DEREF_RUNS_ROOT"] = str(small_demo / "no-runs-here")
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
