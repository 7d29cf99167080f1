"""Benchmark 1 — fleet cycle: 1,000 servers, simulated PVE with 50 ms latency per call, the REAL
worker (`python -m dramatiq worker.broker worker.actors --processes 2 --threads 16`, the
defaults), every server polled for one scheduled_at, enqueued the way the scheduler does it: in
messages of PROXWATCH_POLL_BATCH servers (worker.actors.poll_batch.send), or one message per server
(worker.actors.poll.send) when it is 1. Measures the wall time from the first enqueue until all
1,000 metric rows are committed, for 3 cycles (the first one cold: new TLS connections, new
clients; then warm, keep-alive), against ideal = servers × 2 calls × latency ÷ (processes ×
threads), and the worker's CPU per poll. Each worker process keeps its own keep-alive connection per
server it has polled, so a warm cycle in which many batches land on the other process than before
still opens new TLS connections (the new_conns column, counted in /proc/net/tcp): a warm cycle that
opened at most 1 % of the servers' connections is "steady", what a running worker does, and gets
its own medians.

Side by side: BENCH_BASELINE=<git revision>[,<revision>…] also runs the worker of each revision (its
worker/ and sql/ extracted to a temporary directory; sent messages of PROXWATCH_POLL_BATCH servers
when its worker has the poll_batch actor, else one message per poll as it sends them), alternating with
the current tree for BENCH_ROUNDS rounds (2) of BENCH_CYCLES cycles each, on the same database,
simulator and Redis — so a busy machine slows both alike. The summary gives medians and the ratio.
Goal: ≤ 1.1 × ideal and ≤ 10 s. Also: peak RSS (VmHWM) of the worker processes and where the
CPU went (/proc/stat and /proc/<pid>/stat of each process group).

Run by hand (never part of `make test`):

    PYTHONPATH=. python3 -m pytest tests/bench/bench_fleet_cycle.py -s -q -p no:cacheprovider

Knobs (environment): BENCH_SERVERS (1000), BENCH_LATENCY (0.05), BENCH_CYCLES (3),
BENCH_PVE_HOSTS (2: simulator processes, one loopback address each), BENCH_BASELINE (unset),
BENCH_ROUNDS (2), BENCH_PHASES=1 (time the
phases of each poll inside the worker processes, through tests/bench/patched_worker.py), BENCH_PVE_IMPL
(aiohttp | fakepve: the minimal simulator in tests/bench/simpve.py, or fakepve's FakePve with
slow_network(latency)), PROXWATCH_WORKER_PROCESSES / PROXWATCH_WORKER_THREADS (2 / 16),
PROXWATCH_POLL_BATCH (16).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import redis

from tests.bench.reporting import baseline_tree, table
from tests.support import processes
from tests.support.tcp import client_ports
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
BASELINES = [r for r in os.environ.get("BENCH_BASELINE", "").split(",") if r]
BASELINE = ",".join(BASELINES) or None
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2")) if BASELINE else 1
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


def proc_cpu(pid: int, system_only: bool = False) -> int:
    """utime + stime (or stime only: the kernel's share, e.g. loopback TCP and TLS record I/O) in
    jiffies of a process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[12]) + (0 if system_only else int(fields[11]))
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


def postgres_pids(datadir: Path) -> list[int]:
    """This bench's Postgres: the postmaster of `datadir` (postmaster.pid) and its backends — not
    every Postgres on a shared machine."""
    try:
        postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return []
    return [postmaster, *descendants(postmaster)]


class CpuMeter:
    """CPU seconds used by each process group between start() and stop(), and the machine's busy %."""

    def __init__(self, groups):
        self.groups = groups  # name -> callable returning pids

    def snapshot(self):
        return cpu_totals(), {name: {pid: proc_cpu(pid, name.endswith("_sys")) for pid in pids()}
                              for name, pids in self.groups.items()}

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


