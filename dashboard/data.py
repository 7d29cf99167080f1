"""Everything the dashboard reads, only through the SQL API functions (fleet_overview,
connection_history) with the signed-in user's JWT, via the official supabase client — so row-level
security decides what anyone sees, in Supabase mode and in embedded mode alike.

Environment:
    SUPABASE_URL, SUPABASE_ANON_KEY      the API (Supabase, or the embedded stand-in)
    PROXWATCH_DASHBOARD_EMAIL / _PASSWORD  embedded mode: the local admin, signed in automatically

One client per Streamlit session (kept in st.session_state by the app), never a global: each
browser session has its own user and JWT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from postgrest.exceptions import APIError
from supabase import Client, ClientOptions, create_client
from supabase_auth.errors import AuthApiError, AuthError

SESSION_KEY = "proxwatch_client"


class DataError(Exception):
    """The dashboard could not read from the API; the message is one sentence for the page."""


@dataclass(frozen=True)
class Config:
    url: str
    anon_key: str
    email: str | None = None
    password: str | None = None

    @property
    def auto_sign_in(self) -> bool:
        return bool(self.email and self.password)


def config_from_env() -> Config:
    url = (os.environ.get("SUPABASE_URL") or "").strip().rstrip("/")
    key = (os.environ.get("SUPABASE_ANON_KEY") or "").strip()
    if not url or not key:
        raise DataError("SUPABASE_URL and SUPABASE_ANON_KEY are not set: start the dashboard with"
                        " `proxwatch up` (embedded mode sets them) or set them to your Supabase project.")
    return Config(url, key, os.environ.get("PROXWATCH_DASHBOARD_EMAIL") or None,
                  os.environ.get("PROXWATCH_DASHBOARD_PASSWORD") or None)


def new_client(config: Config) -> Client:
    # Sessions live in this client's memory only; no token is written anywhere.
    return create_client(config.url, config.anon_key,
                         ClientOptions(persist_session=False, auto_refresh_token=True,
                                       postgrest_client_timeout=15))


def session_client(state, config: Config) -> Client:
    """This Streamlit session's client (created on first use)."""
    client = state.get(SESSION_KEY)
    if client is None:
        client = new_client(config)
        state[SESSION_KEY] = client
    return client


def _unreachable(exc: Exception) -> DataError:
    return DataError(f"The proxwatch API does not answer ({type(exc).__name__}): is proxwatch running?")


def signed_in_email(client: Client) -> str | None:
    try:
        session = client.auth.get_session()
    except AuthError:
        return None
    return session.user.email if session else None


def sign_in(client: Client, email: str, password: str) -> str:
    """Sign in with e-mail and password; returns the user's e-mail (DataError with a sentence otherwise)."""
    try:
        response = client.auth.sign_in_with_password({"email": email.strip(), "password": password})
    except AuthApiError as exc:
        raise DataError(f"Sign-in failed: {exc.message}.") from None
    except (AuthError, httpx.HTTPError) as exc:
        raise _unreachable(exc) from None
    return response.user.email


def sign_out(client: Client) -> None:
    try:
        client.auth.sign_out({"scope": "local"})
    except (AuthError, httpx.HTTPError):
        pass  # signed out locally either way


def _call(client: Client, fn: str, params: dict):
    try:
        return client.rpc(fn, params).execute().data
    except APIError as exc:
        if exc.code in ("PGRST301", "PGRST303"):
            raise DataError("Your session has expired: sign in again.") from None
        message = (exc.message or "unknown error").rstrip(".")
        raise DataError(f"The API refused {fn}: {message}.") from None
    except httpx.HTTPError as exc:
        raise _unreachable(exc) from None


def fleet(client: Client) -> list[dict]:
    """fleet_overview(): one row per server the user may see."""
    return _call(client, "fleet_overview", {}) or []


def history(client: Client, server_id: str, hours: int = 24) -> dict:
    """connection_history(server, hours): hourly buckets and the summary."""
    return _call(client, "connection_history", {"p_server_id": server_id, "p_hours": hours})


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def relative_time(value: str | None, now: datetime | None = None) -> str:
    """'12 s ago', '3 min ago', '2 h ago', '4 d ago', or 'never'."""
    when = parse_time(value)
    if when is None:
        return "never"
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


STATUS_MARK = {"online": "● online", "degraded": "● degraded", "offline": "● offline", "unknown": "● unknown"}
STATUS_COLOR = {"online": "#15803d", "degraded": "#b45309", "offline": "#b91c1c", "unknown": "#6b7280"}
FLEET_COLUMNS = ["Status", "Server", "Tenant", "Last check", "Avg latency", "24 h success", "PVE", "Nodes",
                 "Connection", "Last error"]


def success_24h(row: dict) -> float | None:
    """24 h success % from the hourly rollup; None when nothing was polled (unknown, not 100 %)."""
    attempts = int(row.get("attempts_24h") or 0)
    return round(100.0 * int(row.get("successes_24h") or 0) / attempts, 1) if attempts else None


def connection_notes(row: dict) -> str:
    """What a person must know about how the server is reached, in plain words."""
    notes = []
    if row.get("tls_mode") == "insecure":
        notes.append("insecure TLS (certificate not checked)")
    elif row.get("tls_mode") == "pinned":
        notes.append("TLS pinned")
    if row.get("used_fallback"):
        notes.append("via fallback address")
    if row.get("enabled") is False:
        notes.append("polling paused")
    return " · ".join(notes)


def fleet_rows(rows: list[dict], now: datetime | None = None) -> list[dict]:
    """fleet_overview() rows → the fleet table's cells, as text a person reads."""
    table = []
    for row in rows:
        status = row.get("connection_status") or "unknown"
        rate = success_24h(row)
        avg = row.get("avg_response_24h_ms") if row.get("avg_response_24h_ms") is not None \
            else row.get("avg_response_time_ms")
        total = row.get("nodes_total")
        table.append({
            "Status": STATUS_MARK.get(status, f"● {status}"),
            "Server": row["name"],
            "Tenant": row.get("tenant_name") or "",
            "Last check": relative_time(row.get("last_poll_at") or row.get("last_health_check_at"), now),
            "Avg latency": f"{avg} ms" if avg is not None else "—",
            "24 h success": f"{rate:.1f} %" if rate is not None else "no data",
            "PVE": row.get("pve_version") or "—",
            "Nodes": f"{row.get('nodes_online') or 0}/{total}" if total else "—",
            "Connection": connection_notes(row) or "TLS verified",
            "Last error": row.get("health_check_error") or "",
        })
    return table
