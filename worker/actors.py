"""Thin actors: parse the message, call a module. IDs travel, not objects.

poll(server_id, scheduled_at): a failed poll is a result (a metric row), not a retry; database
errors raise, and Dramatiq's Retries middleware backs off and tries again. A retried message
carries the same scheduled_at, so its metric row never counts twice. poll_batch(polls) is the same
for the servers due in one scheduler step (PROXWATCH_POLL_BATCH), one message for all of them.

Which of these the scheduler sends, and how often, is declared in worker/schedule.py.
"""

from __future__ import annotations

from datetime import datetime

import dramatiq

from worker import alerts, broker, certificates, inventory, retention, services, sessions

# A poll older than this is dropped: the scheduler has issued newer ones meanwhile.
POLL_MAX_AGE_MS = 120_000


def retries(limit: int):
    """Dramatiq's retry_when: try again up to `limit` times, but never after a permanent error (a
    ProxwatchError whose `permanent` is true — refused credentials, a bad setting): the same call
    cannot succeed until someone changes something. Other errors (the database restarting) retry."""
    def retry_when(attempts: int, exc: BaseException) -> bool:
        return attempts < limit and not getattr(exc, "permanent", False)
    return retry_when


def _services() -> services.Services:
    """This worker process's pool, poller, recorder and operations manager."""
    return services.get(broker.SETTINGS, broker.ENDPOINTS,
                        send_operation=lambda operation_id: run_operation.send(operation_id))


@dramatiq.actor(queue_name="polls", retry_when=retries(8), min_backoff=500, max_backoff=30_000, time_limit=120_000,
                max_age=POLL_MAX_AGE_MS)
def poll(server_id: str, scheduled_at: str) -> None:
    svc = _services()
    result = svc.poller.poll(server_id, datetime.fromisoformat(scheduled_at))
    if result is not None:
        svc.recorder.record(result)


@dramatiq.actor(queue_name="polls", retry_when=retries(8), min_backoff=500, max_backoff=30_000, time_limit=120_000,
                max_age=POLL_MAX_AGE_MS)
def poll_batch(polls: list) -> None:
    """The polls of one scheduler step ([[server_id, scheduled_at], …]): polled concurrently, each with
    its own timeout, written together; the message is acknowledged once every row is committed. A
    retried batch polls again, and the rows it already wrote are not written twice (unique
    (server_id, scheduled_at))."""
    svc = _services()
    results = svc.poller.poll_many([(sid, datetime.fromisoformat(at)) for sid, at in polls])
    svc.recorder.record_many(results)


@dramatiq.actor(queue_name="polls", retry_when=retries(2), min_backoff=1000, max_age=60_000)
def fold_rollup(scheduled_at: str) -> None:
    """Fold the rollup deltas a worker committed but did not fold (it died, or its fold failed)."""
    _services().recorder.fold()


# ---- guests and sessions (worker/inventory.py, worker/sessions.py) ----
@dramatiq.actor(queue_name="inventory", retry_when=retries(3), min_backoff=1000, max_backoff=15_000, time_limit=120_000,
                max_age=60_000)
def sync_guests(server_id: str, scheduled_at: str) -> None:
    """Guests of one server from PVE into `guests` (a PVE failure is recorded, not retried)."""
    inventory.sync_guests(_services().poller, server_id)


@dramatiq.actor(queue_name="inventory", retry_when=retries(2), min_backoff=1000, max_age=60_000)
def expire_sessions(scheduled_at: str) -> None:
    """Expire sessions without a heartbeat for the grace period; delete closed ones past the retention."""
    with _services().pool.connection() as conn:
        sessions.expire_and_purge(conn)


@dramatiq.actor(queue_name="inventory", retry_when=retries(2), min_backoff=5000, time_limit=1_800_000, max_age=3_600_000)
def purge_expired(scheduled_at: str) -> None:
    """Delete audit rows and finished operations past their retention, in committed batches; prune the
    history tiers (raw partitions made ahead, old ones dropped; rollup rows in batches)."""
    with _services().pool.connection() as conn:
        retention.purge(conn, broker.SETTINGS.retention)



@dramatiq.actor(queue_name="inventory", retry_when=retries(2), min_backoff=1000, max_age=30_000)
def refresh_fleet_uptime(scheduled_at: str) -> None:
    """fleet_overview()'s window sums for the last complete hour (a no-op while they are current)."""
    with _services().pool.connection() as conn:
        retention.refresh_fleet_uptime(conn)

# ---- operations (worker/operations) ----
@dramatiq.actor(queue_name="operations", retry_when=retries(3), min_backoff=1000, max_backoff=30_000, time_limit=3_600_000)
def run_operation(operation_id: str) -> None:
    _services().operations.run(operation_id)


@dramatiq.actor(queue_name="operations", retry_when=retries(0), max_age=30_000)
def dispatch_operations(scheduled_at: str) -> None:
    _services().operations.dispatch()


@dramatiq.actor(queue_name="operations", retry_when=retries(0), max_age=60_000)
def fail_stuck_operations(scheduled_at: str) -> None:
    _services().operations.sweep()


@dramatiq.actor(queue_name="operations", retry_when=retries(2), min_backoff=60_000, time_limit=900_000,
                max_age=6 * 3600 * 1000)
def renew_expiring_certificates(server_id: str, scheduled_at: str) -> None:
    _services().operations.renew_expiring(server_id, datetime.fromisoformat(scheduled_at))


# ---- alerts (worker/alerts.py) ----
@dramatiq.actor(queue_name="alerts", retry_when=retries(3), min_backoff=1000, max_backoff=10_000, max_age=30_000)
def drain_alerts(scheduled_at: str) -> None:
    """Group the outbox's due events into messages, then hand every due delivery to deliver_alert."""
    svc = _services()
    alerts.drain(svc.pool, broker.SETTINGS.alerts)
    for delivery_id in alerts.due_ids(svc.pool):
        deliver_alert.send(delivery_id)


@dramatiq.actor(queue_name="alerts", retry_when=retries(2), min_backoff=1000, max_age=60_000)
def check_alert_conditions(scheduled_at: str) -> None:
    """Latency and success-rate thresholds of the rules, and reminders of lasting problems."""
    alerts.check_conditions(_services().pool)


@dramatiq.actor(queue_name="alerts", retry_when=retries(2), min_backoff=5000, time_limit=600_000,
                max_age=3_600_000)
def purge_alerts(scheduled_at: str) -> None:
    """Alert history past PROXWATCH_ALERT_RETENTION_DAYS."""
    alerts.purge(_services().pool, broker.SETTINGS.alerts)


@dramatiq.actor(queue_name="alerts", retry_when=retries(0), time_limit=120_000, max_age=600_000)
def deliver_alert(delivery_id: str) -> None:
    """One try of one message (claimed in the database: a duplicate message sends nothing). A failed
    try is a row with its next time, picked up again by drain_alerts: no Dramatiq retry."""
    svc = _services()
    alerts.deliver(svc.pool, svc.box, broker.SETTINGS.alerts, delivery_id)


@dramatiq.actor(queue_name="inventory", retry_when=retries(2), min_backoff=60_000, time_limit=300_000,
                max_age=6 * 3600 * 1000)
def check_certificates(server_id: str, scheduled_at: str) -> None:
    """Each node's served certificate and its expiry (fires "expires within 14 days")."""
    svc = _services()
    certificates.check(svc.pool, svc.poller, server_id)
