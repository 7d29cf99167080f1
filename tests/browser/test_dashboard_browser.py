"""The dashboard in a real browser: `streamlit run` as its own process against a real stand-in and a
real, seeded database, driven with Playwright in Debian's Chromium. Leaves a screenshot in
tests/browser/screenshots/ (gitignored) to look at."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.seeding import ALICE, seed_fleet
from worker.embedded.standin import StandIn

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "tests" / "browser" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def standin(db_url, pw_secrets):
    server = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    yield server
    server.stop()


@pytest.fixture
def dashboard(standin, db_url, secret_key):
    seed_fleet(db_url, secret_key)
    home = ROOT / ".home" / "browser-test"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"), "PYTHONPATH": str(ROOT),
           "SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": standin.anon_key,
           "PROXWATCH_DASHBOARD_EMAIL": ALICE[0], "PROXWATCH_DASHBOARD_PASSWORD": ALICE[1],
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log = open(home / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--client.toolbarMode", "minimal"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited: {(home / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.3)
    else:
        raise AssertionError("streamlit did not answer within 60 s")
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_the_dashboard_shows_the_fleet_and_a_chart_in_chromium(dashboard):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `apt-get install -y chromium` (make test does)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1700})
            page.goto(dashboard)
            table = page.locator('[data-testid="stTable"]')
            expect(table).to_be_visible(timeout=45_000)
            expect(table.get_by_text("pve-alpha", exact=True)).to_be_visible()
            expect(table.get_by_text("● online")).to_be_visible()
            expect(table.get_by_text("● offline")).to_be_visible()
            expect(table.get_by_text("insecure TLS (certificate not checked)")).to_be_visible()
            chart = page.locator('[data-testid="stVegaLiteChart"]')
            expect(chart.locator("canvas, svg").first).to_be_visible(timeout=30_000)
            box = chart.locator("canvas, svg").first.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 150
            expect(page.get_by_text("pve-alpha — last 24 hours")).to_be_visible()
            page.wait_for_timeout(800)  # let vega finish drawing before the picture
            page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
