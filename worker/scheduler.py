"""The scheduler: enqueues poll(server_id, scheduled_at) per server at its interval.

Only one scheduler sends at a time: the leader holds a Postgres advisory lock on its own
connection; a second scheduler waits as a standby and takes over when the leader's connection
goes away. Ticks are aligned (scheduled_at = phase + k × interval), so even a brief overlap of
two leaders produces the same (server_id, scheduled_at) pairs, which the metric table counts once.
Each server has its own phase inside the interval, so polls spread out instead of bursting.
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

from worker import db

log = logging.getLogger(__name__)
LOCK_KEY = 0x70726F78  # "prox": the advisory lock of the scheduler leader
REFRESH_S = 10


def tick(server_id: str, interval_s: int, now: float) -> float:
    """The latest scheduled time (epoch seconds) of this server at or before now."""
    interval_ms = interval_s * 1000
    phase = uuid.UUID(str(server_id)).int % interval_ms
    now_ms = int(now * 1000)
    return ((now_ms - phase) // interval_ms * interval_ms + phase) / 1000


class Scheduler:
    def __init__(self, database_url: str, send: Callable[[str, str], None]):
        self.database_url = database_url
        self.send = send
        self.servers: list[tuple[str, int]] = []
        self.last: dict[str, float] = {}
        self.sent = 0
        self._refreshed = 0.0

    def due(self, now: float) -> list[tuple[str, float]]:
        out = []
        for sid, interval in self.servers:
            t = tick(sid, interval, now)
            if self.last.get(sid, -1) < t:
                out.append((sid, t))
        return out

    def step(self, conn: psycopg.Connection, now: float) -> int:
        """One pass: refresh the server list when due, send every due poll."""
        if now - self._refreshed >= REFRESH_S or not self.servers:
            self.servers = [(str(r["id"]), r["poll_interval_s"]) for r in conn.execute(db.q("schedule_list"))]
            conn.commit()
            self._refreshed = now
        count = 0
        for sid, t in self.due(now):
            scheduled_at = datetime.fromtimestamp(t, timezone.utc).isoformat()
            self.send(sid, scheduled_at)  # raises when the broker is down: the tick is retried next pass
            self.last[sid] = t
            count += 1
        self.sent += count
        return count

    def run(self, stop: threading.Event, resolution: float = 0.25) -> None:
        """Lead when the lock is free, stand by otherwise; survive Postgres and Redis restarts."""
        while not stop.is_set():
            try:
                with db.connect(self.database_url, autocommit=True) as conn:
                    leader = conn.execute("select pg_try_advisory_lock(%s) as ok", (LOCK_KEY,)).fetchone()["ok"]
                    if not leader:
                        stop.wait(2)
                        continue
                    log.info("scheduler: leading")
                    while not stop.is_set():
                        try:
                            self.step(conn, time.time())
                        except psycopg.OperationalError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - broker down: try again next pass
                            log.warning("scheduler: could not enqueue (%s); retrying", exc)
                            stop.wait(1)
                        stop.wait(resolution)
            except psycopg.OperationalError as exc:
                log.warning("scheduler: database unavailable (%s); retrying", str(exc).splitlines()[0])
                stop.wait(2)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(message)s")
    from worker import actors
    from worker.broker import ENDPOINTS

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Scheduler(ENDPOINTS.database_url, lambda sid, at: actors.poll.send(sid, at)).run(stop)


if __name__ == "__main__":
    main()
