"""Realtime change capture and delivery: from a committed row change to the `postgres_changes`
message of every channel that may see it.

Capture: a row trigger on every published table (installed by the stand-in at start, kept in step
with the publication, never part of supabase/migrations) sends the change as JSON with
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

When the database goes away, every joined channel gets a `system` error and is dropped; the
clients rejoin by themselves (the official client retries at 1, 2, 5, 10 s) and are answered with
an error until the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from worker import db
from worker.embedded.standin.catalog import DB_TIMEOUT_S, Catalog, Table
from worker.embedded.standin.channels import Binding, Channel, Socket
from worker.embedded.standin.filters import Condition, condition_sql

log = logging.getLogger("proxwatch.realtime")

MAX_BATCH = 2_000
RECONNECT_DELAYS_S = (0.2, 0.5, 1, 2, 5)


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


class Changes:
    """The listener and the dispatcher, two background tasks: `start()`, `stop()`. `sockets` is
    Realtime's own set of subscribers; `listening` is set while changes are being captured."""

    def __init__(self, database_url: str, catalog: Catalog, sockets: set[Socket]):
        self.database_url = database_url
        self.catalog = catalog
        self.sockets = sockets
        self.listening = asyncio.Event()
        self.stopping = False
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._conn: psycopg.AsyncConnection | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="realtime-listen"),
                       asyncio.create_task(self._dispatch(), name="realtime-dispatch")]

    async def stop(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    # -- capture ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; on loss, error every channel and reconnect."""
        attempt = 0
        while not self.stopping:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.database_url, autocommit=True, keepalives=1, keepalives_idle=10,
                        keepalives_interval=5, keepalives_count=3) as conn:
                    await conn.execute(db.q("realtime_listen"))
                    if attempt:
                        await self.catalog.install(timeout=DB_TIMEOUT_S)
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
                    sock.leave(channel.topic)
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
            await self.catalog.refresh_publication()
        # Changes of each table, in order; the messages keep the order of the changes.
        by_table: dict[tuple[str, str], list[int]] = {}
        for i, ch in enumerate(changes):
            ops = self.catalog.published.get((ch.schema, ch.table))
            if ops and ops.get(ch.op):
                by_table.setdefault((ch.schema, ch.table), []).append(i)
        matched: dict[int, dict[int, list[Binding]]] = {}   # change index -> {channel index -> bindings}
        for key, indices in by_table.items():
            interested = [(ci, c, [b for b in c.bindings if b.schema == key[0] and b.table in (key[1], "*")])
                          for ci, c in enumerate(channels)]
            interested = [(ci, c, bs) for ci, c, bs in interested if bs]
            if not interested:
                continue
            table = self.catalog.tables.get(key)
            fresh = set().union(*((changes[i].image or {}).keys() for i in indices))
            if table is None or not fresh <= set(table.columns):  # new, or its columns changed
                if await self.catalog.table(key[0], key[1], interested[0][1].role) is None:
                    continue
                table = self.catalog.tables[key]
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
            async with self.catalog.pool.connection(timeout=DB_TIMEOUT_S) as conn:
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
        table = self.catalog.tables[(change.schema, change.table)]
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
