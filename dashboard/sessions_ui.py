"""What the Guests and Connections pages share: the signed-in client, the API calls (SQL functions
with the user's JWT, like dashboard/data.py), console links through the gateway, and the sidebar
widget with the top active connections grouped by protocol.

Environment: PROXWATCH_GATEWAY_URL — the console gateway as the browser reaches it (default
http://127.0.0.1:$PROXWATCH_GATEWAY_PORT, port 8765).
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from urllib.parse import urlencode

import httpx
from postgrest.exceptions import APIError

from dashboard import data

CONNECTIONS_PAGE = "pages/2_Connections.py"
GUESTS_PAGE = "pages/1_Guests.py"
PROTOCOLS = {"vnc": "VNC", "term": "Terminal", "ssh": "SSH"}
ICONS = {"vnc": ":material/desktop_windows:", "term": ":material/terminal:", "ssh": ":material/key:"}
LINKS_KEY = "_proxwatch_console_links"


def gateway_url() -> str:
    url = (os.environ.get("PROXWATCH_GATEWAY_URL") or "").strip().rstrip("/")
    return url or f"http://127.0.0.1:{os.environ.get('PROXWATCH_GATEWAY_PORT') or 8765}"


def console_url(token: str) -> str:
    return f"{gateway_url()}/console?" + urlencode({"token": token})


def rpc(client, fn: str, params: dict | None = None):
    """One API call; DataError with a sentence for the page otherwise."""
    try:
        return client.rpc(fn, params or {}).execute().data
    except APIError as exc:
        if exc.code in ("PGRST301", "PGRST303"):
            raise data.DataError("Your session has expired: sign in again.") from None
        raise data.DataError((exc.message or "unknown error").rstrip(".") + ".") from None
    except httpx.HTTPError as exc:
        raise data.DataError(f"The proxwatch API does not answer ({type(exc).__name__}): is proxwatch running?") \
            from None


def signed_in_client(st):
    """This session's client, signed in (embedded mode signs the local admin in, as the main page
    does); None after showing how to sign in."""
    try:
        config = data.config_from_env()
    except data.DataError as exc:
        st.error(str(exc))
        return None
    client = data.session_client(st.session_state, config)
    email = data.signed_in_email(client)
    if email is None and config.auto_sign_in and not st.session_state.get("proxwatch_signed_out"):
        try:
            email = data.sign_in(client, config.email, config.password)
        except data.DataError as exc:
            st.error(str(exc))
            return None
    if email is None:
        st.info("Sign in on the main page first.")
        st.page_link("app.py", label="Go to sign-in", icon=":material/login:")
        return None
    return client


# ------------------------------------------------------------------------------ pure helpers
def parse_time(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def live_since(started_at, now: datetime | None = None) -> str:
    """'Live since 14:03 (12 min)' — local clock time of the start, and how long ago."""
    start = parse_time(started_at)
    if start is None:
        return "Live"
    now = now or datetime.now(timezone.utc)
    return f"Live since {start.astimezone().strftime('%H:%M')} ({duration((now - start).total_seconds())})"


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


def page_link(where, page: str, label: str, icon: str | None, query: dict) -> None:
    """st.page_link (navigation inside the app, the session kept); a plain link when the page is not
    known to this run (a page run on its own, as in tests)."""
    from streamlit.errors import StreamlitAPIException

    try:
        where.page_link(page, label=label, icon=icon, query_params=query)
    except StreamlitAPIException:
        url = "/" + page.rsplit("/", 1)[-1].split("_", 1)[-1].removesuffix(".py") + "?" + urlencode(query)
        where.markdown(f"<a href='{html.escape(url)}' target='_self'>{html.escape(label)}</a>", unsafe_allow_html=True)


# --------------------------------------------------------------------------------- the sidebar
def sidebar(st, client, top: int = 5) -> None:
    """Top active connections grouped by protocol, each linking to the Connections page filtered."""
    bar = st.sidebar
    bar.markdown("#### Active connections")
    try:
        rows = rpc(client, "active_connections", {"p_limit": 200}) or []
    except data.DataError as exc:
        bar.caption(str(exc))
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
        page_link(bar, CONNECTIONS_PAGE, f"{PROTOCOLS.get(protocol, protocol)} ({count})", ICONS.get(protocol),
                  connections_query(None, protocol))
        for row in shown:
            bar.caption(f"{session_line(row)} — {live_since(row['started_at'])}")
