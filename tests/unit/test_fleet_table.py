"""The fleet table at scale: search, filters, sort by raw values (numbers as numbers, no value last),
pages that clamp, the heartbeat strip, the uptime column over a chosen range, and the history CSVs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dashboard import charts, fleet_table, tables
from dashboard.fleet_table import Query


def row(i: int, name: str, status="online", tenant="north", ms=None, version="9.1.4") -> dict:
    return {"id": f"id-{i}", "name": name, "tenant_name": tenant, "connection_status": status,
            "avg_response_24h_ms": ms, "pve_version": version}


ROWS = [row(1, "fra-2", "offline", "south", None, "8.4.1"), row(2, "ams-10", "online", "north", 120, "9.1.4"),
        row(3, "ams-9", "degraded", "north", 15, "9.0.3"), row(4, "lon-1", "unknown", "south", None, None)]


def names(rows):
    return [r["name"] for r in rows]


def test_search_is_by_name_and_filters_combine():
    found, _, _ = fleet_table.select(ROWS, Query(search="AMS", sort="Server"))
    assert names(found) == ["ams-10", "ams-9"]
    found, _, _ = fleet_table.select(ROWS, Query(statuses=["offline", "unknown"], tenants=["south"], sort="Server"))
    assert names(found) == ["fra-2", "lon-1"]
    assert fleet_table.select(ROWS, Query(search="nope"))[0] == []


def test_sorting_uses_the_raw_values_and_puts_missing_ones_last_either_way():
    assert names(fleet_table.sort_rows(ROWS, "Avg latency")) == ["ams-9", "ams-10", "fra-2", "lon-1"]
    assert names(fleet_table.sort_rows(ROWS, "Avg latency", descending=True)) == ["ams-10", "ams-9", "fra-2", "lon-1"]
    assert names(fleet_table.sort_rows(ROWS, "Status")) == ["fra-2", "ams-9", "lon-1", "ams-10"]  # worst first
    assert names(fleet_table.sort_rows(ROWS, "PVE")) == ["fra-2", "ams-9", "ams-10", "lon-1"]  # 8.4 < 9.0 < 9.1
    with pytest.raises(ValueError, match="cannot sort by 'Colour'"):
        fleet_table.sort_rows(ROWS, "Colour")


def test_pages_clamp_to_the_pages_there_are():
    many = [row(i, f"pve-{i:04d}") for i in range(1, 121)]
    found, page_rows, page = fleet_table.select(many, Query(sort="Server", page=3, page_size=50))
    assert (len(found), names(page_rows)[0], len(page_rows), page) == (120, "pve-0101", 20, 3)
    _, page_rows, page = fleet_table.select(many, Query(sort="Server", page=9, page_size=50))
    assert page == 3 and len(page_rows) == 20
    assert fleet_table.showing(50, 50, 120, 120) == "Servers 51–100 of 120"
    assert fleet_table.showing(0, 12, 12, 1000) == "Servers 1–12 of 12 matching (1,000 in all)"
    assert fleet_table.settle_s(60) == 1.0 and fleet_table.settle_s(1000) == 5.0


def test_the_heartbeat_strip_is_oldest_first_and_grey_where_no_poll_was():
    cells = fleet_table.padded([{"ok": True}, {"ok": False}], 4)
    assert cells == [None, None, True, False]
    assert fleet_table.heartbeat_text(cells) == "last 2: 1 ok, 1 failed · latest failed"
    assert fleet_table.heartbeat_text([None] * 4) == "no polls yet"
    css = fleet_table.heartbeat_css(cells)
    assert css.count("#d1d5db") == 2 and css.index("#15803d") < css.index("#b91c1c")
    assert ";" not in css.split("linear-gradient(")[1].split(")")[0]  # one CSS declaration


def test_the_table_is_html_whose_cells_are_literal_text_with_status_colour_and_strip():
    rows = [{**ROWS[0], "name": "[x](http://evil.example) <b>&", "health_check_error": "**boom** <script>x</script>"},
            {**ROWS[1], "tls_mode": "insecure"}]
    cells = tables.fleet_rows(rows)
    strips = [[None, True, False], [True, True, True]]
    for cell, strip in zip(cells, strips):
        cell[fleet_table.HEARTBEAT_COLUMN] = fleet_table.heartbeat_text(strip)
    columns = ["Status", fleet_table.HEARTBEAT_COLUMN, "Server", "Connection", "Last error", "Uptime"]
    body = fleet_table.table_html(cells, columns, strips, {"Uptime": "Uptime 7 d"})
    # Every cell is the text, escaped: no element of the name's or the error's
    assert "<b>" not in body and "<script>" not in body and "<a " not in body
    assert "[x](http://evil.example) &lt;b&gt;&amp;" in body and "**boom** &lt;script&gt;x&lt;/script&gt;" in body
    assert '<th scope="col">Uptime 7 d</th>' in body and body.count("<tr>") == 3
    # The status in its colour, the strip as its cell's background (its words stay, for screen readers)
    assert f'color: {tables.STATUS_COLOR["offline"]}; font-weight: 600">● offline</td>' in body
    assert fleet_table.heartbeat_css(strips[0]) in body and "last 2: 1 ok, 1 failed · latest failed" in body
    assert cells[1]["Connection"].startswith("insecure") and 'style="color: #b91c1c">insecure' in body


def test_the_csv_downloads_have_one_line_per_poll_or_hour_and_keep_unknown_hours_empty():
    polls = [{"scheduled_at": "2026-11-30T14:00:00Z", "success": True, "response_time_ms": 5, "error_kind": None},
             {"scheduled_at": "2026-11-30T14:00:10Z", "success": False, "response_time_ms": None,
              "error_kind": "timeout"}]
    lines = charts.polls_csv(polls).splitlines()
    assert lines[0] == "scheduled_at_local,success,response_time_ms,error_kind" and len(lines) == 3
    assert lines[2].endswith(",False,,timeout")
    assert charts.polls_summary(polls) == {"attempts": 2, "successes": 1, "success_rate": 50.0, "avg_response_ms": 5}
    hourly = {"hourly": [{"time": "2026-11-30T14:00:00Z", "successRate": None, "avgResponseTime": None,
                          "attempts": 0}]}
    assert charts.history_csv(hourly).splitlines()[1].endswith(",,,0")


def test_the_uptime_column_shows_the_chosen_range_with_one_decimal_and_a_dash_when_unknown():
    rows = [{**ROWS[0], "uptime_24h": 91.25, "uptime_7d": 99.04, "uptime_30d": None, "uptime_90d": None},
            {**ROWS[1], "uptime_24h": None, "uptime_7d": None, "uptime_30d": None, "uptime_90d": None}]
    assert [c["Uptime"] for c in tables.fleet_rows(rows)] == ["91.2 %", "–"]
    assert [c["Uptime"] for c in tables.fleet_rows(rows, uptime_range="7 d")] == ["99.0 %", "–"]
    assert "Uptime" in tables.FLEET_COLUMNS and list(tables.UPTIME_RANGES) == ["24 h", "7 d", "30 d", "90 d"]
    with pytest.raises(ValueError, match="no uptime for '1 y'"):
        tables.fleet_rows(rows, uptime_range="1 y")


def test_sorting_by_uptime_uses_the_chosen_range_worst_first_and_unknown_last():
    rows = [{**r, "uptime_24h": u24, "uptime_30d": u30}
            for r, u24, u30 in zip(ROWS, (50.0, 100.0, 99.5, None), (99.9, 80.0, None, 97.0))]
    assert names(fleet_table.sort_rows(rows, "Uptime")) == ["fra-2", "ams-9", "ams-10", "lon-1"]
    assert names(fleet_table.sort_rows(rows, "Uptime", uptime_range="30 d")) == ["ams-10", "lon-1", "fra-2", "ams-9"]
    found, _, _ = fleet_table.select(rows, Query(sort="Uptime", descending=True, uptime_range="30 d"))
    assert names(found) == ["fra-2", "lon-1", "ams-10", "ams-9"]


def test_an_uptime_that_counts_the_demos_simulated_history_is_marked():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    backfilled = {**ROWS[1], "uptime_24h": 100.0, "uptime_7d": 98.5,
                  "history_simulated_until": (now - timedelta(days=2)).isoformat()}
    assert tables.uptime_cell(backfilled, "24 h", now) == "100.0 %"            # the last day is real polls
    assert tables.uptime_cell(backfilled, "7 d", now) == f"98.5 % {tables.SIMULATED_MARK}"
    assert tables.uptime_cell({**backfilled, "history_simulated_until": None}, "7 d", now) == "98.5 %"
