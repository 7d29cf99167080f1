"""What the fleet and guest tables say: API rows (fleet_overview, guests_overview) → cells, as text a
person reads. Pure functions; the pages draw them. The operations table is in dashboard/ops_ui.py."""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from dashboard import timefmt

FLEET_STATUS = {"online": "● online", "degraded": "● degraded", "offline": "● offline", "unknown": "● unknown"}
STATUS_COLOR = {"online": "#15803d", "degraded": "#b45309", "offline": "#b91c1c", "unknown": "#6b7280"}
FLEET_COLUMNS = ["Status", "Server", "Tenant", "Last check", "Avg latency", "24 h success", "Uptime", "PVE",
                 "Nodes", "Connection", "Last error"]
# The fleet table's uptime ranges: label → (fleet_overview() column, hours).
UPTIME_RANGES = {"24 h": ("uptime_24h", 24), "7 d": ("uptime_7d", 24 * 7), "30 d": ("uptime_30d", 24 * 30),
                 "90 d": ("uptime_90d", 24 * 90)}
SIMULATED_MARK = "†"  # after an uptime figure that counts simulated history
GUEST_STATUS = {"running": "● running", "stopped": "○ stopped", "paused": "◐ paused", "unknown": "? unknown"}
GUEST_COLUMNS = ["Status", "ID", "Name", "Type", "Node", "Server", "CPU", "Memory", "Up", "Tags"]


def success_24h(row: dict) -> float | None:
    """24 h success % from the hourly rollup; None when nothing was polled (unknown, not 100 %)."""
    attempts = int(row.get("attempts_24h") or 0)
    return round(100.0 * int(row.get("successes_24h") or 0) / attempts, 1) if attempts else None


def uptime(row: dict, rng: str = "24 h") -> float | None:
    """Uptime % over the range ("24 h", "7 d", "30 d", "90 d"): polls answered, from fleet_overview();
    None when nothing was polled (unknown, not 100 %)."""
    if rng not in UPTIME_RANGES:
        raise ValueError(f"no uptime for {rng!r}: choose one of {', '.join(UPTIME_RANGES)}")
    value = row.get(UPTIME_RANGES[rng][0])
    return float(value) if value is not None else None


def simulated_until(row: dict, hours: float, now: datetime | None = None) -> datetime | None:
    """When the last `hours` reach back before the server's history_simulated_until (the demo's
    backfill), that time; None for a server with only real history in that window."""
    until = timefmt.parse_time(row.get("history_simulated_until"))
    start = (timefmt.parse_time(now) or datetime.now(timezone.utc)) - timedelta(hours=hours)
    return until if until is not None and until > start else None


def simulated_note(row: dict, hours: float, now: datetime | None = None) -> str | None:
    """'Simulated history before 2026-11-30 14:03:00, from the demo's backfill.' (local time) when
    the last `hours` include simulated history; None otherwise."""
    until = simulated_until(row, hours, now)
    return f"Simulated history before {timefmt.local_datetime(until)}, from the demo's backfill." if until else None


def connection_notes(row: dict) -> str:
    """What a person must know about how the server is reached, in plain words."""
    notes = []
    if row.get("tls_mode") == "insecure":
        notes.append("insecure TLS (certificate not checked)")
    elif row.get("tls_mode") == "pinned":
        notes.append("TLS pinned")
    if row.get("used_fallback"):
        notes.append("via fallback address")
    if row.get("enabled") is False:
        notes.append("polling paused")
    return " · ".join(notes)


def last_check(row: dict, now: datetime | None = None) -> str:
    """When the server was last polled (or health-checked): '12 s ago', 'never'."""
    return timefmt.relative_time(row.get("last_poll_at") or row.get("last_health_check_at"), now)


def status_counts(rows: list[dict]) -> dict[str, int]:
    """How many servers are online, degraded, offline, unknown (those four always, in that order)."""
    counts = {s: 0 for s in ("online", "degraded", "offline", "unknown")}
    for row in rows:
        status = row.get("connection_status") or "unknown"
        counts[status] = counts.get(status, 0) + 1
    return counts


def uptime_cell(row: dict, rng: str = "24 h", now: datetime | None = None) -> str:
    """'99.2 %', '99.2 % †' when the range counts simulated history, '–' when nothing was polled."""
    value = uptime(row, rng)
    if value is None:
        return "–"
    marked = simulated_until(row, UPTIME_RANGES[rng][1], now) is not None
    return f"{value:.1f} %" + (f" {SIMULATED_MARK}" if marked else "")


