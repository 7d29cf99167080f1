"""Operations: what runs now and what ran before, filterable, and the buttons per server and guest.

Reads through the SQL API with the signed-in user's JWT (operations_list, operation_states,
guests_overview) and follows changes live (Realtime on active_operations, dashboard/live.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard import data, live, ops_ui, session, tables  # noqa: E402
from dashboard.text import plain  # noqa: E402

session.page_header("Operations", icon=":material/build:", sidebar="collapsed")

TYPES = {"All operations": None, "SSH test": "ssh_test", "Service restart": "service_restart",
         "Certificate renewal": "certificate_renewal", "Start": "start", "Stop": "stop", "Shutdown": "shutdown",
         "Reset": "reset"}
STATUSES = {"Any status": None, "Running": "running", "Completed": "completed", "Failed": "failed"}


def _table(rows: list[dict]) -> None:
    """The operations, newest first: literal text (a guest's or a result's Markdown stays characters)."""
    cells = ops_ui.operation_rows(rows)
    st.html(tables.html_table(cells, list(cells[0]) if cells else [], lambda _i, column, text: (
        f"color: {ops_ui.OPERATION_STATUS_COLOR.get(text, '#374151')}; font-weight: 600" if column == "Status" else None)))


def _running(rows: list[dict]) -> None:
    for r in rows:
        with st.container(border=True):
            st.markdown(f"**{plain(r.get('server_name'))}** · {plain(ops_ui.LABELS.get(r['operation_type']))} · "
                        f"{plain(ops_ui.operation_target(r))} · {plain(ops_ui.running_label(r))}")
            st.progress(r["progress"] / 100, text=plain(r.get("message") or "Waiting for a worker"))


def _controls(client, fleet: list[dict]) -> None:
    st.subheader("Start an operation")
    by_id = {row["id"]: row for row in fleet}
    chosen = st.selectbox("Server", list(by_id), format_func=lambda i: f"{by_id[i]['name']} · {by_id[i]['tenant_name']}",
                          key="ops-page-server", width=360)
    if not chosen:
        return
    server = by_id[chosen]
    ops_ui.server_operations(client, server)
    try:
        guests = data.guests(client, chosen)
    except data.DataError as exc:
        st.caption(f"Guests are not available: {plain(exc)}")
        return
    guests = [g for g in guests if not g.get("template")]
    if not guests:
        st.caption("No guests known for this server yet (the guest list is synced every 30 s).")
        return
    st.markdown("##### Guest power")
    by_vmid = {g["vmid"]: g for g in guests}
    vmid = st.selectbox("Guest", list(by_vmid), key=f"ops-page-guest-{chosen}", width=360,
                        format_func=lambda v: f"{v} · {by_vmid[v].get('name') or ''} · {by_vmid[v]['status']}")
    ops_ui.guest_operations(client, server, by_vmid[vmid])


def page(client) -> None:
    feed = live.try_watch(st.session_state, [("active_operations", None)])
    try:
        fleet = data.fleet(client)
    except data.DataError as exc:
        st.error(plain(exc))
        return
    servers = {"All servers": None} | {f"{r['name']} · {r['tenant_name']}": r["id"] for r in fleet}
    a, b, c, d = st.columns(4)
    server_id = servers[a.selectbox("Server", list(servers), key="ops-filter-server")]
    op_type = TYPES[b.selectbox("Operation", list(TYPES), key="ops-filter-type")]
    status = STATUSES[c.selectbox("Status", list(STATUSES), key="ops-filter-status")]
    limit = d.selectbox("Show", [50, 200, 1000], key="ops-filter-limit", format_func=lambda n: f"last {n}")
    try:
        rows = data.operations_list(client, server_id, status, op_type, limit)
        running = data.operations_list(client, server_id, "running", op_type, 100)
    except data.DataError as exc:
        st.error(plain(exc))
        return
    st.subheader(f"Running now ({len(running)})")
    if running:
        _running(running)
    else:
        st.caption("Nothing is running.")
    st.subheader("History")
    if rows:
        _table(rows)
    else:
        st.info("No operations match. Start one below, or with `proxwatch ops request SERVER TYPE`.")
    if fleet:
        _controls(client, fleet)
    if feed is not None:
        live.rerun_on_change(feed, fallback_s=30)


session.run_page(page, what="operations page")
