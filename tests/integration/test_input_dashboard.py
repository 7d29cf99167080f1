"""Names and messages people and PVE chose are shown literally on every page, never read as
Markdown: a server named `[x](http://evil)` is those characters, not a link (Streamlit AppTest
against a real stand-in and database; what Streamlit would render is checked with a CommonMark
parser). And a guest sync's error and skipped entries are on the Guests page."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit import config
from streamlit.testing.v1 import AppTest

from dashboard.text import plain
from tests.support.streamlit import html_tables
from worker import admin
from worker.crypto import Box
from worker.embedded.standin import StandIn

ROOT = Path(__file__).resolve().parents[2]
EMAIL, PASSWORD = "alice@acme.test", "alice-password-1"
EVIL_SERVER = "[x](http://evil.example)"
EVIL_ERROR = "**boom** [click](http://evil.example/err) `code` $x$ :red[red]"
EVIL_GUEST = "[g](http://evil.example/guest)"
TOKEN = "root@pam!monitor=00000000-0000-4000-8000-000000000000"
_md = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def rendered(markdown: str) -> tuple[str, str]:
    """(the HTML a CommonMark renderer makes of it, its visible text)."""
    out = _md.render(markdown)
    return out, html.unescape(re.sub(r"<[^>]+>", "", out)).strip()


def assert_literal(markdown: str, text: str) -> None:
    out, visible = rendered(markdown)
    assert "<a " not in out and "<strong>" not in out and "<code>" not in out, out
    assert text in visible, (text, visible)


@pytest.fixture
def seeded(conn, secret_key):
    admin.add_tenant(conn, "acme")
    admin.add_user(conn, EMAIL, PASSWORD, "acme", "admin")
    sid = str(admin.add_server(conn, Box(secret_key), admin.ServerInput(
        name=EVIL_SERVER, url="https://127.0.0.1:9", tenant="acme", token=TOKEN))["id"])
    conn.execute("update public.proxmox_servers set connection_status = 'offline', health_check_error = %s,"
                 " health_check_error_kind = 'http', last_health_check_at = now() where id = %s", (EVIL_ERROR, sid))
    conn.execute("insert into public.guests (server_id, tenant_id, vmid, guest_type, node, name, status)"
                 " select id, tenant_id, 100, 'qemu', 'pve1', %s, 'running' from public.proxmox_servers where id = %s",
                 (EVIL_GUEST, sid))
    conn.execute("insert into public.guest_syncs (server_id, tenant_id, last_attempt_at, error_kind, error_message,"
                 " skipped, skipped_detail) select id, tenant_id, now(), 'http', %s, 2, %s"
                 " from public.proxmox_servers where id = %s",
                 (EVIL_ERROR, "2 guest entries of PVE's answer skipped as malformed: qemu/0: vmid 0 is outside "
                              "100-999999999; [e](http://evil.example/skip): cpu 'lots' is not a number", sid))
    conn.commit()
    return sid


@pytest.fixture
def standin(db_url, pw_secrets):
    server = StandIn(db_url, pw_secrets["jwt_secret"]).start()
    yield server
    server.stop()


def run(monkeypatch, standin, path: str) -> AppTest:
    monkeypatch.setenv("SUPABASE_URL", standin.url)
    monkeypatch.setenv("SUPABASE_ANON_KEY", standin.anon_key)
    monkeypatch.setenv("PROXWATCH_DASHBOARD_EMAIL", EMAIL)
    monkeypatch.setenv("PROXWATCH_DASHBOARD_PASSWORD", PASSWORD)
    config.set_option("server.address", "127.0.0.1")  # as `proxwatch up` runs it: signed in by itself
    app = AppTest.from_file(str(ROOT / path), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def texts(app: AppTest) -> list[str]:
    """Every Markdown-rendering element's source: markdown, captions, alerts, headers, toasts."""
    out = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "subheader", "header", "toast"):
        out += [e.value for e in getattr(app, kind)]
    return out


def test_plain_escapes_every_markdown_construct():
    for text in (EVIL_SERVER, EVIL_ERROR, "# title", "1. one", "- item", "> quote", "a\nb\n\nc", "<b>x</b> &amp;",
                 "https://evil.example/raw", "line1\r\n\r\n[x](y)", "\\[x](y)", "~~gone~~", "| a | b |\n|---|---|"):
        assert_literal(plain(text), re.sub(r"[\r\n]+", " ", text))   # one line, every character kept


def test_a_server_named_like_a_link_is_shown_literally_on_the_fleet_page(monkeypatch, standin, seeded):
    app = run(monkeypatch, standin, "dashboard/app.py")
    shown = [t for t in texts(app) if "evil" in t]
    # The detail of the (only) server: its name in the header, PVE's error in a warning.
    assert any(EVIL_SERVER in rendered(t)[1] for t in shown), shown
    assert any(EVIL_ERROR in rendered(t)[1] for t in shown), shown
    for t in shown:
        out, _ = rendered(t)
        assert "<a " not in out and "<strong>" not in out, t
    # The fleet table (HTML, not Markdown: st.table would make the name a link and the error bold):
    # the cells read exactly the name and PVE's message, and the HTML has no element of theirs.
    [table] = html_tables(app)
    assert table["Server"].tolist() == [EVIL_SERVER] and table["Last error"].tolist() == [EVIL_ERROR]
    body = next(e.proto.body for e in app.get("html") if "pw-fleet" in e.proto.body)
    assert "<a " not in body and "<strong>" not in body and "<code>" not in body


def test_the_guests_page_shows_names_and_the_sync_error_and_skips_literally(monkeypatch, standin, seeded):
    app = run(monkeypatch, standin, "dashboard/views/1_Guests.py")
    shown = [t for t in texts(app) if "evil" in t or "skipped" in t]
    joined = " ".join(rendered(t)[1] for t in shown)
    assert f"{EVIL_SERVER}: the last guest sync failed — {EVIL_ERROR}" in joined
    assert "2 guest entries of PVE's answer skipped as malformed" in joined
    assert "[e](http://evil.example/skip)" in joined
    for t in shown:
        out, _ = rendered(t)
        assert "<a " not in out and "<strong>" not in out and "<code>" not in out, t
    # The table cells are plain text already.
    table = app.dataframe[0].value
    assert table["Name"].tolist() == [EVIL_GUEST] and table["Server"].tolist() == [EVIL_SERVER]


def test_the_guests_page_shows_a_failed_sync_of_a_server_without_guests(monkeypatch, standin, seeded, conn):
    conn.execute("delete from public.guests")
    conn.commit()
    app = run(monkeypatch, standin, "dashboard/views/1_Guests.py")
    assert any("the last guest sync failed" in w.value for w in app.warning)
    assert any("No guests yet" in i.value for i in app.info)


def test_the_operations_table_shows_a_servers_name_and_a_result_literally(monkeypatch, standin, seeded, conn):
    from worker import operations

    # Given a failed operation of the server named like a link, whose error came with Markdown in it
    op = operations.enqueue(conn, seeded, "service_restart", {"service": "pvedaemon"})["operationId"]
    conn.execute("update active_operations set status = 'failed', completed_at = now(), error = %s where id = %s",
                 (EVIL_ERROR, op))
    conn.commit()
    app = run(monkeypatch, standin, "dashboard/views/3_Operations.py")
    # Then the history's cells read exactly those characters, and the HTML has no element of theirs
    [history] = html_tables(app)
    assert history["Server"].tolist() == [EVIL_SERVER] and history["Result"].tolist() == [EVIL_ERROR]
    body = app.get("html")[0].proto.body
    assert "<a " not in body and "<strong>" not in body and "<code>" not in body
