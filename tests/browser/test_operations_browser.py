"""Operations in a real browser, on the whole running system: `streamlit run` as its own process,
the stand-in (RPC, Auth, Realtime), the scheduler and the dramatiq worker as subprocesses, a PVE over
HTTPS, Debian's Chromium through Playwright. A restart started in one tab is seen running in the
other, live, and both see it finish. Screenshots land in tests/browser/screenshots/ (gitignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, SHOTS
from tests.support.seed import TOKEN
from tests.support.streamlit import streamlit_server
from worker import admin

ADMIN = ("ada@acme.test", "ada-password-12")


@pytest.fixture
def system(standin, db_url, conn, box, fingerprint, opspve, procs):
    """acme with pve1 (the fake PVE), the admin signed in automatically; worker, scheduler, dashboard."""
    admin.add_tenant(conn, "acme")
    admin.add_user(conn, ADMIN[0], ADMIN[1], "acme", "admin")
    admin.add_server(conn, box, admin.ServerInput(name="pve1", url=opspve.url, token=TOKEN, fingerprint=fingerprint,
                                                  tenant="acme"))
    procs.scheduler()
    procs.worker()
    with streamlit_server(standin, ADMIN, "browser-ops-test") as url:
        yield url


def test_a_restart_started_in_one_tab_is_seen_running_in_the_other(system, opspve, conn):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `apt-get install -y chromium` (make test does)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    opspve.restart_secs = 150  # 15 s here: long enough to watch from both tabs
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1500})
            first, second = context.new_page(), context.new_page()
            for page in (first, second):
                page.goto(system)
                expect(page.get_by_role("button", name="Restart Service")).to_be_visible(timeout=60_000)
                expect(page.get_by_role("button", name="Restart Service")).to_be_enabled()

            # When the restart is started in the first tab
            first.get_by_role("button", name="Restart Service").click()
            running = first.get_by_role("button", name="Restarting…")
            expect(running).to_be_visible(timeout=20_000)
            expect(running).to_be_disabled()

            # Then the second tab, untouched, shows it running too: disabled, with the time remaining
            other = second.get_by_role("button", name="Restarting…")
            expect(other).to_be_visible(timeout=20_000)
            expect(other).to_be_disabled()
            expect(other).to_contain_text("remaining")
            expect(second.get_by_text("Restarting pveproxy on pve1")).to_be_visible(timeout=20_000)
            second.wait_for_timeout(500)
            second.screenshot(path=str(SHOTS / "operations_running_other_tab.png"), full_page=True)
            first.screenshot(path=str(SHOTS / "operations_running.png"), full_page=True)

            # And both see it finish: the result shown, the button back
            for page in (second, first):
                expect(page.get_by_text("pveproxy on pve1 restarted in")).to_be_visible(timeout=90_000)
                expect(page.get_by_role("button", name="Restart Service")).to_be_enabled()
            second.screenshot(path=str(SHOTS / "operations_done.png"), full_page=True)

            # The Operations page lists it with its result
            second.goto(f"{system}/Operations")
            history = second.locator('table.pw-table')
            expect(history).to_be_visible(timeout=45_000)
            expect(history.get_by_text("● completed")).to_be_visible()
            expect(history.get_by_text("pveproxy on pve1", exact=True)).to_be_visible()
            second.wait_for_timeout(500)
            second.screenshot(path=str(SHOTS / "operations_page.png"), full_page=True)
        finally:
            browser.close()
    conn.commit()
    rows = conn.execute("select status, progress from active_operations").fetchall()
    assert rows == [{"status": "completed", "progress": 100}]
