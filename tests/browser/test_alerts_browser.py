"""The Alerts page in a real browser (`streamlit run` against a real stand-in and a seeded database,
Playwright in Debian's Chromium): the open-problems banner, the channel shown masked, the node
certificates with their days left, a new problem arriving live. Leaves tests/browser/screenshots/alerts.png to look at."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support.alerting import DASH_PASSWORD, seed_alerts
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, SHOTS
from tests.support.seed import ALICE
from tests.support.streamlit import streamlit_server
from worker import db
from worker.polling import PollResult, Recorder, utcnow
from worker.settings import load as load_settings


@pytest.fixture
def dashboard(standin, fleet, db_url, secret_key):
    seed_alerts(db_url, secret_key, fleet)
    with streamlit_server(standin, ALICE, "browser-alerts") as url:
        yield url


def test_the_alerts_page_in_chromium(dashboard, db_url, fleet):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1800})
            page.goto(dashboard + "/Alerts")
            expect(page.get_by_text("2 open problems:")).to_be_visible(timeout=45_000)
            expect(page.get_by_text("pve-beta offline", exact=False)).to_be_visible()
            expect(page.get_by_role("heading", name="Channels")).to_be_visible()
            expect(page.get_by_role("heading", name="Delivery log")).to_be_visible()
            page.wait_for_timeout(1500)  # the data grids draw on a canvas after they appear
            assert DASH_PASSWORD not in page.content()
            page.screenshot(path=str(SHOTS / "alerts.png"), full_page=True)
            # When pve-delta goes offline (the incident and its alert row), the page follows live
            # (its polls time out, written as the worker writes them)
            settings = load_settings()
            pool = db.make_pool(db_url, max_size=2)
            try:
                at = utcnow()
                Recorder(pool, settings).write([PollResult(
                    server_id=str(fleet.servers["pve-delta"]), scheduled_at=at + timedelta(seconds=i),
                    created_at=at + timedelta(seconds=i), success=False, response_time_ms=None,
                    error_kind="timeout", error_message="timed out") for i in range(settings.offline_after)])
            finally:
                pool.close()
            expect(page.get_by_text("3 open problems:")).to_be_visible(timeout=15_000)
            # The banner is on every page: the fleet too, with the silenced server marked
            page.goto(dashboard)
            expect(page.get_by_text("3 open problems:")).to_be_visible(timeout=45_000)
            expect(page.get_by_text("Silenced: pve-alpha until", exact=False)).to_be_visible()
        finally:
            browser.close()
