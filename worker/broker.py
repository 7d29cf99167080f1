"""The Dramatiq broker (Redis). Imported before any actor: `dramatiq worker.broker worker.actors`."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from worker import runtime, settings

SETTINGS = settings.load()
ENDPOINTS = runtime.endpoints(SETTINGS)

broker = RedisBroker(url=ENDPOINTS.redis_url)
dramatiq.set_broker(broker)
