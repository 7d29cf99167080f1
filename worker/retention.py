"""Retention: the audit log and finished operations are kept for a number of days
(PROXWATCH_AUDIT_RETENTION_DAYS, PROXWATCH_OPERATIONS_RETENTION_DAYS), then deleted by the hourly
job `purge_expired` (worker/schedule.py), which also prunes the history tiers (`prune`, below).

Steps of a purge, per table (sql/retention.sql):
1. delete at most BATCH of its oldest expired rows, and commit;
2. again, until a batch comes back short or MAX_BATCHES ran (the next run goes on from there).
So a backlog of millions is worked off over a few runs, never in one transaction that holds its
locks or its WAL for minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from psycopg import sql

from worker import db
from worker.settings import RetentionSettings

BATCH = 5_000
MAX_BATCHES = 200   # at most a million rows per table and run
PARTITIONS_AHEAD = 7   # raw partitions made ahead of today (the job runs hourly: a week of slack)


@dataclass
class Partition:
    name: str
    day: object
    estimated_rows: int | None   # None: never analyzed yet
    bytes: int
    state: str                   # attached, pending (an interrupted detach), detached (not dropped yet)


@dataclass
class Pruned:
    """What prune removed (or, dry, would remove) per tier."""
    partitions: list[Partition] = field(default_factory=list)
    hourly_rows: int = 0
    daily_rows: int = 0
    partitions_made: int = 0
    raw_skipped: bool = False    # another pruner held the raw tier's lock
    steps: list[tuple[str, float, float]] = field(default_factory=list)   # (step, start, end): perf_counter

    def step(self, name: str, start: float) -> None:
        self.steps.append((name, start, time.perf_counter()))


@dataclass
class Purged:
    audit_rows: int = 0
    operations: int = 0
    history: Pruned = field(default_factory=Pruned)


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
        operations=_drain(conn, "purge_finished_operations", retention.operations_days, batch, max_batches),
        history=prune(conn, retention, batch=batch, max_batches=max_batches))


def _partition_statement(name: str, partition: str) -> sql.Composed:
    return sql.SQL(db.q(name)).format(partition=sql.Identifier(partition))


def prune(conn, retention: RetentionSettings, dry_run: bool = False, batch: int = BATCH,
          max_batches: int = MAX_BATCHES) -> Pruned:
    """Prune the history tiers; with dry_run, only say what would go.

    1. make the raw partitions of the coming week (a poll always finds its day's partition);
    2. raw polls: under a session advisory lock (another pruner skips this tier), each partition
       whose whole day is older than PROXWATCH_RAW_RETENTION_DAYS is detached CONCURRENTLY (inserts
       into the other partitions never wait) and dropped; the leftovers of an interrupted run (a
       pending detach, a detached table) are finished first, so a run after a crash completes it;
    3. hourly, then daily rollup rows past their retention are deleted in committed batches
       (daily: never when PROXWATCH_DAILY_RETENTION_DAYS is 0).
    """
    out = Pruned()
    conn.commit()
    t = time.perf_counter()
    if not dry_run:
        out.partitions_made = conn.execute(db.q("ensure_metric_partitions"),
                                           {"days_ahead": PARTITIONS_AHEAD}).fetchone()["created"]
        conn.commit()
    expired = [Partition(**r) for r in conn.execute(db.q("expired_metric_partitions"),
                                                   {"days": retention.raw_days}).fetchall()]
    conn.commit()
    out.step("make partitions ahead, list expired", t)
    if dry_run:
        out.partitions = expired
    elif expired:
        out.raw_skipped = not conn.execute(db.q("prune_lock")).fetchone()["locked"]
        conn.commit()
        if not out.raw_skipped:
            autocommit = conn.autocommit
            conn.autocommit = True   # DETACH … CONCURRENTLY cannot run inside a transaction
            try:
                # Read again under the lock: a pruner that held it before may have dropped some.
                for p in [Partition(**r) for r in conn.execute(db.q("expired_metric_partitions"),
                                                              {"days": retention.raw_days}).fetchall()]:
                    t = time.perf_counter()
                    if p.state == "attached":
                        conn.execute(_partition_statement("detach_metric_partition", p.name))
                    elif p.state == "pending":
                        conn.execute(_partition_statement("finalize_metric_partition", p.name))
                    out.step(f"detach {p.name}", t)
                    t = time.perf_counter()
                    conn.execute(_partition_statement("drop_metric_partition", p.name))
                    out.step(f"drop {p.name}", t)
                    out.partitions.append(p)
            finally:
                conn.execute(db.q("prune_unlock"))
                conn.autocommit = autocommit
    if dry_run:
        out.hourly_rows = conn.execute(db.q("count_expired_hourly"), {"days": retention.hourly_days}).fetchone()["n"]
        if retention.daily_days:
            out.daily_rows = conn.execute(db.q("count_expired_daily"),
                                          {"days": retention.daily_days}).fetchone()["n"]
        conn.rollback()
        return out
    t = time.perf_counter()
    out.hourly_rows = _drain(conn, "purge_hourly", retention.hourly_days, batch, max_batches)
    if retention.daily_days:
        out.daily_rows = _drain(conn, "purge_daily", retention.daily_days, batch, max_batches)
    out.step("rollup rows past retention", t)
    return out


def refresh_fleet_uptime(conn) -> int:
    """fleet_overview()'s per-server window sums for the last complete hour (the fleet_uptime table);
    returns the servers written, 0 when every one was already current. Two transactions: the first
    waits for the rollup writers in flight, the second sums (see migration 20261130005000)."""
    barrier = conn.execute(db.q("fleet_uptime_barrier")).fetchone()["barrier"]
    conn.commit()
    if barrier is None:
        return 0
    servers = conn.execute(db.q("refresh_fleet_uptime"), {"barrier": barrier}).fetchone()["servers"]
    conn.commit()
    return servers
