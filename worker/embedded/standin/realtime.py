"""Embedded Supabase Realtime: `postgres_changes` over the Phoenix WebSocket protocol, served by the
stand-in at `/realtime/v1/websocket` (embedded mode only; on Supabase the real Realtime does this).

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
  (AND), evaluated by Postgres itself with the column's type (enum order, collation, uuid, time
  zones), for UPDATE on the new row, for DELETE on the old one. `select: [cols]` narrows the row.
- `access_token` replaces the JWT of a joined channel; when a channel's JWT expires without one,
  it gets a `system` error ("Token has expired") and `phx_close`, as Supabase does. `phx_leave`
  leaves.

Change capture: a row trigger on every published table (installed by the stand-in at start, kept
in step with the publication, never part of supabase/migrations) sends the change as JSON with
`pg_notify`; the stand-in LISTENs on one connection. Chosen over logical decoding because NOTIFY
is delivered at commit, in commit order, only for committed transactions, with no WAL held back
when the stand-in is down (a replication slot would grow until it came back), and because
`to_jsonb(row)` gives Postgres's own JSON for every type where parsing `test_decoding` text would
be a second, partial type system. A change larger than a notification (8000 bytes) waits in
proxwatch_realtime.overflow and the notification carries its id. Its costs: the trigger runs in
the writer's transaction (microseconds per row), and changes committed while the stand-in is
not listening are not replayed — Supabase Realtime does not replay them either; subscribers get an
error, rejoin, and re-read (the dashboard refetches when its socket is back).
`commit_timestamp` is the time the row changed (clock_timestamp() in the trigger), not the commit.

Row-level security, per subscriber: a change reaches a channel only if its JWT could select the
row. Changes are handled in batches (whatever queued while the last batch was being sent). Per
batch and table, one round trip: proxwatch_realtime.visible_to() runs the table's check once per
distinct subscriber (role + claims) AS that subscriber — `set_config('role', …, true)` and
`request.jwt.claims`, exactly as PostgREST and Supabase's `realtime.apply_rls` do — and returns
which of the batch's rows each one can see. So the answer is Postgres's own RLS answer (nothing is
cached), and the cost grows with batches × distinct users, not with changes. INSERT and UPDATE are
checked against the row as it is now, by primary key (what `realtime.apply_rls` does). DELETE is
stricter than Supabase (which sends deletes to everyone): the deleted rows are re-created for a
moment inside a savepoint (triggers and foreign keys off, `session_replication_role = replica`),
checked the same way, and rolled back. Filters are evaluated by Postgres too, in one query per
batch and table for all distinct filter conditions.

A vanished subscriber only loses its own socket (each socket has its own send queue; one more than
SEND_QUEUE_LIMIT frames behind is closed). When the database goes away, every joined channel gets
a `system` error and is dropped; the clients rejoin by themselves (the official client retries at
1, 2, 5, 10 s) and are answered with an error until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

import psycopg
from aiohttp import WSMsgType, web
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from worker import db
from worker.embedded.standin.common import ROLES, JoinError, JWTError

log = logging.getLogger("proxwatch.realtime")

EVENTS = ("*", "INSERT", "UPDATE", "DELETE")
OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "in": "in"}
HEARTBEAT_TIMEOUT_S = 60
SEND_QUEUE_LIMIT = 20_000
MAX_BATCH = 2_000
PUBLICATION_REFRESH_S = 5
RECONNECT_DELAYS_S = (0.2, 0.5, 1, 2, 5)
DB_TIMEOUT_S = 5


# ---------------------------------------------------------------------------------------------
# Filters


@dataclass(frozen=True)
class Condition:
    column: str
    op: str                      # eq, neq, lt, lte, gt, gte, in
    value: str | tuple[str, ...]


def _split_outside(text: str, sep: str) -> list[str]:
    """Split on sep outside double quotes and parentheses."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def parse_filter(text: str | None) -> tuple[Condition, ...]:
    """Supabase's filter syntax → conditions (JoinError with a sentence when malformed)."""
    if text is None or text == "":
        return ()
    if not isinstance(text, str):
        raise JoinError(f"invalid filter {text!r}: use a string like \"server_id=eq.<id>\"")
    conditions = []
    for part in _split_outside(text, ","):
        column, eq, rest = part.partition("=")
        op, dot, value = rest.partition(".")
        column = column.strip()
        if not eq or not dot or not column:
            raise JoinError(f"invalid filter {text!r}: write it as column=operator.value, e.g. \"id=eq.1\"")
        if op not in OPERATORS:
            raise JoinError(f"invalid filter {text!r}: unsupported operator {op!r}; use eq, neq, lt, lte, gt, gte or in")
        if op == "in":
            value = value.strip()
            if not (value.startswith("(") and value.endswith(")")):
                raise JoinError(f"invalid filter {text!r}: write a list as in.(a,b,c)")
            items = tuple(_unquote(v) for v in _split_outside(value[1:-1], ",")) if value[1:-1].strip() else ()
            if not items:
                raise JoinError(f"invalid filter {text!r}: the in.() list is empty")
            conditions.append(Condition(column, op, items))
        else:
            conditions.append(Condition(column, op, _unquote(value)))
    return tuple(conditions)


