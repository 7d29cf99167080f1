"""Times and durations as the dashboard shows them: a countdown that reads "4:32 remaining", clock
times in the viewer's zone, durations and "ago" in the words a person uses."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from dashboard import timefmt

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def in_berlin(monkeypatch):
    """The dashboard process runs in Europe/Berlin (UTC+1 in November)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_api_timestamps_parse_with_or_without_z_and_none_stays_none():
    assert timefmt.parse_time("2026-11-22T12:00:00Z") == NOW
    assert timefmt.parse_time("2026-11-22T13:00:00+01:00") == NOW
    assert timefmt.parse_time(NOW) is NOW
    assert timefmt.parse_time(None) is None and timefmt.parse_time("") is None


def test_a_restart_counts_down_against_its_estimate_and_never_below_zero():
    # Given a restart estimated at 5 min, started 28 s ago
    started = (NOW - timedelta(seconds=28)).isoformat()
    left = timefmt.remaining_s(started, 300_000, NOW)
    # Then the button reads "4:32 remaining"
    assert f"{timefmt.clock(left)} remaining" == "4:32 remaining"
    # and a late one stays at 0:00, not a negative time
    assert timefmt.remaining_s(NOW - timedelta(minutes=9), 300_000, NOW) == 0.0
    assert timefmt.clock(0) == "0:00" and timefmt.clock(59.6) == "1:00"
    # Without an estimate or a start there is no countdown
    assert timefmt.remaining_s(started, None, NOW) is None and timefmt.remaining_s(None, 300_000, NOW) is None


def test_clock_times_are_in_the_viewers_zone(in_berlin):
    assert timefmt.local_clock("2026-11-22T12:03:00Z") == "13:03"
    assert timefmt.local_datetime("2026-11-22T12:03:09Z") == "2026-11-22 13:03:09"
    assert timefmt.local_clock(None) == "" and timefmt.local_datetime(None) == ""
    assert timefmt.live_since("2026-11-22T11:48:00Z", now=NOW) == "Live since 12:48 (12 min)"


def test_durations_read_as_a_person_says_them():
    assert [timefmt.duration(s) for s in (0, 45, 12 * 60 + 59, 3 * 3600 + 125, 2 * 86400 + 3600, -5)] == \
        ["0 s", "45 s", "12 min", "3 h 2 min", "2 d 1 h", "0 s"]
    # How long a guest has been up
    assert timefmt.age(NOW - timedelta(hours=5, minutes=7), NOW) == "5 h 7 min"
    assert timefmt.age(None, NOW) == ""


def test_how_long_an_operation_took():
    start = NOW - timedelta(seconds=4.12)
    assert timefmt.took(start.isoformat(), NOW.isoformat()) == "4.1 s"
    assert timefmt.took(NOW - timedelta(minutes=2, seconds=5), NOW) == "2:05"
    assert timefmt.took(start, None) == ""     # still running


def test_ago_in_words():
    assert timefmt.relative_time("2026-11-22T11:59:40Z", NOW) == "20 s ago"
    assert timefmt.relative_time(NOW - timedelta(days=4, hours=3), NOW) == "4 d ago"
    assert timefmt.relative_time(NOW + timedelta(seconds=3), NOW) == "0 s ago"   # a clock a little ahead
    assert timefmt.relative_time(None, NOW) == "never"


def test_an_incident_row_reads_open_with_its_duration_so_far_or_its_end_in_local_time(in_berlin):
    from dashboard import tables

    open_one, closed = tables.incident_rows([
        {"status": "offline", "server_name": "pve1", "started_at": "2026-11-22T11:40:00Z", "ended_at": None,
         "duration_s": 1200, "error_message": "refused"},
        {"status": "degraded", "server_name": "pve2", "started_at": "2026-11-22T08:00:00Z",
         "ended_at": "2026-11-22T09:05:30Z", "duration_s": 3930, "error_message": None}], now=NOW)
    assert open_one == {"Kind": "● offline", "Server": "pve1", "Started": "2026-11-22 12:40:00", "Ended": "open",
                        "Duration": "20 min so far", "First error": "refused"}
    assert (closed["Kind"], closed["Ended"], closed["Duration"], closed["First error"]) == \
        ("● degraded", "2026-11-22 10:05:30", "1 h 5 min", "")
