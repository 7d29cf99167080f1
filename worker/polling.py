"""Poll one server → one connection_metrics row + (maybe) a status transition.

Steps of a poll:
1. read the server's address, TLS settings, credentials and learned timeout (poll_target);
2. GET /version and GET /cluster/status through worker.pve (fallback address on a
   connection-level failure), timing each call;
3. hand the result to the Recorder, which writes the metric row and rewrites the server row
   only when something a person sees changes (or "last checked" is older than
   PROXWATCH_STATUS_REFRESH, five minutes by default) — and, in the same transaction, opens,
   raises or closes the server's incident when its status moves to or from offline/degraded.

A failed poll is a result, not an error: it becomes a metric row with error_kind and a sentence.
Database errors propagate, so the actor retries them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from worker import db
from worker.crypto import Box
from worker.metrics import process as metrics
from worker.pve import CONFIG, TIMEOUT, PveClient, PveError
from worker.pve_clients import PveClients
from worker.settings import Settings

log = logging.getLogger(__name__)

# Fields of proxmox_servers a person sees change; a difference in any of them is a transition.
VISIBLE = ("connection_status", "health_check_error", "health_check_error_kind", "pve_version",
           "nodes_online", "nodes_total", "used_fallback")
WINDOW = 10              # recent polls considered for "degraded"
DEGRADED_FAILURES = 2    # failures among the last WINDOW polls that make an answering server degraded
MIN_TIMEOUT_SAMPLES = 5  # successful polls needed before the timeout is learned
# While the database is unreachable (a restart), measured results wait and are written when it is
# back: the measurement keeps its moment instead of being redone late.
WRITE_RETRY_S = 90
# The errors of an unreachable database (as opposed to a bad statement).
DB_DOWN = (psycopg.OperationalError, PoolTimeout)
# The statuses an incident is open for (worst first); see the migration `incidents`.
PROBLEM = ("offline", "degraded")
TARGET_TTL_S = 15        # how long a worker reuses a server's poll settings before reading them again
CALLS = 2                # API calls of one poll (GET /version, GET /cluster/status)
WRITE_GAP_S = 0.002      # group commit: how long the writer waits for one more caller …
WRITE_WINDOW_S = 0.010   # … and for all of them together, before it writes (tests/bench/bench_ingest.py)
# The rollups (hourly, daily) of the worker's writes are folded from a pending table (migration
# rollup_pending): once the writer has been idle for ROLLUP_IDLE_S after a write, and at least every
# ROLLUP_FOLD_S while writes keep coming (a backlog: then one upsert covers many polls per server).
# Not at every pause between a cycle's batches: a fold per few batches cost the steady cycle 25 % more
# Postgres CPU per poll (0.24 vs 0.19 ms with 2 ms here; tests/bench/bench_fleet_cycle.py).
ROLLUP_IDLE_S = 0.25
# Writer threads per process: while one commits, the next gathers and writes (the database and the
# Python side of a write overlap); polls of one server still serialize on lock_servers.
WRITER_THREADS = 2
ROLLUP_FOLD_S = 1.0
BATCH_MARGIN_S = 2.0     # a batched poll's deadline beyond its calls' timeouts (connect, TLS, the queue)


@dataclass
class PollResult:
    server_id: str
    scheduled_at: datetime
    created_at: datetime
    success: bool
    response_time_ms: int | None
    error_kind: str | None = None
    error_message: str | None = None
    used_fallback: bool = False
    pve_version: str | None = None
    nodes_online: int | None = None
    nodes_total: int | None = None
    quorate: bool | None = None
    server_name: str | None = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def learned_timeout(p95_ms: float | None, samples: int, settings: Settings) -> int | None:
    """Four times the p95 of recent successful response times, within [min, max]; None until
    enough polls have succeeded (the default timeout applies then)."""
    if p95_ms is None or samples < MIN_TIMEOUT_SAMPLES:
        return None
    return int(min(settings.timeout_max_ms, max(settings.timeout_min_ms, round(p95_ms * 4))))


def next_status(current: dict, flags: list[bool], latest: PollResult | None, offline_after: int) -> dict:
    """The visible status fields after the newest polls.

    current: the server row; flags: outcomes of the last polls, newest first (from the table);
    latest: the newest result, when it is the newest poll of the server (else None).
    Going offline takes `offline_after` consecutive failures; a single lost poll changes nothing.
    """
    status = {k: current.get(k) for k in VISIBLE}
    if not flags:
        return status
    if latest is not None and latest.success:
        status.update(pve_version=latest.pve_version, nodes_online=latest.nodes_online,
                      nodes_total=latest.nodes_total, used_fallback=latest.used_fallback)
    if flags[0]:
        failures = sum(1 for ok in flags[:WINDOW] if not ok)
        reasons = []
        nodes_online, nodes_total = status["nodes_online"], status["nodes_total"]
        if status["used_fallback"]:
            reasons.append("answers only on its fallback address")
        if nodes_online is not None and nodes_total and nodes_online < nodes_total:
            reasons.append(f"{nodes_total - nodes_online} of {nodes_total} cluster nodes offline")
        if latest is not None and latest.quorate is False:
            reasons.append("the cluster has lost quorum")
        if failures >= DEGRADED_FAILURES:
            reasons.append(f"{DEGRADED_FAILURES} or more of the last {WINDOW} polls failed")
        status.update(connection_status="degraded" if reasons else "online",
                      health_check_error="; ".join(reasons) or None, health_check_error_kind=None)
        return status
    consecutive = next((i for i, ok in enumerate(flags) if ok), len(flags))
    if consecutive >= offline_after:
        status["connection_status"] = "offline"
        if latest is not None and not latest.success:
            status.update(health_check_error=latest.error_message, health_check_error_kind=latest.error_kind)
    return status


def incident_arrays(changes: list[tuple]) -> dict:
    """The parameters of `record_incidents` for (server id, new status, poll time) changes: an
    offline server's incident carries the poll's error kind and message, a degraded one its reasons."""
    return {
        "server_id": [sid for sid, _, _ in changes],
        "status": [status["connection_status"] for _, status, _ in changes],
        "at": [at for _, _, at in changes],
        "error_kind": [status["health_check_error_kind"] if status["connection_status"] == "offline" else None
                       for _, status, _ in changes],
        "error_message": [status["health_check_error"] if status["connection_status"] in PROBLEM else None
                          for _, status, _ in changes],
    }


class Recorder:
    """Writes poll results: metric rows, then the status rows that change and their incidents — all in
    one transaction.

    `write(results)` writes a batch now. `record(result)` is group commit for worker threads: each
    caller waits until its row is committed (so an acknowledged message is a stored row), while
    one writer thread commits whatever has queued up meanwhile in a single transaction.
    """

    # The writer's largest transaction: with a backlog, larger batches amortize the per-statement costs
    # (the rollup trigger's upserts, the status read, the commit) — tests/bench/bench_ingest.py.
    def __init__(self, pool: ConnectionPool, settings: Settings, max_batch: int = 2000):
        self.pool = pool
        self.settings = settings
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._writing = 0                    # writer threads gathering or writing a batch
        self._unfolded = False               # they committed rows not folded since
        self._last_fold = time.monotonic()
        # What the folds did in this process (tests/bench/bench_ingest.py reports them).
        self.fold_stats = {"folds": 0, "seconds": 0.0, "pending_rows": 0, "polls": 0, "max_lag_s": 0.0}

    # -- group commit ---------------------------------------------------------------------------
    def record(self, result: PollResult, timeout: float = 120) -> int:
        """Queue one result and wait until it is committed; raises what the write raised."""
        return self.record_many([result], timeout)

    def record_many(self, results: list[PollResult], timeout: float = 120) -> int:
        """Queue the results of a batch and wait until all of them are committed (in one transaction,
        usually with whatever else queued meanwhile); raises what the write raised.

        One queue entry and one future per call, not per result: with 16 threads handing over
        16-result messages, the writer's wake-ups and the callers' hand-offs are a sixteenth."""
        if not results:
            return 0
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < WRITER_THREADS:
                self._threads.append(threading.Thread(target=self._writer, name="metric-writer", daemon=True))
                self._threads[-1].start()
        future: Future = Future()
        self._queue.put((results, future))
        future.result(timeout)
        return len(results)

    def _writer(self) -> None:
        while True:
            try:
                # With rows not folded yet, wait only a moment for more: when no writer is writing
                # then, the recorder is idle and folds.
                first = self._queue.get(timeout=ROLLUP_IDLE_S if self._unfolded else None)
            except queue.Empty:
                if self._writing == 0:
                    self._fold_quietly()
                continue
            with self._lock:
                self._writing += 1  # from the first entry taken to the write's end: not idle
            batch = [first]
            size = len(batch[0][0])
            # Group commit: what has queued, then what keeps arriving (each within WRITE_GAP_S of the
            # last, for WRITE_WINDOW_S at most) — the callers released by the previous commit.
            window_end = time.monotonic() + WRITE_WINDOW_S
            while size < self.max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    wait = min(WRITE_GAP_S, window_end - time.monotonic())
                    if wait <= 0:
                        break
                    try:
                        entry = self._queue.get(timeout=wait)
                    except queue.Empty:
                        break
                batch.append(entry)
                size += len(entry[0])
            try:
                written = self._write_retrying([r for results, _ in batch for r in results])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                self._unfolded = self._unfolded or written > 0
                for _, fut in batch:
                    fut.set_result(written)
            finally:
                with self._lock:
                    self._writing -= 1
            if self._unfolded and time.monotonic() - self._last_fold >= ROLLUP_FOLD_S:
                self._fold_quietly()

    def _fold_quietly(self) -> None:
        """The writer thread's fold: a failure is logged, not raised (the rows stay pending, durable,
        for the next fold or the periodic fold_rollup job)."""
        self._unfolded = False
        self._last_fold = time.monotonic()
        try:
            self.fold()
        except Exception as exc:  # noqa: BLE001 - the pending rows wait for the next fold
            log.warning("folding the rollups failed (%s); the periodic job will",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    def fold(self, timeout: float | None = None) -> dict:
        """Add the pending rollup deltas (of every worker's committed writes) to the hourly and daily
        rollups, in one transaction; returns the pending rows taken, their polls and the oldest's age.
        `timeout`: how long to wait for a database connection (the pool's default when None)."""
        started = time.perf_counter()
        with self.pool.connection(timeout=timeout) as conn:
            row = dict(conn.execute(db.q("fold_rollup")).fetchone())
            conn.commit()
        st = self.fold_stats
        st["folds"] += 1
        st["seconds"] += time.perf_counter() - started
        st["pending_rows"] += row["pending"]
        st["polls"] += row["polls"]
        if row["lag_s"] is not None:
            st["max_lag_s"] = max(st["max_lag_s"], row["lag_s"])
        return row

    def _write_retrying(self, results: list[PollResult]) -> int:
        """write(), retried with backoff while the database is unreachable (up to WRITE_RETRY_S)."""
        deadline = time.monotonic() + WRITE_RETRY_S
        delay = 0.2
        while True:
            try:
                return self.write(results, fold=False)
            except DB_DOWN as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unreachable (%s); keeping %d results and retrying",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                            len(results))
                time.sleep(delay)
                delay = min(delay * 2, 5)

    # -- the write ------------------------------------------------------------------------------
    def write(self, results: list[PollResult], now: datetime | None = None, fold: bool = True) -> int:
        """Insert the metric rows and apply status transitions; returns the number of new rows.
        The rollups of the rows are folded before it returns, unless `fold` is false (the writer
        thread folds on its own schedule)."""
        if not results:
            return 0
        started = time.perf_counter()
        try:
            written = self._write(results, now or utcnow())
        except psycopg.errors.CheckViolation as exc:
            if "no partition of relation" not in str(exc):
                raise
            # The day's raw partition is missing (the hourly job that makes them a week ahead did
            # not run for that long): make it and write again, rather than lose the polls.
            self._make_partitions(min(r.scheduled_at for r in results))
            written = self._write(results, now or utcnow())
        metrics.observe_db_write(time.perf_counter() - started)
        if fold and written:
            self.fold()
        return written

    def _make_partitions(self, earliest: datetime) -> None:
        with self.pool.connection() as conn:
            made = conn.execute(db.q("ensure_metric_partitions_from"),
                                {"days_ahead": 7, "from": earliest.astimezone(timezone.utc).date()}).fetchall()
            conn.commit()
        log.warning("made %d missing partitions of connection_metrics from %s", len(made), earliest.date())

    def _write(self, results: list[PollResult], now: datetime) -> int:
        with self.pool.connection() as conn, conn.pipeline():
            # Pipeline mode: BEGIN, the lock, the insert and the status read go out in one round trip.
            with conn.transaction():
                # The rollup trigger queues this transaction's deltas for the fold (durable with the rows).
                conn.execute(db.q("defer_rollup"))
                conn.execute(db.q("lock_servers"), {"ids": sorted({r.server_id for r in results})})
                inserted = conn.execute(db.q("insert_metrics"), {
                    "server_id": [r.server_id for r in results],
                    "scheduled_at": [r.scheduled_at for r in results],
                    "created_at": [r.created_at for r in results],
                    "success": [r.success for r in results],
                    "response_time_ms": [r.response_time_ms for r in results],
                    "error_kind": [r.error_kind for r in results],
                    "error_message": [r.error_message for r in results],
                    "used_fallback": [r.used_fallback for r in results],
                }).fetchall()
                if not inserted:
                    return 0
                written = {str(row["server_id"]) for row in inserted}
                ids = sorted(written)
                newest: dict[str, PollResult] = {}
                for r in results:
                    if r.server_id in written and (r.server_id not in newest or r.scheduled_at > newest[r.server_id].scheduled_at):
                        newest[r.server_id] = r
                rows = conn.execute(db.q("status_inputs"), {"ids": ids}).fetchall()
                updates = []
                refresh_due = []
                incidents = []  # (server id, new status, the time of the poll that made it so)
                for row in rows:
                    sid = str(row["id"])
                    latest = newest.get(sid)
                    if latest is not None and row["newest"] is not None and latest.scheduled_at < row["newest"]:
                        latest = None  # a late retry of an older poll: it counts, but does not set the status
                    status = next_status(row, row["flags"] or [], latest, self.settings.offline_after)
                    changed = any(status[k] != row[k] for k in VISIBLE)
                    stale = row["last_health_check_at"] is None or \
                        now - row["last_health_check_at"] >= timedelta(seconds=self.settings.status_refresh_s)
                    if changed and (status["connection_status"] in PROBLEM or row["connection_status"] in PROBLEM):
                        incidents.append((row["id"], status, row["newest"]))
                    if changed or stale:
                        connected = row["last_connected_at"]
                        if (row["flags"] or [False])[0]:
                            connected = max(filter(None, [connected, latest.created_at if latest else None]),
                                            default=now)
                        updates.append({**row, **status, "id": row["id"], "last_health_check_at": now,
                                        "last_connected_at": connected})
                        refresh_due.append(row["id"])
                if refresh_due:
                    stats = {s["id"]: s for s in conn.execute(db.q("server_stats"), {"ids": refresh_due}).fetchall()}
                    for u in updates:
                        s = stats.get(u["id"])
                        if s:
                            u["success_rate"] = s["success_rate"]
                            u["avg_response_time_ms"] = s["avg_response_time_ms"]
                            u["learned_timeout_ms"] = learned_timeout(s["p95_ms"], s["samples"], self.settings)
                    with conn.cursor() as cur:
                        cur.executemany(db.q("update_status"), updates)
                if incidents:
                    # The incident rows of these status changes, in the same transaction.
                    conn.execute(db.q("record_incidents"), incident_arrays(incidents))
                return len(inserted)


class Poller:
    """Polls servers; keeps one PveClient per server (keep-alive) while its settings are unchanged."""

    def __init__(self, pool: ConnectionPool, box: Box, settings: Settings, ca_file: str | None = None):
        self.pool = pool
        self.box = box
        self.settings = settings
        self.ca_file = ca_file or settings.pve_ca_file
        self.clients = PveClients(box, self.ca_file)
        self._targets: dict[str, tuple[float, dict]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def _threads(self) -> ThreadPoolExecutor:
        """The threads that run the polls of batched messages: PROXWATCH_WORKER_THREADS per process,
        shared by every message the process holds."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.settings.worker_threads,
                                                    thread_name_prefix="poll")
            return self._executor

    def _client(self, row: dict) -> PveClient:
        return self.clients.get(row)[0]

    def target(self, server_id: str) -> dict | None:
        """The server's poll settings: read from the database at most every TARGET_TTL_S (a changed
        address or credential applies within that), and the last known ones while the database is
        unreachable, so a database restart does not stop the measurements."""
        sid = str(server_id)
        cached = self._targets.get(sid)
        if cached and time.monotonic() - cached[0] < TARGET_TTL_S:
            return cached[1]
        try:
            with self.pool.connection(timeout=2) as conn:
                row = conn.execute(db.q("poll_target"), {"server_id": sid}).fetchone()
        except DB_DOWN:
            if cached is None:
                raise
            return cached[1]
        if row is None:
            self._targets.pop(sid, None)
        else:
            self._targets[sid] = (time.monotonic(), row)
        return row

    def targets(self, server_ids: list[str]) -> dict[str, dict]:
        """target() for several servers: the ones not cached (or cached too long) read in one query."""
        now = time.monotonic()
        out: dict[str, dict] = {}
        stale = []
        for sid in map(str, server_ids):
            cached = self._targets.get(sid)
            if cached and now - cached[0] < TARGET_TTL_S:
                out[sid] = cached[1]
            else:
                stale.append(sid)
        if not stale:
            return out
        try:
            with self.pool.connection(timeout=2) as conn:
                rows = {str(r["id"]): r for r in conn.execute(db.q("poll_targets"), {"ids": stale}).fetchall()}
        except DB_DOWN:
            if any(sid not in self._targets for sid in stale):
                raise
            rows = None
        for sid in stale:
            if rows is None:
                out[sid] = self._targets[sid][1]
            elif sid in rows:
                self._targets[sid] = (now, rows[sid])
                out[sid] = rows[sid]
            else:
                self._targets.pop(sid, None)
        return out

    def poll_many(self, polls: list[tuple[str, datetime]]) -> list[PollResult]:
        """Poll the (server_id, scheduled_at) of one batched message concurrently; returns a result
        for each server that exists.

        Steps: read the servers' settings (one query for those not cached); start every poll on the
        process's poll threads; wait for each until its own deadline (its timeout for each call,
        twice with a fallback address, plus a margin) — a poll still running then is recorded as a
        timeout, so a slow server delays the batch by its own timeout at most; an unexpected error
        of one poll becomes its failure row instead of failing the batch (a poison server)."""
        rows = self.targets([sid for sid, _ in polls])
        pending = []
        for sid, scheduled_at in polls:
            row = rows.get(str(sid))
            if row is None:
                continue
            timeout_ms = row["learned_timeout_ms"] or self.settings.timeout_default_ms
            limit_s = timeout_ms / 1000 * CALLS * (2 if row["fallback_url"] else 1) + BATCH_MARGIN_S
            began: list[float] = []  # when a poll thread took it (waiting for a thread is not the server's fault)
            pending.append((row, scheduled_at, limit_s, timeout_ms, began,
                            self._threads().submit(self._poll_started, began, str(sid), scheduled_at, row)))
        results = []
        for row, scheduled_at, limit_s, timeout_ms, began, future in pending:
            try:
                result = self._wait(future, began, limit_s)
            except FutureTimeout:
                created_at = utcnow() - timedelta(seconds=limit_s)
                host = row["base_url"].split("://", 1)[-1].rstrip("/")
                result = PollResult(server_id=str(row["id"]), scheduled_at=scheduled_at, created_at=created_at,
                                    success=False, response_time_ms=None, error_kind=TIMEOUT,
                                    error_message=f"{host} did not answer within {timeout_ms} ms",
                                    server_name=row["name"])
            except DB_DOWN:
                raise  # the whole message is retried
            except Exception as exc:  # noqa: BLE001 - one poison server does not fail the batch
                log.warning("poll of %s could not run: %s", row["name"], exc.__class__.__name__)
                result = PollResult(server_id=str(row["id"]), scheduled_at=scheduled_at, created_at=utcnow(),
                                    success=False, response_time_ms=None, error_kind=CONFIG,
                                    error_message=f"the poll could not run ({exc.__class__.__name__})",
                                    server_name=row["name"])
            if result is not None:
                results.append(result)
        return results

    def _poll_started(self, began: list, server_id: str, scheduled_at: datetime, row: dict) -> PollResult | None:
        began.append(time.monotonic())
        return self.poll(server_id, scheduled_at, row)

    @staticmethod
    def _wait(future: Future, began: list, limit_s: float):
        """The poll's result, or FutureTimeout once it has run for limit_s (counted from when a poll
        thread took it)."""
        while True:
            wait = 0.5 if not began else began[0] + limit_s - time.monotonic()
            try:
                return future.result(max(0.0, wait))
            except FutureTimeout:
                if began and time.monotonic() >= began[0] + limit_s:
                    raise

    def client(self, server_id: str) -> tuple[dict, PveClient] | None:
        """The server's settings row and its (shared, keep-alive) PVE client, for any API call;
        None when the server does not exist."""
        row = self.target(server_id)
        return None if row is None else (row, self._client(row))

    def poll(self, server_id: str, scheduled_at: datetime, row: dict | None = None) -> PollResult | None:
        """Poll one server now (with its settings row when the caller has it); None when the server
        no longer exists."""
        started = time.perf_counter()
        result = self._poll(server_id, scheduled_at, row)
        if result is not None:
            metrics.observe_poll(result.success, result.error_kind, time.perf_counter() - started)
        return result

    def _poll(self, server_id: str, scheduled_at: datetime, row: dict | None = None) -> PollResult | None:
        row = row or self.target(server_id)
        if row is None:
            return None
        timeout_ms = row["learned_timeout_ms"] or self.settings.timeout_default_ms
        created_at = utcnow()
        try:
            probe = self._client(row).probe(timeout_ms)
        except PveError as exc:
            return PollResult(server_id=str(server_id), scheduled_at=scheduled_at, created_at=created_at,
                              success=False, response_time_ms=None, error_kind=exc.kind,
                              error_message=exc.message, server_name=row["name"])
        except Exception as exc:  # noqa: BLE001 - e.g. a credential that no longer decrypts
            log.warning("poll of %s could not run: %s", row["name"], exc.__class__.__name__)
            return PollResult(server_id=str(server_id), scheduled_at=scheduled_at, created_at=created_at,
                              success=False, response_time_ms=None, error_kind=CONFIG,
                              error_message=str(exc), server_name=row["name"])
        return PollResult(server_id=str(server_id), scheduled_at=scheduled_at, created_at=created_at, success=True,
                          response_time_ms=probe.response_time_ms, used_fallback=probe.used_fallback,
                          pve_version=probe.version, nodes_online=probe.nodes_online, nodes_total=probe.nodes_total,
                          quorate=probe.quorate, server_name=row["name"])


def poll_all_once(poller: Poller, recorder: Recorder, server_ids: list[str], threads: int = 16) -> list[PollResult]:
    """Poll the given servers concurrently now and record every result (used by `poll --once`).

    The poll is keyed by the exact time it was asked for (microseconds), not the scheduler's whole
    second: (server_id, scheduled_at) is unique, so two `poll --once` within one second would
    otherwise write one row and report two. (A retried scheduler message keeps its own key.)"""
    from concurrent.futures import ThreadPoolExecutor

    scheduled_at = utcnow()
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(server_ids) or 1))) as ex:
        results = [r for r in ex.map(lambda sid: poller.poll(sid, scheduled_at), server_ids) if r is not None]
    recorder.write(results)
    return results


def sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)
