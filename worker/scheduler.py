"""The scheduler: enqueues poll(server_id, scheduled_at) per server at its interval — or, batched
(PROXWATCH_POLL_BATCH), poll_batch([[server_id, scheduled_at], …]) for the servers due in one step.

Only one scheduler sends at a time: the leader holds a lock in Redis (the broker it sends to)
that it renews every second and that expires LOCK_TTL_MS after it stops; a second scheduler
waits as a standby and takes over then. After each pass the leader notes in Redis up to when it has
sent; a new leader starts from there (the ticks of the gap are sent, nothing before them again). Ticks are aligned (scheduled_at = phase + k × interval),
so even a brief overlap of two leaders produces the same (server_id, scheduled_at) pairs, which
the metric table counts once. Each server has its own phase inside the interval, so polls spread
out instead of bursting.

The server list is read from Postgres every REFRESH_S; while Postgres is unreachable (a restart)
the scheduler keeps sending from the list it has, and the workers keep measuring: no tick is lost.
While Redis is unreachable nothing can be sent, and those ticks are skipped, not sent late.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable

import psycopg
import redis

from worker import db
from worker.schedule import Job, job_key, jobs

log = logging.getLogger(__name__)
LOCK_NAME = "proxwatch:scheduler:leader"
LOCK_TTL_MS = 5000
REFRESH_S = 10
# Renew the lock only if we still hold it (compare-and-set in one step).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"


class LeaderLock:
    def __init__(self, client: redis.Redis, name: str = LOCK_NAME, ttl_ms: int = LOCK_TTL_MS):
        self.client = client
        self.name = name
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex

    def hold(self) -> bool:
        """Take the lock if free, renew it if ours; False when another scheduler leads."""
        if self.client.set(self.name, self.token, nx=True, px=self.ttl_ms):
            return True
        return bool(self.client.eval(_RENEW, 1, self.name, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                         "else return 0 end", 1, self.name, self.token)

    def mark_sent(self, now: float) -> None:
        """Note that every tick at or before `now` has been sent (the leader, after each pass)."""
        self.client.set(self.name + ":sent", repr(now))

    def sent_until(self) -> float | None:
        """The last leader's last mark_sent (epoch seconds); None when no scheduler ever led."""
        raw = self.client.get(self.name + ":sent")
        return float(raw) if raw else None


