"""The console gateway as `python -m worker.gateway` runs it, but on its own event loop in a thread
of the test process (so a test can stop it, or read its state)."""

from __future__ import annotations

import asyncio
import json
import threading

from websockets.sync.client import connect as ws_connect

from tests.support.seed import call
from tests.support.waiting import free_port
from worker.gateway.app import GatewayConfig, start


class RunningGateway:
    """The gateway on its own event loop in a thread (as `python -m worker.gateway` runs it)."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.gateway = asyncio.run_coroutine_threadsafe(start(config), self.loop).result(30)
        self.url = f"http://127.0.0.1:{config.port}"

    def ws(self, token: str):
        return ws_connect(f"ws://127.0.0.1:{self.config.port}/ws?token={token}", open_timeout=10, max_size=None)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_gateway(db_url: str, secret_key: str, **kw) -> RunningGateway:
    """A started gateway on a free port, for the database and key of one test."""
    return RunningGateway(GatewayConfig(database_url=db_url, secret_key=secret_key, port=free_port(), **kw))


def console_token(uconn, fleet, user="olga", protocol="vnc", vmid=100, node=None) -> str:
    """A console link's token as the dashboard asks for it (request_console as that user)."""
    return call(uconn, fleet.users[user], "select public.request_console(%s, %s, %s, %s) as r",
                (fleet.servers["pve1"], protocol, vmid, node), many=False)["r"]["token"]


def session_rows(conn) -> list[dict]:
    """The session registry, oldest first (a fresh transaction: what the gateway committed)."""
    conn.rollback()
    return conn.execute("select id, status, close_reason, protocol, target, host(client_ip) as ip, user_email"
                        " from public.connection_sessions order by started_at").fetchall()


def ready(ws) -> dict:
    """The gateway's first message on a console WebSocket, which must be "ready"."""
    first = json.loads(ws.recv(timeout=15))
    assert first["type"] == "ready", first
    return first
