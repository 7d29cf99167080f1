"""Benchmark 3 — ingest: metric rows written per second by the worker path
(worker.polling.Recorder) against `COPY connection_metrics (…) FROM STDIN` of the same rows into
the same table (same indexes, same foreign keys, same rollup trigger), in the same run, each
from a fresh table state (metrics and rollup truncated, server status reset, checkpoint).

Worker path variants, PollResult objects prepared in advance (no PVE involved), 1,000 servers:
  (a) Recorder.record() — the group commit the actor uses — called from 16 threads (the
      worker's default), 32 and 64 threads, each thread recording one result after another;
  (b) Recorder.write() with batches of 500 (the writer thread's largest batch), one thread.
Reference: COPY of all the rows in one statement. Diagnostic: the insert_metrics statement
alone, in batches of 500 (what (b) costs without the status work), COPY in batches of 500,
EXPLAIN ANALYZE of one 500-row insert_metrics (its triggers' share), and for (a) and (b) the
time of each statement of Recorder.write (the pool's cursors and transactions are timed; the
pool is otherwise the one worker.actors makes: db.make_pool settings, 1..4 connections).
Goal: worker path rate / COPY rate ≥ 0.5.

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_ingest.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_INGEST_SERVERS (1000), BENCH_INGEST_ROWS (100000 for write/COPY),
BENCH_INGEST_RECORD_ROWS (50000 for each record() variant), BENCH_INGEST_THREADS (16,32,64).
"""

from __future__ import annotations

import os
import queue
import random
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from tests.bench.reporting import table
from worker import db
from worker.polling import PollResult, Recorder
from worker.settings import load as load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVERS = int(os.environ.get("BENCH_INGEST_SERVERS", "1000"))
ROWS = int(os.environ.get("BENCH_INGEST_ROWS", "100000"))
RECORD_ROWS = int(os.environ.get("BENCH_INGEST_RECORD_ROWS", "50000"))
THREADS = [int(x) for x in os.environ.get("BENCH_INGEST_THREADS", "16,32,64").split(",")]
BATCH = 500
COLUMNS = ("server_id", "tenant_id", "scheduled_at", "created_at", "success", "response_time_ms", "error_kind",
           "error_message", "used_fallback")


