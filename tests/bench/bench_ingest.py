"""Benchmark 3 — ingest: metric rows written per second by the worker path
(worker.polling.Recorder) against `COPY connection_metrics (…) FROM STDIN` of the same rows into
the same table (same indexes, same foreign keys, same rollup trigger), in the same run, each
from a fresh table state (metrics and rollup truncated, server status reset, checkpoint).

Worker path variants, PollResult objects prepared in advance (no PVE involved), 1,000 servers, each
run in its own process (so a baseline revision's Recorder can run the same way):
  record_many  — what the poll_batch actor does: T threads (the worker's 16) each hand a message's
                 PROXWATCH_POLL_BATCH results to Recorder.record_many() and wait until they are
                 committed (group commit across messages: the writer threads, one transaction each);
  record_many in W processes — the default worker (PROXWATCH_WORKER_PROCESSES, 2, as `proxwatch up`
                 and the Procfile start it): W processes at once, each its own Recorder, pool and T
                 threads, the messages dealt round-robin (as the processes take them from one queue);
                 the time runs from the start signal until every process has committed and folded;
  record       — what the one-poll-per-message actor does: T threads, Recorder.record() per result;
  write        — Recorder.write() in batches of B, one thread (the writer with a backlog).
Reference: COPY of all the rows (every column the worker writes) in one statement. Diagnostic: COPY in batches of 500, the plans of
the statements of one 500-row write and of its fold (auto_explain: each statement's time, its triggers'
share), and for each variant the time of each
statement of Recorder.write (the pool's cursors and transactions are timed; the pool is otherwise
the one the worker makes: db.make_pool settings, 1..4 connections).
The worker path's rollups are folded and its servers' status decided by the fold (migrations
rollup_pending, status_fold): its rate includes the folds up to the last row (a final fold inside
the time), and its notes give the folds' count, time, polls per fold, the rollups' largest lag (the
oldest pending row's age when a fold took it), and the CPU per row of the client (this process) and
of the rest of the machine (Postgres: nothing else runs meanwhile).
Goal: worker path rate / COPY rate ≥ 0.5.

Side by side: BENCH_BASELINE=<git revision>[,<revision>…] also runs those revisions' Recorder (their
worker/ and sql/ extracted to a temporary directory, against the current schema; variants record,
write, and record_many where the revision has it), alternating with the current tree for BENCH_ROUNDS
rounds (2); the summary gives medians.

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_ingest.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_INGEST_SERVERS (1000), BENCH_INGEST_ROWS (100000 for COPY and write),
BENCH_INGEST_RECORD_ROWS (50000 for each record / record_many variant), BENCH_INGEST_THREADS (16),
BENCH_BASELINE (unset), BENCH_ROUNDS (2 with a baseline, else 1), BENCH_INGEST_AGE_H (0: the rows'
ticks start at the current UTC hour; N: N hours earlier, every row a late poll — make_results).
"""

from __future__ import annotations

import json
import os
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from tests.bench.reporting import baseline_tree, table
from worker import db
from worker.polling import PollResult, Recorder, fold_params, metric_params
from worker.settings import load as load_settings

