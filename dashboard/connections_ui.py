"""Connections — console and SSH sessions — in the dashboard: the sidebar with the top active
connections grouped by protocol (on the Fleet, Guests and Connections pages), deep links to the
Connections page, and the console buttons' links through the console gateway.
"""

from __future__ import annotations

import html
import time
from urllib.parse import urlencode

import streamlit as st

from dashboard import data, session, timefmt
from dashboard.text import plain
from worker.consoles import pve_console_url

PROTOCOLS = {"vnc": "VNC", "term": "Terminal", "ssh": "SSH"}
ICONS = {"vnc": ":material/desktop_windows:", "term": ":material/terminal:", "ssh": ":material/key:"}
LINKS_KEY = "_proxwatch_console_links"
LINK_VALID_S = 55  # request_console's links work for 60 s; stop offering one a little before


# ------------------------------------------------------------------------------ pure helpers
def console_url(token: str) -> str:
    """The console gateway's page for a single-use token."""
    return f"{session.config().gateway_url}/console?" + urlencode({"token": token})


def pve_console(guest: dict) -> str:
    """The PVE web UI's own console of a guest (a guests_overview row): the fallback, which needs the
    browser signed in to PVE."""
    return pve_console_url(guest["base_url"], guest["node"], guest["vmid"], guest["guest_type"], guest["name"])


def group_by_protocol(rows: list[dict], top: int = 5) -> list[tuple[str, int, list[dict]]]:
    """(protocol, count, top rows newest first) for each protocol with open sessions, busiest first."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["protocol"], []).append(row)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), list(PROTOCOLS).index(kv[0])
                                                      if kv[0] in PROTOCOLS else 9))
    return [(p, len(rs), sorted(rs, key=lambda r: str(r["started_at"]), reverse=True)[:top]) for p, rs in ordered]


def connections_query(team: str | None, protocol: str | None, active: bool = True) -> dict:
    """The Connections page's deep link: ?team=…&protocol_id=…&filter=active|all."""
    query = {"filter": "active" if active else "all"}
    if team:
        query["team"] = team
    if protocol:
        query["protocol_id"] = protocol
    return query


def session_line(row: dict) -> str:
    return f"{row['target']} · {row.get('server_name') or ''} · {row.get('user_email') or 'unknown user'}"


# --------------------------------------------------------------------------- console buttons
def open_console(client, key: str, server_id: str, protocol: str, vmid=None, node=None) -> None:
    """A console button's on_click: a fresh link from request_console(), remembered under key for
    console_link() (or the API's sentence, shown there)."""
    try:
        link = data.request_console(client, server_id, protocol, vmid, node)
    except data.DataError as exc:
        st.session_state[f"{key}-error"] = str(exc)
        return
    st.session_state.pop(f"{key}-error", None)
    st.session_state.setdefault(LINKS_KEY, {})[key] = (time.monotonic() + LINK_VALID_S, link)


def console_link(key: str) -> None:
    """The console link made by a button, while it is valid (60 s, once)."""
    if st.session_state.get(f"{key}-error"):
        st.error(plain(st.session_state[f"{key}-error"]))
    found = st.session_state.get(LINKS_KEY, {}).get(key)
    if found and found[0] > time.monotonic():
        link = found[1]
        st.link_button(f"Open {plain(link['target'])} in a new tab ↗", console_url(link["token"]),
                       type="primary", icon=":material/open_in_new:")
        st.caption("The link works once, within 60 seconds.")


# --------------------------------------------------------------------------------- the sidebar
def sidebar(client, top: int = 5) -> None:
    """Top active connections grouped by protocol, each linking to the Connections page filtered."""
    bar = st.sidebar
    bar.markdown("#### Active connections")
    try:
        rows = data.active_connections(client, limit=200)
    except data.DataError as exc:
        bar.caption(plain(exc))
        return
    if not rows:
        bar.caption("No console or SSH session is open. Starting a connection (a console from the Guests "
                    "page) will populate this list.")
        return
    summary = ", ".join(f"{n} {PROTOCOLS.get(p, p)}" for p, n, _ in group_by_protocol(rows, top))
    # Read out when it changes (screen readers), like the rest of the live page.
    bar.markdown(f"<div role='status' aria-live='polite' class='pw-sr-summary'>{len(rows)} open: "
                 f"{html.escape(summary)}</div>", unsafe_allow_html=True)
    for protocol, count, shown in group_by_protocol(rows, top):
        session.page_link(bar, session.CONNECTIONS_PAGE, f"{PROTOCOLS.get(protocol, protocol)} ({count})",
                          ICONS.get(protocol), connections_query(None, protocol))
        for row in shown:
            bar.caption(plain(f"{session_line(row)} — {timefmt.live_since(row['started_at'])}"))
