"""The simulated fleet of `proxwatch demo`: fakepve servers (a third-party fake PVE API over real
HTTPS, an optional extra) with different behaviour, registered in tenant "demo".

At its first start the demo backfills 30 days of simulated history for these servers
(backfill_history: hourly and daily rollups, the last hours as raw polls, incidents for the
outages), consistent with each one's character below, so charts, uptime figures and incidents are
full from the first page. It is marked as simulated: proxmox_servers.history_simulated_until is the
end of the simulation, and fleet_overview() returns it. Everything after that time comes from real
polls of these servers.

- pve-lab      healthy, ~15 ms, API token, pinned certificate fingerprint
- pve-colo     healthy but far away (~180 ms), password login
- pve-cluster  a 3-node cluster with one node offline → degraded
- pve-branch   a flaky link: 40 % of requests are dropped → flaps, degraded
- pve-remote   primary address refuses; answers on its fallback (Tailscale-like) address → degraded
- pve-old      nothing answers → offline after three polls (simulated: an outage last week, and
               down since shortly before the demo started)

`proxwatch demo --servers N` adds N more (worker/embedded/simfleet.py: one light simulator for all of
them, in tenants demo-north / demo-south / demo-west).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from worker import admin, db, runtime
from worker.crypto import Box
from worker.embedded.services import EmbeddedError, port_in_use

TENANT = "demo"
TOKEN = ("root@pam", "proxwatch", "demo-token-secret")
PORT = 8006


@dataclass
class Sim:
    name: str
    host: str
    latency: float = 0.0
    drop_rate: float = 0.0
    offline_nodes: int = 0
    nodes: int = 1
    password: bool = False
    serve: bool = True
    fallback_of: str | None = None  # this sim is the fallback address of that server


SIMS = [
    Sim("pve-lab", "127.0.77.2", latency=0.006),
    Sim("pve-colo", "127.0.77.3", latency=0.09, password=True),
    Sim("pve-cluster", "127.0.77.4", latency=0.02, nodes=3, offline_nodes=1),
    Sim("pve-branch", "127.0.77.5", latency=0.03, drop_rate=0.4),
    Sim("pve-remote", "127.0.77.6", serve=False),
    Sim("pve-remote-fallback", "127.0.77.7", latency=0.04, fallback_of="pve-remote"),
    Sim("pve-old", "127.0.77.8", serve=False),
]


# Guests of every simulated server (the Guests page, consoles through the gateway): vmid, name,
# type, status, tags. Their VNC consoles show demo_screen().
DEMO_GUESTS = [(100, "web", "qemu", "running", "prod;web"), (101, "db", "qemu", "running", "prod"),
               (102, "build", "qemu", "stopped", "ci"), (200, "dns", "lxc", "running", "infra"),
               (201, "proxy", "lxc", "running", "infra;web"), (202, "old-wiki", "lxc", "stopped", "")]


def demo_screen(width: int = 640, height: int = 400) -> tuple[int, int, bytes]:
    """A framebuffer for the simulated VNC consoles: a diagonal colour gradient (RGB bytes)."""
    rows = []
    for y in range(height):
        rows.append(bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 160)))
    return width, height, b"".join(rows)


def add_demo_guests(pve) -> None:
    screen = demo_screen()
    for vmid, name, kind, status, tags in DEMO_GUESTS:
        config = {"tags": tags} if tags else {}
        if kind == "qemu":
            vm = pve.add_vm(vmid, name, status=status, config={**config, "memory": 2048, "cores": 2})
            vm.screen = screen
        else:
            pve.add_ct(vmid, name, status=status, config=config or None)


class DemoFleet:
    def __init__(self, home: Path, extra: int = 0):
        from worker.embedded import simfleet

        self.home = home
        self.extra = simfleet.plan(extra)  # the --servers N beyond the six (checked before anything starts)
        self.sim = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-fleet", daemon=True)
        self.pves: dict[str, object] = {}
        self.fingerprint = ""

    def _cert(self) -> tuple[str, str]:
        """One certificate for every simulated server, kept so pinned fingerprints stay valid."""
        from fakepve.certs import make_cert

        crt, key = self.home / "fakepve.crt", self.home / "fakepve.key"
        if not crt.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            make_cert(str(self.home), hosts=tuple(s.host for s in SIMS))
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        der = x509.load_pem_x509_certificate(crt.read_bytes()).public_bytes(Encoding.DER)
        digest = hashlib.sha256(der).hexdigest().upper()
        self.fingerprint = ":".join(digest[i:i + 2] for i in range(0, 64, 2))
        return str(crt), str(key)

    def start(self) -> None:
        # The flaky link drops connections on purpose; aiohttp would print a traceback for each.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        try:
            from fakepve import FakePve
        except ImportError:
            raise EmbeddedError("the demo needs fakepve: pip install -e '.[demo]' (make demo does)") from None
        crt, key = self._cert()
        self.thread.start()
        for sim in SIMS:
            if not sim.serve:
                continue
            if port_in_use(PORT, sim.host):
                raise EmbeddedError(f"{sim.host}:{PORT} is taken: is another demo running?")
            pve = FakePve(user="root@pam", password="demo-password", host=sim.host, port=PORT)
            pve.apitokens[f"{TOKEN[0]}!{TOKEN[1]}"] = TOKEN[2]
            pve.version, pve.release_version = "9.1.4", "9.1"
            pve.time_scale = 1.0  # latencies in real seconds (fakepve's default 0 makes them instant)
            for n in range(2, sim.nodes + 1):
                pve.add_node(f"pve{n}", online=n > sim.nodes - sim.offline_nodes)
            add_demo_guests(pve)
            if sim.latency:
                pve.slow_network(sim.latency, jitter=sim.latency / 2)
            if sim.drop_rate:
                pve.flaky_network(drop_rate=sim.drop_rate)
            asyncio.run_coroutine_threadsafe(pve.start(crt, key), self.loop).result(30)
            self.pves[sim.name] = pve
        if self.extra:
            from worker.embedded.simfleet import SimFleet

            self.sim = SimFleet(self.extra, f"{TOKEN[0]}!{TOKEN[1]}={TOKEN[2]}", crt, key)
            asyncio.run_coroutine_threadsafe(self.sim.start(PORT), self.loop).result(120)

    def stop(self) -> None:
        if self.sim is not None:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        for pve in self.pves.values():
            asyncio.run_coroutine_threadsafe(pve.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def register(self, conn: psycopg.Connection, ep: runtime.Endpoints) -> list[str]:
        """Put the simulated servers in tenant "demo" (again on every start: the fingerprint and
        addresses are the demo's own)."""
        box = Box(ep.secret_key)
        if not conn.execute(db.q("tenant_by_name"), {"name": TENANT}).fetchone():
            admin.add_tenant(conn, TENANT)
        existing = {r["name"] for r in admin.list_servers(conn, TENANT)}
        fallbacks = {s.fallback_of: s for s in SIMS if s.fallback_of}
        names = []
        for sim in SIMS:
            if sim.fallback_of:
                continue
            names.append(sim.name)
            if sim.name in existing:
                continue
            fb = fallbacks.get(sim.name)
            spec = admin.ServerInput(name=sim.name, url=f"https://{sim.host}:{PORT}", tenant=TENANT, interval=5,
                                     fingerprint=self.fingerprint,
                                     fallback_url=f"https://{fb.host}:{PORT}" if fb else None)
            if sim.password:
                spec.user, spec.password = "root@pam", "demo-password"
            else:
                spec.token = f"{TOKEN[0]}!{TOKEN[1]}={TOKEN[2]}"
            admin.add_server(conn, box, spec)
        return names + self._register_extra(conn, box)

    def _register_extra(self, conn: psycopg.Connection, box: Box) -> list[str]:
        """The --servers N simulated servers, in their tenants (those missing are added)."""
        from worker.embedded.simfleet import POLL_INTERVAL_S

        existing: set[tuple[str, str]] = set()
        for tenant in sorted({sim.tenant for sim in self.extra}):
            if not conn.execute(db.q("tenant_by_name"), {"name": tenant}).fetchone():
                admin.add_tenant(conn, tenant)
            existing |= {(tenant, r["name"]) for r in admin.list_servers(conn, tenant)}
        for sim in self.extra:
            if (sim.tenant, sim.name) in existing:
                continue
            admin.add_server(conn, box, admin.ServerInput(
                name=sim.name, url=f"https://{sim.host}:{PORT}", tenant=sim.tenant, interval=POLL_INTERVAL_S,
                fingerprint=self.fingerprint, token=f"{TOKEN[0]}!{TOKEN[1]}={TOKEN[2]}"))
        return [sim.name for sim in self.extra]


# The simulated history of each server: share of polls answered, typical latency (ms), and the
# error of a failed poll; outages as (start, end) offsets before the end of the simulation in hours
# (end None: still down when the simulation ends).
HISTORY = {
    "pve-lab": dict(ok=1.0, ms=15),
    "pve-colo": dict(ok=1.0, ms=180),
    "pve-cluster": dict(ok=1.0, ms=40),
    "pve-branch": dict(ok=0.6, ms=60, kind="network", message="Connection reset by peer (flaky link)"),
    "pve-remote": dict(ok=1.0, ms=80),
    "pve-old": dict(ok=1.0, ms=25, outages=[(7 * 24 + 3, 7 * 24 - 2), (2, None)]),
}
OUTAGE = ("refused", "Connection refused: nothing listens on port 8006")
HISTORY_DAYS = 30
RAW_HOURS = 6   # the most recent hours as raw polls (every 5 s); older ones as rollups only


def backfill_history(conn: psycopg.Connection, days: int = HISTORY_DAYS, raw_hours: int = RAW_HOURS,
                     until: datetime | None = None) -> list[str]:
    """Simulated history for the demo servers that have none yet; returns their names.

    1. claim the demo servers without history_simulated_until (locked: a second start waits, then
       finds them marked and backfills nothing);
    2. hours older than `raw_hours` straight into the hourly rollup, their days into the daily one;
    3. the recent hours as raw polls every 5 s (the rollup trigger counts them);
    4. the outages as incidents; mark the servers simulated up to `until` (now), all in one
       transaction.
    """
    until = (until or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
    raw_from = until.replace(minute=0) - timedelta(hours=raw_hours)
    since = (until - timedelta(days=days)).replace(hour=0, minute=0)
    servers = {r["name"]: r for r in admin.list_servers(conn, TENANT) if r["name"] in HISTORY}
    ids = [str(r["id"]) for r in servers.values()]
    claimed = {str(r["id"]) for r in conn.execute(db.q("demo_claim_backfill"), {"ids": ids}).fetchall()}
    todo = {name: str(r["id"]) for name, r in servers.items() if str(r["id"]) in claimed}
    if not todo:
        conn.rollback()
        return []
    profiles, outages = [], []
    for name, sid in todo.items():
        h = HISTORY[name]
        profiles.append({"server_id": sid, "ok": h["ok"], "ms": h["ms"], "kind": h.get("kind", "timeout"),
                         "message": h.get("message", "no answer")})
        for start, end in h.get("outages", []):
            outages.append({"server_id": sid, "kind": OUTAGE[0], "message": OUTAGE[1],
                            "from": (until.replace(minute=0) - timedelta(hours=start)).isoformat(),
                            "to": None if end is None else (until.replace(minute=0) - timedelta(hours=end)).isoformat()})
    args = {"profiles": json.dumps(profiles), "outages": json.dumps(outages), "since": since, "raw_from": raw_from,
            "until": until, "ids": list(todo.values())}
    for step in ("demo_backfill_hourly", "demo_backfill_raw", "demo_backfill_incidents", "demo_mark_simulated"):
        conn.execute(db.q(step), args)
    conn.commit()
    return sorted(todo)