def condition_sql(cond: Condition, full_type: str, row: str = "r") -> tuple[sql.Composable, object]:
    """`<row>.<col> <op> %s::text::<type>` (or `= any(%s::text[]::<type>[])`) and its parameter.
    The type comes from pg_catalog (format_type), never from the subscriber."""
    col = sql.SQL("{}.{}").format(sql.Identifier(row), sql.Identifier(cond.column))
    if cond.op == "in":
        return (sql.SQL("coalesce({} = any(%s::text[]::{}[]), false)").format(col, sql.SQL(full_type)),
                list(cond.value))
    return (sql.SQL("coalesce({} {} %s::text::{}, false)").format(col, sql.SQL(OPERATORS[cond.op]),
                                                                   sql.SQL(full_type)), cond.value)


# ---------------------------------------------------------------------------------------------
# Subscriptions


@dataclass
class Table:
    schema: str
    name: str
    rls: bool
    columns: list[str]
    types: dict[str, str]          # column -> short type name (int8, uuid, timestamptz, …)
    full_types: dict[str, str]     # column -> format_type (to cast filter values to)
    generated: set[str]
    primary_key: list[str]
    check_sql: str | None = None   # the RLS check statement for proxwatch_realtime.visible_to

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass
class Binding:
    id: int
    event: str
    schema: str
    table: str
    conditions: tuple[Condition, ...]
    select: tuple[str, ...] | None
    echo: dict

    def wants(self, op: str) -> bool:
        return self.event == "*" or self.event == op


@dataclass(eq=False)
class Channel:
    socket: "Socket"
    topic: str
    join_ref: str | None
    role: str
    claims: dict
    claims_json: str
    bindings: list[Binding]
    expiry: asyncio.TimerHandle | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return (self.role, self.claims_json)

    @property
    def sub_topic(self) -> str:
        return self.topic.split(":", 1)[1] if ":" in self.topic else self.topic


@dataclass(eq=False)
class Socket:
    ws: web.WebSocketResponse
    apikey: str
    channels: dict[str, Channel] = field(default_factory=dict)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False

    def send(self, frame: str) -> None:
        """Queue a frame; a subscriber too far behind is dropped, never waited for."""
        if self.closed:
            return
        if self.outbox.qsize() >= SEND_QUEUE_LIMIT:
            log.warning("dropping a Realtime subscriber %d frames behind", self.outbox.qsize())
            self.closed = True
            self.outbox.put_nowait(None)
            return
        self.outbox.put_nowait(frame)

    def send_json(self, topic: str, event: str, payload, ref: str | None = None) -> None:
        self.send(json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref},
                             separators=(",", ":")))

    def reply(self, topic: str, ref, status: str, response: dict) -> None:
        self.send_json(topic, "phx_reply", {"status": status, "response": response}, ref)


