"""A worker group's own metrics, shared by its processes (prometheus-client multiprocess mode).

A group is one `dramatiq worker.broker worker.actors` command: a main process, its worker processes
and its forks. They share a directory of metric files named by the main process's id, under
PROXWATCH_WORKER_METRICS_DIR (default: the system's temporary directory), so two groups on one
machine never mix their counters and a restarted group starts from zero. `WorkerMetrics` (a Dramatiq
middleware, added by worker.broker) switches each worker process to that directory at boot and
counts messages; `serve` (its fork) answers scrapes with the sum over the group's processes, plus
the depth of the group's queues read from Redis at the scrape.

Instruments are made on first use, after the switch: code that polls outside a worker (`poll
--once`, tests) counts into this process's memory instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dramatiq.middleware import Middleware

from worker import settings

# Latency buckets (seconds): a PVE API answers in milliseconds to seconds; the timeout ends at 120 s.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
MESSAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# Every name this module exposes (a test keeps the Grafana board on these).
NAMES = ("proxwatch_polls_total", "proxwatch_poll_duration_seconds", "proxwatch_db_write_duration_seconds",
         "dramatiq_messages_total", "dramatiq_message_errors_total", "dramatiq_message_retries_total",
         "dramatiq_message_duration_seconds", "dramatiq_messages_in_progress", "dramatiq_queue_messages")

_lock = threading.Lock()
_instruments: "Instruments | None" = None


def group_dir(base: Path | None, main_pid: int) -> Path:
    """The metric files of the group whose main process is `main_pid`."""
    return (base or Path(tempfile.gettempdir())) / f"proxwatch-worker-metrics-{main_pid}"


def setup(directory: Path) -> None:
    """Switch this process to multiprocess mode in `directory` (before any instrument is made)."""
    global _instruments
    from prometheus_client import values

    directory.mkdir(parents=True, exist_ok=True)
    # prometheus-client finds the directory through this variable (also when it marks a process dead).
    settings.export("PROMETHEUS_MULTIPROC_DIR", str(directory))
    with _lock:
        values.ValueClass = values.MultiProcessValue()
        _instruments = None


@dataclass
class Instruments:
    polls: object
    poll_duration: object
    db_write_duration: object
    messages: object
    message_errors: object
    message_retries: object
    message_duration: object
    in_progress: object


def instruments() -> Instruments:
    global _instruments
    with _lock:
        if _instruments is None:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

            # A private registry: in multiprocess mode the values live in files, and the exposition
            # reads those; elsewhere nobody scrapes this process.
            r = CollectorRegistry(auto_describe=True)
            labels = ("queue_name", "actor_name")
            _instruments = Instruments(
                polls=Counter("proxwatch_polls", "Polls this worker group made, by outcome and error kind.",
                              ("outcome", "error_kind"), registry=r),
                poll_duration=Histogram("proxwatch_poll_duration_seconds", "Time one poll of a server took "
                                        "(its settings read and its PVE API calls), by outcome.", ("outcome",), buckets=POLL_BUCKETS,
                                        registry=r),
                db_write_duration=Histogram("proxwatch_db_write_duration_seconds", "Time one write of a batch "
                                            "of poll results took (one transaction).", buckets=WRITE_BUCKETS,
                                            registry=r),
                messages=Counter("dramatiq_messages", "Messages processed.", labels, registry=r),
                message_errors=Counter("dramatiq_message_errors", "Messages whose actor raised.", labels,
                                       registry=r),
                message_retries=Counter("dramatiq_message_retries", "Messages enqueued again for a retry.",
                                        labels, registry=r),
                message_duration=Histogram("dramatiq_message_duration_seconds", "Time spent processing a "
                                           "message.", labels, buckets=MESSAGE_BUCKETS, registry=r),
                in_progress=Gauge("dramatiq_messages_in_progress", "Messages being processed now.", labels,
                                  multiprocess_mode="livesum", registry=r),
            )
        return _instruments


def observe_poll(success: bool, error_kind: str | None, seconds: float) -> None:
    outcome = "success" if success else "failure"
    i = instruments()
    i.polls.labels(outcome, error_kind or "none").inc()
    i.poll_duration.labels(outcome).observe(seconds)


def observe_db_write(seconds: float) -> None:
    instruments().db_write_duration.observe(seconds)


class WorkerMetrics(Middleware):
    """Counts a worker process's messages into its group's metric files; forks the exposition."""

    def __init__(self, base_dir: Path | None):
        self.base_dir = base_dir
        self._started: dict[str, float] = {}

    @property
    def forks(self):
        return [serve]

    def after_process_boot(self, broker):
        # A worker process's parent is the group's main process (fork or spawn alike).
        self.directory = group_dir(self.base_dir, os.getppid())
        setup(self.directory)
        for queue_name in broker.get_declared_queues() | broker.get_declared_delay_queues():
            self.after_declare_queue(broker, queue_name)

    def after_declare_queue(self, broker, queue_name):
        # The exposition (another process) learns the group's queues from these marker files.
        directory = getattr(self, "directory", None)
        if directory is not None:
            (directory / f"queue.{queue_name}").touch()

    after_declare_delay_queue = after_declare_queue

    def after_worker_shutdown(self, broker, worker):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())

    def after_enqueue(self, broker, message, delay):
        if "retries" in message.options and _instruments is not None:
            instruments().message_retries.labels(message.queue_name, message.actor_name).inc()

    def before_process_message(self, broker, message):
        instruments().in_progress.labels(message.queue_name, message.actor_name).inc()
        self._started[message.message_id] = time.monotonic()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        i = instruments()
        labels = (message.queue_name, message.actor_name)
        started = self._started.pop(message.message_id, None)
        if started is not None:
            i.message_duration.labels(*labels).observe(time.monotonic() - started)
            i.in_progress.labels(*labels).dec()
        i.messages.labels(*labels).inc()
        if exception is not None:
            i.message_errors.labels(*labels).inc()

    def after_skip_message(self, broker, message):
        self.after_process_message(broker, message)


class QueueDepth:
    """dramatiq_queue_messages: messages waiting in each of the group's queues (Redis lists), read at the scrape."""

    def __init__(self, client, directory: Path, namespace: str = "dramatiq"):
        self.client = client
        self.directory = directory
        self.namespace = namespace

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("dramatiq_queue_messages", "Messages waiting in the queue (Redis), "
                                   "delay queues included (named QUEUE.DQ).", labels=("queue_name",))
        queues = sorted(p.name.removeprefix("queue.") for p in self.directory.glob("queue.*"))
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.llen(f"{self.namespace}:{q}")
        try:
            depths = pipe.execute()
        except Exception:  # noqa: BLE001 - Redis down: the scrape still carries the other metrics
            return
        for q, depth in zip(queues, depths):
            family.add_metric((q,), depth)
        yield family


