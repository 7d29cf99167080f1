"""Alerts in the dashboard: the open-problems banner every page shows (session.run_page calls it),
the silenced-servers line of the fleet page, and the pieces of the Alerts page (channels masked,
rules, silences, node certificates with their days left, the delivery log).

Reads and writes through the SQL API with the signed-in user's JWT (dashboard/data.call), like
every page; RLS and the functions' role checks decide. A channel's URL is encrypted here, with
PROXWATCH_SECRET_KEY, before it is sent: where the dashboard has no key, adding a channel is the
command line's job and the page says so.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.data import DataError, call
from dashboard.text import plain

KIND_LABELS = {"offline": "offline", "degraded": "degraded", "cert_expiry": "certificate expiring",
               "channel_failing": "failing", "latency": "slow", "success_rate": "below its success rate"}
RULE_FIELDS = {"offline": "Offline", "recovered": "Back online", "degraded": "Degraded",
               "cert_expiry": "Certificate expiring (14 days)", "operation_failed": "Operation failed"}


# ---------------------------------------------------------------------------------------- reads
def open_problems(client) -> list[dict]:
    return call(client, "open_problems", name_fn=True) or []


def channels(client) -> list[dict]:
    return call(client, "alert_channels_list", name_fn=True) or []


def rules(client) -> list[dict]:
    return call(client, "alert_rules_view", name_fn=True) or []


def silences(client, show_all: bool = False) -> list[dict]:
    return call(client, "alert_silences_view", {"p_all": show_all}, name_fn=True) or []


def delivery_log(client, limit: int = 100) -> list[dict]:
    return call(client, "alert_log_view", {"p_limit": limit}, name_fn=True) or []


def teams(client) -> list[dict]:
    return call(client, "alert_teams", name_fn=True) or []


def certificates(client) -> list[dict]:
    return call(client, "node_certificates_view", name_fn=True) or []


# ---------------------------------------------------------------------------------- the chrome
def problems_line(problems: list[dict], limit: int = 6) -> str | None:
    """One sentence for the banner: '2 open problems: pve-a offline, pve-b/pve1 certificate expiring'."""
    if not problems:
        return None
    items = [f"{p['subject']} {KIND_LABELS.get(p['kind'], p['kind'])}" + (" (silenced)" if p.get("silenced") else "")
             for p in problems]
    more = len(items) - limit
    shown = ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")
    return f"{len(items)} open problem{'s' if len(items) != 1 else ''}: {shown}"


def banner(client) -> None:
    """The open-problems banner at the top of every page (nothing when all is well; a failed read
    is left to the page, which reports its own)."""
    try:
        line = problems_line(open_problems(client))
    except DataError:
        return
    if line:
        st.warning(plain(line), icon=":material/notifications_active:")


def silenced_marker(client) -> None:
    """The fleet page's line of silenced servers (one call there)."""
    try:
        active = [s for s in silences(client) if s["active"]]
    except DataError:
        return
    if not active:
        return
    parts = []
    for s in active:
        what = s["server_name"] or (f"tag {s['tag']}" if s["tag"] else f"all of {s['tenant_name']}")
        parts.append(f"{what} until {pd.Timestamp(s['ends_at']).strftime('%H:%M UTC')}")
    st.caption(":material/notifications_off: Silenced: " + plain(", ".join(parts)))


def until(ts) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------ the page
def masked_channels_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "Team": r["tenant_name"], "Name": r["name"], "Kind": r["kind"], "URL": r["url_masked"],
        "State": f"failing ({r['consecutive_failures']} failures)" if r["failing"]
        else ("failed last time" if r["consecutive_failures"] else "ok"),
        "Last error": r["last_error"] or ""} for r in rows], columns=["Team", "Name", "Kind", "URL", "State",
                                                                        "Last error"])


def add_channel_form(client, teams: dict[str, str], secret_key: str | None) -> None:
    """Admins add a channel: the URL is encrypted here and only the ciphertext and the masked form go
    to alert_channel_add()."""
    from worker import alerts
    from worker.crypto import Box, SecretKeyError

    if not secret_key:
        st.caption("Add channels with `proxwatch alerts channels add NAME URL`: this dashboard has no "
                   "PROXWATCH_SECRET_KEY to encrypt a channel URL with.")
        return
    with st.form("alert-channel-add", clear_on_submit=True):
        st.markdown("##### Add a channel")
        team = st.selectbox("Team", list(teams))
        name = st.text_input("Name", placeholder="ops-mail")
        url = st.text_input("Apprise URL", type="password", placeholder="mailtos://user:pass@smtp.example.org")
        if st.form_submit_button("Add channel"):
            try:
                kind, masked = alerts.parse_channel_url(url)
                ciphertext = Box(secret_key).seal(url.strip())
                call(client, "alert_channel_add", {"p_tenant_id": teams[team], "p_name": name.strip(), "p_kind": kind,
                                                   "p_url_ciphertext": ciphertext, "p_url_masked": masked})
            except (alerts.ChannelUrlError, DataError, SecretKeyError) as exc:
                st.error(plain(exc))
            else:
                st.success(f"Added channel {plain(name)}: {plain(masked)}")


def rules_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        scope = f"server {r['server_name']}" if r["server_id"] else (f"tag {r['tag']}" if r["tag"] else "whole team")
        out.append({"Team": r["tenant_name"], "Scope": scope,
                    **{label: "on" if r[f] else "off" for f, label in RULE_FIELDS.items()},
                    "Latency": f"> {r['latency_ms']} ms × {r['latency_polls']}" if r["latency_ms"] else "–",
                    "Success below": f"{r['success_rate_pct']} %" if r["success_rate_pct"] else "–",
                    "Repeat": f"{r['repeat_interval_s'] // 60} min" if r["repeat_interval_s"] else "off",
                    "Flaps": "sent" if r.get("flaps") else "not sent"})
    return pd.DataFrame(out)


def log_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"When": pd.Timestamp(r["attempted_at"]).strftime("%Y-%m-%d %H:%M:%S"),
                          "Team": r["tenant_name"], "Channel": r["channel_name"], "Try": r["attempt"],
                          "Outcome": r["outcome"], "Message": r["title"] or "test", "Answer": r["answer"] or ""}
                         for r in rows],
                        columns=["When", "Team", "Channel", "Try", "Outcome", "Message", "Answer"])


def certificates_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"Server": r["server_name"], "Node": r["node"], "Certificate": r["filename"],
                          "Expires": pd.Timestamp(r["not_after"]).strftime("%Y-%m-%d"), "Days left": r["days_left"],
                          "Alert": "expiring" if r["expiring"] else ""} for r in rows],
                        columns=["Server", "Node", "Certificate", "Expires", "Days left", "Alert"])
