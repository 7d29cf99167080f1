"""Debian's Chromium through Playwright, headless; screenshots go to tests/browser/screenshots/
(gitignored) to look at."""

from __future__ import annotations

import contextlib
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.support.processes import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "tests" / "browser" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def check_chromium() -> None:
    """Fail (never skip) without Debian's chromium; make the screenshots' directory."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `apt-get install -y chromium` (make test does)"
    SHOTS.mkdir(parents=True, exist_ok=True)


def launch(playwright):
    """A headless Chromium of a running sync_playwright()."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def chromium():
    """Playwright with one headless Chromium, closed on exit."""
    check_chromium()
    with sync_playwright() as p:
        browser = launch(p)
        try:
            yield browser
        finally:
            browser.close()
