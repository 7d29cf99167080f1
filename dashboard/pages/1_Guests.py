"""Guests: every VM and container of the servers the user may see (guests_overview), filtered by
server, node, type and status, live through Realtime; a console button on running guests (a 60 s,
single-use link to the console gateway from request_console), the PVE web UI link as a fallback,
and node shells (PVE's terminal, or SSH where it is set up)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import data, live, sessions_ui  # noqa: E402
from worker.consoles import pve_console_url  # noqa: E402

log = logging.getLogger("proxwatch.dashboard")
st.set_page_config(page_title="Guests · proxwatch", page_icon=":material/dns:", layout="wide")
st.markdown("<style>.block-container { padding-top: 2.2rem; max-width: 1500px; }</style>", unsafe_allow_html=True)
st.title("Guests")

STATUS_MARK = {"running": "● running", "stopped": "○ stopped", "paused": "◐ paused", "unknown": "? unknown"}


def _size(value) -> str:
    if not value:
        return "—"
    gib = value / 1024 ** 3
    return f"{gib:.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def guest_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "Status": STATUS_MARK.get(r["status"], r["status"]),
        "ID": r["vmid"],
        "Name": r["name"] or "",
        "Type": "VM" if r["guest_type"] == "qemu" else "CT",
        "Node": r["node"],
        "Server": r["server_name"],
        "CPU": "—" if r["cpu_pct"] is None else f"{r['cpu_pct']} % of {r['maxcpu'] or '?'}",
        "Memory": "—" if r["mem_pct"] is None else f"{r['mem_pct']} % of {_size(r['maxmem'])}",
        "Up": sessions_ui.duration(time.time() - sessions_ui.parse_time(r["started_at"]).timestamp())
        if r["started_at"] and r["status"] == "running" else "—",
        "Tags": ", ".join(r["tags"] or []),
    } for r in rows], columns=["Status", "ID", "Name", "Type", "Node", "Server", "CPU", "Memory", "Up", "Tags"])


def _remember_link(key: str, link: dict) -> None:
    links = st.session_state.setdefault(sessions_ui.LINKS_KEY, {})
    links[key] = (time.monotonic() + 55, link)


def _open_console(client, key: str, server_id: str, protocol: str, vmid=None, node=None) -> None:
    try:
        link = sessions_ui.rpc(client, "request_console", {"p_server_id": server_id, "p_protocol": protocol,
                                                           "p_vmid": vmid, "p_node": node})
    except data.DataError as exc:
        st.session_state[f"{key}-error"] = str(exc)
        return
    st.session_state.pop(f"{key}-error", None)
    _remember_link(key, link)


def _link_area(key: str) -> None:
    """The console link made by a button, while it is valid (60 s, once)."""
    if st.session_state.get(f"{key}-error"):
        st.error(st.session_state[f"{key}-error"])
    found = st.session_state.get(sessions_ui.LINKS_KEY, {}).get(key)
    if found and found[0] > time.monotonic():
        link = found[1]
        st.link_button(f"Open {link['target']} in a new tab ↗", sessions_ui.console_url(link["token"]),
                       type="primary", icon=":material/open_in_new:")
        st.caption("The link works once, within 60 seconds.")


def guest_actions(client, guest: dict) -> None:
    st.subheader(f"{guest['name'] or 'guest'} ({guest['guest_type']}/{guest['vmid']}) on {guest['server_name']}")
    key = f"guest-{guest['server_id']}-{guest['vmid']}"
    cols = st.columns(4)
    if guest["status"] == "running":
        if guest["guest_type"] == "qemu":
            cols[0].button("Console (noVNC)", icon=":material/desktop_windows:", key=f"{key}-vnc", type="primary",
                           on_click=_open_console, args=(client, key, guest["server_id"], "vnc", guest["vmid"]))
        cols[1].button("Terminal (xterm.js)", icon=":material/terminal:", key=f"{key}-term",
                       on_click=_open_console, args=(client, key, guest["server_id"], "term", guest["vmid"]))
    else:
        cols[0].caption(f"The guest is {guest['status']}: consoles open on running guests.")
    cols[2].link_button("PVE web UI console", pve_console_url(guest["base_url"], guest["node"], guest["vmid"],
                                                              guest["guest_type"], guest["name"]),
                        icon=":material/open_in_new:", help="Needs your browser to be signed in to PVE.")
    _link_area(key)
    # Power actions (Start / Shutdown / Stop / Reset), tracked as operations.
    from dashboard import ops_ui

    ops_ui.guest_operations(client, {"id": guest["server_id"], "name": guest["server_name"]}, guest)


def node_shells(client, server_ids: set[str]) -> None:
    try:
        nodes = [n for n in sessions_ui.rpc(client, "console_nodes") or [] if n["server_id"] in server_ids]
    except data.DataError as exc:
        st.error(str(exc))
        return
    if not nodes:
        return
    st.subheader("Node shells")
    labels = {f"{n['server_name']} · {n['node']}": n for n in nodes}
    chosen = st.selectbox("Node", list(labels), key="shell-node", width=360)
    node = labels[chosen]
    key = f"node-{node['server_id']}-{node['node']}"
    cols = st.columns(4)
    cols[0].button("PVE shell (xterm.js)", icon=":material/terminal:", key=f"{key}-term",
                   on_click=_open_console, args=(client, key, node["server_id"], "term", None, node["node"]))
    cols[1].button("SSH", icon=":material/key:", key=f"{key}-ssh", disabled=not node["ssh_configured"],
                   help=None if node["ssh_configured"] else "Set SSH access first: `proxwatch ops ssh-set`",
                   on_click=_open_console, args=(client, key, node["server_id"], "ssh", None, node["node"]))
    _link_area(key)


def page(client) -> None:
    # Before reading, so no change falls in between; sessions too, for the sidebar's list.
    feed = live.watch(st.session_state, [("guests", None), ("connection_sessions", None)])
    try:
        rows = sessions_ui.rpc(client, "guests_overview") or []
    except data.DataError as exc:
        st.error(str(exc))
        live.rerun_on_change(feed)
        return
    if not rows:
        st.info("No guests yet. They appear within 30 seconds of adding a server "
                "(or run `proxwatch guests sync --once`).")
        live.rerun_on_change(feed)
        return
    servers = sorted({r["server_name"] for r in rows})
    f1, f2, f3, f4 = st.columns(4)
    chosen_servers = f1.multiselect("Server", servers, key="g-server", placeholder="All servers")
    nodes = sorted({r["node"] for r in rows if not chosen_servers or r["server_name"] in chosen_servers})
    chosen_node = f2.selectbox("Node", ["All nodes", *nodes], key="g-node")
    chosen_type = f3.selectbox("Type", ["All types", "VM (qemu)", "Container (lxc)"], key="g-type")
    chosen_status = f4.selectbox("Status", ["All statuses", *sorted({r["status"] for r in rows})], key="g-status")
    shown = [r for r in rows
             if (not chosen_servers or r["server_name"] in chosen_servers)
             and (chosen_node == "All nodes" or r["node"] == chosen_node)
             and (chosen_type == "All types" or r["guest_type"] == ("qemu" if chosen_type.startswith("VM") else "lxc"))
             and (chosen_status == "All statuses" or r["status"] == chosen_status)]
    running = sum(1 for r in shown if r["status"] == "running")
    st.caption(f"{len(shown)} guests, {running} running · select a row to open its console")
    errors = {r["server_name"]: r["sync_error"] for r in rows if r["sync_error"]}
    for name, error in errors.items():
        st.warning(f"{name}: the last guest sync failed — {error}", icon=":material/error:")
    event = st.dataframe(guest_table(shown), hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="g-table", width="stretch")
    selected = event.selection.rows if event is not None else []
    if selected and selected[0] < len(shown):
        guest_actions(client, shown[selected[0]])
    node_shells(client, {r["server_id"] for r in shown})
    live.rerun_on_change(feed)


client = sessions_ui.signed_in_client(st)
if client is not None:
    try:
        page(client)
        sessions_ui.sidebar(st, client)
    except Exception as exc:  # a sentence on the page; the traceback goes to the server log
        log.exception("guests page failed")
        st.error(f"The page hit an unexpected error: {exc}")
