"""Fault-injection report: the REAL worker (`python -m dramatiq worker.broker worker.actors --processes 2
--threads 16`), two schedulers (`python -m worker.scheduler`: a leader and a standby), Redis and
Postgres (the embedded ones of the tests) against a simulated fleet (tests/bench/simpve.py, one
server per port, fault modes switched at runtime). Each fault is injected on its own, then all
together; the table it prints is the README's "Reliability under faults".

Run by hand (never part of `make test`), from the project root:

    PYTHONPATH=. python3 -m pytest tests/bench/bench_faults.py -s -p no:cacheprovider
    PYTHONPATH=. python3 tests/bench/bench_faults.py          # the same

Knobs (environment): BENCH_SERVERS (200), BENCH_INTERVAL (10 s, every server's poll interval),
BENCH_FAULT_S (20 s: how long a PVE fault lasts), BENCH_OUTAGE_S (10 s: Redis / Postgres stopped),
BENCH_SHARE (0.1: the share of the fleet a PVE fault hits), BENCH_GRACE_S (150 s: the wait before
counting lost polls — a dead worker's messages are re-queued after the broker's 15 s heartbeat
timeout and expire after the poll's max_age of 120 s), BENCH_LATENCY (0.05 s per PVE call).

What the columns mean (the timeline is cut into spans: a span runs from its fault's start to the
next fault's start, so it holds the fault and the recovery after it):

- scheduled: the (server, tick) pairs the scheduler owes in the span, computed as it computes them
  (worker.scheduler.tick: every server's ticks are phase + k × interval).
- written: connection_metrics rows of the span (scheduled_at inside it), counted after the grace
  period; ok / failed split them.
- duplicates: count(*) − count(distinct (server_id, scheduled_at)) over the span.
- lost: scheduled pairs without a row after the grace period; "skipped" is the part of them that no
  scheduler could send: a tick is sent at any moment of [tick, tick + interval) while a scheduler
  leads with Redis up (it sends each server's latest tick, never an older one: by design). The
  moments a scheduler leads come from the schedulers' own logs ("leading", "broker unavailable")
  and the times the bench killed one or stopped Redis. Every other lost pair is listed with where its message was
  at the end (still in a dead worker's hands, in a queue, or nowhere).
- late: rows polled more than one interval after their tick (created_at − scheduled_at > interval):
  a message sent late or delivered again.
- stuck: poll messages that a live worker held (its Dramatiq ack set in Redis, sampled every
  second) for more than STUCK_S = 30 s while their row did not exist — a poll is two calls of at
  most 10 s each plus its write, so a thread busy that long with no row is stuck — plus any
  "exceeded time limit" in the worker's log.
- classified: failed rows whose error_kind is in the vocabulary of worker/pve.py and whose
  error_message is not empty, of all failed rows; kinds: their error_kind counts.
- recovery: from the fault's end until every server of the fleet has a successful row scheduled
  after that end, as a reader polling the table every 0.5 s sees it. Each server is polled once
  per interval, so one interval is the floor.
- restart: whether the bench had to restart a process of the product for it to recover.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import redis

from tests.bench.reporting import table
from tests.support import processes
from tests.support.processes import service_env, spawn
from tests.support.waiting import wait_for
from worker import admin, db
from worker.crypto import Box
from worker.scheduler import tick

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVERS = int(os.environ.get("BENCH_SERVERS", "200"))
INTERVAL = int(os.environ.get("BENCH_INTERVAL", "10"))
FAULT_S = float(os.environ.get("BENCH_FAULT_S", "20"))
OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", "10"))
SHARE = float(os.environ.get("BENCH_SHARE", "0.1"))
GRACE_S = float(os.environ.get("BENCH_GRACE_S", "150"))
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.05"))
PROCESSES, THREADS = 2, 16
TOKEN = "root@pam!bench=5d1c0b9e-7a51-4c1e-9e55-0a1b2c3d4e5f"
VOCABULARY = {"timeout", "refused", "dns", "network", "tls", "auth", "http", "bad_response", "config"}
PVE_FAULTS = ("401", "500", "595", "hang", "tls", "html", "garbage")
STUCK_S = 30
RECOVERY_CAP_S = 120
# A span begins this long before its fault: ticks queued or in flight when the fault begins are its.
LEAD_S = 2.0
# A leading scheduler sends a due tick within its 0.25 s resolution (plus the send itself).
SEND_S = 0.3


@dataclass
class Span:
    name: str
    start: float                      # epoch seconds: the fault begins
    end: float = 0.0                  # the fault ends (its recovery is measured from here)
    until: float = 0.0                # the next span begins
    recovery_s: float | None = None
    restart: str = "no"
    faulty: int = 0                   # servers the fault hits
    stuck: int = 0
    notes: list[str] = field(default_factory=list)


class Fleet:
    """The product's processes and services, the simulator, and the faults the bench injects."""

    def __init__(self, tmp: Path, pg_server, redis_server, db_url: str, secret_key: str):
        self.tmp, self.pg, self.redis, self.db_url = tmp, pg_server, redis_server, db_url
        self.env = service_env(db_url, redis_server.url, secret_key, tmp)
        self.log = open(tmp / "procs.log", "ab")
        self.worker: subprocess.Popen | None = None
        self.schedulers: list[subprocess.Popen] = []
        self.scheduler_logs: list[Path] = []
        self.sim: subprocess.Popen | None = None
        self.faults_file = tmp / "faults.json"
        self.expected_exit: set[int] = set()
        self.restarts: list[float] = []
        self.kills: dict[int, float] = {}       # scheduler pid -> when the bench killed it
        self.redis_down: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    # -- processes --------------------------------------------------------------------------------
    def start_worker(self) -> None:
        self.worker = spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", str(PROCESSES),
                             "--threads", str(THREADS)], self.env, self.log)

    def start_scheduler(self) -> subprocess.Popen:
        log = self.tmp / f"scheduler.{len(self.schedulers)}.log"
        with open(log, "ab") as out:
            proc = spawn(["-m", "worker.scheduler"], self.env, out)
        self.schedulers.append(proc)
        self.scheduler_logs.append(log)
        return proc

    def worker_children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.worker.pid)], capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]

    def supervise(self, stop: threading.Event) -> None:
        """Like a service manager with Restart=always: a worker that exits is started again (and noted)."""
        while not stop.wait(0.5):
            if self.worker is not None and self.worker.poll() is not None:
                self.restarts.append(time.time())
                self.start_worker()

    def leader(self) -> subprocess.Popen:
        """The living scheduler whose log says it leads (each logs "leading" / "standing by" on a change)."""
        for proc, log in zip(self.schedulers, self.scheduler_logs):
            if proc.poll() is None and self._states(log) and self._states(log)[-1][1] == "leading":
                return proc
        raise AssertionError("no scheduler leads")

    @staticmethod
    def _states(log: Path) -> list[tuple[float, str]]:
        """(when, leading | standing by | broker unavailable) from a scheduler's log, in order."""
        out = []
        for line in log.read_text(errors="replace").splitlines():
            state = line.split(" scheduler: ", 1)[-1]
            for name in ("leading", "standing by", "broker unavailable"):
                if state.startswith(name):
                    at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
                    out.append((at, name))
        return out

    # -- faults -----------------------------------------------------------------------------------
    def set_faults(self, modes: dict[int, str], drop: float = 0.0) -> None:
        tmp = self.faults_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"drop": drop, "modes": {str(p): m for p, m in modes.items()}}))
        os.replace(tmp, self.faults_file)
        time.sleep(0.3)  # the simulator re-reads the file every 0.1 s

    def stop_redis(self) -> float:
        t = time.time()
        self.redis.stop()
        return t

    def start_redis(self, down_since: float) -> float:
        self.redis.start()
        self.redis_down.append((down_since, time.time()))
        return time.time()

    def kill_worker_process(self) -> int:
        pid = self.worker_children()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_leader(self) -> None:
        proc = self.leader()
        self.kills[proc.pid] = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def leading(self) -> list[tuple[float, float]]:
        """The periods in which some scheduler led with Redis up, from their logs and the kills."""
        periods = []
        for proc, log in zip(self.schedulers, self.scheduler_logs):
            since = None
            for at, state in self._states(log):
                if state == "leading":
                    since = at if since is None else since
                elif since is not None:
                    periods.append((since, at))
                    since = None
            if since is not None:
                periods.append((since, self.kills.get(proc.pid, time.time())))
        # A scheduler notices a stopped Redis only at its next send: cut the outages out exactly.
        for down, up in self.redis_down:
            periods = [q for p0, p1 in periods
                       for q in ((p0, min(p1, down)), (max(p0, up), p1)) if q[1] > q[0]]
        return periods

    def close(self) -> None:
        for proc in [self.worker, *self.schedulers, self.sim]:
            if proc is not None:
                processes.stop(proc, timeout=30)
        self.log.close()


