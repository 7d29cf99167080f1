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


# ---- operations (worker/operations.py) ----
