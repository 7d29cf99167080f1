"""The history chart: pure functions from connection_history()'s JSON to pandas and Altair.

history (connection_history()'s JSON):
    {"bucket": "minute" | "hour" | "day",
     "hourly": [{"time": "2026-11-22T09:00:00Z", "successRate": 83.3 | null,
                 "avgResponseTime": 35 | null, "attempts": 6}, ...],
     "summary": {"totalAttempts": 30, "successCount": 25, "avgResponseTime": 35 | null}}

The list is called "hourly" whatever the bucket: per minute (up to 2 h), per hour (up to 14 days)
or per UTC day (beyond); `time` is the bucket's start in UTC. An answer without "bucket" (an older
API) is hourly. A bucket without polls has successRate null: it stays null here (a gap, shaded
"no data"), never 100 % and never 0 %.
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

# bucket → its width and how a person names one (the chart's tooltip, caption and CSV).
BUCKETS = {"minute": pd.Timedelta(minutes=1), "hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1)}
BUCKET_WORDS = {"minute": "minutes", "hour": "hours", "day": "days"}


def bucket_of(history: dict | None) -> str:
    """The history's bucket: "minute", "hour" or "day" ("hour" when the API does not say)."""
    bucket = (history or {}).get("bucket") or "hour"
    if bucket not in BUCKETS:
        raise ValueError(f"connection_history answered an unknown bucket {bucket!r}: expected minute, hour or day")
    return bucket


def history_frame(history: dict | None) -> pd.DataFrame:
    """One row per bucket: time (UTC, tz-aware start), mid and end of the bucket, success_rate (%),
    avg_response_ms, attempts, has_data, status ("no data" or ""), bucket, and day (the UTC date,
    "2026-11-22", for day buckets; "" otherwise). success_rate / avg_response_ms are NaN where the
    bucket has no (successful) polls."""
    bucket = bucket_of(history)
    width = BUCKETS[bucket]
    hourly = (history or {}).get("hourly") or []
    times = pd.to_datetime([h["time"] for h in hourly], utc=True)
    frame = pd.DataFrame({
        "time": times,
        "mid": times + width / 2,
        "end": times + width,
        "success_rate": pd.Series([h.get("successRate") for h in hourly], dtype="float64"),
        "avg_response_ms": pd.Series([h.get("avgResponseTime") for h in hourly], dtype="float64"),
        "attempts": pd.Series([int(h.get("attempts") or 0) for h in hourly], dtype="int64"),
    })
    frame["has_data"] = frame["attempts"] > 0
    # A bucket without polls is unknown, whatever a buggy source may claim.
    frame.loc[~frame["has_data"], "success_rate"] = float("nan")
    frame.loc[~frame["has_data"], "avg_response_ms"] = float("nan")
    frame["status"] = frame["has_data"].map({True: "", False: "no data"})
    frame["bucket"] = bucket
    frame["day"] = [t.strftime("%Y-%m-%d") for t in times] if bucket == "day" else ""
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


def gap_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of consecutive buckets without polls in history_frame(): time (start of the first),
    end (end of the last)."""
    empty = ~frame["has_data"]
    run = (empty != empty.shift()).cumsum()[empty]
    return frame[empty].groupby(run).agg(time=("time", "first"), end=("end", "last")).reset_index(drop=True)


def _time_axes(bucket: str, hours: int) -> tuple[alt.Axis, alt.Scale | None, list[alt.Tooltip]]:
    """The x axis, its scale and the tooltip's first line for a bucket. Minutes and hours are shown in
    the viewer's local time; a day bucket is a UTC day, so its axis and tooltip read in UTC (a local
    axis would put its start on the evening before, west of Greenwich)."""
    if bucket == "day":
        axis = alt.Axis(format="%b %d" if hours <= 24 * 120 else "%b %Y", labelAngle=0, tickCount=12, grid=False)
        return axis, alt.Scale(type="utc"), [alt.Tooltip("day:N", title="Day (UTC)")]
    label = "%H:%M" if hours <= 24 else "%b %d"
    axis = alt.Axis(format=label, labelAngle=0, tickCount=12, grid=False)
    title, fmt = ("Minute", "%H:%M") if bucket == "minute" else ("Hour", "%H:%M" if hours <= 24 else "%b %d %H:%M")
    return axis, None, [alt.Tooltip("time:T", title=title, format=fmt)]


def history_chart(history: dict | None, hours: int = 24) -> alt.LayerChart:
    """Success rate % (area, left axis, 0-100) and average latency ms (line, right axis) per bucket
    (minute, hour or UTC day: the history's "bucket"); minutes and hours in the viewer's local time
    (HH:MM up to a day, the date beyond), days as UTC dates. Buckets without polls are shaded and
    read "no data"."""
    frame = history_frame(history)
    axis, scale, first = _time_axes(bucket_of(history), hours)

    def x(field: str) -> alt.X:
        return alt.X(f"{field}:T", title=None, axis=axis, **({"scale": scale} if scale is not None else {}))

    dot = 28 if len(frame) <= 60 else 10  # a year of days: small dots, or they merge into a ribbon
    base = alt.Chart(frame).encode(x=x("time"))
    # Values are drawn at the middle of their bucket, inside the bucket's band.
    at_mid = alt.Chart(frame).encode(x=x("mid"))

    # One band per run of empty buckets: a year of empty days is one grey band, not 300 slivers.
    gaps = alt.Chart(gap_runs(frame)).mark_rect(color=GAP_COLOR).encode(x=x("time"), x2="end:T")
    success_y = alt.Y("success_rate:Q", title="Success rate %", scale=alt.Scale(domain=[0, 100]),
                      axis=alt.Axis(titleColor=SUCCESS_COLOR, orient="left", values=[0, 25, 50, 75, 100]))
    area = at_mid.mark_area(color=SUCCESS_COLOR, opacity=0.18, interpolate="monotone",
                          invalid="break-paths-filter-domains",
                          line={"color": SUCCESS_COLOR, "strokeWidth": 2}).encode(y=success_y)
    success_points = at_mid.mark_point(color=SUCCESS_COLOR, filled=True, size=dot).encode(y=success_y)
    latency_y = alt.Y("avg_response_ms:Q", title="Avg latency ms", scale=alt.Scale(zero=True, nice=True),
                      axis=alt.Axis(titleColor=LATENCY_COLOR, orient="right", grid=False))
    latency = at_mid.mark_line(color=LATENCY_COLOR, strokeWidth=2, invalid="break-paths-filter-domains",
                             point=alt.OverlayMarkDef(color=LATENCY_COLOR, size=dot, filled=True)).encode(y=latency_y)
    # An invisible band per bucket carries the tooltip, so hovering anywhere in it shows it.
    hover = base.mark_rect(opacity=0).encode(
        x2="end:T",
        tooltip=[*first,
                 alt.Tooltip("success_rate:Q", title="Success rate %", format=".1f"),
                 alt.Tooltip("avg_response_ms:Q", title="Avg latency ms", format=".0f"),
                 alt.Tooltip("attempts:Q", title="Attempts", format=","),
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
    """The buckets shown, as CSV: the bucket (minute, hour, day), its start in local time and in UTC
    (a day bucket is a UTC day), and its figures ("no data" buckets keep empty cells)."""
    frame = history_frame(history)
    out = pd.DataFrame({"bucket": frame["bucket"],
                        "start_local": [timefmt.local_datetime(t.to_pydatetime()) for t in frame["time"]],
                        "start_utc": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in frame["time"]],
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
