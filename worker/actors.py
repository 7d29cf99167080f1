"""Thin actors: parse the message, call a module. IDs travel, not objects.

poll(server_id, scheduled_at): a failed poll is a result (a metric row), not a retry; database
errors raise, and Dramatiq's Retries middleware backs off and tries again. A retried message
carries the same scheduled_at, so its metric row never counts twice.
"""

from __future__ import annotations

import threading
from datetime import datetime

import dramatiq

from worker import broker as _broker  # noqa: F401  (sets the broker before the actors below)
from worker import db
from worker.broker import ENDPOINTS, SETTINGS
from worker.crypto import Box
from worker.polling import Poller, Recorder

_state: dict = {}
_lock = threading.Lock()


def _services() -> tuple[Poller, Recorder]:
    """One pool, poller and recorder per worker process, made on first use (after fork)."""
    with _lock:
        if not _state:
            pool = db.make_pool(ENDPOINTS.database_url, min_size=1, max_size=4)
            _state["poller"] = Poller(pool, Box(ENDPOINTS.secret_key), SETTINGS)
            _state["recorder"] = Recorder(pool, SETTINGS)
        return _state["poller"], _state["recorder"]


# A poll older than this is dropped: the scheduler has issued newer ones meanwhile.
POLL_MAX_AGE_MS = 120_000


@dramatiq.actor(queue_name="polls", max_retries=8, min_backoff=500, max_backoff=30_000, time_limit=120_000,
                max_age=POLL_MAX_AGE_MS)
def poll(server_id: str, scheduled_at: str) -> None:
    poller, recorder = _services()
    result = poller.poll(server_id, datetime.fromisoformat(scheduled_at))
    if result is not None:
        recorder.record(result)


# ---- guests, consoles and sessions (worker/inventory.py, consoles.py, sessions.py) ----
from worker import inventory as _inventory, sessions as _sessions  # noqa: E402
from worker.scheduler import JOBS as _CS_JOBS, Job as _CSJob  # noqa: E402


@dramatiq.actor(queue_name="inventory", max_retries=3, min_backoff=1000, max_backoff=15_000, time_limit=120_000,
                max_age=60_000)
def sync_guests(server_id: str, scheduled_at: str) -> None:
    """Guests of one server from PVE into `guests` (a PVE failure is recorded, not retried)."""
    poller, _ = _services()
    _inventory.sync_guests(poller, server_id)


@dramatiq.actor(queue_name="inventory", max_retries=2, min_backoff=1000, max_age=60_000)
def expire_sessions(scheduled_at: str) -> None:
    """Expire sessions without a heartbeat for the grace period; delete closed ones past the retention."""
    poller, _ = _services()
    with poller.pool.connection() as conn:
        _sessions.expire_and_purge(conn)


_CS_JOBS.append(_CSJob("sync_guests", per_server=True, interval_s=_inventory.interval_s()))
_CS_JOBS.append(_CSJob("expire_sessions", per_server=False, interval_s=_sessions.sweep_interval_s()))


# ---- operations (worker/operations/) ----
from worker import operations as _operations  # noqa: E402
from worker.scheduler import JOBS as _JOBS, Job as _Job  # noqa: E402

_ops_state: dict = {}


def _ops() -> _operations.Operations:
    """One operations manager (own pool and PVE clients) per worker process, made on first use."""
    with _lock:
        if not _ops_state:
            pool = db.make_pool(ENDPOINTS.database_url, min_size=1, max_size=6)
            box = Box(ENDPOINTS.secret_key)
            _ops_state["ops"] = _operations.Operations(pool, Poller(pool, box, SETTINGS), box,
                                                       send=lambda operation_id: run_operation.send(operation_id))
        return _ops_state["ops"]


@dramatiq.actor(queue_name="operations", max_retries=3, min_backoff=1000, max_backoff=30_000, time_limit=3_600_000)
def run_operation(operation_id: str) -> None:
    _ops().run(operation_id)


@dramatiq.actor(queue_name="operations", max_retries=0, max_age=30_000)
def dispatch_operations(scheduled_at: str) -> None:
    _ops().dispatch()


@dramatiq.actor(queue_name="operations", max_retries=0, max_age=60_000)
def fail_stuck_operations(scheduled_at: str) -> None:
    _ops().sweep()


@dramatiq.actor(queue_name="operations", max_retries=2, min_backoff=60_000, time_limit=900_000,
                max_age=6 * 3600 * 1000)
def renew_expiring_certificates(server_id: str, scheduled_at: str) -> None:
    _ops().renew_expiring(server_id, datetime.fromisoformat(scheduled_at))


_JOBS.append(_Job("dispatch_operations", per_server=False, interval_s=1))
_JOBS.append(_Job("fail_stuck_operations", per_server=False, interval_s=5))
_JOBS.append(_Job("renew_expiring_certificates", per_server=True, interval_s=86_400))
