"""A minimal simulated Proxmox VE API for the benchmarks: HTTPS, API-token auth, and only the
endpoints the worker calls (GET /version and /cluster/status for a poll, /cluster/resources for the
guest sync, /nodes/{node}/certificates/info for the certificate check), each answered after an
asyncio.sleep(latency).

    python tests/bench/simpve.py --cert C --key K --hosts 127.0.10.1,127.0.10.2 --port 8006 \
        --latency 0.05 --token 'root@pam!bench=SECRET' [--impl aiohttp|fakepve]
    python tests/bench/simpve.py --cert C --key K --alt-cert C2 --alt-key K2 --hosts 127.0.0.1 \
        --port 18000 --ports 200 --faults faults.json --token 'root@pam!bench=SECRET'

One process per host (address), so the simulator can use more than one core. Prints
"ready <host>:<port>" per host once listening. --impl fakepve serves fakepve's FakePve (with
slow_network(latency)) instead of the minimal app, to compare the two.

--ports N serves N consecutive ports from --port on every host: one simulated server per port,
each with its own fault mode. Fault modes (the Faults class; switchable at runtime through the
JSON file --faults, re-read when it changes, or directly when the app runs in-process):

    ok       the normal answer
    401      401 authentication failure (a revoked token)
    500      500 with a PVE error message
    595      595 Errors during connection establishment (a cluster member pveproxy cannot reach)
    hang     no answer for HANG_S seconds (past any client timeout)
    tls      the TLS handshake presents another certificate (--alt-cert); open connections are
             closed when a port enters or leaves this mode, as pveproxy restarts after a change
    html     200 with an HTML page (a proxy or a login portal in the way)
    garbage  200 application/json whose body is not JSON

and `drop`: the probability (0..1) that any request's connection is closed without an answer.
The file: {"drop": 0.3, "modes": {"18000": "html", "18001": "tls"}} (ports not named: ok).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import ssl
import sys

VERSION = b'{"data":{"version":"8.2.4","release":"8.2","repoid":"faa83925c9641325"}}'
STATUS = (b'{"data":[{"type":"cluster","id":"cluster","name":"bench","nodes":3,"quorate":1,"version":3,'
          b'"online":3},'
          b'{"type":"node","id":"node/pve1","name":"pve1","nodeid":1,"ip":"192.0.2.11","online":1,"local":1,'
          b'"level":""},'
          b'{"type":"node","id":"node/pve2","name":"pve2","nodeid":2,"ip":"192.0.2.12","online":1,"local":0,'
          b'"level":""},'
          b'{"type":"node","id":"node/pve3","name":"pve3","nodeid":3,"ip":"192.0.2.13","online":1,"local":0,'
          b'"level":""}]}')
DENIED = b'{"data":null,"message":"authentication failure"}'
RESOURCES = b'{"data":[]}'
CERT_INFO = b'{"data":[]}'
HTML = (b'<!DOCTYPE html><html><head><title>Sign in</title></head>'
        b'<body><form action="/login">Please sign in to continue.</form></body></html>')
GARBAGE = b'{"data":{"version":"8.2.4","rel\x00\xff\xfe garbage'
HANG_S = 60.0
# A version no PVE reports (a NUL inside, then far too long), in well-formed JSON.
ODD_VERSION = b'{"data":{"version":"8.2\\u0000.4' + b"9" * 300 + b'","release":"8.2"}}'
MODES = ("ok", "401", "500", "595", "hang", "tls", "html", "garbage", "oddversion")


class Faults:
    """Fault modes per simulated server (its port) and a drop probability for every request.

    Set `modes` / `drop` directly (in-process), or `watch(path)` a JSON file that another process
    rewrites. `on_change(port, old, new)` is called for every port whose mode changed."""

    def __init__(self):
        self.modes: dict[int, str] = {}
        self.drop = 0.0
        self.on_change = None
        self._rng = random.Random(7)

    def mode(self, port: int) -> str:
        return self.modes.get(port, "ok")

    def set(self, modes: dict[int, str], drop: float = 0.0) -> None:
        for m in modes.values():
            if m not in MODES:
                raise ValueError(f"unknown fault mode {m!r}; known: {', '.join(MODES)}")
        old, self.modes, self.drop = self.modes, dict(modes), float(drop)
        if self.on_change:
            for port in set(old) | set(modes):
                if old.get(port, "ok") != modes.get(port, "ok"):
                    self.on_change(port, old.get(port, "ok"), modes.get(port, "ok"))

    def dropped(self) -> bool:
        return self.drop > 0 and self._rng.random() < self.drop

    def load(self, path: str) -> None:
        with open(path) as fh:
            data = json.load(fh)
        self.set({int(p): m for p, m in (data.get("modes") or {}).items()}, data.get("drop") or 0.0)

    async def watch(self, path: str, every: float = 0.1) -> None:
        """Re-read the file whenever its modification time changes."""
        seen = None
        while True:
            try:
                stamp = os.stat(path).st_mtime_ns
                if stamp != seen:
                    seen = stamp
                    self.load(path)
            except (FileNotFoundError, ValueError):
                pass
            await asyncio.sleep(every)


def _port_of(request) -> int:
    return request.transport.get_extra_info("sockname")[1]


def make_app(token: str, latency: float, faults: Faults, connections: dict[int, set]):
    """The aiohttp app of every simulated server; `connections` collects each port's open transports."""
    from aiohttp import web

    expected = "PVEAPIToken=" + token

    def handler(body):
        async def handle(request):
            port = _port_of(request)
            transport = request.transport
            connections.setdefault(port, set()).add(transport)
            mode = faults.mode(port)
            if faults.dropped():
                transport.abort()  # the connection ends without an answer
                raise asyncio.CancelledError
            await asyncio.sleep(latency)
            if mode == "hang":
                await asyncio.sleep(HANG_S)
            if request.headers.get("Authorization") != expected or mode == "401":
                return web.Response(status=401, reason="authentication failure", body=DENIED,
                                    content_type="application/json")
            if mode == "500":
                return web.Response(status=500, reason="hostname lookup 'pve1' failed",
                                    body=b'{"data":null,"message":"hostname lookup \'pve1\' failed"}',
                                    content_type="application/json")
            if mode == "595":
                reason = "Errors during connection establishment, proxy handshake: No route to host"
                return web.Response(status=595, reason=reason, body=b'{"data":null}',
                                    content_type="application/json")
            if mode == "oddversion" and request.path.endswith("/version"):
                return web.Response(body=ODD_VERSION, content_type="application/json")
            if mode == "html":
                return web.Response(body=HTML, content_type="text/html")
            if mode == "garbage":
                return web.Response(body=GARBAGE, content_type="application/json")
            return web.Response(body=body, content_type="application/json")
        return handle

    app = web.Application()
    app.router.add_get("/api2/json/version", handler(VERSION))
    app.router.add_get("/api2/json/cluster/status", handler(STATUS))
    app.router.add_get("/api2/json/cluster/resources", handler(RESOURCES))
    app.router.add_get("/api2/json/nodes/{node}/certificates/info", handler(CERT_INFO))
    return app


