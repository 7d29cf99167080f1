"""The services of one worker process: one database pool, one poller (with its PVE clients), one
metric recorder and one operations manager, made on first use — after Dramatiq has forked the
process, so no connection or thread crosses a fork — and shared by every actor thread."""

from __future__ import annotations

import threading
from typing import Callable

from worker import db, operations, runtime, settings as settings_mod
from worker.crypto import Box
from worker.polling import Poller, Recorder

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