def registry(directory: Path, redis_client=None):
    """The group's metrics: the sum over its processes' files, and the queue depth when a Redis client is given."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    r = CollectorRegistry()
    MultiProcessCollector(r, path=str(directory))
    if redis_client is not None:
        r.register(QueueDepth(redis_client, directory))
    return r


def remove_stale_groups(base: Path | None) -> None:
    """Remove the directories of groups whose main process is gone (an earlier run's files)."""
    for d in group_dir(base, 0).parent.glob("proxwatch-worker-metrics-*"):
        try:
            os.kill(int(d.name.rsplit("-", 1)[1]), 0)
        except (ValueError, PermissionError):
            continue
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)


def serve() -> int:
    """The group's exposition (a Dramatiq fork): PROXWATCH_METRICS_HOST:PROXWATCH_WORKER_METRICS_PORT."""
    import redis

    from worker import runtime, settings as settings_mod
    from worker.metrics.http import serve_forever

    s = settings_mod.load()
    remove_stale_groups(s.metrics.worker_dir)
    directory = group_dir(s.metrics.worker_dir, os.getppid())
    directory.mkdir(parents=True, exist_ok=True)
    client = redis.Redis.from_url(runtime.endpoints(s).redis_url, socket_timeout=5)

    try:
        serve_forever(s.metrics.host, s.metrics.worker_port, lambda: registry(directory, client))
    except OSError as exc:  # the port is taken (another group on this machine): the workers carry on
        logging.getLogger(__name__).error("worker metrics not served on %s:%d: %s (give each worker group its "
                                          "own PROXWATCH_WORKER_METRICS_PORT)", s.metrics.host,
                                          s.metrics.worker_port, exc)
        return 1
    return 0