class StuckWatch:
    """Samples Dramatiq's ack sets in Redis every second: which poll messages each live worker holds."""

    def __init__(self, redis_url: str, db_url: str):
        self.redis_url, self.db_url = redis_url, db_url
        self.first_seen: dict[bytes, float] = {}
        self.stuck: dict[bytes, float] = {}      # message id -> when it crossed STUCK_S
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        r = redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        while not self.stop.wait(1.0):
            try:
                self.sample(r)
            except (redis.RedisError, psycopg.Error):
                pass  # Redis or Postgres is down: nothing to sample

    def sample(self, r) -> None:
        now = time.time()
        beats = {k.decode(): s for k, s in r.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True)}
        held = set()
        for key in r.scan_iter(match="dramatiq:__acks__.*.polls"):
            worker_id = key.decode().split("__acks__.", 1)[1].rsplit(".", 1)[0]
            live = now * 1000 - beats.get(worker_id, 0) < 15_000
            for mid in r.smembers(key):
                held.add(mid)
                self.first_seen.setdefault(mid, now)
                if live and mid not in self.stuck and now - self.first_seen[mid] > STUCK_S:
                    body = r.hget("dramatiq:polls.msgs", mid)
                    if body is None:
                        continue
                    with psycopg.connect(self.db_url, connect_timeout=2) as c:
                        missing = [1 for sid, at in polls_of(body) if c.execute(
                            "select 1 from connection_metrics where server_id = %s and scheduled_at = %s",
                            (sid, datetime.fromisoformat(at))).fetchone() is None]
                    if missing:
                        self.stuck[mid] = now
        for mid in list(self.first_seen):
            if mid not in held:
                del self.first_seen[mid]


