"""Concurrent users of one dashboard server (issue 17). Printed, never asserted.

    python benchmarks/bench_load.py [--json] [--demo DIR] [--sessions 12] [--seconds 60]

Starts ``streamlit run app/main.py`` on 127.0.0.1 (the demo already built), then opens
``--sessions`` browser contexts at once in headless Chromium (Playwright, one browser), each on a
patient of its own (a deep link), and for ``--seconds`` each session walks
Patient -> Attention -> Stratification -> Patient (its next patient) through the app's own
navigation and patient picker. Every step waits until the page is ready (the script run is over and
its figures are drawn) and checks that the Patient and Attention pages show **that session's**
patient (no state leaks between sessions).

Figures (targets from the issue in brackets): ``p50_s`` / ``p95_s`` / ``max_s`` page-ready time
over every step of every session [p95 <= 3 s on 2 cores]; ``peak_rss_mb`` of the server and its
children, sampled every 0.2 s [<= 1.2 GB]; ``errors`` (an error box, an exception, a timeout or a
leaked patient) [0]; ``model_loads`` (read from the sidebar) [1]; ``steps``; ``sessions``.
With ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_app import CHROMIUM, CHROMIUM_ARGS, find_demo, free_port, log, rss_mb  # noqa: E402

READY_JS = """(old) => {
    const m = document.querySelector('.deref-run-done');
    if (!m || Number(m.dataset.run) <= old) return false;
    return !document.querySelector('[data-testid="stStatusWidget"]');
}"""


def start(demo: Path, port: int, log_path: Path, env_extra: dict | None = None) -> subprocess.Popen:
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    env.update(DEREF_DEMO_DIR=str(demo), DEREF_RUNS_ROOT=str(demo / "no-runs-here"), **(env_extra or {}))
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py")]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("streamlit did not start")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except Exception:  # noqa: BLE001 - the process may be exiting
                pass
            time.sleep(0.2)


async def _run_number(page) -> int:
    m = page.locator(".deref-run-done").first
    try:
        return int(await m.get_attribute("data-run", timeout=1000) or 0)
    except Exception:  # noqa: BLE001 - not drawn yet
        return 0


async def _ready(page, before: int, timeout_ms: int) -> None:
    await page.wait_for_function(READY_JS, arg=before, timeout=timeout_ms)
    await page.wait_for_selector(".js-plotly-plot", timeout=timeout_ms)


async def _shown_patient(page) -> str:
    """The text of the main area's first selector (the patient picker): its label, the shown
    option and any input's value."""
    box = page.locator("[data-testid='stMain'] [data-testid='stSelectbox']").first
    return await box.evaluate(
        "(el) => el.innerText + ' ' + Array.from(el.querySelectorAll('input')).map(i => i.value).join(' ')"
        " + ' ' + Array.from(el.querySelectorAll('[title]')).map(e => e.title).join(' ')",
        timeout=5000,
    )


