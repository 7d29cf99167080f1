"""Audit entries: connection.session.open, console.ticket.issue, operation.request, … (table audit_log)."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from worker import db

ACTORS = ("user", "cron", "auto", "system")


def record(conn: psycopg.Connection, action: str, *, tenant_id=None, user_id=None, actor: str = "user",
           server_id=None, target_type: str | None = None, target_id: str | None = None,
           details: dict | None = None) -> dict:
    """Write one entry in the caller's transaction (the caller commits with the change it audits)."""
    if actor not in ACTORS:
        raise ValueError(f"actor must be one of {ACTORS}, not {actor!r}")
    return conn.execute(db.q("insert_audit"), {
        "tenant_id": tenant_id, "user_id": user_id, "actor": actor, "action": action, "server_id": server_id,
        "target_type": target_type, "target_id": None if target_id is None else str(target_id),
        "details": Jsonb(details or {})}).fetchone()
