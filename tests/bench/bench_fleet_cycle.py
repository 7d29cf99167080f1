"""Benchmark 1 — fleet cycle: 1,000 servers, simulated PVE with 50 ms latency per call, the REAL
worker (`python -m dramatiq worker.broker worker.actors --processes 2 --threads 16`, the
defaults), one poll per server enqueued for one scheduled_at the way the scheduler does it
(worker.actors.poll.send). Measures the wall time from the first enqueue until all 1,000 metric
rows are committed, for 3 cycles (the first one cold: new TLS connections, new clients; then
warm, keep-alive), against ideal = servers × 2 calls × latency ÷ (processes × threads).
Goal: ≤ 1.1 × ideal and ≤ 10 s. Also: peak RSS (VmHWM) of the worker processes and where the
CPU went (/proc/stat and /proc/<pid>/stat of each process group).

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_fleet_cycle.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_SERVERS (1000), BENCH_LATENCY (0.05), BENCH_CYCLES (3),
BENCH_PVE_HOSTS (2: simulator processes, one loopback address each), BENCH_PHASES=1 (time the
phases of each poll inside the worker processes, through tests/bench/patched_worker.py), BENCH_PVE_IMPL
(aiohttp | fakepve: the minimal simulator in tests/bench/simpve.py, or fakepve's FakePve with
slow_network(latency)), PROXWATCH_WORKER_PROCESSES / PROXWATCH_WORKER_THREADS (2 / 16).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import redis

from tests.bench.reporting import table
from tests.support import processes
from tests.support.processes import spawn
from worker import admin, db
from worker.crypto import Box
from worker.settings import load as load_settings

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVERS = int(os.environ.get("BENCH_SERVERS", "1000"))
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.05"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "3"))
PVE_HOSTS = int(os.environ.get("BENCH_PVE_HOSTS", "2"))
PVE_IMPL = os.environ.get("BENCH_PVE_IMPL", "aiohttp")
PHASES = os.environ.get("BENCH_PHASES") == "1"
TOKEN = "root@pam!bench=5d1c0b9e-7a51-4c1e-9e55-0a1b2c3d4e5f"
CALLS = 2  # GET /version + GET /cluster/status
TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc helpers -------------------------------------------------------------------------------
def cpu_totals() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


def proc_cpu(pid: int) -> int:
    """utime + stime (jiffies) of a process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        return None
    return None


def kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


class CpuMeter:
    """CPU seconds used by each process group between start() and stop(), and the machine's busy %."""

    def __init__(self, groups):
        self.groups = groups  # name -> callable returning pids

    def snapshot(self):
        return cpu_totals(), {name: {pid: proc_cpu(pid) for pid in pids()} for name, pids in self.groups.items()}

    def start(self):
        self._t0 = time.perf_counter()
        self._s0 = self.snapshot()

    def stop(self) -> dict:
        wall = time.perf_counter() - self._t0
        (b1, t1), g1 = self.snapshot()
        (b0, t0), g0 = self._s0
        out = {"wall": wall, "machine_busy": (b1 - b0) / max(1, t1 - t0)}
        for name in self.groups:
            used = sum(j - g0[name].get(pid, 0) for pid, j in g1[name].items())
            out[name] = used / TICKS
        return out


# -- helpers ------------------------------------------------------------------------------------
def stop(proc):
    processes.stop(proc, timeout=30)


def wait_for_text(path: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} x{count} not seen within {timeout} s:\n" + path.read_text(errors="replace")[-3000:])


def read_phases(directory: Path) -> dict:
    """Running totals of all worker processes: {phase: {n, s, max, rows}}."""
    import json

    total: dict = {}
    for path in directory.glob("phases.*.json"):
        try:
            data = json.loads(path.read_text())
        except (ValueError, FileNotFoundError):
            continue
        for name, v in data.items():
            t = total.setdefault(name, {"n": 0, "s": 0.0, "max": 0.0, "rows": 0})
            t["n"] += v["n"]
            t["s"] += v["s"]
            t["rows"] += v["rows"]
            t["max"] = max(t["max"], v["max"])
    return total


