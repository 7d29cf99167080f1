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
# An idle Dramatiq consumer asks Redis for messages with a growing pause, up to the worker timeout
# (1 s by default): a scheduler step sent to idle workers started 0.5–1 s late, a quarter of a
# 1,000-server cycle (tests/bench/bench_fleet_cycle.py). These queues pause at most
# PROMPT_IDLE_MS: polls start on time and an operation someone started shows progress at once, for
# about 20–40 cheap fetches a second per queue and worker process while idle. The other queues (guest
# sync, alerts, periodic jobs, delayed retries) keep the default.
PROMPT_QUEUES = frozenset({"polls", "operations"})
PROMPT_IDLE_MS = 50
# A worker process takes at most as many poll messages from Redis as it has threads (Dramatiq's
# default is twice as many): a message holds up to PROXWATCH_POLL_BATCH (32) polls, and a burst —
# a cycle of 1,000 servers due at once is 32 messages — must be shared by the worker processes, not
# taken whole by the first one to ask (then a 1,000-server cycle took 2.1 x its ideal instead of
# 1.08 x; tests/bench/bench_fleet_cycle.py). A process that dies also holds fewer polls.
POLL_QUEUE = "polls"


class Broker(RedisBroker):
    """Dramatiq's Redis broker; the queues in PROMPT_QUEUES idle-poll at most every PROMPT_IDLE_MS, and a
    process prefetches at most PROXWATCH_WORKER_THREADS poll messages."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        if queue_name in PROMPT_QUEUES:
            timeout = min(timeout, PROMPT_IDLE_MS)
        if queue_name == POLL_QUEUE:
            prefetch = min(prefetch, SETTINGS.worker_threads)
        return super().consume(queue_name, prefetch, timeout)


broker = Broker(url=ENDPOINTS.redis_url, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
                maintenance_chance=MAINTENANCE_CHANCE)


class FoldOnShutdown(dramatiq.Middleware):
    """A worker process's last act once its actors are done: fold the rollups of what it wrote."""

    def after_worker_shutdown(self, broker, worker):
        from worker import services  # the process's services, if it made them

        services.fold_on_exit()


broker.add_middleware(FoldOnShutdown())
dramatiq.set_broker(broker)

if SETTINGS.metrics.worker_port:
    # The group's own metrics (see worker.metrics.process): counted in each worker process, served by a fork.
    from worker.metrics.process import WorkerMetrics

    broker.add_middleware(WorkerMetrics(SETTINGS.metrics.worker_dir))
