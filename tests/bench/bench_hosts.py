"""Several worker hosts: three "machines" as network namespaces on this one, each running the REAL
worker (`python -m dramatiq worker.broker worker.actors`) and scheduler (`python -m worker.scheduler`)
with only the variables a second machine needs, sharing one Redis and one Postgres in the root
namespace, against a simulated fleet (tests/bench/simpve.py) whose every call takes 500 ms — so the
hosts' threads, not this machine's CPU, are the limit.

Run by hand as root (never part of `make test`), from the project root:

    PYTHONPATH=. python3 tests/bench/bench_hosts.py
    PYTHONPATH=. python3 -m pytest tests/bench/bench_hosts.py -s -q -p no:cacheprovider   # the same

The network: a free 10.X.0.0/16 (X from 213 up, the first with no address or route on this machine);
per host a namespace pwbench-<pid>-h<n> with loopback up and a veth pair to the root namespace
(10.X.n.2/30 inside, 10.X.n.1/30 outside, a route to 10.X.0.0/16 through it); the fleet on 10.X.0.1,
an address on a veth pair whose both ends stay in the root namespace. Postgres and Redis (started
here, like the tests' embedded ones) listen on 127.0.0.1 and on each 10.X.n.1; host n reaches them
at its own 10.X.n.1, as a machine reaches a database through its own route. The script touches only
the interfaces, addresses and namespaces it created, and removes them, its processes and its
temporary directory on exit, on an exception, Ctrl-C, SIGTERM or SIGHUP.

Phases:

1. Throughput: BENCH_SERVERS (600) servers polled every BENCH_INTERVAL (10 s) — more than three hosts
   can poll — with 1, then 2, then 3 hosts (each `--processes 1 --threads BENCH_THREADS` (16)); polls
   written per second = connection_metrics rows created in a BENCH_WINDOW_S (30 s) window, after
   BENCH_SETTLE_S (15 s) for a joining host to warm up. Hosts join one by one, so the first host's
   scheduler leads throughout (the others stand by).
2. Failover: every process stopped, Redis emptied, the fleet cut to BENCH_KILL_SERVERS (200: what two
   hosts poll comfortably), three hosts started again. 1.5 intervals into the window every process
   of the host whose scheduler holds the lock is killed with SIGKILL (worker main process, worker
   process, scheduler: every pid in its namespace). The window runs 3 intervals past the kill; then
   the schedulers stop and the bench waits (at most BENCH_GRACE_S, 150 s) for the polls still owed.
   Counted per (server, scheduled_at) of the window, as the scheduler computes its ticks: written
   exactly once, missing, duplicates; delay = created_at (when the poll began) − scheduled_at; the
   polls the killed worker held (its Dramatiq ack set just before the kill; the killed consumer is
   the one whose heartbeat stops) and their delay; the takeover (the new leader's "leading" line in
   its log − the kill) and the polls due in the interval after the kill.

The scheduler's guest sync and certificate check are real messages too; the bench sets
PROXWATCH_GUEST_INTERVAL=3600 so that polls are what it measures (each server's first guest sync and
certificate check still run once, at the first start: the bench waits for them to drain).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
import redis

from tests.bench.bench_faults import Fleet, free_range
from tests.bench.reporting import pct, table
from tests.support import processes
from tests.support.waiting import wait_for
from worker import admin, db
from worker.crypto import Box
from worker.embedded.services import EmbeddedPostgres, load_secrets, wait_for_port
from worker.scheduler import LOCK_NAME, LOCK_TTL_MS, tick

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVERS = int(os.environ.get("BENCH_SERVERS", "600"))
KILL_SERVERS = int(os.environ.get("BENCH_KILL_SERVERS", "200"))
INTERVAL = int(os.environ.get("BENCH_INTERVAL", "10"))
THREADS = int(os.environ.get("BENCH_THREADS", "16"))
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.5"))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_S", "30"))
SETTLE_S = float(os.environ.get("BENCH_SETTLE_S", "15"))
GRACE_S = float(os.environ.get("BENCH_GRACE_S", "150"))
HOSTS = 3
TOKEN = "root@pam!bench=5d1c0b9e-7a51-4c1e-9e55-0a1b2c3d4e5f"
# A poll is late when it began more than this after its tick (created_at is when a poll begins): the
# scheduler's 0.25 s resolution and a free thread's pick-up fit well inside it.
LATE_S = 3.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


class Cleanup:
    """Undo steps, run once in reverse order: at the end, on an exception, at exit, on a signal."""

    def __init__(self):
        self.steps: list[tuple[str, callable]] = []
        self.done = False

    def add(self, what: str, fn) -> None:
        self.steps.append((what, fn))

    def run(self) -> None:
        if self.done:
            return
        self.done = True
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as exc:  # keep undoing the rest
                print(f"cleanup: {what}: {exc}", file=sys.stderr)


class Network:
    """The namespaces, veth pairs and addresses of this run — and nothing else."""

    def __init__(self, cleanup: Cleanup, hosts: int):
        self.cleanup = cleanup
        self.tag = f"pwb{os.getpid()}"
        self.octet = self.free_octet()
        self.prefix = f"10.{self.octet}"
        self.fleet_ip = f"{self.prefix}.0.1"
        self.namespaces = [f"pwbench-{os.getpid()}-h{n}" for n in range(1, hosts + 1)]
        self.gateways = [f"{self.prefix}.{n}.1" for n in range(1, hosts + 1)]

    @staticmethod
    def free_octet() -> int:
        """X of the first 10.X.0.0/16 (213..250) that no address or route of this machine is in."""
        seen = ip("-o", "addr").stdout + ip("route", "show", "table", "all").stdout
        for octet in range(213, 251):
            if f"10.{octet}." not in seen:
                return octet
        raise RuntimeError("no free 10.X.0.0/16 between 10.213 and 10.250 for the bench's hosts")

    def _link(self, name: str, peer: str) -> None:
        ip("link", "add", name, "type", "veth", "peer", "name", peer)
        # Deleting one end of a veth pair deletes both (also when the other end is in a namespace).
        self.cleanup.add(f"delete link {name}", lambda: ip("link", "del", name, check=False)
                         if ip("link", "show", name, check=False).returncode == 0 else None)

    def build(self) -> None:
        fleet_a, fleet_b = f"{self.tag}f0", f"{self.tag}f1"
        self._link(fleet_a, fleet_b)
        ip("addr", "add", f"{self.fleet_ip}/32", "dev", fleet_a)
        ip("link", "set", fleet_a, "up")
        ip("link", "set", fleet_b, "up")
        for n, (ns, gw) in enumerate(zip(self.namespaces, self.gateways), 1):
            ip("netns", "add", ns)
            self.cleanup.add(f"delete namespace {ns}", lambda ns=ns: self.delete_namespace(ns))
            outside, inside = f"{self.tag}h{n}r", f"{self.tag}h{n}n"
            self._link(outside, inside)
            ip("link", "set", inside, "netns", ns)
            ip("addr", "add", f"{gw}/30", "dev", outside)
            ip("link", "set", outside, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.prefix}.{n}.2/30", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
            ip("-n", ns, "route", "add", f"{self.prefix}.0.0/16", "via", gw)

    @staticmethod
    def pids(ns: str) -> list[int]:
        return [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]

    def delete_namespace(self, ns: str) -> None:
        for pid in self.pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not self.pids(ns), 10, 0.1)
        ip("netns", "del", ns, check=False)


class BenchPostgres(EmbeddedPostgres):
    """The embedded Postgres of the tests, listening on 127.0.0.1 and the hosts' gateway addresses,
    accepting password logins from the bench's 10.X.0.0/16."""

    def __init__(self, home: Path, port: int, password: str, listen: list[str], network: str):
        super().__init__(home, port, password)
        self.listen, self.network = listen, network

    def start(self, timeout: float = 60) -> None:
        if not self.initialized():
            self.init()
            with open(self.datadir / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.network} scram-sha-256\n")
        self.logfile.touch(exist_ok=True)
        self._own(self.logfile)
        opts = f"-p {self.port} -c listen_addresses={','.join(self.listen)} -c unix_socket_directories=''"
        out = self._run(str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D",
                        str(self.datadir), "-l", str(self.logfile), "-o", opts)
        if out.returncode != 0:
            raise RuntimeError(f"Postgres did not start: {out.stderr.strip()} {self.logfile.read_text()[-800:]}")