@dataclass
class Change:
    schema: str
    table: str
    op: str
    ts: str
    new: dict | None
    old: dict | None

    @property
    def image(self) -> dict:
        """The row filters and row-level security are checked against."""
        return self.old if self.op == "DELETE" else self.new


# ---------------------------------------------------------------------------------------------
# The server


class Realtime:
    """postgres_changes for the stand-in: `start(pool)`, `handle` (the WebSocket route), `stop()`."""

    def __init__(self, database_url: str, verify):
        self.database_url = database_url
        self.verify = verify                  # token -> claims (raises JWTError)
        self.pool: AsyncConnectionPool | None = None
        self.sockets: set[Socket] = set()
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._tables: dict[tuple[str, str], Table] = {}
        self._published: dict[tuple[str, str], dict] = {}
        self._published_at = 0.0
        self.listening = asyncio.Event()
        self._stopping = False
        self._conn: psycopg.AsyncConnection | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, pool: AsyncConnectionPool) -> None:
        """Install the capture, then listen and dispatch in the background."""
        self.pool = pool
        async with pool.connection() as conn:
            await conn.execute(db.q("realtime_install"))
            await conn.execute(db.q("realtime_sync_triggers"))
            await conn.commit()
        self._tasks = [asyncio.create_task(self._listen(), name="realtime-listen"),
                       asyncio.create_task(self._dispatch(), name="realtime-dispatch")]

    async def shutdown(self) -> None:
        """Close every socket (going away), so clients reconnect to the next stand-in."""
        self._stopping = True
        for sock in list(self.sockets):
            sock.closed = True
            with contextlib.suppress(Exception):
                await sock.ws.close(code=1001, message=b"server shutting down")

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

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
            self._leave(sock, topic)
            sock.reply(topic, ref, "ok", {})
        elif event == "access_token":
            self._refresh_token(sock, sock.channels[topic], payload.get("access_token"), ref)
        else:
            sock.reply(topic, ref, "error", {"reason": f"the embedded Realtime serves postgres_changes only, not {event}"})

    # -- joining ------------------------------------------------------------------------------

    async def _join(self, sock: Socket, topic: str, payload: dict, ref, join_ref) -> None:
        if topic in sock.channels:
            self._leave(sock, topic)
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
            claims = self.verify(token)
        except JWTError as exc:
            if exc.expired:
                raise JoinError("InvalidJWTToken: Token has expired") from None
            raise JoinError(f"InvalidJWTToken: {exc}") from None
        if claims["role"] not in ROLES:
            raise JoinError(f"InvalidJWTToken: the role {claims['role']!r} is not one of {', '.join(ROLES)}")
        return claims

    async def _bindings(self, role: str, wanted: list) -> list[Binding]:
        if not self.listening.is_set():
            raise JoinError("Realtime is not connected to the database right now (it is reconnecting): try again")
        try:
            await self._refresh_publication(force=True)
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
            sorted(t for s, t in self._published if s == schema)
        if table in (None, "*") and (conditions or select):
            raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                            " a filter or select needs one table")
        for name in names:
            info = await self._table(schema, name, role)
            if info is None:
                raise JoinError(f"Unable to subscribe to changes with given parameters {shown}:"
                                f" the table {schema}.{name} does not exist")
            if (schema, name) not in self._published:
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
            async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
                try:
                    await conn.execute(statement, [param])
                except psycopg.DataError as exc:
                    raise JoinError(f"Unable to subscribe to changes with given parameters {shown}: the filter value"
                                    f" for {cond.column} is not a {table.full_types[cond.column]}:"
                                    f" {exc.diag.message_primary}") from None
                finally:
                    await conn.rollback()

    async def _table(self, schema: str, name: str, role: str) -> dict | None:
        async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            row = await (await conn.execute(db.q("realtime_table"),
                                            {"schema": schema, "table": name, "role": role})).fetchone()
            await conn.rollback()
        if row is None:
            return None
        table = Table(schema, name, row["rls"], list(row["columns"]), dict(zip(row["columns"], row["types"])),
                      dict(zip(row["columns"], row["full_types"])),
                      {c for c, g in zip(row["columns"], row["generated"]) if g}, list(row["primary_key"]))
        self._tables[(schema, name)] = table
        return {"table": table, "can_select": row["can_select"]}

    async def _refresh_publication(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._published_at < PUBLICATION_REFRESH_S:
            return
        async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            rows = await (await conn.execute(db.q("realtime_publication"))).fetchall()
            await conn.execute(db.q("realtime_sync_triggers"))
            await conn.commit()
        self._published = {(r["schema"], r["table"]): {"INSERT": r["pubinsert"], "UPDATE": r["pubupdate"],
                                                       "DELETE": r["pubdelete"]} for r in rows}
        self._published_at = time.monotonic()

    def _leave(self, sock: Socket, topic: str) -> None:
        channel = sock.channels.pop(topic, None)
        if channel and channel.expiry:
            channel.expiry.cancel()

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
        self._leave(sock, channel.topic)
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

    # -- capture ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; on loss, error every channel and reconnect."""
        attempt = 0
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, keepalives=1, keepalives_idle=10,
                        keepalives_interval=5, keepalives_count=3) as conn:
                    await conn.execute(db.q("realtime_listen"))
                    if attempt:
                        async with self.pool.connection(timeout=DB_TIMEOUT_S) as pconn:
                            await pconn.execute(db.q("realtime_install"))
                            await pconn.execute(db.q("realtime_sync_triggers"))
                            await pconn.commit()
                        log.info("Realtime is listening to the database again")
                    attempt = 0
                    self.listening.set()
                    async for notify in conn.notifies():
                        self._queue.put_nowait(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database went away; keep trying
                if self.listening.is_set():
                    log.warning("Realtime lost the database (%s); erroring channels and reconnecting",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    self.listening.clear()
                    self._error_all("Realtime lost its connection to the database: changes may have been missed;"
                                    " rejoin to continue")
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                await asyncio.sleep(delay)

    def _error_all(self, message: str) -> None:
        for sock in list(self.sockets):
            for channel in list(sock.channels.values()):
                if channel.bindings:
                    self._leave(sock, channel.topic)
                    sock.send_json(channel.topic, "system", {"extension": "postgres_changes", "status": "error",
                                                             "message": message, "channel": channel.sub_topic})

    # -- dispatch -----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("Realtime could not check %d changes (%s): the database is unreachable",
                            len(batch), type(exc).__name__)
            except Exception:  # noqa: BLE001 - one bad batch must not stop the stream
                log.exception("Realtime failed to deliver %d changes", len(batch))

    async def _deliver(self, payloads: list[str]) -> None:
        changes = await self._decode(payloads)
        channels = [c for s in list(self.sockets) if not s.closed for c in s.channels.values() if c.bindings]
        if not changes or not channels:
            return
        with contextlib.suppress(psycopg.Error):
            await self._refresh_publication()
        # Changes of each table, in order; the messages keep the order of the changes.
        by_table: dict[tuple[str, str], list[int]] = {}
        for i, ch in enumerate(changes):
            ops = self._published.get((ch.schema, ch.table))
            if ops and ops.get(ch.op):
                by_table.setdefault((ch.schema, ch.table), []).append(i)
        matched: dict[int, dict[int, list[Binding]]] = {}   # change index -> {channel index -> bindings}
        for key, indices in by_table.items():
            interested = [(ci, c, [b for b in c.bindings if b.schema == key[0] and b.table in (key[1], "*")])
                          for ci, c in enumerate(channels)]
            interested = [(ci, c, bs) for ci, c, bs in interested if bs]
            if not interested:
                continue
            table = self._tables.get(key)
            fresh = set().union(*((changes[i].image or {}).keys() for i in indices))
            if table is None or not fresh <= set(table.columns):  # new, or its columns changed
                if await self._table(key[0], key[1], interested[0][1].role) is None:
                    continue
                table = self._tables[key]
            await self._match(table, [changes[i] for i in indices], indices, interested, matched)
        for i in sorted(matched):
            self._send_change(changes[i], {ci: bs for ci, bs in matched[i].items()}, channels)

    async def _decode(self, payloads: list[str]) -> list[Change]:
        parsed = []
        overflow = []
        for text in payloads:
            try:
                item = json.loads(text)
            except ValueError:
                continue
            parsed.append(item)
            if "overflow" in item:
                overflow.append(item["overflow"])
        if overflow:
            async with self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
                rows = await (await conn.execute(db.q("realtime_take_overflow"), {"ids": overflow})).fetchall()
                await conn.commit()
            taken = {r["id"]: r["change"] for r in rows}
            parsed = [taken.get(p["overflow"]) if "overflow" in p else p for p in parsed]
        return [Change(p["s"], p["t"], p["op"], p["ts"], p.get("new"), p.get("old")) for p in parsed if p]

    async def _match(self, table: Table, changes: list[Change], indices: list[int], interested, matched) -> None:
        """Which channel bindings each change reaches: event, filters (Postgres evaluates them on
        the row image), then row-level security per distinct subscriber."""
        conditions = sorted({c for _, _, bs in interested for b in bs for c in b.conditions},
                            key=lambda c: (c.column, c.op, str(c.value)))
        images = [ch.image for ch in changes]
        conn = await self._checker()
        try:
            truth = await self._filters(conn, table, images, conditions) if conditions else None
            identities = sorted({c.identity for _, c, _ in interested})
            visible = await self._visible(conn, table, changes, identities)
        except psycopg.OperationalError:
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        finally:
            if not conn.closed:
                await conn.rollback()
        cond_index = {c: k for k, c in enumerate(conditions)}
        for n, (i, ch) in enumerate(zip(indices, changes)):
            for ci, channel, bindings in interested:
                if n not in visible.get(channel.identity, ()):
                    continue
                hits = [b for b in bindings if b.wants(ch.op)
                        and all(truth[n][cond_index[c]] for c in b.conditions)]
                if hits:
                    matched.setdefault(i, {})[ci] = hits

    async def _checker(self) -> psycopg.AsyncConnection:
        """The dispatcher's own connection (one batch at a time), opened again after a loss."""
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.database_url, row_factory=dict_row,
                                                               connect_timeout=DB_TIMEOUT_S)
        return self._conn

    async def _filters(self, conn, table: Table, images: list[dict], conditions: list[Condition]) -> list[list[bool]]:
        exprs, params = [], []
        for cond in conditions:
            expr, param = condition_sql(cond, table.full_types[cond.column])
            exprs.append(expr)
            params.append(param)
        statement = sql.SQL(
            "select e.n, array[{}] as truth from jsonb_array_elements(%s::jsonb) with ordinality as e (img, n)"
            " cross join lateral jsonb_populate_record(null::{}, e.img) as r order by e.n").format(
            sql.SQL(", ").join(exprs), table.ident)
        rows = await (await conn.execute(statement, params + [json.dumps(images)])).fetchall()
        return [list(r["truth"]) for r in rows]

    async def _visible(self, conn, table: Table, changes: list[Change], identities) -> dict[tuple, set[int]]:
        """{identity: indices of the changes whose row that subscriber may select}."""
        live = [n for n, ch in enumerate(changes) if ch.op != "DELETE"]
        gone = [n for n, ch in enumerate(changes) if ch.op == "DELETE"]
        seen: dict[tuple, set[int]] = {ident: set() for ident in identities}
        if live:
            keys = [{k: changes[n].new.get(k) for k in table.primary_key} for n in live]
            for ident, pos in await self._check(conn, table, keys, identities):
                seen[ident].add(live[pos])
        if gone:
            await conn.execute("savepoint realtime_deleted")
            try:
                await conn.execute(db.q("realtime_replica_mode"))
                columns = [c for c in table.columns if c not in table.generated]
                cols = sql.SQL(", ").join(map(sql.Identifier, columns))
                await conn.execute(sql.SQL(
                    "insert into {} ({}) overriding system value select {} from jsonb_populate_recordset(null::{},"
                    " %s::jsonb) on conflict do nothing").format(table.ident, cols, cols, table.ident),
                    [json.dumps([changes[n].old for n in gone])])
                keys = [{k: changes[n].old.get(k) for k in table.primary_key} for n in gone]
                for ident, pos in await self._check(conn, table, keys, identities):
                    seen[ident].add(gone[pos])
            except psycopg.errors.InsufficientPrivilege:
                log.warning("the stand-in's database user may not re-create deleted rows: deletes reach nobody")
            finally:
                await conn.execute("rollback to savepoint realtime_deleted")
        return seen

    async def _check(self, conn, table: Table, keys: list[dict], identities) -> list[tuple[tuple, int]]:
        """(identity, position) for every key whose row the identity may select, by its own RLS —
        all identities in one round trip (proxwatch_realtime.visible_to)."""
        if table.check_sql is None:
            match = sql.SQL(" and ").join(
                sql.SQL("t.{} = k.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in table.primary_key)
            table.check_sql = sql.SQL(
                "select coalesce(array_agg((e.n - 1)::int), '{{}}') from jsonb_array_elements($1)"
                " with ordinality as e (img, n) cross join lateral jsonb_populate_record(null::{}, e.img) as k"
                " where exists (select 1 from {} as t where {})").format(table.ident, table.ident, match
                                                                          ).as_string(conn)
        rows = await (await conn.execute(db.q("realtime_visible"), {
            "check": table.check_sql, "keys": json.dumps(keys),
            "identities": json.dumps([{"role": r, "claims": c} for r, c in identities])})).fetchall()
        return [(identities[r["who"]], r["pos"]) for r in rows]

    def _send_change(self, change: Change, hits: dict[int, list[Binding]], channels: list[Channel]) -> None:
        table = self._tables[(change.schema, change.table)]
        cache: dict[tuple | None, str] = {}
        for ci, bindings in hits.items():
            channel = channels[ci]
            by_select: dict[tuple | None, list[int]] = {}
            for b in bindings:
                by_select.setdefault(b.select, []).append(b.id)
            for select, ids in by_select.items():
                if select not in cache:
                    cache[select] = self._data_json(table, change, select)
                channel.socket.send('{"topic":' + json.dumps(channel.topic) + ',"event":"postgres_changes",'
                                    '"payload":{"ids":' + json.dumps(ids) + ',"data":' + cache[select] + '},'
                                    '"ref":null}')

    @staticmethod
    def _data_json(table: Table, change: Change, select: tuple | None) -> str:
        columns = [c for c in table.columns if select is None or c in select]
        data = {"schema": change.schema, "table": change.table, "commit_timestamp": change.ts,
                "type": change.op, "errors": None,
                "columns": [{"name": c, "type": table.types[c]} for c in columns]}
        if change.op in ("INSERT", "UPDATE"):
            data["record"] = {c: change.new.get(c) for c in columns}
        if change.op in ("UPDATE", "DELETE"):
            # With row-level security on, Supabase sends only the primary key of the old row.
            keep = table.primary_key if table.rls else columns
            data["old_record"] = {c: change.old.get(c) for c in keep if c in change.old}
        return json.dumps(data, separators=(",", ":"), default=str)
