"""A minimal simulated Proxmox VE API for the fleet benchmark: HTTPS, API-token auth, and only the
two endpoints a poll calls (GET /api2/json/version, GET /api2/json/cluster/status), each answered
after an asyncio.sleep(latency).

    python tests/bench/simpve.py --cert C --key K --hosts 127.0.10.1,127.0.10.2 --port 8006 \
        --latency 0.05 --token 'root@pam!bench=SECRET' [--impl aiohttp|fakepve]

One process per host (address), so the simulator can use more than one core. Prints
"ready <host>:<port>" per host once listening. --impl fakepve serves fakepve's FakePve (with
slow_network(latency)) instead of the minimal app, to compare the two.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
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


async def serve_minimal(host, port, cert, key, latency, token):
    from aiohttp import web

    expected = "PVEAPIToken=" + token

    def handler(body):
        async def handle(request):
            await asyncio.sleep(latency)
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, body=DENIED, content_type="application/json")
            return web.Response(body=body, content_type="application/json")
        return handle

    app = web.Application()
    app.router.add_get("/api2/json/version", handler(VERSION))
    app.router.add_get("/api2/json/cluster/status", handler(STATUS))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=300)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx, backlog=4096).start()
    print(f"ready {host}:{port}", flush=True)
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


def run_one(impl, host, port, cert, key, latency, token):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve = serve_fakepve if impl == "fakepve" else serve_minimal
    try:
        asyncio.run(serve(host, port, cert, key, latency, token))
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
    args = p.parse_args()
    procs = [mp.Process(target=run_one, args=(args.impl, h, args.port, args.cert, args.key, args.latency, args.token))
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
