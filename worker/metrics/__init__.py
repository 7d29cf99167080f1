"""Prometheus metrics: each process exposes its own.

- `process`: a worker group's own metrics (Dramatiq messages, failures, durations, queue depth; polls
  by outcome and error kind; poll and database-write latency), shared by the group's processes
  through prometheus-client's multiprocess mode and served by one Dramatiq fork per group on
  PROXWATCH_WORKER_METRICS_PORT.
- `fleet`: the fleet exporter (`python3 -m worker.metrics`, PROXWATCH_METRICS_PORT): per-server
  gauges, read from the database with one query at each scrape.

Why not Dramatiq's own Prometheus middleware: it reads its address from variables of its own
(`dramatiq_prom_host`, default 0.0.0.0 — every interface), measures durations in milliseconds,
and keeps the files of every group of a machine in one shared directory. Ours is the same idea
(multiprocess files, an exposition fork) with base units, a loopback default and a directory per
group.
"""
