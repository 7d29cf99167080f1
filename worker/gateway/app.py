"""The console gateway's aiohttp application.

Steps of a console (Gateway.console_socket):
1. take the single-use token (console_token(token, consume)): who, which server, guest or node;
2. refuse early when a limit is reached already (session_capacity), before asking PVE anything;
3. request the PVE ticket with the server's stored credentials and audit it (console.ticket.issue),
   open PVE's vncwebsocket — or, for ssh, an SSH shell trusting the node's pinned host key;
4. register the session (open_session: the limits, atomically) — a refusal closes the tunnel and
   the browser shows the sentence;
5. pipe bytes both ways until either side ends, the session is killed or expires, or the gateway
   stops; then close the registry row with the reason (close_session).

Backpressure, so a session holds a bounded amount of memory whoever is slow: a browser frame is at
most MAX_BROWSER_FRAME (bigger: closed with 1009 and a sentence, before it is read whole); each
frame is written to the upstream and its drain awaited (SSH: the channel's write buffer; PVE: the
WebSocket's) before the next is read, so a side that does not read pauses the other's reading
(aiohttp stops reading the socket), and TCP pushes back to the sender.

Two background loops serve every session of this process: a kill watch every second (one query for
all of them) and a heartbeat every 30 s (one statement for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import consoles, db
from worker.crypto import Box, SecretKeyError
from worker.errors import ProxwatchError
from worker.gateway import pages, proxies
from worker.gateway.upstream import Opener
from worker.sessions import HEARTBEAT_S, RegistryError, Registry, SessionRefused, TokenError
from worker.settings import VARS, Settings

log = logging.getLogger("proxwatch.gateway")
ROOT = Path(__file__).resolve().parents[2]
STATIC = {"novnc": ROOT / "node_modules" / "@novnc" / "novnc",
          "xterm": ROOT / "node_modules" / "@xterm" / "xterm",
          "xterm-fit": ROOT / "node_modules" / "@xterm" / "addon-fit"}

# WebSocket close codes the pages understand (4000–4999 are the application's).
CLOSE_NORMAL, CLOSE_GOING_AWAY = 1000, 1001
CLOSE_KILLED, CLOSE_EXPIRED, CLOSE_SERVER_ENDED, CLOSE_REFUSED, CLOSE_FAILED = 4001, 4002, 4003, 4429, 4502
CLOSE_TOO_BIG = 1009
# Keystrokes, pastes, resizes and VNC input are small; a paste of a whole file is still far under it.
MAX_BROWSER_FRAME = 1 << 20
TOO_BIG = "the browser sent a frame over 1 MiB: a console frame is at most 1 MiB"
UPSTREAM_WATCH_S = 1.0


GC_THRESHOLDS = (50_000, 50, 1000)


class GatewayError(ProxwatchError):
    """The gateway cannot start."""


@dataclass
class GatewayConfig:
    database_url: str
    secret_key: str
    host: str = "127.0.0.1"
    port: int = 8765
    ca_file: str | None = None          # extra CA bundle for servers in verify mode (tests)
    ping_s: float = 30.0                # WebSocket ping to the browser; no pong within half of it: gone
    heartbeat_s: float = HEARTBEAT_S
    kill_poll_s: float = 1.0
    trust_proxy: bool = False           # take the client IP from X-Forwarded-For (behind a proxy only)
    trusted_proxies: tuple = VARS["PROXWATCH_GATEWAY_TRUSTED_PROXIES"].default  # whose X-Forwarded-For to believe
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, s: Settings, database_url: str, secret_key: str) -> "GatewayConfig":
        g = s.gateway
        return cls(database_url=database_url, secret_key=secret_key, host=g.host, port=g.port, ping_s=g.ping_s,
                   heartbeat_s=g.heartbeat_s, trust_proxy=g.trust_proxy, trusted_proxies=g.trusted_proxies,
                   ca_file=s.pve_ca_file)


class BrowserSocket(web.WebSocketResponse):
    """aiohttp closes on a frame over max_msg_size with 1009 and no reason: the page gets a sentence."""

    async def close(self, *, code: int = CLOSE_NORMAL, message: bytes = b"", drain: bool = True) -> bool:
        if code == CLOSE_TOO_BIG and not message:
            message = TOO_BIG.encode()
        return await super().close(code=code, message=message, drain=drain)


class Bridge:
    """One open console: the browser's WebSocket and the upstream, piped both ways."""

    def __init__(self, session_id: str, ws: web.WebSocketResponse, upstream):
        self.session_id = session_id
        self.ws = ws
        self.upstream = upstream
        self.reason: str | None = None
        self.code = CLOSE_NORMAL
        self._tasks: list[asyncio.Task] = []

    async def _browser_to_upstream(self) -> str:
        ws, up = self.ws, self.upstream
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                # Returns once the upstream took it: the next frame waits.
                if not await self._to_upstream(msg):
                    return f"the browser stopped answering while the {up.kind} side was not reading its input"
            elif msg.type == aiohttp.WSMsgType.ERROR:
                break
        error = ws.exception()
        if isinstance(error, aiohttp.WebSocketError) and error.code == CLOSE_TOO_BIG:
            self.code = CLOSE_TOO_BIG
            return TOO_BIG
        if isinstance(ws.exception(), (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return "the browser stopped answering"
        return "the browser closed the console"

    async def _to_upstream(self, msg: aiohttp.WSMessage) -> bool:
        """Send to the upstream; False when the browser went away meanwhile. While the upstream is
        full nothing reads the browser's socket (not even its pongs), so the heartbeat ends the
        WebSocket, and that is watched here rather than waiting for a drain that may never come."""
        send = asyncio.ensure_future(self.upstream.send(msg))
        try:
            while True:
                done, _ = await asyncio.wait({send}, timeout=UPSTREAM_WATCH_S)
                if done:
                    send.result()
                    return True
                if self.ws.closed:
                    return False
        finally:
            if not send.done():
                send.cancel()

    async def _upstream_to_browser(self) -> str:
        ws, up = self.ws, self.upstream
        while True:
            data = await up.receive()
            if data is None:
                break
            await ws.send_bytes(data)
        self.code = CLOSE_SERVER_ENDED
        return f"the {up.kind} side ended the console"

    async def run(self) -> str:
        """Pipe until one side ends or terminate() is called; returns the reason."""
        self._tasks = [asyncio.create_task(self._browser_to_upstream()),
                       asyncio.create_task(self._upstream_to_browser())]
        done, pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        reason = self.reason
        for task in done:
            if reason is None and not task.cancelled():
                exc = task.exception()
                reason = f"the console failed: {exc}" if exc else task.result()
        reason = reason or "the console ended"
        with contextlib.suppress(Exception):
            await self.upstream.close()
        with contextlib.suppress(Exception):
            await self.ws.close(code=self.code, message=reason.encode()[:120])
        await asyncio.gather(*pending, return_exceptions=True)
        return reason

    def terminate(self, reason: str, code: int) -> None:
        """End the console from outside (killed, expired, gateway stopping)."""
        if self.reason is None:
            self.reason, self.code = reason, code
        for task in self._tasks:
            task.cancel()


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.gateway_id = f"{socket.gethostname()}:{os.getpid()}"
        self.pool: AsyncConnectionPool | None = None
        self.registry: Registry | None = None
        self.opener: Opener | None = None
        self.bridges: dict[str, Bridge] = {}
        self._handlers: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        try:
            self.box = Box(config.secret_key)
        except SecretKeyError as exc:
            raise GatewayError(str(exc)) from None
        missing = [name for name, path in STATIC.items() if not path.is_dir()]
        if missing:
            raise GatewayError("the console pages need noVNC and xterm.js from npm: run `npm install` in the "
                               f"project root (missing: {', '.join(missing)})")

    # -- application ---------------------------------------------------------------------------
    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/console", self.console_page)
        app.router.add_get("/ws", self.console_socket)
        for name, path in STATIC.items():
            app.router.add_static(f"/static/{name}", path, follow_symlinks=False)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app) -> None:
        self.pool = AsyncConnectionPool(self.config.database_url, min_size=2, max_size=10, open=False,
                                        kwargs={"row_factory": dict_row, "autocommit": True})
        await self.pool.open(wait=True, timeout=30)
        self.registry = Registry(self.pool, self.gateway_id)
        self.opener = Opener(self.box, self.config.ca_file, self.config.timeout_s)
        await self.opener.start()
        self._loops = [asyncio.create_task(self._kill_watch()), asyncio.create_task(self._heartbeats())]

    async def _shutdown(self, _app) -> None:
        for bridge in list(self.bridges.values()):
            bridge.terminate("the console gateway stopped", CLOSE_GOING_AWAY)
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=10)

    async def _cleanup(self, _app) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.opener:
            await self.opener.close()
        if self.pool:
            await self.pool.close()

    # -- background loops ----------------------------------------------------------------------
    async def _every(self, interval_s: float, what: str, ask, end) -> None:
        """Every interval while sessions are open: ask the registry about all of this process's
        sessions in one statement, and end() each one it names. An unreachable registry is logged
        and asked again next time; the consoles keep running meanwhile."""
        while True:
            await asyncio.sleep(interval_s)
            if not self.bridges:
                continue
            try:
                answers = await ask(list(self.bridges))
            except (psycopg.Error, OSError) as exc:
                log.warning("%s: the registry is unreachable (%s)", what, str(exc).strip().splitlines()[0])
                continue
            for answer in answers:
                end(answer)

    def _end(self, session_id: str, reason: str, code: int) -> None:
        bridge = self.bridges.get(str(session_id))
        if bridge:
            bridge.terminate(reason, code)

    async def _kill_watch(self) -> None:
        """Every second: drop the sessions an admin killed (or the sweep expired)."""
        await self._every(self.config.kill_poll_s, "kill watch", self.registry.not_open, lambda row: self._end(
            row["id"], row["close_reason"] or f"the session was {row['status']}",
            CLOSE_KILLED if row["status"] == "killed" else CLOSE_EXPIRED))

    async def _heartbeats(self) -> None:
        """Every 30 s: one heartbeat for every open session of this process."""
        await self._every(self.config.heartbeat_s, "heartbeat", self.registry.heartbeat, lambda sid: self._end(
            sid, "the session is no longer open in the registry", CLOSE_EXPIRED))

    # -- pages ---------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=pages.index_page(len(self.bridges)), content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.bridges), "gateway": self.gateway_id})

    async def console_page(self, request: web.Request) -> web.Response:
        """The console page for a link; the link is checked, not used (the page's WebSocket uses it)."""
        try:
            info = await self.registry.token(request.query.get("token", ""), consume=False)
        except RegistryError as exc:
            return web.Response(text=pages.error_page(str(exc)), content_type="text/html", status=410)
        except (psycopg.Error, OSError):
            return web.Response(text=pages.error_page("the session registry (database) is unreachable: "
                                                      "try again in a moment"), content_type="text/html", status=503)
        target = consoles.ConsoleTarget.from_info(info)
        page = pages.vnc_page(target.title) if target.protocol == "vnc" else pages.term_page(target.title)
        return web.Response(text=page, content_type="text/html", headers={
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})

    def client_ip(self, request: web.Request) -> str | None:
        """The browser's address: the socket's peer, or behind trusted proxies the right-most
        untrusted X-Forwarded-For hop (see proxies.client_address)."""
        if not self.config.trust_proxy:
            return request.remote
        return proxies.client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                                      self.config.trusted_proxies)

    # -- the console socket --------------------------------------------------------------------
    async def console_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = BrowserSocket(heartbeat=self.config.ping_s, max_msg_size=MAX_BROWSER_FRAME, compress=False)
        await ws.prepare(request)
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            await self._console(request, ws)
        finally:
            self._handlers.discard(task)
        return ws

    async def _console(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        server_id = None
        upstream = None
        try:
            info = await self.registry.token(request.query.get("token", ""), consume=True)
            t = consoles.ConsoleTarget.from_info(info)
            server_id = t.server_id
            refusal = await self.registry.capacity(server_id)
            if refusal:
                raise SessionRefused(refusal)
            upstream, password = await self._open_upstream(t)
            session = await self.registry.open(
                user_id=t.user_id, server_id=t.server_id, protocol=t.protocol, target=t.target,
                guest_type=t.guest_type, vmid=t.vmid, node=t.node, client_ip=self.client_ip(request),
                user_email=t.user_email)
        except (ProxwatchError, psycopg.Error, OSError) as exc:
            if isinstance(exc, (psycopg.OperationalError, OSError)) and not isinstance(exc, ConnectionError):
                message = "the session registry (database) is unreachable: try again in a moment"
            elif isinstance(exc, psycopg.Error):
                message = f"the session registry failed: {exc.diag.message_primary or exc}"
            else:
                message = str(exc)
            if upstream is not None:
                with contextlib.suppress(Exception):
                    await upstream.close()
            if not isinstance(exc, TokenError) or server_id:
                with contextlib.suppress(Exception):
                    await self.registry.failure(server_id)
            log.info("console refused: %s", message)
            with contextlib.suppress(Exception):
                await ws.send_str(pages.error_message(message))
                await ws.close(code=CLOSE_REFUSED if isinstance(exc, SessionRefused) else CLOSE_FAILED,
                               message=message.encode()[:120])
            return
        sid = str(session["id"])
        bridge = Bridge(sid, ws, upstream)
        self.bridges[sid] = bridge
        reason = "the console gateway stopped"
        try:
            await ws.send_str(pages.ready_message(sid, t.protocol, t.title, password))
            reason = await bridge.run()
        except asyncio.CancelledError:
            bridge.terminate(reason, CLOSE_GOING_AWAY)
            raise
        finally:
            self.bridges.pop(sid, None)
            with contextlib.suppress(Exception):
                await upstream.close()
            try:
                await asyncio.shield(self.registry.close(sid, reason))
            except Exception as exc:  # noqa: BLE001 - the stale sweep expires it then
                log.warning("could not close session %s in the registry: %s", sid, exc)

    async def _open_upstream(self, t: consoles.ConsoleTarget):
        """The tunnel: (upstream, VNC password or None). Audits the PVE ticket."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(db.q("poll_target"), {"server_id": t.server_id})).fetchone()
            if row is None:
                raise RegistryError("the server of this console was removed")
            if t.protocol == "ssh":
                creds = await (await conn.execute(db.q("ssh_target"), {"server_id": t.server_id,
                                                                       "node": t.node})).fetchone()
                if creds is None:
                    raise RegistryError(f"no SSH access is configured for node {t.node} of {t.server_name}")
        if t.protocol == "ssh":
            return await self.opener.open_ssh(creds), None
        ticket = await self.opener.request_ticket(row, t)
        async with self.pool.connection() as conn:
            await consoles.record_ticket_async(conn, t, ticket, t.user_id)
        upstream = await self.opener.open_pve(row, t, ticket)
        return upstream, (ticket.password or ticket.ticket) if t.protocol == "vnc" else None


async def start(config: GatewayConfig) -> tuple[web.AppRunner, Gateway]:
    """Start serving (for tests and embedding): returns the runner (await runner.cleanup() to stop)."""
    gateway = Gateway(config)
    runner = web.AppRunner(gateway.build(), handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise GatewayError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    return runner, gateway


def tune_gc() -> None:
    """Fewer, shorter collector pauses on the piping path: what was loaded at start is frozen (never
    scanned again), and young objects are collected in larger batches. Measured with 500 sessions
    (tests/bench/bench_gateway.py): the default thresholds paused the loop for up to tens of ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


def serve(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM."""
    async def main() -> None:
        runner, _ = await start(config)
        tune_gc()
        log.info("console gateway listening on http://%s:%s", config.host, config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("console gateway stopping")
        await runner.cleanup()

    try:  # uvloop, when installed, roughly halves the loop's cost per frame (see the benchmark)
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
