"""Benchmark — the Realtime message budget: 1,000 servers polled every 10 s, 1 % of them flapping;
how many messages does a subscriber to the fleet view receive, per poll? Goal: ≤ 5 %.
Side by side: the naive design (every poll rewrites the server row) and the Recorder as it is,
with status_refresh_s (PROXWATCH_STATUS_REFRESH, how often "last checked" and the 24 h figures
are rewritten although nothing visible changed) at several values, and with no refresh at all —
what the row would publish if "last checked" lived off the published row.

Driven through the real pieces: worker.polling.Recorder.write() with prepared PollResults over
simulated time (`now=` and scheduled_at advance 10 s per cycle, as fast as the database takes
them), the stand-in as its own process with the embedded Realtime, and the official `realtime`
client signed in as a viewer of the tenant, subscribed as the dashboard's fleet view is
(proxmox_servers, every event, no filter) — plus the open server's chart subscription
(connection_metrics, server_id=eq.<one server>). Messages are counted in the client's callbacks;
the run ends when a marker change committed after the last cycle has arrived (changes arrive in
commit order), so every message of the run is counted.

The fleet starts in a steady state: every server online with last_health_check_at spread evenly
over the last status_refresh_s (as a fleet that has been running a while, added at various
times), so a refresh is not one synchronized burst. Flapping servers alternate 3 failed polls
(offline after the third) and 3 answered ones (degraded: 2 or more failures among the last 10).

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_realtime_budget.py -s -q -p no:cacheprovider

Knobs: BENCH_SERVERS (1000), BENCH_MINUTES (20 simulated minutes per design), BENCH_FLAPPING
(0.01), BENCH_REFRESH ("0,60,300,600,off": the designs to run; 0 = naive, off = no refresh).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from tests.support.seed import seed_servers
from tests.support.standin import StandInProcess, sign_in
from worker import db
from worker.polling import PollResult, Recorder
from worker.settings import load as load_settings

SERVERS = int(os.environ.get("BENCH_SERVERS", "1000"))
MINUTES = float(os.environ.get("BENCH_MINUTES", "20"))
FLAPPING = float(os.environ.get("BENCH_FLAPPING", "0.01"))
INTERVAL_S = 10
DESIGNS = [d.strip() for d in os.environ.get("BENCH_REFRESH", "0,60,300,600,off").split(",") if d.strip()]
NO_REFRESH_S = 10 ** 9
RESULTS: dict[str, dict] = {}


def design_name(refresh: str) -> str:
    if refresh == "0":
        return "naive: every poll rewrites the row"
    if refresh == "off":
        return "visible changes only (no refresh)"
    return f"Recorder, refresh every {refresh} s"


def polls_for(cycle: int, at: datetime, server_ids: list[str], flapping: set[str], rnd: random.Random):
    """One cycle's poll results: flapping servers fail 3 polls, answer 3; the rest always answer."""
    results = []
    for sid in server_ids:
        ok = sid not in flapping or (cycle // 3) % 2 == 1
        results.append(PollResult(
            server_id=sid, scheduled_at=at, created_at=at + timedelta(milliseconds=rnd.randint(5, 900)),
            success=ok, response_time_ms=rnd.randint(15, 80) if ok else None,
            error_kind=None if ok else "timeout",
            error_message=None if ok else "The server did not answer within 5 s.",
            pve_version="9.1.4" if ok else None, nodes_online=1 if ok else None, nodes_total=1 if ok else None,
            quorate=None))
    return results


@pytest.mark.parametrize("refresh", DESIGNS)
def test_realtime_budget(refresh, db_url, pw_secrets, pw_home):
    refresh_s = 0 if refresh == "0" else NO_REFRESH_S if refresh == "off" else int(refresh)
    rnd = random.Random(7)
    server_ids, users = seed_servers(db_url, pw_secrets["secret_key"], SERVERS, users=1)
    flapping = set(rnd.sample(server_ids, max(1, round(SERVERS * FLAPPING))))
    start = datetime.now(timezone.utc).replace(microsecond=0)
    with psycopg.connect(db_url) as conn:
        # Steady state: last checks spread evenly over the last refresh period.
        spread = max(1, min(refresh_s, 3600))
        conn.execute("update public.proxmox_servers set last_health_check_at = %s - make_interval(secs =>"
                     " (row_number * %s::float / %s)) from (select id as sid, row_number() over (order by id)"
                     " from public.proxmox_servers) n where n.sid = id",
                     (start, spread, SERVERS))
        conn.commit()
    settings = dataclasses.replace(load_settings(), status_refresh_s=refresh_s)
    cycles = int(MINUTES * 60 / INTERVAL_S)
    pool = db.make_pool(db_url, min_size=1, max_size=2)
    recorder = Recorder(pool, settings, max_batch=SERVERS)
    chart_server = server_ids[0]
    counts = {"fleet": 0, "chart": 0, "by_type": {}}
    marker = "budget-marker"

    with StandInProcess(db_url, pw_secrets["jwt_secret"], pw_home) as standin:
        token = sign_in(standin, users[0])

        async def scenario():
            client = AsyncRealtimeClient(f"{standin.url}/realtime/v1", token=standin.anon_key)
            await client.set_auth(token)
            done = asyncio.Event()

            def on_fleet(payload):
                data = payload["data"]
                if data["type"] == "UPDATE" and data["record"].get("health_check_error") == marker:
                    done.set()
                    return
                counts["fleet"] += 1
                counts["by_type"][data["type"]] = counts["by_type"].get(data["type"], 0) + 1

            def on_chart(_payload):
                counts["chart"] += 1

            fleet = client.channel("fleet").on_postgres_changes("*", on_fleet, table="proxmox_servers")
            chart = client.channel("chart").on_postgres_changes(
                "*", on_chart, table="connection_metrics", filter=f"server_id=eq.{chart_server}")
            for channel in (fleet, chart):
                states = []
                await channel.subscribe(lambda s, e, states=states: states.append(s))
                assert states[-1] == RealtimeSubscribeStates.SUBSCRIBED, states

            def drive():
                for cycle in range(cycles):
                    at = start + timedelta(seconds=INTERVAL_S * (cycle + 1))
                    recorder.write(polls_for(cycle, at, server_ids, flapping, rnd), now=at + timedelta(seconds=1))
                with psycopg.connect(db_url) as conn:
                    conn.execute("update public.proxmox_servers set health_check_error = %s where id = %s",
                                 (marker, server_ids[-1]))

            began = time.perf_counter()
            writer = threading.Thread(target=drive)
            writer.start()
            await asyncio.wait_for(done.wait(), 1800)
            writer.join()
            await client.close()
            return time.perf_counter() - began

        wall = asyncio.run(scenario())
    pool.close()
    polls = cycles * SERVERS
    RESULTS[refresh] = {"polls": polls, "fleet": counts["fleet"], "chart": counts["chart"], "wall": wall,
                        "types": counts["by_type"]}
    print(f"\n{design_name(refresh)}: {polls:,} polls in {MINUTES:g} simulated min ({wall:.0f} s wall),"
          f" fleet subscriber got {counts['fleet']:,} messages = {100 * counts['fleet'] / polls:.2f} % of polls"
          f" ({counts['fleet'] / (MINUTES * 60):.1f} msg/s), chart subscriber {counts['chart']} messages")
    if len(RESULTS) == len(DESIGNS):
        print(f"\nRealtime budget — {SERVERS:,} servers every {INTERVAL_S} s, {FLAPPING:.0%} flapping,"
              f" {MINUTES:g} simulated minutes each (goal: fleet messages ≤ 5 % of polls)")
        print(f"{'design':<40} {'polls':>9} {'fleet msgs':>11} {'% of polls':>11} {'msg/s':>7} {'goal':>6}")
        for key in DESIGNS:
            r = RESULTS[key]
            ratio = 100 * r["fleet"] / r["polls"]
            print(f"{design_name(key):<40} {r['polls']:>9,} {r['fleet']:>11,} {ratio:>10.2f}% "
                  f"{r['fleet'] / (MINUTES * 60):>7.1f} {'met' if ratio <= 5 else 'NOT':>6}")
        print(f"(the open server's chart subscription: {RESULTS[DESIGNS[0]]['chart']} messages = one per poll of"
              f" that server, {MINUTES * 60 / INTERVAL_S:.0f} polls)")