def start_redis(workdir: Path, port: int, password: str, binds: list[str]) -> subprocess.Popen:
    """redis-server as the tests start it, bound to `binds` too; messages only (no persistence)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"
    conf.write_text(f"port {port}\nbind {' '.join(binds)}\nrequirepass {password}\ndir {workdir}\n"
                    "appendonly no\nsave \"\"\nprotected-mode yes\nloglevel warning\n"
                    f"logfile {workdir / 'redis.log'}\n")
    os.chmod(conf, 0o600)
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf)],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, 20)
    return proc


class Host:
    """One machine: a namespace with a worker and a scheduler, started with the variables it needs."""

    def __init__(self, n: int, ns: str, env: dict, tmp: Path):
        self.name, self.ns, self.env, self.tmp = f"h{n}", ns, env, tmp
        self.starts = 0
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start the worker and the scheduler, each with a new log (so a state read is this start's)."""
        prefix = ("ip", "netns", "exec", self.ns)
        self.worker_log = self.tmp / f"{self.name}.{self.starts}.worker.log"
        self.scheduler_log = self.tmp / f"{self.name}.{self.starts}.scheduler.log"
        self.starts += 1
        with open(self.worker_log, "ab") as out:
            self.procs.append(processes.spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes",
                                               "1", "--threads", str(THREADS)], self.env, out, prefix=prefix))
        with open(self.scheduler_log, "ab") as out:
            self.procs.append(processes.spawn(["-m", "worker.scheduler"], self.env, out, prefix=prefix))

    def ready(self) -> bool:
        return "ready for action" in self.worker_log.read_text(errors="replace")

    def states(self) -> list[tuple[float, str]]:
        return Fleet._states(self.scheduler_log)

    def leads(self) -> bool:
        states = [s for s in self.states() if s[1] != "broker unavailable"]
        return bool(states) and states[-1][1] == "leading" and all(p.poll() is None for p in self.procs)

    def kill(self) -> int:
        """SIGKILL every process in the host's namespace; how many there were."""
        pids = Network.pids(self.ns)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)
        return len(pids)

    def stop(self) -> None:
        for proc in self.procs:
            processes.stop(proc, timeout=20)
        self.procs = []