class Session:
    def __init__(self, index: int, url: str, cases: list[str]) -> None:
        self.index, self.url, self.cases = index, url, cases
        self.times: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.model_status = ""  # the sidebar's text at the end of the walk (model loads)

    async def step(self, page, name: str, action, case: str | None, timeout_ms: int) -> None:
        before = await _run_number(page)
        t0 = time.perf_counter()
        try:
            await action()
            await _ready(page, before, timeout_ms)
        except Exception as exc:  # noqa: BLE001 - counted, the walk goes on
            self.errors.append(f"session {self.index} {name}: {type(exc).__name__}: {str(exc)[:120]}")
            return
        self.times.append((name, time.perf_counter() - t0))
        boxes = page.locator("[data-testid='stAlert'] [data-testid='stAlertContentError']")
        if await boxes.count():
            self.errors.append(
                f"session {self.index} {name}: error box: {(await boxes.first.inner_text())[:120]}"
            )
        if case is not None:
            shown = await _shown_patient(page)
            if case not in shown:
                self.errors.append(
                    f"session {self.index} {name}: shows {shown[:40]!r}, its patient is {case}"
                )

    async def walk(self, browser, seconds: float, timeout_ms: int) -> None:
        ctx = await browser.new_context(viewport={"width": 1400, "height": 1400})
        page = await ctx.new_page()
        case = self.cases[0]

        async def open_link():
            await page.goto(f"{self.url}/patient?patient={case}", wait_until="domcontentloaded")

        await self.step(page, "open patient", open_link, case, timeout_ms)
        deadline = time.monotonic() + seconds
        k = 0
        while time.monotonic() < deadline and len(self.errors) < 5:
            for name, link in (("attention", "Attention"), ("stratification", "Stratification")):

                async def nav(link=link):
                    await page.get_by_role("link", name=link).first.click()

                await self.step(page, name, nav, case if name == "attention" else None, timeout_ms)
            k += 1
            case = self.cases[k % len(self.cases)]

            async def back_and_pick(case=case):
                before = await _run_number(page)
                await page.get_by_role("link", name="Patient").first.click()
                await _ready(page, before, timeout_ms)
                box = page.locator("[data-testid='stMain'] [data-testid='stSelectbox']").first
                picked = await _run_number(page)
                await box.click()
                await page.keyboard.type(case)
                await page.keyboard.press("Enter")
                # the pick's own rerun: step() waits only for a rerun after `before`, which the
                # Patient page's already is (without this the check could read the old patient)
                await _ready(page, picked, timeout_ms)

            await self.step(page, "patient", back_and_pick, case, timeout_ms)
        self.model_status = await page.locator("[data-testid='stSidebar']").inner_text()
        await ctx.close()


async def _load(url: str, cases: list[str], sessions: int, seconds: float, timeout_ms: int) -> list[Session]:
    from playwright.async_api import async_playwright

    per = max(1, min(3, len(cases) // max(sessions, 1)))
    walkers = [
        Session(i, url, [cases[(i * per + j) % len(cases)] for j in range(per)]) for i in range(sessions)
    ]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*(w.walk(browser, seconds, timeout_ms) for w in walkers))
        finally:
            await browser.close()
    return walkers


def measure(demo: Path, sessions: int, seconds: float, timeout_s: float = 120, env_extra=None) -> dict:
    import pandas as pd

    cases = list(pd.read_csv(demo / "run" / "predictions.csv", dtype={"case_id": str})["case_id"])
    port = free_port()
    log_path = REPO / "test-artifacts" / "bench-load-server.log"
    log_path.parent.mkdir(exist_ok=True)
    proc = start(demo, port, log_path, env_extra)
    sampler = RssSampler(proc.pid)
    sampler.start()
    t0 = time.perf_counter()
    try:
        walkers = asyncio.run(
            _load(f"http://127.0.0.1:{port}", cases, sessions, seconds, int(timeout_s * 1000))
        )
    finally:
        sampler.stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    times = sorted(t for w in walkers for _, t in w.times)
    errors = [e for w in walkers for e in w.errors]
    loads = set()
    for w in walkers:
        text = w.model_status
        if "model loads in this server:" in text:
            loads.add(int(text.split("model loads in this server:")[1].split()[0].strip("*")))
    q = statistics.quantiles(times, n=20) if len(times) >= 2 else times * 19
    return {
        "sessions": sessions,
        "seconds": seconds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "steps": len(times),
        "p50_s": round(statistics.median(times), 3) if times else None,
        "p95_s": round(q[18], 3) if times else None,
        "max_s": round(times[-1], 3) if times else None,
        "by_page_p95_s": {
            name: round(sorted(t for w in walkers for n, t in w.times if n == name)[-1], 3)
            for name in {n for w in walkers for n, _ in w.times}
        },
        "peak_rss_mb": sampler.peak,
        "errors": len(errors),
        "error_examples": errors[:5],
        "model_loads": max(loads) if loads else None,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", help="a built demo folder (default: assets/demo, else the test demo)")
    ap.add_argument("--sessions", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(find_demo(args.demo), args.sessions, args.seconds)
    for k, v in res.items():
        log(f"{k}: {v}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
