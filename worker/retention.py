"""Retention: the audit log and finished operations are kept for a number of days
(PROXWATCH_AUDIT_RETENTION_DAYS, PROXWATCH_OPERATIONS_RETENTION_DAYS), then deleted by the hourly
job `purge_expired` (worker/schedule.py).

Steps of a purge, per table (sql/retention.sql):
1. delete at most BATCH of its oldest expired rows, and commit;
2. again, until a batch comes back short or MAX_BATCHES ran (the next run goes on from there).
So a backlog of millions is worked off over a few runs, never in one transaction that holds its
locks or its WAL for minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker import db
from worker.settings import RetentionSettings

BATCH = 5_000
MAX_BATCHES = 200   # at most a million rows per table and run


@dataclass
class Purged:
    audit_rows: int = 0
    operations: int = 0


def _drain(conn, query: str, days: int, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        deleted = conn.execute(db.q(query), {"days": days, "batch": batch}).rowcount
        conn.commit()
        total += deleted
        if deleted < batch:
            break
    return total


def purge(conn, retention: RetentionSettings, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> Purged:
    """Delete what is past its retention, in committed batches; returns how much went."""
    return Purged(
        audit_rows=_drain(conn, "purge_audit_log", retention.audit_days, batch, max_batches),
        operations=_drain(conn, "purge_finished_operations", retention.operations_days, batch, max_batches))
