"""Embedded Supabase Realtime: `postgres_changes` over the Phoenix WebSocket protocol, served by the
stand-in at `/realtime/v1/websocket` (embedded mode only; on Supabase the real Realtime does this).

This module is the protocol: sockets, joins, subscriptions, tokens, limits. Which tables can be
joined comes from catalog.py, the parameters from filters.py, the changes themselves (capture,
row-level security per subscriber, replica identity, the events quota, delivery) from changes.py.
Where it mirrors supabase/realtime, the file is named (`realtime_channel.ex` is
`lib/realtime_web/channels/realtime_channel.ex`).

It speaks what the official `realtime` 2.34 client speaks (Phoenix serializer vsn 1.0.0, one JSON
object per frame: topic, event, payload, ref):

- `heartbeat` on topic `phoenix` → `phx_reply` ok. A socket silent for 60 s is closed.
- `phx_join` on `realtime:<name>` (realtime_channel.ex join/3): the joins-per-second quota (over
  it: error "ClientJoinRateLimitReached: Too many joins per second" and the socket is
  disconnected), 100 channels per socket ("ChannelRateLimitReached: Too many channels"), then the
  JWT (`access_token`, else the socket's apikey). Then `phx_reply` ok at once, echoing every
  binding as sent with an `id`. The subscription is created AFTER the reply
  (realtime_channel.ex handle_info(:postgres_subscribe)): changes reach the channel only from the
  `system` message "Subscribed to PostgreSQL" on, which may come seconds later (the stand-in
  waits while it is not listening to the database, as the server retries every 1–3 s). A bad
  filter, an unknown or unpublished table or a value that does not fit its column is a `system`
  message with status error, extension postgres_changes, and the server's sentence — the join
  itself stayed ok — and is not retried (filters.py, `proxwatch_realtime.check_subscription`).
- Changes: event `postgres_changes`, `ref: null`, payload `{ids, data}` (changes.py).
- `access_token` (realtime_channel.ex handle_in("access_token")): no reply. The same token, an
  `sb_…` key or null change nothing; an invalid or expired one shuts the channel (`system` error,
  then `phx_close`); a valid one replaces the claims (another user's too) and the subscription is
  created again 1–3 s later, confirmed by another "Subscribed to PostgreSQL".
- When a channel's JWT expires it gets a `system` error ("Token has expired 0 seconds ago") and
  `phx_close`. `phx_leave` leaves. Other client events get no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import zlib

import jwt as pyjwt
import psycopg
from aiohttp import WSMsgType, web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from worker import db
from worker.errors import ProxwatchError
from worker.embedded.standin.catalog import DB_TIMEOUT_S, Catalog
from worker.embedded.standin.changes import Changes
from worker.embedded.standin.channels import Binding, Channel, Socket
from worker.embedded.standin.common import ROLES, JoinError, JWTError, verify_jwt
from worker.embedded.standin.filters import Params, ParamsError, parse_params
from worker.embedded.standin.limits import (MAX_CHANNELS_PER_CLIENT, MAX_EVENTS_PER_SECOND, MAX_JOINS_PER_SECOND,
                                            TICK_S, RateCounter)

log = logging.getLogger("proxwatch.realtime")

HEARTBEAT_TIMEOUT_S = 60
SUBSCRIBED = "Subscribed to PostgreSQL"
# realtime_channel.ex postgres_subscribe/2: backoff(1, 3) s before (re)subscribing; (5, 10) s after an error.
RESUBSCRIBE_S = (1.0, 3.0)
RETRY_AFTER_ERROR_S = (5.0, 10.0)


class SubscribeError(ProxwatchError):
    """The subscription cannot be created; the message is the server's sentence."""


def _like(name: str, pattern: str) -> bool:
    """`name like pattern escape ''` with `*` meaning any (subscriptions.ex query/5)."""
    if pattern == "*":
        return True
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, flags=re.S) is not None


def _postgrex_message(exc: psycopg.Error) -> str:
    """A database error as Postgrex words it: `ERROR P0001 (raise_exception) invalid column …`."""
    condition = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    primary = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc).strip()
    return f"ERROR {exc.sqlstate or 'XX000'} ({condition}) {primary}"


def binding_id(spec: dict) -> int:
    """A stable id per binding, as the server's :erlang.phash2(params) (realtime_channel.ex
    add_id_to_postgres_changes/1): equal parameters get the same id."""
    return zlib.crc32(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()) & 0x7FFFFFF


