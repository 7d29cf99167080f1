"""Fleet: the fleet table (search, status and tenant filters, sort by any column, pages, a heartbeat
strip of each server's last polls, uptime over a chosen range), recent incidents and, per server, the
history chart over a chosen range (1 h: every poll; 24 h and 7 d: hourly buckets; 30 d to a year:
daily buckets) with its CSV, its incidents and its operations, live. A large fleet changes often:
the page is redrawn at most every fleet_table.settle_s() seconds.

Reads only through the SQL API functions with the signed-in user's JWT (dashboard/data.py), and
rereads when Supabase Realtime reports a change (dashboard/live.py: the fleet's server rows, its
incidents, and the open server's metric rows), or every PROXWATCH_DASHBOARD_REFRESH seconds (60) while the live
connection is down. The home page: it has the sign-in form.
"""

from __future__ import annotations

import html
import logging
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import charts, connections_ui, data, fleet_table, live, ops_ui, session, tables  # noqa: E402
from dashboard.text import plain  # noqa: E402

log = logging.getLogger("proxwatch.dashboard")
STATUS_KEY = "proxwatch_fleet_status"

session.page_header("proxwatch", tab_title="proxwatch", sidebar="collapsed", css="""
  h1 { padding-bottom: 0.1rem; }
  [data-testid="stMetricValue"] { font-size: 1.7rem; }
  .pw-server-line { color: #4b5563; font-size: 0.9rem; margin: -0.4rem 0 0.6rem 0; }
  .pw-status { font-weight: 600; }
  .pw-sr { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
           clip: rect(0, 0, 0, 0); white-space: nowrap; border: 0; }
  .pw-live { font-size: 0.88rem; }
""" + fleet_table.FLEET_CSS)

def _fleet_table(rows: list[dict], beats: dict[str, list[dict]], uptime_range: str) -> None:
    """The page of servers on screen, with each one's heartbeat strip (a styled cell) and its uptime
    over the chosen range (marked where that range counts the demo's simulated history)."""
    cells = tables.fleet_rows(rows, uptime_range=uptime_range)
    strips = [fleet_table.padded(beats.get(row["id"], []), HEARTBEATS) for row in rows]
    for cell, strip in zip(cells, strips):
        cell[fleet_table.HEARTBEAT_COLUMN] = fleet_table.heartbeat_text(strip)
    columns = tables.FLEET_COLUMNS[:1] + [fleet_table.HEARTBEAT_COLUMN] + tables.FLEET_COLUMNS[1:]
    st.html(fleet_table.table_html(cells, columns, strips, {"Uptime": f"Uptime {uptime_range}"}))
    if any(tables.SIMULATED_MARK in cell["Uptime"] for cell in cells):
        st.caption(f"{tables.SIMULATED_MARK} The uptime over {uptime_range} counts simulated history "
                   "(the demo's backfill).")


HEARTBEATS = 30  # polls in each server's strip


def _reset_page() -> None:
    st.session_state["pw_fleet_page"] = 1


def _held_query() -> fleet_table.Query:
    """The query as this browser session's controls hold it before they are drawn in this run (the
    widgets' values, or their defaults), so that the table can be drawn before them."""
    state = st.session_state
    q = fleet_table.Query()   # its defaults are the widgets' defaults
    q.search = state.get("pw_fleet_search") or q.search
    q.statuses = list(state.get("pw_fleet_status") or q.statuses)
    q.tenants = list(state.get("pw_fleet_tenant") or q.tenants)
    q.sort = state.get("pw_fleet_sort") or q.sort
    q.descending = bool(state.get("pw_fleet_desc"))
    q.uptime_range = state.get("pw_fleet_uptime") or q.uptime_range
    q.page_size = int(state.get("pw_fleet_page_size") or q.page_size)
    q.page = int(state.get("pw_fleet_page") or q.page)
    return q


