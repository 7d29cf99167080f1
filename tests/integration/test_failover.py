"""Failover without loss (each found by tests/bench/bench_faults.py): a worker that dies holding a
poll loses nothing — the broker gives the message back and another worker writes its row, once —
and a standby scheduler knows the servers before it leads, so taking over while Postgres is down
does not send from an empty list."""

from __future__ import annotations

import signal
import threading
from datetime import datetime, timezone

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from tests.support.processes import spawn, stop
from tests.support.waiting import wait_for
from worker.schedule import Job
from worker.scheduler import Scheduler

WORKER = ["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "1"]


def test_a_poll_held_by_a_killed_worker_is_written_once_by_the_next_one(pve, add_server, conn, services_env,
                                                                       redis_server, tmp_path):
    server = add_server("pve-slow", pve.url)
    scheduled_at = datetime.now(timezone.utc).replace(microsecond=0)
    log = open(tmp_path / "procs.log", "wb")
    # Given a server that does not answer, so the worker holds its poll
    pve.flaky_network(hang_rate=1.0, hang_secs=30)
    first = spawn(WORKER, services_env, log)
    second = None
    try:
        RedisBroker(url=redis_server.url).enqueue(Message(
            queue_name="polls", actor_name="poll", args=(str(server["id"]), scheduled_at.isoformat()),
            kwargs={}, options={}))
        # (taken: the message sits in the worker's ack set while it waits up to 5 s for PVE)
        client = redis.Redis.from_url(redis_server.url)
        assert wait_for(lambda: any(client.scard(k) for k in client.keys("dramatiq:__acks__.*")), 60), \
            (tmp_path / "procs.log").read_text()[-3000:]
        # When that worker dies (SIGKILL: no chance to give the message back) and another one starts
        stop(first, sig=signal.SIGKILL)
        pve.flaky_network(hang_rate=0.0)
        second = spawn(WORKER, services_env, log)

        def rows():
            conn.commit()
            return conn.execute("select success, error_message from connection_metrics where server_id = %s and scheduled_at = %s",
                                (server["id"], scheduled_at)).fetchall()
        # Then the poll is written, by the new worker, exactly once
        assert wait_for(lambda: rows(), 120), (tmp_path / "procs.log").read_text()[-3000:]
        assert [(r["success"], r["error_message"]) for r in rows()] == [(True, None)]
    finally:
        for p in (first, second):
            if p is not None:
                stop(p)
        log.close()


class StandingBy:
    """A leader lock held by another scheduler."""

    def hold(self) -> bool:
        return False

    def release(self) -> None:
        pass


def test_a_standby_scheduler_reads_the_servers_before_it_leads(pve, add_server, db_url):
    server = add_server("pve1", pve.url)
    sent = []
    scheduler = Scheduler(db_url, lambda actor, args: sent.append(args), StandingBy(), [Job("poll")])
    stop_event = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop_event,))
    thread.start()
    try:
        # While another scheduler leads, this one keeps the server list it would send from
        assert wait_for(lambda: scheduler.servers, 15)
        assert [sid for sid, _ in scheduler.servers] == [str(server["id"])]
    finally:
        stop_event.set()
        thread.join(10)
    assert sent == []
