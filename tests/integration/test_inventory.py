"""Guest sync against a fake PVE over real HTTPS into the real database: rows for qemu and lxc
guests, nothing rewritten when nothing visible changed (guests is published), changes and vanished
guests applied, PVE failures recorded as data — and `proxwatch guests sync --once | list`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.processes import ROOT
from tests.support.seed import TOKEN
from worker import inventory
from worker.crypto import Box
from worker.polling import Poller


@pytest.fixture
def server(add_server, pve):
    pve.add_vm(100, "web", status="running", config={"tags": "prod;web", "memory": 2048, "cores": 2})
    pve.add_vm(101, "db", status="stopped")
    pve.add_ct(200, "dns", status="running")
    return str(add_server("pve1", pve.url)["id"])


@pytest.fixture
def poller(pool, secret_key, settings):
    return Poller(pool, Box(secret_key), settings)


def guests(conn) -> dict[int, dict]:
    conn.commit()
    return {r["vmid"]: r for r in conn.execute("select *, xmin::text as version from public.guests")}


def test_a_sync_stores_every_guest_of_the_cluster(conn, server, poller):
    result = inventory.sync_guests(poller, server)
    assert (result.guests, result.changed, result.removed, result.error_kind) == (3, 3, 0, None)
    rows = guests(conn)
    web, db_, dns = rows[100], rows[101], rows[200]
    assert (web["guest_type"], web["name"], web["status"], web["node"]) == ("qemu", "web", "running", "pve1")
    assert web["tags"] == ["prod", "web"] and web["maxcpu"] == 2 and web["maxmem"] == 2048 * 1024 * 1024
    assert web["mem_pct"] == 5 and web["cpu_pct"] == 0          # 64 MiB of 2 GiB, 2 % cpu → 5 % steps
    assert (db_["status"], db_["cpu_pct"], db_["mem_pct"]) == ("stopped", None, None)
    assert (dns["guest_type"], dns["status"]) == ("lxc", "running")
    sync = conn.execute("select * from public.guest_syncs").fetchone()
    assert sync["guest_count"] == 3 and sync["error_message"] is None and sync["last_success_at"]


def test_a_second_sync_without_visible_change_writes_no_guest_row(conn, server, poller):
    inventory.sync_guests(poller, server)
    before = {vmid: r["version"] for vmid, r in guests(conn).items()}
    result = inventory.sync_guests(poller, server)
    assert result.changed == 0
    assert {vmid: r["version"] for vmid, r in guests(conn).items()} == before


def test_changes_are_applied_and_vanished_guests_disappear(conn, server, poller, pve):
    inventory.sync_guests(poller, server)
    before = guests(conn)
    pve.vm(101).status = "running"
    pve.vm(101).started_at = __import__("time").time()
    pve.vms.remove(pve.vm(100))
    result = inventory.sync_guests(poller, server)
    assert (result.guests, result.changed, result.removed) == (2, 1, 1)
    after = guests(conn)
    assert sorted(after) == [101, 200]
    assert after[101]["status"] == "running" and after[101]["version"] != before[101]["version"]
    assert after[200]["version"] == before[200]["version"]


def test_a_pve_failure_is_recorded_and_the_known_guests_stay(conn, server, poller, pve):
    inventory.sync_guests(poller, server)
    pve.apitokens.clear()          # the token is revoked
    result = inventory.sync_guests(poller, server)
    assert result.error_kind == "auth" and "refused the credentials" in result.error_message
    assert sorted(guests(conn)) == [100, 101, 200]
    sync = conn.execute("select * from public.guest_syncs").fetchone()
    assert sync["error_kind"] == "auth" and sync["guest_count"] == 3 and sync["last_success_at"]


def test_plan_keeps_the_start_time_while_uptime_ticks():
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    item = {"type": "qemu", "vmid": 100, "node": "pve1", "name": "web", "status": "running", "uptime": 3600,
            "cpu": 0.31, "mem": 512 << 20, "maxmem": 1024 << 20}
    first = inventory.plan([], [item], now)
    stored = [{**first.upserts[0], "tags": []}]
    later = inventory.plan(stored, [{**item, "uptime": 3630, "cpu": 0.29}], now + timedelta(seconds=31))
    assert later.upserts == [] and later.deletes == []
    rebooted = inventory.plan(stored, [{**item, "uptime": 20}], now + timedelta(minutes=10))
    assert len(rebooted.upserts) == 1 and rebooted.upserts[0]["started_at"] == now + timedelta(minutes=10, seconds=-20)


def test_the_cli_syncs_and_lists_guests(db_url, redis_server, secret_key, tmp_path, conn, server):
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
               PROXWATCH_HOME=str(tmp_path), COLUMNS="200", NO_COLOR="1", PROXWATCH_PVE_CA_FILE="")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    synced = cli("guests", "sync", "--once")
    assert synced.returncode == 0, synced.stderr
    assert "pve1" in synced.stdout and "ok" in synced.stdout
    listed = cli("guests", "list", "pve1")
    assert listed.returncode == 0 and "web" in listed.stdout and "dns" in listed.stdout and "stopped" in listed.stdout
    wrong = cli("guests", "sync", "nope", "--once")
    assert wrong.returncode == 2 and "there is no server named 'nope'" in wrong.stderr
    assert TOKEN.split("=")[1] not in synced.stdout + listed.stdout


def test_the_scheduler_and_a_real_worker_sync_guests_and_expire_stale_sessions(conn, server, db_url, redis_server,
                                                                              secret_key, tmp_path, pve):
    import redis
    import signal
    import time

    from tests.support.seed import open_session

    # Given a session whose heartbeat is long gone, and a grace of one second
    stale = open_session(conn, server, None)
    conn.execute("update public.connection_heartbeats set last_seen_at = now() - interval '1 minute'")
    conn.execute("update public.connection_session_settings set stale_after = '1 second'")
    conn.commit()
    redis.Redis.from_url(redis_server.url).flushall()
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
               PROXWATCH_HOME=str(tmp_path), PYTHONUNBUFFERED="1", PROXWATCH_GUEST_INTERVAL="5",
               PROXWATCH_SESSION_SWEEP_S="5")
    log = open(tmp_path / "procs.log", "wb")
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
             for args in (["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "2"],
                          ["-m", "worker.scheduler"])]
    try:
        # When the scheduler and the worker run (the product's processes)
        deadline = time.monotonic() + 60
        done = False
        while time.monotonic() < deadline and not done:
            conn.commit()
            guests_n = conn.execute("select count(*) as n from public.guests").fetchone()["n"]
            status = conn.execute("select status from public.connection_sessions where id = %s",
                                  (stale["id"],)).fetchone()["status"]
            done = guests_n == 3 and status == "expired"
            time.sleep(0.5)
        # Then the guests are there and the stale session is expired by the periodic job
        assert done, (tmp_path / "procs.log").read_text()[-3000:]
        # A guest that PVE stops listing disappears on a later sync
        pve.vms.remove(pve.vm(101))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            conn.commit()
            if conn.execute("select count(*) as n from public.guests").fetchone()["n"] == 2:
                break
            time.sleep(0.5)
        assert sorted(guests(conn)) == [100, 200]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
        log.close()
