"""Closed by default, in a real browser against a real OIDC provider on 127.0.0.1
(``oidc-provider-mock``): before sign-in only the sign-in screen renders; after it the Cohort page
with the user's name; sign-out returns to the sign-in; a user outside the allow-list is refused.
And the socket: the default server listens on the loopback address only (read from the OS), and a
non-loopback bind without sign-in refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deref.audit import read_audit
from tests.app.test_app_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    assert_no_error,
    free_port,
    start_server,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

USERS = [
    '{"sub": "alice", "email": "alice@example.org", "name": "Alice Smith"}',
    '{"sub": "mallory", "email": "mallory@elsewhere.net", "name": "Mallory"}',
]


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url}")


@pytest.fixture
def oidc_provider():
    pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock not installed")
    port = free_port()
    cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)]
    for u in USERS:
        cmd += ["--user-claims", u]
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "oidc-provider.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/.well-known/openid-configuration", proc, "oidc-provider-mock")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def signin_server(oidc_provider, small_demo, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) not installed")
    pytest.importorskip("authlib", reason="Authlib (st.login's OIDC client) not installed")
    port = free_port()
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://localhost:{port}/oauth2callback"\n'
        f'cookie_secret = "{os.urandom(16).hex()}"\n'
        'client_id = "deref-studio-test"\n'
        'client_secret = "test-secret"\n'
        f'server_metadata_url = "http://localhost:{oidc_provider}/.well-known/openid-configuration"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    audit = tmp_path / "audit.jsonl"
    env.update(
        DEREF_DEMO_DIR=str(small_demo),
        DEREF_RUNS_ROOT=str(small_demo / "no-runs-here"),
        DEREF_ALLOWED_USERS="alice@example.org",
        DEREF_AUDIT_LOG=str(audit),
        DEREF_NO_PREWARM="1",
    )
    proc = start_server(
        env, port, ARTIFACTS / "streamlit-signin.log", extra=["--secrets.files", str(secrets)]
    )
    try:
        yield f"http://localhost:{port}", audit
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _sign_in(page, sub: str) -> None:
    page.get_by_role("button", name="Sign in").click()
    page.locator(f'button[name="sub"][value="{sub}"]').click()


def test_sign_in_sign_out_and_the_allow_list(signin_server, small_demo):
    from playwright.sync_api import sync_playwright

    url, audit = signin_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "Sign in with your institution's account" in body
            assert "Patients" not in body and "Risk" not in body  # nothing of the cohort before login
            assert page.locator(".js-plotly-plot").count() == 0
            page.screenshot(path=str(ARTIFACTS / "signin.png"))

            _sign_in(page, "alice")
            wait_ready(page)
            body = page.inner_text("body")
            assert "Signed in as Alice Smith" in body
            assert "Risk against observed time" in body and "Patients" in body  # the Cohort page
            assert_no_error(page, "cohort after sign-in")
            page.screenshot(path=str(ARTIFACTS / "signed-in.png"))

            page.get_by_role("button", name="Sign out").click()
            # RP-initiated logout: the provider asks to end its session, then sends us back
            page.get_by_role("button", name="End session").click()
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            assert "Patients" not in page.inner_text("body")

            _sign_in(page, "mallory")
            page.get_by_text("Access refused").wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "mallory@elsewhere.net is not on this server's list of allowed users" in body
            assert "Patients" not in body and page.locator(".js-plotly-plot").count() == 0
        finally:
            browser.close()
    log = read_audit(audit)
    opened = log[log["action"] == "open_run"]
    assert list(opened["user"]) == ["alice@example.org"]  # mallory never reached a run


def _listening(pid: int) -> list[tuple[str, int]]:
    import psutil

    out = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                out.append((c.laddr.ip, c.laddr.port))
    return out


def test_the_default_server_listens_on_loopback_only(small_demo, tmp_path):
    """`streamlit run app/main.py` with the repository's config (no --server.address): the OS says
    the socket is bound to 127.0.0.1."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEREF_")}
    env.update(DEREF_DEMO_DIR=str(small_demo), DEREF_NO_PREWARM="1")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "app" / "main.py"),
        "--server.port",
        str(port),
    ]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, "streamlit")
        sockets = [s for s in _listening(proc.pid) if s[1] == port]
        assert sockets and {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_non_loopback_bind_without_sign_in_refuses_to_start(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "app.serve", "--address", "0.0.0.0", "--port", str(free_port())],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "DEREF_OPEN"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "refusing to serve DeReF Studio on 0.0.0.0 without sign-in" in r.stderr


def test_a_non_loopback_address_renders_only_the_refusal(app_env):
    """Bypassing the launcher (`streamlit run --server.address 0.0.0.0`): the app itself refuses to
    render anything else. (Checked in-process: tests never bind beyond 127.0.0.1.)"""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
        errors = [str(e.value) for e in at.error]
        assert len(errors) == 1 and "Refusing to serve" in errors[0] and "every network" not in errors[0]
        assert "0.0.0.0 without sign-in" in errors[0]
        assert not at.metric and not at.dataframe and not at.title
        os.environ["DEREF_OPEN"] = "1"  # the explicit switch: served open on purpose
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
        assert not at.error and at.metric
    finally:
        os.environ.pop("DEREF_OPEN", None)
        config.set_option("server.address", before)


def test_serve_accepts_loopback_and_an_explicit_open_switch():
    from app.serve import refusal

    nowhere = Path("/nonexistent/secrets.toml")
    assert refusal("127.0.0.1", nowhere, False) is None and refusal("::1", nowhere, False) is None
    assert refusal("0.0.0.0", nowhere, True) is None  # --open: on purpose
    assert "without sign-in" in refusal("10.1.2.3", nowhere, False)