def tls_context(cert, key, alt_cert=None, alt_key=None, faults: Faults | None = None, port: int = 0):
    """The server's TLS context; in fault mode `tls` the handshake switches to the other certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if alt_cert and faults is not None:
        alt = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        alt.load_cert_chain(alt_cert, alt_key)

        def pick(sslobj, server_name, _ctx):  # called for every ClientHello, with or without SNI
            if faults.mode(port) == "tls":
                sslobj.context = alt
        ctx.sni_callback = pick
    return ctx


async def start_minimal(host, ports, cert, key, latency, token, faults: Faults, alt_cert=None, alt_key=None):
    """Serve the app on host at each port; returns the runner (await runner.cleanup() to stop)."""
    from aiohttp import web

    connections: dict[int, set] = {}

    def changed(port, old, new):
        # A certificate change restarts pveproxy: every open connection of that server ends.
        if "tls" in (old, new):
            for transport in connections.pop(port, set()):
                if not transport.is_closing():
                    transport.close()

    faults.on_change = changed
    # A short shutdown_timeout: cleanup() must not wait for hanging handlers.
    runner = web.AppRunner(make_app(token, latency, faults, connections), access_log=None, keepalive_timeout=300,
                           handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    for port in ports:
        ctx = tls_context(cert, key, alt_cert, alt_key, faults, port)
        await web.TCPSite(runner, host, port, ssl_context=ctx, backlog=4096).start()
    return runner


async def serve_minimal(host, ports, cert, key, latency, token, faults_file=None, alt_cert=None, alt_key=None):
    faults = Faults()
    if faults_file:
        asyncio.get_running_loop().create_task(faults.watch(faults_file))
    await start_minimal(host, ports, cert, key, latency, token, faults, alt_cert, alt_key)
    print(f"ready {host}:{ports[0]}", flush=True)
    await asyncio.Event().wait()


async def serve_fakepve(host, port, cert, key, latency, token):
    from fakepve.server import FakePve

    pve = FakePve(host=host, port=port)
    pve.time_scale = 1.0
    pve.slow_network(latency)
    tokenid, _, secret = token.partition("=")
    pve.apitokens[tokenid] = secret
    await pve.start(cert, key)
    print(f"ready {host}:{port}", flush=True)
    while True:
        await asyncio.sleep(5)
        pve.requests.clear()  # it records every request; keep memory flat


def run_one(impl, host, ports, cert, key, latency, token, faults_file=None, alt_cert=None, alt_key=None):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        if impl == "fakepve":
            asyncio.run(serve_fakepve(host, ports[0], cert, key, latency, token))
        else:
            asyncio.run(serve_minimal(host, ports, cert, key, latency, token, faults_file, alt_cert, alt_key))
    except KeyboardInterrupt:
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--hosts", default="127.0.10.1")
    p.add_argument("--port", type=int, default=8006)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--token", required=True, help="USER@REALM!TOKENID=SECRET")
    p.add_argument("--impl", choices=("aiohttp", "fakepve"), default="aiohttp")
    p.add_argument("--ports", type=int, default=1, help="servers per host: consecutive ports from --port")
    p.add_argument("--faults", help="JSON file of fault modes, re-read when it changes (aiohttp only)")
    p.add_argument("--alt-cert", help="the certificate presented in fault mode tls")
    p.add_argument("--alt-key")
    args = p.parse_args()
    ports = list(range(args.port, args.port + args.ports))
    procs = [mp.Process(target=run_one, args=(args.impl, h, ports, args.cert, args.key, args.latency, args.token,
                                              args.faults, args.alt_cert, args.alt_key))
             for h in args.hosts.split(",")]
    for proc in procs:
        proc.start()

    def stop(*_):
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
