"""Console pages and the Connections page in a real browser (Playwright, Debian's Chromium):
noVNC drawing a fake PVE guest's screen through the gateway, xterm.js running `echo hi` in a real
SSH shell through the gateway, and the dashboard's Connections page with live sessions. Leaves
screenshots in tests/browser/screenshots/ (gitignored) to look at."""

from __future__ import annotations

import time

import psycopg
import pytest
from playwright.sync_api import expect
from psycopg.rows import dict_row

from tests.support.browser import SHOTS
from tests.support.gateway import make_gateway
from tests.support.seed import PASSWORD, USERS, add_guest, add_ssh_access, call, open_session, seed_teams, sync_guests
from tests.support.streamlit import streamlit_server
from worker import db
from worker.crypto import Box
from worker.embedded.demo import demo_screen


@pytest.fixture
def world(db_url, secret_key, pve, fingerprint, conn, uconn):
    """The fake PVE (one VM with a 320×200 screen), team acme with it as pve1, guests synced, a gateway."""
    vm = pve.add_vm(100, "web", status="running")
    vm.screen = demo_screen(320, 200)
    fleet = seed_teams(conn, secret_key, servers={"pve1": ("acme", pve.url)}, fingerprint=fingerprint)
    conn.commit()
    pool = db.make_pool(db_url, min_size=1, max_size=2)
    try:
        sync_guests(pool, Box(secret_key), fleet.servers["pve1"])
    finally:
        pool.close()
    gw = make_gateway(db_url, secret_key)
    yield fleet, gw, uconn
    gw.stop()


def link(uconn, fleet, protocol, vmid=None, node=None) -> str:
    return call(uconn, fleet.users["olga"], "select public.request_console(%s, %s, %s, %s) as r",
                (fleet.servers["pve1"], protocol, vmid, node), many=False)["r"]["token"]


def test_novnc_draws_the_guest_screen_through_the_gateway(browser, world):
    fleet, gw, uconn = world
    page = browser.new_page(viewport={"width": 900, "height": 560})
    page.goto(f"{gw.url}/console?token={link(uconn, fleet, 'vnc', 100)}")
    expect(page.locator("body[data-connected='1']")).to_have_count(1, timeout=30_000)
    # The framebuffer arrived and was drawn: the canvas holds the gradient, not a blank screen.
    # The framebuffer arrived and was drawn: noVNC's canvas (or, once the fake PVE has ended the
    # console, the last picture the page keeps) holds the gradient, not a blank screen.
    count_lit = """() => {
        let c = document.querySelector('#screen canvas');
        const img = document.getElementById('last-frame');
        if (!c && img && img.complete && img.naturalWidth) {
            c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
            c.getContext('2d').drawImage(img, 0, 0);
        }
        if (!c) return {w: 0, h: 0, lit: 0};
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 60) lit++; }
        return {w: c.width, h: c.height, lit};
    }"""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        drawn = page.evaluate(count_lit)
        if drawn["lit"]:
            break
        page.wait_for_timeout(100)
    page.screenshot(path=str(SHOTS / "console_vnc.png"))
    assert (drawn["w"], drawn["h"]) == (320, 200) and drawn["lit"] > 320 * 200 * 0.8
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / "console_vnc.png"))


def test_xterm_runs_echo_hi_in_a_real_ssh_shell_through_the_gateway(browser, world, sshd, secret_key, conn):
    fleet, gw, uconn = world
    add_ssh_access(conn, secret_key, fleet.servers["pve1"], sshd, sshd["host_key"])
    page = browser.new_page(viewport={"width": 900, "height": 520})
    page.goto(f"{gw.url}/console?token={link(uconn, fleet, 'ssh', node='pve1')}")
    expect(page.locator("body[data-connected='1']")).to_have_count(1, timeout=30_000)
    page.wait_for_timeout(800)   # the login banner and prompt
    page.keyboard.type("echo hi")
    page.keyboard.press("Enter")
    screen_text = """() => { const b = window.proxwatchConsole.buffer.active; const out = [];
        for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true)); return out; }"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = page.evaluate(screen_text)
        if "hi" in lines:
            break
        page.wait_for_timeout(100)
    assert "hi" in lines, lines
    assert any(line.endswith("echo hi") for line in lines)
    page.screenshot(path=str(SHOTS / "console_ssh.png"))


def test_a_used_link_shows_a_sentence_in_the_browser(browser, world):
    fleet, gw, uconn = world
    token = link(uconn, fleet, "vnc", 100)
    page = browser.new_page()
    page.goto(f"{gw.url}/console?token={token}")
    expect(page.locator("body[data-connected='1']")).to_have_count(1, timeout=30_000)
    other = browser.new_page()
    other.goto(f"{gw.url}/console?token={token}")
    expect(other.get_by_role("alert")).to_have_text(
        "this console link was used already: open the console again from the dashboard")


@pytest.fixture
def dashboard(db_url, conn, teams, standin):
    fleet = teams
    add_guest(conn, fleet.servers["pve1"], 100, "web")
    open_session(conn, fleet.servers["pve1"], fleet.users["olga"], "vnc", "web (qemu/100)", "192.0.2.10")
    open_session(conn, fleet.servers["pve1"], fleet.users["alice"], "term", "dns (lxc/200)", "192.0.2.11")
    open_session(conn, fleet.servers["pve2"], fleet.users["olga"], "ssh", "node pve1", "198.51.100.4")
    with streamlit_server(standin, (USERS["alice"][0], PASSWORD), "browser-test-consoles") as url:
        yield url, fleet, db_url


def test_the_connections_page_shows_live_sessions_and_follows_a_kill(browser, dashboard):
    url, fleet, db_url = dashboard
    page = browser.new_page(viewport={"width": 1440, "height": 1100})
    page.goto(f"{url}/Connections?filter=active")
    main = page.get_by_test_id("stMainBlockContainer")
    expect(main.get_by_text("web (qemu/100)", exact=True)).to_be_visible(timeout=45_000)
    expect(page.get_by_text("User: olga@acme.test").first).to_be_visible()
    expect(page.get_by_text("Live since").first).to_be_visible()
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar.get_by_text("VNC (1)")).to_be_visible(timeout=20_000)
    page.wait_for_timeout(800)
    page.screenshot(path=str(SHOTS / "connections.png"), full_page=True)
    # A session closed elsewhere disappears without a reload (Realtime).
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        sid = conn.execute("select id from public.connection_sessions where protocol = 'ssh'").fetchone()["id"]
        conn.execute(db.q("close_session"), {"id": sid, "reason": "the browser closed the console"})
        conn.commit()
    expect(page.get_by_text("node pve1")).to_have_count(0, timeout=15_000)