def _fleet_query(rows: list[dict]) -> fleet_table.Query:
    """The search, filter, sort and page controls above the table (kept per browser session)."""
    tenants = sorted({row.get("tenant_name") or "" for row in rows})
    search, status, tenant, sort, order, uptime = st.columns([3, 3, 3, 2, 1.3, 1.3], vertical_alignment="bottom")
    q = _held_query()   # the page and its size come from the pager under the table
    q.search = search.text_input("Search", key="pw_fleet_search", placeholder="Server name contains…",
                                 on_change=_reset_page)
    q.statuses = status.multiselect("Status", fleet_table.STATUSES, key="pw_fleet_status", placeholder="Any status",
                                    on_change=_reset_page)
    q.tenants = tenant.multiselect("Tenant", tenants, key="pw_fleet_tenant", placeholder="Any tenant",
                                   on_change=_reset_page, disabled=len(tenants) < 2)
    q.sort = sort.selectbox("Sort by", fleet_table.SORT_COLUMNS, key="pw_fleet_sort", on_change=_reset_page)
    q.descending = order.toggle("Descending", key="pw_fleet_desc", on_change=_reset_page)
    q.uptime_range = uptime.selectbox("Uptime over", list(tables.UPTIME_RANGES), key="pw_fleet_uptime",
                                      help="The range of the table's Uptime column (and of sorting by it).")
    return q


def _pager(q: fleet_table.Query, page: int, total: int, fleet_size: int, shown: int) -> None:
    """'Servers 51–100 of 1,000', the page number and the page size, under the table."""
    last = fleet_table.pages(total, q.page_size)
    if st.session_state.get("pw_fleet_page") != page:
        st.session_state["pw_fleet_page"] = page  # clamped: the filters left fewer pages
    text, number, size = st.columns([6, 1.4, 1.4], vertical_alignment="bottom")
    text.caption(fleet_table.showing((page - 1) * q.page_size, shown, total, fleet_size)
                 + (f" · page {page} of {last}" if total else ""))
    number.number_input("Page", min_value=1, max_value=last, step=1, key="pw_fleet_page")
    size.selectbox("Per page", fleet_table.PAGE_SIZES, index=fleet_table.PAGE_SIZES.index(q.page_size),
                   key="pw_fleet_page_size", on_change=_reset_page)


def _status_counts(rows: list[dict]) -> None:
    for column, (status, count) in zip(st.columns(4), tables.status_counts(rows).items()):
        column.metric(status.capitalize(), count, border=True)


def _server_detail(client, row: dict) -> None:
    status = row.get("connection_status") or "unknown"
    rng = st.session_state.get("pw_range") or "24 h"
    st.subheader(f"{plain(row['name'])} — last {RANGE_WORDS[rng]}")
    parts = [f"<span class='pw-status' style='color:{tables.STATUS_COLOR.get(status, '#374151')}'>● {status}</span>",
             html.escape(row.get("base_url") or "")]
    if row.get("fallback_url"):
        parts.append("fallback " + html.escape(row["fallback_url"]) + (" (in use)" if row.get("used_fallback") else ""))
    notes = tables.connection_notes({**row, "used_fallback": False})
    if notes:
        parts.append(html.escape(notes))
    parts.append(f"checked {tables.last_check(row)}")
    st.markdown("<div class='pw-server-line'>" + " · ".join(parts) + "</div>", unsafe_allow_html=True)
    if row.get("health_check_error"):
        st.warning(f"Last error: {plain(row['health_check_error'])}", icon=":material/error:")

    rng = st.segmented_control("Range", list(RANGES), default="24 h", key="pw_range", label_visibility="collapsed")
    _history(client, row, rng or "24 h")
    _incidents(client, f"Incidents of {plain(row['name'])}", row["id"])
    ops_ui.server_operations(client, row)  # Test SSH, Restart Service, Renew Certificate


# The chart's ranges: label → hours.
RANGES = {"1 h": 1, "24 h": 24, "7 d": 24 * 7, "30 d": 24 * 30, "90 d": 24 * 90, "1 y": 24 * 366}
RANGE_WORDS = {"1 h": "hour", "24 h": "24 hours", "7 d": "7 days", "30 d": "30 days", "90 d": "90 days",
               "1 y": "year"}


