"""Benchmark — history tiers (issue 10): storage per tier, pruning a day of raw polls under a
full-rate writer, and reading a year of history.

Data (generated in the database with generate_series, in time order, as production appends it):
SERVERS servers (1,000) polled every 10 s; one UTC day of raw polls eight days ago (8,640 per
server: 8.64 M rows for 1,000 servers, written straight into that day's partition), a year of the
hourly rollup (8,784 rows per server) and the daily rollup built from it, and one current poll per
server (fleet_overview's last_poll_at).

1. Storage: bytes on disk (table + indexes) per server per day at each tier, and the footprint of
   1,000 servers for one year at the default retention (raw 7 days + today + the partitions made
   ahead, hourly 400 days ≥ a year, daily forever). Goals: ≤ 100 kB per server per day once
   downsampled (hourly + daily), ≤ 20 GB in total.
2. Pruning: `retention.prune` (DETACH … CONCURRENTLY + DROP of the expired partition) while a writer
   inserts with the worker's `insert_metrics` statement (batches of WRITE_BATCH polls every
   WRITE_EVERY_MS, ~10× the poll rate of 1,000 servers at 10 s): the prune's time, and the writer's
   insert latency p50/p99 during the prune vs during WRITE_BASELINE_S before it, per step of the
   prune, and a control without Postgres: the same writer while a file as large as the partition is
   unlinked beside the cluster (the filesystem's cost of freeing that space). Goals: ≤ 2 s, p99 ≤ 2×
   the baseline. The filesystem under the cluster is printed with its mount options: with online
   discard (`-o discard`) freeing ~2 GB stalls every fsync for about a second, prune or not. To
   measure on a filesystem without it (as root), e.g. an ext4 image:

       truncate -s 20G /tmp/pw-bench.img && mkfs.ext4 -q -F /tmp/pw-bench.img
       mkdir -p /tmp/pw-bench && mount -o loop /tmp/pw-bench.img /tmp/pw-bench && chmod 1777 /tmp/pw-bench
       BENCH_PG_PARENT=/tmp/pw-bench PYTHONPATH=. python3 -m pytest tests/bench/bench_history_tiers.py \
           -k pruning -s -q -p no:cacheprovider
       umount /tmp/pw-bench && rm /tmp/pw-bench.img
3. Reading: connection_history(server, 720 h) (30 days, daily buckets) and (8784 h) (a year), and
   fleet_overview() over every server, as an authenticated member (RLS applies) and as
   service_role. Goals: p50 ≤ 10 ms and ≤ 50 ms.

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_history_tiers.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_TIERS_SERVERS (1000), BENCH_TIERS_CALLS (200 timed calls per reader),
BENCH_PG_PARENT (/tmp: the directory the benchmark's Postgres cluster is made in).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.bench.reporting import pct, table
from worker import db, retention
from worker.settings import RetentionSettings

SERVERS = int(os.environ.get("BENCH_TIERS_SERVERS", "1000"))
CALLS = int(os.environ.get("BENCH_TIERS_CALLS", "200"))
POLLS_PER_DAY = 8640            # every 10 s
RAW_DAYS_KEPT = 7 + 1 + 1       # the retention, the day past it not yet wholly expired, today (ahead: empty)
WRITE_BATCH = 10
WRITE_EVERY_MS = 10
WRITE_BASELINE_S = 15
USER = uuid.UUID("00000000-0000-4000-8000-0000000000be")

pytestmark = pytest.mark.timeout(3600)


def ms_since(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def test_storage_per_server_and_day_and_a_year_for_1000_servers(tiers_history):
    history = tiers_history
    url, part = history
    with psycopg.connect(url, row_factory=dict_row) as conn:
        sizes = conn.execute(f"""
            select pg_total_relation_size('public.{part}') as raw,
                   pg_total_relation_size('public.connection_metrics_hourly') as hourly,
                   pg_total_relation_size('public.connection_metrics_daily') as daily,
                   (select count(*) from public.connection_metrics_daily) as daily_rows,
                   (select count(*) from public.connection_metrics_hourly) as hourly_rows""").fetchone()
    days = 8784 / 24
    raw = sizes["raw"] / SERVERS
    hourly = sizes["hourly"] / SERVERS / days
    daily = sizes["daily"] / SERVERS / days
    year = 1000 * (raw * RAW_DAYS_KEPT + (hourly + daily) * 366)
    table("Storage: bytes on disk (table + indexes) per server per day", ["tier", "rows/server/day", "bytes"],
          [("raw (10 s polls)", POLLS_PER_DAY, f"{raw:,.0f}"), ("hourly", 24, f"{hourly:,.0f}"),
           ("daily", 1, f"{daily:,.0f}"), ("downsampled (hourly + daily)", 25, f"{hourly + daily:,.0f}")])
    table("Projected: 1,000 servers × 1 year at the default retention", ["tier", "GB"],
          [(f"raw ({RAW_DAYS_KEPT} full days at most: 7 kept, 1 expiring, today)",
            f"{1000 * raw * RAW_DAYS_KEPT / 1e9:.2f}"),
           ("hourly (366 days)", f"{1000 * hourly * 366 / 1e9:.2f}"),
           ("daily (366 days)", f"{1000 * daily * 366 / 1e9:.3f}"), ("total", f"{year / 1e9:.2f}")])
    print(f"goals: downsampled {(hourly + daily) / 1000:.1f} kB ≤ 100 kB per server per day; "
          f"total {year / 1e9:.1f} GB ≤ 20 GB (raw counted as {RAW_DAYS_KEPT} full days: an upper bound)")


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, options) of the filesystem holding path."""
    best = ("/", "?", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, options = line.split()[:4]
            point = point.replace("\\040", " ")
            if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
                best = (point, fstype, options)
    return best


def _free_a_file_like(directory: Path, size: int) -> tuple[float, float]:
    """The control: write a file of `size` bytes beside the cluster, make it durable, then time its
    unlink — the filesystem's work of freeing that much space, with no Postgres involved."""
    path = directory / "unlink-control"
    chunk = os.urandom(1 << 20) * 16   # written, not fallocated: the freed blocks must hold data
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for _ in range(0, size, len(chunk)):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    time.sleep(2)
    t = time.perf_counter()
    os.unlink(path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return t, time.perf_counter()


def _row(label: str, xs: list[float]) -> tuple:
    return (label, len(xs), f"{pct(xs, 50):.2f}", f"{pct(xs, 99):.2f}", f"{max(xs):.2f}" if xs else "-")


def test_pruning_a_day_of_raw_polls_under_a_full_rate_writer(tiers_history, pg_server):
    history = tiers_history
    url, part = history
    latencies: list[tuple[float, float]] = []   # (start, ms)
    stop = threading.Event()

    def writer():
        with psycopg.connect(url, row_factory=dict_row) as conn:
            ids = [r["id"] for r in conn.execute("select id from proxmox_servers order by id")]
            k = 0
            while not stop.is_set():
                batch = [ids[(k + j) % len(ids)] for j in range(WRITE_BATCH)]
                k += WRITE_BATCH
                now = datetime.now(timezone.utc)
                args = {"server_id": batch, "scheduled_at": [now] * WRITE_BATCH, "created_at": [now] * WRITE_BATCH,
                        "success": [True] * WRITE_BATCH, "response_time_ms": [25] * WRITE_BATCH,
                        "error_kind": [None] * WRITE_BATCH, "error_message": [None] * WRITE_BATCH,
                        "used_fallback": [False] * WRITE_BATCH}
                t = time.perf_counter()
                conn.execute(db.q("insert_metrics"), args)
                conn.commit()
                latencies.append((t, ms_since(t)))
                time.sleep(max(0.0, WRITE_EVERY_MS / 1000 - (time.perf_counter() - t)))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(WRITE_BASELINE_S)
        with psycopg.connect(url, row_factory=dict_row) as conn:
            rows = conn.execute(f"select count(*) as n from public.{part}").fetchone()["n"]
            t0 = time.perf_counter()
            pruned = retention.prune(conn, RetentionSettings(raw_days=7, hourly_days=400, daily_days=0))
            prune_ms = ms_since(t0)
            t1 = time.perf_counter()
        time.sleep(2)
        c0, c1 = _free_a_file_like(pg_server.datadir.parent, pruned.partitions[0].bytes)
        time.sleep(2)
    finally:
        stop.set()
        thread.join(30)
    assert [p.name for p in pruned.partitions] == [part]
    before = [ms for t, ms in latencies if t < t0]
    during = [ms for t, ms in latencies if t0 <= t <= t1]
    control = [ms for t, ms in latencies if c0 <= t <= c1]
    point, fstype, options = _mount_of(pg_server.datadir)
    discard = "discard" in options.split(",")
    print(f"\nPruning: the cluster's filesystem: {fstype} on {point} ({options}): online discard "
          f"{'ON' if discard else 'off'}")
    table(f"Pruning one day of raw polls ({rows:,} rows, {pruned.partitions[0].bytes / 1e9:.2f} GB) while "
          f"inserting {WRITE_BATCH} polls every {WRITE_EVERY_MS} ms", ["", "inserts", "p50 ms", "p99 ms", "max ms"],
          [_row("before (baseline)", before), _row("during the prune", during),
           _row(f"control: unlinking a file as large ({(c1 - c0) * 1000:.0f} ms)", control)])
    table("Inserts per step of the prune (started during it)", ["step", "ms", "inserts", "p50 ms", "max ms"],
          [(name, f"{(b - a) * 1000:.0f}", len(xs := [ms for t, ms in latencies if a <= t <= b]),
            f"{pct(xs, 50):.2f}" if xs else "-", f"{max(xs):.2f}" if xs else "-") for name, a, b in pruned.steps])
    print(f"prune (make partitions ahead, detach concurrently, drop, rollup batches): {prune_ms:.0f} ms; goals: "
          f"≤ 2000 ms, p99 during {pct(during, 99):.2f} ms ≤ 2 × {pct(before, 99):.2f} ms")


def test_reading_a_month_and_a_year_and_the_fleet(tiers_history):
    history = tiers_history
    url, _ = history
    results = {}
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as member, \
            psycopg.connect(url, autocommit=True, row_factory=dict_row) as svc:
        member.execute("select set_config('request.jwt.claims', %s, false)",
                       (json.dumps({"sub": str(USER), "role": "authenticated"}),))
        member.execute("set role authenticated")
        svc.execute("set role service_role")
        server = member.execute("select id from proxmox_servers order by name offset %s limit 1",
                                (SERVERS // 2,)).fetchone()["id"]
        # fleet_overview's summary for the last complete hour, as the worker's refresh_fleet_uptime job
        # writes it (timed: it runs once an hour), and the rollups' answer it must equal
        svc.execute("reset role")
        t = time.perf_counter()
        refreshed = retention.refresh_fleet_uptime(svc)
        refresh_ms = ms_since(t)
        svc.execute("set role service_role")
        assert refreshed == SERVERS
        fleet = member.execute("select * from fleet_overview()").fetchall()
        assert len(fleet) == SERVERS and fleet[0]["uptime_90d"] is not None
        member.execute("begin")
        member.execute("reset role")
        member.execute("update fleet_uptime set through_hour = through_hour - interval '1 hour'")
        member.execute("set local role authenticated")
        assert member.execute("select * from fleet_overview()").fetchall() == fleet
        times = []
        for _ in range(max(10, CALLS // 20)):
            t = time.perf_counter()
            member.execute("select * from fleet_overview()").fetchall()
            times.append(ms_since(t))
        results["fleet_overview 1,000 servers (member), no summary yet this hour"] = times
        member.execute("rollback")
        member.execute("set role authenticated")
        cases = [
            ("connection_history 30 days (member)", member, "select connection_history(%s, 720)", (server,)),
            ("connection_history 1 year (member)", member, "select connection_history(%s, 8784)", (server,)),
            ("connection_history 14 days, hourly (member)", member, "select connection_history(%s, 336)", (server,)),
            ("fleet_overview 1,000 servers (member)", member, "select * from fleet_overview()", ()),
            ("fleet_overview 1,000 servers (service_role)", svc, "select * from fleet_overview()", ()),
        ]
        for label, conn, sql, args in cases:
            for _ in range(5):
                conn.execute(sql, args).fetchall()
            times = []
            for _ in range(CALLS if "history" in label else max(20, CALLS // 5)):
                t = time.perf_counter()
                conn.execute(sql, args).fetchall()
                times.append(ms_since(t))
            results[label] = times
        if os.environ.get("BENCH_TIERS_EXPLAIN"):
            # The function's read of the summary (its last query), z being the last complete hour
            src = svc.execute("select prosrc from pg_proc where proname = 'fleet_overview'").fetchone()["prosrc"]
            body = src[src.rindex("return query") + len("return query"):].split(";")[0].replace(
                " z ", " (date_trunc('hour', now(), 'UTC') - interval '1 hour') ").replace(
                " z\n", " (date_trunc('hour', now(), 'UTC') - interval '1 hour')\n")
            for who in (svc, member):
                for r in who.execute("explain (analyze, buffers) " + body):
                    print(r["QUERY PLAN"])
    table("Reading", ["call", "calls", "p50 ms", "p95 ms", "max ms"],
          [(label, len(v), f"{pct(v, 50):.2f}", f"{pct(v, 95):.2f}", f"{max(v):.2f}") for label, v in results.items()])
    print(f"refresh_fleet_uptime (the summary of {SERVERS:,} servers, once an hour): {refresh_ms:.0f} ms")
    print("goals: connection_history p50 ≤ 10 ms; fleet_overview p50 ≤ 50 ms")