def tick(server_id: str, interval_s: int, now: float) -> float:
    """The latest scheduled time (epoch seconds) of this server at or before now."""
    interval_ms = interval_s * 1000
    phase = uuid.UUID(str(server_id)).int % interval_ms
    now_ms = int(now * 1000)
    return ((now_ms - phase) // interval_ms * interval_ms + phase) / 1000


class Scheduler:
    def __init__(self, database_url: str, send: Callable[[str, tuple], None], lock: LeaderLock, jobs: list[Job]):
        self.database_url = database_url
        self.send = send
        self.lock = lock
        self.jobs = jobs
        self.servers: list[tuple[str, int]] = []
        self.last: dict[tuple[str, str | None], float] = {}
        self.sent = 0
        self._refreshed = 0.0

    def due(self, now: float) -> list[tuple[Job, str | None, float]]:
        """(job, server_id or None, scheduled time) of every message due now."""
        out = []
        for job in self.jobs:
            targets = self.servers if job.per_server else [(None, job.interval_s)]
            for sid, server_interval in targets:
                interval = job.interval_s or server_interval
                t = tick(job_key(job, sid), interval, now)
                if self.last.get((job.actor, sid), -1) < t:
                    out.append((job, sid, t))
        return out

    def resume(self, sent_until: float) -> None:
        """Count every tick at or before sent_until as sent: the leader before this one sent them.
        Without this a new leader sends every server's latest poll, guest sync and certificate check
        again at once (tests/bench/bench_hosts.py: 600 duplicate jobs after the leader's host died
        with 200 servers, and the polls due after it started 20 s late). Ticks after sent_until,
        those of the takeover's gap, are still sent."""
        for job in self.jobs:
            targets = self.servers if job.per_server else [(None, job.interval_s)]
            for sid, server_interval in targets:
                t = tick(job_key(job, sid), job.interval_s or server_interval, sent_until)
                self.last[(job.actor, sid)] = max(self.last.get((job.actor, sid), -1), t)

    def refresh(self, now: float) -> None:
        """Re-read the enabled servers when due; keep the known list while Postgres is unreachable."""
        if self.servers and now - self._refreshed < REFRESH_S:
            return
        try:
            with db.connect(self.database_url, connect_timeout=3) as conn:
                self.servers = [(str(r["id"]), r["poll_interval_s"]) for r in conn.execute(db.q("schedule_list"))]
        except psycopg.OperationalError as exc:
            log.warning("scheduler: database unavailable (%s); using the %d known servers",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer", len(self.servers))
            self._refreshed = now - REFRESH_S + 2  # try again soon
            return
        self._refreshed = now

    def step(self, now: float) -> int:
        """One pass: send every due message (batched jobs: the due servers in messages of up to
        `batch`); returns the number of scheduled runs sent. Raises when the broker is down (the
        caller waits)."""
        count = 0
        batches: dict[str, list] = {}  # actor -> [(server_id, scheduled_at, t)] of a batched job
        for job, sid, t in self.due(now):
            scheduled_at = datetime.fromtimestamp(t, timezone.utc).isoformat()
            if job.batch > 1:
                batches.setdefault(job.actor, []).append((sid, scheduled_at, t))
                continue
            self.send(job.actor, (sid, scheduled_at) if job.per_server else (scheduled_at,))
            self.last[(job.actor, sid)] = t
            count += 1
        for job in self.jobs:
            due = batches.get(job.actor, [])
            for i in range(0, len(due), job.batch):
                chunk = due[i:i + job.batch]
                self.send(job.actor, ([[sid, at] for sid, at, _ in chunk],))
                for sid, _, t in chunk:
                    self.last[(job.actor, sid)] = t
                count += len(chunk)
        self.sent += count
        return count

    def run(self, stop: threading.Event, resolution: float = 0.25) -> None:
        """Lead while holding the lock, stand by otherwise; survive Postgres and Redis restarts."""
        leading = False
        renewed = 0.0
        try:
            while not stop.is_set():
                now = time.time()
                try:
                    took_over = False
                    if now - renewed >= 1 or not leading:
                        was, leading, renewed = leading, self.lock.hold(), now
                        took_over = leading and not was
                        if leading != was:
                            log.info("scheduler: %s", "leading" if leading else "standing by")
                    # A standby keeps its server list fresh too: when it takes over — perhaps while
                    # Postgres is down — it sends from a list it already has, not from none.
                    self.refresh(now)
                    if took_over and (sent_until := self.lock.sent_until()) is not None:
                        self.resume(sent_until)
                    if leading:
                        self.step(now)
                        self.lock.mark_sent(now)
                except redis.RedisError as exc:
                    if leading:
                        log.info("scheduler: standing by")
                    leading = False
                    log.warning("scheduler: broker unavailable (%s); ticks are skipped until it is back", exc)
                    stop.wait(1)
                stop.wait(resolution if leading else 1)
        finally:
            if leading:
                try:
                    self.lock.release()
                except redis.RedisError:
                    pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(message)s")
    # The actors (and with them the broker) are imported only by the scheduler's own process: the
    # module's classes and tick() stay importable without a broker.
    from worker import actors, broker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock = LeaderLock(redis.Redis.from_url(broker.ENDPOINTS.redis_url, socket_timeout=3, socket_connect_timeout=3))
    Scheduler(broker.ENDPOINTS.database_url, lambda actor, args: getattr(actors, actor).send(*args), lock,
              jobs(broker.SETTINGS)).run(stop)


if __name__ == "__main__":
    main()