class Worker:
    """One worker group (a tree's `dramatiq worker.broker worker.actors`) and how it is sent polls."""

    def __init__(self, name: str, tree: Path, batch: int):
        self.name, self.tree, self.batch = name, tree, batch
        self.proc = None

    def start(self, env: dict, log_path: Path, processes: int, threads: int) -> None:
        env = dict(env, PYTHONPATH=str(self.tree))
        if PHASES:
            # The same worker through tests/bench/patched_worker.py, with phase timers in memory.
            env["PYTHONPATH"] = f"{self.tree}{os.pathsep}{ROOT}"
            entry = [str(HERE / "patched_worker.py")]
        else:
            entry = ["-m", "dramatiq"]
        before = log_path.read_text(errors="replace").count("is ready for action") if log_path.exists() else 0
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, *entry, "worker.broker", "worker.actors", "--processes",
                                      str(processes), "--threads", str(threads)], cwd=self.tree, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_text(log_path, "is ready for action", before + processes, 60)
        time.sleep(0.5)
        self.pids = [p for p in descendants(self.proc.pid) if int(status_field(p, "Threads") or 0) >= threads]

    def send(self, actors, server_ids: list[str], at: str) -> None:
        """As worker.scheduler does: one message per server, or batches of `batch` servers."""
        if self.batch <= 1:
            for sid in server_ids:
                actors.poll.send(sid, at)
        else:
            for i in range(0, len(server_ids), self.batch):
                actors.poll_batch.send([[sid, at] for sid in server_ids[i:i + self.batch]])

    def stop(self) -> tuple[dict, int]:
        """Stop it; returns the peak memory of its processes and of the parent (kB)."""
        hwm = {pid: (kib(status_field(pid, "VmHWM")), kib(status_field(pid, "VmRSS"))) for pid in self.pids}
        parent = kib(status_field(self.proc.pid, "VmHWM"))
        stop(self.proc)
        self.log.close()
        return hwm, parent