@pytest.mark.timeout(1200)
def test_fleet_cycle(pg_server, db_url, redis_server, secret_key, tmp_path):
    from fakepve.certs import make_cert

    settings = load_settings()
    processes = settings.worker_processes
    threads = settings.worker_threads
    concurrency = processes * threads
    ideal = SERVERS * CALLS * LATENCY / concurrency

    # A self-signed certificate for the simulated PVEs, pinned by its SHA-256 fingerprint.
    hosts = [f"127.0.10.{i + 1}" for i in range(PVE_HOSTS)]
    cert, key, der = make_cert(str(tmp_path), name="bench", hosts=tuple(hosts))
    fingerprint = hashlib.sha256(der).hexdigest()
    port = 18006 + os.getpid() % 1000
    sim_log_path = tmp_path / "simpve.log"
    sim_log = open(sim_log_path, "wb")
    sim = spawn([str(HERE / "simpve.py"), "--cert", cert, "--key", key, "--hosts", ",".join(hosts),
                 "--port", str(port), "--latency", str(LATENCY), "--token", TOKEN, "--impl", PVE_IMPL],
                os.environ.copy(), sim_log)
    worker = None
    worker_log = open(tmp_path / "worker.log", "wb")
    try:
        wait_for_text(sim_log_path, "ready ", len(hosts), 30)

        # 1,000 servers, registered as `proxwatch servers add NAME URL --token … --fingerprint …` does.
        t0 = time.perf_counter()
        box = Box(secret_key)
        server_ids = []
        with db.connect(db_url) as conn:
            admin.add_tenant(conn, "bench")
            for i in range(SERVERS):
                row = admin.add_server(conn, box, admin.ServerInput(
                    name=f"pve{i:04d}", url=f"https://{hosts[i % len(hosts)]}:{port}", token=TOKEN,
                    fingerprint=fingerprint, tenant="bench"))
                server_ids.append(str(row["id"]))
        setup_s = time.perf_counter() - t0

        # The worker, as the product runs it (Procfile / worker.embedded.system).
        redis.Redis.from_url(redis_server.url).flushall()
        env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
                   PROXWATCH_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
        phases_dir = tmp_path / "phases"
        if PHASES:
            # The same worker through tests/bench/patched_worker.py, with phase timers in memory.
            phases_dir.mkdir()
            env.update(PYTHONPATH=str(ROOT), BENCH_PHASES_DIR=str(phases_dir))
            entry = [str(HERE / "patched_worker.py")]
        else:
            entry = ["-m", "dramatiq"]
        worker = spawn([*entry, "worker.broker", "worker.actors", "--processes", str(processes),
                        "--threads", str(threads)], env, worker_log)
        wait_for_text(tmp_path / "worker.log", "is ready for action", processes, 60)
        time.sleep(0.5)
        worker_pids = [p for p in descendants(worker.pid) if int(status_field(p, "Threads") or 0) >= threads]

        # The sender: worker.actors.poll.send, exactly as worker.scheduler does (broker from the env).
        os.environ.update(DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
                          PROXWATCH_HOME=str(tmp_path))
        for mod in [m for m in sys.modules if m in ("worker.broker", "worker.actors")]:
            del sys.modules[mod]
        from worker import actors

        sim_pids = lambda: [sim.pid, *descendants(sim.pid)]  # noqa: E731
        meter = CpuMeter({
            "worker": lambda: [worker.pid, *descendants(worker.pid)],
            "simpve": sim_pids,
            "postgres": postgres_pids,
            "redis": lambda: [redis_server.proc.pid],
            "bench": lambda: [os.getpid()],
        })

        base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        results = []
        phases: list[dict] = []
        with psycopg.connect(db_url, autocommit=True) as watch:
            for cycle in range(CYCLES):
                scheduled_at = base + timedelta(seconds=10 * cycle)
                at = scheduled_at.isoformat()
                phases0 = read_phases(phases_dir) if PHASES else {}
                meter.start()
                start = time.perf_counter()
                for sid in server_ids:
                    actors.poll.send(sid, at)
                enqueued = time.perf_counter() - start
                n = 0
                deadline = start + 300
                while time.perf_counter() < deadline:
                    n = watch.execute("select count(*) from connection_metrics where scheduled_at = %s",
                                      (scheduled_at,)).fetchone()[0]
                    if n >= SERVERS:
                        break
                    time.sleep(0.02)
                wall = time.perf_counter() - start
                cpu = meter.stop()
                stats = watch.execute(
                    "select count(*) filter (where success), "
                    "percentile_cont(0.5) within group (order by response_time_ms), "
                    "percentile_cont(0.99) within group (order by response_time_ms), "
                    "extract(epoch from max(created_at) - min(created_at)) "
                    "from connection_metrics where scheduled_at = %s", (scheduled_at,)).fetchone()
                if PHASES:
                    time.sleep(0.6)  # the last dump of every process
                    p1 = read_phases(phases_dir)
                    phases.append({k: {f: v[f] - phases0.get(k, {}).get(f, 0) for f in ("n", "s", "rows")}
                                   | {"max": v["max"]} for k, v in p1.items()})
                results.append(dict(cycle=cycle + 1, wall=wall, enqueue=enqueued, rows=n, ok=stats[0],
                                    rt50=stats[1], rt99=stats[2], spread=stats[3], cpu=cpu))
                assert n >= SERVERS, f"cycle {cycle + 1}: only {n} of {SERVERS} rows after 300 s"
                time.sleep(1.0)

        hwm = {pid: (kib(status_field(pid, "VmHWM")), kib(status_field(pid, "VmRSS"))) for pid in worker_pids}
        parent_hwm = kib(status_field(worker.pid, "VmHWM"))
        top = subprocess.run(["top", "-b", "-n1", "-w", "200"], capture_output=True, text=True).stdout
    finally:
        if worker is not None:
            stop(worker)
        stop(sim)
        sim_log.close()
        worker_log.close()

    # -- report ---------------------------------------------------------------------------------
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"\n\n=== product HEAD {head}")
    print(f"=== Fleet cycle: {SERVERS} servers, {CALLS} calls x {LATENCY * 1000:.0f} ms, "
          f"worker --processes {processes} --threads {threads}, simulator: {PVE_IMPL} x {len(hosts)} processes ===")
    print(f"setup: {SERVERS} servers registered through worker.admin in {setup_s:.1f} s; "
          f"ideal = {SERVERS} x {CALLS} x {LATENCY} s / {concurrency} = {ideal:.3f} s; "
          f"goal <= {1.1 * ideal:.3f} s and <= 10 s")
    rows = []
    for r in results:
        c = r["cpu"]
        rows.append((r["cycle"], "cold" if r["cycle"] == 1 else "warm", f"{r['wall']:.3f}", f"{r['wall'] / ideal:.2f}",
                     f"{r['enqueue']:.3f}", f"{r['ok']}/{r['rows']}", f"{r['rt50']:.0f}", f"{r['rt99']:.0f}",
                     f"{r['spread']:.2f}", f"{100 * c['machine_busy']:.0f}%", f"{c['worker']:.2f}",
                     f"{c['simpve']:.2f}", f"{c['postgres']:.2f}", f"{c['redis']:.2f}", f"{c['bench']:.2f}"))
    table("per cycle (wall = first enqueue -> all rows committed; cpu columns in CPU-seconds during the cycle)",
          ("cycle", "kind", "wall_s", "x_ideal", "enqueue_s", "ok/rows", "rt_p50_ms", "rt_p99_ms",
           "poll_spread_s", "machine_busy", "cpu_worker", "cpu_simpve", "cpu_pg", "cpu_redis", "cpu_bench"),
          rows)
    first = results[0]["wall"]
    warm = statistics.median(r["wall"] for r in results[1:]) if len(results) > 1 else float("nan")
    table("summary", ("figure", "value", "x_ideal", "goal", "met"), [
        ("ideal_s", f"{ideal:.3f}", "1.00", "", ""),
        ("first (cold) cycle_s", f"{first:.3f}", f"{first / ideal:.2f}", f"<= {1.1 * ideal:.2f} s",
         "yes" if first <= 1.1 * ideal else "NO"),
        ("warm cycle median_s", f"{warm:.3f}", f"{warm / ideal:.2f}", f"<= {1.1 * ideal:.2f} s",
         "yes" if warm <= 1.1 * ideal else "NO"),
        ("every cycle within 10 s", f"{max(r['wall'] for r in results):.3f}", "", "<= 10 s",
         "yes" if max(r["wall"] for r in results) <= 10 else "NO"),
    ])
    for i, ph in enumerate(phases):
        slots = concurrency * results[i]["wall"]
        table(f"cycle {i + 1}: phases inside the worker processes (sum over all threads; "
              f"thread-seconds available = {concurrency} x {results[i]['wall']:.2f} s = {slots:.1f})",
              ("phase", "calls", "total_s", "mean_ms", "max_ms", "share_of_slots", "rows/batch"),
              [(k, v["n"], f"{v['s']:.2f}", f"{1000 * v['s'] / max(1, v['n']):.1f}", f"{1000 * v['max']:.0f}",
                f"{100 * v['s'] / slots:.0f}%", f"{v['rows'] / max(1, v['n']):.1f}" if v["rows"] else "")
               for k, v in ph.items()])
    table("worker memory (kB)", ("pid", "role", "VmHWM_peak", "VmRSS_now"),
          [(worker.pid, "dramatiq main", parent_hwm, "")] +
          [(pid, "worker process", h, r) for pid, (h, r) in hwm.items()])
    print("\ntop -b -n1 after the cycles (for the record; CPU-seconds above are the real measure):")
    print("\n".join(top.splitlines()[:18]))
