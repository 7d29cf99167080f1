"""The active-connections registry: open, heartbeat, close, limits, kill, stale expiry, statistics.

The rules live in the database (supabase/migrations/20261122000300_consoles_sessions.sql), so
every gateway process, the CLI and the dashboard obey the same ones:

- open_session() counts and inserts under one row lock: the global and per-host maximums hold
  however many gateways open at once; at a limit it raises "maximum number of connections to
  host X (N) reached" (SQLSTATE PT429: PostgREST answers HTTP 429), which reaches the browser as that sentence;
- heartbeats (every 30 s, one statement per gateway) go to connection_heartbeats, which is not
  published: an open session's published row changes twice, at open and at close;
- cleanup_stale_connections() expires sessions without a heartbeat for the grace period (default
  5 minutes), purge_closed_sessions() deletes closed ones after the retention (default 7 days);
  the periodic job `expire_sessions` runs both;
- kill_session() marks a session killed; the gateway holding it polls its sessions every second
  and drops both sides.

`Registry` is the gateway's async view; the functions below serve the CLI and the actors.
"""

from __future__ import annotations

import re
from datetime import timedelta

import psycopg

from worker import db
from worker.errors import ProxwatchError

PROTOCOLS = ("vnc", "term", "ssh")
HEARTBEAT_S = 30


class RegistryError(ProxwatchError):
    """The registry refused or failed; the message is one sentence for a person."""


class SessionRefused(RegistryError):
    """A limit refused the session (maximum number of connections … reached)."""


class TokenError(RegistryError):
    """The console link cannot be used (unknown, used, expired)."""


class NotFound(RegistryError):
    """No such session (or not visible to the caller)."""


def from_db_error(exc: psycopg.Error) -> RegistryError:
    """A database error raised by the registry's functions → the matching RegistryError."""
    message = (exc.diag.message_primary if exc.diag else None) or str(exc).strip().splitlines()[0]
    return {"PT429": SessionRefused, "PT410": TokenError, "P0002": NotFound}.get(exc.sqlstate or "", RegistryError)(
        message)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)?\s*$", re.I)


def parse_duration(text: str) -> timedelta:
    """'90s', '5m', '2h', '1d' or a number of seconds → timedelta; ValueError with a sentence."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a duration: use for example 90s, 5m, 2h or 1d")
    value, unit = float(match[1]), (match[2] or "s").lower()
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]]
    if seconds < 1:
        raise ValueError(f"{text!r} is shorter than one second")
    return timedelta(seconds=seconds)


def _run(conn: psycopg.Connection, name: str, params: dict | None = None, fetch: str = "one"):
    try:
        cur = conn.execute(db.q(name), params or {})
        rows = cur.fetchone() if fetch == "one" else cur.fetchall()
    except psycopg.Error as exc:
        conn.rollback()
        if isinstance(exc, psycopg.OperationalError):
            raise
        raise from_db_error(exc) from None
    conn.commit()
    return rows


def list_active(conn, team: str | None = None, protocol: str | None = None, user_id: str | None = None,
                limit: int = 50, offset: int = 0) -> list[dict]:
    return _run(conn, "active_connections", {"team": team, "protocol": protocol, "user_id": user_id,
                                             "limit": limit, "offset": offset}, fetch="all")


def kill(conn, session_id: str) -> dict:
    return _run(conn, "kill_session", {"id": session_id})["result"]


def cleanup(conn, max_age: timedelta | None = None) -> int:
    return _run(conn, "cleanup_stale_connections", {"max_age": max_age})["cleaned"]


def purge(conn) -> int:
    return _run(conn, "purge_closed_sessions")["purged"]


def stats(conn) -> dict:
    return _run(conn, "session_stats")["stats"]


def expire_and_purge(conn) -> tuple[int, int]:
    """The periodic job: expire stale sessions (configured grace), delete old closed ones."""
    return cleanup(conn), purge(conn)


class Registry:
    """The gateway's registry calls, on an async psycopg pool (autocommit connections)."""

    def __init__(self, pool, gateway_id: str):
        self.pool = pool
        self.gateway_id = gateway_id

    async def _one(self, name: str, params: dict):
        async with self.pool.connection() as conn:
            try:
                cur = await conn.execute(db.q(name), params)
                return await cur.fetchone()
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise from_db_error(exc) from None

    async def _all(self, name: str, params: dict) -> list:
        async with self.pool.connection() as conn:
            cur = await conn.execute(db.q(name), params)
            return await cur.fetchall()

    async def token(self, token: str, consume: bool) -> dict:
        """What the console link opens; consume takes it (once). TokenError otherwise."""
        if not token or len(token) > 200:
            raise TokenError("this console link is not valid: open the console from the dashboard")
        return (await self._one("console_token", {"token": token, "consume": consume}))["info"]

    async def capacity(self, server_id: str) -> str | None:
        return (await self._one("session_capacity", {"server_id": server_id}))["refusal"]

    async def open(self, *, user_id, server_id, protocol, target, guest_type=None, vmid=None, node=None,
                   client_ip=None, user_email=None) -> dict:
        """Register a session whose tunnel works; SessionRefused at a limit."""
        return await self._one("open_session", {
            "user_id": user_id, "server_id": server_id, "protocol": protocol, "target": target,
            "guest_type": guest_type, "vmid": vmid, "node": node, "client_ip": client_ip,
            "gateway": self.gateway_id, "user_email": user_email})

    async def close(self, session_id: str, reason: str) -> bool:
        return (await self._one("close_session", {"id": session_id, "reason": reason}))["closed"]

    async def failure(self, server_id: str | None) -> None:
        await self._one("session_failure", {"server_id": server_id})

    async def heartbeat(self, ids: list[str]) -> list[str]:
        """Heartbeat these sessions; returns those that are no longer open."""
        return [str(r["id"]) for r in await self._all("heartbeat_sessions", {"ids": ids})]

    async def not_open(self, ids: list[str]) -> list[dict]:
        return await self._all("sessions_not_open", {"ids": ids})
