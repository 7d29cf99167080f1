"""Benchmark 2 — history: `connection_history(server, 24)` for one server in a connection_metrics
table of 10 M rows (200 servers × 50,000 polls over 30 days, inserted set-based in time order so
that the statement trigger builds connection_metrics_hourly as it does in production), against
the seed's method (SELECT the 24 h raw rows success, response_time_ms, created_at of the server
ordered by created_at, then group by hour in Python, as a client-side groupByHour would), in the
same run. Goal: ≥ 100× faster, p50 ≤ 5 ms.

The seed filters on created_at; the schema has no index on (server_id, created_at) (only the
unique (server_id, scheduled_at), (tenant_id, scheduled_at) and the primary key). The seed method
is therefore measured twice: on the schema as it is, and after this benchmark's own setup adds
`create index … on connection_metrics (server_id, created_at)` (the fair comparison; the index
exists only in the benchmark's throw-away database).

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_history.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_HISTORY_SERVERS (200), BENCH_HISTORY_POLLS (50000 per server),
BENCH_HISTORY_CALLS (300 timed calls per method).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.bench.reporting import pct, table

ROOT = Path(__file__).resolve().parents[2]
SERVERS = int(os.environ.get("BENCH_HISTORY_SERVERS", "200"))
POLLS = int(os.environ.get("BENCH_HISTORY_POLLS", "50000"))
CALLS = int(os.environ.get("BENCH_HISTORY_CALLS", "300"))
DAYS = 30
BATCH_POLLS = 5000  # polls per server per INSERT statement (200 × 5,000 = 1 M rows a statement)

SEED_SQL = ("select success, response_time_ms, created_at from public.connection_metrics"
            " where server_id = %s and created_at >= %s order by created_at asc")


def js_round(x: float) -> int:
    """JavaScript's Math.round (half up), not Python's banker's rounding."""
    import math
    return math.floor(x + 0.5)


