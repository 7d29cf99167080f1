"""The history chart's data: hours without polls stay unknown (null), never 100 %."""

from __future__ import annotations

import math

import altair as alt

from dashboard.charts import history_chart, history_frame, summary_figures
from dashboard.tables import fleet_rows
from dashboard.timefmt import relative_time


def history(with_gap: bool = True) -> dict:
    hourly = []
    for hour in range(6):
        empty = with_gap and hour in (2, 3)
        hourly.append({"time": f"2026-11-22T{hour:02d}:00:00Z", "successRate": None if empty else 50.0 + hour * 10,
                       "avgResponseTime": None if empty else 30 + hour, "attempts": 0 if empty else 6})
    return {"hourly": hourly, "summary": {"totalAttempts": 24, "successCount": 20, "avgResponseTime": 32}}


def test_the_frame_has_one_row_per_hour_in_utc():
    frame = history_frame(history())
    assert len(frame) == 6
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].iloc[0].isoformat() == "2026-11-22T00:00:00+00:00"
    assert (frame["end"] - frame["time"]).dt.total_seconds().eq(3600).all()
    assert frame["attempts"].tolist() == [6, 6, 0, 0, 6, 6]


def test_hours_without_polls_stay_null_not_100_percent():
    frame = history_frame(history())
    assert frame["success_rate"].isna().tolist() == [False, False, True, True, False, False]
    assert frame["avg_response_ms"].isna().tolist() == [False, False, True, True, False, False]
    assert frame.loc[~frame["has_data"], "status"].eq("no data").all()
    assert not (frame.loc[~frame["has_data"], "success_rate"] == 100).any()


def test_an_hour_with_zero_attempts_is_unknown_even_if_the_source_says_100():
    data = history(with_gap=False)
    data["hourly"][1].update(attempts=0, successRate=100.0)
    assert math.isnan(history_frame(data)["success_rate"].iloc[1])


def test_the_chart_has_two_independent_y_axes_and_null_gaps_in_its_data():
    chart = history_chart(history())
    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    assert spec["resolve"]["scale"]["y"] == "independent"
    rows = next(iter(spec["datasets"].values()))
    assert [r["success_rate"] for r in rows][2:4] == [None, None]
    fields = set()

    def walk(node):
        if isinstance(node, dict):
            enc = node.get("encoding", {})
            if "y" in enc and enc["y"].get("field"):
                fields.add((enc["y"]["field"], enc["y"].get("axis", {}).get("orient") if enc["y"].get("axis") else None))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert ("success_rate", "left") in fields and ("avg_response_ms", "right") in fields
    assert '"%H:%M"' in chart.to_json()
    assert spec["layer"][0]["layer"][2]["mark"]["type"] == "rect"  # the "no data" bands


def test_an_empty_history_gives_an_empty_frame_and_no_figures():
    assert history_frame({"hourly": [], "summary": {}}).empty
    assert summary_figures({"hourly": [], "summary": {"totalAttempts": 0, "successCount": 0}}) == {
        "attempts": 0, "successes": 0, "success_rate": None, "avg_response_ms": None}


def test_summary_figures_are_computed_from_counts():
    assert summary_figures(history()) == {"attempts": 24, "successes": 20, "success_rate": 83.3,
                                          "avg_response_ms": 32}


def test_relative_time_reads_as_a_person_would_say_it():
    from datetime import datetime, timezone
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
    assert relative_time("2026-11-22T11:59:40+00:00", now) == "20 s ago"
    assert relative_time("2026-11-22T11:57:00Z", now) == "3 min ago"
    assert relative_time("2026-11-22T09:00:00+00:00", now) == "3 h ago"
    assert relative_time(None, now) == "never"


def test_fleet_rows_say_no_data_and_show_insecure_tls_and_fallback_plainly():
    rows = fleet_rows([{"name": "a", "tenant_name": "t", "connection_status": "offline", "tls_mode": "insecure",
                        "used_fallback": True, "attempts_24h": 0, "successes_24h": 0, "nodes_total": None,
                        "health_check_error": "The server refused the connection."}])
    assert rows[0]["Status"] == "● offline" and rows[0]["24 h success"] == "no data"
    assert "insecure TLS" in rows[0]["Connection"] and "fallback" in rows[0]["Connection"]
    assert rows[0]["Last error"] == "The server refused the connection." and rows[0]["Last check"] == "never"
