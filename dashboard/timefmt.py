"""Times and durations as a person reads them on the dashboard: "3 min ago", "2 h 5 min",
"Restarting… (4:32 remaining)", "Live since 14:03 (12 min)".

Values come from the API as ISO 8601 text (or already as datetimes). Clock times are shown in the
dashboard process's local zone, which is the viewer's on a local install; the history chart does
its own conversion in the browser (dashboard/charts.py).
"""

from __future__ import annotations

from datetime import datetime, timezone


def parse_time(value) -> datetime | None:
    """An API timestamp ('2026-11-22T10:00:00Z', '…+00:00' or a datetime) → aware datetime; None stays None."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _now(now=None) -> datetime:
    return parse_time(now) or datetime.now(timezone.utc)


_UNITS = ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"))


def _largest_unit(seconds: int) -> int:
    """The index in _UNITS of the largest unit that fits in seconds (s under a minute)."""
    return next(i for i, (size, _) in enumerate(_UNITS) if seconds >= size or size == 1)


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 2 min', '2 d 1 h' (rounded down; never negative)."""
    seconds = max(0, int(seconds))
    i = _largest_unit(seconds)
    size, name = _UNITS[i]
    text = f"{seconds // size} {name}"
    if size >= 3600:  # hours and days also say the next unit down
        smaller, smaller_name = _UNITS[i + 1]
        text += f" {seconds % size // smaller} {smaller_name}"
    return text


def clock(seconds: float) -> str:
    """'4:32': minutes and seconds, as a running operation's button counts down: "Restarting… (4:32 remaining)"."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def took(started_at, completed_at) -> str:
    """How long something ran: '4.1 s' under a minute, '2:05' above; '' while it has not ended."""
    start, end = parse_time(started_at), parse_time(completed_at)
    if not start or not end:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def age(value, now=None) -> str:
    """How long ago value was, as a duration ('3 h 2 min'); '' for no value."""
    when = parse_time(value)
    if when is None:
        return ""
    return duration((_now(now) - when).total_seconds())


def relative_time(value, now=None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago', or 'never'."""
    when = parse_time(value)
    if when is None:
        return "never"
    seconds = max(0, int((_now(now) - when).total_seconds()))
    size, name = _UNITS[_largest_unit(seconds)]
    return f"{seconds // size} {name} ago"


def remaining_s(started_at, estimate_ms, now=None) -> float | None:
    """Seconds left by an estimate counted from started_at (never below 0); None without either."""
    started = parse_time(started_at)
    if started is None or not estimate_ms:
        return None
    return max(0.0, estimate_ms / 1000 - (_now(now) - started).total_seconds())


def local_clock(value) -> str:
    """'14:03' in the local zone; '' for no value."""
    when = parse_time(value)
    return when.astimezone().strftime("%H:%M") if when else ""


def local_datetime(value) -> str:
    """'2026-11-22 14:03:09' in the local zone; '' for no value."""
    when = parse_time(value)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else ""


def live_since(started_at, now=None) -> str:
    """'Live since 14:03 (12 min)': the local clock time of the start, and how long ago."""
    if parse_time(started_at) is None:
        return "Live"
    return f"Live since {local_clock(started_at)} ({age(started_at, now)})"