def expected_ticks(server_ids: list[str], interval: int, start: float, end: float) -> set[tuple[str, float]]:
    """Every (server, tick) with start <= tick < end, as worker.scheduler.tick computes them."""
    out = set()
    for sid in server_ids:
        t = tick(sid, interval, start)
        t = t + interval if t < start else t
        while t < end:
            out.add((sid, round(t, 3)))
            t += interval
    return out


def rows_created(url: str, t0: float, t1: float) -> tuple[int, int]:
    """(rows, successful rows) of connection_metrics created in [t0, t1)."""
    with psycopg.connect(url) as c:
        return c.execute("select count(*), count(*) filter (where success) from connection_metrics"
                         " where created_at >= %s and created_at < %s",
                         (datetime.fromtimestamp(t0, timezone.utc), datetime.fromtimestamp(t1, timezone.utc))
                         ).fetchone()


def host_connections(url: str, network: str) -> int:
    """Postgres connections open from the hosts' addresses right now (every pool of every process)."""
    with psycopg.connect(url) as c:
        return c.execute("select count(*) from pg_stat_activity where client_addr <<= %s::inet",
                         (network,)).fetchone()[0]


def window_rows(url: str, t0: float, t1: float) -> list[tuple[str, float, float]]:
    """(server_id, scheduled_at, created_at − scheduled_at) of the rows scheduled in [t0, t1)."""
    with psycopg.connect(url) as c:
        return c.execute("select server_id::text, extract(epoch from scheduled_at)::float8,"
                         " extract(epoch from created_at - scheduled_at)::float8 from connection_metrics"
                         " where scheduled_at >= %s and scheduled_at < %s",
                         (datetime.fromtimestamp(t0, timezone.utc), datetime.fromtimestamp(t1, timezone.utc))
                         ).fetchall()


