"""What every part of an operation's life shares: its timeouts and intervals (Tuning), the failure
a handler raises, the clock, and the audit entry that ends an operation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg

from worker import audit
from worker.errors import ProxwatchError
from worker.settings import OperationSettings

# Audit actions of the lifecycle.
AUDIT_COMPLETE, AUDIT_FAIL = "operation.complete", "operation.fail"


@dataclass(frozen=True)
class Tuning:
    """Timeouts and intervals (PROXWATCH_OPERATION_* in worker/settings.py)."""
    stale_s: int = 60               # no heartbeat for this long: the worker is gone, the operation fails
    pending_timeout_s: int = 600    # not taken by a worker within this: failed, never started late
    heartbeat_s: float = 5.0
    task_poll_ms: int = 1000        # how often a running PVE task's status and log are read
    redispatch_s: int = 30          # a pending operation handed to the broker this long ago is sent again
    progress_min_interval_s: float = 2.0   # timed progress is written at most this often
    ssh_timeout_s: int = 15
    task_deadline_s: int = 1800     # a PVE task running longer than this is given up on

    @classmethod
    def from_settings(cls, s: OperationSettings) -> "Tuning":
        return cls(stale_s=s.stale_s, pending_timeout_s=s.pending_timeout_s,
                   heartbeat_s=max(0.5, min(5.0, s.stale_s / 4)), task_poll_ms=s.task_poll_ms,
                   ssh_timeout_s=s.ssh_timeout_s, task_deadline_s=s.deadline_s)


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
