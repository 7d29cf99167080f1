"""proxwatch dashboard: the fleet table and, per server, the 24 h history chart, live.

Reads only through the SQL API functions with the signed-in user's JWT (dashboard/data.py), and
rereads when Supabase Realtime reports a change (dashboard/live.py: the fleet's server rows, and the
open server's metric rows), or every 60 s while the live connection is down.
Run: `streamlit run dashboard/app.py` with SUPABASE_URL and SUPABASE_ANON_KEY set (`proxwatch up`
does it, and signs the local admin in through PROXWATCH_DASHBOARD_EMAIL / _PASSWORD).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import charts, data, live  # noqa: E402

log = logging.getLogger("proxwatch.dashboard")
# While the live connection is down, the page rereads this often.
FALLBACK_S = max(5, int(os.environ.get("PROXWATCH_DASHBOARD_REFRESH", "60") or 60))
SIGNED_OUT_KEY = "proxwatch_signed_out"
STATUS_KEY = "proxwatch_fleet_status"

st.set_page_config(page_title="proxwatch", page_icon=":material/dns:", layout="wide",
                   initial_sidebar_state="collapsed")
st.markdown("""
<style>
  .block-container { padding-top: 2.2rem; max-width: 1500px; }
  h1 { padding-bottom: 0.1rem; }
  [data-testid="stTable"] td, [data-testid="stTable"] th { font-size: 0.88rem; padding: 0.35rem 0.6rem; }
  [data-testid="stTable"] th { white-space: nowrap; }
  [data-testid="stMetricValue"] { font-size: 1.7rem; }
  .pw-server-line { color: #4b5563; font-size: 0.9rem; margin: -0.4rem 0 0.6rem 0; }
  .pw-status { font-weight: 600; }
  .pw-sr { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
           clip: rect(0, 0, 0, 0); white-space: nowrap; border: 0; }
  .pw-live { font-size: 0.88rem; }
</style>
""", unsafe_allow_html=True)

st.title("proxwatch")


def _sign_in_form(client, config) -> None:
    with st.form("sign-in", width=420):
        st.subheader("Sign in")
        email = st.text_input("E-mail")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                data.sign_in(client, email, password)
            except data.DataError as exc:
                st.error(str(exc))
            else:
                st.session_state.pop(SIGNED_OUT_KEY, None)
                st.rerun()


def _status_style(value: str) -> str:
    status = value.replace("●", "").strip()
    return f"color: {data.STATUS_COLOR.get(status, '#374151')}; font-weight: 600"


def _fleet_table(rows: list[dict]) -> None:
    frame = pd.DataFrame(data.fleet_rows(rows), columns=data.FLEET_COLUMNS)
    styled = frame.style.map(_status_style, subset=["Status"]).map(
        lambda v: "color: #b91c1c" if v.startswith("insecure") else "", subset=["Connection"])
    st.table(styled, hide_index=True)


def _status_counts(rows: list[dict]) -> None:
    counts = {s: 0 for s in ("online", "degraded", "offline", "unknown")}
    for row in rows:
        counts[row.get("connection_status") or "unknown"] = counts.get(row.get("connection_status") or "unknown", 0) + 1
    for column, (status, count) in zip(st.columns(4), counts.items()):
        column.metric(status.capitalize(), count, border=True)


def _server_detail(client, row: dict) -> None:
    status = row.get("connection_status") or "unknown"
    st.subheader(f"{row['name']} — last 24 hours")
    parts = [f"<span class='pw-status' style='color:{data.STATUS_COLOR.get(status, '#374151')}'>● {status}</span>",
             _escape(row.get("base_url") or "")]
    if row.get("fallback_url"):
        parts.append("fallback " + _escape(row["fallback_url"]) + (" (in use)" if row.get("used_fallback") else ""))
    notes = data.connection_notes({**row, "used_fallback": False})
    if notes:
        parts.append(_escape(notes))
    parts.append(f"checked {data.relative_time(row.get('last_poll_at') or row.get('last_health_check_at'))}")
    st.markdown("<div class='pw-server-line'>" + " · ".join(parts) + "</div>", unsafe_allow_html=True)
    if row.get("health_check_error"):
        st.warning(f"Last error: {row['health_check_error']}", icon=":material/error:")

    history = _last_good(f"pw_last_history_{row['id']}", lambda: data.history(client, row["id"], 24))
    figures = charts.summary_figures(history)
    left, middle, right = st.columns(3)
    left.metric("Success rate", f"{figures['success_rate']:.1f} %" if figures["success_rate"] is not None else "no data",
                border=True)
    middle.metric("Avg response", f"{figures['avg_response_ms']} ms" if figures["avg_response_ms"] is not None
                  else "no data", border=True)
    right.metric("Attempts", f"{figures['attempts']:,}", border=True)
    if figures["attempts"]:
        st.altair_chart(charts.history_chart(history), width="stretch")
        st.caption("Green: success rate % (left axis). Blue: average latency ms (right axis). "
                   "Grey bands: hours without polls (no data). Times are in your local time zone.")
    else:
        st.info("No polls recorded for this server in the last 24 hours.")
    from dashboard import ops_ui  # operations of this server (issue 5): Test SSH, Restart Service, Renew Certificate
    ops_ui.server_operations(client, row)


def _escape(text: str) -> str:
    import html
    return html.escape(text, quote=True)


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
                f"{_escape(' '.join(said))}</div>", unsafe_allow_html=True)
    for sentence in said[:3]:
        st.toast(sentence, icon=":material/sync_alt:")


def fleet_view(client, status_slot) -> None:
    """The page body: drawn again whenever the live feeds report a change (live.rerun_on_change)."""
    feeds = [live.watch(st.session_state, [("proxmox_servers", None)])]
    try:
        _fleet_view(client, feeds)
    except Exception as exc:  # a sentence on the page; the traceback goes to the server log
        log.exception("dashboard failed")
        st.error(f"The dashboard hit an unexpected error: {exc}")
    with status_slot:
        live.rerun_on_change(*feeds, fallback_s=FALLBACK_S)


def _last_good(key: str, fetch):
    """fetch(), remembered per session; when the API cannot be reached, the last answer stays on
    the page under a warning (the stale banner says why) instead of the data vanishing."""
    try:
        value = fetch()
    except data.DataError as exc:
        if key not in st.session_state:
            raise
        st.warning(f"{exc} Showing the last data received.", icon=":material/history:")
        return st.session_state[key]
    st.session_state[key] = value
    return value


def _fleet_view(client, feeds: list) -> None:
    try:
        rows = _last_good("pw_last_fleet", lambda: data.fleet(client))
    except data.DataError as exc:
        st.error(str(exc))
        return
    _announce(rows)
    if not rows:
        st.info("No servers yet. Add a server with `proxwatch servers add NAME https://HOST:8006 "
                "--token USER@REALM!TOKENID=SECRET` and it appears here after its first poll.")
        return
    _status_counts(rows)
    st.subheader("Fleet")
    _fleet_table(rows)

    tenants = {row.get("tenant_name") for row in rows}
    by_id = {row["id"]: row for row in rows}
    label = (lambda i: f"{by_id[i]['name']} · {by_id[i]['tenant_name']}") if len(tenants) > 1 \
        else (lambda i: by_id[i]["name"])
    chosen = st.selectbox("Server", list(by_id), format_func=label, key="server", width=360)
    if chosen:
        # The open server's chart follows its new metric rows.
        feeds.append(live.watch(st.session_state, [("connection_metrics", f"server_id=eq.{chosen}")]))
        try:
            _server_detail(client, by_id[chosen])
        except data.DataError as exc:
            st.error(str(exc))


def main() -> None:
    try:
        config = data.config_from_env()
    except data.DataError as exc:
        st.error(str(exc))
        return
    client = data.session_client(st.session_state, config)
    email = data.signed_in_email(client)
    # Embedded mode signs the local admin in by itself, unless they just signed out.
    if email is None and config.auto_sign_in and not st.session_state.get(SIGNED_OUT_KEY):
        try:
            email = data.sign_in(client, config.email, config.password)
        except data.DataError as exc:
            st.error(str(exc))
            return
    if email is None:
        if st.session_state.get(SIGNED_OUT_KEY):
            st.info("You are signed out.")
        _sign_in_form(client, config)
        return
    left, right = st.columns([5, 1], vertical_alignment="center")
    left.caption(f"Signed in as {email}")
    if right.button("Sign out", width="stretch"):
        live.forget(st.session_state)
        data.sign_out(client)
        st.session_state.pop(data.SESSION_KEY, None)
        st.session_state.pop(STATUS_KEY, None)
        st.session_state[SIGNED_OUT_KEY] = True
        st.rerun()
    from dashboard import sessions_ui

    sessions_ui.sidebar(st, client)  # the top active connections, as on every page
    fleet_view(client, st.container())  # the live indicator's line, above the figures


try:
    main()
except Exception as exc:  # a sentence on the page; the traceback goes to the server log
    log.exception("dashboard failed")
    st.error(f"The dashboard hit an unexpected error: {exc}")