def run() -> dict:
    if os.geteuid() != 0:
        raise SystemExit("bench_hosts needs root: it creates network namespaces and veth pairs")
    cleanup = Cleanup()
    atexit.register(cleanup.run)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)  # unwinds through the finally below

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Under /tmp with mode 755: the postgres user (Postgres runs as it under root) must reach it.
    tmp = Path(tempfile.mkdtemp(prefix="pwbench-hosts-", dir="/tmp"))
    os.chmod(tmp, 0o755)
    cleanup.add("remove the temporary directory", lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        return measure(tmp, cleanup)
    finally:
        cleanup.run()
        atexit.unregister(cleanup.run)
        for s, handler in previous.items():
            signal.signal(s, handler)


def measure(tmp: Path, cleanup: Cleanup) -> dict:
    from fakepve.certs import make_cert

    started = time.time()
    net = Network(cleanup, HOSTS)
    net.build()
    secrets = load_secrets(tmp / "home")
    pg_port = free_range(2)
    redis_port = pg_port + 1
    listen = ["127.0.0.1", *net.gateways]
    pg = BenchPostgres(tmp / "home", pg_port, secrets["pg_password"], listen, f"{net.prefix}.0.0/16")
    cleanup.add("stop Postgres", pg.stop)
    pg.start()
    redis_proc = start_redis(tmp / "redis", redis_port, secrets["redis_password"], listen)
    cleanup.add("stop Redis", lambda: processes.stop(redis_proc, timeout=10))
    admin_url = pg.url.rsplit("/", 1)[0] + "/proxwatch"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute("create database proxwatch")
    db.migrate(admin_url, tmp / "cli")

    # The simulated fleet on its own address, one server per port.
    cert, key, der = make_cert(str(tmp), name="fleet", hosts=(net.fleet_ip,))
    fingerprint = hashlib.sha256(der).hexdigest()
    base_port = free_range(SERVERS)
    sim_log = tmp / "simpve.log"
    with open(sim_log, "wb") as out:
        sim = processes.spawn([str(HERE / "simpve.py"), "--cert", cert, "--key", key, "--hosts", net.fleet_ip,
                               "--port", str(base_port), "--ports", str(SERVERS), "--latency", str(LATENCY),
                               "--token", TOKEN], dict(os.environ), out)
    cleanup.add("stop the simulated fleet", lambda: processes.stop(sim, timeout=10))
    assert wait_for(lambda: "ready" in sim_log.read_text() or sim.poll() is not None, 60) and sim.poll() is None, \
        sim_log.read_text()
    box = Box(secrets["secret_key"])
    server_ids = []
    with db.connect(admin_url) as conn:
        admin.add_tenant(conn, "bench")
        for i in range(SERVERS):
            row = admin.add_server(conn, box, admin.ServerInput(
                name=f"pve{i:04d}", url=f"https://{net.fleet_ip}:{base_port + i}", token=TOKEN,
                fingerprint=fingerprint, tenant="bench", interval=INTERVAL))
            server_ids.append(str(row["id"]))

    def host_env(n: int) -> dict:
        """What a second machine is given: where the database and the broker are, the credentials' key.
        (PATH, HOME, TMPDIR and PYTHONPATH stand for the machine itself: a shell, a home, the checkout.)"""
        home = tmp / f"h{n}"
        home.mkdir(exist_ok=True)
        gw = net.gateways[n - 1]
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "HOME": str(home), "TMPDIR": str(home), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": f"postgresql://postgres:{secrets['pg_password']}@{gw}:{pg_port}/proxwatch",
                "REDIS_URL": f"redis://:{secrets['redis_password']}@{gw}:{redis_port}/0",
                "PROXWATCH_SECRET_KEY": secrets["secret_key"],
                "PROXWATCH_GUEST_INTERVAL": "3600"}

    hosts = [Host(n, ns, host_env(n), tmp) for n, ns in enumerate(net.namespaces, 1)]
    cleanup.add("stop the hosts' processes", lambda: [h.stop() for h in hosts])
    r = redis.Redis(host="127.0.0.1", port=redis_port, password=secrets["redis_password"])

    def drained() -> bool:
        """No guest sync or certificate check left, waiting in Redis or taken by a worker (workers
        take messages ahead of their threads)."""
        left = r.hlen("dramatiq:inventory.msgs")  # every message not yet acknowledged, wherever it is
        left += sum(1 for _, body in r.hscan_iter("dramatiq:operations.msgs")
                    if b"renew_expiring_certificates" in body)
        return left <= 3   # the fleet-wide jobs (session sweep, purge) may be among them

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(tmp.glob("h*.log")))

    # -- 1. throughput with 1, 2, 3 hosts ----------------------------------------------------------
    throughput = []
    for n, host in enumerate(hosts, 1):
        host.start()
        assert wait_for(host.ready, 60), logs()
        if n == 1:
            assert wait_for(host.leads, 30), logs()
            # Every server's first guest sync and certificate check: once the leader has sent them
            # (its first pass), let them pass before measuring.
            wait_for(lambda: r.hlen("dramatiq:inventory.msgs") + r.hlen("dramatiq:operations.msgs") >= SERVERS, 30)
            assert wait_for(drained, 300, 1), logs()
        time.sleep(SETTLE_S)
        t0 = time.time()
        time.sleep(WINDOW_S)
        t1 = time.time()
        backlog = r.llen("dramatiq:polls")
        conns = host_connections(admin_url, f"{net.prefix}.0.0/16")
        # created_at is when a poll began: let the ones that began in the window finish (two calls).
        time.sleep(4 * LATENCY + 1)
        rows, ok = rows_created(admin_url, t0, t1)
        throughput.append(dict(hosts=n, rate=rows / (t1 - t0), ok=ok, rows=rows, backlog=backlog,
                               load=os.getloadavg()[0], conns=conns))
        print(f"{time.strftime('%H:%M:%S')} {n} host(s): {rows / (t1 - t0):.1f} polls/s "
              f"({ok}/{rows} successful), {backlog} polls queued", flush=True)

    # -- 2. the lock holder killed --------------------------------------------------------------------
    for host in hosts:
        host.stop()
    processes.flush_redis(f"redis://:{secrets['redis_password']}@127.0.0.1:{redis_port}/0")
    kept = server_ids[:KILL_SERVERS]
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute("update proxmox_servers set enabled = (id = any(%s::uuid[]))", (kept,))
    restart = time.time()
    for host in hosts:
        host.start()
    assert wait_for(lambda: all(h.ready() for h in hosts), 60), logs()
    leader = wait_for(lambda: next((h for h in hosts if h.leads()), None), 30)
    assert leader, logs()

    def all_polled_since(t: float) -> bool:
        with psycopg.connect(admin_url) as c:
            return c.execute("select count(distinct server_id) from connection_metrics where scheduled_at >= %s",
                             (datetime.fromtimestamp(t, timezone.utc),)).fetchone()[0] >= len(kept)
    assert wait_for(lambda: all_polled_since(restart) and drained(), 120, 1), logs()
    window_start = float(int(time.time()) + 1)
    time.sleep(window_start + 1.5 * INTERVAL - time.time())
    lock_pttl = r.pttl(LOCK_NAME)
    held = {k.decode().split("__acks__.", 1)[1].rsplit(".", 1)[0]: r.smembers(k)
            for k in r.scan_iter(match="dramatiq:__acks__.*.polls")}
    beats = dict(r.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True))
    t_kill = time.time()
    killed = leader.kill()
    # The killed worker is the consumer whose heartbeat stops (a busy one beats at every fetch).
    time.sleep(6)
    later = dict(r.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True))
    dead = [w for w in held if later.get(w.encode(), 0) <= beats.get(w.encode(), 0)]
    held_ticks = set()
    for w in dead:
        for mid in held[w]:
            body = r.hget("dramatiq:polls.msgs", mid)
            if body is not None:  # poll(sid, at), or poll_batch([[sid, at], …]) (PROXWATCH_POLL_BATCH)
                message = json.loads(body)
                pairs = message["args"][0] if message.get("actor_name") == "poll_batch" else [message["args"]]
                for sid, at in pairs:
                    held_ticks.add((sid, round(datetime.fromisoformat(at).timestamp(), 3)))
    print(f"{time.strftime('%H:%M:%S')} killed {leader.name} (the lock holder): {killed} processes, its worker "
          f"holding {sum(len(held[w]) for w in dead)} poll messages ({len(held_ticks)} polls)", flush=True)
    others = [h for h in hosts if h is not leader]
    new_leader = wait_for(lambda: next((h for h in others if h.leads()), None), 30, 0.1)
    assert new_leader, logs()
    t_lead = next(at for at, state in new_leader.states() if state == "leading" and at >= t_kill - 1)
    time.sleep(max(0.0, t_kill + 3 * INTERVAL - time.time()))
    window_end = time.time() - 1  # a tick is sent within 0.25 s of its time: leave a margin
    for host in others:
        for proc in host.procs[1:]:           # the schedulers stop sending; the workers finish
            processes.stop(proc, timeout=20)
    expected = expected_ticks(kept, INTERVAL, window_start, window_end)

    def complete() -> bool:
        have = {(sid, round(at, 3)) for sid, at, _ in window_rows(admin_url, window_start, window_end)}
        return expected <= have
    waited = time.time()
    wait_for(complete, GRACE_S, 1)
    waited = time.time() - waited

    rows = window_rows(admin_url, window_start, window_end)
    have = {(sid, round(at, 3)) for sid, at, _ in rows}
    delays = [d for _, _, d in rows]
    late = [d for d in delays if d > LATE_S]
    after_kill = [d for _, at, d in rows if t_kill < at <= t_kill + INTERVAL]
    by_tick = {(sid, round(at, 3)): d for sid, at, d in rows}
    held_delays = [by_tick[t] for t in held_ticks if t in by_tick]
    with psycopg.connect(admin_url) as c:
        duplicates = c.execute("select count(*) - count(distinct (server_id, scheduled_at)) from connection_metrics"
                               ).fetchone()[0]
    failover = dict(
        servers=len(kept), leader=leader.name, killed=killed, lock_pttl=lock_pttl,
        held=len(held_ticks), held_in_window=len(held_ticks & expected), held_written=len(held_delays),
        held_p50=pct(held_delays, 50), held_max=max(held_delays, default=float("nan")),
        takeover=t_lead - t_kill, expected=len(expected), written=len(rows), missing=len(expected - have),
        extra=len(have - expected), duplicates=duplicates, p50=pct(delays, 50), p95=pct(delays, 95),
        max=max(delays, default=float("nan")), late=len(late), late_p50=pct(late, 50),
        late_max=max(late, default=float("nan")), over_interval=sum(1 for d in delays if d > INTERVAL),
        after_kill=len(after_kill), after_kill_expected=sum(1 for _, at in expected if t_kill < at <= t_kill + INTERVAL),
        after_kill_p50=pct(after_kill, 50), after_kill_max=max(after_kill, default=float("nan")), waited=waited,
        window=window_end - window_start)

    # -- report ----------------------------------------------------------------------------------------
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    one = throughput[0]["rate"]
    print(f"\n\n=== product HEAD {head}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; run took "
          f"{(time.time() - started) / 60:.1f} min; {os.cpu_count()} CPUs")
    print(f"=== {SERVERS} servers every {INTERVAL} s, {LATENCY * 1000:.0f} ms per PVE call (2 per poll); "
          f"each host: worker --processes 1 --threads {THREADS} + scheduler")
    table("throughput (polls written per second, a {:.0f} s window)".format(WINDOW_S),
          ("hosts", "polls/s", "× one host", "successful", "queued at the end", "Postgres connections",
           "load average"),
          [(t["hosts"], f"{t['rate']:.1f}", f"{t['rate'] / one:.2f}", f"{t['ok']}/{t['rows']}", t["backlog"],
            t["conns"], f"{t['load']:.1f}") for t in throughput])
    per_poll = [t["hosts"] * THREADS / t["rate"] for t in throughput]
    print("\nthread-seconds per poll (hosts × threads / polls per second): "
          + ", ".join(f"{p:.2f}" for p in per_poll)
          + f"; so one process of {THREADS} threads at a {INTERVAL} s interval polls about "
          f"{THREADS * INTERVAL / max(per_poll):.0f}–{THREADS * INTERVAL / min(per_poll):.0f} servers")
    f = failover
    table(f"failover ({f['servers']} servers, 3 hosts; every process of {f['leader']} killed 1.5 intervals into "
          f"a {f['window']:.0f} s window)",
          ("scheduled", "written", "missing", "duplicates", "delay p50", "p95", "max", f"late (> {LATE_S:.0f} s)",
           "late p50", "late max", "> 1 interval"),
          [(f["expected"], f["written"], f["missing"], f["duplicates"], f"{f['p50']:.2f}", f"{f['p95']:.2f}",
            f"{f['max']:.2f}", f["late"], f"{f['late_p50']:.2f}", f"{f['late_max']:.2f}", f["over_interval"])])
    print(f"\nlock holder {f['leader']} (Redis key {LOCK_NAME}, {LOCK_TTL_MS} ms TTL, {f['lock_pttl']} ms left at the "
          f"kill); {f['killed']} processes killed; its worker held {f['held']} polls ({f['held_in_window']} of the "
          f"window: {f['held_written']} written, delay p50 {f['held_p50']:.2f} s, max {f['held_max']:.2f} s); "
          f"a standby led "
          f"{f['takeover']:.1f} s after the kill; polls due in the interval after the kill: "
          f"{f['after_kill']}/{f['after_kill_expected']} written, delay p50 {f['after_kill_p50']:.2f} s, "
          f"max {f['after_kill_max']:.2f} s; waited {f['waited']:.0f} s after the window for the last polls")
    return dict(throughput=throughput, failover=failover)


@pytest.mark.timeout(3600)
def test_hosts():
    out = run()
    f = out["failover"]
    assert f["missing"] == 0 and f["duplicates"] == 0, f
    assert f["takeover"] < INTERVAL, f


if __name__ == "__main__":
    run()
