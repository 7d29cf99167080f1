"""Connections: every console and SSH session, live through Realtime.

"Active connections" shows one card per open session (active_connections) with "Live since …" and
"User: …" badges — and a Kill button for the team's admins (kill_session; the gateway drops it
within 2 s). "All connections" shows every server (connection_summary), idle ones included.
Filters by team (or "personal": your own sessions) and protocol; deep links
`?team=…&protocol_id=…&filter=active|all` select the same view.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard import connections_ui, data, live, session, timefmt  # noqa: E402
from dashboard.text import plain  # noqa: E402

session.page_header("Connections", css=".pw-card-title { font-weight: 600; font-size: 1.05rem; }"
                                        " .pw-muted { color: #6b7280; }")
PAGE_SIZE = 20
MODES = {"active": "Active connections", "all": "All connections"}


def _query_defaults(teams: dict[str, str]) -> tuple[str, str | None, str | None]:
    q = st.query_params
    mode = q.get("filter") if q.get("filter") in MODES else "active"
    team = q.get("team") if q.get("team") in ("personal", *teams) else None
    protocol = q.get("protocol_id") if q.get("protocol_id") in connections_ui.PROTOCOLS else None
    return mode, team, protocol


def _kill(client, session_id: str) -> None:
    try:
        result = data.kill_session(client, session_id)
    except data.DataError as exc:
        st.session_state["conn-flash"] = ("error", str(exc))
        return
    st.session_state["conn-flash"] = ("success", f"Session killed ({result['close_reason']}).")


def session_card(client, row: dict) -> None:
    with st.container(border=True):
        top, action = st.columns([6, 1], vertical_alignment="center")
        top.markdown(f"<div class='pw-card-title'>{html.escape(row['target'])}</div>"
                     f"<div class='pw-muted'>{html.escape(row['server_name'])} · {html.escape(row['team_name'])}"
                     f" · from {html.escape(row['client_ip'] or 'unknown address')}</div>", unsafe_allow_html=True)
        badges = top.container(horizontal=True)
        badges.badge(connections_ui.PROTOCOLS.get(row["protocol"], row["protocol"]),
                     icon=f":material/{row['protocol_icon']}:", color="blue")
        badges.badge(timefmt.live_since(row["started_at"]), icon=":material/radio_button_checked:",
                     color="green")
        badges.badge(f"User: {plain(row['user_email'] or 'unknown')}", icon=":material/person:", color="gray")
        if row.get("can_kill"):
            action.button("Kill", key=f"kill-{row['id']}", icon=":material/cancel:", on_click=_kill,
                          args=(client, row["id"]), help="End this session now (admins)")


def connection_card(row: dict, protocol: str | None) -> None:
    counts = {p: row[p] for p in connections_ui.PROTOCOLS}
    active = counts[protocol] if protocol else row["active_sessions"]
    with st.container(border=True):
        st.markdown(f"<div class='pw-card-title'>{html.escape(row['server_name'])}</div>"
                    f"<div class='pw-muted'>{html.escape(row['team_name'])} · {row['connection_status']}</div>",
                    unsafe_allow_html=True)
        badges = st.container(horizontal=True)
        if active:
            badges.badge(f"{active} open", icon=":material/radio_button_checked:", color="green")
            for p, n in counts.items():
                if n and (protocol is None or p == protocol):
                    badges.badge(f"{n} {connections_ui.PROTOCOLS[p]}", icon=connections_ui.ICONS[p], color="blue")
        else:
            badges.badge("idle", color="gray")
        badges.badge(f"limit {row['max_sessions']}", color="gray")
        if row["last_started_at"]:
            badges.badge(f"last session {timefmt.relative_time(row['last_started_at'])}", color="gray")


def connections(client) -> None:
    feed = live.watch(st.session_state, [("connection_sessions", None)])
    got = session.read_or_explain(feed, lambda: data.connection_summary(client), lambda: data.session_stats(client))
    if got is None:
        return
    summary, stats = got
    teams = {r["team_id"]: r["team_name"] for r in summary}
    mode, team, protocol = _query_defaults(teams)
    c1, c2, c3 = st.columns([2, 2, 2], vertical_alignment="bottom")
    mode = c1.segmented_control("Show", list(MODES), format_func=MODES.get, default=mode, key="conn-mode") or "active"
    team_options = [None, "personal", *teams]
    team = c2.selectbox("Team", team_options, index=team_options.index(team), key="conn-team",
                        format_func=lambda t: "All teams" if t is None else "Personal (mine)" if t == "personal"
                        else teams[t])
    protocol_options = [None, *connections_ui.PROTOCOLS]
    protocol = c3.selectbox("Protocol", protocol_options, index=protocol_options.index(protocol), key="conn-protocol",
                            format_func=lambda p: "All protocols" if p is None else connections_ui.PROTOCOLS[p])
    st.query_params.from_dict(connections_ui.connections_query(team, protocol, mode == "active"))

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Open now", stats.get("active", 0), border=True)
    m2.metric("Sessions opened", stats.get("successful", 0), border=True)
    m3.metric("Failed attempts", stats.get("failed", 0), border=True)
    limits = stats.get("limits") or {}
    m4.metric("Limits", f"{limits.get('max_total', '–')} · {limits.get('max_per_host', '–')}/host", border=True)

    flash = st.session_state.pop("conn-flash", None)
    if flash:
        (st.error if flash[0] == "error" else st.success)(plain(flash[1]))

    if mode == "active":
        page_no = st.session_state.get("conn-page", 0)
        try:
            rows = data.active_connections(client, team, protocol, PAGE_SIZE, page_no * PAGE_SIZE)
        except data.DataError as exc:
            st.error(plain(exc))
            rows = []
        total = rows[0]["total_count"] if rows else 0
        if not rows:
            st.info("No open sessions match. Starting a connection — a console from the Guests page — will "
                    "show it here, live.")
        for row in rows:
            session_card(client, row)
        if total > PAGE_SIZE:
            pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
            st.session_state["conn-page"] = st.number_input(f"Page (of {pages})", 1, pages, page_no + 1) - 1
    else:
        shown = [r for r in summary if team in (None, "personal") or r["team_id"] == team]
        st.caption(f"{len(shown)} connections · {sum(1 for r in shown if r['active_sessions'])} with open sessions")
        for left, right in zip(shown[::2], shown[1::2] + [None]):
            col1, col2 = st.columns(2)
            with col1:
                connection_card(left, protocol)
            if right is not None:
                with col2:
                    connection_card(right, protocol)
    live.rerun_on_change(feed)


def page(client) -> None:
    connections(client)
    connections_ui.sidebar(client)


session.run_page(page)
