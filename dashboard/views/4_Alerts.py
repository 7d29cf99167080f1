"""Alerts: where they go (channels, masked), which are sent (rules), what is silenced, the node
certificates with their days left, and every delivery try.

Reads through the SQL API with the signed-in user's JWT (alert_channels_list, alert_rules_view,
alert_silences_view, node_certificates_view, alert_log_view); admins add, test and remove channels
and change rules, operators and admins silence (the functions check the role).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard import alerts_ui, live, session  # noqa: E402
from dashboard.data import DataError, call  # noqa: E402
from dashboard.text import plain  # noqa: E402

session.page_header("Alerts", icon=":material/notifications:", sidebar="collapsed")

DURATIONS = {"30 minutes": 1800, "1 hour": 3600, "2 hours": 7200, "8 hours": 28800, "1 day": 86400, "1 week": 604800}


def _act(fn: str, params: dict, done: str) -> None:
    try:
        call(st.session_state["_alerts_client"], fn, params)
    except DataError as exc:
        st.error(plain(exc))
    else:
        st.success(done)


def _channels(client, teams: list[dict]) -> None:
    st.subheader("Channels")
    rows = alerts_ui.channels(client)
    if rows:
        st.dataframe(alerts_ui.masked_channels_table(rows), hide_index=True)
    else:
        st.caption("No channels yet: alerts are recorded but sent nowhere.")
    admin_of = {t["tenant_name"]: t["tenant_id"] for t in teams if t["role"] == "admin"}
    if not admin_of:
        return
    mine = [r for r in rows if r["tenant_name"] in admin_of]
    if mine:
        by_id = {r["id"]: r for r in mine}
        left, mid, right = st.columns([3, 1, 1], vertical_alignment="bottom")
        chosen = left.selectbox("Channel", list(by_id), key="alerts-channel",
                                format_func=lambda i: f"{by_id[i]['name']} · {by_id[i]['tenant_name']}")
        if mid.button("Send a test", key="alerts-test"):
            _act("alert_channel_test", {"p_channel_id": chosen},
                 "Test queued: the worker sends it within seconds; its outcome appears in the delivery log.")
        if right.button("Remove", key="alerts-remove"):
            _act("alert_channel_remove", {"p_channel_id": chosen}, f"Removed {by_id[chosen]['name']}.")
    from worker import settings

    alerts_ui.add_channel_form(client, admin_of, settings.load().secret_key)


def _rules(client, teams: list[dict], fleet: list[dict]) -> None:
    st.subheader("Rules")
    rows = alerts_ui.rules(client)
    if rows:
        st.dataframe(alerts_ui.rules_table(rows), hide_index=True)
    else:
        st.caption("Defaults: offline, back online, certificate expiring within 14 days and failed operations are"
                   " sent; degraded is not.")
    admin_of = {t["tenant_name"]: t["tenant_id"] for t in teams if t["role"] == "admin"}
    if not admin_of:
        return
    with st.form("alerts-rule"):
        st.markdown("##### Set a rule")
        team = st.selectbox("Team", list(admin_of))
        servers = {"Whole team": None} | {r["name"]: r["id"] for r in fleet if r["tenant_name"] == team}
        scope = st.selectbox("For", list(servers))
        cols = st.columns(len(alerts_ui.RULE_FIELDS))
        toggles = {f: col.checkbox(label, value=f != "degraded") for col, (f, label) in
                   zip(cols, alerts_ui.RULE_FIELDS.items())}
        if st.form_submit_button("Save rule"):
            _act("alert_rule_set", {"p_tenant_id": admin_of[team], "p_server_id": servers[scope],
                                    **{f"p_{f}": v for f, v in toggles.items()}}, "Rule saved.")


def _silences(client, teams: list[dict], fleet: list[dict]) -> None:
    st.subheader("Silences")
    rows = alerts_ui.silences(client)
    if rows:
        st.dataframe([{"Team": r["tenant_name"], "What": r["server_name"] or (f"tag {r['tag']}" if r["tag"] else "whole team"),
                       "Until": alerts_ui.until(r["ends_at"]), "Reason": r["reason"] or "", "By": r["created_by"] or ""} for r in rows],
                     hide_index=True)
    else:
        st.caption("Nothing is silenced.")
    operator_of = {t["tenant_name"]: t["tenant_id"] for t in teams if t["role"] in ("operator", "admin")}
    if not operator_of:
        return
    if rows:
        by_id = {r["id"]: r for r in rows if r["tenant_name"] in operator_of}
        if by_id:
            left, right = st.columns([3, 1], vertical_alignment="bottom")
            chosen = left.selectbox("Silence", list(by_id), key="alerts-silence",
                                    format_func=lambda i: f"{by_id[i]['server_name'] or 'whole team'} · {by_id[i]['tenant_name']}")
            if right.button("End it now", key="alerts-silence-end"):
                _act("alert_silence_end", {"p_silence_id": chosen}, "Silence ended.")
    with st.form("alerts-silence-add"):
        st.markdown("##### Silence")
        team = st.selectbox("Team", list(operator_of))
        servers = {"Whole team": None} | {r["name"]: r["id"] for r in fleet if r["tenant_name"] == team}
        what = st.selectbox("What", list(servers))
        duration = st.selectbox("For", list(DURATIONS), index=2)
        reason = st.text_input("Reason", placeholder="kernel update")
        if st.form_submit_button("Silence"):
            _act("alert_silence_add", {"p_tenant_id": operator_of[team], "p_server_id": servers[what], "p_tag": None,
                                       "p_for_s": DURATIONS[duration], "p_reason": reason or None},
                 f"Silenced {what} for {duration}.")


def page(client) -> None:
    from dashboard import data

    # New alerts and their delivery state arrive through Realtime (live_mark does not know these
    # tables: the reconciliation is skipped, the 30 s fallback reread stays).
    feed = live.try_watch(st.session_state, [("alert_events", None), ("alert_deliveries", None)])
    st.session_state["_alerts_client"] = client
    try:
        teams, fleet = alerts_ui.teams(client), data.fleet(client)
    except DataError as exc:
        st.error(plain(exc))
        return
    _channels(client, teams)
    _rules(client, teams, fleet)
    _silences(client, teams, fleet)
    st.subheader("Node certificates")
    certs = alerts_ui.certificates(client)
    if certs:
        st.dataframe(alerts_ui.certificates_table(certs), hide_index=True)
    else:
        st.caption("Not read yet: the worker reads every node's certificate once a day.")
    st.subheader("Delivery log")
    log = alerts_ui.delivery_log(client)
    if log:
        st.dataframe(alerts_ui.log_table(log), hide_index=True)
    else:
        st.caption("Nothing sent yet.")
    if feed is not None:
        live.rerun_on_change(feed, fallback_s=30)


session.run_page(page, what="Alerts page")