def free_range(n: int) -> int:
    """The first of n consecutive free ports below the kernel's ephemeral range (where nothing is
    handed out to outgoing connections meanwhile)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random(os.getpid())
    for _ in range(100):
        base = rng.randrange(10_000, low - n)
        taken = False
        for port in range(base, base + n):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise AssertionError(f"no {n} consecutive free ports below {low}")


def unacked_polls(redis_url: str) -> dict[tuple[str, float], str]:
    """Where each poll message still in Redis is: (server_id, tick) -> a worker's ack set (alive or
    dead by its heartbeat) or the queue."""
    r = redis.Redis.from_url(redis_url)
    now_ms = time.time() * 1000
    beats = {k.decode(): s for k, s in r.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True)}
    place = {}
    for key in r.scan_iter(match="dramatiq:__acks__.*"):
        worker_id, queue = key.decode().split("__acks__.", 1)[1].rsplit(".", 1)
        state = "alive" if now_ms - beats.get(worker_id, 0) < 15_000 else \
            f"dead, last heartbeat {(now_ms - beats[worker_id]) / 1000:.0f} s ago" if worker_id in beats else "dead"
        for mid in r.smembers(key):
            place[mid] = f"held by a worker ({state}) in {queue}"
    for queue in ("polls", "polls.DQ"):
        for mid in r.lrange(f"dramatiq:{queue}", 0, -1) if queue == "polls" else r.zrange(f"dramatiq:{queue}", 0, -1):
            place.setdefault(mid, f"waiting in {queue}")
    out = {}
    for queue in ("polls", "polls.DQ"):
        for mid, body in r.hscan_iter(f"dramatiq:{queue}.msgs"):
            for sid, at in polls_of(body):
                out[(sid, round(datetime.fromisoformat(at).timestamp(), 3))] = place.get(mid, f"in {queue}.msgs only")
    return out


def polls_of(body: bytes) -> list[tuple[str, str]]:
    """The (server_id, scheduled_at) of a poll message: poll(server_id, scheduled_at) or
    poll_batch([[server_id, scheduled_at], …])."""
    message = json.loads(body)
    if message.get("actor_name") == "poll_batch":
        return [(sid, at) for sid, at in message["args"][0]]
    sid, at = message["args"]
    return [(sid, at)]


def expected_ticks(server_ids: list[str], start: float, end: float) -> set[tuple[str, float]]:
    """Every (server, tick) with start <= tick < end, as the scheduler computes its ticks."""
    out = set()
    for sid in server_ids:
        t = tick(sid, INTERVAL, start)
        if t < start:
            t += INTERVAL
        while t < end:
            out.add((sid, round(t, 3)))
            t += INTERVAL
    return out


def all_recovered(db_url: str, since: float) -> bool:
    """Every server has a successful row scheduled at or after `since`."""
    try:
        with psycopg.connect(db_url, connect_timeout=2) as c:
            n = c.execute("select count(distinct server_id) from connection_metrics where success and scheduled_at >= %s",
                          (datetime.fromtimestamp(since, timezone.utc),)).fetchone()[0]
        return n >= SERVERS
    except psycopg.OperationalError:
        return False


@pytest.mark.timeout(3600)
def test_faults(pg_server, db_url, redis_server, secret_key, tmp_path):
    from fakepve.certs import make_cert

    run_started = time.time()
    cert, key, der = make_cert(str(tmp_path), name="fleet", hosts=("127.0.0.1",))
    alt_cert, alt_key, _ = make_cert(str(tmp_path), name="fleet-renewed", hosts=("127.0.0.1",))
    fingerprint = hashlib.sha256(der).hexdigest()
    base_port = free_range(SERVERS)
    ports = list(range(base_port, base_port + SERVERS))

    processes.flush_redis(redis_server.url)
    fleet = Fleet(tmp_path, pg_server, redis_server, db_url, secret_key)
    fleet.set_faults({})
    sim_log = tmp_path / "simpve.log"
    with open(sim_log, "wb") as out:
        fleet.sim = spawn([str(HERE / "simpve.py"), "--cert", cert, "--key", key, "--alt-cert", alt_cert,
                           "--alt-key", alt_key, "--hosts", "127.0.0.1", "--port", str(base_port), "--ports",
                           str(SERVERS), "--latency", str(LATENCY), "--token", TOKEN, "--faults",
                           str(fleet.faults_file)], os.environ.copy(), out)
    watch = StuckWatch(redis_server.url, db_url)
    spans: list[Span] = []
    try:
        assert wait_for(lambda: "ready 127.0.0.1" in sim_log.read_text() or fleet.sim.poll() is not None, 30) \
            and fleet.sim.poll() is None, sim_log.read_text()
        box = Box(secret_key)
        server_ids = []
        with db.connect(db_url) as conn:
            admin.add_tenant(conn, "bench")
            for i, port in enumerate(ports):
                row = admin.add_server(conn, box, admin.ServerInput(
                    name=f"pve{i:04d}", url=f"https://127.0.0.1:{port}", token=TOKEN, fingerprint=fingerprint,
                    tenant="bench", interval=INTERVAL))
                server_ids.append(str(row["id"]))
        port_of = dict(zip(server_ids, ports))

        fleet.start_worker()
        supervisor_stop = threading.Event()
        threading.Thread(target=fleet.supervise, args=(supervisor_stop,), daemon=True).start()
        fleet.start_scheduler()
        time.sleep(1.0)  # the first one takes the lock; the second stands by
        fleet.start_scheduler()
        watch.thread.start()

        # Warm-up: every server answered once; the measured window starts at the next whole second.
        assert wait_for(lambda: all_recovered(db_url, 0), 120, 0.5), "the fleet never came up:\n" + \
            (tmp_path / "procs.log").read_text(errors="replace")[-3000:]
        window_start = float(int(time.time()) + 1)
        time.sleep(max(0.0, window_start - time.time()))

        rng = random.Random(9)

        def subset(n_share: float) -> list[str]:
            return rng.sample(server_ids, max(1, round(SERVERS * n_share)))

        def begin(name: str) -> Span:
            if spans:
                spans[-1].until = time.time() - LEAD_S
            span = Span(name, max(window_start, time.time() - LEAD_S))
            spans.append(span)
            print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
            return span

        def recover(span: Span) -> None:
            span.end = span.end or time.time()
            restarts_before = len(fleet.restarts)

            if wait_for(lambda: all_recovered(db_url, span.end), RECOVERY_CAP_S, 0.5):
                span.recovery_s = time.time() - span.end
            if len(fleet.restarts) > restarts_before:
                span.restart = "worker"
                span.notes.append("the dramatiq main process ended when one worker process died; "
                                  "the bench restarted it as a service manager would")

        # 0. No fault: the baseline.
        span = begin("no fault")
        time.sleep(2 * INTERVAL)
        span.end = time.time()
        span.recovery_s = 0.0

        # 1. Each PVE fault on its own, on a tenth of the fleet.
        for mode in PVE_FAULTS:
            span = begin(f"PVE {mode}")
            hit = subset(SHARE)
            span.faulty = len(hit)
            fleet.set_faults({port_of[s]: mode for s in hit})
            time.sleep(FAULT_S)
            fleet.set_faults({})
            span.end = time.time()
            recover(span)

        # 2. 30 % of the connections dropped, across the fleet.
        span = begin("30 % dropped connections")
        span.faulty = SERVERS
        fleet.set_faults({}, drop=0.3)
        time.sleep(FAULT_S)
        fleet.set_faults({})
        span.end = time.time()
        recover(span)

        # 3. Redis stopped.
        span = begin(f"Redis stopped {OUTAGE_S:.0f} s")
        down = fleet.stop_redis()
        time.sleep(OUTAGE_S)
        span.end = fleet.start_redis(down)
        recover(span)

        # 4. Postgres stopped.
        span = begin(f"Postgres stopped {OUTAGE_S:.0f} s")
        pg_server.stop()
        time.sleep(OUTAGE_S)
        pg_server.start()
        span.end = time.time()
        recover(span)

        # 5. One worker process killed with SIGKILL in the middle of a cycle.
        span = begin("worker process SIGKILL")
        fleet.kill_worker_process()
        span.end = time.time()
        recover(span)

        # 6. The leading scheduler killed (SIGKILL); the standby takes over.
        span = begin("scheduler SIGKILL")
        fleet.kill_leader()
        span.end = time.time()
        recover(span)
        fleet.start_scheduler()  # a new standby, for what follows

        # 7. Everything together.
        span = begin("all together")
        groups = [server_ids[i::len(PVE_FAULTS) + 1] for i in range(len(PVE_FAULTS) + 1)]
        span.faulty = SERVERS
        fleet.set_faults({port_of[s]: mode for mode, group in zip(PVE_FAULTS, groups) for s in group}, drop=0.3)
        time.sleep(2)
        fleet.kill_worker_process()
        time.sleep(2)
        fleet.kill_leader()
        time.sleep(2)
        down = fleet.stop_redis()
        time.sleep(3)
        pg_server.stop()
        time.sleep(OUTAGE_S - 3)
        fleet.start_redis(down)
        time.sleep(3)
        pg_server.start()
        time.sleep(max(0.0, FAULT_S + 10 - (time.time() - span.start)))
        fleet.set_faults({})
        span.end = time.time()
        recover(span)
        # Let the last span hold one more interval, then stop sending and wait the grace period.
        time.sleep(INTERVAL)
        span.until = time.time()
        for proc in fleet.schedulers:
            processes.stop(proc, timeout=30)
        window_end = span.until - 2  # a tick is sent within 0.25 s of its time: margin for the last ones
        print(f"{time.strftime('%H:%M:%S')} grace period {GRACE_S:.0f} s", flush=True)
        deadline = time.time() + GRACE_S
        time.sleep(max(0.0, deadline - time.time()))
        watch.stop.set()
        worker_log = (tmp_path / "procs.log").read_text(errors="replace")
        leading = fleet.leading()
        leftover = unacked_polls(redis_server.url)
    finally:
        watch.stop.set()
        if "supervisor_stop" in locals():
            supervisor_stop.set()
        fleet.close()
        if not pg_server.running():
            pg_server.start()
        if redis_server.proc is None:
            redis_server.start()

    # -- counting -------------------------------------------------------------------------------------
    spans[-1].until = min(spans[-1].until, window_end)
    with psycopg.connect(db_url) as c:
        rows = c.execute("select server_id::text, extract(epoch from scheduled_at)::float8, success, error_kind,"
                         " error_message, extract(epoch from created_at - scheduled_at)::float8"
                         " from connection_metrics where scheduled_at >= %s and scheduled_at < %s",
                         (datetime.fromtimestamp(window_start, timezone.utc),
                          datetime.fromtimestamp(window_end, timezone.utc))).fetchall()
        dup_total = c.execute("select count(*) - count(distinct (server_id, scheduled_at)) from connection_metrics"
                              ).fetchone()[0]
    time_limit_hits = worker_log.count("exceeded time limit") + worker_log.count("TimeLimitExceeded")
    for when in watch.stuck.values():
        for s in spans:
            if s.start <= when < (s.until or 1e12):
                s.stuck += 1

    out = []
    for s in spans:
        a, b = s.start, min(s.until, window_end)
        exp = expected_ticks(server_ids, a, b)
        mine = [r for r in rows if a <= r[1] < b]
        have = {(r[0], round(r[1], 3)) for r in mine}
        lost = exp - have
        skipped = {x for x in lost if not any(p0 < x[1] + INTERVAL and p1 > x[1] + SEND_S for p0, p1 in leading)}
        failed = [r for r in mine if not r[2]]
        classified = [r for r in failed if r[3] in VOCABULARY and (r[4] or "").strip()]
        kinds = Counter(r[3] for r in failed)
        if lost - skipped:
            where = Counter(leftover.get((sid, t), "no message left in Redis") for sid, t in lost - skipped)
            offsets = sorted(round(t - a - LEAD_S, 1) for _, t in lost - skipped)
            s.notes.append(f"{len(lost - skipped)} lost that a scheduler could send: ticks at "
                           f"{', '.join(f'{o:+}' for o in offsets)} s from the fault's start (it ended at "
                           f"+{s.end - a - LEAD_S:.1f} s); their messages at the end: "
                           + ", ".join(f"{n} {w}" for w, n in where.items()))
        late = sum(1 for r in mine if r[5] > INTERVAL)
        out.append(dict(
            fault=s.name, servers_hit=s.faulty or "-", scheduled=len(exp), written=len(mine),
            ok=len(mine) - len(failed), failed=len(failed), duplicates=len(mine) - len(have),
            lost=len(lost), skipped=len(skipped), late=late, stuck=s.stuck,
            classified=f"{len(classified)}/{len(failed)}",
            kinds=", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "-",
            recovery=f"{s.recovery_s:.1f}" if s.recovery_s is not None else f"> {RECOVERY_CAP_S}",
            restart=s.restart, notes="; ".join(s.notes)))

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    print(f"\n\n=== product HEAD {head}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; run took "
          f"{(time.time() - run_started) / 60:.1f} min")
    print(f"=== {SERVERS} servers every {INTERVAL} s, worker --processes {PROCESSES} --threads {THREADS}, "
          f"2 schedulers (leader + standby); PVE faults {FAULT_S:.0f} s on {SHARE:.0%} of the fleet, "
          f"outages {OUTAGE_S:.0f} s, grace {GRACE_S:.0f} s")
    cols = ("fault", "servers_hit", "scheduled", "written", "ok", "failed", "duplicates", "lost", "skipped", "late",
            "stuck", "classified", "kinds", "recovery", "restart")
    table("per fault", cols, [tuple(r[c] for c in cols) for r in out])
    total = {c: sum(r[c] for r in out) for c in ("scheduled", "written", "duplicates", "lost", "skipped", "late",
                                                   "stuck")}
    print(f"\ntotal: {total}; duplicates over the whole table: {dup_total}; 'exceeded time limit' in the worker log: "
          f"{time_limit_hits}; worker restarts by the bench: {len(fleet.restarts)}")
    for log in fleet.scheduler_logs:
        empty = [line[:23] for line in log.read_text(errors="replace").splitlines() if "using the 0 known servers" in line]
        if empty:
            print(f"note ({log.name}): led with no server list while Postgres was unreachable, "
                  f"{len(empty)} times from {empty[0]} to {empty[-1]} (a standby reads the list only once it leads)")
    for r in out:
        if r["notes"]:
            print(f"note ({r['fault']}): {r['notes']}")
    print("\nMarkdown:\n")
    print("| fault | servers hit | scheduled | written (ok / failed) | duplicates | lost | late | stuck | classified"
          " | error kinds | recovery (s) | restart |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in out:
        lost = f"{r['lost']}" + (f" ({r['skipped']} skipped: no scheduler could send)" if r["skipped"] else "")
        print(f"| {r['fault']} | {r['servers_hit']} | {r['scheduled']} | {r['written']} ({r['ok']} / {r['failed']}) "
              f"| {r['duplicates']} | {lost} | {r['late']} | {r['stuck']} | {r['classified']} | {r['kinds']} "
              f"| {r['recovery']} | {r['restart']} |")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s", "-q", "-p", "no:cacheprovider"]))
