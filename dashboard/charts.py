"""The 24 h history chart: pure functions from connection_history()'s JSON to pandas and Altair.

history (connection_history()'s JSON):
    {"hourly": [{"time": "2026-11-22T09:00:00Z", "successRate": 83.3 | null,
                 "avgResponseTime": 35 | null, "attempts": 6}, ...],
     "summary": {"totalAttempts": 30, "successCount": 25, "avgResponseTime": 35 | null}}

An hour without polls has successRate null: it stays null here (a gap, shaded "no data"), never
100 % and never 0 %.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import altair as alt
import pandas as pd

from dashboard import timefmt

SUCCESS_COLOR = "#16a34a"
LATENCY_COLOR = "#2563eb"
GAP_COLOR = "#f1f2f4"
FAILURE_COLOR = "#dc2626"


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


def history_chart(history: dict | None, hours: int = 24) -> alt.LayerChart:
    """Success rate % (area, left axis, 0-100) and average latency ms (line, right axis) per hour,
    x in the viewer's local time (HH:MM up to a day, the date beyond). Hours without polls are shaded
    and read "no data"."""
    frame = history_frame(history)
    x_axis = alt.Axis(format="%H:%M" if hours <= 24 else "%b %d", labelAngle=0, tickCount=12, grid=False)
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
        tooltip=[alt.Tooltip("time:T", title="Hour", format="%H:%M" if hours <= 24 else "%b %d %H:%M"),
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


# ------------------------------------------------------------------ the 1 h view: every poll
def polls_frame(polls: list[dict] | None) -> pd.DataFrame:
    """server_polls() rows → time (UTC, tz-aware), ok, response_ms (NaN for a failure), outcome, error_kind."""
    polls = polls or []
    frame = pd.DataFrame({
        "time": pd.to_datetime([p["scheduled_at"] for p in polls], utc=True),
        "ok": pd.Series([bool(p.get("success")) for p in polls], dtype="bool"),
        "response_ms": pd.Series([p.get("response_time_ms") for p in polls], dtype="float64"),
        "error_kind": [p.get("error_kind") or "" for p in polls],
    })
    frame["outcome"] = frame["ok"].map({True: "success", False: "failed"})
    return frame


def polls_summary(polls: list[dict] | None) -> dict:
    """The same figures as summary_figures(), from the polls themselves."""
    polls = polls or []
    ok = [p for p in polls if p.get("success")]
    times = [p["response_time_ms"] for p in ok if p.get("response_time_ms") is not None]
    return {"attempts": len(polls), "successes": len(ok),
            "success_rate": round(100.0 * len(ok) / len(polls), 1) if polls else None,
            "avg_response_ms": round(sum(times) / len(times)) if times else None}


def polls_chart(polls: list[dict] | None, minutes: int = 60, now: datetime | None = None) -> alt.LayerChart:
    """Each poll of the last `minutes`: its response time (blue line and points, ms) and each failure
    as a red bar across the chart at its time; x is the whole window, in the viewer's local time (HH:MM)."""
    frame = polls_frame(polls)
    end = now or datetime.now(timezone.utc)
    x = alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M", labelAngle=0, tickCount=12, grid=False))
    tooltip = [alt.Tooltip("time:T", title="Poll", format="%H:%M:%S"), alt.Tooltip("outcome:N", title="Outcome"),
               alt.Tooltip("response_ms:Q", title="Response ms", format=".0f"),
               alt.Tooltip("error_kind:N", title="Error")]
    base = alt.Chart(frame).encode(x=x)
    failures = base.transform_filter("!datum.ok").mark_rule(color=FAILURE_COLOR, strokeWidth=2, opacity=0.7) \
        .encode(tooltip=tooltip)
    y = alt.Y("response_ms:Q", title="Response ms", scale=alt.Scale(zero=True, nice=True),
              axis=alt.Axis(titleColor=LATENCY_COLOR))
    line = base.transform_filter("datum.ok").mark_line(color=LATENCY_COLOR, strokeWidth=1.5).encode(y=y)
    points = base.transform_filter("datum.ok").mark_point(color=LATENCY_COLOR, filled=True, size=22) \
        .encode(y=y, tooltip=tooltip)
    # Two invisible marks at the window's ends: the x axis spans the whole window, however few polls.
    ends = pd.DataFrame({"time": pd.to_datetime([end - timedelta(minutes=minutes), end], utc=True)})
    window = alt.Chart(ends).mark_point(opacity=0).encode(x=x)
    return (alt.layer(window, failures, line, points)
            .properties(height=300)
            .configure_view(strokeWidth=0)
            .configure_axis(labelFontSize=11, titleFontSize=12, titleFontWeight="normal"))


# ------------------------------------------------------------------------------ CSV downloads
def history_csv(history: dict | None) -> str:
    """The hourly buckets shown, as CSV with local times ("no data" hours keep empty cells)."""
    frame = history_frame(history)
    out = pd.DataFrame({"hour_start_local": [timefmt.local_datetime(t.to_pydatetime()) for t in frame["time"]],
                        "success_rate_pct": frame["success_rate"], "avg_response_ms": frame["avg_response_ms"],
                        "attempts": frame["attempts"]})
    return out.to_csv(index=False)


def polls_csv(polls: list[dict] | None) -> str:
    """Each poll shown, as CSV with local times."""
    rows = [{"scheduled_at_local": timefmt.local_datetime(p["scheduled_at"]), "success": bool(p.get("success")),
             "response_time_ms": p.get("response_time_ms"), "error_kind": p.get("error_kind") or ""}
            for p in polls or []]
    return pd.DataFrame(rows, columns=["scheduled_at_local", "success", "response_time_ms", "error_kind"]) \
        .to_csv(index=False)