class Realtime:
    """postgres_changes for the stand-in: `start(pool)`, `handle` (the WebSocket route),
    `shutdown()` (close every socket), `stop()`.

    The per-project quotas default to Supabase's (100 events/s, 100 joins/s, 100 channels per
    client); `tick_s` is the rate counters' tick (5 s on Supabase)."""

    def __init__(self, database_url: str, jwt_secret: str, events_per_s: float = MAX_EVENTS_PER_SECOND,
                 joins_per_s: float = MAX_JOINS_PER_SECOND, channels_per_client: int = MAX_CHANNELS_PER_CLIENT,
                 tick_s: float = TICK_S, resubscribe_s: tuple[float, float] = RESUBSCRIBE_S):
        self.secret = jwt_secret
        self.sockets: set[Socket] = set()
        self.catalog = Catalog()
        self.changes = Changes(database_url, self.catalog, self.sockets, RateCounter(events_per_s, tick_s))
        self.joins = RateCounter(joins_per_s, tick_s)
        self.channels_per_client = channels_per_client
        self.resubscribe_s = resubscribe_s
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, pool: AsyncConnectionPool) -> None:
        """Install the capture, then listen and dispatch in the background."""
        self.catalog.pool = pool
        await self.catalog.install()
        self.changes.start()

    async def shutdown(self) -> None:
        """Close every socket (going away), so clients reconnect to the next stand-in."""
        self._stopping = self.changes.stopping = True
        for sock in list(self.sockets):
            sock.closed = True
            with contextlib.suppress(Exception):
                await sock.ws.close(code=1001, message=b"server shutting down")

    async def stop(self) -> None:
        self._stopping = True
        await self.changes.stop()

    # -- the socket ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /realtime/v1/websocket?apikey=…&vsn=1.0.0 (the apikey was checked by the gateway)."""
        if self._stopping:
            return web.json_response({"message": "Realtime is shutting down"}, status=503)
        ws = web.WebSocketResponse(max_msg_size=1 << 20, autoping=True)
        await ws.prepare(request)
        sock = Socket(ws, request["apikey"])
        self.sockets.add(sock)
        writer = asyncio.create_task(self._write(sock))
        try:
            while not sock.closed:
                try:
                    msg = await ws.receive(timeout=HEARTBEAT_TIMEOUT_S)
                except asyncio.TimeoutError:
                    log.info("closing a Realtime socket silent for %d s", HEARTBEAT_TIMEOUT_S)
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._on_message(sock, msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        finally:
            self._drop_socket(sock)
            sock.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 5)
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def _write(self, sock: Socket) -> None:
        while True:
            frame = await sock.outbox.get()
            if frame is None:
                break
            try:
                await sock.ws.send_str(frame)
            except Exception:  # the peer is gone; the reader side ends the socket
                sock.closed = True
                break
        if sock.closed:
            with contextlib.suppress(Exception):
                await sock.ws.close(code=1011 if sock.outbox.qsize() else 1000)

    def _drop_socket(self, sock: Socket) -> None:
        sock.closed = True
        for topic in list(sock.channels):
            sock.leave(topic)
        self.sockets.discard(sock)

    async def _on_message(self, sock: Socket, text: str) -> None:
        try:
            msg = json.loads(text)
            topic, event, payload, ref = msg["topic"], msg["event"], msg.get("payload") or {}, msg.get("ref")
        except (ValueError, KeyError, TypeError):
            log.info("ignoring a malformed Realtime frame")
            return
        if not isinstance(topic, str) or not isinstance(event, str) or not isinstance(payload, dict):
            return
        if topic == "phoenix" and event == "heartbeat":
            sock.reply(topic, ref, "ok", {})
        elif event == "phx_join":
            await self._join(sock, topic, payload, ref, msg.get("join_ref"))
        elif topic not in sock.channels:
            sock.reply(topic, ref, "error", {"reason": "unmatched topic"})  # Phoenix.Socket
        elif event == "phx_leave":
            sock.leave(topic)
            sock.reply(topic, ref, "ok", {})
        elif event == "access_token":
            self._refresh_token(sock.channels[topic], payload.get("access_token"))
        else:
            # realtime_channel.ex handle_in(type, payload, socket): counted, logged, no reply.
            log.debug("ignoring a %s event on %s (the stand-in serves postgres_changes only)", event, topic)

    # -- joining ------------------------------------------------------------------------------

    async def _join(self, sock: Socket, topic: str, payload: dict, ref, join_ref) -> None:
        if topic in sock.channels:
            sock.leave(topic)  # Phoenix closes the earlier join of the same topic first
        if not topic.startswith("realtime:"):
            sock.reply(topic, ref, "error", {"reason": "unmatched topic"})
            return
        if topic == "realtime:":
            sock.reply(topic, ref, "error", {"reason": "TopicNameRequired: You must provide a topic name"})
            return
        # realtime_channel.ex join/3: limit_joins, then limit_channels, then confirm_token.
        if self.joins.is_triggered():
            sock.reply(topic, ref, "error", {"reason": "ClientJoinRateLimitReached: Too many joins per second"})
            sock.disconnect()
            return
        self.joins.add()
        if len(sock.channels) >= self.channels_per_client:
            sock.reply(topic, ref, "error", {"reason": "ChannelRateLimitReached: Too many channels"})
            return
        token = payload.get("access_token") or payload.get("user_token") or sock.apikey
        try:
            claims = self._claims(token)
            if not self.changes.listening.is_set():
                raise JoinError("UnableToConnectToProject: Realtime was unable to connect to the project database")
        except JoinError as exc:
            sock.reply(topic, ref, "error", {"reason": str(exc)})
            return
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        specs = config.get("postgres_changes")
        # payloads/config.ex drops nil entries; realtime_channel.ex pg_change_params/5 takes a list.
        specs = [s for s in specs if s is not None] if isinstance(specs, list) else []
        channel = Channel(sock, topic, join_ref or ref, claims["role"], claims,
                          json.dumps(claims, sort_keys=True, separators=(",", ":")), [], token=token, specs=specs)
        sock.channels[topic] = channel
        self._arm_expiry(channel)
        echo = [{**s, "id": binding_id(s)} if isinstance(s, dict) else s for s in specs]
        sock.reply(topic, ref, "ok", {"postgres_changes": echo})
        if specs:
            self._schedule_subscribe(channel, 0.0)

    def _claims(self, token) -> dict:
        """The JWT's claims, or JoinError with the server's code and sentence."""
        if not isinstance(token, str) or not token:
            raise JoinError("InvalidJWTToken: Fields `role` and `exp` are required in JWT")
        try:
            claims = verify_jwt(token, self.secret)
        except JWTError as exc:
            if exc.expired:
                ago = 0
                with contextlib.suppress(Exception):
                    exp = pyjwt.decode(token, options={"verify_signature": False}).get("exp")
                    ago = max(0, int(time.time() - exp))
                raise JoinError(f"InvalidJWTToken: Token has expired {ago} seconds ago") from None
            if "signature" in str(exc):
                raise JoinError("JwtSignatureError: Failed to validate JWT signature") from None
            if "no exp" in str(exc) or "no role" in str(exc):
                raise JoinError("InvalidJWTToken: Fields `role` and `exp` are required in JWT") from None
            raise JoinError("MalformedJWT: The token provided is not a valid JWT") from None
        if claims["role"] not in ROLES:
            # Stricter than Supabase (which fails later, setting the role): the stand-in names it now.
            raise JoinError(f"InvalidJWTToken: the role {claims['role']!r} is not one of {', '.join(ROLES)}")
        return claims

    # -- subscribing --------------------------------------------------------------------------

    def _schedule_subscribe(self, channel: Channel, delay: float) -> None:
        if channel.subscribing is not None:
            channel.subscribing.cancel()
        channel.subscribing = asyncio.get_running_loop().create_task(self._subscribe(channel, delay))

    async def _subscribe(self, channel: Channel, delay: float) -> None:
        """realtime_channel.ex handle_info(:postgres_subscribe): create the subscription, then say
        so (or why not) with a `system` message."""
        sock = channel.socket
        if delay:
            await asyncio.sleep(delay)
        while sock.channels.get(channel.topic) is channel and not sock.closed:
            if not self.changes.listening.is_set():
                await asyncio.sleep(random.uniform(*self.resubscribe_s))  # the cdc_rls workers are not up yet
                continue
            try:
                bindings = await self._bindings(channel.role, channel.specs)
            except SubscribeError as exc:
                # Malformed params or a failed insert: "No point in retrying if the params are invalid".
                self._system(channel, "error", str(exc))
                return
            except (psycopg.OperationalError, PoolTimeout):
                self._system(channel, "error", "Too many database timeouts")
                await asyncio.sleep(random.uniform(*RETRY_AFTER_ERROR_S))
                continue
            if sock.channels.get(channel.topic) is not channel:
                return
            channel.bindings = bindings
            self._system(channel, "ok", SUBSCRIBED)
            return

    def _system(self, channel: Channel, status: str, message: str, extension: str = "postgres_changes") -> None:
        channel.socket.send_json(channel.topic, "system", {"extension": extension, "status": status,
                                                           "message": message, "channel": channel.sub_topic})

    async def _bindings(self, role: str, specs: list) -> list[Binding]:
        """cdc_rls.ex subscription_list/1 and subscriptions.ex create/5: parse every binding, then
        one subscription per matching published table — all or nothing."""
        try:
            parsed = [(spec, parse_params(spec)) for spec in specs]
        except ParamsError as exc:
            raise SubscribeError(str(exc)) from None
        await self.catalog.refresh_publication(force=True)
        bindings = []
        for spec, params in parsed:
            tables = sorted(k for k in self.catalog.published if _like(k[0], params.schema) and _like(k[1], params.table))
            if not tables:
                raise SubscribeError("Unable to subscribe to changes with given parameters. Please check Realtime is"
                                     f" enabled for the given connect parameters: [{params.as_log()}]")
            for schema, name in tables:
                try:
                    await self._check(role, schema, name, params)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    raise SubscribeError(
                        "Unable to subscribe to changes with given parameters. An exception happened so please check"
                        f" your connect parameters: [{params.as_log()}]. Exception: {_postgrex_message(exc)}") from None
            bindings.append(Binding(binding_id(spec), params.event, params.schema, params.table,
                                    params.conditions, params.select, spec))
        return bindings

    async def _check(self, role: str, schema: str, name: str, params: Params) -> None:
        """proxwatch_realtime.check_subscription: realtime.subscription_check_filters' checks."""
        if await self.catalog.table(schema, name, role) is None:
            raise SubscribeError(f"Unable to subscribe to changes with given parameters. Please check Realtime is"
                                 f" enabled for the given connect parameters: [{params.as_log()}]")
        conds = params.conditions
        async with self.catalog.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            try:
                await conn.execute(db.q("realtime_check_subscription"), {
                    "schema": schema, "table": name, "role": role,
                    "columns": [c.column for c in conds], "ops": [c.op for c in conds],
                    "vals": [c.value for c in conds], "selected": list(params.select) if params.select else None})
            finally:
                await conn.rollback()

    # -- tokens -------------------------------------------------------------------------------

    def _arm_expiry(self, channel: Channel) -> None:
        if channel.expiry:
            channel.expiry.cancel()
            channel.expiry = None
        exp = channel.claims.get("exp")
        if isinstance(exp, (int, float)):
            loop = asyncio.get_running_loop()
            channel.expiry = loop.call_at(loop.time() + max(0.0, exp - time.time()), self._expire, channel)

    def _expire(self, channel: Channel) -> None:
        sock = channel.socket
        if sock.channels.get(channel.topic) is not channel:
            return
        self._shut_channel(channel, "Token has expired 0 seconds ago")

    def _shut_channel(self, channel: Channel, message: str) -> None:
        """realtime_channel.ex shutdown_response/2: a system error, then the channel stops (phx_close)."""
        sock = channel.socket
        sock.leave(channel.topic)
        self._system(channel, "error", message, extension="system")
        sock.send_json(channel.topic, "phx_close", {}, channel.join_ref)

    def _refresh_token(self, channel: Channel, token) -> None:
        """realtime_channel.ex handle_in("access_token"): never a reply."""
        if not isinstance(token, str) or token.startswith("sb_") or token == channel.token:
            return
        try:
            claims = self._claims(token)
        except JoinError as exc:
            self._shut_channel(channel, str(exc).split(": ", 1)[-1])
            return
        channel.token = token
        channel.role = claims["role"]
        channel.claims = claims
        channel.claims_json = json.dumps(claims, sort_keys=True, separators=(",", ":"))
        self._arm_expiry(channel)
        if channel.specs:
            self._schedule_subscribe(channel, random.uniform(*self.resubscribe_s))
