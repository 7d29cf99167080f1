"""The fleet table at fleet scale: search, filters, sort and pages over fleet_overview()'s rows, and
the heartbeat strip of each server's last polls. Pure functions; dashboard/views/0_Fleet.py draws.

The whole fleet is read once per page run (one RPC, one row per server); only the page on screen is
turned into cells and drawn, and only its servers' heartbeats are asked for, so drawing costs the
same for 60 servers or 1,000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dashboard import tables

PAGE_SIZES = (25, 50, 100)
STATUSES = ("online", "degraded", "offline", "unknown")
# Worst first when sorting by status: what needs a look comes up.
STATUS_RANK = {"offline": 0, "degraded": 1, "unknown": 2, "online": 3}
HEARTBEAT_COLUMN = "Last polls"
BEAT_COLORS = {True: tables.STATUS_COLOR["online"], False: tables.STATUS_COLOR["offline"], None: "#d1d5db"}


def _version_key(value: str | None):
    parts = []
    for part in (value or "").replace("-", ".").split("."):
        parts.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return parts


def _latency(row: dict):
    avg = row.get("avg_response_24h_ms")
    return avg if avg is not None else row.get("avg_response_time_ms")


# Column title → the raw value it sorts by (None sorts last, whatever the direction).
SORT_KEYS = {
    "Tenant": lambda r: (r.get("tenant_name") or "").lower(),
    "Server": lambda r: (r.get("name") or "").lower(),
    "Status": lambda r: STATUS_RANK.get(r.get("connection_status") or "unknown", 9),
    "Last check": lambda r: r.get("last_poll_at") or r.get("last_health_check_at"),
    "Avg latency": _latency,
    "24 h success": tables.success_24h,
    "Uptime": tables.uptime,   # over Query.uptime_range (sort_key)
    "PVE": lambda r: _version_key(r.get("pve_version")) if r.get("pve_version") else None,
    "Nodes": lambda r: (r.get("nodes_online") or 0, r.get("nodes_total") or 0) if r.get("nodes_total") else None,
    "Connection": lambda r: tables.connection_notes(r) or "TLS verified",
    "Last error": lambda r: r.get("health_check_error") or None,
}
SORT_COLUMNS = list(SORT_KEYS)


@dataclass
class Query:
    """What the person asked the table for."""
    search: str = ""
    statuses: list[str] = field(default_factory=list)   # empty: every status
    tenants: list[str] = field(default_factory=list)    # empty: every tenant
    sort: str = "Tenant"
    descending: bool = False
    page: int = 1            # 1-based
    page_size: int = 50
    uptime_range: str = "24 h"   # the Uptime column's range: a key of tables.UPTIME_RANGES


def matches(row: dict, q: Query) -> bool:
    needle = q.search.strip().lower()
    if needle and needle not in (row.get("name") or "").lower():
        return False
    if q.statuses and (row.get("connection_status") or "unknown") not in q.statuses:
        return False
    if q.tenants and (row.get("tenant_name") or "") not in q.tenants:
        return False
    return True


def sort_key(column: str, uptime_range: str = "24 h"):
    """The raw value a column sorts by (Uptime: over uptime_range)."""
    if column not in SORT_KEYS:
        raise ValueError(f"cannot sort by {column!r}: sort by one of {', '.join(SORT_COLUMNS)}")
    if column == "Uptime":
        tables.uptime({}, uptime_range)  # an unknown range fails here, once
        return lambda r: tables.uptime(r, uptime_range)
    return SORT_KEYS[column]


def sort_rows(rows: list[dict], column: str, descending: bool = False, uptime_range: str = "24 h") -> list[dict]:
    """Rows sorted by the column's raw value (numbers as numbers, times as times), ties by tenant and
    name; rows without a value last in either direction."""
    key = sort_key(column, uptime_range)
    by_name = sorted(rows, key=lambda r: ((r.get("tenant_name") or "").lower(), (r.get("name") or "").lower()))
    present = [r for r in by_name if key(r) is not None]
    missing = [r for r in by_name if key(r) is None]
    return sorted(present, key=key, reverse=descending) + missing


def settle_s(fleet_size: int) -> float:
    """The least time between two redraws of the fleet page caused by Realtime changes: 1 s up to
    200 servers, then growing with the fleet (5 s at 1,000) — each server's row changes every few
    minutes (its last-check refresh), so a large fleet sends changes several times a second and
    redrawing for each would keep the page busy redrawing."""
    return min(10.0, max(1.0, fleet_size / 200))


def pages(total: int, page_size: int) -> int:
    return max(1, math.ceil(total / page_size))


def select(rows: list[dict], q: Query) -> tuple[list[dict], list[dict], int]:
    """(every matching row in order, the rows of the asked page, that page's number — clamped to the
    pages there are)."""
    found = sort_rows([r for r in rows if matches(r, q)], q.sort, q.descending, q.uptime_range)
    page = min(max(1, q.page), pages(len(found), q.page_size))
    start = (page - 1) * q.page_size
    return found, found[start:start + q.page_size], page


def showing(first: int, count: int, total: int, fleet: int) -> str:
    """'Servers 51–100 of 1,000', '… of 12 matching (1,000 in all)', 'No server matches.'"""
    if not total:
        return "No server matches the search and filters."
    text = f"Servers {first + 1:,}–{first + count:,} of {total:,}"
    return text + (f" matching ({fleet:,} in all)" if total != fleet else "")


# -------------------------------------------------------------------------- the heartbeat strip
def padded(beats: list[dict], limit: int) -> list[bool | None]:
    """The strip's cells, oldest → newest, always `limit` long: True success, False failure, None
    no poll (a server polled fewer times than that is grey on the left)."""
    oks = [bool(b.get("ok")) for b in (beats or [])][-limit:]
    return [None] * (limit - len(oks)) + oks


def heartbeat_text(cells: list[bool | None]) -> str:
    """What the strip says in words (read by screen readers; the picture is the cell's background)."""
    ok, failed = cells.count(True), cells.count(False)
    if not ok and not failed:
        return "no polls yet"
    return f"last {ok + failed}: {ok} ok, {failed} failed" + (" · latest failed" if cells[-1] is False else "")


def heartbeat_css(cells: list[bool | None]) -> str:
    """The strip as the cell's CSS: one bar per poll (green / red / grey), drawn by a hard-stop
    gradient, so it is one styled cell of the table and costs nothing per poll to draw."""
    n = len(cells)
    stops = []
    for i, cell in enumerate(cells):
        start, end = 100 * i / n, 100 * (i + 1) / n
        bar_end = end - 100 * 0.3 / n  # a thin white gap after each bar
        stops.append(f"{BEAT_COLORS[cell]} {start:.2f}% {bar_end:.2f}%, #ffffff {bar_end:.2f}% {end:.2f}%")
    return ("background-image: linear-gradient(to right, " + ", ".join(stops) + "); "
            "background-size: 100% 14px; background-repeat: no-repeat; background-position: center; "
            "color: transparent; min-width: 150px; font-size: 0.7rem")


FLEET_CSS = "  table.pw-fleet tbody td:nth-child(-n+5) { white-space: nowrap; }"  # status … last check


def table_html(cells: list[dict], columns: list[str], strips: list[list[bool | None]],
               headings: dict[str, str] | None = None) -> str:
    """The page of servers as one HTML table (tables.html_table: literal text, no Markdown): the
    status in its colour, an insecure connection in red, the heartbeat strip as its cell's background
    with its words for screen readers (HEARTBEAT_COLUMN holds them)."""
    def style(i: int, column: str, text: str) -> str | None:
        if column == "Status":
            status = text.replace("●", "").strip()
            return f"color: {tables.STATUS_COLOR.get(status, '#374151')}; font-weight: 600"
        if column == HEARTBEAT_COLUMN:
            return heartbeat_css(strips[i])
        if column == "Connection" and text.startswith("insecure"):
            return "color: #b91c1c"
        return None
    return tables.html_table(cells, columns, style, headings, css_class="pw-fleet")
