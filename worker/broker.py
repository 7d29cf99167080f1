"""The Dramatiq broker (Redis). Imported before any actor: `dramatiq worker.broker worker.actors`."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from worker import runtime, settings

SETTINGS = settings.load()
ENDPOINTS = runtime.endpoints(SETTINGS)

broker = RedisBroker(url=ENDPOINTS.redis_url)
dramatiq.set_broker(broker)

if SETTINGS.metrics.worker_port:
    # The group's own metrics (see worker.metrics.process): counted in each worker process, served by a fork.
    from worker.metrics.process import WorkerMetrics

    broker.add_middleware(WorkerMetrics(SETTINGS.metrics.worker_dir))