@pytest.mark.timeout(2400)
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
    current = Worker("current", ROOT, settings.poll_batch)
    configs = [current]
    for i, revision in enumerate(BASELINES):
        tree = baseline_tree(revision, tmp_path / f"baseline-{i}")
        batched = "def poll_batch(" in (tree / "worker" / "actors.py").read_text()
        configs.insert(i, Worker(f"baseline {revision}", tree, settings.poll_batch if batched else 1))
    running = None
    memory = {}
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
            phases_dir.mkdir()
            env.update(BENCH_PHASES_DIR=str(phases_dir))

        # The sender: worker.actors.poll(_batch).send, exactly as worker.scheduler does (broker from the env).
        os.environ.update(DATABASE_URL=db_url, REDIS_URL=redis_server.url, PROXWATCH_SECRET_KEY=secret_key,
                          PROXWATCH_HOME=str(tmp_path))
        for mod in [m for m in sys.modules if m in ("worker.broker", "worker.actors")]:
            del sys.modules[mod]
        from worker import actors

        base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        results = []
        phases: list[dict] = []
        k = 0
        with psycopg.connect(db_url, autocommit=True) as watch:
            for rnd in range(ROUNDS):
                for config in configs:
                    config.start(env, tmp_path / "worker.log", processes, threads)
                    running = config
                    meter = CpuMeter({
                        "worker": lambda: [config.proc.pid, *descendants(config.proc.pid)],
                        "worker_sys": lambda: [config.proc.pid, *descendants(config.proc.pid)],
                        "simpve": lambda: [sim.pid, *descendants(sim.pid)],
                        "postgres": lambda: postgres_pids(pg_server.datadir),
                        "redis": lambda: [redis_server.proc.pid],
                        "bench": lambda: [os.getpid()],
                        **{f"proc{j}": (lambda pid=pid: [pid]) for j, pid in enumerate(config.pids)},
                    })
                    urls = [f"https://{h}:{port}" for h in hosts]
                    known = set().union(*(client_ports(u) for u in urls))
                    for cycle in range(CYCLES):
                        scheduled_at = base + timedelta(seconds=10 * k)
                        k += 1
                        at = scheduled_at.isoformat()
                        phases0 = read_phases(phases_dir) if PHASES else {}
                        meter.start()
                        start = time.perf_counter()
                        config.send(actors, server_ids, at)
                        enqueued = time.perf_counter() - start
                        n = 0
                        first = None  # when the first row of the cycle was seen committed
                        deadline = start + 300
                        while time.perf_counter() < deadline:
                            n = watch.execute("select count(*) from connection_metrics where scheduled_at = %s",
                                              (scheduled_at,)).fetchone()[0]
                            if n and first is None:
                                first = time.perf_counter() - start
                            if n >= SERVERS:
                                break
                            time.sleep(0.02)
                        wall = time.perf_counter() - start
                        cpu = meter.stop()
                        # New TCP (and TLS) connections to the simulator: each worker process keeps one
                        # per server it has polled, so a server whose batch lands on the other process
                        # for the first time costs a handshake — warm-up that ends once both have one.
                        now_open = set().union(*(client_ports(u) for u in urls))
                        new_conns = len(now_open - known)
                        known |= now_open
                        stats = watch.execute(
                            "select count(*) filter (where success), "
                            "percentile_cont(0.5) within group (order by response_time_ms), "
                            "percentile_cont(0.99) within group (order by response_time_ms), "
                            "extract(epoch from max(created_at) - min(created_at)) "
                            "from connection_metrics where scheduled_at = %s", (scheduled_at,)).fetchone()
                        if PHASES:
                            time.sleep(0.6)  # the last dump of every process
                            p1 = read_phases(phases_dir)
                            phases.append({k2: {f: v[f] - phases0.get(k2, {}).get(f, 0) for f in ("n", "s", "rows")}
                                           | {"max": v["max"]} for k2, v in p1.items()})
                        results.append(dict(config=config.name, round=rnd + 1, cycle=cycle + 1, wall=wall,
                                            enqueue=enqueued, first=first, rows=n, ok=stats[0], rt50=stats[1], rt99=stats[2],
                                            spread=stats[3], cpu=cpu, nproc=len(config.pids), new_conns=new_conns))
                        assert n >= SERVERS, f"{config.name} cycle {cycle + 1}: only {n} of {SERVERS} rows after 300 s"
                        time.sleep(1.0)
                    memory[config.name] = config.stop()
                    running = None
        top = subprocess.run(["top", "-b", "-n1", "-w", "200"], capture_output=True, text=True).stdout
    finally:
        if running is not None:
            running.stop()
        stop(sim)
        sim_log.close()

    # -- report ---------------------------------------------------------------------------------
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"\n\n=== product HEAD {head}" + (f", side by side with {BASELINE}" if BASELINE else ""))
    print(f"=== Fleet cycle: {SERVERS} servers, {CALLS} calls x {LATENCY * 1000:.0f} ms, "
          f"worker --processes {processes} --threads {threads}, simulator: {PVE_IMPL} x {len(hosts)} processes ===")
    print(f"setup: {SERVERS} servers registered through worker.admin in {setup_s:.1f} s; "
          f"ideal = {SERVERS} x {CALLS} x {LATENCY} s / {concurrency} = {ideal:.3f} s; "
          f"goal <= {1.1 * ideal:.3f} s and <= 10 s; polls per message: "
          + ", ".join(f"{c.name} {max(1, c.batch)}" for c in configs))
    def steady(r) -> bool:
        """A warm cycle that opened (almost) no new connection: what a running worker does."""
        return r["cycle"] > 1 and r["new_conns"] <= SERVERS // 100

    rows = []
    for r in results:
        c = r["cpu"]
        per_proc = " ".join(f"{1000 * c[f'proc{j}'] / SERVERS:.2f}" for j in range(r["nproc"]))
        kind = "cold" if r["cycle"] == 1 else "steady" if steady(r) else "warm"
        rows.append((r["config"], r["round"], r["cycle"], kind, r["new_conns"], f"{r['wall']:.3f}",
                     f"{r['wall'] / ideal:.2f}", f"{r['enqueue']:.3f}", f"{r['first']:.3f}", f"{r['ok']}/{r['rows']}", f"{r['rt50']:.0f}",
                     f"{r['rt99']:.0f}", f"{r['spread']:.2f}", f"{100 * c['machine_busy']:.0f}%",
                     f"{c['worker']:.2f}", f"{1000 * c['worker'] / SERVERS:.2f}",
                     f"{100 * c['worker_sys'] / max(c['worker'], 1e-9):.0f}%", per_proc, f"{c['simpve']:.2f}",
                     f"{c['postgres']:.2f}", f"{c['redis']:.2f}", f"{c['bench']:.2f}"))
    table("per cycle (wall = first enqueue -> all rows committed; first_row_s = first enqueue -> the first row seen "
          "committed (the workers' pick-up, one poll, one commit; the watcher looks every 20 ms); cpu columns in CPU-seconds during the cycle, "
          "ms_per_poll = worker CPU ms per poll, all processes / each worker process; kernel = its system-time share)",
          ("config", "round", "cycle", "kind", "new_conns", "wall_s", "x_ideal", "enqueue_s", "first_row_s", "ok/rows", "rt_p50_ms", "rt_p99_ms",
           "poll_spread_s", "machine_busy", "cpu_worker", "ms_per_poll", "kernel", "per_process", "cpu_simpve", "cpu_pg",
           "cpu_redis", "cpu_bench"),
          rows)
    summary = []
    medians = {}
    for config in configs:
        mine = [r for r in results if r["config"] == config.name]
        cold = statistics.median(r["wall"] for r in mine if r["cycle"] == 1)
        warm_rows = [r for r in mine if r["cycle"] > 1] or mine
        warm = statistics.median(r["wall"] for r in warm_rows)
        cpu_ms = statistics.median(1000 * r["cpu"]["worker"] / SERVERS for r in warm_rows)
        steady_rows = [r for r in mine if steady(r)]
        steady_label = f"{len(steady_rows)} cycles" if steady_rows else "none steady: the warm ones"
        steady_rows = steady_rows or warm_rows
        steady_wall = statistics.median(r["wall"] for r in steady_rows)
        steady_cpu = statistics.median(1000 * r["cpu"]["worker"] / SERVERS for r in steady_rows)
        pg_ms = statistics.median(1000 * r["cpu"]["postgres"] / SERVERS for r in warm_rows)
        medians[config.name] = (cold, warm, cpu_ms, pg_ms, steady_wall, steady_cpu)
        summary += [
            (config.name, "cold cycle median_s", f"{cold:.3f}", f"{cold / ideal:.2f}", f"<= {1.1 * ideal:.2f} s",
             "yes" if cold <= 1.1 * ideal else "NO"),
            (config.name, "warm cycle median_s", f"{warm:.3f}", f"{warm / ideal:.2f}", f"<= {1.1 * ideal:.2f} s",
             "yes" if warm <= 1.1 * ideal else "NO"),
            (config.name, "worker CPU ms/poll (warm median)", f"{cpu_ms:.2f}", "", "<= 1.0",
             "yes" if cpu_ms <= 1.0 else "NO"),
            (config.name, f"steady cycle median_s ({steady_label})", f"{steady_wall:.3f}",
             f"{steady_wall / ideal:.2f}", f"<= {1.1 * ideal:.2f} s", "yes" if steady_wall <= 1.1 * ideal else "NO"),
            (config.name, "worker CPU ms/poll (steady median)", f"{steady_cpu:.2f}", "", "<= 1.0",
             "yes" if steady_cpu <= 1.0 else "NO"),
            (config.name, "Postgres CPU ms/poll (warm median)", f"{pg_ms:.2f}", "", "", ""),
            (config.name, "every cycle within 10 s", f"{max(r['wall'] for r in mine):.3f}", "", "<= 10 s",
             "yes" if max(r["wall"] for r in mine) <= 10 else "NO"),
        ]
    table(f"summary (ideal {ideal:.3f} s)", ("config", "figure", "value", "x_ideal", "goal", "met"), summary)
    for config in configs[:-1]:
        old, new = medians[config.name], medians[current.name]
        table(f"current / {config.name} (medians)", ("figure", "baseline", "current", "ratio"), [
            ("cold cycle_s", f"{old[0]:.3f}", f"{new[0]:.3f}", f"{new[0] / old[0]:.2f}"),
            ("warm cycle_s", f"{old[1]:.3f}", f"{new[1]:.3f}", f"{new[1] / old[1]:.2f}"),
            ("worker CPU ms/poll", f"{old[2]:.2f}", f"{new[2]:.2f}", f"{new[2] / old[2]:.2f}"),
            ("Postgres CPU ms/poll", f"{old[3]:.2f}", f"{new[3]:.2f}", f"{new[3] / old[3]:.2f}"),
            ("steady cycle_s", f"{old[4]:.3f}", f"{new[4]:.3f}", f"{new[4] / old[4]:.2f}"),
            ("worker CPU ms/poll, steady", f"{old[5]:.2f}", f"{new[5]:.2f}", f"{new[5] / old[5]:.2f}"),
        ])
    for i, ph in enumerate(phases):
        slots = concurrency * results[i]["wall"]
        table(f"{results[i]['config']} round {results[i]['round']} cycle {results[i]['cycle']}: phases inside the "
              f"worker processes (sum over all threads; thread-seconds available = {concurrency} x "
              f"{results[i]['wall']:.2f} s = {slots:.1f})",
              ("phase", "calls", "total_s", "mean_ms", "max_ms", "share_of_slots", "rows/batch"),
              [(k2, v["n"], f"{v['s']:.2f}", f"{1000 * v['s'] / max(1, v['n']):.1f}", f"{1000 * v['max']:.0f}",
                f"{100 * v['s'] / slots:.0f}%", f"{v['rows'] / max(1, v['n']):.1f}" if v["rows"] else "")
               for k2, v in ph.items()])
    table("worker memory (kB, last run of each config)", ("config", "pid", "role", "VmHWM_peak", "VmRSS_now"),
          [row for name, (hwm, parent) in memory.items() for row in
           [(name, "", "dramatiq main", parent, "")] + [(name, pid, "worker process", h, r2)
                                                         for pid, (h, r2) in hwm.items()]])
    print("\ntop -b -n1 after the cycles (for the record; CPU-seconds above are the real measure):")
    print("\n".join(top.splitlines()[:18]))