def make_results(servers: list[str], n: int, seed: int = 7) -> list[PollResult]:
    """n results, tick by tick (every server once per 10 s tick), as the scheduler produces them."""
    rnd = random.Random(seed)
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    out = []
    for k in range((n + len(servers) - 1) // len(servers)):
        at = base + timedelta(seconds=10 * k)
        for sid in servers:
            if len(out) == n:
                return out
            ok = rnd.random() > 0.03
            out.append(PollResult(
                server_id=sid, scheduled_at=at, created_at=at + timedelta(milliseconds=rnd.randint(1, 900)),
                success=ok, response_time_ms=rnd.randint(20, 200) if ok else None,
                error_kind=None if ok else "timeout",
                error_message=None if ok else "pve.example did not answer within 5000 ms",
                pve_version="8.2.4" if ok else None, nodes_online=3 if ok else None, nodes_total=3 if ok else None,
                quorate=True if ok else None))
    return out


def fresh_state(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate public.connection_metrics, public.connection_metrics_hourly")
        conn.execute("update public.proxmox_servers set connection_status = 'unknown', last_health_check_at = null,"
                     " last_connected_at = null, health_check_error = null, health_check_error_kind = null,"
                     " avg_response_time_ms = null, success_rate = null, learned_timeout_ms = null,"
                     " pve_version = null, nodes_online = null, nodes_total = null, used_fallback = false")
        conn.execute("vacuum analyze public.proxmox_servers")
        conn.execute("checkpoint")


def count_rows(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        return conn.execute("select (select count(*) from connection_metrics),"
                            " (select coalesce(sum(attempts), 0) from connection_metrics_hourly)").fetchone()


class Timings:
    """Time spent in each named query (sql/queries.sql), in BEGIN and in COMMIT, per connection of a pool."""

    def __init__(self):
        self.by_sql = {sql: name for name, sql in db.queries().items()}
        self.stats: dict[str, list] = {}
        self.lock = threading.Lock()

    def add(self, name, seconds):
        with self.lock:
            s = self.stats.setdefault(name, [0, 0.0])
            s[0] += 1
            s[1] += seconds

    def name(self, query) -> str:
        text = query if isinstance(query, str) else str(query)
        return self.by_sql.get(text.strip().rstrip(";"), "other")

    def pool(self, url: str) -> ConnectionPool:
        """A pool like worker.db.make_pool (same size as worker.actors uses), whose cursors and
        transactions report their time here."""
        timings = self

        class TimedCursor(psycopg.Cursor):
            def execute(self, query, params=None, **kw):
                t = time.perf_counter()
                try:
                    return super().execute(query, params, **kw)
                finally:
                    timings.add(timings.name(query), time.perf_counter() - t)

            def executemany(self, query, params_seq, **kw):
                t = time.perf_counter()
                try:
                    return super().executemany(query, params_seq, **kw)
                finally:
                    timings.add(timings.name(query) + " (executemany)", time.perf_counter() - t)

        class TimedConnection(psycopg.Connection):
            @contextmanager
            def transaction(self, *args, **kwargs):
                cm = super().transaction(*args, **kwargs)
                t = time.perf_counter()
                tx = cm.__enter__()
                timings.add("BEGIN", time.perf_counter() - t)
                try:
                    yield tx
                except BaseException as exc:
                    if not cm.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                else:
                    t = time.perf_counter()
                    cm.__exit__(None, None, None)
                    timings.add("COMMIT", time.perf_counter() - t)

        pool = ConnectionPool(url, min_size=1, max_size=4, open=False, connection_class=TimedConnection,
                              kwargs={"row_factory": dict_row, "autocommit": False, "cursor_factory": TimedCursor})
        pool.open(wait=True, timeout=30)
        return pool


class BatchSizes:
    """Counts the batch sizes the group-commit writer thread hands to write()."""

    def __init__(self, recorder: Recorder):
        self.sizes: list[int] = []
        original = recorder.write

        def write(results, *args, **kwargs):
            self.sizes.append(len(results))
            return original(results, *args, **kwargs)
        recorder.write = write


@pytest.mark.timeout(1800)
def test_ingest(db_url):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    settings = load_settings()
    with psycopg.connect(db_url, autocommit=True) as conn:
        tenant = conn.execute("insert into tenants (name) values ('bench') returning id").fetchone()[0]
        conn.execute("insert into proxmox_servers (tenant_id, name, base_url, auth_kind)"
                     " select %s, 'pve' || lpad(n::text, 4, '0'), 'https://pve' || n || '.bench.test:8006', 'token'"
                     " from generate_series(1, %s) n", (tenant, SERVERS))
        servers = [str(r[0]) for r in conn.execute("select id from proxmox_servers order by name")]
    results = make_results(servers, max(ROWS, RECORD_ROWS))
    measured = []  # (variant, rows, seconds, extra)
    breakdowns = []  # (variant, seconds, {statement: [calls, seconds]})

    # -- (a) Recorder.record() from N threads (group commit) --------------------------------------
    for nthreads in THREADS:
        fresh_state(db_url)
        timings = Timings()
        pool = timings.pool(db_url)  # as worker.actors makes it (db.make_pool, 1..4), plus timers
        try:
            recorder = Recorder(pool, settings)
            sizes = BatchSizes(recorder)
            work: queue.SimpleQueue = queue.SimpleQueue()
            for r in results[:RECORD_ROWS]:
                work.put(r)
            errors = []

            def worker():
                try:
                    while True:
                        try:
                            r = work.get_nowait()
                        except queue.Empty:
                            return
                        recorder.record(r)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            threads = [threading.Thread(target=worker) for _ in range(nthreads)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
            assert not errors, errors[0]
        finally:
            pool.close()
        n, rolled = count_rows(db_url)
        assert n == RECORD_ROWS and rolled == RECORD_ROWS, (n, rolled)
        mean_batch = sum(sizes.sizes) / max(1, len(sizes.sizes))
        measured.append((f"(a) Recorder.record(), {nthreads} threads", n, elapsed,
                         f"{len(sizes.sizes)} commits, {mean_batch:.1f} rows each"))
        breakdowns.append((f"(a) record(), {nthreads} threads", elapsed, timings.stats))

    # -- (b) Recorder.write() in batches of 500 ---------------------------------------------------
    fresh_state(db_url)
    timings = Timings()
    pool = timings.pool(db_url)
    try:
        recorder = Recorder(pool, settings)
        start = time.perf_counter()
        for i in range(0, ROWS, BATCH):
            recorder.write(results[i:i + BATCH])
        elapsed = time.perf_counter() - start
    finally:
        pool.close()
    breakdowns.append((f"(b) write(), batches of {BATCH}", elapsed, timings.stats))
    n, rolled = count_rows(db_url)
    assert n == ROWS and rolled == ROWS, (n, rolled)
    measured.append((f"(b) Recorder.write(), batches of {BATCH}", n, elapsed, f"{ROWS // BATCH} commits"))

    # -- diagnostic: insert_metrics alone, batches of 500 ------------------------------------------
    fresh_state(db_url)
    with db.connect(db_url) as conn:
        start = time.perf_counter()
        for i in range(0, ROWS, BATCH):
            chunk = results[i:i + BATCH]
            with conn.transaction():
                conn.execute(db.q("insert_metrics"), {
                    "server_id": [r.server_id for r in chunk], "scheduled_at": [r.scheduled_at for r in chunk],
                    "created_at": [r.created_at for r in chunk], "success": [r.success for r in chunk],
                    "response_time_ms": [r.response_time_ms for r in chunk],
                    "error_kind": [r.error_kind for r in chunk], "error_message": [r.error_message for r in chunk],
                    "used_fallback": [r.used_fallback for r in chunk]}).fetchall()
        elapsed = time.perf_counter() - start
    n, rolled = count_rows(db_url)
    assert n == ROWS and rolled == ROWS
    measured.append((f"(diag) insert_metrics only, batches of {BATCH}", n, elapsed, "no status work"))

    # -- diagnostic: where one 500-row insert_metrics spends its time (on the table as it is now) --
    def params(chunk):
        return {"server_id": [r.server_id for r in chunk], "scheduled_at": [r.scheduled_at for r in chunk],
                "created_at": [r.created_at for r in chunk], "success": [r.success for r in chunk],
                "response_time_ms": [r.response_time_ms for r in chunk], "error_kind": [r.error_kind for r in chunk],
                "error_message": [r.error_message for r in chunk], "used_fallback": [r.used_fallback for r in chunk]}

    extra = make_results(servers, BATCH, seed=99)
    for r in extra:  # ticks after every row above
        r.scheduled_at += timedelta(days=1)
    with psycopg.connect(db_url) as conn:
        plan = [r[0] for r in conn.execute("explain (analyze, buffers off) " + db.q("insert_metrics"),
                                           params(extra)).fetchall()]
        conn.rollback()
    plan_lines = [line for line in plan if line.startswith(("Insert on", "Trigger", "Execution Time", "Planning Time"))]

    # -- diagnostic: COPY in batches of 500, one transaction each ----------------------------------
    fresh_state(db_url)
    tenant_of = {sid: tenant for sid in servers}
    with psycopg.connect(db_url) as conn:
        start = time.perf_counter()
        for i in range(0, ROWS, BATCH):
            with conn.cursor() as cur:
                with cur.copy(f"copy public.connection_metrics ({', '.join(COLUMNS)}) from stdin") as copy:
                    for r in results[i:i + BATCH]:
                        copy.write_row((r.server_id, tenant_of[r.server_id], r.scheduled_at, r.created_at,
                                        r.success, r.response_time_ms, r.error_kind, r.error_message,
                                        r.used_fallback))
            conn.commit()
        elapsed = time.perf_counter() - start
    n, rolled = count_rows(db_url)
    assert n == ROWS and rolled == ROWS
    measured.append((f"(diag) COPY in batches of {BATCH}", n, elapsed, f"{ROWS // BATCH} commits"))

    # -- reference: COPY FROM STDIN, one statement ------------------------------------------------
    fresh_state(db_url)
    with psycopg.connect(db_url) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"copy public.connection_metrics ({', '.join(COLUMNS)}) from stdin") as copy:
                for r in results[:ROWS]:
                    copy.write_row((r.server_id, tenant_of[r.server_id], r.scheduled_at, r.created_at, r.success,
                                    r.response_time_ms, r.error_kind, r.error_message, r.used_fallback))
        conn.commit()
        elapsed = time.perf_counter() - start
    n, rolled = count_rows(db_url)
    assert n == ROWS and rolled == ROWS
    copy_rate = n / elapsed
    measured.append(("COPY ... FROM STDIN, one statement", n, elapsed, "reference"))

    # -- report -----------------------------------------------------------------------------------
    print(f"\n\n=== Ingest: rows/s into connection_metrics (3 indexes, 2 foreign keys, rollup trigger), "
          f"{SERVERS} servers, product HEAD {head} ===")
    rows = [(label, f"{n:,}", f"{s:.2f}", f"{n / s:,.0f}", f"{n / s / copy_rate:.3f}", extra)
            for label, n, s, extra in measured]
    table("rows per second (fresh table state for each; same rows, tick by tick)",
          ("variant", "rows", "seconds", "rows/s", "ratio_to_COPY", "notes"), rows)
    for label, elapsed, stats in breakdowns:
        accounted = sum(v[1] for v in stats.values())
        items = sorted(stats.items(), key=lambda kv: -kv[1][1])
        table(f"{label}: where the writer's time went (client-side wall time per statement, incl. round trip)",
              ("statement", "calls", "total_s", "mean_ms", "share"),
              [(k, v[0], f"{v[1]:.2f}", f"{1000 * v[1] / max(1, v[0]):.2f}", f"{100 * v[1] / elapsed:.0f}%")
               for k, v in items] +
              [("(python, pool, queue hand-off)", "", f"{elapsed - accounted:.2f}", "",
                f"{100 * (elapsed - accounted) / elapsed:.0f}%")])
    print(f"\nEXPLAIN ANALYZE of one {BATCH}-row insert_metrics (500 servers, one tick) after the (diag) run:")
    print("\n".join("   " + line for line in plan_lines))
    best_record = max((n / s for label, n, s, _ in measured if label.startswith("(a)")), default=0)
    default_record = next((n / s for label, n, s, _ in measured if label.startswith("(a)") and
                           f" {settings.worker_threads} threads" in label), 0)
    write_rate = next(n / s for label, n, s, _ in measured if label.startswith("(b)"))
    table("goal: worker path rate / COPY rate >= 0.5", ("worker path", "ratio", "met"), [
        (f"record(), {settings.worker_threads} threads (default)", f"{default_record / copy_rate:.3f}",
         "yes" if default_record / copy_rate >= 0.5 else "NO"),
        ("record(), best thread count", f"{best_record / copy_rate:.3f}",
         "yes" if best_record / copy_rate >= 0.5 else "NO"),
        (f"write(), batches of {BATCH}", f"{write_rate / copy_rate:.3f}",
         "yes" if write_rate / copy_rate >= 0.5 else "NO"),
    ])