ROOT = Path(__file__).resolve().parents[2]
SERVERS = int(os.environ.get("BENCH_INGEST_SERVERS", "1000"))
ROWS = int(os.environ.get("BENCH_INGEST_ROWS", "100000"))
RECORD_ROWS = int(os.environ.get("BENCH_INGEST_RECORD_ROWS", "50000"))
THREADS = int(os.environ.get("BENCH_INGEST_THREADS", "16"))
BASELINES = [b for b in os.environ.get("BENCH_BASELINE", "").split(",") if b]
BASELINE = ", ".join(BASELINES)
AGE_H = int(os.environ.get("BENCH_INGEST_AGE_H", "0"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2")) if BASELINE else 1
BATCH = 500
COLUMNS = ("server_id", "tenant_id", "scheduled_at", "created_at", "success", "response_time_ms", "error_kind",
           "error_message", "used_fallback", "pve_version", "nodes_online", "nodes_total", "quorate")


def make_results(servers: list[str], n: int, seed: int = 7) -> list[PollResult]:
    """n results, tick by tick (every server once per 10 s tick), as the scheduler produces them.

    The ticks start at the beginning of the current UTC hour (AGE_H = 0: the worker's steady state,
    polls of the hour it writes in, 100 ticks = 1,000 s fit in it), or AGE_H hours before it: every
    row is then a late poll of a past hour, whose rollup rows also correct fleet_overview's summary
    (the runs before 2026-11-30 evening used two days: AGE_H = 48)."""
    rnd = random.Random(seed)
    base = datetime.now(timezone.utc).replace(microsecond=0, second=0, minute=0) - timedelta(hours=AGE_H)
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
        conn.execute("truncate public.connection_metrics, public.connection_metrics_hourly, public.connection_metrics_daily,"
                     " public.connection_metrics_rollup_pending")
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


def cpu_split(before: tuple | None = None):
    """CPU seconds of this process and of everything else on the machine (Postgres, on a quiet
    machine: the bench runs nothing else meanwhile), from /proc/stat; with `before`, the difference."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
    mine = time.process_time()
    if before is None:
        return busy, mine
    return {"client_s": mine - before[1], "other_s": busy - before[0] - (mine - before[1])}


def run_variant(url: str, variant: str, nthreads: int, batch: int, n: int, part: tuple[int, int] | None = None) -> dict:
    """One worker-path variant on a fresh table state, in this process: rows, seconds, commits and
    their mean size, and the time per statement. With `part` (k, W): this process is worker process k
    of W — it takes every W-th message from the k-th, leaves the table state to the parent, says
    "ready" and starts on the parent's "go" line (run_processes)."""
    settings = load_settings()
    with psycopg.connect(url) as conn:
        servers = [str(r[0]) for r in conn.execute("select id from proxmox_servers order by name")]
    results = make_results(servers, n)
    if part is None:
        fresh_state(url)
    timings = Timings()
    pool = timings.pool(url)  # as the worker makes it (db.make_pool, 1..4), plus timers
    try:
        recorder = Recorder(pool, settings)
        sizes = BatchSizes(recorder)
        if variant == "write":
            cpu = cpu_split()
            start = time.perf_counter()
            for i in range(0, n, batch):
                recorder.write(results[i:i + batch])  # folds before it returns (where the revision folds)
            elapsed = time.perf_counter() - start
            cpu = cpu_split(cpu)
        else:
            work: queue.SimpleQueue = queue.SimpleQueue()
            step = batch if variant == "record_many" else 1
            messages = [results[i:i + step] for i in range(0, n, step)]
            for message in messages[part[0]::part[1]] if part else messages:
                work.put(message)
            errors = []

            def worker():
                try:
                    while True:
                        try:
                            chunk = work.get_nowait()
                        except queue.Empty:
                            return
                        if variant == "record_many":
                            recorder.record_many(chunk)
                        else:
                            recorder.record(chunk[0])
                except BaseException as exc:  # noqa: BLE001
                    errors.append(repr(exc))

            if part:
                print("ready", flush=True)
                sys.stdin.readline()
            cpu = cpu_split()
            threads = [threading.Thread(target=worker) for _ in range(nthreads)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if hasattr(recorder, "fold"):
                # the rollups of the last commits, inside the time (the writer thread would fold them
                # once idle; a concurrent fold of its own waits for this one or finds nothing)
                recorder.fold()
            elapsed = time.perf_counter() - start
            cpu = cpu_split(cpu)
            assert not errors, errors[0]
    finally:
        pool.close()
    out = {"rows": n, "seconds": elapsed, "commits": len(sizes.sizes), "cpu": cpu,
           "mean_batch": sum(sizes.sizes) / max(1, len(sizes.sizes)), "stats": timings.stats,
           "fold": getattr(recorder, "fold_stats", None)}
    if part is None:
        written, rolled = count_rows(url)
        assert written == n and rolled == n, (written, rolled)
    return out


def run_in_process(tree: Path, url: str, variant: str, nthreads: int, batch: int, n: int) -> dict:
    """run_variant in a new Python process whose `worker` package comes from `tree`."""
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), url, variant, str(nthreads), str(batch),
                          str(n)], cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_processes(tree: Path, url: str, nproc: int, nthreads: int, batch: int, n: int) -> dict:
    """record_many in `nproc` worker processes at once (run_variant with part k of nproc): each
    prepares its messages, then all start together; the time runs until the last one has committed
    and folded. CPU: the processes' own (client) and the rest of the machine (Postgres)."""
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{ROOT}")
    fresh_state(url)
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), url, "record_many", str(nthreads),
                               str(batch), str(n), str(k), str(nproc)], cwd=tree, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(nproc)]
    try:
        for p in procs:
            line = p.stdout.readline().strip()
            assert line == "ready", (line, p.stderr.read()[-3000:] if p.poll() is not None else "")
        busy = cpu_split()
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            line = p.stdout.readline()
            assert line.strip(), p.stderr.read()[-3000:]
            outs.append(json.loads(line))
        elapsed = time.perf_counter() - start
        busy = cpu_split(busy)
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
    written, rolled = count_rows(url)
    assert written == n and rolled == n, (written, rolled)
    client = sum(o["cpu"]["client_s"] for o in outs)
    stats: dict[str, list] = {}
    for o in outs:
        for name, (calls, sec) in o["stats"].items():
            stats.setdefault(name, [0, 0.0])
            stats[name][0] += calls
            stats[name][1] += sec
    folds = [o["fold"] for o in outs if o.get("fold")]
    fold = {"folds": sum(f["folds"] for f in folds), "seconds": sum(f["seconds"] for f in folds),
            "polls": sum(f["polls"] for f in folds),
            "max_lag_s": max(f["max_lag_s"] for f in folds)} if folds else None
    commits = sum(o["commits"] for o in outs)
    return {"rows": n, "seconds": elapsed, "commits": commits, "mean_batch": n / max(1, commits), "stats": stats,
            "processes": nproc,
            "cpu": {"client_s": client, "other_s": busy["other_s"] + busy["client_s"] - client}, "fold": fold}