def _history(client, row: dict, rng: str) -> None:
    """The range's figures, chart (each poll for 1 h, then the bucket connection_history chose: hours up
    to 14 days, UTC days beyond), a note where the range reaches into simulated history, and the CSV."""
    hours = RANGES[rng]
    if hours == 1:
        # The last hour: every poll, with its outcome.
        polls = _last_good(f"pw_last_polls_{row['id']}", lambda: data.server_polls(client, row["id"], 60))
        figures, csv = charts.polls_summary(polls), charts.polls_csv(polls)
    else:
        history = _last_good(f"pw_last_history_{row['id']}_{hours}", lambda: data.history(client, row["id"], hours))
        figures, csv = charts.summary_figures(history), charts.history_csv(history)
    left, middle, right = st.columns(3)
    left.metric("Success rate", f"{figures['success_rate']:.1f} %" if figures["success_rate"] is not None else "no data",
                border=True)
    middle.metric("Avg response", f"{figures['avg_response_ms']} ms" if figures["avg_response_ms"] is not None
                  else "no data", border=True)
    right.metric("Attempts", f"{figures['attempts']:,}", border=True)
    simulated = tables.simulated_note(row, hours)
    if simulated:  # the demo's backfill: say so above the figures' chart
        st.info(simulated, icon=":material/science:")
    if figures["attempts"] and hours == 1:
        st.altair_chart(charts.polls_chart(polls), width="stretch")
        st.caption("Each poll of the last hour: blue, its response time in ms; red bars, failed polls. "
                   "Times are in your local time zone.")
    elif figures["attempts"]:
        bucket = charts.bucket_of(history)
        st.altair_chart(charts.history_chart(history, hours), width="stretch")
        st.caption(f"Per {'UTC day' if bucket == 'day' else bucket} — green: success rate % (left axis); blue: "
                   f"average latency ms (right axis); grey bands: {charts.BUCKET_WORDS[bucket]} without polls "
                   "(no data). " + ("Days are UTC days, dated in UTC." if bucket == "day"
                                    else "Times are in your local time zone."))
    else:
        st.info(f"No polls recorded for this server in the last {RANGE_WORDS[rng]}.")
    st.download_button("Download CSV", csv, file_name=f"{row['name']}-{rng.replace(' ', '')}.csv",
                       mime="text/csv", icon=":material/download:", key="pw_history_csv")


RECENT_INCIDENTS = 10  # fleet-wide rows on the page; a server's own list shows as many


def _incidents(client, title: str, server_id: str | None = None) -> None:
    """The latest incidents (of one server, or of every server the user may see): when it went
    offline or degraded, when it recovered, for how long, the first error. Cells are literal text."""
    st.subheader(title)
    try:
        rows = _last_good(f"pw_last_incidents_{server_id or 'fleet'}",
                          lambda: data.incidents(client, server_id, limit=RECENT_INCIDENTS))
    except data.DataError as exc:
        st.error(plain(exc))
        return
    if not rows:
        st.caption("No outages recorded." if server_id else "No outages recorded for any server.")
        return
    frame = pd.DataFrame(tables.incident_rows(rows), columns=tables.INCIDENT_COLUMNS)
    if server_id:
        frame = frame.drop(columns=["Server"])
    st.dataframe(frame, hide_index=True, width="stretch")
    open_count = sum(1 for r in rows if not r.get("ended_at"))
    st.caption((f"{open_count} still open. " if open_count else "") + "Times are in your local time zone.")


def _announce(rows: list[dict]) -> None:
    """Status transitions since the page was last drawn, in an ARIA live region (read out by screen
    readers, invisible otherwise) and as a toast."""
    before = st.session_state.get(STATUS_KEY)
    now = {row["id"]: (row["name"], row.get("connection_status") or "unknown") for row in rows}
    st.session_state[STATUS_KEY] = now
    said = []
    if before is not None:
        for sid, (name, status) in now.items():
            if sid not in before:
                said.append(f"{name} was added: {status}.")
            elif before[sid][1] != status:
                said.append(f"{name} is now {status} (was {before[sid][1]}).")
        said += [f"{name} was removed." for sid, (name, _) in before.items() if sid not in now]
    st.markdown(f"<div class='pw-sr' role='status' aria-live='polite' aria-atomic='true' id='pw-announcer'>"
                f"{html.escape(' '.join(said))}</div>", unsafe_allow_html=True)
    for sentence in said[:3]:
        st.toast(plain(sentence), icon=":material/sync_alt:")


