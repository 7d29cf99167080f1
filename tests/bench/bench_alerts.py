"""Benchmark — alerts: from the poll that changes a status to the message at a local webhook
receiver, through the real product processes (the scheduler sends drain_alerts every second; a
Dramatiq worker drains the outbox and delivers through Apprise's json://), grouping window 0.

1. Latency: 200 status changes, one every 0.5 s, each written by the worker's Recorder (the
   transaction that changes the status also writes the incident and, through its trigger, the outbox
   row); measured from that commit to the arrival of the message naming the server. Goal p99 ≤ 2 s.
2. A partition: 1,000 servers go offline in one cycle (one Recorder batch): messages per channel
   (two json:// receivers; goal 1 each) and the time from the commit to their arrival.

The servers are seeded online and disabled (the scheduler does not poll them: their statuses move
only by the Recorder writes here).

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_alerts.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_ALERT_CHANGES (200), BENCH_ALERT_PARTITION (1000).
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from tests.bench.reporting import pct, table
from tests.support import processes
from tests.support.processes import Procs
from tests.support.receivers import WebhookReceiver
from tests.support.seed import seed_servers
from tests.support.waiting import wait_until
from worker import alerts, db
from worker.crypto import Box
from worker.polling import PollResult, Recorder, utcnow
from worker.settings import load

CHANGES = int(os.environ.get("BENCH_ALERT_CHANGES", "200"))
PARTITION = int(os.environ.get("BENCH_ALERT_PARTITION", "1000"))


def failed(server_id: str) -> PollResult:
    now = utcnow()
    return PollResult(server_id=server_id, scheduled_at=now, created_at=now, success=False, response_time_ms=None,
                      error_kind="timeout", error_message="The server did not answer within 5 s.")


@pytest.fixture
def world(db_url, redis_server, secret_key, tmp_path):
    ids, _ = seed_servers(db_url, secret_key, CHANGES + PARTITION)
    with db.connect(db_url) as conn:
        conn.execute("update public.proxmox_servers set enabled = false")
        conn.commit()
    processes.flush_redis(redis_server.url)
    env = {**processes.service_env(db_url, redis_server.url, secret_key, tmp_path),
           "PROXWATCH_ALERT_GROUP_WINDOW_S": "0", "PROXWATCH_OFFLINE_AFTER": "1"}
    procs = Procs(env, tmp_path / "procs.log")
    procs.worker(threads=8)
    procs.scheduler()
    try:
        yield ids, procs
    finally:
        procs.close()


def test_alert_latency_and_a_partition(world, db_url, secret_key, pool):
    ids, procs = world
    hook_a, hook_b = WebhookReceiver().start(), WebhookReceiver().start()
    try:
        with db.connect(db_url) as conn:
            tenant = conn.execute("select id from public.tenants where name = 'bench'").fetchone()["id"]
            names = {str(r["id"]): r["name"] for r in conn.execute("select id, name from public.proxmox_servers")}
            alerts.add_channel(conn, Box(secret_key), tenant, "hook-a", hook_a.url)
            alerts.add_channel(conn, Box(secret_key), tenant, "hook-b", hook_b.url)
        recorder = Recorder(pool, dataclasses.replace(load(), offline_after=1))

        # 1. one status change every 0.5 s
        committed: dict[str, float] = {}
        for sid in ids[:CHANGES]:
            recorder.write([failed(sid)])
            committed[names[sid]] = time.time()
            time.sleep(0.5)   # the pace of the changes (load generation), not a wait for a result
        wait_until(lambda: all(any(n in m["message"] for m in hook_a.received) for n in committed), 60,
                   what="a message for every change")
        arrival: dict[str, float] = {}
        for msg, at in zip(hook_a.received, hook_a.arrivals):
            for name in committed:
                if name in msg["message"]:
                    arrival.setdefault(name, at)
        lat = [arrival[n] - committed[n] for n in committed]
        messages_1 = len(hook_a.received)

        # 2. a partition: PARTITION servers offline in one cycle
        before_a, before_b = len(hook_a.received), len(hook_b.received)
        batch = [failed(sid) for sid in ids[CHANGES:]]
        start = time.time()
        recorder.write(batch)
        wrote = time.time() - start
        committed_at = time.time()
        wait_until(lambda: len(hook_a.received) > before_a and len(hook_b.received) > before_b, 60,
                   what="the partition's message on both channels")
        first = max(hook_a.arrivals[before_a], hook_b.arrivals[before_b]) - committed_at
        # Let a few more drain rounds pass: any second message would arrive within them
        time.sleep(5)
        per_channel = (len(hook_a.received) - before_a, len(hook_b.received) - before_b)
        headline = hook_a.received[before_a]["message"].splitlines()[0]
        if procs.output() and "Traceback" in procs.output():
            print(procs.output())
    finally:
        hook_a.stop()
        hook_b.stop()

    table(f"Alert latency, {CHANGES} status changes (window 0; scheduler tick 1 s)", ["p50 s", "p90 s", "p99 s", "max s", "messages"],
          [[f"{pct(lat, 50):.2f}", f"{pct(lat, 90):.2f}", f"{pct(lat, 99):.2f}", f"{max(lat):.2f}", messages_1]])
    table(f"{PARTITION} servers offline in one cycle", ["messages hook-a", "messages hook-b", "write s", "to arrival s"],
          [[per_channel[0], per_channel[1], f"{wrote:.2f}", f"{first:.2f}"]])
    print(f"first line: {headline}")
    assert per_channel == (1, 1)
