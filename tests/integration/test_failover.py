"""Failover without loss (each found by tests/bench/bench_faults.py): a worker that dies holding a
poll loses nothing — the broker gives the message back and another worker writes its row, once —
and a standby scheduler knows the servers before it leads, so taking over while Postgres is down
does not send from an empty list. A scheduler that takes over from a dead leader sends what is due
after the leader's last pass, not again what the leader sent (found by tests/bench/bench_hosts.py)."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime, timezone

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from tests.support.processes import spawn, stop
from tests.support.waiting import wait_for
from worker.schedule import Job, jobs
from worker.scheduler import LeaderLock, Scheduler
from worker.settings import load

WORKER = ["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "1"]


def test_a_poll_held_by_a_killed_worker_is_written_once_by_the_next_one(pve, add_server, conn, services_env,
                                                                       redis_server, tmp_path):
    server = add_server("pve-slow", pve.url)
    scheduled_at = datetime.now(timezone.utc).replace(microsecond=0)
    log = open(tmp_path / "procs.log", "wb")
    # Given a server that does not answer, so the worker holds its poll (its calls time out after
    # 5 s; the hang outlasts that — longer would only keep the simulator's handler, and the
    # fixture's teardown, waiting)
    pve.flaky_network(hang_rate=1.0, hang_secs=8)
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


def runs(actor: str, args) -> list[tuple[str, str | None, str]]:
    """The scheduled runs a message carries as (actor, server id or None, scheduled_at); a
    poll_batch message is one poll per [server_id, scheduled_at] pair."""
    if actor == "poll_batch":
        return [("poll", sid, at) for sid, at in args[0]]
    return [(actor, args[0] if len(args) == 2 else None, args[-1])]


def sent_messages(client: redis.Redis) -> dict[tuple[str, str | None], list[str]]:
    """(actor, server id or None) -> the scheduled_at of every run waiting in Redis (no worker runs)."""
    out: dict[tuple[str, str | None], list[str]] = {}
    for key in client.scan_iter(match="dramatiq:*.msgs"):
        for body in client.hvals(key):
            message = json.loads(body)
            for actor, sid, at in runs(message["actor_name"], message["args"]):
                out.setdefault((actor, sid), []).append(at)
    return out


def test_a_scheduler_taking_over_from_a_killed_leader_sends_nothing_the_leader_sent(add_server, conn, db_url,
                                                                                     services_env, redis_server,
                                                                                     tmp_path):
    server = str(add_server("pve1", "https://192.0.2.10:8006", insecure=True, interval=2)["id"])
    conn.commit()
    client = redis.Redis.from_url(redis_server.url)
    log = open(tmp_path / "scheduler.log", "wb")
    # Given a leading scheduler that has sent the server's poll, guest sync and certificate check
    leader = spawn(["-m", "worker.scheduler"], services_env, log)
    try:
        assert wait_for(lambda: {("poll", server), ("sync_guests", server), ("renew_expiring_certificates", server)}
                        <= set(sent_messages(client)), 30), (tmp_path / "scheduler.log").read_text()
    finally:
        # When it dies without a chance to hand over (SIGKILL: its lock runs out)
        stop(leader, sig=signal.SIGKILL)
        log.close()
    before = sent_messages(client)
    sent: list[tuple[str, tuple]] = []
    successor = Scheduler(db_url, lambda actor, args: sent.append((actor, args)),
                          LeaderLock(redis.Redis.from_url(redis_server.url)), jobs(load()))
    stop_event = threading.Event()
    thread = threading.Thread(target=successor.run, args=(stop_event,))
    thread.start()
    try:
        # Then the standby takes over and the polls go on (every 2 s) ...
        assert wait_for(lambda: sum(1 for m in sent for run in runs(*m) if run[0] == "poll") >= 2, 30), sent
    finally:
        stop_event.set()
        thread.join(10)
    # ... but nothing the dead leader had sent is sent again: no second guest sync or certificate
    # check of the server, no poll of a tick it had sent
    for actor, sid, at in (run for m in sent for run in runs(*m)):
        assert all(datetime.fromisoformat(at) > datetime.fromisoformat(t) for t in before.get((actor, sid), [])), \
            (actor, sid, at, before.get((actor, sid)))

