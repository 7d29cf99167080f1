"""The embedded stand-in for the Supabase surfaces the dashboard uses, served on loopback.

In embedded mode there is no Supabase in front of the database, so one aiohttp app serves the
same HTTP contracts the official clients speak, and nothing more:

- Supabase's API gateway: every request carries a project API key (`apikey` header or query
  parameter) signed with the project's JWT secret (this module).
- PostgREST RPC, `POST /rest/v1/rpc/<fn>` (rest.py).
- Supabase Auth password login, `/auth/v1/token?grant_type=password` and friends (auth.py).
- Realtime `postgres_changes` over the Phoenix WebSocket protocol at `/realtime/v1/websocket`
  (realtime.py; change capture and row-level security per subscriber in changes.py).

Run it with `StandIn(database_url, jwt_secret).start()` from code, or as its own process with
`python -m worker.embedded.standin` (__main__.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker import db
from worker.embedded.standin.auth import ACCESS_TOKEN_TTL_S, Auth
from worker.embedded.standin.common import JWTError, make_keys, verify_jwt
from worker.embedded.standin.realtime import Realtime
from worker.embedded.standin.rest import Rpc
from worker.errors import ProxwatchError

log = logging.getLogger("proxwatch.standin")


class StandInError(ProxwatchError):
    """The stand-in could not start."""


# ---------------------------------------------------------------------------------------------
# The app


class _App:
    """One aiohttp application: Supabase's API-key gateway in front of the routes of the three
    surfaces, and the database pool they share (opened on startup, closed on cleanup)."""

    def __init__(self, database_url: str, jwt_secret: str, access_token_ttl_s: int = ACCESS_TOKEN_TTL_S,
                 realtime_limits: dict | None = None):
        self.database_url = database_url
        self.secret = jwt_secret
        self.pool: AsyncConnectionPool | None = None
        self.rest = Rpc(jwt_secret)
        self.auth = Auth(jwt_secret, access_token_ttl_s)
        self.realtime = Realtime(database_url, jwt_secret, **(realtime_limits or {}))

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self.apikey_middleware], client_max_size=1024 * 1024)
        app.router.add_post("/rest/v1/rpc/{fn}", self.rest.rpc)
        app.router.add_post("/auth/v1/token", self.auth.token)
        app.router.add_get("/auth/v1/user", self.auth.user)
        app.router.add_post("/auth/v1/logout", self.auth.logout)
        app.router.add_get("/auth/v1/health", self.auth.health)
        app.router.add_get("/realtime/v1/websocket", self.realtime.handle)
        app.on_startup.append(self.open_pool)
        app.on_shutdown.append(self.close_sockets)
        app.on_cleanup.append(self.close_pool)
        return app

    async def open_pool(self, _app) -> None:
        # Connections are checked when taken, so a database restart costs no request an error.
        self.pool = AsyncConnectionPool(self.database_url, min_size=2, max_size=10, open=False,
                                        kwargs={"row_factory": dict_row, "autocommit": False},
                                        check=AsyncConnectionPool.check_connection)
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            await conn.execute(db.q("standin_schema"))
        self.rest.pool = self.auth.pool = self.pool
        await self.realtime.start(self.pool)

    async def close_sockets(self, _app) -> None:
        await self.realtime.shutdown()

    async def close_pool(self, _app) -> None:
        await self.realtime.stop()
        if self.pool:
            await self.pool.close()

    @web.middleware
    async def apikey_middleware(self, request: web.Request, handler):
        """Supabase's gateway: every request carries a project API key (header or ?apikey=)."""
        if request.path == "/auth/v1/health":
            return await handler(request)
        key = request.headers.get("apikey") or request.query.get("apikey")
        if not key:
            return web.json_response({"message": "No API key found in request",
                                      "hint": "No `apikey` request header or url param was found."}, status=401)
        try:
            claims = verify_jwt(key, self.secret)
        except JWTError:
            return web.json_response({"message": "Invalid API key",
                                      "hint": "Double check your Supabase `anon` or `service_role` API key."},
                                     status=401)
        if claims["role"] not in ("anon", "service_role"):
            return web.json_response({"message": "Invalid API key"}, status=401)
        request["apikey"] = key
        return await handler(request)


# ---------------------------------------------------------------------------------------------
# Running it


class StandIn:
    """The stand-in on its own event loop in a daemon thread.

    >>> standin = StandIn(database_url, jwt_secret).start()
    >>> standin.url, standin.anon_key
    ... standin.stop()

    `realtime_limits` passes Realtime's quotas on (events_per_s, joins_per_s, channels_per_client,
    tick_s, resubscribe_s, queued_bytes, bindings_per_channel, bindings_per_user; Supabase's
    defaults and limits.py's bounds when absent); `realtime` is the running Realtime
    (its `changes.delivered` / `changes.dropped` count what the events quota let through).
    """

    def __init__(self, database_url: str, jwt_secret: str, host: str = "127.0.0.1", port: int = 0,
                 access_token_ttl_s: int = ACCESS_TOKEN_TTL_S, realtime_limits: dict | None = None):
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.access_token_ttl_s = access_token_ttl_s
        self.realtime_limits = dict(realtime_limits or {})
        self.realtime: Realtime | None = None
        self.host = host
        self.port = port
        keys = make_keys(jwt_secret)
        self.anon_key = keys["anon_key"]
        self.service_key = keys["service_key"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> "StandIn":
        """Start serving; returns once the port is listening (StandInError if it cannot)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="proxwatch-standin", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise StandInError(f"the Supabase stand-in did not start within {timeout:.0f} s")
        if failure:
            raise StandInError(f"the Supabase stand-in could not start on {self.host}:{self.port}: {failure[0]}") \
                from failure[0]
        return self

    async def _serve(self) -> None:
        app = _App(self.database_url, self.jwt_secret, self.access_token_ttl_s, self.realtime_limits)
        self.realtime = app.realtime
        self._runner = web.AppRunner(app.build(), access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
        self._thread = None

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

