"""A large simulated fleet for `proxwatch demo --servers N`: N PVE API servers served by ONE aiohttp
app in the demo's event loop, one HTTPS listener per 127.0.x.y address (port 8006), answering only
what the worker calls — GET /version and /cluster/status (a poll), /cluster/resources (the guest
sync), /nodes/{node}/certificates/info (the certificate check) — after a per-server latency.

fakepve (the six characterful servers of demo.py) keeps full state per server, which does not scale
to a thousand; this is the demo's cheap cousin of tests/bench/simpve.py. Each server's character
follows its number, so a restart shows the same fleet:

- most answer in 8–120 ms, one node, online;
- every 11th is a 3-node cluster with a node offline (degraded);
- every 17th drops 30 % of its requests (flaps);
- every 43rd listens nowhere (offline).

They are registered round-robin in tenants demo-north, demo-south and demo-west (so the tenant
filter means something), polled every POLL_INTERVAL_S seconds by the real worker.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass

from worker.embedded.services import EmbeddedError

TENANTS = ("demo-north", "demo-south", "demo-west")
SITES = ("ams", "fra", "lon", "nyc", "sfo", "sgp")
POLL_INTERVAL_S = 30  # 1,000 servers: ~33 polls a second, what two cores carry beside the rest
MAX_SERVERS = 5000
FIRST_OCTET = 80  # 127.0.80.2 … : clear of the characterful six (127.0.77.x)


@dataclass(frozen=True)
class SimServer:
    number: int      # 1-based
    name: str
    tenant: str
    host: str
    latency: float   # seconds
    nodes: int = 1
    offline_nodes: int = 0
    drop_rate: float = 0.0
    serve: bool = True


def plan(count: int) -> list[SimServer]:
    """The fleet of `count` simulated servers (see the module doc); InputError-like sentence when
    count is out of range."""
    if not isinstance(count, int) or not 0 <= count <= MAX_SERVERS:
        raise EmbeddedError(f"--servers must be between 0 and {MAX_SERVERS}, not {count}")
    out = []
    for i in range(1, count + 1):
        host = f"127.0.{FIRST_OCTET + (i - 1) // 250}.{2 + (i - 1) % 250}"
        latency = 0.008 + ((i * 37) % 113) / 1000
        out.append(SimServer(
            number=i, name=f"pve-{SITES[(i - 1) % len(SITES)]}-{i:04d}", tenant=TENANTS[(i - 1) % len(TENANTS)],
            host=host, latency=latency, nodes=3 if i % 11 == 0 else 1, offline_nodes=1 if i % 11 == 0 else 0,
            drop_rate=0.3 if i % 17 == 0 else 0.0, serve=i % 43 != 0))
    return out


def _status_body(sim: SimServer) -> bytes:
    entries = []
    if sim.nodes > 1:
        entries.append({"type": "cluster", "id": "cluster", "name": f"c{sim.number}", "nodes": sim.nodes,
                        "quorate": 1, "version": 3})
    for n in range(1, sim.nodes + 1):
        entries.append({"type": "node", "id": f"node/pve{n}", "name": f"pve{n}", "nodeid": n,
                        "ip": f"192.0.2.{n}", "online": 0 if n > sim.nodes - sim.offline_nodes else 1,
                        "local": int(n == 1), "level": ""})
    return json.dumps({"data": entries}).encode()


VERSION = b'{"data":{"version":"9.1.4","release":"9.1","repoid":"5b9a2c3e"}}'
EMPTY = b'{"data":[]}'
DENIED = b'{"data":null,"message":"authentication failure"}'


class SimFleet:
    """Serve the planned servers in `loop` (a running asyncio loop in another thread)."""

    def __init__(self, servers: list[SimServer], token: str, cert: str, key: str):
        self.servers = servers
        self.expected = "PVEAPIToken=" + token
        self.cert, self.key = cert, key
        self.by_host = {s.host: s for s in servers}
        self.status = {s.host: _status_body(s) for s in servers}
        self.rng = random.Random(11)
        self.runner = None

    def _app(self):
        from aiohttp import web

        def handler(kind: str):
            async def handle(request):
                sim = self.by_host.get(request.transport.get_extra_info("sockname")[0])
                if sim is None:
                    raise web.HTTPNotFound()
                if sim.drop_rate and self.rng.random() < sim.drop_rate:
                    request.transport.abort()  # a flaky link: the connection ends without an answer
                    raise asyncio.CancelledError
                await asyncio.sleep(sim.latency * (0.75 + 0.5 * self.rng.random()))
                if request.headers.get("Authorization") != self.expected:
                    return web.Response(status=401, reason="authentication failure", body=DENIED,
                                        content_type="application/json")
                body = {"version": VERSION, "status": self.status[sim.host]}.get(kind, EMPTY)
                return web.Response(body=body, content_type="application/json")
            return handle

        app = web.Application()
        app.router.add_get("/api2/json/version", handler("version"))
        app.router.add_get("/api2/json/cluster/status", handler("status"))
        app.router.add_get("/api2/json/cluster/resources", handler("resources"))
        app.router.add_get("/api2/json/nodes/{node}/certificates/info", handler("certificates"))
        return app

    async def start(self, port: int) -> None:
        import ssl

        from aiohttp import web

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        self.runner = web.AppRunner(self._app(), access_log=None, keepalive_timeout=300, handle_signals=False,
                                    shutdown_timeout=0.5)
        await self.runner.setup()
        for sim in self.servers:
            if sim.serve:
                try:
                    await web.TCPSite(self.runner, sim.host, port, ssl_context=ctx, backlog=256).start()
                except OSError as exc:
                    await self.runner.cleanup()
                    raise EmbeddedError(f"{sim.host}:{port} is taken ({exc.strerror}): is another demo running?") \
                        from None

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
