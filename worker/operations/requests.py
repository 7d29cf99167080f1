"""Requesting an operation: what the CLI, the daily certificate job and the tests call.

The validation lives in SQL (`enqueue_operation()`), so a request through the API (the dashboard's
request_operation()) and one from Python are refused with the same sentence. Each function works
in the caller's transaction; the caller commits.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from worker import db
from worker.errors import ProxwatchError
from worker.operations.common import AUDIT_FAIL, audit_end

# The SQL states enqueue_operation() refuses with (bad input, not found, not allowed, a race lost).
REFUSAL_STATES = {"22023", "PT404", "42501", "22P02", "40001"}


class RequestRefused(ProxwatchError):
    """The request was refused; nothing was written."""


def enqueue(conn: psycopg.Connection, server_id, op_type: str, params: dict | None = None,
            created_by: str = "user", user_id=None) -> dict:
    """Queue an operation in the caller's transaction (the caller commits): the seed's shape,
    {"operationId", "status": "started" | "already_running", "existingOperation": {…}}.
    RequestRefused with one sentence for bad input (the transaction is rolled back: nothing written)."""
    try:
        row = conn.execute(db.q("ops_enqueue"), {"server_id": str(server_id), "type": op_type,
                                                 "params": Jsonb(params or {}), "created_by": created_by,
                                                 "user_id": user_id}).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate not in REFUSAL_STATES:
            raise
        conn.rollback()
        raise RequestRefused(exc.diag.message_primary or str(exc)) from None
    return row["result"]


def dispatched(conn: psycopg.Connection, operation_id) -> None:
    """Record that the caller hands the operation to the broker itself (so the dispatch job does not)."""
    conn.execute(db.q("ops_mark_dispatched"), {"id": operation_id})


def fail_unsent(conn: psycopg.Connection, operation_id, error: str) -> None:
    """End an operation that could not be handed to any worker (the broker is down): failed now,
    rather than started by surprise when a worker comes back. Audited; the caller commits."""
    row = conn.execute(db.q("ops_fail"), {"id": operation_id, "message": "Not started", "error": error,
                                          "kind": "not_started", "metadata": Jsonb({})}).fetchone()
    if row is not None:
        audit_end(conn, AUDIT_FAIL, row, {"error": error, "kind": "not_started"}, actor="system")
