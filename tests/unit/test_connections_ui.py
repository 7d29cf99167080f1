"""The dashboard's connection helpers: the sidebar's grouping, "Live since" badges, deep links, console links."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dashboard import connections_ui, timefmt


def row(protocol: str, minute: int, target: str = "t") -> dict:
    return {"protocol": protocol, "started_at": f"2026-11-22T10:{minute:02d}:00+00:00", "target": target,
            "server_name": "pve1", "user_email": "olga@acme.test"}


def test_the_sidebar_groups_by_protocol_busiest_first_newest_first_and_cuts_at_top_n():
    rows = [row("term", 1), row("vnc", 2, "a"), row("vnc", 5, "b"), row("vnc", 3, "c"), row("ssh", 4)]
    groups = connections_ui.group_by_protocol(rows, top=2)
    assert [(p, n) for p, n, _ in groups] == [("vnc", 3), ("term", 1), ("ssh", 1)]
    assert [r["target"] for r in groups[0][2]] == ["b", "c"]
    assert connections_ui.group_by_protocol([]) == []


def test_live_since_reads_as_a_person_says_it():
    start = datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    text = timefmt.live_since(start.isoformat(), now=start + timedelta(minutes=12, seconds=5))
    assert text.startswith("Live since ") and text.endswith("(12 min)")
    assert timefmt.live_since(None) == "Live"
    assert timefmt.duration(3 * 3600 + 125) == "3 h 2 min" and timefmt.duration(2 * 86400 + 3600) == "2 d 1 h"


def test_deep_links_and_console_links(monkeypatch):
    assert connections_ui.connections_query("personal", "ssh") == {"filter": "active", "team": "personal",
                                                                   "protocol_id": "ssh"}
    assert connections_ui.connections_query(None, None, active=False) == {"filter": "all"}
    monkeypatch.delenv("PROXWATCH_GATEWAY_URL", raising=False)
    monkeypatch.setenv("PROXWATCH_GATEWAY_PORT", "9999")
    assert connections_ui.console_url("ab+c") == "http://127.0.0.1:9999/console?token=ab%2Bc"
    monkeypatch.setenv("PROXWATCH_GATEWAY_URL", "https://consoles.example.test/")
    assert connections_ui.console_url("x") == "https://consoles.example.test/console?token=x"
