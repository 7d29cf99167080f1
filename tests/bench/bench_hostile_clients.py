"""Benchmark — hostile clients against the embedded Realtime and the console gateway: what one
socket or one user costs the server and the other users. Each attack runs against the code of this
tree and, when BENCH_BASELINE_ROOT names another checkout (e.g. main), against that one too, in
the same run and the same database, the servers as their own processes (as `proxwatch up` runs them):

1. Stand-in, a client that never reads: up to 600 frames of ~1 MB, (a) a topic of ~1 MB echoed by
   each reply, (b) a join of 100 bindings of ~10 KB, echoed by its reply. Reported: frames the
   stand-in took before it dropped the client, and its memory growth (VmRSS, VmHWM).
2. Stand-in, one user's 10,000 `id=eq.N` bindings (100 channels × 100): the latency of another
   tenant's changes (commit → that user's socket), p50 / p90 over 20 changes, before and during.
3. Gateway, a shell that does not read (`stty raw -echo; exec sleep`): up to 300 input frames of
   ~1 MiB. Reported: frames the gateway took before it stopped reading, and its memory growth.

Measured 2026-11-30 on the shared 2-core machine, main (baseline) and this tree in one run:

    baseline  | stand-in, topic echo | took 600/600 frames of 1.00 MB | RSS + 585.5 MiB, peak  649.2 MiB
    baseline  | stand-in, join echo  | took 600/600 frames of 0.99 MB | RSS + 924.4 MiB, peak  988.2 MiB
    baseline  | stand-in, latency    | other tenant p50/p90 3.3/5.7 ms alone, 790.6/981.2 ms beside 10000 bindings
    baseline  | gateway, SSH shell   | took 300/300 frames of 1 MiB | RSS + 307.3 MiB, peak  382.5 MiB
    this tree | stand-in, topic echo | took 600/600 frames of 1.00 MB | RSS +   3.1 MiB, peak   71.4 MiB
    this tree | stand-in, join echo  | took  21/600 frames of 0.99 MB | RSS +  20.3 MiB, peak   84.5 MiB
    this tree | stand-in, latency    | other tenant p50/p90 5.7/12.6 ms alone, 21.9/34.7 ms beside 1000 bindings
    this tree | gateway, SSH shell   | took   9/300 frames of 1 MiB | RSS +   6.5 MiB, peak   81.6 MiB

("topic echo" on this tree: the socket is closed (1008) at the first frame; the client, which does
not read, never sees the close, and its later frames go nowhere — hence 600 "taken" for +3 MiB.
The attacker's 100 channels of 100 bindings: 10 were accepted, the other 90 refused by the
1,000-per-user cap.)

Run by hand (never part of `make test`):

    PYTHONPATH=. BENCH_BASELINE_ROOT=/path/to/main python3 -m pytest tests/bench/bench_hostile_clients.py -s -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import psycopg
import websockets
from psycopg.rows import dict_row

from tests.support.processes import ROOT
from tests.support.seed import ALICE, BOB, add_ssh_access, call, seed_fleet
from tests.support.standin import sign_in
from tests.support.waiting import free_port, wait_for_http, wait_for_port
from worker import consoles
from worker.embedded.standin import make_keys

STALL_S = 10          # a send blocked this long: the server stopped reading the client
MB = 1_000_000


def memory(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def roots() -> list[tuple[str, Path]]:
    out = [("this tree", ROOT)]
    if os.environ.get("BENCH_BASELINE_ROOT"):
        out.insert(0, ("baseline", Path(os.environ["BENCH_BASELINE_ROOT"]).resolve()))
    return out


class StandIn:
    """`python -m worker.embedded.standin` of one checkout."""

    def __init__(self, root: Path, db_url: str, jwt_secret: str, log: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.anon_key = make_keys(jwt_secret)["anon_key"]
        env = {**os.environ, "DATABASE_URL": db_url, "PROXWATCH_JWT_SECRET": jwt_secret,
               "PROXWATCH_SUPABASE_PORT": str(self.port), "PYTHONPATH": str(root)}
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.embedded.standin"], cwd=root, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_http(f"{self.url}/auth/v1/health", 60, proc=self.proc, log=log, name="the stand-in")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1/websocket?apikey={self.anon_key}&vsn=1.0.0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def flood(url: str, frame: str, count: int, **connect) -> int:
    """Send `frame` up to `count` times without reading; the number the server took."""
    sent = 0
    try:
        async with websockets.connect(url, max_size=None, **connect) as ws:
            ws.transport.pause_reading()
            for sent in range(count):
                await asyncio.wait_for(ws.send(frame), STALL_S)
            sent = count
    except (asyncio.TimeoutError, websockets.ConnectionClosed, ConnectionError, OSError):
        pass
    return sent


def attack_frames() -> dict[str, str]:
    filt = "x" * 9_800
    return {
        "topic echo": json.dumps({"topic": "realtime:" + "t" * (MB - 200), "event": "x", "payload": {}, "ref": "1"}),
        "join echo": json.dumps({"topic": "realtime:echo", "event": "phx_join", "ref": "1", "payload": {"config": {
            "postgres_changes": [{"event": "*", "schema": "public", "table": "connection_metrics", "filter": filt}]
            * 100}}}),
    }


class Sub:
    """A raw Phoenix socket subscribed to some bindings."""

    def __init__(self, url: str):
        self.url, self.ref = url, 0

    async def open(self):
        self.ws = await websockets.connect(self.url, max_size=None)
        return self

    async def send(self, topic, event, payload):
        self.ref += 1
        await self.ws.send(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": str(self.ref)}))

    async def join(self, topic, token, bindings):
        await self.send(f"realtime:{topic}", "phx_join", {"config": {"postgres_changes": bindings},
                                                          "access_token": token})


async def latency(db_url: str, server_id: str, sub: Sub, n: int = 20) -> list[float]:
    out = []
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for _ in range(n):
            start = time.perf_counter()
            await conn.execute("insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success)"
                               " select id, tenant_id, %s, true from public.proxmox_servers where id = %s",
                               (datetime.now(timezone.utc), server_id))
            while True:
                frame = json.loads(await asyncio.wait_for(sub.ws.recv(), 60))
                if frame["event"] == "postgres_changes":
                    break
            out.append((time.perf_counter() - start) * 1000)
    return out


async def noisy_neighbour(standin: StandIn, db_url: str, fleet) -> dict:
    alice, bob = sign_in(standin, ALICE), sign_in(standin, BOB)
    victim = await Sub(standin.ws_url).open()
    server = fleet.servers["pve-gamma"]  # globex's: bob sees it, alice does not
    await victim.join("victim", bob, [{"event": "INSERT", "schema": "public", "table": "connection_metrics",
                                       "filter": f"server_id=eq.{server}"}])
    while json.loads(await asyncio.wait_for(victim.ws.recv(), 60))["event"] != "system":
        pass
    before = await latency(db_url, server, victim)
    attacker = await Sub(standin.ws_url).open()
    for c in range(100):
        await attacker.join(f"a{c}", alice, [{"event": "*", "schema": "public", "table": "connection_metrics",
                                               "filter": f"id=eq.{c * 100 + i + 1}"} for i in range(100)])
    answered, accepted, started = 0, 0, time.perf_counter()
    while answered < 100:
        frame = json.loads(await asyncio.wait_for(attacker.ws.recv(), 300))
        if frame["event"] == "phx_reply" and frame["payload"]["status"] == "error":
            answered += 1
        elif frame["event"] == "system":
            answered += 1
            accepted += frame["payload"]["status"] == "ok"
    subscribed_s = time.perf_counter() - started
    attacker.ws.transport.pause_reading()  # it does not even read: its changes queue up (bounded)
    during = await latency(db_url, server, victim)
    await attacker.ws.close()
    await victim.ws.close()
    return {"before": before, "during": during, "bindings": accepted * 100, "subscribe_s": subscribed_s}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def test_hostile_clients(db_url, pw_secrets, pw_home, secret_key, sshd, tmp_path):
    fleet = seed_fleet(db_url, secret_key)
    report: list[str] = []
    for label, root in roots():
        # 1. A client that never reads, flooding the stand-in.
        for name, frame in attack_frames().items():
            standin = StandIn(root, db_url, pw_secrets["jwt_secret"], tmp_path / f"standin-{label}-{name}.log")
            try:
                mem0 = memory(standin.proc.pid)
                sent = asyncio.run(flood(standin.ws_url, frame, 600))
                mem1 = memory(standin.proc.pid)
            finally:
                standin.stop()
            report.append(f"{label:9} | stand-in, {name:10} | took {sent:3}/600 frames of {len(frame) / MB:.2f} MB |"
                          f" RSS +{(mem1['VmRSS'] - mem0['VmRSS']) / 2**20:6.1f} MiB, peak {mem1['VmHWM'] / 2**20:6.1f} MiB")
            print(report[-1], flush=True)
        # 2. One user's 10,000 bindings, another tenant's latency.
        standin = StandIn(root, db_url, pw_secrets["jwt_secret"], tmp_path / f"standin-{label}-latency.log")
        try:
            r = asyncio.run(noisy_neighbour(standin, db_url, fleet))
        finally:
            standin.stop()
        report.append(f"{label:9} | stand-in, latency    | other tenant p50/p90 {statistics.median(r['before']):.1f}/"
                      f"{pct(r['before'], 90):.1f} ms alone, {statistics.median(r['during']):.1f}/{pct(r['during'], 90):.1f}"
                      f" ms beside {r['bindings']} bindings (subscribed in {r['subscribe_s']:.1f} s)")
        print(report[-1], flush=True)
        # 3. A shell that does not read, through the gateway.
        report.append(gateway_attack(label, root, db_url, secret_key, sshd, fleet, tmp_path))
        print(report[-1], flush=True)
    print("\n" + "\n".join(report))


def gateway_attack(label: str, root: Path, db_url: str, secret_key: str, sshd, fleet, tmp_path) -> str:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        server = fleet.servers["pve-alpha"]
        conn.execute("delete from public.server_ssh_credentials")
        add_ssh_access(conn, secret_key, server, sshd, sshd["host_key"])
        alice = conn.execute("select id from auth.users where email = %s", (ALICE[0],)).fetchone()["id"]
        token = call(conn, str(alice), "select public.request_console(%s, 'ssh', null, 'pve1') as r",
                     (server,), many=False)["r"]["token"]
    port = free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": "redis://127.0.0.1:1/0", "PROXWATCH_SECRET_KEY": secret_key,
           "PROXWATCH_GATEWAY_PORT": str(port), "PROXWATCH_GATEWAY_PING_S": "600", "PYTHONPATH": str(root)}
    log = open(tmp_path / f"gateway-{label}.log", "w")
    gateway = subprocess.Popen([sys.executable, "-m", "worker.gateway"], cwd=root, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 30, proc=gateway, name="the gateway")
        frame = consoles.term_input("x" * ((1 << 20) - 64))

        async def attack() -> tuple[int, dict, dict]:
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(f"ws://127.0.0.1:{port}/ws?token={token}", max_msg_size=0) as ws:
                    assert json.loads((await ws.receive(timeout=30)).data)["type"] == "ready"
                    await ws.send_str(consoles.term_input("stty raw -echo; echo READ''Y; exec sleep 600\r"))
                    seen = b""
                    while b"READY" not in seen:
                        seen += (await ws.receive(timeout=30)).data
                    mem0 = memory(gateway.pid)
                    sent = 0
                    try:
                        for sent in range(300):
                            await asyncio.wait_for(ws.send_str(frame), STALL_S)
                        sent = 300
                    except (asyncio.TimeoutError, ConnectionError, aiohttp.ClientError):
                        pass
                    return sent, mem0, memory(gateway.pid)

        sent, mem0, mem1 = asyncio.run(attack())
    finally:
        gateway.terminate()
        gateway.wait(30)
        log.close()
    return (f"{label:9} | gateway, SSH shell   | took {sent:3}/300 frames of 1 MiB | RSS "
            f"+{(mem1['VmRSS'] - mem0['VmRSS']) / 2**20:6.1f} MiB, peak {mem1['VmHWM'] / 2**20:6.1f} MiB")
