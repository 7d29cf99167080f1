"""Poll one server → one connection_metrics row + (maybe) a status transition.

Steps of a poll:
1. read the server's address, TLS settings, credentials and learned timeout (poll_target);
2. GET /version and GET /cluster/status through worker.pve (fallback address on a
   connection-level failure), timing each call;
3. hand the result to the Recorder, which writes the metric row (acknowledged once committed);
4. the Recorder's fold, within a second (migrations rollup_pending, status_fold), adds the row to the
   hourly and daily rollups and decides the server's status from its newest polls: it rewrites the
   server row only when something a person sees changes (or "last checked" is older than
   PROXWATCH_STATUS_REFRESH, five minutes by default) and, in the same transaction, opens, raises or
   closes the server's incident when its status moves to or from offline/degraded.

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
from worker.pg_arrays import BoolArray, Int4Array, TextArray, TimestamptzArray, UuidArray
from worker.pve import CONFIG, MAX_VERSION, TIMEOUT, PveClient, PveError
from worker.pve_clients import PveClients
from worker.settings import Settings

log = logging.getLogger(__name__)

# While the database is unreachable (a restart), measured results wait and are written when it is
# back: the measurement keeps its moment instead of being redone late.
WRITE_RETRY_S = 90
# The errors of an unreachable database (as opposed to a bad statement).
DB_DOWN = (psycopg.OperationalError, PoolTimeout)
TARGET_TTL_S = 15        # how long a worker reuses a server's poll settings before reading them again
CALLS = 2                # API calls of one poll (GET /version, GET /cluster/status)
WRITE_GAP_S = 0.0005     # group commit: how long the writer waits for one more caller …
WRITE_WINDOW_S = 0.002    # … and for all of them together, before it writes: with the status in the fold a
# write is short, and waiting longer only left the database idle (10 ms: 0.29 x COPY, 2 ms: 0.35 x;
# tests/bench/bench_ingest.py)
# The rollups (hourly, daily) of the worker's writes are folded from a pending table (migration
# rollup_pending), and the status of their servers decided (migration status_fold): once the writers
# have been idle for ROLLUP_IDLE_S after a write, and at least every ROLLUP_FOLD_S while writes keep
# coming (a backlog: then one upsert and one status decision cover many polls per server).
# Not at every pause between a cycle's batches: a fold per few batches cost the steady cycle 25 % more
# Postgres CPU per poll (0.24 vs 0.19 ms with 2 ms here; tests/bench/bench_fleet_cycle.py).
ROLLUP_IDLE_S = 0.25
# Writer threads per process: while one commits, the next gathers and writes (the database and the
# Python side of a write overlap; 3 or 4 were slower: more, smaller transactions). The fold has a
# thread of its own, so writes go on while it runs.
WRITER_THREADS = 2
ROLLUP_FOLD_S = 1.0
BATCH_MARGIN_S = 2.0     # a batched poll's deadline beyond its calls' timeouts (connect, TLS, the queue)
MAX_MESSAGE = 1000       # characters of an error sentence kept in a metric row


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


def metric_params(results: list[PollResult]) -> dict:
    """The parameters of `insert_metrics` (sql/queries.sql) for a batch of results: one array per field,
    encoded whole (worker.pg_arrays). Text that came from a server goes through `printable`."""
    return {
        "server_id": UuidArray([r.server_id for r in results]),
        "scheduled_at": TimestamptzArray([r.scheduled_at for r in results]),
        "created_at": TimestamptzArray([r.created_at for r in results]),
        "success": BoolArray([r.success for r in results]),
        "response_time_ms": Int4Array([r.response_time_ms for r in results]),
        "error_kind": TextArray([r.error_kind for r in results]),
        "error_message": TextArray([printable(r.error_message, MAX_MESSAGE) for r in results]),
        "used_fallback": BoolArray([r.used_fallback for r in results]),
        "pve_version": TextArray([printable(r.pve_version, MAX_VERSION) for r in results]),
        "nodes_online": Int4Array([r.nodes_online for r in results]),
        "nodes_total": Int4Array([r.nodes_total for r in results]),
        "quorate": BoolArray([r.quorate for r in results]),
    }


def printable(text: str | None, limit: int) -> str | None:
    """Text a server had a say in (an error's reason phrase, a version), as Postgres takes it and a
    person reads it: every character that is not printable (NUL, which Postgres refuses, control
    characters, a lone surrogate, which cannot be encoded) becomes a space; at most `limit` characters.
    One server's odd answer must not fail the insert of the whole batch it shares with others."""
    if text is None or (len(text) <= limit and text.isprintable()):
        return text
    return "".join(ch if ch.isprintable() else " " for ch in text[:limit])


def fold_params(settings: Settings) -> dict:
    """The parameters of `fold_rollup` (sql/queries.sql): the status rules' settings."""
    return {"offline_after": settings.offline_after, "refresh_s": float(settings.status_refresh_s),
            "timeout_min_ms": settings.timeout_min_ms, "timeout_max_ms": settings.timeout_max_ms}


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
        self._changed = threading.Condition(self._lock)  # a write began or ended (the fold thread waits on it)
        self._threads: list[threading.Thread] = []
        self._writing = 0                    # writer threads gathering or writing a batch
        self._unfolded_since: float | None = None  # when rows not folded yet were first committed
        self._last_write = time.monotonic()  # when the last write ended
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
            if not any(t.name == "metric-fold" for t in self._threads):
                self._threads.append(threading.Thread(target=self._folder, name="metric-fold", daemon=True))
                self._threads[-1].start()
            while sum(t.name == "metric-writer" for t in self._threads) < WRITER_THREADS:
                self._threads.append(threading.Thread(target=self._writer, name="metric-writer", daemon=True))
                self._threads[-1].start()
        future: Future = Future()
        self._queue.put((results, future))
        future.result(timeout)
        return len(results)

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
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
            written = 0
            try:
                written = self._write_retrying([r for results, _ in batch for r in results])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                for _, fut in batch:
                    fut.set_result(written)
            finally:
                with self._changed:
                    self._writing -= 1
                    self._last_write = time.monotonic()
                    if written and self._unfolded_since is None:
                        self._unfolded_since = self._last_write
                    self._changed.notify_all()

    def _folder(self) -> None:
        """The fold thread: folds what the writers committed once they have been idle for ROLLUP_IDLE_S,
        and at least every ROLLUP_FOLD_S while writes keep coming — beside the writers, which go on
        writing meanwhile. A write committed after the fold's snapshot marks the rows unfolded again."""
        while True:
            with self._changed:
                while True:
                    now = time.monotonic()
                    if self._unfolded_since is None:
                        wait = None
                    else:
                        idle = now - self._last_write if self._writing == 0 else 0.0
                        if idle >= ROLLUP_IDLE_S or now - self._unfolded_since >= ROLLUP_FOLD_S:
                            break
                        wait = min(ROLLUP_IDLE_S - idle, ROLLUP_FOLD_S - (now - self._unfolded_since))
                    self._changed.wait(wait)
                self._unfolded_since = None
            self._fold_quietly()

    def _fold_quietly(self) -> None:
        """The fold thread's fold: a failure is logged, not raised (the rows stay pending, durable,
        for the next fold or the periodic fold_rollup job)."""
        try:
            self.fold()
        except Exception as exc:  # noqa: BLE001 - the pending rows wait for the next fold
            log.warning("folding the rollups failed (%s); the periodic job will",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    def fold(self, timeout: float | None = None) -> dict:
        """Add the pending rollup deltas (of every worker's committed writes) to the hourly and daily
        rollups and decide the status of their servers (rewriting the rows that change, with their
        incidents), in one transaction (migration status_fold); returns the pending rows taken, their
        polls, the oldest's age, the servers looked at, the rows rewritten and the incidents touched.
        `timeout`: how long to wait for a database connection (the pool's default when None)."""
        started = time.perf_counter()
        with self.pool.connection(timeout=timeout) as conn:
            row = dict(conn.execute(db.q("fold_rollup"), fold_params(self.settings)).fetchone())
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
    def write(self, results: list[PollResult], fold: bool = True) -> int:
        """Insert the metric rows; returns the number of new rows. The fold (rollups, then the status
        of the servers and their incidents) runs before it returns, unless `fold` is false (the
        writer thread folds on its own schedule)."""
        if not results:
            return 0
        started = time.perf_counter()
        try:
            written = self._write(results)
        except psycopg.errors.CheckViolation as exc:
            if "no partition of relation" not in str(exc):
                raise
            # The day's raw partition is missing (the hourly job that makes them a week ahead did
            # not run for that long): make it and write again, rather than lose the polls.
            self._make_partitions(min(r.scheduled_at for r in results))
            written = self._write(results)
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

    def _write(self, results: list[PollResult]) -> int:
        # BEGIN, the mark, the insert and COMMIT in one round trip (pipeline mode); the rollup deltas
        # are queued for the fold in the same transaction, durable with the rows.
        params = metric_params(results)  # before the transaction begins: its backend does not wait for it
        with self.pool.connection() as conn:
            with conn.pipeline():
                conn.execute(db.q("defer_rollup"))
                cur = conn.execute(db.q("insert_metrics"), params)
                conn.commit()
            return cur.rowcount


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