def fleet_rows(rows: list[dict], now: datetime | None = None, uptime_range: str = "24 h") -> list[dict]:
    """fleet_overview() rows → the fleet table's cells, as text a person reads; "Uptime" is over
    uptime_range."""
    table = []
    for row in rows:
        status = row.get("connection_status") or "unknown"
        rate = success_24h(row)
        avg = row.get("avg_response_24h_ms") if row.get("avg_response_24h_ms") is not None \
            else row.get("avg_response_time_ms")
        total = row.get("nodes_total")
        table.append({
            "Status": FLEET_STATUS.get(status, f"● {status}"),
            "Server": row["name"],
            "Tenant": row.get("tenant_name") or "",
            "Last check": last_check(row, now),
            "Avg latency": f"{avg} ms" if avg is not None else "—",
            "24 h success": f"{rate:.1f} %" if rate is not None else "no data",
            "Uptime": uptime_cell(row, uptime_range, now),
            "PVE": row.get("pve_version") or "—",
            "Nodes": f"{row.get('nodes_online') or 0}/{total}" if total else "—",
            "Connection": connection_notes(row) or "TLS verified",
            "Last error": row.get("health_check_error") or "",
        })
    return table


INCIDENT_COLUMNS = ["Kind", "Server", "Started", "Ended", "Duration", "First error"]


def incident_rows(rows: list[dict], now: datetime | None = None) -> list[dict]:
    """incidents() rows → the incident table's cells: local times, "open" for no end yet, the
    duration so far for an open one."""
    table = []
    for row in rows:
        status = row.get("status") or "offline"
        ended = row.get("ended_at")
        table.append({
            "Kind": FLEET_STATUS.get(status, f"● {status}"),
            "Server": row.get("server_name") or "",
            "Started": timefmt.local_datetime(row.get("started_at")),
            "Ended": timefmt.local_datetime(ended) if ended else "open",
            "Duration": timefmt.duration(row.get("duration_s") or 0) if ended
            else f"{timefmt.age(row.get('started_at'), now)} so far",
            "First error": row.get("error_message") or "",
        })
    return table


def size(value) -> str:
    """Bytes as GiB: '12 GiB', '1.5 GiB'; '—' for none."""
    if not value:
        return "—"
    gib = value / 1024 ** 3
    return f"{gib:.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def guest_rows(rows: list[dict], now: datetime | None = None) -> list[dict]:
    """guests_overview() rows → the guest table's cells."""
    return [{
        "Status": GUEST_STATUS.get(r["status"], r["status"]),
        "ID": r["vmid"],
        "Name": r["name"] or "",
        "Type": "VM" if r["guest_type"] == "qemu" else "CT",
        "Node": r["node"],
        "Server": r["server_name"],
        "CPU": "—" if r["cpu_pct"] is None else f"{r['cpu_pct']} % of {r['maxcpu'] or '?'}",
        "Memory": "—" if r["mem_pct"] is None else f"{r['mem_pct']} % of {size(r['maxmem'])}",
        "Up": timefmt.age(r["started_at"], now) if r["started_at"] and r["status"] == "running" else "—",
        "Tags": ", ".join(r["tags"] or []),
    } for r in rows]


# The look of html_table (in every page's style sheet: dashboard/session.py): Streamlit's own table,
# without its component.
TABLE_CSS = """
  .pw-table-wrap { overflow-x: auto; margin-bottom: 0.6rem; }
  table.pw-table { border-collapse: collapse; width: 100%; font-size: 0.88rem; }
  table.pw-table th, table.pw-table td { padding: 0.35rem 0.6rem; text-align: left; vertical-align: top;
                                         border-bottom: 1px solid rgba(49, 51, 63, 0.1); }
  table.pw-table th { white-space: nowrap; font-weight: 600; color: rgba(49, 51, 63, 0.6); }
  table.pw-table tbody tr:hover { background: rgba(49, 51, 63, 0.03); }
"""


def html_table(cells: list[dict], columns: list[str], style: Callable[[int, str, str], str | None] | None = None,
               headings: dict[str, str] | None = None, css_class: str = "") -> str:
    """Table cells as one HTML table for st.html: every cell literal text (escaped, never Markdown),
    with the inline style that style(row index, column, text) gives it; headings rename columns.

    st.table renders each cell as Markdown — a server or guest named `[x](http://…)` became a link,
    PVE's `**error**` bold — and loads its component on a page's first table: about 0.4 s of a
    50-row page's load (tests/bench/bench_dashboard_fleet.py). The browser lays this out at once."""
    headings = headings or {}
    head = "".join(f'<th scope="col">{html.escape(headings.get(c, c))}</th>' for c in columns)
    body = []
    for i, cell in enumerate(cells):
        tds = []
        for column in columns:
            text = str(cell.get(column, "") if cell.get(column) is not None else "")
            css = style(i, column, text) if style else None
            attr = f' style="{html.escape(css)}"' if css else ""
            tds.append(f"<td{attr}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    classes = " ".join(filter(None, ("pw-table", css_class)))
    return (f'<div class="pw-table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')
