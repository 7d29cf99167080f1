"""Guests: every VM and container of the servers the user may see (guests_overview), filtered by
server, node, type and status, live through Realtime; a console button on running guests (a 60 s,
single-use link to the console gateway from request_console), the PVE web UI link as a fallback,
and node shells (PVE's terminal, or SSH where it is set up)."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import connections_ui, data, live, ops_ui, session, tables  # noqa: E402
from dashboard.text import plain  # noqa: E402

session.page_header("Guests")


def guest_actions(client, guest: dict) -> None:
    st.subheader(plain(f"{guest['name'] or 'guest'} ({guest['guest_type']}/{guest['vmid']}) on {guest['server_name']}"))
    key = f"guest-{guest['server_id']}-{guest['vmid']}"
    cols = st.columns(4)
    if guest["status"] == "running":
        if guest["guest_type"] == "qemu":
            cols[0].button("Console (noVNC)", icon=":material/desktop_windows:", key=f"{key}-vnc", type="primary",
                           on_click=connections_ui.open_console, args=(client, key, guest["server_id"], "vnc", guest["vmid"]))
        cols[1].button("Terminal (xterm.js)", icon=":material/terminal:", key=f"{key}-term",
                       on_click=connections_ui.open_console, args=(client, key, guest["server_id"], "term", guest["vmid"]))
    else:
        cols[0].caption(f"The guest is {plain(guest['status'])}: consoles open on running guests.")
    cols[2].link_button("PVE web UI console", connections_ui.pve_console(guest), icon=":material/open_in_new:", help="Needs your browser to be signed in to PVE.")
    connections_ui.console_link(key)
    # Power actions (Start / Shutdown / Stop / Reset), tracked as operations.
    ops_ui.guest_operations(client, {"id": guest["server_id"], "name": guest["server_name"]}, guest)


def node_shells(client, server_ids: set[str]) -> None:
    try:
        nodes = [n for n in data.console_nodes(client) if n["server_id"] in server_ids]
    except data.DataError as exc:
        st.error(plain(exc))
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
                   on_click=connections_ui.open_console, args=(client, key, node["server_id"], "term", None, node["node"]))
    cols[1].button("SSH", icon=":material/key:", key=f"{key}-ssh", disabled=not node["ssh_configured"],
                   help=None if node["ssh_configured"] else "Set SSH access first: `proxwatch ops ssh-set`",
                   on_click=connections_ui.open_console, args=(client, key, node["server_id"], "ssh", None, node["node"]))
    connections_ui.console_link(key)


def sync_notes(syncs: list[dict]) -> None:
    """What went wrong in each server's last guest sync: its error, and the entries of PVE's answer
    it skipped as malformed (the others were stored). Names and PVE's words shown literally."""
    for s in syncs:
        if s.get("error_message"):
            st.warning(f"{plain(s['server_name'])}: the last guest sync failed — {plain(s['error_message'])}",
                       icon=":material/error:")
        if s.get("skipped"):
            detail = s.get("skipped_detail") or f"{s['skipped']} entries of PVE's answer skipped as malformed"
            st.warning(f"{plain(s['server_name'])}: {plain(detail)}", icon=":material/report:")


def guests(client) -> None:
    # Before reading, so no change falls in between; sessions too, for the sidebar's list.
    feed = live.watch(st.session_state, [("guests", None), ("connection_sessions", None)])
    got = session.read_or_explain(feed, lambda: data.guests(client), lambda: data.guest_syncs(client))
    if got is None:
        return
    rows, syncs = got
    sync_notes(syncs)
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
    table = pd.DataFrame(tables.guest_rows(shown), columns=tables.GUEST_COLUMNS)
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="g-table", width="stretch")
    selected = event.selection.rows if event is not None else []
    if selected and selected[0] < len(shown):
        guest_actions(client, shown[selected[0]])
    node_shells(client, {r["server_id"] for r in shown})
    live.rerun_on_change(feed)


def page(client) -> None:
    guests(client)
    connections_ui.sidebar(client)


session.run_page(page)
