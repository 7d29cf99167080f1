"""Benchmark — Realtime latency: from a status change committed in Postgres to the subscriber's
callback, p50 / p99 over 1,000 changes. Goal: p99 ≤ 250 ms on loopback.

The path measured is the production one in embedded mode: the stand-in as its own process
(`python -m worker.embedded.standin`, as `proxwatch up` runs it beside the dashboard), the capture
trigger and NOTIFY, the RLS check as the subscriber, and the official `realtime` client with a
signed-in user's JWT subscribed the way the fleet view is (proxmox_servers, no filter). A writer
thread commits one status change per transaction (connection_status flips, nodes_online carries the
change's number); the clock starts when COMMIT returns and stops in the client's callback (one
process, one monotonic clock).

Two phases: paced (one change every BENCH_PACE_MS, default 20 ms = 50 changes/s, far above what a
real fleet produces) and burst (back to back, as fast as one connection commits). With
BENCH_SUBSCRIBERS > 1, that many users of the same tenant subscribe (each its own socket and RLS
identity) and the latency is taken over all of their callbacks.

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_realtime_latency.py -s -q -p no:cacheprovider

Knobs: BENCH_CHANGES (1000), BENCH_PACE_MS (20), BENCH_SERVERS (50), BENCH_SUBSCRIBERS (1).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time

import psycopg
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from tests.bench.reporting import pct
from tests.support.seed import seed_servers
from tests.support.standin import StandInProcess, sign_in

CHANGES = int(os.environ.get("BENCH_CHANGES", "1000"))
PACE_MS = float(os.environ.get("BENCH_PACE_MS", "20"))
SERVERS = int(os.environ.get("BENCH_SERVERS", "50"))
SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", "1"))


def writer(db_url: str, server_ids: list[str], first: int, count: int, pace_s: float, committed: dict) -> None:
    """One change per transaction; committed[n] = the moment its COMMIT returned."""
    with psycopg.connect(db_url) as conn:
        next_at = time.perf_counter()
        for n in range(first, first + count):
            sid = server_ids[n % len(server_ids)]
            conn.execute("update public.proxmox_servers set connection_status = case connection_status"
                         " when 'online' then 'offline'::connection_status else 'online' end,"
                         " nodes_online = %s where id = %s", (n, sid))
            conn.commit()
            committed[n] = time.perf_counter()
            if pace_s:
                next_at += pace_s
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)


async def run_phase(db_url, server_ids, clients, first, pace_s) -> list[float]:
    """Latencies (ms) of CHANGES changes over every subscriber."""
    received: dict[tuple[int, int], float] = {}
    done = asyncio.Event()
    expected = CHANGES * len(clients)

    def on_change(k):
        def callback(payload):
            n = payload["data"]["record"]["nodes_online"]
            if first <= n < first + CHANGES:
                received[(k, n)] = time.perf_counter()
                if len(received) == expected:
                    done.set()
        return callback

    channels = []
    for k, client in enumerate(clients):
        channel = client.channel(f"fleet-{first}")
        channel.on_postgres_changes("UPDATE", on_change(k), table="proxmox_servers")
        states = []
        await channel.subscribe(lambda s, e, states=states: states.append(s))
        assert states[-1] == RealtimeSubscribeStates.SUBSCRIBED, states
        channels.append(channel)
    committed: dict[int, float] = {}
    thread = threading.Thread(target=writer, args=(db_url, server_ids, first, CHANGES, pace_s, committed))
    started = time.perf_counter()
    thread.start()
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    thread.join()
    for client, channel in zip(clients, channels):
        await client.remove_channel(channel) if len(client.channels) > 1 else await channel.unsubscribe()
    latencies = [(received[(k, n)] - committed[n]) * 1000 for (k, n) in received]
    print(f"  {CHANGES} changes × {len(clients)} subscriber(s) in {elapsed:.1f} s"
          f" ({CHANGES / elapsed:.0f} changes/s committed)")
    return latencies


def test_realtime_latency(db_url, pw_secrets, pw_home):
    server_ids, users = seed_servers(db_url, pw_secrets["secret_key"], SERVERS, users=SUBSCRIBERS)
    with StandInProcess(db_url, pw_secrets["jwt_secret"], pw_home) as standin:
        tokens = [sign_in(standin, u) for u in users]

        async def scenario():
            clients = []
            for token in tokens:
                client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token=standin.anon_key)
                await client.set_auth(token)
                await client.connect()
                clients.append(client)
            rows = []
            for name, first, pace in (("paced", 0, PACE_MS / 1000), ("burst", 10 * CHANGES, 0.0)):
                print(f"\n{name}:")
                lat = await run_phase(db_url, server_ids, clients, first, pace)
                rows.append((name, len(lat), statistics.median(lat), pct(lat, 95), pct(lat, 99), max(lat)))
            for client in clients:
                await client.close()
            return rows

        rows = asyncio.run(scenario())
    print(f"\nRealtime latency, commit → callback ({SERVERS} servers, {SUBSCRIBERS} subscriber(s), loopback)")
    print(f"{'phase':>6} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, n, p50, p95, p99, mx in rows:
        print(f"{name:>6} {n:>6} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {mx:>8.1f}")
    paced_p99 = rows[0][4]
    print(f"goal p99 ≤ 250 ms (paced): {'met' if paced_p99 <= 250 else 'NOT met'}")
