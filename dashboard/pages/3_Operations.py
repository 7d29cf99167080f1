"""Operations: what runs now and what ran before, filterable, and the buttons per server and guest.

Reads through the SQL API with the signed-in user's JWT (operations_list, operation_states,
guests_overview) and follows changes live (Realtime on active_operations, dashboard/live.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import data, ops_ui  # noqa: E402

log = logging.getLogger("proxwatch.dashboard.operations")

st.set_page_config(page_title="Operations · proxwatch", page_icon=":material/build:", layout="wide",
                   initial_sidebar_state="collapsed")
st.markdown("<style>.block-container { padding-top: 2.2rem; max-width: 1500px; }</style>", unsafe_allow_html=True)
st.title("Operations")

TYPES = {"All operations": None, "SSH test": "ssh_test", "Service restart": "service_restart",
         "Certificate renewal": "certificate_renewal", "Start": "start", "Stop": "stop", "Shutdown": "shutdown",
         "Reset": "reset"}
STATUSES = {"Any status": None, "Running": "running", "Completed": "completed", "Failed": "failed"}
STATUS_MARK = {"pending": "○ waiting", "in_progress": "◐ running", "completed": "● completed", "failed": "✕ failed"}
STATUS_COLOR = {"○ waiting": "#b45309", "◐ running": "#1d4ed8", "● completed": "#15803d", "✕ failed": "#b91c1c"}
BY = {"user": "person", "cron": "daily job", "auto": "proxwatch"}


def _client():
    """The session's signed-in client (embedded mode signs the local admin in), or None."""
    try:
        config = data.config_from_env()
    except data.DataError as exc:
        st.error(str(exc))
        return None
    client = data.session_client(st.session_state, config)
    if data.signed_in_email(client) is None:
        if config.auto_sign_in and not st.session_state.get("proxwatch_signed_out"):
            try:
                data.sign_in(client, config.email, config.password)
                return client
            except data.DataError as exc:
                st.error(str(exc))
                return None
        st.info("Sign in on the fleet page first.")
        return None
    return client


def _duration(row: dict) -> str:
    start, end = ops_ui.parse_time(row.get("started_at")), ops_ui.parse_time(row.get("completed_at"))
    if not start or not end:
        return ""
    secs = (end - start).total_seconds()
    return f"{secs:.1f} s" if secs < 60 else ops_ui.clock(secs)


def _what(row: dict) -> str:
    params = row.get("params") or {}
    if row["operation_type"] in ops_ui.POWER:
        kind = "CT" if params.get("guest_type") == "lxc" else "VM"
        return f"{kind} {params.get('vmid')}" + (f" ({params['guest_name']})" if params.get("guest_name") else "")
    if row["operation_type"] == "service_restart":
        return f"{params.get('service')} on {row.get('node') or 'default node'}"
    return row.get("node") or "default node"


def _table(rows: list[dict]) -> None:
    frame = pd.DataFrame([{
        "Started": (ops_ui.parse_time(r["started_at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
                    if r.get("started_at") else ""),
        "Server": r.get("server_name"),
        "Operation": ops_ui.LABELS.get(r["operation_type"], r["operation_type"]),
        "Target": _what(r),
        "Status": STATUS_MARK.get(r["status"], r["status"]),
        "Progress": f"{r['progress']} %",
        "Requested by": r.get("requested_by_email") or BY.get(r.get("created_by"), r.get("created_by")),
        "Took": _duration(r),
        "Result": (r.get("error") if r["status"] == "failed" else r.get("message")) or "",
    } for r in rows])
    styled = frame.style.map(lambda v: f"color: {STATUS_COLOR.get(v, '#374151')}; font-weight: 600",
                             subset=["Status"])
    st.table(styled, hide_index=True)


def _running(rows: list[dict]) -> None:
    for r in rows:
        left = ops_ui.remaining_s(r)
        label = ops_ui.active_label(r["operation_type"], r["progress"], left)
        with st.container(border=True):
            st.markdown(f"**{r.get('server_name')}** · {ops_ui.LABELS.get(r['operation_type'])} · {_what(r)} · "
                        f"{label}")
            st.progress(r["progress"] / 100, text=r.get("message") or "Waiting for a worker")


def _watch():
    try:
        from dashboard import live
    except ImportError:
        return None
    try:
        return live.watch(st.session_state, [("active_operations", None)])
    except Exception as exc:  # noqa: BLE001 - live updates are a nicety
        log.warning("live updates unavailable: %s", exc)
        return None


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
        guests = ops_ui._rpc(client, "guests_overview", {"p_server_id": chosen}) or []
    except data.DataError as exc:
        st.caption(f"Guests are not available: {exc}")
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


def page() -> None:
    client = _client()
    if client is None:
        return
    feed = _watch()
    try:
        fleet = data.fleet(client)
    except data.DataError as exc:
        st.error(str(exc))
        return
    servers = {"All servers": None} | {f"{r['name']} · {r['tenant_name']}": r["id"] for r in fleet}
    a, b, c, d = st.columns(4)
    server_id = servers[a.selectbox("Server", list(servers), key="ops-filter-server")]
    op_type = TYPES[b.selectbox("Operation", list(TYPES), key="ops-filter-type")]
    status = STATUSES[c.selectbox("Status", list(STATUSES), key="ops-filter-status")]
    limit = d.selectbox("Show", [50, 200, 1000], key="ops-filter-limit", format_func=lambda n: f"last {n}")
    try:
        rows = ops_ui.operations_list(client, server_id, status, op_type, limit)
        running = [r for r in ops_ui.operations_list(client, server_id, "running", op_type, 100)]
    except data.DataError as exc:
        st.error(str(exc))
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
        from dashboard import live

        live.rerun_on_change(feed, fallback_s=30)


try:
    page()
except Exception as exc:  # a sentence on the page; the traceback goes to the server log
    log.exception("operations page failed")
    st.error(f"The operations page hit an unexpected error: {exc}")
