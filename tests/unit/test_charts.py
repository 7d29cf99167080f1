"""The history chart's data: buckets (minute, hour, UTC day) as connection_history says, buckets
without polls unknown (null), never 100 %; the simulated-history note."""

from __future__ import annotations

import math

import altair as alt
import pytest

from dashboard.charts import gap_runs, history_chart, history_csv, history_frame, summary_figures
from dashboard.tables import fleet_rows, simulated_note
from dashboard.timefmt import local_datetime, relative_time


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


def days(n: int = 30, empty=(3,)) -> dict:
    """A 30 d answer of connection_history: one bucket per UTC day, some without polls."""
    buckets = [{"time": f"2026-11-{d:02d}T00:00:00Z", "successRate": None if d in empty else 99.5,
                "avgResponseTime": None if d in empty else 40, "attempts": 0 if d in empty else 8640}
               for d in range(1, n + 1)]
    return {"bucket": "day", "hourly": buckets,
            "summary": {"totalAttempts": 8640 * (n - len(empty)), "successCount": 8000, "avgResponseTime": 40}}


def test_day_buckets_are_a_day_wide_drawn_at_noon_and_empty_days_stay_gaps():
    frame = history_frame(days())
    assert len(frame) == 30 and frame["bucket"].eq("day").all()
    assert (frame["end"] - frame["time"]).dt.total_seconds().eq(86400).all()
    assert frame["mid"].iloc[0].isoformat() == "2026-11-01T12:00:00+00:00"
    assert frame["day"].iloc[2] == "2026-11-03" and frame["status"].iloc[2] == "no data"
    assert math.isnan(frame["success_rate"].iloc[2]) and math.isnan(frame["avg_response_ms"].iloc[2])


def test_minute_buckets_are_a_minute_wide_and_an_answer_without_a_bucket_is_hourly():
    minutes = {"bucket": "minute",
               "hourly": [{"time": f"2026-11-22T{10 + m // 60}:{m % 60:02d}:00Z", "successRate": 100.0,
                           "avgResponseTime": 5, "attempts": 6} for m in range(120)]}
    frame = history_frame(minutes)
    assert (frame["end"] - frame["time"]).dt.total_seconds().eq(60).all() and frame["bucket"].eq("minute").all()
    assert history_frame(history())["bucket"].eq("hour").all()
    with pytest.raises(ValueError, match="unknown bucket 'week'"):
        history_frame({"bucket": "week", "hourly": []})


def tooltips(chart) -> list[dict]:
    return next(layer["encoding"]["tooltip"] for layer in chart.to_dict()["layer"]
                if "tooltip" in layer.get("encoding", {}))


def test_a_day_chart_reads_utc_days_on_its_axis_and_in_its_tooltip():
    chart = history_chart(days(), 24 * 30)
    spec = chart.to_dict()
    hover = next(layer for layer in spec["layer"] if "tooltip" in layer.get("encoding", {}))
    assert hover["encoding"]["x"]["scale"] == {"type": "utc"} and hover["encoding"]["x"]["axis"]["format"] == "%b %d"
    assert tooltips(chart)[0] == {"field": "day", "title": "Day (UTC)", "type": "nominal"}
    rows = next(iter(spec["datasets"].values()))
    assert rows[2]["success_rate"] is None and rows[2]["status"] == "no data"  # a gap, not 100 %
    # A year of days labels its axis by month
    assert history_chart(days(), 24 * 366).to_dict()["layer"][2]["encoding"]["x"]["axis"]["format"] == "%b %Y"


def test_hour_and_minute_charts_say_hour_and_minute_in_local_time():
    hour_tip = tooltips(history_chart(history(), 24 * 7))[0]
    assert hour_tip["title"] == "Hour" and hour_tip["format"] == "%b %d %H:%M"
    minutes = {"bucket": "minute", "hourly": [{"time": "2026-11-22T10:00:00Z", "successRate": 100.0,
                                               "avgResponseTime": 5, "attempts": 6}]}
    chart = history_chart(minutes, 2)
    assert tooltips(chart)[0]["title"] == "Minute"
    assert "scale" not in chart.to_dict()["layer"][2]["encoding"]["x"]  # local time


def test_the_history_csv_says_its_bucket_and_keeps_empty_days_empty():
    lines = history_csv(days()).splitlines()
    assert lines[0] == "bucket,start_local,start_utc,success_rate_pct,avg_response_ms,attempts"
    assert lines[1].startswith("day,") and ",2026-11-01T00:00:00Z,99.5,40.0,8640" in lines[1]
    assert lines[3].endswith(",2026-11-03T00:00:00Z,,,0")


def test_a_range_reaching_before_the_demos_backfill_is_said_to_be_simulated():
    from datetime import datetime, timezone
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    row = {"history_simulated_until": "2026-11-30T09:00:00Z"}
    assert simulated_note(row, 24, now) == \
        f"Simulated history before {local_datetime('2026-11-30T09:00:00Z')}, from the demo's backfill."
    assert simulated_note(row, 1, now) is None          # the last hour is real polls only
    assert simulated_note({"history_simulated_until": None}, 24 * 366, now) is None


def test_consecutive_empty_buckets_are_one_grey_band():
    runs = gap_runs(history_frame(days(empty=(3, 4, 5, 9))))
    assert [(r.time.strftime("%d"), r.end.strftime("%d")) for r in runs.itertuples()] == [("03", "06"), ("09", "10")]
    assert gap_runs(history_frame(days(empty=()))).empty