def copy_rows(url: str, n: int, batch: int | None = None) -> float:
    """COPY of n prepared rows (one statement, or one per `batch` rows each committed); seconds."""
    with psycopg.connect(url) as conn:
        servers = [str(r[0]) for r in conn.execute("select id from proxmox_servers order by name")]
        tenant = conn.execute("select tenant_id from proxmox_servers limit 1").fetchone()[0]
    results = make_results(servers, n)
    fresh_state(url)
    batch = batch or n
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for i in range(0, n, batch):
            with conn.cursor() as cur:
                with cur.copy(f"copy public.connection_metrics ({', '.join(COLUMNS)}) from stdin") as copy:
                    for r in results[i:i + batch]:
                        copy.write_row((r.server_id, tenant, r.scheduled_at, r.created_at, r.success,
                                        r.response_time_ms, r.error_kind, r.error_message, r.used_fallback,
                                        r.pve_version, r.nodes_online, r.nodes_total, r.quorate))
            conn.commit()
        elapsed = time.perf_counter() - start
    written, rolled = count_rows(url)
    assert written == n and rolled == n
    return elapsed


@pytest.mark.timeout(3600)
def test_ingest(db_url, tmp_path):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    settings = load_settings()
    with psycopg.connect(db_url, autocommit=True) as conn:
        tenant = conn.execute("insert into tenants (name) values ('bench') returning id").fetchone()[0]
        conn.execute("insert into proxmox_servers (tenant_id, name, base_url, auth_kind)"
                     " select %s, 'pve' || lpad(n::text, 4, '0'), 'https://pve' || n || '.bench.test:8006', 'token'"
                     " from generate_series(1, %s) n", (tenant, SERVERS))
        servers = [str(r[0]) for r in conn.execute("select id from proxmox_servers order by name")]
    batch = settings.poll_batch
    procs = settings.worker_processes  # the default worker's processes (PROXWATCH_WORKER_PROCESSES)
    configs = [("current", ROOT, [("record_many", THREADS, batch, RECORD_ROWS),
                                  ("record_many_procs", THREADS, batch, RECORD_ROWS),
                                  ("record", THREADS, 1, RECORD_ROWS),
                                  ("write", 1, 500, ROWS), ("write", 1, 2000, ROWS)])]
    for rev in reversed(BASELINES):
        # record(): what the actor did before poll batches; record_many(): what it does since (a
        # revision without record_many is left out of that variant)
        tree = baseline_tree(rev, tmp_path / f"baseline-{rev}")
        variants = [("record", THREADS, 1, RECORD_ROWS), ("write", 1, 500, ROWS)]
        if "def record_many" in (tree / "worker" / "polling.py").read_text():
            variants[:0] = [("record_many", THREADS, batch, RECORD_ROWS), ("record_many_procs", THREADS, batch, RECORD_ROWS)]
        configs.insert(0, (f"baseline {rev}", tree, variants))
    measured = []   # (round, config, label, rows, seconds, notes)
    breakdowns = {}  # (config, label) -> (seconds, stats) of the last round
    copy_s = []
    for rnd in range(ROUNDS):
        for name, tree, variants in configs:
            for variant, nthreads, size, n in variants:
                label = {"record_many": f"record_many(), {nthreads} threads x {size} per message",
                         "record_many_procs": f"record_many(), {procs} processes x {nthreads} threads x {size}"
                                              f" per message (the default worker)",
                         "record": f"record(), {nthreads} threads x 1 per message",
                         "write": f"write(), batches of {size}"}[variant]
                if variant == "record_many_procs":
                    r = run_processes(tree, db_url, procs, nthreads, size, n)
                else:
                    r = run_in_process(tree, db_url, variant, nthreads, size, n)
                fold = r.get("fold")
                notes = f"{r['commits']} commits, {r['mean_batch']:.1f} rows each"
                if r.get("cpu"):  # CPU per row: this process (the client) and the rest (Postgres)
                    notes += (f"; CPU/row: client {1e6 * r['cpu']['client_s'] / r['rows']:.0f} us,"
                              f" Postgres {1e6 * r['cpu']['other_s'] / r['rows']:.0f} us")
                if fold and fold["folds"]:
                    # the fold (migration rollup_pending): its share of the time, the polls one fold
                    # covers, and the rollups' largest lag (the oldest pending row's age when folded)
                    notes += (f"; {fold['folds']} folds, {fold['seconds']:.2f} s"
                              f" ({100 * fold['seconds'] / (r['seconds'] * r.get('processes', 1)):.0f}%), {fold['polls'] / fold['folds']:.0f}"
                              f" polls each, lag <= {fold['max_lag_s']:.2f} s")
                measured.append((rnd + 1, name, label, r["rows"], r["seconds"], notes))
                # (several processes: their statement times add up, against as many times the wall time)
                breakdowns[(name, label)] = (r["seconds"] * r.get("processes", 1), r["stats"])
        # the reference, in every round
        copy_s.append(copy_rows(db_url, ROWS))
    diag_copy_500 = copy_rows(db_url, ROWS, 500)

    # -- diagnostic: where one 500-row write and the fold of it spend their time (on the table as it is
    # now): the plans of their statements, from auto_explain (nested statements, with triggers) --
    extra = make_results(servers, BATCH, seed=99)
    for r in extra:  # ticks after every row above
        r.scheduled_at += timedelta(days=1)
        r.created_at += timedelta(days=1)
    notices: list[str] = []
    with psycopg.connect(db_url) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("load 'auto_explain'")
        for key, value in {"auto_explain.log_min_duration": "0", "auto_explain.log_analyze": "on",
                           "auto_explain.log_nested_statements": "on", "auto_explain.log_triggers": "on",
                           "auto_explain.log_timing": "on", "client_min_messages": "log"}.items():
            conn.execute("select set_config(%s, %s, false)", (key, value))
        conn.execute(db.q("defer_rollup"))
        conn.execute(db.q("insert_metrics"), metric_params(extra))
        conn.execute(db.q("fold_rollup"), fold_params(settings))
        conn.rollback()
    plan_rows = []
    ri = [0, 0.0]  # the foreign keys' checks (one nested statement per row): counted, not listed
    for note in notices:
        if not note.startswith("duration:"):
            continue
        if 'SELECT 1 FROM ONLY' in note:
            ri[0] += 1
            ri[1] += float(note.split()[1])
            continue
        lines = note.splitlines()
        text = next((ln.split("Query Text:", 1)[1].strip() for ln in lines if "Query Text:" in ln), "")
        top = next((ln.strip() for ln in lines[2:] if ln.strip() and not ln.strip().startswith("Query Text")), "")
        triggers = "; ".join(ln.strip() for ln in lines if ln.strip().startswith("Trigger"))
        plan_rows.append((lines[0].split()[1], " ".join(text.split())[:70], top.split("  (")[0][:40], triggers))
    plan_rows.append((f"{ri[1]:.3f}", f"foreign key checks ({ri[0]} statements, inside the triggers above)", "", ""))

    # -- report -----------------------------------------------------------------------------------
    copy_rate = ROWS / statistics.median(copy_s)
    print(f"\n\n=== Ingest: rows/s into connection_metrics (3 indexes, 2 foreign keys, rollup trigger), "
          f"{SERVERS} servers, ticks from " + (f"{AGE_H} h before the current hour" if AGE_H else "the current hour")
          + f", product HEAD {head}" + (f", side by side with {BASELINE}" if BASELINE else "") + " ===")
    rows = [(rnd, name, label, f"{n:,}", f"{sec:.2f}", f"{n / sec:,.0f}", f"{n / sec / copy_rate:.3f}", notes)
            for rnd, name, label, n, sec, notes in measured]
    rows += [(i + 1, "reference", "COPY ... FROM STDIN, one statement", f"{ROWS:,}", f"{sec:.2f}",
              f"{ROWS / sec:,.0f}", f"{ROWS / sec / copy_rate:.3f}", "") for i, sec in enumerate(copy_s)]
    rows.append(("", "diagnostic", f"COPY in batches of {BATCH}", f"{ROWS:,}", f"{diag_copy_500:.2f}",
                 f"{ROWS / diag_copy_500:,.0f}", f"{ROWS / diag_copy_500 / copy_rate:.3f}", f"{ROWS // BATCH} commits"))
    table(f"rows per second (fresh table state for each; same rows, tick by tick; ratio to the median COPY, "
          f"{copy_rate:,.0f} rows/s)",
          ("round", "config", "variant", "rows", "seconds", "rows/s", "ratio_to_COPY", "notes"), rows)
    medians = {}
    for rnd, name, label, n, sec, _ in measured:
        medians.setdefault((name, label), []).append(n / sec)
    table("medians over the rounds", ("config", "variant", "rows/s", "ratio_to_COPY", "goal >= 0.5"),
          [(name, label, f"{statistics.median(v):,.0f}", f"{statistics.median(v) / copy_rate:.3f}",
            "yes" if statistics.median(v) / copy_rate >= 0.5 else "NO") for (name, label), v in medians.items()])
    for (name, label), (elapsed, stats) in breakdowns.items():
        accounted = sum(v[1] for v in stats.values())
        items = sorted(stats.items(), key=lambda kv: -kv[1][1])
        table(f"{name}, {label}: where the writer's time went (client-side wall time per statement, incl. round trip;"
              f" several processes: the sum of theirs, shares of the sum of their times)",
              ("statement", "calls", "total_s", "mean_ms", "share"),
              [(k, v[0], f"{v[1]:.2f}", f"{1000 * v[1] / max(1, v[0]):.2f}", f"{100 * v[1] / elapsed:.0f}%")
               for k, v in items] +
              [("(python, pool, queue hand-off)", "", f"{elapsed - accounted:.2f}", "",
                f"{100 * (elapsed - accounted) / elapsed:.0f}%")])
    table(f"one {BATCH}-row write (500 servers, one tick) and its fold after the runs: their statements (auto_explain)",
          ("ms", "statement", "top plan node", "triggers"), plan_rows)
    print("   (auto_explain's timing inflates these times; the shares are what they are for)")


if __name__ == "__main__":
    # run_in_process: URL VARIANT THREADS BATCH ROWS -> one JSON line;
    # run_processes: URL record_many THREADS BATCH ROWS K W -> "ready", then (after "go") one JSON line
    url, variant, nthreads, size, n = sys.argv[1:6]
    part = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else None
    print(json.dumps(run_variant(url, variant, int(nthreads), int(size), int(n), part)), flush=True)
