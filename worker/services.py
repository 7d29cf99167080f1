"""The services of one worker process: one database pool, one poller (with its PVE clients), one
metric recorder and one operations manager, made on first use — after Dramatiq has forked the
process, so no connection or thread crosses a fork — and shared by every actor thread."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from worker import db, operations, runtime, settings as settings_mod
from worker.crypto import Box
from worker.polling import Poller, Recorder

log = logging.getLogger(__name__)

class Services:
    def __init__(self, settings: settings_mod.Settings, endpoints: runtime.Endpoints,
                 send_operation: Callable[[str], None] | None = None):
        self.settings = settings
        self.pool = db.make_pool(endpoints.database_url, min_size=1, max_size=settings.worker_db_pool)
        self.box = Box(endpoints.secret_key)
        self.poller = Poller(self.pool, self.box, settings)
        self.recorder = Recorder(self.pool, settings)
        self.operations = operations.Operations(self.pool, self.poller, self.box, send=send_operation)


_services: Services | None = None
_lock = threading.Lock()


def get(settings: settings_mod.Settings, endpoints: runtime.Endpoints,
        send_operation: Callable[[str], None] | None = None) -> Services:
    """This process's services, made on the first call."""
    global _services
    with _lock:
        if _services is None:
            _services = Services(settings, endpoints, send_operation)
        return _services


def fold_on_exit() -> None:
    """A worker process that stops cleanly folds its writes' pending rollup deltas (worker/polling.py),
    so the rollups are current once it is gone; a killed one leaves them to the fold_rollup job."""
    with _lock:
        svc = _services
    if svc is None:
        return
    try:
        svc.recorder.fold(timeout=5)  # a database that is down must not hold the stop up
    except Exception as exc:  # noqa: BLE001 - the deltas stay pending, durable, for the job
        log.warning("folding the rollups at shutdown failed (%s); the fold_rollup job will", exc.__class__.__name__)
