"""The Guests and Connections pages through Streamlit's AppTest, against a real stand-in and a real,
seeded database: what each user sees is what the API (under RLS) lets them see."""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg.rows import dict_row
from streamlit.testing.v1 import AppTest

from tests.support.seed import PASSWORD, USERS, add_guest, open_session
from tests.support.streamlit import DASHBOARD, app_test, sign_in_env

PAGES = DASHBOARD / "views"


@pytest.fixture
def fleet(conn, teams):
    f = teams
    add_guest(conn, f.servers["pve1"], 100, "web")
    add_guest(conn, f.servers["pve1"], 101, "old", status="stopped")
    add_guest(conn, f.servers["pveg"], 300, "globex-db", node="g1")
    open_session(conn, f.servers["pve1"], f.users["olga"], "vnc", "web (qemu/100)")
    open_session(conn, f.servers["pve1"], f.users["alice"], "term", "ct (lxc/200)")
    open_session(conn, f.servers["pveg"], f.users["bob"], "ssh", "node g1")
    return f


def run_page(monkeypatch, standin, who: str, page: str, query: dict | None = None) -> AppTest:
    env = dict(sign_in_env(standin, (USERS[who][0], PASSWORD)), PROXWATCH_GATEWAY_URL="http://127.0.0.1:8765")
    app = app_test(monkeypatch, PAGES / page, env, query)
    assert not app.error, [e.value for e in app.error]
    return app


def shown(markdown: str) -> str:
    """Markdown as it reads (names and e-mails come escaped: dashboard/text.py)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def markdown(app) -> str:
    return shown("\n".join(m.value for m in app.markdown))


def test_the_connections_page_shows_active_sessions_of_the_users_teams_only(monkeypatch, standin, fleet):
    app = run_page(monkeypatch, standin, "alice", "2_Connections.py")
    text = markdown(app)
    assert "web (qemu/100)" in text and "ct (lxc/200)" in text and "node g1" not in text
    # The badges (Streamlit draws them as :color-badge[…] markdown).
    assert text.count("Live since") == 2 and "User: olga@acme.test]" in text
    assert [b.label for b in app.button if b.label == "Kill"] == ["Kill", "Kill"]   # alice is an admin
    # The sidebar groups the open sessions by protocol.
    assert "Active connections" in "\n".join(m.value for m in app.sidebar.markdown)


def test_deep_links_filter_and_a_viewer_cannot_kill(monkeypatch, standin, fleet):
    app = run_page(monkeypatch, standin, "victor", "2_Connections.py", {"protocol_id": "term", "filter": "active"})
    text = markdown(app)
    assert "ct (lxc/200)" in text and "web (qemu/100)" not in text
    assert not [b for b in app.button if b.label == "Kill"]
    every = run_page(monkeypatch, standin, "victor", "2_Connections.py", {"filter": "all"})
    assert "pve2" in markdown(every)    # an idle connection is listed in "All"


def test_an_admin_kills_a_session_from_the_page(monkeypatch, standin, fleet, db_url):
    app = run_page(monkeypatch, standin, "alice", "2_Connections.py")
    kill = [b for b in app.button if b.label == "Kill"][0]
    kill.click().run()
    assert app.success and "Session killed (killed by alice@acme.test)" in shown(app.success[0].value)
    with psycopg.connect(db_url, row_factory=dict_row) as c:
        statuses = sorted(r["status"] for r in c.execute("select status from public.connection_sessions"))
    assert statuses == ["killed", "open", "open"]


def test_the_guests_page_lists_guests_and_makes_a_console_link(monkeypatch, standin, fleet):
    app = run_page(monkeypatch, standin, "olga", "1_Guests.py")
    table = app.dataframe[0].value
    assert table["Name"].tolist() == ["web", "old"] and table["Status"].tolist() == ["● running", "○ stopped"]
