"""The whole path on real services: scheduler → Redis (Dramatiq) → worker → fake PVE over HTTPS
→ Postgres. Two schedulers run at once; the polls are not doubled."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.support.processes import spawn, stop
from tests.support.waiting import wait_for


def test_two_schedulers_and_a_worker_poll_each_server_once_per_interval(pve, add_server, conn, services_env,
                                                                        tmp_path):
    servers = [add_server(f"pve{i}", pve.url, interval=2) for i in range(3)]
    log = open(tmp_path / "procs.log", "wb")
    worker = spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "4"],
                   services_env, log)
    schedulers = [spawn(["-m", "worker.scheduler"], services_env, log)]
    try:
        def count():
            conn.commit()
            return conn.execute("select count(*) as n from connection_metrics").fetchone()["n"]
        # Given a leading scheduler, and then a second one started beside it
        assert wait_for(lambda: count() >= 3, 60), (tmp_path / "procs.log").read_text()[-3000:]
        schedulers.append(spawn(["-m", "worker.scheduler"], services_env, log))
        assert wait_for(lambda: count() >= 15, 60), (tmp_path / "procs.log").read_text()[-3000:]
        time.sleep(3)
        conn.commit()
        rows = conn.execute("select server_id, scheduled_at, success from connection_metrics "
                            "order by server_id, scheduled_at").fetchall()
        # Then every poll succeeded, and each server was polled once per 2 s tick, never twice
        assert all(r["success"] for r in rows)
        per_server = Counter(r["server_id"] for r in rows)
        assert set(per_server) == {s["id"] for s in servers}
        for sid in per_server:
            ticks = [r["scheduled_at"] for r in rows if r["server_id"] == sid]
            gaps = {(b - a).total_seconds() for a, b in zip(ticks, ticks[1:])}
            assert gaps <= {2.0}, gaps
        version_calls = sum(1 for method, path, _ in pve.requests if path.endswith("/version"))
        assert version_calls <= len(rows) + len(servers) * 2  # polls in flight at the end may not be recorded yet
        assert version_calls >= len(rows)

        # When the leading scheduler dies, the standby takes over and polls go on
        before = count()
        stop(schedulers[0])
        assert wait_for(lambda: count() >= before + 9, 30)
        status = conn.execute("select distinct connection_status::text as s from proxmox_servers").fetchall()
        assert [r["s"] for r in status] == ["online"]
    finally:
        for p in schedulers + [worker]:
            stop(p)
        log.close()


@pytest.fixture
def running(services_env, tmp_path, db_url):
    """A worker (1 process, 2 threads) and a scheduler running; yields (count_metrics, log_tail)."""
    import psycopg

    log = open(tmp_path / "procs.log", "wb")
    procs = [spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "2"],
                   services_env, log),
             spawn(["-m", "worker.scheduler"], services_env, log)]

    def count():
        with psycopg.connect(db_url) as c:
            return c.execute("select count(*) from connection_metrics").fetchone()[0]
    try:
        yield count, lambda: (tmp_path / "procs.log").read_text()[-3000:], procs
    finally:
        for p in procs:
            stop(p)
        log.close()


def test_polls_survive_a_postgres_restart_without_losing_a_tick(pve, add_server, conn, pg_server, db_url, running):
    import psycopg

    s = add_server("pve1", pve.url, interval=2)
    count, log_tail, _ = running
    assert wait_for(lambda: count() >= 3, 60), log_tail()
    conn.close()
    # When Postgres restarts (down for a few seconds)
    pg_server.stop()
    time.sleep(4)
    pg_server.start()
    n = count()
    assert wait_for(lambda: count() >= n + 4, 60), log_tail()
    with psycopg.connect(db_url) as c:
        ticks = [r[0] for r in c.execute("select scheduled_at from connection_metrics where server_id = %s "
                                         "order by scheduled_at", (s["id"],))]
    # Then the polls of the outage were retried and landed: no tick is missing
    gaps = [(b - a).total_seconds() for a, b in zip(ticks, ticks[1:])]
    assert set(gaps) == {2.0}, gaps


def test_polling_resumes_after_a_redis_restart(pve, add_server, redis_server, running):
    add_server("pve1", pve.url, interval=2)
    count, log_tail, procs = running
    assert wait_for(lambda: count() >= 2, 60), log_tail()
    # When Redis restarts
    redis_server.stop()
    time.sleep(3)
    redis_server.start()
    n = count()
    # Then the scheduler and the worker reconnect by themselves and the polls go on
    assert wait_for(lambda: count() >= n + 4, 90), log_tail()
    assert all(p.poll() is None for p in procs)
