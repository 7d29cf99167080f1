"""`proxwatch demo --servers N`: the light simulator serves many PVE servers from one event loop, the
real worker and scheduler poll them, and each server's character shows as its status (most online,
every 11th a degraded cluster, every 43rd offline), spread over three tenants. Bad input is refused
before anything starts."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

from tests.support.processes import run_cli
from tests.support.seed import TOKEN
from tests.support.waiting import free_port, wait_for
from worker.embedded import simfleet

SERVERS = 50  # 44 online or flapping, 4 degraded clusters (11, 22, 33, 44), 1 offline (43)


@pytest.fixture
def simulated(_fakepve_pki):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fleet = simfleet.SimFleet(simfleet.plan(SERVERS), TOKEN, *_fakepve_pki)
    port = free_port()
    asyncio.run_coroutine_threadsafe(fleet.start(port), loop).result(60)
    try:
        yield fleet, port
    finally:
        asyncio.run_coroutine_threadsafe(fleet.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)


def test_a_simulated_fleet_of_fifty_is_polled_by_the_real_worker(simulated, add_server, conn, procs):
    fleet, port = simulated
    for sim in fleet.servers:
        add_server(sim.name, f"https://{sim.host}:{port}", tenant=sim.tenant, interval=2)
    # When a worker and a scheduler run
    procs.worker(threads=8)
    procs.scheduler()

    def statuses():
        conn.commit()
        return {r["name"]: r["connection_status"] for r in
                conn.execute("select name, connection_status::text from proxmox_servers")}
    # Then every server gets a status from its polls, as its character says
    assert wait_for(lambda: "unknown" not in statuses().values() and statuses()[fleet.servers[42].name]
                    == "offline", 90), (Counter(statuses().values()), procs.output())
    now = statuses()
    for sim in fleet.servers:
        if not sim.serve:
            assert now[sim.name] == "offline", sim
        elif sim.offline_nodes:
            assert now[sim.name] == "degraded", sim
        elif not sim.drop_rate:
            assert now[sim.name] == "online", sim
    tenants = conn.execute("select t.name, count(*) as n from proxmox_servers s join tenants t"
                           " on t.id = s.tenant_id group by t.name order by t.name").fetchall()
    assert [(t["name"], t["n"]) for t in tenants] == [("demo-north", 17), ("demo-south", 17), ("demo-west", 16)]


def test_a_bad_server_count_is_refused_in_one_sentence_before_anything_starts(services_env):
    result = run_cli(services_env, "demo", "--servers", "6000")
    assert result.returncode != 0
    said = " ".join(result.stderr.replace("│", " ").split())  # typer draws its usage error in a box
    assert "Invalid value for '--servers': Input should be less than or equal to 5000" in said, said
    with pytest.raises(Exception, match="between 0 and 5000"):
        simfleet.plan(-1)
