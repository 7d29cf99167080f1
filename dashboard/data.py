"""Every API call the dashboard makes: the SQL functions, through PostgREST RPC, with the signed-in
user's JWT via the official supabase client (dashboard/session.py makes it) — so row-level
security decides what anyone sees, in Supabase mode and in embedded mode alike.

A failure becomes DataError with one sentence for the page: the session expired, the API refused
(the function's own words), or the API does not answer.
"""

from __future__ import annotations

import httpx
from postgrest.exceptions import APIError

from worker.errors import ProxwatchError

EXPIRED = ("PGRST301", "PGRST303")  # PostgREST: JWT expired / invalid


class DataError(ProxwatchError):
    """The dashboard could not read from the API; the message is one sentence for the page."""


def unreachable(exc: Exception) -> DataError:
    return DataError(f"The proxwatch API does not answer ({type(exc).__name__}): is proxwatch running?")


def call(client, fn: str, params: dict | None = None, *, name_fn: bool = False):
    """fn(params) as the signed-in user; its JSON answer, or DataError.

    A refusal is shown in the function's own words (request_operation and kill_session word theirs
    for a person); with name_fn it is prefixed "The API refused fn:", for reads whose errors are
    not worded for a person."""
    try:
        return client.rpc(fn, params or {}).execute().data
    except APIError as exc:
        if exc.code in EXPIRED:
            raise DataError("Your session has expired: sign in again.") from None
        message = (exc.message or "unknown error").rstrip(".")
        raise DataError(f"The API refused {fn}: {message}." if name_fn else f"{message}.") from None
    except httpx.HTTPError as exc:
        raise unreachable(exc) from None


# ------------------------------------------------------------------------------ the fleet
def fleet(client) -> list[dict]:
    """fleet_overview(): one row per server the user may see."""
    return call(client, "fleet_overview", name_fn=True) or []


def history(client, server_id: str, hours: int = 24) -> dict:
    """connection_history(server, hours), 1 hour to a year: {"bucket": "minute" | "hour" | "day",
    "hourly": [one entry per bucket], "summary"}."""
    return call(client, "connection_history", {"p_server_id": server_id, "p_hours": hours}, name_fn=True)


def server_polls(client, server_id: str, minutes: int = 60) -> list[dict]:
    """server_polls(server, minutes): each poll of the window, oldest first (scheduled_at, success,
    response_time_ms, error_kind)."""
    return call(client, "server_polls", {"p_server_id": server_id, "p_minutes": minutes}, name_fn=True) or []


def heartbeats(client, server_ids: list[str] | None = None, limit: int = 30) -> dict[str, list[dict]]:
    """fleet_heartbeats(): server id → its last polls oldest first ({"at", "ok", "ms"}), of the
    given servers (all the user may see when None)."""
    rows = call(client, "fleet_heartbeats", {"p_limit": limit, "p_server_ids": server_ids}, name_fn=True) or []
    return {r["server_id"]: r["beats"] or [] for r in rows}


def incidents(client, server_id: str | None = None, open_only: bool = False, limit: int = 50) -> list[dict]:
    """incidents(): outage periods newest first (of one server when given), with server_name and
    duration_s; ended_at is null while one is open."""
    return call(client, "incidents", {"p_server_id": server_id, "p_open_only": open_only, "p_limit": limit},
                name_fn=True) or []


# ---------------------------------------------------------------- guests, consoles, sessions
def guests(client, server_id: str | None = None) -> list[dict]:
    """guests_overview(): every VM and container the user may see (of one server when given)."""
    return call(client, "guests_overview", {"p_server_id": server_id} if server_id else {}) or []


def guest_syncs(client) -> list[dict]:
    """guest_sync_status(): the last guest sync of each server the user may see — its error and
    the malformed entries of PVE's answer it skipped."""
    return call(client, "guest_sync_status") or []


def console_nodes(client) -> list[dict]:
    """console_nodes(): the nodes whose shell the user may open, and whether SSH is set up."""
    return call(client, "console_nodes") or []


def request_console(client, server_id: str, protocol: str, vmid: int | None = None,
                    node: str | None = None) -> dict:
    """request_console(): a 60 s, single-use link to the console gateway (token, target)."""
    return call(client, "request_console", {"p_server_id": server_id, "p_protocol": protocol, "p_vmid": vmid,
                                            "p_node": node})


def active_connections(client, team: str | None = None, protocol: str | None = None, limit: int = 50,
                       offset: int = 0) -> list[dict]:
    """active_connections(): open console and SSH sessions, newest first, with total_count."""
    return call(client, "active_connections", {"p_team_id": team, "p_protocol": protocol, "p_limit": limit,
                                               "p_offset": offset}) or []


def connection_summary(client, active_only: bool = False) -> list[dict]:
    """connection_summary(): one row per server with its open sessions by protocol."""
    return call(client, "connection_summary", {"p_active_only": active_only}) or []


def session_stats(client) -> dict:
    """session_stats(): sessions opened, failed, open now, and the limits."""
    return call(client, "session_stats") or {}


def kill_session(client, session_id: str) -> dict:
    """kill_session(): ends a session (admins); the answer has its close_reason."""
    return call(client, "kill_session", {"p_session_id": session_id})


# ----------------------------------------------------------------------------- operations
def operation_states(client, server_id: str) -> list[dict]:
    """operation_states(): the latest operation of each target of the server."""
    return call(client, "operation_states", {"p_server_id": server_id}) or []


def operation_options(client, server_id: str) -> dict:
    """operation_options(): nodes, services, whether SSH is set up and whether the user may operate."""
    return call(client, "operation_options", {"p_server_id": server_id}) or {}


def request_operation(client, server_id: str, op_type: str, params: dict) -> dict:
    """request_operation(): {"operationId", "status": "started" | "already_running", "existingOperation"}, or DataError with the API's sentence."""
    return call(client, "request_operation", {"p_server_id": server_id, "p_type": op_type, "p_params": params})


def operations_list(client, server_id: str | None = None, status: str | None = None, op_type: str | None = None,
                    limit: int = 200) -> list[dict]:
    """operations_list(): operations newest first, filtered."""
    return call(client, "operations_list", {"p_server_id": server_id, "p_status": status, "p_type": op_type,
                                            "p_limit": limit}) or []