def group_by_hour(metrics):
    """The seed's groupByHour, line by line (a Map keeps insertion order, like a dict)."""
    hourly_map: dict[str, dict] = {}
    for m in metrics:
        hour = m["created_at"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H") + ":00:00Z"
        if hour not in hourly_map:
            hourly_map[hour] = {"success": 0, "failed": 0, "avgResponseTime": 0, "responseTimes": []}
        data = hourly_map[hour]
        if m["success"]:
            data["success"] += 1
            if m["response_time_ms"]:
                data["responseTimes"].append(m["response_time_ms"])
        else:
            data["failed"] += 1
    return [{
        "time": hour,
        "successRate": js_round(data["success"] / (data["success"] + data["failed"]) * 100)
        if data["success"] + data["failed"] > 0 else 100,
        "avgResponseTime": js_round(sum(data["responseTimes"]) / len(data["responseTimes"]))
        if data["responseTimes"] else None,
        "attempts": data["success"] + data["failed"],
    } for hour, data in hourly_map.items()]


def seed_history(conn, server_id):
    """The seed's get-history: fetch the raw 24 h rows, group by hour, summarize (the JSON encoding
    of `raw` that the seed also returns is left out, in the seed's favour)."""
    since = datetime.now(timezone.utc) - timedelta(hours=24)
    metrics = conn.execute(SEED_SQL, (server_id, since)).fetchall()
    ok_times = [m["response_time_ms"] for m in metrics if m["success"] and m["response_time_ms"]]
    return {"hourly": group_by_hour(metrics), "summary": {
        "totalAttempts": len(metrics),
        "successCount": sum(1 for m in metrics if m["success"]),
        "avgResponseTime": js_round(sum(ok_times) / len(ok_times)) if ok_times else None}}


def rpc_history(conn, server_id):
    return conn.execute("select public.connection_history(%s, 24) as h", (server_id,)).fetchone()["h"]


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def explain(conn, sql, params):
    plan = conn.execute("explain (analyze, buffers, timing off, summary on) " + sql, params).fetchall()
    return [next(iter(r.values())) for r in plan]


@pytest.mark.timeout(3600)
def test_history(pg_server, db_url):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    total_rows = SERVERS * POLLS
    step_s = DAYS * 86400 / POLLS
    setup = []
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("set synchronous_commit = off")
        tenant = conn.execute("insert into tenants (name) values ('bench') returning id").fetchone()["id"]
        conn.execute(
            "insert into proxmox_servers (tenant_id, name, base_url, auth_kind)"
            " select %s, 'pve' || lpad(n::text, 4, '0'), 'https://pve' || n || '.bench.test:8006', 'token'"
            " from generate_series(1, %s) n", (tenant, SERVERS))
        # Raw polls are partitioned by UTC day: the days of the history need their partitions.
        conn.execute(f"select ensure_metric_partitions(7, (now() - interval '{DAYS + 1} days')::date)")
        conn.execute("create unlogged table bench_servers as select row_number() over (order by name) as n, id,"
                     " tenant_id, random() * %s as phase_s from proxmox_servers", (step_s,))
        t_all = time.perf_counter()
        for first in range(0, POLLS, BATCH_POLLS):
            last = min(POLLS, first + BATCH_POLLS) - 1
            t = time.perf_counter()
            # One statement = (last-first+1) polls of every server, in time order, as production writes
            # them; the statement trigger rolls the statement's rows up into connection_metrics_hourly.
            conn.execute(f"""
                insert into public.connection_metrics (server_id, tenant_id, scheduled_at, created_at, success,
                                                       response_time_ms, error_kind, error_message)
                select id, tenant_id, at, at + interval '3 ms' + (rt * 0.3) * interval '1 ms', ok,
                       case when ok then rt end, case when not ok then 'timeout' end,
                       case when not ok then name || ' did not answer within 5000 ms' end
                from (select s.id, s.tenant_id, 'pve' || s.n as name,
                             date_trunc('second', now()) - interval '{DAYS} days'
                               + (i * {step_s} + s.phase_s) * interval '1 second' as at,
                             random() > 0.03 as ok, (20 + random() * 180)::int as rt, i, s.n
                      from generate_series(%s::int, %s::int) i cross join bench_servers s) g
                order by i, n""", (first, last))
            setup.append(time.perf_counter() - t)
        insert_s = time.perf_counter() - t_all
        t = time.perf_counter()
        conn.execute("vacuum analyze public.connection_metrics")
        conn.execute("vacuum analyze public.connection_metrics_hourly")
        vacuum_s = time.perf_counter() - t
        counts = conn.execute(
            "select (select count(*) from connection_metrics) as metrics,"
            " (select count(*) from connection_metrics_hourly) as hourly,"
            " (select sum(attempts) from connection_metrics_hourly) as rolled_up,"
            " pg_size_pretty(pg_table_size('connection_metrics')) as heap,"
            " pg_size_pretty(pg_indexes_size('connection_metrics')) as indexes").fetchone()
        indexes = [r["indexdef"] for r in conn.execute(
            "select indexdef from pg_indexes where tablename = 'connection_metrics' order by indexname")]
        server = conn.execute("select id from bench_servers where n = %s", (SERVERS // 2,)).fetchone()["id"]

    assert counts["metrics"] == total_rows and counts["rolled_up"] == total_rows

    results = {}
    plans = {}
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as svc, \
            psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as raw:
        svc.execute("set role service_role")  # as PostgREST runs an RPC with the service key
        since = datetime.now(timezone.utc) - timedelta(hours=24)
        # Correctness: the same figures both ways (the windows differ by < 1 hour: the seed takes
        # now-24h by created_at, connection_history 24 whole hours by scheduled_at).
        h = rpc_history(svc, server)
        s = seed_history(raw, server)
        assert len(h["hourly"]) == 24

        def run(label, fn, conn):
            for _ in range(20):
                fn(conn, server)  # warm the cache and psycopg's prepared statements
            return timed(lambda: fn(conn, server), CALLS)

        def round_robin(variants):
            # Interleave the methods in rounds of 10 calls, so they share the cache and machine load.
            out = {label: [] for label, _, _ in variants}
            for label, fn, conn in variants:
                run(label, fn, conn)
            for _ in range(CALLS // 10):
                for label, fn, conn in variants:
                    out[label] += timed(lambda: fn(conn, server), 10)
            return out

        plans["seed, schema as is"] = explain(raw, SEED_SQL, (server, since))
        results.update(round_robin([("connection_history (rollup)", rpc_history, svc),
                                    ("seed method, schema as is", seed_history, raw)]))
        t = time.perf_counter()
        raw.execute("create index bench_metrics_server_created_idx"
                    " on public.connection_metrics (server_id, created_at)")
        raw.execute("analyze public.connection_metrics")
        index_s = time.perf_counter() - t
        plans["seed, + (server_id, created_at) index"] = explain(raw, SEED_SQL, (server, since))
        plans["connection_history"] = explain(svc, "select public.connection_history(%s, 24)", (server,))
        more = round_robin([("connection_history (rollup) ", rpc_history, svc),
                            ("seed method, + bench index", seed_history, raw)])
        results["connection_history (rollup)"] += more.pop("connection_history (rollup) ")
        results.update(more)
        rows_24h = len(raw.execute(SEED_SQL, (server, since)).fetchall())
        s = seed_history(raw, server)
        h = rpc_history(svc, server)

    # -- report ---------------------------------------------------------------------------------
    print(f"\n\n=== History: connection_history vs the seed's method, {total_rows:,} metric rows "
          f"({SERVERS} servers x {POLLS:,} polls over {DAYS} days), product HEAD {head} ===")
    print(f"setup: inserted in {len(setup)} set-based statements of {SERVERS * BATCH_POLLS:,} rows "
          f"(statement trigger on) in {insert_s:.0f} s: per statement median {statistics.median(setup):.1f} s, "
          f"max {max(setup):.1f} s = {total_rows / insert_s:,.0f} rows/s; vacuum analyze {vacuum_s:.0f} s")
    print(f"table: {counts['metrics']:,} rows, heap {counts['heap']}, indexes {counts['indexes']}; rollup "
          f"{counts['hourly']:,} rows holding {counts['rolled_up']:,} attempts (= every row counted once)")
    print("indexes of connection_metrics (schema): " + "; ".join(
        i.split(" USING ")[1] for i in indexes))
    print(f"bench-only index added for the fair seed variant: (server_id, created_at), built in {index_s:.1f} s")
    print(f"the server's 24 h: {rows_24h:,} raw rows; connection_history: {len(h['hourly'])} hours, "
          f"{h['summary']['totalAttempts']} attempts, {h['summary']['successCount']} successes, "
          f"avg {h['summary']['avgResponseTime']} ms; seed: {len(s['hourly'])} hours, "
          f"{s['summary']['totalAttempts']} attempts, {s['summary']['successCount']} successes, "
          f"avg {s['summary']['avgResponseTime']} ms")
    base = statistics.median(results["connection_history (rollup)"])
    rows = []
    for label, values in results.items():
        p50 = statistics.median(values)
        rows.append((label, len(values), f"{p50:.3f}", f"{pct(values, 90):.3f}", f"{pct(values, 99):.3f}",
                     f"{p50 / base:.1f}x"))
    table("latency per call, ms (client side: query + transfer + Python; interleaved rounds)",
          ("method", "calls", "p50", "p90", "p99", "p50 / connection_history p50"), rows)
    seed_plain = statistics.median(results["seed method, schema as is"])
    seed_idx = statistics.median(results["seed method, + bench index"])
    table("goals", ("figure", "value", "goal", "met"), [
        ("connection_history p50, ms", f"{base:.3f}", "<= 5", "yes" if base <= 5 else "NO"),
        ("speed-up vs seed (schema as is)", f"{seed_plain / base:.0f}x", ">= 100x",
         "yes" if seed_plain / base >= 100 else "NO"),
        ("speed-up vs seed (+ created_at index)", f"{seed_idx / base:.0f}x", ">= 100x",
         "yes" if seed_idx / base >= 100 else "NO"),
    ])
    for label, plan in plans.items():
        print(f"\nplan — {label}:")
        print("\n".join("   " + line for line in plan))
