"""The Dramatiq broker (Redis). Imported before any actor: `dramatiq worker.broker worker.actors`."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from worker import runtime, settings

SETTINGS = settings.load()
ENDPOINTS = runtime.endpoints(SETTINGS)

# A worker process that dies (SIGKILL, out of memory) leaves its taken messages in its ack set;
# Dramatiq gives them back once the process has missed heartbeats for HEARTBEAT_TIMEOUT_MS and a
# maintenance pass runs (a chance per broker command). With Dramatiq's defaults (60 s, 0.1 % of
# commands) a dead worker's polls came back after their max_age (120 s) and were dropped — lost,
# not late (tests/bench/bench_faults.py). Every live consumer heartbeats about once a second, so
# 15 s cannot mistake a busy worker for a dead one; maintenance is one cheap sorted-set range.
HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE = 50_000     # per million commands: about every 20th
broker = RedisBroker(url=ENDPOINTS.redis_url, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                     maintenance_chance=MAINTENANCE_CHANCE)
dramatiq.set_broker(broker)

if SETTINGS.metrics.worker_port:
    # The group's own metrics (see worker.metrics.process): counted in each worker process, served by a fork.
    from worker.metrics.process import WorkerMetrics

    broker.add_middleware(WorkerMetrics(SETTINGS.metrics.worker_dir))
