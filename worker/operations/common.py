"""What every part of an operation's life shares: the failure a handler raises, the clock, and the
audit entry that ends an operation."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg

from worker import audit
from worker.errors import ProxwatchError

# Audit actions of the lifecycle.
AUDIT_COMPLETE, AUDIT_FAIL = "operation.complete", "operation.fail"


class OperationFailed(ProxwatchError):
    """The operation failed; the message is the sentence a person reads."""

    def __init__(self, message: str, kind: str = "failed", metadata: dict | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.metadata = metadata or {}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def audit_end(conn: psycopg.Connection, action: str, row: dict, details: dict, actor: str | None = None) -> None:
    """Audit the end of an operation (`row` as the ops_complete / ops_fail queries return it), in the
    caller's transaction: who asked, what it acted on, and the details."""
    audit.record(conn, action, tenant_id=row["tenant_id"], user_id=row["requested_by"],
                 actor=actor or row["created_by"], server_id=row["server_id"], target_type=row["target_type"],
                 target_id=row["target"], details={"operation_id": str(row["id"]),
                                                   "operation_type": row["operation_type"], **details})
