"""Embedded Supabase Realtime: `postgres_changes` over the Phoenix WebSocket protocol, served by the
stand-in at `/realtime/v1/websocket` (embedded mode only; on Supabase the real Realtime does this).

This module is the protocol: sockets, joins, tokens. Which tables can be joined comes from
catalog.py, filters from filters.py, and the changes themselves (capture, row-level security per
subscriber, delivery) from changes.py.

It speaks what the official `realtime` 2.34 client speaks (Phoenix serializer vsn 1.0.0, one JSON
object per frame: topic, event, payload, ref):

- `heartbeat` on topic `phoenix` → `phx_reply` ok. A socket silent for 60 s is closed (the
  client beats every 25 s), as Phoenix does.
- `phx_join` on `realtime:<name>` with `config.postgres_changes` bindings and `access_token` (the
  socket's `apikey` when absent) → `phx_reply` ok echoing every binding, in order, with an `id`;
  then the `system` message "Subscribed to PostgreSQL". Errors are `phx_reply` status `error` with
  a `reason` sentence: a bad or expired JWT, an unknown table, a table outside publication
  `supabase_realtime`, a table the role may not select, a bad filter, the database unreachable.
  Joining a topic again replaces the earlier join.
- Changes: event `postgres_changes`, `ref: null`, payload `{ids, data: {schema, table,
  commit_timestamp, type, errors: null, columns: [{name, type}], record, old_record}}` — `record`
  for INSERT/UPDATE, `old_record` for UPDATE/DELETE, and on a table with row-level security
  `old_record` holds the primary key only, as on Supabase. One message per change and channel;
  `ids` lists every binding of the channel it matches.
- Filters `col=eq|neq|lt|lte|gt|gte.value` and `col=in.(a,b,"c,d")`, several joined by commas
  (AND), evaluated by Postgres itself with the column's type, for UPDATE on the new row, for
  DELETE on the old one. `select: [cols]` narrows the row.
- `access_token` replaces the JWT of a joined channel; when a channel's JWT expires without one,
  it gets a `system` error ("Token has expired") and `phx_close`, as Supabase does. `phx_leave`
  leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time

import psycopg
from aiohttp import WSMsgType, web
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from worker.embedded.standin.catalog import DB_TIMEOUT_S, Catalog, Table
from worker.embedded.standin.changes import Changes
from worker.embedded.standin.channels import Binding, Channel, Socket
from worker.embedded.standin.common import ROLES, JoinError, JWTError, verify_jwt
from worker.embedded.standin.filters import condition_sql, parse_filter

log = logging.getLogger("proxwatch.realtime")

EVENTS = ("*", "INSERT", "UPDATE", "DELETE")
HEARTBEAT_TIMEOUT_S = 60


class Realtime:
    """postgres_changes for the stand-in: `start(pool)`, `handle` (the WebSocket route),
    `shutdown()` (close every socket), `stop()`."""

    def __init__(self, database_url: str, jwt_secret: str):
        self.secret = jwt_secret
        self.sockets: set[Socket] = set()
        self.catalog = Catalog()
        self.changes = Changes(database_url, self.catalog, self.sockets)
        self._ids = itertools.count(1)
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
        for channel in sock.channels.values():
            if channel.expiry:
                channel.expiry.cancel()
        sock.channels.clear()
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
            sock.reply(topic, ref, "error", {"reason": "unmatched topic"})
        elif event == "phx_leave":
            sock.leave(topic)
            sock.reply(topic, ref, "ok", {})
        elif event == "access_token":
            self._refresh_token(sock, sock.channels[topic], payload.get("access_token"), ref)
        else:
            sock.reply(topic, ref, "error", {"reason": f"the embedded Realtime serves postgres_changes only, not {event}"})

    # -- joining ------------------------------------------------------------------------------

    async def _join(self, sock: Socket, topic: str, payload: dict, ref, join_ref) -> None:
        if topic in sock.channels:
            sock.leave(topic)
        try:
            if not topic.startswith("realtime:"):
                raise JoinError(f"unknown topic {topic!r}: Realtime topics start with realtime:")
            token = payload.get("access_token") or sock.apikey
            claims = self._claims(token)
            config = payload.get("config") or {}
            wanted = config.get("postgres_changes") or []
            if not isinstance(wanted, list):
                raise JoinError("config.postgres_changes must be a list of bindings")
            bindings = await self._bindings(claims["role"], wanted)
        except JoinError as exc:
            sock.reply(topic, ref, "error", {"reason": str(exc)})
            return
        channel = Channel(sock, topic, join_ref or ref, claims["role"], claims,
                          json.dumps(claims, sort_keys=True, separators=(",", ":")), bindings)
        sock.channels[topic] = channel
        self._arm_expiry(channel)
        sock.reply(topic, ref, "ok", {"postgres_changes": [b.echo for b in bindings]})
        if bindings:
            sock.send_json(topic, "system", {"extension": "postgres_changes", "status": "ok",
                                             "message": "Subscribed to PostgreSQL", "channel": channel.sub_topic})

    def _claims(self, token) -> dict:
        if not isinstance(token, str) or not token:
            raise JoinError("InvalidJWTToken: no access_token was given")
        try:
            claims = verify_jwt(token, self.secret)
        except JWTError as exc:
            if exc.expired:
                raise JoinError("InvalidJWTToken: Token has expired") from None
            raise JoinError(f"InvalidJWTToken: {exc}") from None
        if claims["role"] not in ROLES:
            raise JoinError(f"InvalidJWTToken: the role {claims['role']!r} is not one of {', '.join(ROLES)}")
        return claims

    async def _bindings(self, role: str, wanted: list) -> list[Binding]:
        if not self.changes.listening.is_set():
            raise JoinError("Realtime is not connected to the database right now (it is reconnecting): try again")
        try:
            await self.catalog.refresh_publication(force=True)
            return [await self._binding(role, spec) for spec in wanted]
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise JoinError(f"Realtime cannot reach the database right now ({type(exc).__name__}): try again") from None

    async def _binding(self, role: str, spec) -> Binding:
        if not isinstance(spec, dict):
            raise JoinError(f"invalid postgres_changes binding {spec!r}: use an object with event, schema, table")
        event = spec.get("event", "*")
        schema = spec.get("schema") or "public"
        table = spec.get("table")
        shown = f"[event: {event}, schema: {schema}, table: {table or '*'}, filter: {spec.get('filter') or ''}]"
        if event not in EVENTS:
            raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                            f" event must be one of *, INSERT, UPDATE, DELETE")
        if not isinstance(schema, str) or (table is not None and not isinstance(table, str)):
            raise JoinError(f"Unable to subscribe to changes with given parameters {shown}: schema and table are names")
        conditions = parse_filter(spec.get("filter"))
        select = spec.get("select")
        if select is not None and (not isinstance(select, list) or not all(isinstance(c, str) for c in select)):
            raise JoinError(f"Unable to subscribe to changes with given parameters {shown}: select is a list of columns")
        names = [table] if table and table != "*" else \
            sorted(t for s, t in self.catalog.published if s == schema)
        if table in (None, "*") and (conditions or select):
            raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                            " a filter or select needs one table")
        for name in names:
            info = await self.catalog.table(schema, name, role)
            if info is None:
                raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                                f" the table {schema}.{name} does not exist")
            if (schema, name) not in self.catalog.published:
                raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                                f" the table {schema}.{name} is not in publication supabase_realtime")
            if not info["can_select"]:
                raise JoinError(f"Unauthorized: the role {role} may not select from {schema}.{name}")
            if not info["table"].primary_key:
                raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                                f" {schema}.{name} has no primary key, which row-level security checks need")
            t = info["table"]
            for col in list(select or []) + [c.column for c in conditions]:
                if col not in t.types:
                    raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                                    f" {schema}.{name} has no column {col!r}")
            await self._check_values(t, conditions, shown)
        # The reply echoes the binding as sent (the client matches them by position and value).
        binding_id = next(self._ids)
        echo = {"id": binding_id, **{k: spec[k] for k in ("event", "schema", "table", "filter") if k in spec}}
        echo.setdefault("event", event)
        echo.setdefault("schema", schema)
        return Binding(binding_id, event, schema, table if table and table != "*" else "*", conditions,
                       tuple(select) if select else None, echo)

    async def _check_values(self, table: Table, conditions, shown: str) -> None:
        """Each filter value must be a value of its column's type (cast by Postgres)."""
        for cond in conditions:
            expr, param = condition_sql(cond, table.full_types[cond.column], "v")
            statement = sql.SQL("select {} as ok from (select null::{} as {}) as v").format(
                expr, sql.SQL(table.full_types[cond.column]), sql.Identifier(cond.column))
            async with self.catalog.pool.connection(timeout=DB_TIMEOUT_S) as conn:
                try:
                    await conn.execute(statement, [param])
                except psycopg.DataError as exc:
                    raise JoinError(f"Unable to subscribe to changes with given parameters {shown}: the filter value"
                                    f" for {cond.column} is not a {table.full_types[cond.column]}:"
                                    f" {exc.diag.message_primary}") from None
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
        """Supabase's shutdown of a channel: a system error, then phx_close."""
        sock = channel.socket
        sock.leave(channel.topic)
        sock.send_json(channel.topic, "system", {"extension": "system", "status": "error", "message": message,
                                                 "channel": channel.sub_topic})
        sock.send_json(channel.topic, "phx_close", {}, channel.join_ref)

    def _refresh_token(self, sock: Socket, channel: Channel, token, ref) -> None:
        try:
            claims = self._claims(token)
        except JoinError as exc:
            sock.reply(channel.topic, ref, "error", {"reason": str(exc)})
            self._shut_channel(channel, str(exc))
            return
        if claims["role"] != channel.role or claims.get("sub") != channel.claims.get("sub"):
            # Another user or role: the bindings were checked for the old one, so join again.
            reason = "the new access_token belongs to another user or role: join the channel again"
            sock.reply(channel.topic, ref, "error", {"reason": reason})
            self._shut_channel(channel, reason)
            return
        channel.claims = claims
        channel.claims_json = json.dumps(claims, sort_keys=True, separators=(",", ":"))
        self._arm_expiry(channel)
        sock.reply(channel.topic, ref, "ok", {})

