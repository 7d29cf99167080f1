"""The 24 h history chart: pure functions from connection_history()'s JSON to pandas and Altair.

history (connection_history()'s JSON):
    {"hourly": [{"time": "2026-11-22T09:00:00Z", "successRate": 83.3 | null,
                 "avgResponseTime": 35 | null, "attempts": 6}, ...],
     "summary": {"totalAttempts": 30, "successCount": 25, "avgResponseTime": 35 | null}}

An hour without polls has successRate null: it stays null here (a gap, shaded "no data"), never
100 % and never 0 %.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

SUCCESS_COLOR = "#16a34a"
LATENCY_COLOR = "#2563eb"
GAP_COLOR = "#f1f2f4"


def history_frame(history: dict | None) -> pd.DataFrame:
    """One row per hour: time (UTC, tz-aware start), mid and end of the hour, success_rate (%), avg_response_ms, attempts,
    and has_data. success_rate / avg_response_ms are NaN where the hour has no (successful) polls."""
    hourly = (history or {}).get("hourly") or []
    times = pd.to_datetime([h["time"] for h in hourly], utc=True)
    frame = pd.DataFrame({
        "time": times,
        "mid": times + pd.Timedelta(minutes=30),
        "end": times + pd.Timedelta(hours=1),
        "success_rate": pd.Series([h.get("successRate") for h in hourly], dtype="float64"),
        "avg_response_ms": pd.Series([h.get("avgResponseTime") for h in hourly], dtype="float64"),
        "attempts": pd.Series([int(h.get("attempts") or 0) for h in hourly], dtype="int64"),
    })
    frame["has_data"] = frame["attempts"] > 0
    # An hour without polls is unknown, whatever a buggy source may claim.
    frame.loc[~frame["has_data"], "success_rate"] = float("nan")
    frame["status"] = frame["has_data"].map({True: "", False: "no data"})
    return frame


def summary_figures(history: dict | None) -> dict:
    """success_rate (%, one decimal) and avg_response_ms, None when nothing was polled; attempts."""
    summary = (history or {}).get("summary") or {}
    attempts = int(summary.get("totalAttempts") or 0)
    successes = int(summary.get("successCount") or 0)
    avg = summary.get("avgResponseTime")
    return {
        "attempts": attempts,
        "successes": successes,
        "success_rate": round(100.0 * successes / attempts, 1) if attempts else None,
        "avg_response_ms": round(float(avg)) if avg is not None else None,
    }


def history_chart(history: dict | None) -> alt.LayerChart:
    """Success rate % (area, left axis, 0-100) and average latency ms (line, right axis) per hour,
    x in the viewer's local time (HH:MM). Hours without polls are shaded and read "no data"."""
    frame = history_frame(history)
    x_axis = alt.Axis(format="%H:%M", labelAngle=0, tickCount=12, grid=False)
    base = alt.Chart(frame).encode(x=alt.X("time:T", title=None, axis=x_axis))
    # Values are drawn at the middle of their hour, inside the hour's band.
    at_mid = alt.Chart(frame).encode(x=alt.X("mid:T", title=None, axis=x_axis))

    gaps = base.transform_filter("!datum.has_data").mark_rect(color=GAP_COLOR).encode(x2="end:T")
    success_y = alt.Y("success_rate:Q", title="Success rate %", scale=alt.Scale(domain=[0, 100]),
                      axis=alt.Axis(titleColor=SUCCESS_COLOR, orient="left", values=[0, 25, 50, 75, 100]))
    area = at_mid.mark_area(color=SUCCESS_COLOR, opacity=0.18, interpolate="monotone",
                          invalid="break-paths-filter-domains",
                          line={"color": SUCCESS_COLOR, "strokeWidth": 2}).encode(y=success_y)
    success_points = at_mid.mark_point(color=SUCCESS_COLOR, filled=True, size=28).encode(y=success_y)
    latency_y = alt.Y("avg_response_ms:Q", title="Avg latency ms", scale=alt.Scale(zero=True, nice=True),
                      axis=alt.Axis(titleColor=LATENCY_COLOR, orient="right", grid=False))
    latency = at_mid.mark_line(color=LATENCY_COLOR, strokeWidth=2, invalid="break-paths-filter-domains",
                             point=alt.OverlayMarkDef(color=LATENCY_COLOR, size=28, filled=True)).encode(y=latency_y)
    # An invisible band per hour carries the tooltip, so hovering anywhere in the hour shows it.
    hover = base.mark_rect(opacity=0).encode(
        x2="end:T",
        tooltip=[alt.Tooltip("time:T", title="Hour", format="%H:%M"),
                 alt.Tooltip("success_rate:Q", title="Success rate %", format=".1f"),
                 alt.Tooltip("avg_response_ms:Q", title="Avg latency ms", format=".0f"),
                 alt.Tooltip("attempts:Q", title="Attempts"),
                 alt.Tooltip("status:N", title="Note")])
    success_layer = alt.layer(area, success_points, gaps)
    return (alt.layer(success_layer, latency, hover)
            .resolve_scale(y="independent")
            .properties(height=300)
            .configure_view(strokeWidth=0)
            .configure_axis(labelFontSize=11, titleFontSize=12, titleFontWeight="normal"))
