"""Every periodic message the scheduler sends, declared in one place.

A job names an actor of worker.actors and when it runs: per server (the actor gets server_id and
scheduled_at) or once for the whole fleet (it gets scheduled_at), every `interval_s` seconds, or —
for polls — at each server's own poll interval. The scheduler imports `jobs()`; nothing appends to
it at import time. A new periodic job is one line here and one actor.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from worker.settings import Settings


@dataclass(frozen=True)
class Job:
    """A periodic message: per server (args: server_id, scheduled_at), per server in batches (args:
    polls, a list of [server_id, scheduled_at]) or global (args: scheduled_at)."""
    actor: str                      # the name of an actor in worker.actors
    per_server: bool = True
    interval_s: int | None = None   # None: the server's poll_interval_s
    batch: int = 1                  # > 1: up to this many servers due in one step share a message


def jobs(s: Settings) -> list[Job]:
    """The schedule: what is sent, and how often."""
    return [
        # each server, its own interval; PROXWATCH_POLL_BATCH of them per message (1: one each)
        Job("poll_batch", batch=s.poll_batch) if s.poll_batch > 1 else Job("poll"),
        Job("fold_rollup", per_server=False, interval_s=10),               # rollup deltas a dead worker left
        Job("sync_guests", per_server=True, interval_s=s.inventory.interval_s),
        Job("expire_sessions", per_server=False, interval_s=s.sessions.sweep_s),
        Job("dispatch_operations", per_server=False, interval_s=1),        # rows the dashboard requested
        Job("fail_stuck_operations", per_server=False, interval_s=5),      # dead workers, untaken rows
        Job("renew_expiring_certificates", per_server=True, interval_s=86_400),
        Job("check_certificates", per_server=True, interval_s=86_400),   # node certificates' expiry
        Job("check_alert_conditions", per_server=False, interval_s=30),    # rule thresholds, reminders
        Job("drain_alerts", per_server=False, interval_s=1),              # the alert outbox → messages
        Job("purge_alerts", per_server=False, interval_s=3600),             # alert history past its retention
        Job("purge_expired", per_server=False, interval_s=3600),             # audit log, finished operations, history tiers
        Job("refresh_fleet_uptime", per_server=False, interval_s=15),       # fleet_overview's sums, each new hour
    ]


def job_key(job: Job, server_id: str | None) -> str:
    """The uuid whose value sets the job's phase inside its interval (polls: the server's own id)."""
    if job.actor in ("poll", "poll_batch") and server_id:
        return server_id
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"proxwatch:{job.actor}:{server_id or ''}"))