def _last_good(key: str, fetch):
    """fetch(), remembered per session; when the API cannot be reached, the last answer stays on
    the page under a warning (the stale banner says why) instead of the data vanishing."""
    try:
        value = fetch()
    except data.DataError as exc:
        if key not in st.session_state:
            raise
        st.warning(f"{plain(exc)} Showing the last data received.", icon=":material/history:")
        return st.session_state[key]
    st.session_state[key] = value
    return value


def _fleet_view(client, feeds: list) -> None:
    try:
        rows = _last_good("pw_last_fleet", lambda: data.fleet(client))
    except data.DataError as exc:
        st.error(plain(exc))
        return
    if not rows:
        _announce(rows)
        st.info("No servers yet. Add a server with `proxwatch servers add NAME https://HOST:8006 "
                "--token USER@REALM!TOKENID=SECRET` and it appears here after its first poll.")
        return
    # The table is what a person opens the page for: it is drawn first, in its place under the
    # figures and the controls (containers kept for them), and they follow — so the browser lays
    # the table out while the rest of the page is still being made.
    counts = st.container()
    st.subheader("Fleet")
    marker, controls = st.container(), st.container()
    q = _held_query()
    found, on_page, page = fleet_table.select(rows, q)
    if on_page:
        beats = _last_good("pw_last_beats", lambda: data.heartbeats(client, [r["id"] for r in on_page], HEARTBEATS))
        _fleet_table(on_page, beats, q.uptime_range)
    else:
        st.info("No server matches the search and filters.")
    _pager(q, page, len(found), len(rows), len(on_page))
    with controls:
        drawn = _fleet_query(rows)
    if drawn != q and not st.session_state.get("_pw_fleet_requery"):
        st.session_state["_pw_fleet_requery"] = True  # once: the controls said otherwise (never loops)
        st.rerun()
    st.session_state.pop("_pw_fleet_requery", None)
    with counts:
        _status_counts(rows)
    with marker:
        session.silenced_marker(client)   # the silenced servers (dashboard/alerts_ui.py)
    _announce(rows)
    # Outage periods of every server, opened and closed by the worker with the status change.
    feeds.append(live.watch(st.session_state, [("incidents", None)]))
    _incidents(client, "Recent incidents")

    tenants = {row.get("tenant_name") for row in rows}
    # The servers of the page on screen, in the table's order (a thousand options would cost every
    # redraw; search and filters bring any server onto the page), plus the one open already.
    by_id = {row["id"]: row for row in (on_page or rows[:fleet_table.PAGE_SIZES[-1]])}
    open_id = st.session_state.get("server")
    everyone = {row["id"]: row for row in rows}
    if open_id in everyone and open_id not in by_id:
        by_id = {open_id: everyone[open_id], **by_id}
    elif open_id not in by_id:
        st.session_state.pop("server", None)  # gone: the page's first server instead
    label = (lambda i: f"{by_id[i]['name']} · {by_id[i]['tenant_name']}") if len(tenants) > 1 \
        else (lambda i: by_id[i]["name"])
    chosen = st.selectbox("Server", list(by_id), format_func=label, key="server", width=360)
    if chosen:
        # The open server's chart follows its new metric rows.
        feeds.append(live.watch(st.session_state, [("connection_metrics", f"server_id=eq.{chosen}")]))
        try:
            _server_detail(client, by_id[chosen])
        except data.DataError as exc:
            st.error(plain(exc))


def page(client) -> None:
    status_slot = st.container()    # the live indicator's line, above the figures
    feeds = [live.watch(st.session_state, [("proxmox_servers", None)])]
    try:
        _fleet_view(client, feeds)
    except Exception as exc:  # a sentence on the page; the live indicator below still runs
        log.exception("dashboard failed")
        st.error(f"The dashboard hit an unexpected error: {plain(exc)}")
    connections_ui.sidebar(client)  # the top active connections, as on every page (after the table)
    with status_slot:
        live.rerun_on_change(*feeds, fallback_s=session.config().refresh_s,
                             settle_s=fleet_table.settle_s(len(st.session_state.get("pw_last_fleet") or ())))


session.run_page(page, what="dashboard", home=True)
